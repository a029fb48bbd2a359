"""A real `ray job submit` of jobs/preprocess.py to a real `ray start --head` on 127.0.0.1.

The head runs in its own process session with its own --temp-dir and free ports of its own, so
it neither meets the session's embedded Ray (conftest `ray_session`) nor other Ray clusters on the
machine, and it is torn down by the process ids it started (never `ray stop`, which would stop
every Ray on the machine), in a finalizer that runs when the test fails too. Nothing here changes
os.environ: the head and the CLI get their environment explicitly, so RAY_ADDRESS cannot leak into
other tests.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from conftest import udacity_layout

REPO = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
N_IMAGES = 20


def _free_ports(n: int) -> list[int]:
    socks, ports = [], []
    while len(ports) < n:
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        if s.getsockname()[1] not in ports:
            ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def ray_env() -> dict:
    """The environment for `ray start` and the `ray` CLI: the venv first on PATH (a submitted
    `python ...` resolves python on the PATH the head started with), loopback only, no token auth,
    no usage stats, and no inherited RAY_ADDRESS."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    env.update(PATH=f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}", RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
               RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0", PYTHONUNBUFFERED="1")
    return env


def _pids_of(temp_dir: str, sid: int | None) -> list[int]:
    """Our processes: in the head's session, or naming its private temp dir on their command line."""
    out = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) == os.getpid():
            continue
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            same_session = sid is not None and os.getsid(int(p.name)) == sid
        except (OSError, ProcessLookupError):
            continue
        if same_session or temp_dir in cmd:
            out.append(int(p.name))
    return out


class RayHead:
    """`ray start --head --block` in its own session; `stop()` ends exactly the processes it started."""

    def __init__(self, num_cpus: int = 2):
        self.temp_dir = tempfile.mkdtemp(prefix="fbhead", dir="/tmp")  # short: Ray's unix socket paths
        (self.gcs_port, self.dashboard_port, self.client_port, self.agent_port, self.metrics_port,
         self.node_manager_port, self.object_manager_port, self.runtime_env_port, self.agent_grpc_port) = _free_ports(9)
        ports = (self.gcs_port, self.dashboard_port, self.client_port, self.agent_port, self.metrics_port,
                 self.node_manager_port, self.object_manager_port, self.runtime_env_port, self.agent_grpc_port)
        base = random.randrange(42000, 60000, 200)
        while any(base <= p <= base + 199 for p in ports):  # ray start refuses a worker range holding one of them
            base = random.randrange(42000, 60000, 200)
        self.env = ray_env()
        self.cmd = [str(VENV_BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
                    "--dashboard-host=127.0.0.1", "--include-dashboard=true", f"--num-cpus={num_cpus}",
                    f"--port={self.gcs_port}", f"--dashboard-port={self.dashboard_port}",
                    f"--ray-client-server-port={self.client_port}", f"--dashboard-agent-listen-port={self.agent_port}",
                    f"--dashboard-agent-grpc-port={self.agent_grpc_port}", f"--metrics-export-port={self.metrics_port}",
                    f"--node-manager-port={self.node_manager_port}", f"--object-manager-port={self.object_manager_port}",
                    f"--runtime-env-agent-port={self.runtime_env_port}",
                    f"--min-worker-port={base}", f"--max-worker-port={base + 199}",
                    f"--temp-dir={self.temp_dir}", "--disable-usage-stats"]
        self.log = open(Path(self.temp_dir) / "ray_start.log", "w")
        self.proc = subprocess.Popen(self.cmd, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True, cwd=REPO)
        self.sid = self.proc.pid  # start_new_session: the session id is the leader's pid
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        self.stopped = False

    def wait_ready(self, timeout: float = 120.0) -> None:
        import urllib.request
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"ray start exited {self.proc.returncode}:\n{self.start_log()}")
            try:
                with urllib.request.urlopen(f"{self.address}/api/version", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(1)
        raise RuntimeError(f"Jobs API at {self.address} not up after {timeout:.0f} s:\n{self.start_log()}")

    def start_log(self) -> str:
        self.log.flush()
        return (Path(self.temp_dir) / "ray_start.log").read_text()[-4000:]

    def ray(self, *args: str, timeout: float = 300, check: bool = False) -> subprocess.CompletedProcess:
        return subprocess.run([str(VENV_BIN / "ray"), *args], env=self.env, cwd=REPO, capture_output=True,
                              text=True, timeout=timeout, check=check)

    def stop(self) -> list[int]:
        """SIGTERM then SIGKILL to the processes this head started; returns any left (should be none)."""
        if self.stopped:
            return []
        self.stopped = True
        for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            for pid in _pids_of(self.temp_dir, self.sid):
                try:
                    os.kill(pid, sig)
                except ProcessLookupError:
                    pass
            t0 = time.time()
            while time.time() - t0 < wait and _pids_of(self.temp_dir, self.sid):
                time.sleep(0.3)
            try:
                self.proc.wait(timeout=1)
            except subprocess.TimeoutExpired:
                pass
        left = _pids_of(self.temp_dir, self.sid)
        self.log.close()
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        return left


@pytest.fixture(scope="module")
def ray_head(request):
    """One head for the module: the preprocess and annotate jobs are submitted to the same cluster."""
    head = RayHead()
    left: list[int] = []
    # registered before waiting, so a head that never comes up is stopped too
    request.addfinalizer(lambda: left.extend(head.stop()))
    head.wait_ready()
    yield head
    # teardown runs before the finalizer above: stop here to check nothing of ours is left
    left.extend(head.stop())
    assert not left, f"processes of the test head still running: {left}"


def _submit(head, sid: str, runtime_env: dict, *job: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return head.ray("job", "submit", f"--address={head.address}", "--working-dir", ".",
                    f"--runtime-env-json={json.dumps(runtime_env)}", f"--submission-id={sid}", "--", *job,
                    timeout=timeout)


def _job_info(head, sid: str) -> dict:
    import urllib.request
    with urllib.request.urlopen(f"{head.address}/api/jobs/{sid}", timeout=10) as resp:
        return json.loads(resp.read())


def test_ray_head_env_keeps_this_process_clean():
    before = dict(os.environ)
    env = ray_env()
    assert "RAY_ADDRESS" not in env and env["PATH"].startswith(str(VENV_BIN))
    assert env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0" and env["RAY_AUTH_MODE"] == "disabled"
    assert dict(os.environ) == before


@pytest.mark.slow
def test_ray_job_submit_preprocess(ray_head, udacity_root, mobilenet_weights, tmp_path):
    import pyarrow.parquet as pq
    src = udacity_layout(tmp_path / "udacity20", udacity_root, lambda body: body[::len(body) // N_IMAGES][:N_IMAGES])
    out = tmp_path / "faces"
    sid = f"fbtest-preprocess-{uuid.uuid4().hex[:8]}"
    runtime_env = {"env_vars": {"FACEBATCH_WEIGHTS_DIR": str(mobilenet_weights.parent),
                                "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}}
    t0 = time.perf_counter()
    r = ray_head.ray("job", "submit", f"--address={ray_head.address}", "--working-dir", ".",
                     f"--runtime-env-json={json.dumps(runtime_env)}", f"--submission-id={sid}", "--",
                     "python", "jobs/preprocess.py", "--input", str(src), "--format", "udacity68",
                     "--output", str(out), "--progress", "log", "--log-every", "2", timeout=600)
    wall = time.perf_counter() - t0
    print(f"ray job submit: {wall:.1f} s wall, exit {r.returncode}")
    assert r.returncode == 0, f"ray job submit failed ({r.returncode}):\n{r.stdout[-6000:]}\n{r.stderr[-3000:]}"

    import urllib.request
    with urllib.request.urlopen(f"{ray_head.address}/api/jobs/{sid}", timeout=10) as resp:
        info = json.loads(resp.read())
    assert info["status"] == "SUCCEEDED", info
    assert info["runtime_env"]["env_vars"]["FACEBATCH_WEIGHTS_DIR"] == str(mobilenet_weights.parent)

    # the rows: one per input, each input once, all found
    table = pq.read_table(out)
    assert table.num_rows == N_IMAGES
    paths = table.column("path").to_pylist()
    assert len(set(paths)) == N_IMAGES
    assert {Path(p).name for p in paths} == {p.name for p in (src / "training").iterdir()}
    assert set(table.column("status").to_pylist()) == {"ok"}
    summary = json.loads((out / "_summary.json").read_text())
    assert summary["inputs"] == summary["rows"] == N_IMAGES

    # `ray job logs` shows the job's periodic progress lines and its summary
    logs = ray_head.ray("job", "logs", f"--address={ray_head.address}", sid, timeout=60)
    text = logs.stdout
    assert logs.returncode == 0, logs.stderr
    progress = [ln for ln in text.splitlines() if ln.startswith("[facebatch] ") and f"/{N_IMAGES} " in ln]
    assert progress, f"no progress lines in ray job logs:\n{text[-4000:]}"
    assert f"[facebatch] {N_IMAGES}/{N_IMAGES} " in text
    assert "== facebatch preprocess summary ==" in text and f"inputs {N_IMAGES}  rows {N_IMAGES}" in text


N_ANNOTATE = 10


@pytest.mark.slow
def test_ray_job_submit_annotate(ray_head, udacity_root, mobilenet_weights, tmp_path):
    """jobs/annotate.py submitted to the same head: SUCCEEDED, the run folder has _SUCCESS, and the
    live view (read_latest) has one row per image (--largest-face)."""
    from facebatch.annotations import read_latest
    src = udacity_layout(tmp_path / "udacity10", udacity_root, lambda body: body[::len(body) // N_ANNOTATE][:N_ANNOTATE])
    photos = src / "training"
    out = tmp_path / "annotations"
    sid = f"fbtest-annotate-{uuid.uuid4().hex[:8]}"
    runtime_env = {"env_vars": {"FACEBATCH_WEIGHTS_DIR": str(mobilenet_weights.parent),
                                "RAY_DATA_DISABLE_PROGRESS_BARS": "1"}}
    t0 = time.perf_counter()
    r = _submit(ray_head, sid, runtime_env, "python", "jobs/annotate.py", "--input", str(photos), "--output",
                str(out), "--largest-face", "--shard-size", "5", timeout=300)
    print(f"ray job submit annotate: {time.perf_counter() - t0:.1f} s wall, exit {r.returncode}")
    assert r.returncode == 0, f"ray job submit failed ({r.returncode}):\n{r.stdout[-6000:]}\n{r.stderr[-3000:]}"
    assert _job_info(ray_head, sid)["status"] == "SUCCEEDED"
    runs = list(out.glob("dt=*/run=*"))
    assert len(runs) == 1 and (runs[0] / "_SUCCESS").exists(), runs
    table = read_latest(str(out))
    paths = table.column("path").to_pylist()
    assert len(paths) == len(set(paths)) == N_ANNOTATE
    assert {Path(p).name for p in paths} == {p.name for p in photos.iterdir()}
