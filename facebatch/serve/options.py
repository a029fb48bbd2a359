"""Options of the online annotation API, and the Serve limits derived from them.

One :class:`ServeOptions` feeds ``facebatch serve``, :func:`facebatch.serve.app.build_app` and the
``args:`` of ``cluster/serve.yaml``. Every per-deployment Serve limit (``max_ongoing_requests``,
``max_queued_requests``, the ``@serve.batch`` size) is computed here from ``max_batch_size`` and
the replica counts, so that they stay consistent (see :meth:`ServeOptions.limits`).
"""
from __future__ import annotations

import dataclasses
import ipaddress
import json
from dataclasses import asdict, dataclass, field
from typing import Any

from ..imaging import DEFAULT_MAX_PIXELS
from ..inference.config import AnalyzerConfig

TOKEN_ENV = "FACEBATCH_SERVE_TOKEN"
DEFAULT_PORT = 8000
APP_NAME = "facebatch"
#: flat keys that :meth:`ServeOptions.from_dict` takes into ``analyzer`` (``serve run ... key=value``
#: and ``cluster/serve.yaml``'s ``args`` are flat): ``detector`` is the backend name,
#: ``detector_options`` further :class:`~facebatch.detection.DetectorConfig` fields
ANALYZER_KEYS = ("detector", "detector_options", "keypoints", "attributes", "gallery", "device",
                 "identity_threshold", "runtime", "identity", "heads")


@dataclass
class ServeOptions:
    """Everything the app needs; all fields are plain values (JSON/YAML friendly).

    Models:
        analyzer: the :class:`~facebatch.inference.AnalyzerConfig` every model replica builds its
        analyzer from (a model of ``None``/``"none"`` is skipped). :meth:`from_dict` also takes
        its options as flat keys (:data:`ANALYZER_KEYS`).
    Scaling:
        replicas: model replicas (fixed); ``autoscale`` ``"MIN:MAX"`` replaces it.
        replica_cpus: CPUs reserved per model replica; torch_threads: intra-op threads (0: as many
        as replica_cpus, at least 1). ingress_replicas / ingress_cpus: the HTTP deployment.
    Batching:
        max_batch_size: units (a request's image, or a further chunk of its faces) per
        ``@serve.batch`` call; batch_wait_timeout_s: how long a partial batch waits for more.
    Cost per request (:mod:`.work`):
        max_faces: faces analysed per image at most, the largest first (default and cap of the
        request's ``max_faces``; the answer says ``faces_truncated`` and ``faces_found``).
        face_chunk: faces of one request analysed per batch call; a request's further faces go to
        later calls, between other requests' work.
    Limits:
        max_body_mb (413 above), max_pixels (422 ``too_large`` above), request_timeout_s (504 after),
        max_queued_requests (503 + Retry-After once that many wait for a model replica), retry_after_s.
    Security:
        token (else ``$FACEBATCH_SERVE_TOKEN`` in the replica); require_token: refuse to start
        without one; insecure: allow a non-loopback HTTP host without a token.
    """

    analyzer: AnalyzerConfig = field(default_factory=AnalyzerConfig)
    replicas: int = 1
    autoscale: str | None = None
    replica_cpus: float = 1.0
    torch_threads: int = 0
    ingress_replicas: int = 1
    ingress_cpus: float = 0.1
    decode_threads: int = 2
    max_batch_size: int = 16
    batch_wait_timeout_s: float = 0.01
    max_faces: int = 64
    face_chunk: int = 8
    max_body_mb: float = 20.0
    max_pixels: int = DEFAULT_MAX_PIXELS
    request_timeout_s: float = 30.0
    max_queued_requests: int = 64
    retry_after_s: int = 1
    token: str | None = None
    require_token: bool = False
    insecure: bool = False

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(cls, d: dict | "ServeOptions" | None) -> "ServeOptions":
        """From a dict (``serve run ... key=value`` gives strings; YAML gives typed values).

        ``analyzer`` is an :class:`~facebatch.inference.AnalyzerConfig`, its ``to_dict()`` form or
        that as JSON; the flat :data:`ANALYZER_KEYS` change it. Unknown keys are an error (Serve's
        own config would ignore a misspelt key silently).
        """
        if isinstance(d, ServeOptions):
            return d
        d = dict(d or {})
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(fields) - set(ANALYZER_KEYS))
        if unknown:
            raise ValueError(f"unknown serve option(s) {', '.join(unknown)}; "
                             f"known: {', '.join([*fields, *ANALYZER_KEYS])}")
        flat = {k: d.pop(k) for k in ANALYZER_KEYS if k in d}
        analyzer = _analyzer_config(d.pop("analyzer", None), flat)
        kw = {k: _coerce(fields[k], v) for k, v in d.items()}
        return cls(analyzer=analyzer, **kw).validate()

    def to_dict(self, secrets: bool = False) -> dict:
        d = asdict(self)
        d["analyzer"] = self.analyzer.to_dict()
        if not secrets:
            d["token"] = "***" if self.token else None
        return d

    def validate(self) -> "ServeOptions":
        self.analyzer.validate()
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be at least 1, got {self.max_batch_size}")
        if self.max_faces < 1 or self.face_chunk < 1:
            raise ValueError(f"max_faces and face_chunk must be at least 1, got {self.max_faces}, {self.face_chunk}")
        if self.replicas < 1 or self.ingress_replicas < 1:
            raise ValueError("replicas and ingress_replicas must be at least 1")
        if self.autoscale is not None:
            self.autoscale_range()
        if self.max_body_mb <= 0 or self.request_timeout_s <= 0 or self.batch_wait_timeout_s < 0:
            raise ValueError("max_body_mb and request_timeout_s must be positive, batch_wait_timeout_s >= 0")
        if self.max_queued_requests < 1:
            raise ValueError(f"max_queued_requests must be at least 1 (bounded), got {self.max_queued_requests}")
        if self.replica_cpus <= 0 or self.ingress_cpus < 0:
            raise ValueError("replica_cpus must be positive and ingress_cpus non-negative")
        return self

    # ------------------------------------------------------------------ derived values
    def autoscale_range(self) -> tuple[int, int] | None:
        if not self.autoscale:
            return None
        try:
            lo, hi = (int(v) for v in str(self.autoscale).split(":"))
        except ValueError:
            raise ValueError(f"autoscale must be MIN:MAX (e.g. 1:4), got {self.autoscale!r}") from None
        if lo < 0 or hi < 1 or lo > hi:
            raise ValueError(f"autoscale needs 0 <= MIN <= MAX and MAX >= 1, got {self.autoscale!r}")
        return lo, hi

    @property
    def max_replicas(self) -> int:
        r = self.autoscale_range()
        return r[1] if r else self.replicas

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 1024 * 1024)

    def limits(self) -> dict[str, int]:
        """Serve limits that keep every hop from capping the batch (ray issue 43288).

        * model replica: ``max_ongoing_requests = 2 * max_batch_size``: one batch runs while the
          next one fills (``max_concurrent_batches`` is 1), so a full batch is always possible.
        * the ingress's handle queues at most ``max_queued_requests`` requests for the model
          (more: 503 with Retry-After, answered by the ingress in JSON).
        * ingress replica: room for every model slot, that queue, and one more batch, so the
          ingress never caps the batch and the model queue bound is what rejects. Its own
          proxy-side queue is bounded as a backstop.
        """
        model_ongoing = 2 * self.max_batch_size
        per_ingress = -(-self.max_replicas // self.ingress_replicas)  # model replicas per ingress replica
        ingress_ongoing = model_ongoing * max(1, per_ingress) + self.max_queued_requests + self.max_batch_size
        return {"model_max_ongoing_requests": model_ongoing,
                "model_max_queued_requests": self.max_queued_requests,
                "ingress_max_ongoing_requests": ingress_ongoing,
                "ingress_max_queued_requests": ingress_ongoing}

    def threads(self) -> int:
        return self.torch_threads if self.torch_threads > 0 else max(1, int(self.replica_cpus))


def is_loopback(host: str | None) -> bool:
    """``127.0.0.1``, ``::1``, ``localhost``: reachable from this machine only."""
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(host: str | None, token: str | None, options: ServeOptions) -> None:
    """Refuse to answer beyond this machine without a token (identities are personal data).

    ``host``: the address a request reached the server at (its ASGI ``server``), or ``None`` at
    start-up, before any request, where only ``require_token`` is checked.
    """
    if token:
        return
    if options.require_token:
        raise RuntimeError(f"require_token is set but no token was given (--token or ${TOKEN_ENV})")
    if host is not None and not options.insecure and not is_loopback(host):
        raise RuntimeError(f"this request reached Serve at {host!r}, not loopback, and no token is set: set --token "
                           f"or ${TOKEN_ENV}, bind 127.0.0.1, or pass --insecure (insecure=true) to allow it")


def _none(v: Any) -> Any:
    return None if isinstance(v, str) and v.lower() in ("none", "null") else v


def _mapping(name: str, v: Any) -> dict:
    if isinstance(v, str):
        v = json.loads(v)
    if not isinstance(v, dict):
        raise ValueError(f"{name} must be a mapping, got {v!r}")
    return v


def _analyzer_config(base: Any, flat: dict) -> AnalyzerConfig:
    """``base`` (a config, its dict or JSON, or ``None``: the defaults) changed by the flat keys."""
    if base is None or isinstance(base, AnalyzerConfig):
        d = (base or AnalyzerConfig()).to_dict()
    else:
        d = AnalyzerConfig.from_dict(_mapping("analyzer", base)).to_dict()
    det = d["detector"]
    if "detector" in flat:
        det["backend"] = str(flat.pop("detector"))
    det.update(_mapping("detector_options", flat.pop("detector_options", None) or {}))
    for k, v in flat.items():
        v = _none(v)
        if k == "heads" and isinstance(v, str):
            v = [h for h in v.split(",") if h.strip()]
        d[k] = float(v) if k == "identity_threshold" and v is not None else v
    return AnalyzerConfig.from_dict(d)


def _coerce(f: dataclasses.Field, v: Any) -> Any:
    t = str(f.type)
    if v is None or (isinstance(v, str) and v.lower() in ("none", "null") and "None" in t):
        return None
    if t.startswith("bool"):
        if isinstance(v, str):
            if v.lower() in ("1", "true", "yes", "on"):
                return True
            if v.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(f"{f.name} must be true or false, got {v!r}")
        return bool(v)
    if t.startswith("int"):
        return int(v)
    if t.startswith("float"):
        return float(v)
    return str(v)
