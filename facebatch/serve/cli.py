"""Serve the online annotation API (HTTP, Ray Serve) until Ctrl-C.

    facebatch serve [--host 127.0.0.1] [--port 8000] [--keypoints keypoints68] [--attributes attributes]
                    [--identity identity] [--gallery G] [--head NAME] [--replicas N | --autoscale MIN:MAX]
                    [--max-batch-size 16] [--max-faces 64] [--face-chunk 8]
                    [--max-body-mb 20] [--token T] [--insecure] [--address ADDR]

Starts the app on an embedded local Ray (127.0.0.1), or on the cluster at --address /
$RAY_ADDRESS, prints the URL and stays in the foreground. Ctrl-C (or SIGTERM) stops it: the
local Ray and Serve are shut down; on a cluster only this app is deleted.

POST /v1/annotate takes the image bytes (or a multipart form with a `file` field) and answers
JSON faces; GET /v1/models, /v1/health and /v1/stats. See docs/API.md.

Security: with --token or $FACEBATCH_SERVE_TOKEN every route but /v1/health needs
`Authorization: Bearer <token>`. A --host other than loopback without a token is refused
unless --insecure is given. Embeddings (128-d, from the identity model, loaded only with --identity
or --gallery) are only returned when a request asks (embedding=1).
"""
from __future__ import annotations

import argparse
import os
import signal
import sys
import time

from ..detection.options import add_detector_arguments, detector_config_from_args
from ..inference.config import AnalyzerConfig
from .options import APP_NAME, DEFAULT_PORT, TOKEN_ENV, ServeOptions, is_loopback


def add_arguments(p: argparse.ArgumentParser) -> None:
    d = ServeOptions()
    a = d.analyzer
    p.add_argument("--host", default="127.0.0.1", help="HTTP host to bind (non-loopback needs --token or --insecure)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help="HTTP port")
    p.add_argument("--address", default=None, help="Ray cluster address (default: $RAY_ADDRESS, else a local Ray)")
    m = p.add_argument_group("models")
    m.add_argument("--keypoints", default=a.keypoints, help="keypoint model: shipped name, file, or none")
    m.add_argument("--attributes", default=a.attributes, help="attribute/identity model: shipped name, file, or none")
    m.add_argument("--identity", default=None, metavar="MODEL",
                   help="identity model for face embeddings (requests with embedding=1) and gallery matches: "
                        "identity (the shipped recognition network, 128-d) or a model file with an embedding; "
                        "off unless given or a --gallery is (biometric data)")
    m.add_argument("--head", action="append", default=[], metavar="NAME",
                   help="another analyzer head by registered name or module:name (repeatable)")
    m.add_argument("--gallery", default=None, help="identity gallery (.npz from `facebatch enroll` with the same "
                                                    "identity model)")
    m.add_argument("--identity-threshold", type=float, default=None,
                   help="cosine similarity below which a face is 'unknown' (default: the gallery's)")
    s = p.add_argument_group("scaling and batching")
    x = s.add_mutually_exclusive_group()
    x.add_argument("--replicas", type=int, default=d.replicas, help="model replicas")
    x.add_argument("--autoscale", default=None, metavar="MIN:MAX", help="autoscale model replicas in this range")
    s.add_argument("--replica-cpus", type=float, default=d.replica_cpus, help="CPUs reserved per model replica")
    s.add_argument("--torch-threads", type=int, default=d.torch_threads,
                   help="torch threads per model replica (0: as many as --replica-cpus)")
    s.add_argument("--max-batch-size", type=int, default=d.max_batch_size, help="images per batched model call")
    s.add_argument("--batch-wait-ms", type=float, default=d.batch_wait_timeout_s * 1000,
                   help="how long a partial batch waits for more requests")
    lim = p.add_argument_group("limits")
    lim.add_argument("--max-faces", type=int, default=d.max_faces,
                     help="faces analysed per image at most, the largest first (a request's max_faces is capped "
                          "by it; the answer says faces_truncated and faces_found)")
    lim.add_argument("--face-chunk", type=int, default=d.face_chunk,
                     help="faces of one request analysed per batch call (more go to later calls, between "
                          "other requests' work)")
    lim.add_argument("--max-body-mb", type=float, default=d.max_body_mb, help="larger bodies get 413")
    lim.add_argument("--max-pixels", type=int, default=d.max_pixels, help="larger images get 422 too_large")
    lim.add_argument("--request-timeout-s", type=float, default=d.request_timeout_s, help="deadline per request (504)")
    lim.add_argument("--max-queued-requests", type=int, default=d.max_queued_requests,
                     help="requests waiting for a model replica before 503 + Retry-After")
    sec = p.add_argument_group("security")
    sec.add_argument("--token", default=None, help=f"bearer token required by the API (default: ${TOKEN_ENV})")
    sec.add_argument("--insecure", action="store_true", help="allow a non-loopback --host without a token")
    add_detector_arguments(p)


def options_from_args(args: argparse.Namespace, token: str | None) -> ServeOptions:
    analyzer = AnalyzerConfig(keypoints=args.keypoints, attributes=args.attributes, gallery=args.gallery,
                              identity=args.identity, heads=tuple(args.head),
                              identity_threshold=args.identity_threshold, detector=detector_config_from_args(args))
    return ServeOptions(analyzer=analyzer, replicas=args.replicas, autoscale=args.autoscale,
                        replica_cpus=args.replica_cpus, torch_threads=args.torch_threads, max_batch_size=args.max_batch_size,
                        batch_wait_timeout_s=args.batch_wait_ms / 1000.0, max_faces=args.max_faces,
                        face_chunk=args.face_chunk, max_body_mb=args.max_body_mb,
                        max_pixels=args.max_pixels, request_timeout_s=args.request_timeout_s,
                        max_queued_requests=args.max_queued_requests, token=token,
                        insecure=args.insecure).validate()


def fit_local_cpus(o: ServeOptions, cpus: float) -> ServeOptions:
    """On an embedded local Ray, shrink the CPUs reserved per replica so that every replica fits."""
    room = cpus - o.ingress_cpus * o.ingress_replicas
    per = room / o.max_replicas
    if per < o.replica_cpus:
        print(f"facebatch serve: {o.max_replicas} model replica(s) on {cpus:g} CPUs: reserving {per:.2f} CPU each",
              file=sys.stderr)
        o.replica_cpus = max(0.01, round(per, 2))
    return o


def run(args: argparse.Namespace) -> int:
    token = args.token or os.environ.get(TOKEN_ENV) or None
    if not is_loopback(args.host) and not token and not args.insecure:
        raise ValueError(f"--host {args.host} is reachable beyond this machine and no token is set: "
                         f"give --token (or ${TOKEN_ENV}), or --insecure to serve without one")
    opts = options_from_args(args, token)

    from ..raycluster import init_ray
    info = init_ray(args.address)
    if info["local"]:
        fit_local_cpus(opts, float(info["resources"].get("CPU", 1)))
    import ray
    from ray import serve

    from .app import build_app

    def _stop(signum, frame):
        raise KeyboardInterrupt
    old = signal.signal(signal.SIGTERM, _stop)
    started = False
    try:
        serve.start(http_options={"host": args.host, "port": args.port,
                                  # backstop only: the ingress answers 504 at request_timeout_s
                                  "request_timeout_s": opts.request_timeout_s + 30})
        started = True
        t = time.perf_counter()
        serve.run(build_app(opts), name=APP_NAME, route_prefix="/")
        host = f"[{args.host}]" if ":" in args.host else args.host
        print(f"facebatch serve: http://{host}:{args.port}/v1/annotate ready in {time.perf_counter() - t:.1f} s "
              f"({'token required' if token else 'no token'}; Ctrl-C to stop)", flush=True)
        while True:
            time.sleep(1.0)
    except KeyboardInterrupt:
        print("facebatch serve: stopping", file=sys.stderr, flush=True)
    finally:
        signal.signal(signal.SIGTERM, old)
        if started:
            try:
                if info["local"]:
                    serve.shutdown()
                else:
                    serve.delete(APP_NAME)
            except Exception as e:  # pragma: no cover - best effort on the way out
                print(f"facebatch serve: shutdown: {e}", file=sys.stderr)
        if info["local"]:
            ray.shutdown()
    return 0
