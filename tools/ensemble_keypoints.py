"""Combine keypoint model files of one scheme (e.g. the 128/160/192 px stages of a run) into one
``resolution_ensemble`` model file.

    python tools/ensemble_keypoints.py runs/exports/keypoints68_128.pt runs/exports/keypoints68_160.pt \
        runs/exports/keypoints68_192.pt --out runs/exports/keypoints68.pt

The ensemble is fed crops at the largest member's size and resizes them for the others; its
outputs are the mean of the members' unit coordinates. ``meta`` is the last member's (its
config, history and flip setting) plus ``members`` (file, sha256, input size, parameters,
FLOPs and training seconds of each) and summed ``params``, ``flops`` and ``train_s``.
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
    ap.add_argument("members", nargs="+", help="keypoint model files (same scheme)")
    ap.add_argument("--out", required=True, help="ensemble model file to write")
    args = ap.parse_args(argv)
    loaded = [load_model(p) for p in args.members]
    schemes = {info["meta"]["scheme"] for _, info in loaded}
    if len(schemes) != 1:
        raise SystemExit(f"members predict different schemes: {sorted(schemes)}")
    n_points = loaded[0][1]["model_kwargs"]["n_points"]
    specs = [{"model": info["model"], **{k: v for k, v in info["model_kwargs"].items() if k != "n_points"}}
             for _, info in loaded]
    ens = create_model("resolution_ensemble", n_points=n_points, members=specs)
    for member, (model, _) in zip(ens.members, loaded):
        member.load_state_dict(model.state_dict())
    meta = dict(loaded[-1][1]["meta"])
    meta["members"] = [{"file": str(p), "sha256": info["sha256"], "input_size": info["meta"]["input_size"],
                        "params": info["meta"].get("params"), "flops": info["meta"].get("flops"),
                        "train_s": info["meta"].get("train_s"), "best_metrics": info["meta"].get("metrics")}
                       for p, (_, info) in zip(args.members, loaded)]
    meta["input_size"] = ens.input_size
    meta["params"] = sum(m.get("params") or 0 for m in meta["members"])
    meta["flops"] = sum(m.get("flops") or 0 for m in meta["members"])
    meta["train_s"] = sum(m.get("train_s") or 0 for m in meta["members"])
    meta.pop("metrics", None)  # the members' validation metrics are under members; the card has the ensemble's
    out = save_model_file(args.out, "keypoints", "resolution_ensemble",
                          {"n_points": n_points, "members": specs, "input_size": ens.input_size}, ens, meta)
    print(out)
    return out


if __name__ == "__main__":
    main()
