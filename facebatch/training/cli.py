"""Train a keypoint or attribute model with Ray Train (DDP; CPU workers, or GPUs with --gpu).

The config is a JSON/YAML file or a shipped config name (keypoints68, attributes, ...;
see facebatch/configs/), then key=value overrides (dotted keys for nested values, JSON
values). The resolved config is written to storage_path/NAME/facebatch_config.json when
the run starts, and checkpoints go there every epoch; a failed worker resumes from the
last one, and --resume NAME continues a stopped run with its saved config (no --config
needed; overrides still apply). A new run under an existing name is refused. The best
model is exported with export=PATH.pt. Writes history.json, curves.png and summary.json
into the run folder.

examples:
  facebatch train keypoints --config keypoints68
  facebatch train keypoints --config keypoints68 epochs=2 num_workers=2 name=try1
  facebatch train keypoints --config keypoints68 --resume try1
"""
from __future__ import annotations

import argparse
import json


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("task", choices=["keypoints", "attributes"], help="what to train")
    p.add_argument("--config", default=None, help="config file (.json/.yaml) or shipped config name")
    p.add_argument("overrides", nargs="*", help="key=value overrides, e.g. epochs=5 model_kwargs.head=regression")
    p.add_argument("--resume", default=None, metavar="NAME",
                   help="continue the run NAME from its last checkpoint, with the config it saved at its start")
    p.add_argument("--gpu", action="store_true", help="use_gpu=true (one GPU per worker, NCCL, mixed precision)")
    p.add_argument("--workers", type=int, default=None, help="num_workers override")
    p.add_argument("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS, else local Ray)")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def run(args: argparse.Namespace) -> int:
    from .config import load_config
    overrides = list(args.overrides) + [f"task={json.dumps(args.task)}"]
    if args.gpu:
        overrides.append("use_gpu=true")
    if args.workers:
        overrides.append(f"num_workers={args.workers}")
    config = args.config
    if args.resume:
        overrides.append(f"name={json.dumps(args.resume)}")
        if config is None:  # the run's own config, saved when it started
            from .config import default_storage
            from .run import saved_config_path
            storage = default_storage(load_config(None, overrides))
            config = saved_config_path(storage, args.resume)
            if config is None:
                raise ValueError(f"--resume {args.resume}: no saved config {storage}/{args.resume}/facebatch_config.json; "
                                 f"give --config, or check storage_path and the run name")
            if "://" in config:
                raise ValueError(f"--resume {args.resume}: give --config for runs stored on {storage}")
    cfg = load_config(config, overrides)
    if args.print_config:
        print(json.dumps(cfg.to_dict(), indent=2))
        return 0
    from .run import train
    summary = train(cfg, address=args.address, resume=args.resume)
    best = summary["best"]
    print("\n== facebatch train summary ==")
    print(f"run {summary['run']}  epochs {summary['epochs_run']}  best epoch {summary['best_epoch']}  "
          f"train {summary['train_s']:.0f} s  wall {summary['wall_s']:.0f} s")
    print("best: " + " ".join(f"{k}={v:.4g}" for k, v in best.items() if k.startswith("val_")))
    print(f"checkpoint {summary['checkpoint']}" + (f"\nexported {summary['export']}" if summary.get("export") else ""))
    return 0
