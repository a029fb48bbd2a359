"""Shared fixtures: real data from $FACEBATCH_DATA (skip clearly when absent) and one local Ray per session."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from facebatch.paths import data_dir
from facebatch.raycluster import local_ray_env

local_ray_env()  # before anything imports ray
os.environ.setdefault("FACEBATCH_WEIGHTS_DIR", str(data_dir() / "weights"))


def _need(path: Path, what: str) -> Path:
    if not path.exists():
        pytest.skip(f"{what} not found at {path}; set FACEBATCH_DATA to the shared data folder to run this test")
    return path


@pytest.fixture(scope="module")
def one_torch_thread():
    """Small models on a shared 2-core machine run faster and steadier on one intra-op thread
    (as in the data workers). Modules opt in with ``pytestmark = pytest.mark.usefixtures(...)``."""
    import torch
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def forbid_ray_init(monkeypatch):
    """Fail if the code under test starts or joins Ray (works whether or not the session's local
    Ray is already up, unlike checking ``ray.is_initialized()``)."""
    import ray

    def refuse(*args, **kwargs):
        raise AssertionError("this code path must not start or join Ray")
    monkeypatch.setattr(ray, "init", refuse)


@pytest.fixture(scope="session")
def data_root() -> Path:
    return _need(data_dir(), "shared data folder")


@pytest.fixture(scope="session")
def udacity_root(data_root) -> Path:
    return _need(data_root / "udacity68", "udacity68 data")


@pytest.fixture(scope="session")
def genki_root(data_root) -> Path:
    return _need(data_root / "genki4k", "genki4k data")


@pytest.fixture(scope="session")
def celeba_root(data_root) -> Path:
    return _need(data_root / "celeba6k", "celeba6k data")


@pytest.fixture(scope="session")
def celeba5k_root(data_root) -> Path:
    return _need(data_root / "celeba5k", "celeba5k data")


@pytest.fixture(scope="session")
def mobilenet_weights(data_root) -> Path:
    return _need(data_root / "weights" / "mobilenet0.25_Final.pth", "RetinaFace MobileNet-0.25 weights")


@pytest.fixture(scope="session")
def mobilenet_detector(mobilenet_weights):
    from facebatch.detection import create_detector
    return create_detector("mobilenet", weights_path=str(mobilenet_weights))


@pytest.fixture(scope="session")
def ray_session():
    """One embedded local Ray for the whole test session, bound to 127.0.0.1."""
    from facebatch.raycluster import init_ray
    import ray
    info = init_ray(address="local", num_cpus=2)
    yield info
    ray.shutdown()


@pytest.fixture(autouse=True)
def release_ray_train_runs(request):
    """Stop the Ray Train actors a test leaves behind. Ray Train's Ctrl-C handler holds its run's
    TrainController (and, through it, the data SplitCoordinators) until another handler replaces it:
    they stayed alive for the rest of the session. facebatch's ``train`` puts the previous handler back
    after a run; for any other ``fit`` a test makes, this does, and Ray then stops those actors."""
    if "ray_session" not in request.fixturenames:
        yield
        return
    import signal
    before = signal.getsignal(signal.SIGINT)
    yield
    if before is not None and signal.getsignal(signal.SIGINT) is not before:
        signal.signal(signal.SIGINT, before)


def default_sigint() -> None:
    """``preexec_fn`` for a subprocess a test stops with Ctrl-C: SIGINT at its default and unblocked.
    A child inherits the signal mask and ignored signals of the process that starts it, and after
    most of the suite has run, the pytest process (host of a Ray driver, Ray Train and Ray Data)
    hands its children a SIGINT they never see: in two full runs the Ctrl-C tests' commands
    finished (exit 0) or hung, while both pass alone. A user's shell starts commands clean."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server on 127.0.0.1 (a real HTTP S3 API; Ray workers are other processes)."""
    from moto.server import ThreadedMotoServer
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield endpoint
    server.stop()
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def udacity_layout(root: Path, udacity_root: Path, pick) -> Path:
    """A Udacity-layout folder (training/ + CSV) under ``root`` holding the rows ``pick(sorted rows)``
    returns, images symlinked (read in place)."""
    import csv
    (root / "training").mkdir(parents=True, exist_ok=True)
    with open(udacity_root / "training_frames_keypoints.csv") as f:
        rows = list(csv.reader(f))
    header, picked = rows[0], pick(sorted(rows[1:]))
    with open(root / "training_frames_keypoints.csv", "w", newline="") as f:
        csv.writer(f).writerows([header, *picked])
    for r in picked:
        (root / "training" / r[0]).symlink_to(udacity_root / "training" / r[0])
    return root


@pytest.fixture(scope="session")
def udacity_subset(tmp_path_factory, udacity_root) -> Path:
    """24 real udacity68 images spread over all people, in the Udacity layout."""
    return udacity_layout(tmp_path_factory.mktemp("udacity_subset"), udacity_root,
                          lambda body: body[::len(body) // 24][:24])


def assert_close(a, b, path=""):
    """Deep equality of JSON-like answers; floats within 1e-3 (boxes within 1e-3 px)."""
    import math
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys(), (path, sorted(a), sorted(b))
        for k in a:
            assert_close(a[k], b[k], f"{path}.{k}")
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b), (path, len(a), len(b))
        for i, (x, y) in enumerate(zip(a, b)):
            assert_close(x, y, f"{path}[{i}]")
    elif isinstance(a, float):
        assert isinstance(b, (float, int)) and math.isclose(a, b, abs_tol=1e-3), (path, a, b)
    else:
        assert a == b, (path, a, b)
