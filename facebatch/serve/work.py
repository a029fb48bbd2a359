"""Bounded cost per request in the model replica: ``max_faces``, face chunks, cancellation.

A request reaches the model replica as a series of **units**, each one item of a
``@serve.batch`` call (:class:`facebatch.serve.app.FaceModel`):

* its first unit detects the faces of its image (batched with the other requests' images, in
  :meth:`FaceAnalyzer.detect`'s equal-padding sub-batches), keeps the largest ``max_faces``
  (the request's, capped by the server's) and analyses the first ``face_chunk`` of them in the
  same call;
* each further unit analyses the next ``face_chunk`` faces. The request puts its next unit in
  the batch queue only once the previous one has answered, so a request has at most one unit
  in any batch call and its next one queues behind whatever arrived meanwhile (round robin
  between requests, one unit each): a 900-face photo is spread over many calls with the other
  requests' work between them, and a small request waits only for the units ahead of it, each
  one image's detection and at most ``face_chunk`` faces. (Serve forms the next batch while one
  runs, so on a quiet replica chunks and small requests alternate rather than share a call.)

A request whose task was cancelled (the ingress's deadline, 504, or the client went away: the
ingress cancels the handle call and Serve cancels the replica's task) or whose deadline has
passed in the replica (a backstop if a cancellation is lost) puts no further unit in the queue;
a queued unit of it is dropped by ``@serve.batch`` (cancelled future) or, if already in a
batch, skipped by :meth:`FaceWork.run` before detection and again before analysis. At most the
one chunk being computed when it stopped is finished (counted in ``units_finished_stopped``).

Each face's answer is that of :meth:`FaceAnalyzer.analyze` on the whole image: detection runs
on the image alone or in equal-padding sub-batches, and the heads and the gallery work per face,
so any subset of an image's detections gives those faces' answers (``analyze(faces=...)``).
This module does not import Ray: it is tested without it.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .api import AnnotateOptions, shape_faces


@dataclass(eq=False)
class Request:
    """One request's state in the replica, shared by its units."""

    opts: AnnotateOptions
    max_faces: int                 #: effective cap: the request's max_faces, at most the server's
    deadline: float | None = None  #: time.monotonic() after which no unit of it runs
    cancelled: bool = False        #: set when the request's task is cancelled
    found: int = 0                 #: faces the detector found in the image
    units: int = 0                 #: units computed for it

    def stopped(self) -> bool:
        return self.cancelled or (self.deadline is not None and time.monotonic() > self.deadline)


@dataclass(eq=False)
class Unit:
    """One request's item in one batch call: ``faces is None``: detect, keep the largest
    ``max_faces`` and analyse the first chunk (``rest`` gets the others); else analyse ``faces``."""

    request: Request
    image: np.ndarray
    faces: list | None = None
    rest: list = field(default_factory=list)


@dataclass
class UnitResult:
    faces: list[dict]   #: shaped answers of the faces analysed in this unit, largest first
    rest: list          #: detections left for later units (after a first unit)
    found: int          #: faces found in the image


class FaceWork:
    """Runs batches of units on one :class:`~facebatch.inference.FaceAnalyzer` (one thread)."""

    def __init__(self, fa, face_chunk: int, max_faces: int) -> None:
        if face_chunk < 1 or max_faces < 1:
            raise ValueError("face_chunk and max_faces must be at least 1")
        self.fa, self.face_chunk, self.max_faces = fa, face_chunk, max_faces
        self.counters: dict[str, float] = dict(
            units=0, detect_units=0, chunk_units=0, faces=0, truncated_requests=0,
            units_skipped_stopped=0, units_finished_stopped=0, compute_cpu_s=0.0)

    def request(self, opts: AnnotateOptions, timeout_s: float | None = None) -> Request:
        cap = self.max_faces if opts.max_faces is None else min(opts.max_faces, self.max_faces)
        deadline = None if timeout_s is None else time.monotonic() + float(timeout_s)
        return Request(opts, cap, deadline)

    def next_unit(self, request: Request, image: np.ndarray, rest: list) -> tuple[Unit, list]:
        """The unit of the next ``face_chunk`` detections, and what is left after it."""
        return Unit(request, image, list(rest[:self.face_chunk])), list(rest[self.face_chunk:])

    def run(self, units: list[Unit]) -> list[UnitResult | None]:
        """Compute a batch call: ``None`` for a unit whose request had stopped before its turn."""
        t_cpu = time.thread_time()
        c = self.counters
        try:
            out: list[UnitResult | None] = [None] * len(units)
            live = [k for k, u in enumerate(units) if not u.request.stopped()]
            c["units_skipped_stopped"] += len(units) - len(live)
            detect = [k for k in live if units[k].faces is None]
            if detect:
                found = self.fa.detect([units[k].image for k in detect])
                for k, fs in zip(detect, found):
                    u = units[k]
                    u.request.found = len(fs)
                    keep = fs[:u.request.max_faces]
                    if len(keep) < len(fs):
                        c["truncated_requests"] += 1
                    u.faces, u.rest = list(keep[:self.face_chunk]), list(keep[self.face_chunk:])
                c["detect_units"] += len(detect)
            run = [k for k in live if not units[k].request.stopped()]  # stopped while the detector ran
            c["units_skipped_stopped"] += len(live) - len(run)
            if not run:
                return out
            opts = [units[k].request.opts for k in run]
            results = self.fa.analyze([np.asarray(units[k].image) for k in run],
                                      faces=[units[k].faces for k in run],
                                      keypoints=any(o.keypoints for o in opts),
                                      attributes=any(o.attributes for o in opts),
                                      identity=any(o.identity for o in opts),
                                      embedding=any(o.embedding for o in opts))
            for k, r in zip(run, results):
                u = units[k]
                u.request.units += 1
                out[k] = UnitResult(shape_faces(r, dataclasses.replace(u.request.opts, max_faces=None)),
                                    u.rest, u.request.found)
                c["faces"] += len(r)
                if u.request.stopped():
                    c["units_finished_stopped"] += 1
            c["units"] += len(run)
            c["chunk_units"] += sum(1 for k in run if k not in detect)
            return out
        finally:
            c["compute_cpu_s"] += time.thread_time() - t_cpu


def answer(faces: list[dict], found: int) -> dict[str, Any]:
    """What the model gives the ingress for one request."""
    return {"faces": faces, "faces_found": found}
