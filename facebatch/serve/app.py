"""The Ray Serve application: an HTTP ingress in front of a batched :class:`FaceAnalyzer` deployment.

    serve run facebatch.serve.app:app                          # defaults
    serve run facebatch.serve.app:build_app max_batch_size=8   # builder with options
    serve build facebatch.serve.app:app -o serve.yaml
    facebatch serve --port 8000                                # the command (see facebatch.serve.cli)

Two deployments:

* ``Ingress`` (HTTP): token, body limit, decoding in a thread pool, per-request options and
  deadline, JSON errors (:mod:`facebatch.serve.api`). It calls the model through a
  :class:`~ray.serve.handle.DeploymentHandle` whose queue is bounded (``max_queued_requests``).
* ``FaceModel``: one :class:`~facebatch.inference.FaceAnalyzer` per replica. Concurrent requests
  are gathered by ``@serve.batch``, whose items are **units** of work (:mod:`facebatch.serve.work`):
  a request's first unit detects its image's faces (batched with the other first units' images;
  ``FaceAnalyzer.detect`` forms sub-batches of the same padded input size only, so an image gets
  the same answer in any batch as alone), keeps the largest ``max_faces`` and analyses the first
  ``face_chunk`` of them; each further unit analyses the next ``face_chunk``. A request queues
  its next unit only when the previous one has answered, so a photo with hundreds of faces is
  spread over many calls, with the other requests' work queued between them. A cancelled request
  (504 or the client went away) stops between units.

Limits on both hops come from :meth:`ServeOptions.limits`, so that neither caps the batch.
"""
from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from ray import serve
from ray.serve import Application

from .api import AnnotateAPI, AnnotateOptions
from .options import APP_NAME, TOKEN_ENV, ServeOptions, check_exposure
from .work import FaceWork, Unit, UnitResult, answer

log = logging.getLogger("facebatch.serve")


@serve.deployment(name="FaceModel")
class FaceModel:
    """FaceAnalyzer behind ``@serve.batch``; every method is async, compute runs in one thread."""

    def __init__(self, options: dict) -> None:
        import torch

        self.options = ServeOptions.from_dict(options)
        torch.set_num_threads(self.options.threads())
        t = time.perf_counter()
        self.fa = self.options.analyzer.build()
        self.fa.analyze([np.zeros((64, 64, 3), np.uint8)])  # warm the detector's first-call costs
        self.load_s = time.perf_counter() - t
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="facemodel")
        self._batched.set_max_batch_size(self.options.max_batch_size)
        self._batched.set_batch_wait_timeout_s(self.options.batch_wait_timeout_s)
        self.work = FaceWork(self.fa, face_chunk=self.options.face_chunk, max_faces=self.options.max_faces)
        self.batch_sizes: Counter = Counter()
        self.requests = self.cancelled = self.deadline_stops = 0
        self.running_units = 0  # units of the batch call being computed now
        self.busy_s = 0.0
        try:
            self.replica = serve.get_replica_context().replica_id.unique_id
        except Exception:  # pragma: no cover - outside a replica
            self.replica = "local"
        log.info("FaceModel %s loaded in %.1f s: max_batch_size=%d, wait=%.3f s, torch threads=%d, "
                 "max_faces=%d, face_chunk=%d", self.replica, self.load_s, self.options.max_batch_size,
                 self.options.batch_wait_timeout_s, self.options.threads(), self.options.max_faces,
                 self.options.face_chunk)

    async def ready(self) -> bool:
        return True

    async def describe(self) -> dict:
        return self.fa.describe()

    async def stats(self) -> dict:
        c = self.work.counters
        return {"replica": self.replica, "load_s": round(self.load_s, 2),
                "max_batch_size": self.options.max_batch_size,
                "batch_wait_timeout_s": self.options.batch_wait_timeout_s,
                "max_faces": self.options.max_faces, "face_chunk": self.options.face_chunk,
                "batches": sum(self.batch_sizes.values()), "requests": self.requests,
                "images": int(c["detect_units"]), "faces": int(c["faces"]),
                "units": int(c["units"]), "chunk_units": int(c["chunk_units"]),
                "truncated_requests": int(c["truncated_requests"]),
                "cancelled_requests": self.cancelled, "deadline_stops": self.deadline_stops,
                "units_skipped_stopped": int(c["units_skipped_stopped"]),
                "units_finished_stopped": int(c["units_finished_stopped"]), "running_units": self.running_units,
                "batch_sizes": {str(k): v for k, v in sorted(self.batch_sizes.items())},
                "max_batch_seen": max(self.batch_sizes, default=0), "busy_s": round(self.busy_s, 3),
                "compute_cpu_s": round(c["compute_cpu_s"], 3), "process_cpu_s": round(time.process_time(), 3),
                "timings_s": {k: round(v, 3) for k, v in self.fa.timings.items()}}

    async def analyze(self, image: np.ndarray, opts: AnnotateOptions, timeout_s: float | None = None) -> dict:
        """One request: its first unit (detection + first chunk), then one unit per further chunk.

        Cancelling the task (Serve does when the ingress cancels the handle call) stops it between
        units; ``timeout_s`` (what is left of the request's deadline) stops it too, as a backstop.
        """
        self.requests += 1
        req = self.work.request(opts, timeout_s)
        try:
            r = await self._unit(Unit(req, image))
            faces, rest = list(r.faces), r.rest
            while rest:
                unit, rest = self.work.next_unit(req, image, rest)
                faces += (await self._unit(unit)).faces
            return answer(faces, r.found)
        except asyncio.CancelledError:
            req.cancelled = True
            self.cancelled += 1
            raise

    async def _unit(self, unit: Unit) -> UnitResult:
        if unit.request.stopped():
            self.deadline_stops += 1
            raise TimeoutError("the request's deadline passed in the model replica")
        r = await self._batched(unit)
        if r is None:  # stopped while queued: its deadline passed
            self.deadline_stops += 1
            raise TimeoutError("the request's deadline passed in the model replica")
        return r

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def _batched(self, units: list[Unit]) -> list[UnitResult | None]:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self.run_batch, units)

    def run_batch(self, units: list[Unit]) -> list[UnitResult | None]:
        """One batch call (:meth:`FaceWork.run`): each request's unit, computed together."""
        t = time.perf_counter()
        self.running_units = len(units)
        try:
            out = self.work.run(units)
        finally:
            self.running_units = 0
        self.batch_sizes[len(units)] += 1
        self.busy_s += time.perf_counter() - t
        if sum(self.batch_sizes.values()) % 200 == 0:
            log.info("FaceModel %s batch sizes so far: %s", self.replica, dict(sorted(self.batch_sizes.items())))
        return out


class _HandleModels:
    """:class:`~facebatch.serve.api.Models` over a DeploymentHandle to FaceModel."""

    def __init__(self, handle) -> None:
        self.h = handle

    async def analyze(self, image, opts, timeout_s=None):
        resp = self.h.analyze.remote(image, opts, timeout_s)
        try:
            return await resp
        except asyncio.CancelledError:
            # the ingress's deadline (504) or the client went away: cancel the model's task too, so
            # that the replica stops between units (Serve does not cancel an assigned child request)
            resp.cancel()
            raise

    async def describe(self):
        return await self.h.describe.remote()

    async def stats(self):
        return await self.h.stats.remote()

    async def ready(self):
        return await self.h.ready.remote()


@serve.deployment(name="Ingress")
class Ingress:
    """HTTP in, JSON out (:class:`facebatch.serve.api.AnnotateAPI`)."""

    def __init__(self, model, options: dict) -> None:
        from ray.serve.exceptions import BackPressureError, DeploymentUnavailableError
        opts = ServeOptions.from_dict(options)
        token = opts.token or os.environ.get(TOKEN_ENV) or None
        check_exposure(None, token, opts)  # require_token; where requests come in is checked per request
        self.api = AnnotateAPI(_HandleModels(model), opts, token,
                               backpressure_errors=(BackPressureError,),
                               unavailable_errors=(DeploymentUnavailableError,))

    async def __call__(self, request):
        return await self.api.handle(request)

    def __del__(self):
        api = getattr(self, "api", None)
        if api is not None:
            api.close()


def build_app(options: dict | ServeOptions | None = None) -> Application:
    """The application for ``serve.run``, ``serve run``/``serve build`` and ``cluster/serve.yaml``'s
    ``args`` (any :class:`ServeOptions` field; strings are converted)."""
    o = ServeOptions.from_dict(options)
    lim = o.limits()
    model_opts = dict(max_ongoing_requests=lim["model_max_ongoing_requests"],
                      max_queued_requests=lim["model_max_queued_requests"],
                      ray_actor_options={"num_cpus": o.replica_cpus})
    rng = o.autoscale_range()
    if rng:
        model_opts["autoscaling_config"] = {"min_replicas": rng[0], "max_replicas": rng[1],
                                            "initial_replicas": max(1, rng[0]),
                                            "target_ongoing_requests": o.max_batch_size}
    else:
        model_opts["num_replicas"] = o.replicas
    model_args = {**o.to_dict(secrets=True), "token": None}  # the model never sees the token
    model = FaceModel.options(**model_opts).bind(model_args)
    return Ingress.options(num_replicas=o.ingress_replicas,
                           max_ongoing_requests=lim["ingress_max_ongoing_requests"],
                           max_queued_requests=lim["ingress_max_queued_requests"],
                           backpressure_config={"status_code": 503, "retry_after_s": o.retry_after_s},
                           ray_actor_options={"num_cpus": o.ingress_cpus}).bind(model, o.to_dict(secrets=True))


app = build_app()
"""The default application (``serve run facebatch.serve.app:app``)."""

__all__ = ["APP_NAME", "FaceModel", "Ingress", "app", "build_app", "check_exposure"]
