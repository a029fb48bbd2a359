"""The preprocess job's options, validated before any work starts."""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from ..detection import DetectorConfig
from ..imaging import DEFAULT_MAX_PIXELS
from .rows import CropConfig

PROGRESS_MODES = ("auto", "bar", "log", "none")


@dataclass
class PreprocessConfig:
    """Everything that decides the output of a preprocess run (saved beside it).

    Args:
        input: folder, ``s3://bucket/prefix``, or a manifest (``.parquet``/``.csv`` with a ``path`` column).
        output: folder or ``s3://`` prefix for the Parquet parts.
        format: how labels are found (see :data:`facebatch.formats.sources.FORMATS`).
        labels: labels file when it is not where the format expects it (udacity68).
        detector: detector options.
        crop: crop options.
        shard_size: inputs per output part; parts are numbered from the sorted inputs.
        max_pixels: images with more pixels get ``too_large`` without being decoded.
        val_fraction: share of persons put in the ``val`` split where a dataset has no split.
        max_failure_rate: exit non-zero when more than this share of inputs fail (default 5%).
        resume: skip parts whose done-marker exists with the same inputs hash and no retryable failures.
        limit: only the first N sorted inputs (for trials); at least 1.
        splits: only inputs of these splits (``train``, ``val``, ``test``; as assigned after
            ``limit``), e.g. only the validation people for an evaluation; ``None`` = all.
        workers: detection actors (default: sized from the cluster).
        cpus_per_worker: CPUs reserved per detection actor (default: sized from the cluster).
        gpus_per_worker: GPUs per detection actor (0: CPU detection).
        s3_endpoint_url: S3-compatible endpoint (default: ``$AWS_ENDPOINT_URL``).
        progress: ``auto`` (bar in a terminal, lines in logs), ``bar``, ``log`` or ``none``.
        log_every: seconds between progress lines in ``log`` mode (also a heartbeat while waiting).
        retry_s: how long transient storage errors (connection refused/reset, timeouts, 5xx,
            SlowDown) are retried with backoff, per read or write, before they count as failures.
        degrade: a :mod:`facebatch.degrade` spec (``scale=0.5,jpeg=30``) applied to every decoded
            image before detection, labels moved with it (robustness evaluation); ``None`` = off.
    """

    input: str
    output: str
    format: str = "folder"
    labels: str | None = None
    detector: DetectorConfig = field(default_factory=DetectorConfig)
    crop: CropConfig = field(default_factory=CropConfig)
    shard_size: int = 64
    max_pixels: int = DEFAULT_MAX_PIXELS
    val_fraction: float = 0.1
    max_failure_rate: float = 0.05
    resume: bool = False
    limit: int | None = None
    splits: tuple[str, ...] | None = None
    workers: int | None = None
    cpus_per_worker: float | None = None
    gpus_per_worker: float = 0.0
    s3_endpoint_url: str | None = None
    progress: str = "auto"
    log_every: float = 10.0
    retry_s: float = 120.0
    degrade: str | None = None

    def validate(self) -> "PreprocessConfig":
        from ..formats.sources import FORMATS
        if self.format not in FORMATS:
            raise ValueError(f"unknown --format {self.format!r}; choose one of: {', '.join(FORMATS)}")
        self.detector.validate()
        self.crop.validate()
        if self.shard_size < 1:
            raise ValueError(f"--shard-size must be at least 1, got {self.shard_size}")
        if self.max_pixels < 1:
            raise ValueError(f"--max-pixels must be positive, got {self.max_pixels}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"--val-fraction must be in [0, 1), got {self.val_fraction}")
        if not 0.0 <= self.max_failure_rate <= 1.0:
            raise ValueError(f"--max-failure-rate must be in [0, 1], got {self.max_failure_rate}")
        if self.progress not in PROGRESS_MODES:
            raise ValueError(f"--progress must be one of {PROGRESS_MODES}, got {self.progress!r}")
        if self.splits is not None and (not self.splits or set(self.splits) - {"train", "val", "test"}):
            raise ValueError(f"--splits takes train, val and/or test, got {','.join(self.splits) or 'nothing'}")
        if self.limit is not None and self.limit < 1:
            raise ValueError(f"--limit must be at least 1, got {self.limit} (leave it out to process every input)")
        if self.log_every <= 0:
            raise ValueError(f"--log-every must be positive, got {self.log_every}")
        if self.degrade is not None:
            from ..degrade import Degradation
            d = Degradation.parse(self.degrade)
            self.degrade = None if d.is_identity else str(d)
        if self.retry_s < 0:
            raise ValueError(f"--retry-seconds must be >= 0, got {self.retry_s}")
        if self.cpus_per_worker is not None and self.cpus_per_worker <= 0:
            raise ValueError(f"--cpus-per-worker must be positive, got {self.cpus_per_worker}")
        dev = str(self.detector.device)
        if not re.fullmatch(r"cpu|cuda(:\d+)?", dev):
            raise ValueError(f"unknown --device {dev!r}; use cpu, cuda or cuda:N")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"--workers must be at least 1, got {self.workers}")
        if self.gpus_per_worker < 0:
            raise ValueError(f"--gpus-per-worker must be >= 0, got {self.gpus_per_worker}")
        if self.gpus_per_worker > 0 and self.detector.device == "cpu":
            self.detector.device = "cuda"
        if self.detector.device.startswith("cuda") and self.gpus_per_worker == 0:
            self.gpus_per_worker = 1.0  # a CUDA detector needs a GPU reserved for its actor
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    def output_affecting(self) -> dict:
        """The options that change rows; a resumed run must match the first run on these."""
        d = self.to_dict()
        for k in ("resume", "workers", "cpus_per_worker", "gpus_per_worker", "progress", "log_every",
                  "max_failure_rate", "s3_endpoint_url", "retry_s"):
            d.pop(k)
        d["detector"] = {k: v for k, v in d["detector"].items() if k not in ("device", "batch_size", "weights_dir")}
        return d

