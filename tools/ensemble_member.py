"""Write one member of a ``resolution_ensemble`` model file as a model file of its own, e.g. to
fine-tune the 160 px member of the shipped ``keypoints68`` ensemble into a single fast model.

    python tools/ensemble_member.py keypoints68_ensemble --input-size 160 --out runs/exports/kp68_member160.pt
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from facebatch.modelio import load_model, save_model_file  # noqa: E402


def main(argv=None) -> Path:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("ensemble", help="shipped name or path of a resolution_ensemble model file")
    ap.add_argument("--input-size", type=int, required=True, help="input size of the member to take")
    ap.add_argument("--out", required=True, help="model file to write")
    args = ap.parse_args(argv)
    model, info = load_model(args.ensemble)
    if info["model"] != "resolution_ensemble":
        raise SystemExit(f"{args.ensemble} is a {info['model']!r} model, not a resolution_ensemble")
    specs = info["model_kwargs"]["members"]
    sizes = [s["input_size"] for s in specs]
    if args.input_size not in sizes:
        raise SystemExit(f"no member at {args.input_size} px; members: {sizes}")
    i = sizes.index(args.input_size)
    spec, member_meta = dict(specs[i]), info["meta"]["members"][i]
    name = spec.pop("model")
    meta = {k: v for k, v in info["meta"].items() if k != "members"}
    meta.update(input_size=args.input_size, params=member_meta.get("params"), flops=member_meta.get("flops"),
                train_s=member_meta.get("train_s"), metrics=member_meta.get("best_metrics"),
                source={"ensemble": info["path"], "sha256": info["sha256"], "member": i})
    out = save_model_file(args.out, info["task"], name, {"n_points": info["model_kwargs"]["n_points"], **spec},
                          model.members[i], meta)
    print(out)
    return out


if __name__ == "__main__":
    main()
