"""Make the shipped 15-point model from the shipped 68-point one.

    python tools/derive_keypoints15.py [--base facebatch/release/keypoints68.pt] [--out runs/exports/keypoints15.pt]

The 15 Kaggle points are a fixed linear function of the 68 iBUG points (eye centres are the
means of the 6 eye points; the others are single points; table in
facebatch.keypoints.schemes.ibug68_to_kaggle15), so the 68-point network with that map
on its output is a 15-point model. Its weights are the 68-point model's.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from facebatch.models import create_model  # noqa: E402
from facebatch.modelio import load_model, save_model_file  # noqa: E402


def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", default="facebatch/release/keypoints68.pt")
    ap.add_argument("--out", default="runs/exports/keypoints15.pt")
    args = ap.parse_args(argv)
    base, info = load_model(args.base)
    kw = {k: v for k, v in info["model_kwargs"].items() if k not in ("n_points",)}
    model = create_model("kaggle15_from_ibug68", n_points=15, base=info["model"], **kw)
    model.base.load_state_dict(base.state_dict())
    meta = dict(info["meta"])
    meta.update({"scheme": "kaggle15", "derived_from": {"path": args.base, "sha256": info["sha256"]},
                 "metrics_of_base": meta.pop("metrics", None)})
    out = save_model_file(args.out, "keypoints", "kaggle15_from_ibug68", {"n_points": 15, "base": info["model"], **kw},
                          model, meta, fp16=False)
    print(out)
    return out


if __name__ == "__main__":
    main()
