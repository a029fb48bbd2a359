"""The annotation API on a real local Ray Serve (127.0.0.1, a non-default port) with a real HTTP
client: same answers as FaceAnalyzer, every row of the error table, concurrency with batches
really formed, the token, and a shutdown that leaves no Serve actor behind. The last test runs
``facebatch serve`` itself and stops it with Ctrl-C."""
from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

import badimages
from conftest import assert_close, default_sigint

PORT = 18431
CLI_PORT = 18433
URL = f"http://127.0.0.1:{PORT}"
TOKEN = "test-token-7f3a"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
PEOPLE = ("celeb_3", "celeb_7", "celeb_11")
OPTIONS = dict(max_batch_size=8, max_queued_requests=8, max_body_mb=1, token=TOKEN, replica_cpus=1,
               torch_threads=1, batch_wait_timeout_s=0.02, request_timeout_s=60)

requests = pytest.importorskip("requests")
pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def gallery(tmp_path_factory, celeba_root, mobilenet_weights):
    """A 3-person gallery from 4 train photos each (symlinked, read in place)."""
    from facebatch.commands.enroll import enroll
    root = tmp_path_factory.mktemp("people")
    for person in PEOPLE:
        (root / person).mkdir()
        for p in sorted((celeba_root / "train_dataset" / person).glob("*.jpg"))[:4]:
            (root / person / p.name).symlink_to(p)
    out = tmp_path_factory.mktemp("gallery") / "g.npz"
    enroll(str(root), str(out), weights_dir=str(mobilenet_weights.parent))
    return out


@pytest.fixture(scope="module")
def photo_files(udacity_root, celeba_root, data_root):
    """20 real photos: udacity68 frames of many sizes, celeba crops of the gallery's people, genki."""
    ud = sorted((udacity_root / "training").glob("*.jpg"))
    files = ud[::len(ud) // 10][:10]
    files += [sorted((celeba_root / "test_dataset" / p).glob("*.jpg"))[0] for p in PEOPLE]
    files += sorted((celeba_root / "test_dataset" / "celeb_20").glob("*.jpg"))[:2]
    genki = data_root / "genki4k" / "files"
    files += sorted(genki.glob("*.jpg"))[::700][:5] if genki.is_dir() else ud[5::len(ud) // 5][:5]
    assert len(files) == 20
    return files


@pytest.fixture(scope="module")
def analyzer(gallery, mobilenet_weights):
    from facebatch.inference import FaceAnalyzer
    return FaceAnalyzer.load(gallery=str(gallery), weights_dir=str(mobilenet_weights.parent))


@pytest.fixture(scope="module")
def server(ray_session, gallery, mobilenet_weights):
    from ray import serve

    from facebatch.serve.app import build_app
    serve.start(http_options={"host": "127.0.0.1", "port": PORT})
    try:
        serve.run(build_app({**OPTIONS, "gallery": str(gallery),
                             "detector_options": {"weights_dir": str(mobilenet_weights.parent)}}),
                  name="facebatch", route_prefix="/")
        yield URL
    finally:
        serve.shutdown()  # whatever happened: later tests get a Ray without Serve


def post(path="/v1/annotate", data=b"", headers=None, params=None, **kw):
    return requests.post(URL + path, data=data, headers={**AUTH, **(headers or {})}, params=params, timeout=120, **kw)


# ------------------------------------------------------------------------------------ answers
def test_health_models_and_stats(server):
    r = requests.get(URL + "/v1/health", timeout=30)  # no token needed
    assert (r.status_code, r.json()) == (200, {"status": "ok"})
    m = requests.get(URL + "/v1/models", headers=AUTH, timeout=30)
    body = m.json()
    assert m.status_code == 200 and body["status"] == "ok"
    models = body["models"]
    assert len(models["keypoints"]["sha256"]) == 64 and len(models["attributes"]["sha256"]) == 64
    assert set(models["attributes"]["thresholds"]) == set(models["attributes"]["attributes"])
    assert models["detector"]["config"]["score_threshold"] == 0.5 and models["gallery"]["people"] == 3
    assert body["limits"]["max_batch_size"] == 8 and body["limits"]["model_max_ongoing_requests"] >= 8
    s = requests.get(URL + "/v1/stats", headers=AUTH, timeout=30).json()
    assert s["status"] == "ok" and s["model"]["max_batch_size"] == 8


def test_same_answers_as_face_analyzer(server, analyzer, photo_files):
    from facebatch.imaging import decode_image
    identified = 0
    for p in photo_files:
        data = p.read_bytes()
        r = post(data=data, headers={"Content-Type": "image/jpeg"})
        assert r.status_code == 200, r.text
        body = r.json()
        img = decode_image(data)
        want = [f.to_dict(embedding=False) for f in analyzer.analyze([img.image])[0]]
        assert (body["status"], body["width"], body["height"]) == ("ok", img.width, img.height)
        assert want, f"no face in {p}"
        assert_close(body["faces"], want, p.name)
        assert all("embedding" not in f for f in body["faces"])  # only when asked
        identified += any(f["identity"] in PEOPLE for f in body["faces"])
    assert identified >= 2  # the gallery's people are named


def test_options_embedding_multipart_and_no_face(server, analyzer, photo_files, tmp_path):
    from facebatch.imaging import decode_image
    data = photo_files[12].read_bytes()
    r = post(data=data, params={"embedding": 1, "keypoints": 0, "max_faces": 1})
    want = analyzer.analyze([decode_image(data).image], max_faces=1, keypoints=False, embedding=True)[0]
    assert_close(r.json()["faces"], [f.to_dict(embedding=True) for f in want])
    assert len(r.json()["faces"][0]["embedding"]) == 128 and r.json()["faces"][0]["keypoints68"] is None  # identity model
    form = requests.post(URL + "/v1/annotate", files={"file": ("x.jpg", data, "image/jpeg")}, headers=AUTH, timeout=60)
    raw = post(data=data)
    assert form.status_code == 200 and form.json() == raw.json()
    empty = post(data=badimages.no_face(tmp_path).path.read_bytes())
    assert empty.status_code == 200 and empty.json()["faces"] == []


# ------------------------------------------------------------------------------------ errors
def test_error_table(server, tmp_path, photo_files):
    def check(r, code, status):
        assert r.status_code == code, (r.status_code, r.text)
        assert r.headers["content-type"].startswith("application/json")
        body = r.json()
        assert body["status"] == status and isinstance(body["error"], str) and "Traceback" not in body["error"]
        return r

    # 413: declared too large (answered from the header, before any body byte is sent) ...
    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)
    conn.putrequest("POST", "/v1/annotate")
    conn.putheader("Authorization", AUTH["Authorization"])
    conn.putheader("Content-Length", str(50 * 1024 * 1024))
    conn.endheaders()
    resp = conn.getresponse()
    assert resp.status == 413 and json.loads(resp.read())["status"] == "body_too_large"
    conn.close()
    # ... and a chunked body (no Content-Length) counted while read
    check(post(data=(b"\0" * 65536 for _ in range(20))), 413, "body_too_large")
    # 422: empty, undecodable, truncated, decompression bomb
    check(post(data=b""), 422, "empty_file")
    check(post(data=badimages.text_as_jpg(tmp_path).path.read_bytes()), 422, "decode_error")
    check(post(data=badimages.truncated_jpeg(tmp_path).path.read_bytes()), 422, "decode_error")
    check(post(data=badimages.decompression_bomb(tmp_path).path.read_bytes()), 422, "too_large")
    check(post(data=badimages.jpeg_bomb(tmp_path).path.read_bytes()), 422, "too_large")
    # 504: past the request's deadline
    check(post(data=photo_files[0].read_bytes(), params={"timeout_s": 0.001}), 504, "timeout")
    # 401: missing, wrong, other scheme
    data = photo_files[0].read_bytes()
    check(requests.post(URL + "/v1/annotate", data=data, timeout=30), 401, "unauthorized")
    check(requests.post(URL + "/v1/annotate", data=data, headers={"Authorization": "Bearer nope"}, timeout=30),
          401, "unauthorized")
    check(requests.post(URL + "/v1/annotate", data=data, headers={"Authorization": f"Basic {TOKEN}"}, timeout=30),
          401, "unauthorized")
    check(requests.get(URL + "/v1/models", timeout=30), 401, "unauthorized")
    # others: all JSON
    check(post(data=data, params={"keypoints": "maybe"}), 400, "bad_request")
    check(requests.get(URL + "/v1/annotate", headers=AUTH, timeout=30), 405, "method_not_allowed")
    check(requests.get(URL + "/nothing", headers=AUTH, timeout=30), 404, "not_found")


def test_queue_full_is_503_with_retry_after(server, photo_files):
    """8 images per batch, 16 in the model replica, 8 queued: 48 at once overflow the queue."""
    big = max(photo_files, key=lambda p: p.stat().st_size).read_bytes()
    with ThreadPoolExecutor(48) as pool:
        rs = list(pool.map(lambda _: post(data=big), range(48)))
    codes = [r.status_code for r in rs]
    assert set(codes) <= {200, 503} and codes.count(503) >= 1 and codes.count(200) >= 8, codes
    for r in rs:
        if r.status_code == 503:
            assert r.json()["status"] == "overloaded" and int(r.headers["Retry-After"]) >= 1


# ------------------------------------------------------------------------------------ concurrency
def test_concurrent_clients_get_the_sequential_answers_in_real_batches(server, photo_files):
    files = photo_files[:16]
    datas = [p.read_bytes() for p in files]
    sequential = [post(data=d).json() for d in datas]
    before = requests.get(URL + "/v1/stats", headers=AUTH, timeout=30).json()["model"]["batch_sizes"]

    def client(i):
        """A well-behaved client: a 503 ``overloaded`` (the documented backpressure answer, e.g. when
        Serve's router briefly sees a full replica queue) is retried after its Retry-After."""
        for _ in range(4):
            r = post(data=datas[i % 16])
            if r.status_code != 503 or r.json().get("status") != "overloaded":
                break
            time.sleep(float(r.headers.get("Retry-After", 1)))
        return i % 16, r

    with ThreadPoolExecutor(16) as pool:
        rs = list(pool.map(client, range(64)))
    assert [r.status_code for _, r in rs] == [200] * 64
    for i, r in rs:
        assert_close(r.json(), sequential[i], files[i].name)
    after = requests.get(URL + "/v1/stats", headers=AUTH, timeout=30).json()["model"]["batch_sizes"]
    new = {int(k): v - before.get(k, 0) for k, v in after.items() if v - before.get(k, 0) > 0}
    assert sum(k * v for k, v in new.items()) == 64, new
    assert max(new) > 1, f"no batch larger than 1 was formed: {new}"
    print("batch sizes of 64 requests from 16 clients:", dict(sorted(new.items())))


# ------------------------------------------------------------------------------------ shutdown
def _serve_actors():
    import ray
    return [a for a in ray.util.list_named_actors(all_namespaces=True) if a["namespace"] == "serve"]


def test_shutdown_leaves_no_serve_actors(server):
    from ray import serve
    assert _serve_actors()
    serve.shutdown()
    deadline = time.time() + 30
    while _serve_actors() and time.time() < deadline:
        time.sleep(0.5)
    assert _serve_actors() == []
    with pytest.raises(requests.ConnectionError):
        requests.get(URL + "/v1/health", timeout=5)


def test_command_serves_until_ctrl_c(tmp_path, mobilenet_weights):
    """`facebatch serve` on its own embedded Ray: prints the URL, answers, exits 0 on SIGINT, and
    leaves no process behind."""
    psutil = pytest.importorskip("psutil")
    env = {**os.environ, "FACEBATCH_SERVE_TOKEN": TOKEN, "PYTHONUNBUFFERED": "1"}
    env.pop("RAY_ADDRESS", None)
    cmd = [sys.executable, "-m", "facebatch.cli", "serve", "--port", str(CLI_PORT), "--keypoints", "none",
           "--attributes", "none", "--weights-dir", str(mobilenet_weights.parent), "--max-batch-size", "4",
           "--head", "tests.brightness_head:brightness"]  # a test-only head, named: all it takes to be served
    log = open(tmp_path / "serve.log", "w+")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, text=True, env=env,
                            cwd=Path(__file__).resolve().parents[1], preexec_fn=default_sigint)
    try:
        line = ""
        deadline = time.time() + 180
        while "ready" not in line and time.time() < deadline and proc.poll() is None:
            line = proc.stdout.readline()
        assert f"http://127.0.0.1:{CLI_PORT}/v1/annotate" in line, (line, (tmp_path / "serve.log").read_text()[-3000:])
        assert requests.get(f"http://127.0.0.1:{CLI_PORT}/v1/health", timeout=30).status_code == 200
        r = requests.post(f"http://127.0.0.1:{CLI_PORT}/v1/annotate", headers=AUTH, timeout=60,
                          data=badimages._jpeg(np.asarray(badimages.load_faces()[0])))
        assert r.status_code == 200 and len(r.json()["faces"]) == 1 and "box" in r.json()["faces"][0]
        assert "keypoints68" not in r.json()["faces"][0]  # no keypoint model, no keypoint field
        assert 0.05 < r.json()["faces"][0]["brightness"] < 0.95  # the named head's regression output
        children = psutil.Process(proc.pid).children(recursive=True)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=120) == 0
        time.sleep(2)
        alive = [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
        assert alive == [], [c.cmdline()[:3] for c in alive]
    finally:
        if proc.poll() is None:
            proc.kill()
        log.close()
