"""Which models annotated an object: a short fingerprint per model, and when an object is stale.

Every annotate row carries ``models``, a compact JSON object of model -> fingerprint with sorted
keys (the same models give the same string, so SQL can compare it whole)::

    {"attributes":"74d8b2f3c616","detector":"2979b33ffafd","identity":"5e0c6f1d4a77","keypoints":"0b07da8150e9"}

and ``identity_model`` (the ``identity`` fingerprint, null when no identity model ran). A
fingerprint is the first 12 hex digits of a sha256:

* ``detector``: of the detector's weights file;
* ``keypoints``, ``attributes``: of the model file (a shipped name resolves to ``facebatch/release``);
* ``identity``: of what decides the embedding: the network file's sha256, the fitted projection
  file's sha256 and the alignment (an attributes model used for embeddings: its file's);
* ``head:NAME`` for a head named with ``--head``: its ``sha256`` if it describes one, else of its
  description (name, version, ...).

The driver computes them without torch (:func:`run_models`, from the files the workers will load),
and each worker checks that it computes the same (a node with other model files fails the run).
A head's fingerprint is only known once a worker has loaded it: the driver expects ``*`` (any).

An object is **stale** (:func:`is_stale`) when a model of this run is missing from the models
that annotated it, or has another fingerprint. Models the object had and the run does not are
ignored: a run without ``--embeddings`` does not re-annotate the objects that have embeddings.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

ANY = "*"  # expected fingerprint of a model the driver cannot hash (a plug-in head)
FP_LEN = 12


def short(sha256: str | None) -> str | None:
    """The fingerprint of a sha256 hex digest (its first 12 digits)."""
    return str(sha256)[:FP_LEN] if sha256 else None


def _sha_of(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _file_sha(path: str | Path) -> str:
    from ..weights import sha256_file
    return sha256_file(path)


def identity_fingerprint(name_or_path: str) -> str:
    """``identity`` fingerprint of an identity model (shipped name, ``.json`` or ``.dat``) or of an
    attributes model file used for embeddings."""
    from ..identity.meta import identity_meta, is_identity_model
    if not is_identity_model(name_or_path):
        from ..models.files import resolve_model_path
        return short(_file_sha(resolve_model_path(name_or_path)))
    meta = identity_meta(name_or_path)
    dat = meta.get("dat_sha256") or (_file_sha(meta["dat"]) if meta.get("dat") else None)
    proj = meta.get("projection")
    proj_sha = _file_sha(Path(meta["path"]).parent / proj) if proj and meta.get("path") else None
    return short(_sha_of({"network": dat, "projection": proj_sha, "align": meta.get("align")}))


def run_models(analyzer) -> dict[str, str]:
    """The fingerprints of the models an :class:`~facebatch.inference.AnalyzerConfig` loads (torch-free);
    plug-in heads as :data:`ANY`."""
    from ..detection.backends import backend_spec
    from ..models.files import resolve_model_path
    det = analyzer.detector
    out = {"detector": short(backend_spec(det.backend).weights_info(det.weights_dir)["weights_sha256"]) or ANY}
    if analyzer.keypoints:
        out["keypoints"] = short(_file_sha(resolve_model_path(analyzer.keypoints)))
    if analyzer.attributes:
        out["attributes"] = short(_file_sha(resolve_model_path(analyzer.attributes)))
    if analyzer.identity:
        out["identity"] = identity_fingerprint(analyzer.identity)
    for h in analyzer.heads:
        out[head_key(h)] = ANY
    return dict(sorted(out.items()))


def head_key(name: str) -> str:
    """``head:NAME`` (a ``module:name`` head is keyed by its name)."""
    return "head:" + str(name).rsplit(":", 1)[-1]


def head_models(describe: dict) -> dict[str, str]:
    """Fingerprints of the plug-in heads in a ``FaceAnalyzer.describe()`` (worker side)."""
    out = {}
    for name, d in (describe.get("heads") or {}).items():
        d = {k: v for k, v in (d or {}).items() if k not in ("runtime", "outputs")}
        out[head_key(name)] = short(d.get("sha256")) or short(_sha_of(d))
    return out


def worker_models(analyzer, describe: dict, expected: dict[str, str] | None) -> dict[str, str]:
    """The fingerprints a worker records: :func:`run_models` computed here, checked against the
    driver's ``expected``, with the heads' from ``describe``."""
    mine = run_models(analyzer)
    if expected is not None:
        diff = sorted(k for k in set(mine) | set(expected) if mine.get(k) != expected.get(k))
        if diff:
            raise RuntimeError("this worker's model files differ from the driver's: " + ", ".join(
                f"{k} {expected.get(k)} on the driver, {mine.get(k)} here" for k in diff) +
                "; install the same facebatch release and weights on every node")
    return dict(sorted({**mine, **head_models(describe)}.items()))


def dumps(models: dict[str, str]) -> str:
    """The ``models`` column's string: compact JSON, sorted keys."""
    return json.dumps(dict(sorted(models.items())), separators=(",", ":"))


def loads(text: str | None) -> dict[str, str]:
    if not text:
        return {}
    try:
        out = json.loads(text)
    except ValueError:
        return {}
    return out if isinstance(out, dict) else {}


def is_stale(annotated: str | None, run: dict[str, str]) -> bool:
    """Whether an object annotated with ``annotated`` (a ``models`` string; null: before models were
    recorded) is stale for a run with models ``run``."""
    had = loads(annotated)
    if not had:
        return True
    return any(k not in had or (v != ANY and had[k] != v) for k, v in run.items())


def changed_models(annotated: str | None, run: dict[str, str]) -> list[str]:
    """The models of ``run`` that are new or different for an object annotated with ``annotated``."""
    had = loads(annotated)
    return sorted(k for k, v in run.items() if k not in had or (v != ANY and had[k] != v))
