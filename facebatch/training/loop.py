"""The training loop every task shares; runs inside Ray Train workers (DDP, gloo on CPU, NCCL on GPU).

Checkpoints every epoch (model, optimiser, history, and the best model so far), so a
failed worker or a stopped run resumes from the last epoch. Validation sums are
all-reduced, so every worker sees the same metrics and agrees on early stopping.
"""
from __future__ import annotations

import json
import math
import os
import sys
import tempfile
import time

import numpy as np
import torch

from .config import TrainConfig


def make_task(cfg: TrainConfig):
    if cfg.task == "keypoints":
        from .keypoint_task import KeypointTask
        return KeypointTask(cfg)
    from .attribute_task import AttributeTask
    return AttributeTask(cfg)


def lr_at(cfg: TrainConfig, step: int, steps_per_epoch: int) -> float:
    """Linear warm-up then cosine decay to 1% of ``lr``."""
    warm = max(1, int(cfg.warmup_epochs * steps_per_epoch))
    total = max(warm + 1, cfg.epochs * steps_per_epoch)
    if step < warm:
        return cfg.lr * (step + 1) / warm
    t = (step - warm) / (total - warm)
    return cfg.lr * (0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * min(1.0, t))))


def _all_reduce(t: torch.Tensor) -> torch.Tensor:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(t)
    return t


def init_partial(model: torch.nn.Module, state: dict, source: str) -> list[str]:
    """Load ``state`` into ``model`` for fine-tuning. Tensors whose shape differs (a class head
    over another set of identities) keep their fresh initialisation; they are named on stderr and
    returned. A key missing on either side is an error: it means another architecture."""
    own = model.state_dict()
    missing, unexpected = sorted(set(own) - set(state)), sorted(set(state) - set(own))
    if missing or unexpected:
        raise ValueError(f"init_from {source}: another architecture (missing {missing[:5]}, unexpected "
                         f"{unexpected[:5]}); choose a model file of the same model and model_kwargs")
    fresh = [k for k in own if own[k].shape != state[k].shape]
    model.load_state_dict({k: (own[k] if k in fresh else state[k]) for k in own})
    if fresh:
        print(f"[facebatch] init_from {source}: kept fresh weights for {', '.join(fresh)} (shape differs)",
              file=sys.stderr, flush=True)
    return fresh


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry: ``config = {"cfg": TrainConfig as dict, "steps_per_epoch": int}``."""
    import ray.train
    import ray.train.torch

    cfg = TrainConfig(**config["cfg"])
    task = make_task(cfg)
    ctx = ray.train.get_context()
    rank = ctx.get_world_rank()
    torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))
    torch.manual_seed(cfg.seed)  # same init on every worker (DDP also broadcasts)
    rng = np.random.default_rng(cfg.seed * 1000 + rank)
    device = ray.train.torch.get_device()
    model = task.build_model()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start_epoch, history, best, best_state, train_s = 0, [], None, None, 0.0
    ckpt = ray.train.get_checkpoint()
    if cfg.init_from and not ckpt:
        from ..modelio import load_model
        init_partial(model, load_model(cfg.init_from)[0].state_dict(), cfg.init_from)
    if ckpt:
        with ckpt.as_directory() as d:
            st = torch.load(os.path.join(d, "state.pt"), map_location="cpu", weights_only=True)
            model.load_state_dict(st["model"])
            opt.load_state_dict(st["optimizer"])
            best_state = st["best_model"]
            meta = json.loads(st["meta"])
            start_epoch, history, best, train_s = meta["epoch"] + 1, meta["history"], meta["best"], meta["train_s"]
            rng = np.random.default_rng(cfg.seed * 1000 + rank + 7919 * start_epoch)
    model = ray.train.torch.prepare_model(model)
    raw = model.module if hasattr(model, "module") else model
    ema = None
    if cfg.ema > 0:  # the averaged weights are what is validated, kept and exported
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
        ema = AveragedModel(raw, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True)
        if ckpt and st.get("ema") is not None:
            ema.load_state_dict(st["ema"])
    judged = ema.module if ema is not None else raw
    use_amp = cfg.amp and device.type == "cuda"
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val")
    steps_per_epoch = max(1, config["steps_per_epoch"])
    bad_epochs = 0
    if history and best is not None:
        bad_epochs = len(history) - 1 - max(i for i, h in enumerate(history) if h[task.monitor] == best)
    for epoch in range(start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        model.train()
        loss_sum, n_seen, step = torch.zeros(2), 0, epoch * steps_per_epoch
        for batch in train_shard.iter_batches(batch_size=cfg.batch_size, batch_format="numpy",
                                              local_shuffle_buffer_size=2048, local_shuffle_seed=cfg.seed + epoch * 31 + rank):
            x, y = task.inputs(batch, train=True, rng=rng)
            if len(x) == 0:
                continue
            for g in opt.param_groups:
                g["lr"] = lr_at(cfg, step, steps_per_epoch)
            x, y = x.to(device), y.to(device) if torch.is_tensor(y) else {k: v.to(device) for k, v in y.items()}
            with torch.autocast(device.type, dtype=torch.float16, enabled=use_amp):
                out = model(x)
            loss = task.loss(out, y)
            opt.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(opt)
            scaler.update()
            if ema is not None:
                ema.update_parameters(raw)
            loss_sum += torch.tensor([loss.item() * len(x), len(x)])
            step += 1
        train_phase_s = time.perf_counter() - t0
        model.eval()
        judged.eval()
        sums = None
        with torch.inference_mode():
            for batch in val_shard.iter_batches(batch_size=128, batch_format="numpy"):
                x, y = task.inputs(batch, train=False, rng=rng)
                if len(x) == 0:
                    continue
                x = x.to(device)
                y = y.to(device) if torch.is_tensor(y) else {k: v.to(device) for k, v in y.items()}
                s = task.metric_sums(task.predict(judged, x), y).cpu()
                sums = s if sums is None else sums + s
        sums = _all_reduce(sums if sums is not None else torch.zeros(task.n_metric_sums))
        loss_sum = _all_reduce(loss_sum)
        epoch_s = time.perf_counter() - t0
        train_s += epoch_s
        metrics = {"epoch": epoch, "train_loss": float(loss_sum[0] / max(1, loss_sum[1])),
                   "lr": lr_at(cfg, step - 1, steps_per_epoch), "epoch_s": epoch_s, "train_s": train_s,
                   "images_per_s": float(loss_sum[1]) / epoch_s,
                   "train_images_per_s": float(loss_sum[1]) / max(1e-9, train_phase_s), **task.finalize(sums)}
        history.append(metrics)
        score = metrics[task.monitor]
        improved = best is None or (score < best if task.mode == "min" else score > best)
        if improved:
            best, bad_epochs = score, 0
        else:
            bad_epochs += 1
        if improved or cfg.keep == "last":
            best_state = {k: v.detach().cpu().clone() for k, v in judged.state_dict().items()}
        stop = cfg.patience > 0 and bad_epochs >= cfg.patience
        if rank == 0:
            # Written to stdout directly: Ray Train patches print() to both print and log (to stderr),
            # which showed every epoch line twice.
            sys.stdout.write(f"[facebatch train] epoch {epoch + 1}/{cfg.epochs} " + " ".join(
                f"{k}={v:.4g}" for k, v in metrics.items() if k not in ("epoch",)) + (" *" if improved else "") + "\n")
            sys.stdout.flush()
        with tempfile.TemporaryDirectory() as d:
            checkpoint = None
            if rank == 0:
                torch.save({"model": raw.state_dict(), "optimizer": opt.state_dict(), "best_model": best_state,
                            "ema": None if ema is None else ema.state_dict(),
                            "meta": json.dumps({"epoch": epoch, "history": history, "best": best, "train_s": train_s,
                                                "stopped_early": stop})}, os.path.join(d, "state.pt"))
                checkpoint = ray.train.Checkpoint.from_directory(d)
            ray.train.report(metrics, checkpoint=checkpoint)
        if stop:
            break
