"""Fault drills for the preprocess job on a real Ray cluster on 127.0.0.1 (not tests: they kill things).

    .venv/bin/python bench/drills.py node-loss driver-kill sigint [--images 400]
    .venv/bin/python bench/drills.py annotate-node-loss s3-outage-long

Each drill starts its own head (`ray start --head`, own temp dir and ports, see
tests/test_job_submit.py) and stops it by the process ids it started. Results (rows expected,
rows found, duplicates, time to recover) are printed as a Markdown table and saved as JSON under
out/drills/ for docs/RELIABILITY.md.

- node-loss: a head (1 CPU) plus a second node (2 CPUs); the second node's raylet is killed
  (SIGKILL, by pid) once a fifth of the inputs are done. Pass: the run finishes with every row once.
- driver-kill: `kill -9` of the driver mid-run, then the same command with --resume.
- sigint: SIGINT (Ctrl-C) to the driver mid-run; it must exit, and --resume must finish the rows.
- annotate-node-loss: `facebatch annotate` (200 images, shard size 16) on a head (1 CPU) plus a second
  node (2 CPUs); the second raylet is killed once a fifth of the parts are written. Annotate has no
  in-run rerun: pass is a clear failure (or a finish) and the same command again completing, with
  read_latest holding every listed image exactly once.
- s3-outage: preprocess from s3:// through a proxy that resets connections for --outage-s (60) s.
- preprocess-write-outage, annotate-write-outage: 40 local images written to s3:// through the proxy,
  which goes down at the PUT of the third part for --write-outage-s (60) s against --retry-seconds
  20: the run must stop (exit 75, resume hint), and once S3 is back the same command (preprocess:
  --resume) must leave the same rows as an uninterrupted run.
- s3-outage-long: the same with --long-outage-s 120 against --retry-seconds 30 (4x the budget, in
  place of a 10-minute outage); markers are checked against rows, then --resume once S3 is back
  (after a failure or when rows a retry could fix remain) must leave every row ok, once.

A second node on one machine. With RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 (every port on
127.0.0.1) `ray start --address=...` refuses to add a worker node; with it unset Ray binds the
machine's network address. The `_node` mode below is a TEST-ONLY launcher that keeps the setting
and bypasses only that refusal: it sets `ray._private.ray_constants.ENABLE_RAY_CLUSTER = True` in
its own process, forces the node IP to 127.0.0.1 (`services.get_node_ip_address`) and runs the
`ray start` CLI (`ray.scripts.scripts.main`). The processes it starts inherit the env var (0), so
they stay on loopback. It touches Ray internals: checked with ray==2.60.0 only (PINNED_RAY below);
it refuses other versions. Never use it outside drills.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
PINNED_RAY = "2.60.0"


def launch_node(argv: list[str]) -> None:
    """The test-only second-node launcher (see the module doc)."""
    import ray
    if ray.__version__ != PINNED_RAY:
        raise SystemExit(f"drills' node launcher is pinned to ray {PINNED_RAY}, found {ray.__version__}")
    from ray._private import ray_constants, services
    assert os.environ.get("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER") == "0", "keep the loopback setting"
    ray_constants.ENABLE_RAY_CLUSTER = True  # only the CLI's refusal reads this in this process
    services.get_node_ip_address = lambda address=None: "127.0.0.1"
    from ray.scripts.scripts import main
    sys.argv = ["ray", "start", "--node-ip-address=127.0.0.1", *argv]
    main()


def _subset(n: int, root: Path) -> Path:
    from conftest import udacity_layout
    from facebatch.paths import data_dir
    src = data_dir() / "udacity68"
    dst = root / "input"
    if not dst.exists():
        udacity_layout(dst, src, lambda body: body[::max(1, len(body) // n)][:n])
    return dst


def _run_driver(head, inp: Path, out: Path, resume: bool = False):
    cmd = [sys.executable, "jobs/preprocess.py", "--address", f"127.0.0.1:{head.gcs_port}", "--input", str(inp),
           "--format", "udacity68", "--output", str(out), "--progress", "log", "--log-every", "1"]
    if resume:
        cmd.append("--resume")
    env = dict(head.env, FACEBATCH_WEIGHTS_DIR=str(Path(os.environ.get("FACEBATCH_DATA", REPO.parent / "shared" / "data")) / "weights"))
    # SIG_DFL for SIGINT: a drill started in the background (`cmd &`) inherits SIGINT ignored, and
    # Python then installs no KeyboardInterrupt handler in the driver (the SIGINT drill would be void)
    return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_progress(proc, frac: float, total: int, lines: list[str], timeout: float = 600) -> bool:
    t0 = time.time()
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("[facebatch] ") and "/" in line:
            try:
                done = int(line.split()[1].split("/")[0])
            except ValueError:
                continue
            if done >= frac * total:
                return True
        if time.time() - t0 > timeout:
            break
    return False


def _count(out: Path, total: int) -> dict:
    import pyarrow.parquet as pq
    t = pq.read_table(out, columns=["path", "status"])
    paths = t.column("path").to_pylist()
    return {"expected": total, "found": len(set(paths)), "rows": len(paths), "duplicates": len(paths) - len(set(paths)),
            "status": {s: t.column("status").to_pylist().count(s) for s in set(t.column("status").to_pylist())}}


def drill_node_loss(n: int, root: Path, stall_s: float = 300) -> dict:
    from test_job_submit import RayHead
    inp, out = _subset(n, root), root / "node-loss"
    head = RayHead(num_cpus=1)
    node = None
    try:
        head.wait_ready()
        node = _start_second_node(head, root)
        time.sleep(15)
        proc = _run_driver(head, inp, out)
        lines: list[str] = []
        reached = _wait_progress(proc, 0.2, n, lines)
        raylets = [p for p in _session_pids(node.pid) if "raylet" in _cmd(p).split(" ")[0]]
        t_kill = time.time()
        for p in raylets:
            os.kill(p, signal.SIGKILL)
        rc, stalled = _finish(proc, lines, stall_s, head)
        recover = time.time() - t_kill
        if stalled:
            (root / "node-loss-actors.txt").write_text(stalled)
            rc = proc.returncode
        res = {"drill": "node loss (second raylet SIGKILL at >=20%)", "run": True, "reached_20pct": reached,
               "killed_raylets": raylets, "rc": rc, "stalled": bool(stalled), "time_to_recover_s": round(recover, 1)}
        res.update(_count(out, n) if (out / "_summary.json").exists() or rc == 0 else {"expected": n, "found": None})
        if rc != 0:  # a failed run must be finished by a rerun
            t1 = time.time()
            p2 = _run_driver(head, inp, out, resume=True)
            lines2 = p2.communicate()[0]
            res.update(rerun_rc=p2.returncode, time_to_recover_s=round(time.time() - t_kill, 1), **_count(out, n))
            (root / "node-loss-rerun.log").write_text(lines2)
            del t1
        (root / "node-loss.log").write_text("".join(lines))
        return res
    finally:
        if node is not None:
            for p in _session_pids(node.pid):
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        head.stop()


def _finish(proc, lines: list[str], stall_s: float, head) -> tuple[int | None, str]:
    """Read the driver's output until it exits; if it has not exited within ``stall_s`` s, record
    `ray list actors` (what the job waits for), SIGINT it, then SIGKILL it. ``(rc, actors text or '')``."""
    import threading
    t = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
    t.start()
    try:
        return proc.wait(timeout=stall_s), ""
    except subprocess.TimeoutExpired:
        pass
    try:
        actors = head.ray("list", "actors", f"--address={head.address}", "--limit", "200", timeout=120)
        listing = actors.stdout + actors.stderr
    except subprocess.TimeoutExpired:
        listing = "ray list actors timed out"
    os.kill(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    t.join(timeout=5)
    return proc.returncode, listing or "(empty listing)"


def _cmd(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _session_pids(sid: int) -> list[int]:
    out = []
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                if os.getsid(int(p.name)) == sid:
                    out.append(int(p.name))
            except (ProcessLookupError, PermissionError):
                pass
    return out


def _start_second_node(head, root: Path, log_name: str = "node.log"):
    """The second node (2 CPUs) through the test-only launcher; returns its Popen (session leader)."""
    from test_job_submit import _free_ports
    nm, om, ag, agg, me, rte = _free_ports(6)
    node_cmd = [sys.executable, __file__, "_node", f"--address=127.0.0.1:{head.gcs_port}", "--num-cpus=2", "--block",
                f"--node-manager-port={nm}", f"--object-manager-port={om}", f"--dashboard-agent-listen-port={ag}",
                f"--dashboard-agent-grpc-port={agg}", f"--metrics-export-port={me}", f"--runtime-env-agent-port={rte}",
                "--min-worker-port=61000", "--max-worker-port=61199", "--disable-usage-stats"]
    return subprocess.Popen(node_cmd, env=head.env, cwd=REPO, stdout=open(root / log_name, "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def _kill_session(sid: int) -> None:
    for p in _session_pids(sid):
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def drill_annotate_node_loss(n: int, root: Path, stall_s: float = 300, shard_size: int = 16) -> dict:
    """`facebatch annotate` on a head (1 CPU) plus a second node (2 CPUs); the second node's raylet is
    killed (SIGKILL, by pid) once a fifth of the parts are written. Annotate has no in-run rerun of
    lost shards: acceptable is a clear failure ("rerun the same command") and a rerun of the same
    command that completes, with read_latest holding every listed image exactly once."""
    import shutil
    from test_job_submit import RayHead
    src = _subset(max(n, 1), root) / "training"
    inp = root / f"annotate-input-{n}"
    if not inp.exists():
        inp.mkdir()
        for p in sorted(src.iterdir())[:n]:
            (inp / p.name).symlink_to(p.resolve())
    listing = sorted(str(p.name) for p in inp.iterdir())
    out = root / "annotate-node-loss"
    if out.exists():
        shutil.rmtree(out)
    n_parts = -(-len(listing) // shard_size)
    head = RayHead(num_cpus=1)
    node = None
    try:
        head.wait_ready()
        node = _start_second_node(head, root, "annotate-node.log")
        time.sleep(15)
        cmd = [sys.executable, "jobs/annotate.py", "--address", f"127.0.0.1:{head.gcs_port}", "--input", str(inp),
               "--output", str(out), "--shard-size", str(shard_size)]
        env = _weights_env(head.env)
        t_start = time.time()
        proc = subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
        lines: list[str] = []
        import threading
        reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
        reader.start()
        want = max(1, n_parts // 5)
        while (proc.poll() is None and len(list(out.glob("dt=*/run=*/part-*.parquet"))) < want
               and time.time() - t_start < 900):
            time.sleep(0.2)
        parts_at_kill = len(list(out.glob("dt=*/run=*/part-*.parquet")))
        killed_while_running = proc.poll() is None
        raylets = [p for p in _session_pids(node.pid) if "raylet" in _cmd(p).split(" ")[0]]
        t_kill = time.time()
        for p in raylets:
            os.kill(p, signal.SIGKILL)
        stalled = ""
        try:
            proc.wait(timeout=stall_s)
        except subprocess.TimeoutExpired:
            try:
                stalled = head.ray("list", "actors", f"--address={head.address}", "--limit", "200",
                                   timeout=120).stdout or "(empty listing)"
            except subprocess.TimeoutExpired:
                stalled = "ray list actors timed out"
            os.kill(proc.pid, signal.SIGINT)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        reader.join(timeout=10)
        rc1, first_s = proc.returncode, round(time.time() - t_kill, 1)
        text1 = "".join(lines)
        if stalled:
            (root / "annotate-node-loss-actors.txt").write_text(stalled)
        clear = [ln.strip() for ln in text1.splitlines() if "rerun" in ln or "JobFailed" in ln or "nothing" in ln][-3:]
        r2 = None
        if rc1 != 0:
            r2 = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=1200)
        recover = time.time() - t_kill
        rows = _latest_rows(out)
        keys = [(r[0], r[1]) for r in rows]
        found = sorted({Path(r[0]).name for r in rows})
        res = {"drill": "annotate node loss (second raylet SIGKILL at >=20% of parts), then the same command",
               "run": True, "killed_while_running": killed_while_running, "parts_at_kill": parts_at_kill,
               "parts_planned": n_parts, "killed_raylets": raylets, "first_rc": rc1, "first_ended_s_after_kill": first_s,
               "first_stalled": bool(stalled), "failure_lines": clear,
               "rerun_rc": None if r2 is None else r2.returncode, "expected": len(listing), "found": len(found),
               "found_equals_listing": found == listing, "rows": len(rows), "duplicates": len(keys) - len(set(keys)),
               "statuses": {s: [r[2] for r in rows].count(s) for s in {r[2] for r in rows}},
               "time_to_recover_s": round(recover, 1),
               "unfinished_runs_left": [str(d) for d in out.glob("dt=*/run=*") if not (d / "_SUCCESS").exists()]}
        (root / "annotate-node-loss.log").write_text(text1 + "\n---- rerun ----\n" +
                                                      ("" if r2 is None else r2.stdout + r2.stderr))
        return res
    finally:
        if node is not None:
            _kill_session(node.pid)
        head.stop()


def _markers_vs_rows(out: Path) -> dict:
    """Each done-marker against its part's rows: a marker is 'clean' when its part exists, has the
    marker's row count and every input row ok; markers that admit read errors are redone by --resume."""
    import pyarrow.parquet as pq
    clean, with_errors, mismatched = [], [], []
    for m in sorted((out / "_done").glob("part-*.json")):
        st = json.loads(m.read_text())
        part = out / m.name.replace(".json", ".parquet")
        if not part.exists():
            mismatched.append(m.name)
            continue
        t = pq.read_table(part, columns=["status"])
        statuses = t.column("status").to_pylist()
        counts = {s: statuses.count(s) for s in set(statuses)}
        if len(statuses) != st.get("n_rows") or counts != st.get("status_counts"):
            mismatched.append(m.name)
        elif set(counts) - {"ok", "no_face"}:
            with_errors.append({m.name: counts})
        else:
            clean.append(m.name)
    parts = sorted(p.name for p in out.glob("part-*.parquet"))
    return {"markers_clean": len(clean), "markers_with_errors": with_errors, "markers_mismatched": mismatched,
            "parts_on_disk": len(parts)}


def drill_driver_signal(n: int, root: Path, sig: signal.Signals, name: str) -> dict:
    from test_job_submit import RayHead
    inp, out = _subset(n, root), root / name
    head = RayHead(num_cpus=2)
    try:
        head.wait_ready()
        if out.exists():  # parts of an earlier drill would trigger the signal at once
            import shutil
            shutil.rmtree(out)
        proc = _run_driver(head, inp, out)
        lines: list[str] = []
        import threading
        reader = threading.Thread(target=lambda: lines.extend(proc.stdout), daemon=True)
        reader.start()
        # Shards finish in bursts and the progress line can jump from 0 to done: trigger on the
        # parts on disk instead (written by the actors before the driver counts them).
        t0 = time.time()
        while proc.poll() is None and len(list(out.glob("part-*.parquet"))) < 2 and time.time() - t0 < 600:
            time.sleep(0.1)
        parts_at_signal = len(list(out.glob("part-*.parquet")))
        reached = proc.poll() is None  # False: the run ended before the signal, the drill is void
        t_kill = time.time()
        if sig == signal.SIGINT:
            os.killpg(proc.pid, sig)  # as Ctrl-C in a terminal: the whole foreground group
        else:
            os.kill(proc.pid, sig)
        try:
            proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        reader.join(timeout=10)
        tail = ""
        rc1 = proc.returncode
        stop_s = time.time() - t_kill
        p2 = _run_driver(head, inp, out, resume=True)
        log2 = p2.communicate()[0]
        res = {"drill": f"driver {sig.name} after 2 of 7 parts, then --resume", "run": True,
               "signalled_while_running": reached, "parts_at_signal": parts_at_signal,
               "first_rc": rc1, "stopped_in_s": round(stop_s, 1), "rerun_rc": p2.returncode,
               "time_to_recover_s": round(time.time() - t_kill, 1),
               "resume_hint_printed": "--resume" in "".join(lines), "skipped_on_resume": "skipped on resume" in log2}
        res.update(_count(out, n))
        (root / f"{name}.log").write_text("".join(lines) + tail + "\n---- rerun ----\n" + log2)
        return res
    finally:
        head.stop()


def _weights_env(base: dict) -> dict:
    return dict(base, FACEBATCH_WEIGHTS_DIR=str(Path(os.environ.get("FACEBATCH_DATA", REPO.parent / "shared" / "data")) / "weights"))


def _latest_rows(out: Path) -> list[tuple]:
    from facebatch.annotations import read_latest
    t = read_latest(str(out))
    cols = [c for c in ("path", "face_index", "status", "box", "smile_label", "eyeglasses_label") if c in t.column_names]
    return sorted(tuple(json.dumps(r[c], default=str) if c == "box" else r[c] for c in cols) for r in t.select(cols).to_pylist())


def drill_annotate_kill(n: int, root: Path) -> dict:
    """kill -9 of a `facebatch annotate` driver once a part is written, then the same command again;
    the live view (read_latest) must equal an uninterrupted run's."""
    from test_job_submit import RayHead
    src = _subset(max(n, 1), root) / "training"
    inp = root / f"annotate-input-{n}"
    if not inp.exists():
        inp.mkdir()
        for p in sorted(src.iterdir())[:n]:
            (inp / p.name).symlink_to(p.resolve())
    out, ref = root / "annotate-killed", root / "annotate-ref"
    for d in (out, ref):
        if d.exists():
            import shutil
            shutil.rmtree(d)
    head = RayHead(num_cpus=2)
    try:
        head.wait_ready()
        cmd = [sys.executable, "jobs/annotate.py", "--address", f"127.0.0.1:{head.gcs_port}", "--input", str(inp),
               "--shard-size", "4"]
        env = _weights_env(head.env)
        proc = subprocess.Popen(cmd + ["--output", str(out)], env=env, cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        t0 = time.time()
        while time.time() - t0 < 600 and len(list(out.glob("dt=*/run=*/part-*.parquet"))) < 2 and proc.poll() is None:
            time.sleep(0.2)
        parts_at_kill = len(list(out.glob("dt=*/run=*/part-*.parquet")))
        killed_alive = proc.poll() is None
        t_kill = time.time()
        os.kill(proc.pid, signal.SIGKILL)
        log1 = proc.communicate()[0]
        r2 = subprocess.run(cmd + ["--output", str(out)], env=env, cwd=REPO, capture_output=True, text=True)
        recover = time.time() - t_kill
        r3 = subprocess.run(cmd + ["--output", str(ref)], env=env, cwd=REPO, capture_output=True, text=True)
        a, b = _latest_rows(out), _latest_rows(ref)
        paths = [r[0] for r in a]
        per_image = {}
        for r in a:
            per_image.setdefault(r[0], set()).add(r[1])
        dup = len(a) - len(set(a))
        res = {"drill": "annotate driver kill -9 after 2 parts, then the same command", "run": True,
               "killed_while_running": killed_alive, "parts_at_kill": parts_at_kill,
               "rerun_rc": r2.returncode, "ref_rc": r3.returncode, "expected": n, "found": len(set(paths)),
               "rows": len(a), "ref_rows": len(b), "duplicates": dup, "equal_to_uninterrupted": a == b,
               "time_to_recover_s": round(recover, 1),
               "unfinished_runs_left": [str(d) for d in out.glob("dt=*/run=*") if not (d / "_SUCCESS").exists()]}
        (root / "annotate-kill.log").write_text(log1 + "\n---- rerun ----\n" + r2.stdout + r2.stderr +
                                                 "\n---- reference ----\n" + r3.stdout + r3.stderr)
        return res
    finally:
        head.stop()


def drill_train_worker(root: Path, data: Path, limit: int = 200, kill_after_s: float = 1.0) -> dict:
    """Kill one RayTrainWorker process (SIGKILL, by pid) mid-way through epoch 2 of 2; FailureConfig
    restarts the worker group from the epoch-1 checkpoint and the run ends with 2 epochs."""
    from test_job_submit import RayHead
    import shutil
    name = "drill-train"
    storage = root / "train-runs"
    if (storage / name).exists():
        shutil.rmtree(storage / name)
    head = RayHead(num_cpus=2)
    try:
        head.wait_ready()
        cmd = [sys.executable, "-m", "facebatch.cli", "train", "keypoints", "--config", "keypoints68",
               "--address", f"127.0.0.1:{head.gcs_port}", f"data={json.dumps(str(data))}", "epochs=2",
               f"limit={limit}", "num_workers=2", "cpus_per_worker=0.5", "input_size=128", "batch_size=8",
               'model_kwargs={"pretrained": false}', f"storage_path={json.dumps(str(storage))}",
               f'name="{name}"', "export=null"]
        proc = subprocess.Popen(cmd, env=_weights_env(head.env), cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        lines: list[str] = []
        for line in proc.stdout:
            lines.append(line)
            if "Reporting training result 1" in line:  # epoch 1's checkpoint is written: epoch 2 starts
                break
        time.sleep(kill_after_s)  # into epoch 2
        workers = [p for p in _session_pids(head.sid) if "RayTrainWorker" in _cmd(p)]
        victim = workers[0] if workers else None
        t_kill = time.time()
        if victim:
            os.kill(victim, signal.SIGKILL)
        n_before = len(lines)
        lines.extend(proc.stdout)
        rc = proc.wait()
        text = "".join(lines)
        hist_p = storage / name / "history.json"
        hist = json.loads(hist_p.read_text()) if hist_p.exists() else []
        res = {"drill": "Ray Train worker SIGKILL mid-epoch 2 of 2", "run": True, "workers_seen": workers,
               "killed": victim, "rc": rc, "epoch_1_lines": text.count("epoch 1/2 "),
               "epoch_2_lines": text.count("epoch 2/2 "), "history_epochs": [h.get("epoch") for h in hist],
               "restored_from_checkpoint": "epoch 1/2 " in text and text.count("epoch 1/2 ") == 1,
               "expected": 2, "found": len(hist), "duplicates": len(hist) - len({h.get("epoch") for h in hist}),
               "epoch_2_done_before_kill": any("epoch 2/2 " in ln for ln in lines[:n_before]),
               "time_to_recover_s": round(time.time() - t_kill, 1)}
        (root / "train-worker.log").write_text(text)
        return res
    finally:
        head.stop()


def drill_s3_outage(n: int, root: Path, outage_s: float = 60, retry_s: float | None = None,
                    name: str = "s3-outage") -> dict:
    """Preprocess from s3:// (moto's server on 127.0.0.1 behind a TCP proxy); once a fifth of the inputs
    are done the proxy resets every connection for ``outage_s`` s. Pass: every row ok, each once.

    With ``retry_s`` (``--retry-seconds``) shorter than the outage (drill s3-outage-long) the run must
    fail clearly ("rerun ... with --resume"), no done-marker may claim a shard whose inputs were not
    all read, and once S3 is back the same command with --resume must finish every row ok, once."""
    import shutil
    from moto.server import ThreadedMotoServer
    from test_job_submit import RayHead
    from test_preprocess_safety_proxy import FaultProxy
    src = _subset(n, root)
    creds = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    os.environ.update(creds)
    import logging
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's server logs every request otherwise
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    proxy = FaultProxy(host, int(port))
    out = root / name
    if out.exists():
        shutil.rmtree(out)
    head = RayHead(num_cpus=2)
    try:
        import s3fs
        fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": f"http://{host}:{port}"})
        fs.mkdir("fb-drill")
        fs.put(str(src / "training_frames_keypoints.csv"), "fb-drill/in/training_frames_keypoints.csv")
        files = sorted((src / "training").iterdir())
        for f in files:
            fs.put(str(f.resolve()), f"fb-drill/in/training/{f.name}")
        head.wait_ready()
        cmd = [sys.executable, "jobs/preprocess.py", "--address", f"127.0.0.1:{head.gcs_port}", "--input",
               "s3://fb-drill/in", "--format", "udacity68", "--output", str(out), "--progress", "log",
               "--log-every", "1", "--s3-endpoint-url", proxy.endpoint]
        if retry_s is not None:
            cmd += ["--retry-seconds", f"{retry_s:g}"]
        proc = subprocess.Popen(cmd, env=dict(_weights_env(head.env), **creds), cwd=REPO, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, start_new_session=True)
        lines: list[str] = []
        reached = _wait_progress(proc, 0.2, len(files), lines)
        t_down = time.time()
        proxy.down_for(outage_s)
        lines.extend(proc.stdout)
        rc = proc.wait()
        text = "".join(lines)
        res = {"drill": f"S3 outage {outage_s:g} s (proxy resets connections) at >=20%", "run": True,
               "reached_20pct": reached, "rc": rc, "refused_connections": proxy.refused,
               "retry_lines": text.count("[facebatch] retrying"), "outage_s": outage_s,
               "finished_s_after_outage_start": round(time.time() - t_down, 1),
               "time_to_recover_s": round(max(0.0, time.time() - t_down - outage_s), 1)}
        res.update(_count(out, len(files)) if rc == 0 else {"expected": len(files), "found": None})
        if retry_s is not None:
            res["retry_s"] = retry_s
            res["failed_in_s_after_outage_start"] = res.pop("finished_s_after_outage_start")
            res["resume_hint_printed"] = "--resume" in text
            res["failure_lines"] = [ln.strip()[:400] for ln in text.splitlines() if "rerun" in ln][-2:]
            res["after_first_run"] = _markers_vs_rows(out) if out.exists() else {}
            wait = t_down + outage_s + 2 - time.time()
            res["s3_still_down_at_exit"] = wait > 0
            if wait > 0:
                time.sleep(wait)  # S3 back
            first_status = res.get("status") or {}
            res["first_status"] = first_status
            if rc != 0 or first_status.get("read_error") or first_status.get("detect_error"):
                # a failed run, or one that ended with rows a retry could fix: --resume once S3 is back
                r2 = subprocess.run(cmd + ["--resume"], env=dict(_weights_env(head.env), **creds), cwd=REPO,
                                    capture_output=True, text=True, timeout=1200)
                text += "\n---- rerun --resume ----\n" + r2.stdout + r2.stderr
                res["rerun_rc"] = r2.returncode
                res["skipped_on_resume"] = [ln.strip()[:300] for ln in (r2.stdout + r2.stderr).splitlines()
                                            if "skipped" in ln][:2]
                res["time_to_recover_s"] = round(time.time() - t_down - outage_s, 1)
                res.update(_count(out, len(files)))
                res["after_rerun"] = _markers_vs_rows(out)
        (root / f"{name}.log").write_text(text)
        return res
    finally:
        head.stop()
        proxy.close()
        server.stop()


def _rows_key(rows: list[dict], cols: tuple[str, ...]) -> list[tuple]:
    """Rows as sorted tuples of ``cols``, boxes rounded to 1e-3 px (two runs of the same inputs)."""
    def v(r, c):
        x = r.get(c)
        return json.dumps([round(float(b), 3) for b in x]) if c == "box" and x is not None else x
    return sorted(tuple(v(r, c) for c in cols) for r in rows)


def _preprocess_rows(out: str, options: dict) -> list[dict]:
    import pyarrow.parquet as pq
    from facebatch.storage import filesystem, join
    fs, root = filesystem(out, options)
    rows: list[dict] = []
    for p in sorted(fs.glob(join(root, "part-*.parquet"))):
        with fs.open(p, "rb") as f:
            rows.extend(pq.read_table(f, columns=["path", "face_index", "status", "split", "box"]).to_pylist())
    return rows


def drill_write_outage(job: str, n: int, root: Path, outage_s: float = 60, retry_s: float = 20,
                       shard_size: int = 4) -> dict:
    """A part write meets a storage outage (issue 23). ``job`` (annotate or preprocess) reads ``n`` local
    images and writes to s3:// (moto's server on 127.0.0.1 behind a TCP proxy); the proxy goes down
    the moment a request for the third part arrives, for ``outage_s`` s, longer than the job's
    ``--retry-seconds`` ``retry_s``. Pass: the run stops with exit 75 and the resume hint; once S3
    is back, the same command (preprocess: with --resume) exits 0 and leaves the same rows as an
    uninterrupted run into a local folder (path, face index, status, split or run-free columns, box
    to 1e-3 px), each once."""
    import shutil
    import threading
    from moto.server import ThreadedMotoServer
    from test_job_submit import RayHead
    from test_preprocess_safety_proxy import FaultProxy
    from facebatch.storage import storage_options
    src = _subset(max(n, 1), root) / "training"
    inp = root / f"write-outage-input-{n}"
    if not inp.exists():
        inp.mkdir()
        for p in sorted(src.iterdir())[:n]:
            (inp / p.name).symlink_to(p.resolve())
    creds = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    os.environ.update(creds)
    import logging
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    direct = f"http://{host}:{port}"
    proxy = FaultProxy(host, int(port))
    bucket = f"fb-write-outage-{job}"  # moto keeps its buckets per process, across servers
    out = f"s3://{bucket}/{job}"
    ref = root / f"write-outage-{job}-ref"
    if ref.exists():
        shutil.rmtree(ref)
    head = RayHead(num_cpus=2)
    try:
        import s3fs
        s3fs.S3FileSystem(client_kwargs={"endpoint_url": direct}).mkdir(bucket)
        head.wait_ready()
        base = [sys.executable, f"jobs/{job}.py", "--address", f"127.0.0.1:{head.gcs_port}", "--input", str(inp),
                "--shard-size", str(shard_size), "--retry-seconds", f"{retry_s:g}"]
        if job == "preprocess":
            base += ["--progress", "log", "--log-every", "5"]
        cmd = base + ["--output", out, "--s3-endpoint-url", proxy.endpoint]
        env = dict(_weights_env(head.env), **creds)
        proxy.trigger = b"part-00002.parquet HTTP"  # the request line of the third part's PUT
        went_down: dict = {}

        def outage() -> None:  # back up outage_s after the trigger took S3 down
            while proxy._up.is_set() and not went_down.get("stop"):
                time.sleep(0.05)
            went_down["t"] = time.time()
            time.sleep(outage_s)
            proxy.up()
            went_down["up"] = time.time()
        watcher = threading.Thread(target=outage, daemon=True)
        watcher.start()
        t0 = time.time()
        r1 = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True, timeout=1800)
        t1_end = time.time()
        went_down["stop"] = True
        watcher.join(timeout=outage_s + 5)
        if "up" not in went_down:
            proxy.up()
        text1 = r1.stdout + r1.stderr
        t_down = went_down.get("t")
        rerun = cmd + (["--resume"] if job == "preprocess" else [])
        r2 = subprocess.run(rerun, env=env, cwd=REPO, capture_output=True, text=True, timeout=1800)
        t_done = time.time()
        r3 = subprocess.run(base + ["--output", str(ref)], env=env, cwd=REPO, capture_output=True, text=True,
                            timeout=1800)
        options = storage_options(direct)
        if job == "annotate":
            from facebatch.annotations import read_latest
            cols = ("path", "face_index", "status", "box", "smile_label", "eyeglasses_label")
            got = read_latest(out, options=options).to_pylist()
            want = read_latest(str(ref)).to_pylist()
            fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": direct})
            unfinished = [p for p in fs.glob(f"{bucket}/{job}/dt=*/run=*") if not fs.exists(f"{p}/_SUCCESS")]
        else:
            cols = ("path", "face_index", "status", "split", "box")
            got, want = _preprocess_rows(out, options), _preprocess_rows(str(ref), {})
            unfinished = []
        a, b = _rows_key(got, cols), _rows_key(want, cols)
        keys = [(r[0], r[1]) for r in a]
        hint = [ln.strip()[:400] for ln in text1.splitlines() if "error:" in ln and "rerun" in ln]
        res = {"drill": f"{job}: S3 down {outage_s:g} s from the PUT of the third part (--retry-seconds {retry_s:g}), "
                        "then the same command" + (" with --resume" if job == "preprocess" else ""),
               "run": True, "outage_hit": t_down is not None, "refused_connections": proxy.refused,
               "first_rc": r1.returncode, "first_run_s": round(t1_end - t0, 1),
               "first_ended_s_after_outage_start": None if t_down is None else round(t1_end - t_down, 1),
               "resume_hint": hint[-1] if hint else None, "rerun_rc": r2.returncode, "ref_rc": r3.returncode,
               "expected": n, "found": len({r[0] for r in a}), "rows": len(a), "ref_rows": len(b),
               "duplicates": len(keys) - len(set(keys)), "equal_to_uninterrupted": a == b,
               "statuses": {st: [r[2] for r in a].count(st) for st in {r[2] for r in a}},
               "unfinished_runs_left": unfinished,
               "time_to_recover_s": None if t_down is None else round(t_done - went_down.get("up", t_down), 1)}
        (root / f"{job}-write-outage.log").write_text(text1 + "\n---- rerun ----\n" + r2.stdout + r2.stderr +
                                                      "\n---- reference ----\n" + r3.stdout + r3.stderr)
        return res
    finally:
        head.stop()
        proxy.close()
        server.stop()


def main(argv=None) -> int:
    if argv is None and sys.argv[1:2] == ["_node"]:
        launch_node(sys.argv[2:])
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("drills", nargs="+", choices=["node-loss", "driver-kill", "sigint", "annotate-kill", "train-worker", "s3-outage",
                                                "annotate-node-loss", "s3-outage-long", "preprocess-write-outage",
                                                "annotate-write-outage"])
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--stall-s", type=float, default=300, help="node-loss: give up on the driver after this long")
    ap.add_argument("--annotate-images", type=int, default=40)
    ap.add_argument("--train-data", default=str(REPO / "out" / "udacity68"))
    ap.add_argument("--outage-s", type=float, default=60)
    ap.add_argument("--long-outage-s", type=float, default=120, help="s3-outage-long: outage (4x --long-retry-s)")
    ap.add_argument("--long-retry-s", type=float, default=30, help="s3-outage-long: the job's --retry-seconds")
    ap.add_argument("--annotate-node-loss-images", type=int, default=200)
    ap.add_argument("--write-outage-images", type=int, default=40, help="*-write-outage: images (shard size 4)")
    ap.add_argument("--write-outage-s", type=float, default=60, help="*-write-outage: outage from the third part's PUT")
    ap.add_argument("--write-retry-s", type=float, default=20, help="*-write-outage: the job's --retry-seconds")
    ap.add_argument("--out", default=str(REPO / "out" / "drills"))
    a = ap.parse_args(argv)
    from facebatch.raycluster import local_ray_env
    local_ray_env()
    root = Path(a.out)
    root.mkdir(parents=True, exist_ok=True)
    results = []
    for d in a.drills:
        t0 = time.time()
        load0 = os.getloadavg()[0]
        if d == "node-loss":
            r = drill_node_loss(a.images, root, a.stall_s)
        elif d == "driver-kill":
            r = drill_driver_signal(a.images, root, signal.SIGKILL, "driver-kill")
        elif d == "sigint":
            r = drill_driver_signal(a.images, root, signal.SIGINT, "sigint")
        elif d == "annotate-kill":
            r = drill_annotate_kill(a.annotate_images, root)
        elif d == "train-worker":
            r = drill_train_worker(root, Path(a.train_data))
        elif d == "annotate-node-loss":
            r = drill_annotate_node_loss(a.annotate_node_loss_images, root, a.stall_s)
        elif d.endswith("-write-outage"):
            r = drill_write_outage(d.split("-")[0], a.write_outage_images, root, a.write_outage_s, a.write_retry_s)
        elif d == "s3-outage-long":
            r = drill_s3_outage(a.images, root, a.long_outage_s, retry_s=a.long_retry_s, name="s3-outage-long")
        else:
            r = drill_s3_outage(a.images, root, a.outage_s)
        r["drill_wall_s"] = round(time.time() - t0, 1)
        r["load_avg_1min"] = [round(load0, 1), round(os.getloadavg()[0], 1)]  # at start, at end (2 cores)
        print(json.dumps(r), flush=True)
        results.append(r)
        (root / f"{d}.json").write_text(json.dumps(r, indent=2))
    print("\n| drill | expected | found | duplicates | time to recover (s) | notes |\n|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['drill']} | {r.get('expected')} | {r.get('found')} | {r.get('duplicates')} | {r['time_to_recover_s']} | "
              f"rc {r.get('rc', r.get('first_rc'))} -> {r.get('rerun_rc', '-')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
