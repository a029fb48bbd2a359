"""Store the identity ``unknown`` threshold from a verification evaluation in a model file's meta.

    python tools/set_identity_threshold.py runs/exports/attributes.pt out/eval-identity

EVAL_DIR is a ``facebatch evaluate identity`` output folder (metrics.json, model.json) of this
very model file. Its operating point at the stated false-accept rate
(``verification_threshold_at_far``, from ``--far``, default 1%) becomes the model's
``verification_threshold``, with ``verification_far`` (the rate stated), ``verification_tar``
and ``verification_at_far`` (the counts, the evaluation folder and the evaluated file's sha256).
``FaceAnalyzer``, ``facebatch enroll --match``, annotate and serve take their identity
``unknown`` decision from ``verification_threshold`` when the gallery records none.

The file is rewritten in place (weights untouched, so galleries enrolled with it stay valid;
its file sha256 changes and is printed). The evaluation must be of this file:
model.json's sha256 must be the file's, or the one recorded by an earlier run of this tool.
``tools/release_model.py --identity-eval`` calls :func:`set_identity_threshold` and writes
:func:`card_lines` into the model card.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from facebatch.models.files import read_model_file  # noqa: E402
from facebatch.weights import sha256_file  # noqa: E402

META_KEYS = ("verification_threshold", "verification_far", "verification_tar", "verification_at_far")


def read_identity_eval(eval_dir: str | Path) -> tuple[dict, dict]:
    """``(metrics, model info)`` of an ``evaluate identity`` folder, checked to hold an operating point."""
    d = Path(eval_dir)
    try:
        metrics = json.loads((d / "metrics.json").read_text())
        info = json.loads((d / "model.json").read_text())
    except FileNotFoundError as exc:
        raise SystemExit(f"{d} is not a `facebatch evaluate identity` output folder: {exc.filename} is missing")
    point = metrics.get("verification_at_far")
    thr = metrics.get("verification_threshold_at_far")
    if not point or thr is None or not math.isfinite(float(thr)):
        raise SystemExit(f"{d}/metrics.json has no finite verification_threshold_at_far (no verification pairs, "
                         "an evaluation made before --far existed, or no threshold meets the rate); rerun "
                         "`facebatch evaluate identity`")
    return metrics, info


def check_eval_of(model_file: str | Path, eval_dir: str | Path, meta: dict | None = None) -> str:
    """The evaluated file's sha256, after checking it is ``model_file`` (its sha256 now, or the one an
    earlier run of this tool recorded in ``meta``)."""
    path = Path(model_file)
    _, info = read_identity_eval(eval_dir)
    if meta is None:
        meta = read_model_file(path)["meta"]
    current = sha256_file(path)
    evaluated = info.get("sha256")
    if evaluated not in {current, (meta.get("verification_at_far") or {}).get("model_sha256")}:
        raise SystemExit(f"{eval_dir} evaluated a file with sha256 {evaluated}, not {path} ({current}); evaluate "
                         "this file (`facebatch evaluate identity --model FILE`) or pass --force")
    return evaluated


def set_identity_threshold(model_file: str | Path, eval_dir: str | Path, force: bool = False) -> dict:
    """Write the operating point of ``eval_dir`` into ``model_file``'s meta (in place).

    Returns the meta entries written (``verification_threshold``, ``verification_far``,
    ``verification_tar``, ``verification_at_far``).
    """
    import torch
    path = Path(model_file)
    metrics, info = read_identity_eval(eval_dir)
    obj = read_model_file(path)
    meta = obj["meta"]
    if not (meta.get("identity") or meta.get("emb_dim") or obj["model_kwargs"].get("emb_dim")):
        raise SystemExit(f"{path} has no identity embedding; an unknown threshold means nothing for it")
    evaluated = info.get("sha256") if force else check_eval_of(path, eval_dir, meta)
    point = metrics["verification_at_far"]
    entries = {
        "verification_threshold": float(metrics["verification_threshold_at_far"]),
        "verification_far": float(metrics["verification_far"]),
        "verification_tar": float(metrics["verification_tar_at_far"]),
        "verification_at_far": {
            **point, "persons": metrics.get("verification_persons"), "images": metrics.get("verification_images"),
            "pairs": metrics.get("verification_pairs"), "roc_auc": metrics.get("verification_roc_auc"),
            "accuracy": metrics.get("verification_accuracy"), "eval_dir": str(eval_dir),
            "splits": (metrics.get("protocol") or {}).get("verification_splits"),
            "model_sha256": evaluated},
    }
    obj["meta"] = {**meta, **entries}
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(path)
    read_model_file(path)  # still a readable model file
    return entries


def card_lines(entries: dict, figure: str | None = None) -> list[str]:
    """The model card's section on the identity ``unknown`` threshold."""
    p = entries["verification_at_far"]
    lines = ["## Identity: the `unknown` threshold", "",
             f"- unknown below cosine {entries['verification_threshold']:.4f}: FAR {p['far']:.4f} on "
             f"{p['n_diff']} different-person pairs ({p['n_false_accept']} accepted; stated rate "
             f"{entries['verification_far']:g}), TAR {entries['verification_tar']:.4f} ({p['n_true_accept']} of "
             f"{p['n_same']} same-person pairs).",
             f"- Pairs of {p.get('persons')} people the model never trained on (split(s) "
             f"{', '.join(p.get('splits') or ['val'])}, {p.get('images')} images); ROC AUC "
             f"{_fmt(p.get('roc_auc'))}, LFW-style verification accuracy {_fmt(p.get('accuracy'))}; "
             f"from `{p.get('eval_dir')}`.",
             "- Stored in the model file as `verification_threshold` (with `verification_far`, "
             "`verification_tar`): `FaceAnalyzer`, `facebatch enroll --match`, annotate and serve use it "
             "when the gallery records no threshold; `--threshold` / `--identity-threshold` override it.",
             "- The threshold is the lowest one meeting the rate on these pairs: on other people the "
             "false-accept rate will scatter around it (with few false accepts allowed, by a lot)."]
    if figure:
        lines += ["", f"![ROC of identity verification]({figure})"]
    return lines + [""]


def _fmt(v) -> str:
    return "n/a" if v is None else f"{float(v):.4f}"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", help="model file to update in place (with an identity embedding)")
    ap.add_argument("eval_dir", help="`facebatch evaluate identity` output folder of this model")
    ap.add_argument("--force", action="store_true", help="accept an evaluation of another file")
    args = ap.parse_args(argv)
    entries = set_identity_threshold(args.model, args.eval_dir, force=args.force)
    print("\n".join(card_lines(entries)))
    print(f"{args.model}: sha256 {sha256_file(args.model)}")
    return entries


if __name__ == "__main__":
    main()
