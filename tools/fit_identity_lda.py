"""Give a multitask attribute model a closed-form identity embedding (PCA + Fisher LDA).

    python tools/fit_identity_lda.py MODEL OUT.pt --data out/celeba6k [--dim 256]

MODEL is a multitask model file or shipped name. Every usable ``train``-split face with an
identity in the ``--data`` preprocess outputs is run through the model's backbone, with its
mirror image as a second sample of the same person (the model averages a face and its mirror at
inference). The backbone's last feature map, flattened and L2-normalised
(:meth:`~facebatch.attributes.models.MultiTaskFaceNet.lda_features`), is fitted with
:func:`~facebatch.attributes.lda.fit_lda`; the projection is stored in the model as the buffers
``lda_mean`` and ``lda_proj`` (``model_kwargs.lda_dim``), so every consumer of the model's
``embedding`` (evaluate identity, enroll, FaceAnalyzer, annotate, serve, the ONNX export) gets
the new embedding with no other change. Smile, eyeglasses and the trained margin head are untouched.

People of the validation split (celeba6k's ``val``) are never read: verification is judged on
them. Galleries enrolled with the old embedding do not fit the new one; re-enroll. The identity
``unknown`` threshold in the file's meta belongs to the old embedding and is removed: set it
again with ``tools/set_identity_threshold.py`` (or ``release_model.py --identity-eval``).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from facebatch.attributes.lda import fit_lda  # noqa: E402
from facebatch.evaluation.common import has_crop, row_batches  # noqa: E402
from facebatch.inference.inputs import InputSpec  # noqa: E402
from facebatch.modelio import build_from_file, read_model_file, resolve_model_path, save_model_file  # noqa: E402
from facebatch.weights import load_into, sha256_file  # noqa: E402

THRESHOLD_KEYS = ("verification_threshold", "verification_far", "verification_tar", "verification_at_far")


def training_rows(sources: list[str], splits: list[str]) -> list[dict]:
    """Usable first-face rows with an identity and a crop, of ``splits``, from preprocess outputs."""
    import pyarrow.parquet as pq
    rows = []
    for src in sources:
        if not Path(src).exists():
            raise SystemExit(f"--data {src} not found: run `facebatch preprocess` for it first (see README)")
        t = pq.read_table(src, columns=["path", "status", "split", "face_index", "identity", "crop"]).to_pylist()
        got = [dict(r, source=src) for r in t if r["split"] in splits and r["identity"] is not None
               and (r["face_index"] or 0) <= 0 and has_crop(r)]
        if not got:
            raise SystemExit(f"--data {src} has no {'/'.join(splits)} rows with an identity and a face crop")
        rows += got
    rows.sort(key=lambda r: (r["source"], r["path"]))
    return rows


def lda_inputs(model: torch.nn.Module, rows: list[dict], spec: InputSpec, batch_size: int = 128) -> np.ndarray:
    """``(2n, d)``: the LDA features of every row's crop, then of every mirrored crop (every row
    has a crop: :func:`training_rows` keeps only those)."""
    plain, mirrored = [], []
    with torch.inference_mode():
        for _, x in row_batches(rows, spec, batch_size):
            plain.append(model.lda_features(model.feature_map(x)).numpy())
            mirrored.append(model.lda_features(model.feature_map(x.flip(-1))).numpy())
    return np.concatenate(plain + mirrored)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("model", help="multitask model file or shipped name (attributes)")
    ap.add_argument("output", help="model file to write (never the input)")
    ap.add_argument("--data", nargs="+", required=True, help="preprocess outputs with identities (the release uses celeba6k only: adding udacity68 scored worse)")
    ap.add_argument("--splits", nargs="+", default=["train"], help="splits to fit on (default: train)")
    ap.add_argument("--dim", type=int, default=256, help="embedding size (default 256)")
    ap.add_argument("--pca-dim", type=int, default=256, help="principal directions before LDA (default 256)")
    ap.add_argument("--reg", type=float, default=0.1, help="within-class shrinkage (default 0.1)")
    ap.add_argument("--grid", type=int, default=5, help="feature-map cells per side (default 5: a 160 px input's map)")
    args = ap.parse_args(argv)
    if "val" in args.splits or "test" in args.splits:
        raise SystemExit("--splits val/test would fit on the people and photos the evaluation judges; use train")
    src = resolve_model_path(args.model)
    out = Path(args.output)
    if out.resolve() == src.resolve():
        raise SystemExit(f"{out} is the input model; write to another file")
    obj = read_model_file(src)
    if obj["model"] != "multitask":
        raise SystemExit(f"{src} is a {obj['model']!r} model; the LDA embedding is for multitask models")
    kwargs = dict(obj["model_kwargs"], lda_dim=args.dim, lda_grid=args.grid)
    base = dict(obj, model_kwargs={k: v for k, v in obj["model_kwargs"].items() if k not in ("lda_dim", "lda_grid")})
    model = build_from_file(base)
    state = {k: (v.float() if v.is_floating_point() else v) for k, v in obj["state_dict"].items()
             if not k.startswith("lda_")}
    load_into(model, state, src, "multitask model")
    model.lda_grid = args.grid  # what lda_features pools to; the projection's buffers come below
    model.eval()
    meta = obj["meta"]
    spec = InputSpec.from_meta(meta)
    t0 = time.time()
    rows = training_rows(args.data, args.splits)
    people = np.array([f"{r['source']}::{r['identity']}" for r in rows])
    feats = lda_inputs(model, rows, spec)
    mean, proj, info = fit_lda(feats, np.r_[people, people], args.dim, args.pca_dim, args.reg)
    final = build_from_file(dict(obj, model_kwargs=dict(kwargs, lda_dim=info["dim"])))
    final.load_state_dict(dict(state, lda_mean=torch.from_numpy(mean), lda_proj=torch.from_numpy(proj)), strict=True)
    info.update({"data": args.data, "splits": args.splits, "grid": args.grid, "from_model": str(src),
                 "from_sha256": sha256_file(src), "fit_s": round(time.time() - t0, 1),
                 "per_source_people": {s: int(len({p for p in people if p.startswith(s + '::')})) for s in args.data},
                 "command": "python tools/fit_identity_lda.py " + " ".join(argv if argv is not None else sys.argv[1:])})
    meta = {k: v for k, v in meta.items() if k not in THRESHOLD_KEYS}
    meta["identity_lda"] = info
    if not meta.get("identities"):  # trained without the margin head: the people the projection was fitted on
        meta["identities"] = sorted({str(r["identity"]) for r in rows})
    meta["emb_dim"] = info["dim"]
    save_model_file(out, obj["task"], obj["model"], dict(kwargs, lda_dim=info["dim"]), final.eval(), meta,
                    fp16=any(v.dtype == torch.float16 for v in obj["state_dict"].values()))
    print(json.dumps({"output": str(out), "sha256": sha256_file(out), **info}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
