"""Average the weights of fine-tuned models of one architecture ("model soup", WiSE-FT).

    python tools/average_models.py OUT.pt A.pt B.pt [--weights 0.5 0.5] [--data out/celeba6k out/genki4k]
    python tools/average_models.py OUT.pt A.pt --data out/celeba6k out/genki4k   # thresholds only

A model fine-tuned from another (``init_from``) stays in the same basin, so a weighted mean of the
two sets of weights is a working network that often keeps the strengths of both (for example the
original's full-resolution accuracy and the fine-tune's robustness to degraded photos). Every
floating-point tensor is averaged (BatchNorm statistics included); integer buffers come from the
first file. The meta is the first file's. For an attribute model with ``--data``, the decision
thresholds are fitted again on the validation split exactly as training's export does
(:func:`facebatch.training.attribute_task.fit_thresholds`, with the degradations recorded in the
file's ``task_options.threshold_degrade``), and the report of that fit is printed, so candidates
can be compared on validation faces and never on the test split.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from facebatch.modelio import build_from_file, read_model_file, resolve_model_path, save_model_file  # noqa: E402
from facebatch.weights import sha256_file  # noqa: E402


def average_states(states: list[dict], weights: list[float]) -> dict:
    """Weighted mean of the floating-point tensors of ``states`` (same keys and shapes)."""
    keys = list(states[0])
    for s in states[1:]:
        if list(s) != keys or any(s[k].shape != states[0][k].shape for k in keys):
            raise SystemExit("the model files hold different architectures (keys or shapes differ); "
                             "only fine-tunes of one model can be averaged")
    out = {}
    for k in keys:
        if states[0][k].is_floating_point():
            out[k] = sum(w * s[k].float() for w, s in zip(weights, states))
        else:
            out[k] = states[0][k]
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    ap.add_argument("output", help="model file to write")
    ap.add_argument("models", nargs="+", help="model files or shipped names (two or more; one with --data refits "
                    "its thresholds only)")
    ap.add_argument("--weights", nargs="+", type=float, default=None, help="one per model, summing to 1 (default equal)")
    ap.add_argument("--data", nargs="+", default=None,
                    help="preprocess outputs whose val split refits an attribute model's thresholds")
    args = ap.parse_args(argv)
    if len(args.models) < 2 and not args.data:
        raise SystemExit("give two or more model files to average (or one with --data to refit its thresholds only)")
    w = args.weights or [1.0 / len(args.models)] * len(args.models)
    if len(w) != len(args.models) or abs(sum(w) - 1.0) > 1e-6 or min(w) < 0:
        raise SystemExit(f"--weights needs {len(args.models)} non-negative numbers summing to 1, got {w}")
    paths = [resolve_model_path(m) for m in args.models]
    objs = [read_model_file(p) for p in paths]
    first = objs[0]
    for p, o in zip(paths[1:], objs[1:]):
        if (o["model"], o["model_kwargs"]) != (first["model"], first["model_kwargs"]):
            raise SystemExit(f"{p} is {o['model']} {o['model_kwargs']}, not {first['model']} {first['model_kwargs']}")
    model = build_from_file(first)
    model.load_state_dict(average_states([o["state_dict"] for o in objs], w), strict=True)
    model.eval()
    meta = dict(first["meta"])
    meta["averaged_from"] = [{"path": str(p), "sha256": sha256_file(p), "weight": x} for p, x in zip(paths, w)]
    report = None
    if args.data and first["task"] == "attributes" and meta.get("thresholds"):
        from facebatch.training.attribute_task import fit_thresholds
        cfg = meta.get("config") or {}
        degrade = (meta.get("task_options") or {}).get("threshold_degrade") or []
        thresholds, n, report = fit_thresholds(model, args.data, list(cfg.get("val_splits") or ["val"]),
                                               list(meta["attributes"]), int(meta["input_size"]),
                                               flip=bool(meta.get("flip_test", cfg.get("flip_test", False))),
                                               degrade=degrade)
        meta.update(thresholds=thresholds, threshold_n=n, threshold_fit=report)
    out = save_model_file(args.output, first["task"], first["model"], first["model_kwargs"], model, meta,
                          fp16=any(v.dtype == torch.float16 for v in first["state_dict"].values()))
    print(json.dumps({"output": str(out), "sha256": sha256_file(out), "weights": w,
                      "thresholds": meta.get("thresholds"), "threshold_fit": report}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
