"""Bounded cost per request (issue 23): ``max_faces`` with ``faces_truncated``/``faces_found``,
a request's faces split into face chunks that go through the ``@serve.batch`` queue between
other requests' work, and the work of a request that timed out (504) or whose client went away stopped.

First without Ray (:class:`facebatch.serve.work.FaceWork` on a real analyzer, the routes with a
fake model, the handle wrapper's cancellation), then on a real local Ray Serve on 127.0.0.1 with
a real HTTP client and a 900-face photo tiled from real celeba6k faces."""
from __future__ import annotations

import asyncio
import io
import math
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from facebatch.serve.api import AnnotateAPI, AnnotateOptions
from facebatch.serve.options import ServeOptions
from facebatch.serve.work import FaceWork, Unit
from test_serve_unit import FakeModels, call  # the fake model and the ASGI driver of the route tests
from conftest import assert_close

PORT = 18435
URL = f"http://127.0.0.1:{PORT}"
OPTIONS = dict(max_batch_size=8, max_queued_requests=16, replica_cpus=1, torch_threads=1,
               batch_wait_timeout_s=0.01, request_timeout_s=30)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def face_grid(celeba_root, n: int = 30, px: int = 90, start: int = 0) -> np.ndarray:
    """An ``n x n`` grid of real celeba6k faces (square centre crops resized to ``px``): a group
    photo with ``n * n`` faces the detector finds (724 of 900 at the default max_side 640)."""
    from PIL import Image
    files = sorted((celeba_root / "test_dataset").glob("*/*.jpg"))[start:start + n * n]
    assert len(files) == n * n
    tiles = []
    for f in files:
        im = Image.open(f).convert("RGB")
        w, h = im.size
        top = (h - w) // 2
        tiles.append(np.asarray(im.crop((0, top, w, top + w)).resize((px, px), Image.BILINEAR)))
    return np.concatenate([np.concatenate(tiles[r * n:(r + 1) * n], axis=1) for r in range(n)], axis=0)


def jpeg(rgb: np.ndarray) -> bytes:
    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


# ------------------------------------------------------------------------------- without Ray
@pytest.fixture(scope="module")
def analyzer(mobilenet_weights):
    from facebatch.inference import FaceAnalyzer
    return FaceAnalyzer.load(weights_dir=str(mobilenet_weights.parent))


@pytest.fixture(scope="module")
def small_grid(celeba_root):
    """36 real faces at 90 px, found at the detector's native scale."""
    from facebatch.imaging import decode_image
    return decode_image(jpeg(face_grid(celeba_root, n=6, start=300))).image


@pytest.fixture(scope="module")
def one_face(celeba_root):
    from facebatch.imaging import decode_image
    return decode_image(sorted((celeba_root / "test_dataset" / "celeb_3").glob("*.jpg"))[0].read_bytes()).image


def _run_requests(work: FaceWork, jobs: list[tuple[np.ndarray, AnnotateOptions]]) -> list[tuple[list, int, int]]:
    """Drive the replica's loop by hand: every request's units in round-robin batch calls (as
    ``@serve.batch`` forms them), each request with at most one unit per call."""
    reqs = [work.request(o) for _, o in jobs]
    units = {k: Unit(r, im) for k, (r, (im, _)) in enumerate(zip(reqs, jobs))}
    faces: dict[int, list] = {k: [] for k in units}
    rest: dict[int, list] = {}
    while units:
        keys = sorted(units)
        for k, r in zip(keys, work.run([units[k] for k in keys])):
            faces[k] += r.faces
            rest.setdefault(k, r.rest)  # the first unit's result holds the detections left
            if rest[k]:
                units[k], rest[k] = work.next_unit(reqs[k], jobs[k][0], rest[k])
            else:
                del units[k]
    return [(faces[k], reqs[k].found, reqs[k].units) for k in range(len(jobs))]


def test_chunked_answers_equal_face_analyzer(analyzer, small_grid, one_face):
    """A 36-face photo capped at 20 and analysed 8 faces per call, beside a one-face photo asking
    other outputs in the same calls: each answer equals FaceAnalyzer.analyze with its options."""
    work = FaceWork(analyzer, face_chunk=8, max_faces=20)
    big, small = AnnotateOptions(), AnnotateOptions(keypoints=False, embedding=True)
    (bf, found, units), (sf, sfound, sunits) = _run_requests(work, [(small_grid, big), (one_face, small)])
    assert found >= 30 and units == 3 and (sfound, sunits) == (1, 1)
    want = [f.to_dict(embedding=False) for f in analyzer.analyze([small_grid], max_faces=20)[0]]
    assert_close(bf, want)
    assert_close(sf, [f.to_dict(embedding=True) for f in analyzer.analyze([one_face], keypoints=False)[0]])
    c = work.counters
    assert (c["detect_units"], c["chunk_units"], c["truncated_requests"], c["faces"]) == (2, 2, 1, 21)
    # the request's own max_faces under the server's cap, and 0
    work2 = FaceWork(analyzer, face_chunk=8, max_faces=20)
    [(f5, n5, u5), (f0, n0, u0)] = _run_requests(work2, [(small_grid, AnnotateOptions(max_faces=5)),
                                                         (small_grid, AnnotateOptions(max_faces=0))])
    assert_close(f5, want[:5])
    assert (n5, u5, f0, n0) == (found, 1, [], found)


def test_a_stopped_request_is_not_computed(analyzer, small_grid, one_face):
    """Cancelled or past its deadline before its turn: skipped; stopped while the detector ran:
    not analysed."""
    work = FaceWork(analyzer, face_chunk=8, max_faces=64)
    gone, late, live = work.request(AnnotateOptions()), work.request(AnnotateOptions(), timeout_s=-1), \
        work.request(AnnotateOptions())
    gone.cancelled = True
    out = work.run([Unit(gone, small_grid), Unit(late, small_grid), Unit(live, one_face)])
    assert out[0] is None and out[1] is None and len(out[2].faces) == 1
    assert work.counters["units_skipped_stopped"] == 2 and work.counters["faces"] == 1

    class CancelDuringDetection:
        def __init__(self, fa, req):
            self.fa, self.req = fa, req

        def detect(self, images):
            found = self.fa.detect(images)
            self.req.cancelled = True  # the client went away while the detector ran
            return found

        def analyze(self, *a, **kw):
            raise AssertionError("a cancelled request's faces must not be analysed")

    req = work.request(AnnotateOptions())
    work.fa = CancelDuringDetection(analyzer, req)
    assert work.run([Unit(req, small_grid)]) == [None]
    assert req.found >= 30 and work.counters["units_skipped_stopped"] == 3


class CountingModels(FakeModels):
    """A model that found ``found`` faces and answers at most ``opts.max_faces`` of them."""

    def __init__(self, found: int) -> None:
        super().__init__()
        self.found = found

    async def analyze(self, image, opts, timeout_s=None):
        self.calls.append((opts, timeout_s))
        n = self.found if opts.max_faces is None else min(self.found, opts.max_faces)
        return {"faces": [{"box": [0.0, 0.0, 1.0, 1.0]}] * n, "faces_found": self.found}


def test_max_faces_default_cap_and_truncation_in_the_answer():
    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 100, 50)).save(buf, format="PNG")
    models = CountingModels(found=9)
    api = AnnotateAPI(models, ServeOptions(max_faces=5, request_timeout_s=20), None)
    for query, want_cap, n in (("", 5, 5), ("max_faces=100", 5, 5), ("max_faces=2", 2, 2), ("max_faces=0", 0, 0)):
        code, body, _ = call(api, "POST", "/v1/annotate", buf.getvalue(), query=query)
        assert code == 200 and (len(body["faces"]), body["faces_found"], body["faces_truncated"]) == (n, 9, True)
        opts, left = models.calls[-1]
        assert opts.max_faces == want_cap and 0 < left <= 20  # the deadline's rest travels to the model
    api = AnnotateAPI(CountingModels(found=3), ServeOptions(max_faces=5), None)
    code, body, _ = call(api, "POST", "/v1/annotate", buf.getvalue())
    assert (body["faces_found"], body["faces_truncated"], len(body["faces"])) == (3, False, 3)
    code, body, _ = call(api, "GET", "/v1/models")
    assert (body["limits"]["max_faces"], body["limits"]["face_chunk"]) == (5, 8)
    with pytest.raises(ValueError, match="face_chunk"):
        ServeOptions.from_dict({"face_chunk": 0})


def test_a_cancelled_handle_call_is_cancelled_downstream():
    """The ingress's handle wrapper cancels the model call when its own task is cancelled (the
    deadline's wait_for, or Serve cancelling the ingress request when the client went away)."""
    from facebatch.serve.app import _HandleModels

    class Response:
        cancelled = False

        def __await__(self):
            return asyncio.sleep(30).__await__()

        def cancel(self):
            Response.cancelled = True

    class Method:
        def remote(self, *args):
            return Response()

    class Handle:
        analyze = Method()

    async def main():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(_HandleModels(Handle()).analyze(None, AnnotateOptions(), 1.0), timeout=0.1)

    asyncio.run(main())
    assert Response.cancelled


# ------------------------------------------------------------------------------- real Serve
requests = pytest.importorskip("requests")


@pytest.fixture(scope="module")
def big_photo(celeba_root):
    """The 900-face photo: 30 x 30 real faces at 90 px (2700 x 2700)."""
    return jpeg(face_grid(celeba_root))


@pytest.fixture(scope="module")
def small_photos(udacity_root, celeba_root):
    ud = sorted((udacity_root / "training").glob("*.jpg"))
    cb = sorted((celeba_root / "test_dataset").glob("*/*.jpg"))
    return [p.read_bytes() for p in ud[::len(ud) // 10][:10] + cb[7::len(cb) // 10][:10]]


def deploy(options: dict):
    from ray import serve

    from facebatch.serve.app import build_app
    t = time.perf_counter()
    serve.run(build_app(options), name="facebatch", route_prefix="/")
    return time.perf_counter() - t


@pytest.fixture(scope="module")
def server(ray_session, mobilenet_weights):
    from ray import serve
    serve.start(http_options={"host": "127.0.0.1", "port": PORT})
    base = {**OPTIONS, "detector_options": {"weights_dir": str(mobilenet_weights.parent)}}
    try:
        deploy(base)  # the default max_faces (64) and face_chunk (8)
        yield base
    finally:
        serve.shutdown()


def stats() -> dict:
    return requests.get(URL + "/v1/stats", timeout=30).json()["model"]


def timed_post(data: bytes, params=None, timeout=60):
    t = time.perf_counter()
    r = requests.post(URL + "/v1/annotate", data=data, params=params, timeout=timeout)
    return r, time.perf_counter() - t, time.perf_counter()


def test_big_photo_does_not_hold_small_ones_hostage(server, big_photo, small_photos):
    """One client posts the 900-face photo again and again while another sends 20 small photos
    one after the other: every small one answers 200 with p99 <= 2 s; each big one answers
    within its deadline, truncated to the default 64 faces, its faces analysed in chunks that
    went through the batch queue between the small requests' work."""
    for d in small_photos[:2]:  # warm
        assert timed_post(d)[0].status_code == 200
    s0 = stats()
    done = threading.Event()
    bigs: list = []

    def big_client():
        while not done.is_set() and len(bigs) < 6:
            bigs.append((time.perf_counter(), *timed_post(big_photo)))

    with ThreadPoolExecutor(1) as pool:
        fut = pool.submit(big_client)
        time.sleep(0.5)  # the first big request is in the model replica
        smalls = [timed_post(d) for d in small_photos]
        done.set()
        fut.result()
    s1 = stats()
    lat = sorted(t for _, t, _ in smalls)
    p99 = lat[min(len(lat) - 1, math.ceil(0.99 * len(lat)) - 1)]
    print(f"small p50 {lat[len(lat) // 2]:.2f} s, p99 {p99:.2f} s; big {[round(b[2], 2) for b in bigs]} s; "
          f"batch sizes {s1['batch_sizes']}")
    assert [r.status_code for r, _, _ in smalls] == [200] * 20
    assert all(not r.json()["faces_truncated"] for r, _, _ in smalls)
    assert p99 <= 2.0, lat
    # each small request overlapped a big one: none waited for a whole big request
    spans = [(t0, t0 + t) for t0, _, t, _ in bigs]
    overlapped = sum(any(a < end and end - t < b for a, b in spans) for _, t, end in smalls)
    assert overlapped >= 15, (overlapped, spans)
    for _, r, t, _ in bigs:
        body = r.json()
        assert r.status_code == 200, r.text
        assert body["faces_truncated"] and len(body["faces"]) == 64 and body["faces_found"] >= 500, \
            (len(body["faces"]), body["faces_found"])
        areas = [(f["box"][2] - f["box"][0]) * (f["box"][3] - f["box"][1]) for f in body["faces"]]
        assert areas == sorted(areas, reverse=True)  # the largest faces, largest first
        assert t < server["request_timeout_s"]
    assert s1["truncated_requests"] - s0["truncated_requests"] == len(bigs)
    assert s1["chunk_units"] - s0["chunk_units"] == 7 * len(bigs)  # 64 faces: 8 in the first unit, 7 more chunks
    # every unit went through the one batch queue: the big requests' chunks between the small ones
    new = {int(k): v - s0["batch_sizes"].get(k, 0) for k, v in s1["batch_sizes"].items()}
    assert sum(k * v for k, v in new.items()) == 20 + 8 * len(bigs), new


@pytest.fixture(scope="module")
def wide_server(server):
    """The same app redeployed with max_faces 1000: the 900-face photo is ~700 faces of work."""
    deploy({**server, "max_faces": 1000})
    yield


def _settled(limit: float = 10.0) -> dict:
    """Stats once no batch call is being computed (the chunk in flight at the stop finished)."""
    deadline = time.perf_counter() + limit
    now = stats()
    while now["running_units"] and time.perf_counter() < deadline:
        time.sleep(0.1)
        now = stats()
    return now


def _check_stopped(s0: dict, s_at: dict, found: int, how: str) -> None:
    """After the 504 or the disconnect: at most the chunk being computed is finished, then no
    unit runs and the replica burns no CPU."""
    s1 = _settled()
    time.sleep(2.0)
    s2 = stats()
    face_chunk = s2["face_chunk"]
    print(f"{how}: faces analysed before {s_at['faces'] - s0['faces']}, after {s1['faces'] - s_at['faces']} "
          f"(then {s2['faces'] - s1['faces']} in 2 s); replica CPU over the 2 s: "
          f"{s2['process_cpu_s'] - s1['process_cpu_s']:.3f} s, "
          f"compute thread {s2['compute_cpu_s'] - s1['compute_cpu_s']:.3f} s")
    assert s1["cancelled_requests"] - s0["cancelled_requests"] == 1, (s0, s1)
    assert s1["faces"] - s_at["faces"] <= face_chunk  # only the chunk that was running
    assert s1["units_finished_stopped"] - s0["units_finished_stopped"] <= 1
    assert (s2["faces"], s2["units"]) == (s1["faces"], s1["units"])
    assert s2["compute_cpu_s"] - s1["compute_cpu_s"] < 0.01
    assert s2["process_cpu_s"] - s1["process_cpu_s"] < 0.5  # an idle replica (Ray's own threads)
    assert s1["faces"] - s0["faces"] < found / 2  # most of the photo's faces were never analysed


def test_a_timed_out_request_stops_its_work(wide_server, big_photo):
    r, _, _ = timed_post(big_photo, {"max_faces": 1})  # warm, and the number of faces found
    found = r.json()["faces_found"]
    assert found >= 500 and r.json()["faces_truncated"]
    s0 = stats()
    r, t, _ = timed_post(big_photo, {"timeout_s": 2})
    s_at = stats()
    assert (r.status_code, r.json()["status"]) == (504, "timeout") and t < 4.0, (r.status_code, t)
    _check_stopped(s0, s_at, found, "504")


def test_a_client_that_went_away_stops_its_work(wide_server, big_photo):
    found = timed_post(big_photo, {"max_faces": 1})[0].json()["faces_found"]
    s0 = stats()
    with pytest.raises(requests.exceptions.ReadTimeout):
        timed_post(big_photo, timeout=(5, 2.0))  # the client gives up and closes its connection
    time.sleep(0.5)  # the proxy notices the closed connection
    _check_stopped(s0, stats(), found, "client gone")
