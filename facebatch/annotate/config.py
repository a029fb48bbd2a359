"""The annotate job's options, validated before any work starts."""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from ..imaging import DEFAULT_MAX_PIXELS
from ..inference.config import AnalyzerConfig

DECODE_MODES = ("draft", "full")


@dataclass
class AnnotateConfig:
    """Everything that decides an annotate run (recorded in every part's metadata).

    Args:
        input: folder, ``s3://bucket/prefix`` or a manifest (``.csv``/``.parquet`` with a ``path`` column).
        output: folder or ``s3://`` prefix (DST).
        analyzer: the models (keypoints, attributes: shipped name, model file, or ``none``), the
            ``enroll`` gallery for identities (``None``: identity columns null), the detector
            options (as ``preprocess``) and the device; each actor builds its analyzer from it.
        people: after the run, group the live faces into persons in ``DST/_people/`` (the people
            stage, :func:`facebatch.people.run_people`; implies ``embeddings``).
        min_faces: with ``people``, the smallest group of faces that becomes a person.
        embeddings: store the identity embedding (128-d from the identity model, which then runs;
            biometric data: off by default).
        crops: store the 256 px JPEG crop of each face.
        all_faces: one row per face (default); ``False``: only the largest face.
        decode: ``draft`` (JPEG decoded at the smallest scale the detector needs) or ``full``.
        workers, cpus_per_worker, gpus_per_worker: the analyzer actor pool.
        shard_size: inputs per part file.
        max_pixels: larger images get ``too_large`` without decoding.
        max_failure_rate: exit status 3 above this share of failed inputs.
        full: ignore earlier runs and redo every listed object (erased ones stay erased).
        max_reannotate: re-annotate at most this many stale objects (annotated by other models,
            :mod:`.versions`) this run, oldest first; ``None``: all of them. The summary's
            ``stale_left`` counts the rest, which later runs take.
        dry_run: list and diff, print what would be processed, write nothing.
        report: write ``report.html`` into the run folder.
        s3_endpoint_url: S3-compatible endpoint (default ``$AWS_ENDPOINT_URL``).
        lock_ttl_s: the output lock's time-to-live (renewed every third of it while running).
        retry_s: how long transient storage errors are retried per read or write.
    """

    input: str
    output: str
    analyzer: AnalyzerConfig = field(default_factory=AnalyzerConfig)
    embeddings: bool = False
    people: bool = False
    min_faces: int = 2
    crops: bool = False
    all_faces: bool = True
    decode: str = "draft"
    workers: int | None = None
    cpus_per_worker: float | None = None
    gpus_per_worker: float = 0.0
    shard_size: int = 32
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_failure_rate: float = 0.05
    full: bool = False
    max_reannotate: int | None = None
    dry_run: bool = False
    report: bool = False
    s3_endpoint_url: str | None = None
    lock_ttl_s: float = 900.0
    retry_s: float = 120.0

    def validate(self) -> "AnnotateConfig":
        if self.gpus_per_worker > 0 and self.analyzer.device == "cpu":
            self.analyzer.device = "cuda"
        if self.people:
            self.embeddings = True  # the people stage clusters the stored embeddings
        if self.min_faces < 1:
            raise ValueError(f"--min-faces must be at least 1, got {self.min_faces}")
        if self.embeddings and self.analyzer.identity is None:
            self.analyzer.identity = "identity"  # embeddings come from the identity model
        self.analyzer.validate()
        if self.decode not in DECODE_MODES:
            raise ValueError(f"--decode must be one of {DECODE_MODES}, got {self.decode!r}")
        if self.shard_size < 1:
            raise ValueError(f"--shard-size must be at least 1, got {self.shard_size}")
        if self.max_pixels < 1:
            raise ValueError(f"--max-pixels must be positive, got {self.max_pixels}")
        if not 0.0 <= self.max_failure_rate <= 1.0:
            raise ValueError(f"--max-failure-rate must be in [0, 1], got {self.max_failure_rate}")
        if self.max_reannotate is not None and self.max_reannotate < 0:
            raise ValueError(f"--max-reannotate must be >= 0, got {self.max_reannotate}")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"--workers must be at least 1, got {self.workers}")
        if self.cpus_per_worker is not None and self.cpus_per_worker <= 0:
            raise ValueError(f"--cpus-per-worker must be positive, got {self.cpus_per_worker}")
        if self.gpus_per_worker < 0:
            raise ValueError(f"--gpus-per-worker must be >= 0, got {self.gpus_per_worker}")
        if self.lock_ttl_s < 10:
            raise ValueError(f"--lock-ttl must be at least 10 s, got {self.lock_ttl_s}")
        if self.analyzer.device.startswith("cuda") and self.gpus_per_worker == 0:
            self.gpus_per_worker = 1.0
        return self

    def to_dict(self) -> dict:
        return asdict(self)


def shard_size_for(n_todo: int, shard_size: int, actors: int) -> int:
    """Inputs per shard (part file): at most ``shard_size``, evened out so that the shards split
    into equal rounds over the actors. On a small run this is what decides the wall time: 100
    inputs in shards of 32 on 2 actors are 64 + 36 per actor, in shards of 25 are 50 + 50. A
    large run keeps ``shard_size`` (to within one input)."""
    if n_todo <= 0:
        return shard_size
    rounds = math.ceil(math.ceil(n_todo / shard_size) / max(1, actors))
    return max(1, math.ceil(n_todo / (rounds * max(1, actors))))
