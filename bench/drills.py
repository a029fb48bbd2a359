"""Fault drills for the preprocess job on a real Ray cluster on 127.0.0.1 (not tests: they kill things).

    .venv/bin/python bench/drills.py node-loss driver-kill sigint [--images 400]

Each drill starts its own head (`ray start --head`, own temp dir and ports, see
tests/test_job_submit.py) and stops it by the process ids it started. Results (rows expected,
rows found, duplicates, time to recover) are printed as a Markdown table and saved as JSON under
out/drills/ for docs/RELIABILITY.md.

- node-loss: a head (1 CPU) plus a second node (2 CPUs); the second node's raylet is killed
  (SIGKILL, by pid) once a fifth of the inputs are done. Pass: the run finishes with every row once.
- driver-kill: `kill -9` of the driver mid-run, then the same command with --resume.
- sigint: SIGINT (Ctrl-C) to the driver mid-run; it must exit, and --resume must finish the rows.

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
    return subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


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


def drill_node_loss(n: int, root: Path) -> dict:
    from test_job_submit import RayHead, _free_ports
    inp, out = _subset(n, root), root / "node-loss"
    head = RayHead(num_cpus=1)
    node = None
    try:
        head.wait_ready()
        nm, om, ag, agg, me, rte = _free_ports(6)
        node_cmd = [sys.executable, __file__, "_node", f"--address=127.0.0.1:{head.gcs_port}", "--num-cpus=2", "--block",
                    f"--node-manager-port={nm}", f"--object-manager-port={om}", f"--dashboard-agent-listen-port={ag}",
                    f"--dashboard-agent-grpc-port={agg}", f"--metrics-export-port={me}", f"--runtime-env-agent-port={rte}",
                    "--min-worker-port=61000", "--max-worker-port=61199", "--disable-usage-stats"]
        node = subprocess.Popen(node_cmd, env=head.env, cwd=REPO, stdout=open(root / "node.log", "w"),
                                stderr=subprocess.STDOUT, start_new_session=True)
        time.sleep(15)
        proc = _run_driver(head, inp, out)
        lines: list[str] = []
        reached = _wait_progress(proc, 0.2, n, lines)
        raylets = [p for p in _session_pids(node.pid) if "raylet" in _cmd(p).split(" ")[0]]
        t_kill = time.time()
        for p in raylets:
            os.kill(p, signal.SIGKILL)
        lines.extend(proc.stdout)
        rc = proc.wait()
        recover = time.time() - t_kill
        res = {"drill": "node loss (second raylet SIGKILL at >=20%)", "run": True, "reached_20pct": reached,
               "killed_raylets": raylets, "rc": rc, "time_to_recover_s": round(recover, 1)}
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


def drill_driver_signal(n: int, root: Path, sig: signal.Signals, name: str) -> dict:
    from test_job_submit import RayHead
    inp, out = _subset(n, root), root / name
    head = RayHead(num_cpus=2)
    try:
        head.wait_ready()
        proc = _run_driver(head, inp, out)
        lines: list[str] = []
        reached = _wait_progress(proc, 0.3, n, lines)
        t_kill = time.time()
        os.kill(proc.pid, sig)
        try:
            tail = proc.communicate(timeout=120)[0]
        except subprocess.TimeoutExpired:
            proc.kill()
            tail = proc.communicate()[0]
        rc1 = proc.returncode
        stop_s = time.time() - t_kill
        p2 = _run_driver(head, inp, out, resume=True)
        log2 = p2.communicate()[0]
        res = {"drill": f"driver {sig.name} at >=30%, then --resume", "run": True, "reached_30pct": reached,
               "first_rc": rc1, "stopped_in_s": round(stop_s, 1), "rerun_rc": p2.returncode,
               "time_to_recover_s": round(time.time() - t_kill, 1),
               "resume_hint_printed": "--resume" in tail, "skipped_on_resume": "skipped on resume" in log2}
        res.update(_count(out, n))
        (root / f"{name}.log").write_text("".join(lines) + tail + "\n---- rerun ----\n" + log2)
        return res
    finally:
        head.stop()


def main(argv=None) -> int:
    if argv is None and sys.argv[1:2] == ["_node"]:
        launch_node(sys.argv[2:])
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("drills", nargs="+", choices=["node-loss", "driver-kill", "sigint"])
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--out", default=str(REPO / "out" / "drills"))
    a = ap.parse_args(argv)
    from facebatch.raycluster import local_ray_env
    local_ray_env()
    root = Path(a.out)
    root.mkdir(parents=True, exist_ok=True)
    results = []
    for d in a.drills:
        t0 = time.time()
        if d == "node-loss":
            r = drill_node_loss(a.images, root)
        elif d == "driver-kill":
            r = drill_driver_signal(a.images, root, signal.SIGKILL, "driver-kill")
        else:
            r = drill_driver_signal(a.images, root, signal.SIGINT, "sigint")
        r["drill_wall_s"] = round(time.time() - t0, 1)
        print(json.dumps(r), flush=True)
        results.append(r)
        (root / f"{d}.json").write_text(json.dumps(r, indent=2))
    print("\n| drill | expected | found | duplicates | time to recover (s) | notes |\n|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['drill']} | {r['expected']} | {r['found']} | {r.get('duplicates')} | {r['time_to_recover_s']} | "
              f"rc {r.get('rc', r.get('first_rc'))} -> {r.get('rerun_rc', '-')} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
