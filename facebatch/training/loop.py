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
from dataclasses import dataclass, field
from typing import Any

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
    returned, as are tensors the start file lacks under the model's ``fresh_prefixes`` (heads of
    attributes the start did not learn). Any other key missing on either side is an error: it
    means another architecture."""
    own = model.state_dict()
    new = tuple(getattr(model, "fresh_prefixes", ()))
    missing = sorted(k for k in set(own) - set(state) if not k.startswith(new))
    unexpected = sorted(k for k in set(state) - set(own) if not k.startswith(new))
    if missing or unexpected:
        raise ValueError(f"init_from {source}: another architecture (missing {missing[:5]}, unexpected "
                         f"{unexpected[:5]}); choose a model file of the same model and model_kwargs")
    fresh = [k for k in own if k not in state or own[k].shape != state[k].shape]
    model.load_state_dict({k: (own[k] if k in fresh else state[k]) for k in own})
    if fresh:
        more = f" and {len(fresh) - 6} more" if len(fresh) > 6 else ""
        print(f"[facebatch] init_from {source}: kept fresh weights for {', '.join(fresh[:6])}{more} "
              "(not in the start file, or another shape)",
              file=sys.stderr, flush=True)
    return fresh


@dataclass
class _Progress:
    """What carries from epoch to epoch, and through a checkpoint across a restart."""
    start_epoch: int = 0
    history: list = field(default_factory=list)
    best: float | None = None
    best_state: dict | None = None
    train_s: float = 0.0
    ema_state: dict | None = None

    def bad_epochs(self, monitor: str) -> int:
        """Epochs since the best one (early stopping picks up where a resumed run left off)."""
        if not self.history or self.best is None:
            return 0
        return len(self.history) - 1 - max(i for i, h in enumerate(self.history) if h[monitor] == self.best)


def _restore(ckpt, model: torch.nn.Module, opt: torch.optim.Optimizer) -> _Progress:
    """Load a Ray Train checkpoint's model and optimiser state; returns where the run stood."""
    with ckpt.as_directory() as d:
        st = torch.load(os.path.join(d, "state.pt"), map_location="cpu", weights_only=True)
    model.load_state_dict(st["model"])
    opt.load_state_dict(st["optimizer"])
    meta = json.loads(st["meta"])
    return _Progress(start_epoch=meta["epoch"] + 1, history=meta["history"], best=meta["best"],
                     best_state=st["best_model"], train_s=meta["train_s"], ema_state=st.get("ema"))


def _averaged(cfg: TrainConfig, raw: torch.nn.Module, state: dict | None):
    """The EMA of the weights (``cfg.ema > 0``; what is validated, kept and exported), or None."""
    if cfg.ema <= 0:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
    ema = AveragedModel(raw, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema), use_buffers=True)
    if state is not None:
        ema.load_state_dict(state)
    return ema


def _to(y, device: torch.device):
    return y.to(device) if torch.is_tensor(y) else {k: v.to(device) for k, v in y.items()}


@dataclass
class _Worker:
    """One Ray Train worker's model, optimiser and random state for the epoch loop."""
    cfg: TrainConfig
    task: Any
    model: torch.nn.Module  # as Ray Train prepared it (DDP with several workers)
    raw: torch.nn.Module  # the bare model
    ema: Any
    opt: torch.optim.Optimizer
    device: torch.device
    rank: int
    rng: np.random.Generator
    steps_per_epoch: int

    def __post_init__(self) -> None:
        self.judged = self.ema.module if self.ema is not None else self.raw
        self.use_amp = self.cfg.amp and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.use_amp)

    def train_epoch(self, shard, epoch: int) -> tuple[torch.Tensor, int]:
        """One pass over this worker's shard; returns ``([loss * n, n] summed, the next step)``."""
        cfg, task = self.cfg, self.task
        self.model.train()
        loss_sum, step = torch.zeros(2), epoch * self.steps_per_epoch
        for batch in shard.iter_batches(batch_size=cfg.batch_size, batch_format="numpy", local_shuffle_buffer_size=2048,
                                        local_shuffle_seed=cfg.seed + epoch * 31 + self.rank):
            x, y = task.inputs(batch, train=True, rng=self.rng)
            if len(x) == 0:
                continue
            for g in self.opt.param_groups:
                g["lr"] = lr_at(cfg, step, self.steps_per_epoch)
            x, y = x.to(self.device), _to(y, self.device)
            with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.use_amp):
                out = self.model(x)
            loss = task.loss(out, y)
            self.opt.zero_grad(set_to_none=True)
            self.scaler.scale(loss).backward()
            self.scaler.step(self.opt)
            self.scaler.update()
            if self.ema is not None:
                self.ema.update_parameters(self.raw)
            loss_sum += torch.tensor([loss.item() * len(x), len(x)])
            step += 1
        return loss_sum, step

    def validate(self, shard) -> torch.Tensor:
        """The task's metric sums over this worker's validation shard (zeros when it is empty)."""
        task = self.task
        self.model.eval()
        self.judged.eval()
        sums = None
        with torch.inference_mode():
            for batch in shard.iter_batches(batch_size=128, batch_format="numpy"):
                x, y = task.inputs(batch, train=False, rng=self.rng)
                if len(x) == 0:
                    continue
                s = task.metric_sums(task.predict(self.judged, x.to(self.device)), _to(y, self.device)).cpu()
                sums = s if sums is None else sums + s
        return sums if sums is not None else torch.zeros(task.n_metric_sums)

    def checkpoint_and_report(self, metrics: dict, prog: _Progress, epoch: int, stop: bool) -> None:
        """Report the epoch to Ray Train; rank 0 attaches the checkpoint (model, optimiser, EMA, best, history)."""
        import ray.train
        with tempfile.TemporaryDirectory() as d:
            checkpoint = None
            if self.rank == 0:
                torch.save({"model": self.raw.state_dict(), "optimizer": self.opt.state_dict(),
                            "best_model": prog.best_state, "ema": None if self.ema is None else self.ema.state_dict(),
                            "meta": json.dumps({"epoch": epoch, "history": prog.history, "best": prog.best,
                                                "train_s": prog.train_s, "stopped_early": stop})},
                           os.path.join(d, "state.pt"))
                checkpoint = ray.train.Checkpoint.from_directory(d)
            ray.train.report(metrics, checkpoint=checkpoint)


def _print_epoch(cfg: TrainConfig, epoch: int, metrics: dict, improved: bool) -> None:
    # Written to stdout directly: Ray Train patches print() to both print and log (to stderr),
    # which showed every epoch line twice.
    sys.stdout.write(f"[facebatch train] epoch {epoch + 1}/{cfg.epochs} " + " ".join(
        f"{k}={v:.4g}" for k, v in metrics.items() if k not in ("epoch",)) + (" *" if improved else "") + "\n")
    sys.stdout.flush()


def _setup_worker(config: dict) -> tuple[_Worker, _Progress]:
    """Build (or restore from Ray Train's checkpoint) this worker's model, optimiser and progress."""
    import ray.train
    import ray.train.torch

    cfg = TrainConfig(**config["cfg"])
    task = make_task(cfg)
    rank = ray.train.get_context().get_world_rank()
    torch.set_num_threads(max(1, int(cfg.cpus_per_worker)))
    torch.manual_seed(cfg.seed)  # same init on every worker (DDP also broadcasts)
    device = ray.train.torch.get_device()
    model = task.build_model()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    ckpt = ray.train.get_checkpoint()
    if cfg.init_from and not ckpt:
        from ..modelio import load_model
        init_partial(model, load_model(cfg.init_from)[0].state_dict(), cfg.init_from)
    prog = _restore(ckpt, model, opt) if ckpt else _Progress()
    rng = np.random.default_rng(cfg.seed * 1000 + rank + 7919 * prog.start_epoch)  # a resumed run draws anew
    model = ray.train.torch.prepare_model(model)
    raw = model.module if hasattr(model, "module") else model
    worker = _Worker(cfg, task, model, raw, _averaged(cfg, raw, prog.ema_state), opt, device, rank, rng,
                     max(1, config["steps_per_epoch"]))
    return worker, prog


def train_loop_per_worker(config: dict) -> None:
    """Ray Train entry: ``config = {"cfg": TrainConfig as dict, "steps_per_epoch": int}``."""
    import ray.train

    w, prog = _setup_worker(config)
    cfg, task = w.cfg, w.task
    train_shard, val_shard = ray.train.get_dataset_shard("train"), ray.train.get_dataset_shard("val")
    bad_epochs = prog.bad_epochs(task.monitor)
    for epoch in range(prog.start_epoch, cfg.epochs):
        t0 = time.perf_counter()
        loss_sum, step = w.train_epoch(train_shard, epoch)
        train_phase_s = time.perf_counter() - t0
        sums = _all_reduce(w.validate(val_shard))
        loss_sum = _all_reduce(loss_sum)
        epoch_s = time.perf_counter() - t0
        prog.train_s += epoch_s
        metrics = {"epoch": epoch, "train_loss": float(loss_sum[0] / max(1, loss_sum[1])),
                   "lr": lr_at(cfg, step - 1, w.steps_per_epoch), "epoch_s": epoch_s, "train_s": prog.train_s,
                   "images_per_s": float(loss_sum[1]) / epoch_s,
                   "train_images_per_s": float(loss_sum[1]) / max(1e-9, train_phase_s), **task.finalize(sums)}
        prog.history.append(metrics)
        score = metrics[task.monitor]
        improved = prog.best is None or (score < prog.best if task.mode == "min" else score > prog.best)
        if improved:
            prog.best, bad_epochs = score, 0
        else:
            bad_epochs += 1
        if improved or cfg.keep == "last":
            prog.best_state = {k: v.detach().cpu().clone() for k, v in w.judged.state_dict().items()}
        stop = cfg.patience > 0 and bad_epochs >= cfg.patience
        if w.rank == 0:
            _print_epoch(cfg, epoch, metrics, improved)
        w.checkpoint_and_report(metrics, prog, epoch, stop)
        if stop:
            break
