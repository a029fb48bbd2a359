"""The HTTP API, independent of Ray: routing, token, body limit, decoding, errors, answers.

:class:`AnnotateAPI` answers a Starlette request. It talks to the models through a small
interface (``analyze(image, opts)``, ``describe()``, ``stats()``, ``ready()``, all async), which
the Serve ingress fills with a :class:`~ray.serve.handle.DeploymentHandle` and tests may fill
with a fake. Every answer is JSON ``{"status": ..., ...}``; errors are ``{"status", "error"}``
with the batch job's status words for image problems (``empty_file``, ``decode_error``,
``too_large``) and these for the rest:

=====  ==================  ==========================================================
code   status              when
=====  ==================  ==========================================================
400    bad_request         bad query option or multipart form without a ``file`` field
401    unauthorized        token missing or wrong (header ``WWW-Authenticate: Bearer``)
403    forbidden           no token is set and the request reached the server at a non-loopback
                           address (allowed with ``insecure``)
404    not_found           unknown path
405    method_not_allowed  e.g. GET /v1/annotate
413    body_too_large      body over ``max_body_mb`` (Content-Length, or counted while read)
422    empty_file, decode_error, too_large   the image itself
500    internal_error      an unexpected failure (logged with its traceback; none sent)
503    overloaded          the model queue is full (``Retry-After`` header)
503    unavailable         models not loaded yet / no replica
504    timeout             the request ran past its deadline (its work in the model replica is
                           cancelled: the handle call, and so the replica's task, between face chunks)
=====  ==================  ==========================================================

A 200 answer carries ``faces`` (at most ``max_faces``, the largest first), ``faces_found`` (what
the detector found) and ``faces_truncated`` (``faces_found`` is more than the faces answered).
"""
from __future__ import annotations

import asyncio
import dataclasses
import hmac
import json
import logging
import math
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any, Protocol

from ..imaging import decode_image
from .options import ServeOptions, check_exposure

log = logging.getLogger(__name__)

API_PREFIX = "/v1"
PUBLIC_PATHS = {"/v1/health"}  # no token: liveness probes; answers name no model or person


class ApiError(Exception):
    """An answer other than 200: HTTP code, status word, message, extra headers."""

    def __init__(self, code: int, status: str, error: str, headers: dict | None = None) -> None:
        super().__init__(error)
        self.code, self.status, self.error, self.headers = code, status, error, headers or {}


@dataclass(frozen=True)
class AnnotateOptions:
    """Per-request options (query string of POST /v1/annotate)."""

    keypoints: bool = True
    attributes: bool = True
    identity: bool = True
    embedding: bool = False
    max_faces: int | None = None

    @classmethod
    def from_query(cls, q) -> "AnnotateOptions":
        known = {"keypoints", "attributes", "identity", "embedding", "max_faces", "timeout_s"}
        unknown = sorted(set(q.keys()) - known)
        if unknown:
            raise ApiError(400, "bad_request", f"unknown query option(s): {', '.join(unknown)}; "
                                               f"known: {', '.join(sorted(known))}")
        kw: dict[str, Any] = {}
        for name in ("keypoints", "attributes", "identity", "embedding"):
            if name in q:
                kw[name] = _flag(name, q[name])
        if q.get("max_faces") not in (None, ""):
            try:
                kw["max_faces"] = int(q["max_faces"])
            except ValueError:
                raise ApiError(400, "bad_request", f"max_faces must be an integer, got {q['max_faces']!r}") from None
            if kw["max_faces"] < 0:
                raise ApiError(400, "bad_request", "max_faces must be >= 0")
        return cls(**kw)

    def capped(self, max_faces: int) -> "AnnotateOptions":
        """The options with ``max_faces`` at most the server's (its default when not given)."""
        mf = max_faces if self.max_faces is None else min(self.max_faces, max_faces)
        return self if mf == self.max_faces else dataclasses.replace(self, max_faces=mf)


def _flag(name: str, v: str) -> bool:
    if v.lower() in ("1", "true", "yes"):
        return True
    if v.lower() in ("0", "false", "no"):
        return False
    raise ApiError(400, "bad_request", f"{name} must be 0 or 1, got {v!r}")


def shape_faces(faces: list, opts: AnnotateOptions) -> list[dict]:
    """FaceResults computed with every part on -> what ``FaceAnalyzer.analyze(..., **opts)``
    followed by ``to_dict(embedding=opts.embedding)`` gives: the columns of an output kind that
    was not asked for are ``None`` (binary and regression outputs absent, embeddings only when
    asked). The fields come from the heads' declared outputs (``FaceResult.declared``)."""
    from ..inference.outputs import BINARY, REGRESSION, kinds_wanted  # in the replica, which has torch
    kinds = kinds_wanted(keypoints=opts.keypoints, attributes=opts.attributes, identity=opts.identity,
                         embedding=opts.embedding)
    out = []
    for f in faces[: opts.max_faces] if opts.max_faces is not None else faces:
        d = f.to_dict(embedding=opts.embedding)
        for o in f.declared:
            if o.kind in kinds:
                continue
            for col, _ in o.columns():
                if o.kind in (BINARY, REGRESSION):
                    d.pop(col, None)
                elif col in d:
                    d[col] = None
        out.append(d)
    return out


class Models(Protocol):
    async def analyze(self, image, opts: AnnotateOptions, timeout_s: float | None = None) -> dict:
        """``{"faces": [face dicts, largest first], "faces_found": faces detected}``; ``timeout_s``:
        what is left of the request's deadline (the model stops its work after it)."""
    async def describe(self) -> dict: ...
    async def stats(self) -> dict: ...
    async def ready(self) -> bool: ...


def json_response(code: int, body: dict, headers: dict | None = None):
    from starlette.responses import Response
    data = json.dumps(body, separators=(",", ":"), allow_nan=False).encode()
    return Response(data, status_code=code, media_type="application/json", headers=headers)


def error_body(e: ApiError) -> dict:
    return {"status": e.status, "error": e.error}


class AnnotateAPI:
    """The routes. ``handle(request)`` never raises; every answer is JSON."""

    def __init__(self, models: Models, options: ServeOptions, token: str | None,
                 backpressure_errors: tuple = (), unavailable_errors: tuple = ()) -> None:
        self.models, self.options = models, options
        self._token = token.encode() if token else None
        self._backpressure, self._unavailable = backpressure_errors, unavailable_errors
        self._pool = ThreadPoolExecutor(max_workers=max(1, options.decode_threads), thread_name_prefix="decode")
        self._describe: dict | None = None
        self.codes: Counter = Counter()
        self._last_ok = -1e9  # monotonic time of the last successful model call
        self.started = time.time()

    # ------------------------------------------------------------------ entry point
    async def handle(self, request) -> Any:
        t0 = time.monotonic()
        try:
            resp = await self._route(request, t0)
        except ApiError as e:
            resp = json_response(e.code, error_body(e), e.headers)
        except Exception as e:  # never a 500 with a traceback
            log.exception("unexpected error on %s %s", request.method, request.url.path)
            resp = json_response(500, {"status": "internal_error", "error": f"{type(e).__name__} (see server log)"})
        self.codes[resp.status_code] += 1
        return resp

    async def _route(self, request, t0: float):
        path = request.url.path.rstrip("/") or "/"
        routes = {"/v1/annotate": ("POST", self.annotate), "/v1/models": ("GET", self.models_info),
                  "/v1/health": ("GET", self.health), "/v1/stats": ("GET", self.stats)}
        if path not in routes:
            raise ApiError(404, "not_found", f"no route {path}; see /v1/annotate, /v1/models, /v1/health, /v1/stats")
        method, fn = routes[path]
        if request.method != method and not (method == "GET" and request.method == "HEAD"):
            raise ApiError(405, "method_not_allowed", f"{path} takes {method}", {"Allow": method})
        if path not in PUBLIC_PATHS:
            self._check_exposure(request)
            self._check_token(request)
        return await fn(request, t0)

    def _check_exposure(self, request) -> None:
        """No token: answer only requests that reached the server at a loopback address."""
        if self._token is None:
            host = (request.scope.get("server") or ("",))[0]
            try:
                check_exposure(str(host), None, self.options)
            except RuntimeError as e:
                raise ApiError(403, "forbidden", str(e)) from None

    def _check_token(self, request) -> None:
        if self._token is None:
            return
        auth = request.headers.get("authorization", "")
        scheme, _, given = auth.partition(" ")
        ok = scheme.lower() == "bearer" and hmac.compare_digest(given.strip().encode(), self._token)
        if not ok:
            raise ApiError(401, "unauthorized", "missing or wrong token: send 'Authorization: Bearer <token>'",
                           {"WWW-Authenticate": "Bearer"})

    # ------------------------------------------------------------------ routes
    async def health(self, request, t0):
        if time.monotonic() - self._last_ok < 10.0:  # answered recently: loaded, even if busy now
            return json_response(200, {"status": "ok"})
        try:
            ok = await asyncio.wait_for(self.models.ready(), timeout=2.0)
        except Exception as e:
            ok, why = False, f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
        else:
            why = "models not loaded"
        if not ok:
            raise ApiError(503, "unavailable", f"models are not loaded yet ({why})", {"Retry-After": "5"})
        self._last_ok = time.monotonic()
        return json_response(200, {"status": "ok"})

    async def models_info(self, request, t0):
        if self._describe is None:
            self._describe = await self._call(self.models.describe(), t0, self.options.request_timeout_s)
        o = self.options
        return json_response(200, {"status": "ok", "models": self._describe,
                                   "limits": {"max_batch_size": o.max_batch_size, "max_faces": o.max_faces,
                                              "face_chunk": o.face_chunk, "max_body_mb": o.max_body_mb,
                                              "max_pixels": o.max_pixels, "request_timeout_s": o.request_timeout_s,
                                              **o.limits()}})

    async def stats(self, request, t0):
        model = await self._call(self.models.stats(), t0, self.options.request_timeout_s)
        return json_response(200, {"status": "ok", "ingress": {"responses": {str(k): v for k, v in sorted(self.codes.items())},
                                                               "uptime_s": round(time.time() - self.started, 1)},
                                   "model": model})

    async def annotate(self, request, t0):
        opts = AnnotateOptions.from_query(request.query_params).capped(self.options.max_faces)
        deadline = self.options.request_timeout_s
        if request.query_params.get("timeout_s"):
            try:
                deadline = min(deadline, float(request.query_params["timeout_s"]))
            except ValueError:
                raise ApiError(400, "bad_request", "timeout_s must be a number of seconds") from None
            if not deadline > 0:
                raise ApiError(400, "bad_request", "timeout_s must be positive")
        try:
            body = await asyncio.wait_for(self._read_body(request), timeout=self._left(t0, deadline))
        except asyncio.TimeoutError:
            raise ApiError(504, "timeout", f"request body not received within {deadline:g} s") from None
        data = _image_bytes(body, request.headers.get("content-type", ""))
        loop = asyncio.get_running_loop()
        dec = await loop.run_in_executor(self._pool, decode_image, data, self.options.max_pixels)
        if not dec.ok:
            raise ApiError(422, dec.status, dec.error or dec.status)
        out = await self._call(self.models.analyze(dec.image, opts, self._left(t0, deadline)), t0, deadline)
        faces, found = out["faces"], int(out["faces_found"])
        return json_response(200, {"status": "ok", "width": dec.width, "height": dec.height, "faces_found": found,
                                   "faces_truncated": len(faces) < found, "faces": faces})

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _left(t0: float, deadline: float) -> float:
        left = deadline - (time.monotonic() - t0)
        if left <= 0:
            raise ApiError(504, "timeout", f"request ran past its deadline of {deadline:g} s")
        return left

    async def _call(self, aw, t0: float, deadline: float):
        """Await a model call within the deadline; map Serve's errors to JSON answers."""
        task = asyncio.ensure_future(aw)
        try:
            out = await asyncio.wait_for(task, timeout=self._left(t0, deadline))
            self._last_ok = time.monotonic()
            return out
        except asyncio.TimeoutError:
            raise ApiError(504, "timeout", f"request ran past its deadline of {deadline:g} s") from None
        except ApiError:
            raise
        except self._backpressure:
            ra = str(max(1, math.ceil(self.options.retry_after_s)))
            raise ApiError(503, "overloaded", "too many requests are waiting for the models; retry later",
                           {"Retry-After": ra}) from None
        except self._unavailable as e:
            raise ApiError(503, "unavailable", f"models are unavailable: {type(e).__name__}",
                           {"Retry-After": "5"}) from None

    async def _read_body(self, request) -> bytes:
        limit = self.options.max_body_bytes
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                n = int(declared)
            except ValueError:
                raise ApiError(400, "bad_request", "bad Content-Length") from None
            if n > limit:
                raise ApiError(413, "body_too_large", f"body of {n} bytes is over the limit of "
                                                      f"{limit} bytes ({self.options.max_body_mb:g} MB)")
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:  # chunked uploads, or a Content-Length that lied: stop reading
                raise ApiError(413, "body_too_large", f"body is over the limit of {limit} bytes "
                                                      f"({self.options.max_body_mb:g} MB)")
            chunks.append(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


def _image_bytes(body: bytes, content_type: str) -> bytes:
    """The image: the raw body, or the ``file`` field of a multipart form."""
    if not content_type.lower().startswith("multipart/"):
        return body
    msg = BytesParser(policy=HTTP).parsebytes(b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + body)
    if not msg.is_multipart():
        raise ApiError(400, "bad_request", "cannot parse the multipart form (boundary missing or wrong)")
    names = []
    for part in msg.iter_parts():
        name = part.get_param("name", header="content-disposition")
        names.append(name)
        if name == "file":
            return part.get_payload(decode=True) or b""
    raise ApiError(400, "bad_request", f"multipart form has no 'file' field (fields: {names})")
