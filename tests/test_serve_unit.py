"""The serve API's parts without Ray: options and limits, per-request shaping against FaceAnalyzer,
detection that gives the same answer in any batch, the HTTP routes with fake models, and the
command's refusal to expose the API without a token."""
from __future__ import annotations

import asyncio
import json

import numpy as np
import pytest

from facebatch.serve.api import AnnotateAPI, AnnotateOptions, shape_faces
from facebatch.serve.options import ServeOptions, is_loopback
from conftest import assert_close

pytestmark = pytest.mark.usefixtures("one_torch_thread")


# ---------------------------------------------------------------------------------- options
def test_options_from_strings_and_unknown_keys():
    o = ServeOptions.from_dict({"max_batch_size": "8", "insecure": "true", "autoscale": "1:3",
                                "detector_options": '{"max_side": 320}', "gallery": "none", "keypoints": "none",
                                "identity_threshold": "0.4", "device": "cpu"})
    a = o.analyzer
    assert (o.max_batch_size, o.insecure, o.autoscale_range(), a.detector.max_side, a.gallery, a.keypoints) == \
        (8, True, (1, 3), 320, None, None)
    assert a.identity_threshold == 0.4 and a.attributes == "attributes" and a.detector.backend == "mobilenet"
    # the whole analyzer config travels to the replicas and comes back the same
    assert ServeOptions.from_dict(o.to_dict(secrets=True)) == o
    assert ServeOptions.from_dict({"analyzer": json.dumps(a.to_dict()), "detector": "resnet50"}).analyzer.detector \
        .backend == "resnet50"
    with pytest.raises(ValueError, match="unknown detector option"):
        ServeOptions.from_dict({"detector_options": {"max_sid": 3}})
    with pytest.raises(ValueError, match="unknown detector backend"):
        ServeOptions.from_dict({"detector": "yolo"})
    with pytest.raises(ValueError, match="max_batch_sise"):
        ServeOptions.from_dict({"max_batch_sise": 8})
    with pytest.raises(ValueError, match="MIN:MAX"):
        ServeOptions.from_dict({"autoscale": "4"})
    with pytest.raises(ValueError, match="bounded"):
        ServeOptions.from_dict({"max_queued_requests": -1})


@pytest.mark.parametrize("kw", [{}, {"max_batch_size": 1}, {"max_batch_size": 8, "replicas": 3},
                                {"autoscale": "1:4", "max_queued_requests": 5}])
def test_limits_never_cap_the_batch(kw):
    o = ServeOptions.from_dict(kw)
    lim = o.limits()
    # ray issue 43288: every hop must let a full batch through
    assert lim["model_max_ongoing_requests"] >= o.max_batch_size
    assert lim["ingress_max_ongoing_requests"] >= (lim["model_max_ongoing_requests"] * o.max_replicas
                                                   + lim["model_max_queued_requests"])
    assert 0 < lim["model_max_queued_requests"] and 0 < lim["ingress_max_queued_requests"]


def test_loopback_and_exposure():
    from facebatch.serve.app import check_exposure
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("10.1.2.3") and not is_loopback(None)
    check_exposure("127.0.0.1", None, ServeOptions())
    check_exposure("0.0.0.0", "tok", ServeOptions())
    check_exposure("0.0.0.0", None, ServeOptions(insecure=True))
    with pytest.raises(RuntimeError, match="not loopback"):
        check_exposure("0.0.0.0", None, ServeOptions())
    with pytest.raises(RuntimeError, match="require_token"):
        check_exposure("127.0.0.1", None, ServeOptions(require_token=True))
    check_exposure(None, None, ServeOptions())  # at start-up: where requests come in is not known yet
    with pytest.raises(RuntimeError, match="require_token"):
        check_exposure(None, None, ServeOptions(require_token=True))


def test_command_refuses_public_host_without_token(monkeypatch, capsys, forbid_ray_init):
    from facebatch.cli import main
    monkeypatch.delenv("FACEBATCH_SERVE_TOKEN", raising=False)
    # refused before any Ray is started or joined (forbid_ray_init fails the test otherwise)
    assert main(["serve", "--host", "0.0.0.0", "--port", "18499"]) == 2
    assert "--insecure" in capsys.readouterr().err


# ---------------------------------------------------------------------------------- answers
@pytest.fixture(scope="module")
def analyzer(mobilenet_weights):
    from facebatch.inference import FaceAnalyzer
    return FaceAnalyzer.load(weights_dir=str(mobilenet_weights.parent))


@pytest.fixture(scope="module")
def photos(udacity_root, celeba_root):
    from facebatch.imaging import decode_image
    files = sorted((udacity_root / "training").glob("*.jpg"))[::400][:6] + \
        sorted(celeba_root.glob("test_dataset/*/*.jpg"))[::300][:3]
    return [decode_image(p.read_bytes()).image for p in files]


@pytest.mark.parametrize("opts", [AnnotateOptions(), AnnotateOptions(embedding=True, max_faces=1),
                                  AnnotateOptions(keypoints=False, attributes=False),
                                  AnnotateOptions(identity=False, embedding=True, attributes=False),
                                  AnnotateOptions(max_faces=0)])
def test_shaping_equals_analyzer_with_the_same_options(analyzer, photos, opts):
    """The model runs a batch with everything its requests ask; each request's part must equal
    FaceAnalyzer.analyze with that request's own options."""
    full = analyzer.analyze(photos[:3])
    want = analyzer.analyze(photos[:3], max_faces=opts.max_faces, keypoints=opts.keypoints,
                            attributes=opts.attributes, identity=opts.identity, embedding=opts.embedding)
    for f, w in zip(full, want):
        assert_close(shape_faces(f, opts), [x.to_dict(embedding=opts.embedding) for x in w])


def test_batch_detection_equals_detection_alone(analyzer, photos):
    sizes = {im.shape[:2] for im in photos}
    assert len(sizes) > 3  # mixed sizes: a plain padded batch would move border faces
    together = analyzer.detect(photos)  # FaceAnalyzer.detect batches only same-padded-shape images
    for im, fs in zip(photos, together):
        alone = analyzer.detect([im])[0]
        assert len(alone) == len(fs)
        for a, b in zip(alone, fs):
            np.testing.assert_allclose(a.box, b.box, atol=1e-3)
            np.testing.assert_allclose(a.landmarks, b.landmarks, atol=1e-3)


# ---------------------------------------------------------------------------------- routes
class FakeModels:
    def __init__(self, ready=True, delay=0.0, error=None):
        self._ready, self.delay, self.error, self.calls = ready, delay, error, []

    async def analyze(self, image, opts, timeout_s=None):
        self.calls.append((image.shape, opts))
        await asyncio.sleep(self.delay)
        if self.error:
            raise self.error
        return {"faces": [{"box": [0.0, 0.0, 1.0, 1.0]}], "faces_found": 1}

    async def describe(self):
        return {"detector": {"backend": "fake"}}

    async def stats(self):
        return {"batches": 0}

    async def ready(self):
        if self._ready is None:
            await asyncio.sleep(10)
        if self._ready is False:
            raise RuntimeError("no replica yet")
        return True


class Overloaded(Exception):
    pass


def call(api, method, path, body=b"", headers=None, query="", chunks=None, server=("127.0.0.1", 80)):
    """Drive ``api.handle`` with a real Starlette Request over a hand-made ASGI scope."""
    from starlette.requests import Request
    hdrs = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    if chunks is None:
        hdrs.append((b"content-length", str(len(body)).encode()))
        chunks = [body]
    msgs = [{"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)]

    async def receive():
        return msgs.pop(0) if msgs else {"type": "http.disconnect"}

    scope = {"type": "http", "method": method, "path": path, "query_string": query.encode(), "headers": hdrs,
             "scheme": "http", "server": server, "root_path": ""}
    resp = asyncio.run(api.handle(Request(scope, receive)))
    return resp.status_code, json.loads(resp.body), dict(resp.headers)


@pytest.fixture
def png_bytes():
    import io

    from PIL import Image
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), (200, 100, 50)).save(buf, format="PNG")
    return buf.getvalue()


def test_health_is_503_before_the_models_are_loaded_and_200_after():
    for not_ready in (False, None):  # failing, then hanging (timeout)
        code, body, hdr = call(AnnotateAPI(FakeModels(ready=not_ready), ServeOptions(), None), "GET", "/v1/health")
        assert code == 503 and body["status"] == "unavailable" and "retry-after" in hdr
    code, body, _ = call(AnnotateAPI(FakeModels(), ServeOptions(), None), "GET", "/v1/health")
    assert (code, body) == (200, {"status": "ok"})


def test_routes_and_errors_with_fake_models(png_bytes):
    opts = ServeOptions(max_body_mb=0.001, request_timeout_s=5)
    api = AnnotateAPI(FakeModels(), opts, "s3cret")
    auth = {"Authorization": "Bearer s3cret"}
    code, body, _ = call(api, "POST", "/v1/annotate", png_bytes, {**auth, "Content-Type": "image/png"},
                         "embedding=1&max_faces=2")
    assert code == 200 and body["width"] == 40 and body["height"] == 30 and body["faces"]
    assert api.models.calls[-1][1] == AnnotateOptions(embedding=True, max_faces=2)
    form = (b"--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.png\"\r\n"
            b"Content-Type: image/png\r\n\r\n" + png_bytes + b"\r\n--XyZ--\r\n")
    code, body, _ = call(api, "POST", "/v1/annotate", form, {**auth, "Content-Type": "multipart/form-data; boundary=XyZ"})
    assert code == 200 and body["width"] == 40
    cases = [
        (("POST", "/v1/annotate", png_bytes, {}), 401, "unauthorized"),
        (("POST", "/v1/annotate", png_bytes, {"Authorization": "Bearer s3cres"}), 401, "unauthorized"),
        (("POST", "/v1/annotate", b"x" * 2000, auth), 413, "body_too_large"),
        (("POST", "/v1/annotate", b"", auth), 422, "empty_file"),
        (("POST", "/v1/annotate", b"not an image", auth), 422, "decode_error"),
        (("GET", "/v1/annotate", b"", auth), 405, "method_not_allowed"),
        (("GET", "/v2/x", b"", auth), 404, "not_found"),
    ]
    for (m, p, b, h), want_code, want_status in cases:
        code, body, _ = call(api, m, p, b, h)
        assert (code, body["status"]) == (want_code, want_status) and body["error"], (p, h, body)
    # chunked body (no Content-Length) over the limit: counted while read
    code, body, _ = call(api, "POST", "/v1/annotate", headers=auth, chunks=[b"x" * 600, b"x" * 600])
    assert (code, body["status"]) == (413, "body_too_large")
    for q in ("keypoints=2", "max_faces=x", "colour=1", "timeout_s=0"):
        code, body, _ = call(api, "POST", "/v1/annotate", png_bytes, auth, q)
        assert (code, body["status"]) == (400, "bad_request"), q


def test_without_a_token_only_loopback_requests_are_answered(png_bytes):
    """No token: a request that reached the server at a non-loopback address is refused (403), on
    every route but health; a token or ``insecure`` allows it."""
    lan = ("10.1.2.3", 8000)
    api = AnnotateAPI(FakeModels(), ServeOptions(), None)
    code, body, _ = call(api, "POST", "/v1/annotate", png_bytes, server=lan)
    assert (code, body["status"]) == (403, "forbidden") and "not loopback" in body["error"]
    assert call(api, "GET", "/v1/models", server=lan)[0] == 403
    assert call(api, "GET", "/v1/health", server=lan)[0] == 200
    assert call(api, "POST", "/v1/annotate", png_bytes, server=("::1", 8000))[0] == 200
    assert call(AnnotateAPI(FakeModels(), ServeOptions(insecure=True), None), "POST", "/v1/annotate", png_bytes,
                server=lan)[0] == 200
    code, _, _ = call(AnnotateAPI(FakeModels(), ServeOptions(), "tok"), "POST", "/v1/annotate", png_bytes,
                      {"Authorization": "Bearer tok"}, server=lan)
    assert code == 200


def test_model_errors_map_to_json(png_bytes):
    slow = AnnotateAPI(FakeModels(delay=1.0), ServeOptions(request_timeout_s=0.2), None)
    code, body, _ = call(slow, "POST", "/v1/annotate", png_bytes)
    assert (code, body["status"]) == (504, "timeout")
    full = AnnotateAPI(FakeModels(error=Overloaded()), ServeOptions(retry_after_s=3), None,
                       backpressure_errors=(Overloaded,))
    code, body, hdr = call(full, "POST", "/v1/annotate", png_bytes)
    assert (code, body["status"], hdr["retry-after"]) == (503, "overloaded", "3")
    broken = AnnotateAPI(FakeModels(error=ZeroDivisionError("secret detail")), ServeOptions(), None)
    code, body, _ = call(broken, "POST", "/v1/annotate", png_bytes)
    assert (code, body["status"]) == (500, "internal_error")
    assert "Traceback" not in body["error"] and "secret detail" not in body["error"]
