"""Run a batch job again while it exits 75 (try again later): the scheduler's side of the exit statuses.

    python -m facebatch.batch.rerun [--attempts N] [--wait S] -- python jobs/preprocess.py ... --resume
    python -m facebatch.batch.rerun --address http://HEAD:8265 [--runtime-env-json J] -- python jobs/annotate.py ...

- Without ``--address`` the command runs here as a child process (a KubeRay RayJob's entrypoint:
  ``RAY_ADDRESS`` is set there, so each run joins the job's cluster). SIGTERM is passed on to it.
- With ``--address`` (a Ray dashboard URL) the command is submitted as a Ray job, like ``ray job
  submit``: its logs stream here and this process waits for it. The difference is the exit status:
  ``ray job submit`` exits 1 for every failed job, this exits with the job driver's own status
  (0, 1, 2, 3, 75, 130; :mod:`facebatch.batch.errors`), so that a Kubernetes Job's
  ``podFailurePolicy`` can retry on 75 and fail at once on 2 or 3. A job whose driver never
  reported a status (its supervisor or the cluster was lost) counts as 75; a job stopped with
  ``ray job stop`` as 130. SIGTERM (a pod being stopped) stops the Ray job too.
- A run that exits 75 is run again after ``--wait`` seconds, up to ``--attempts`` runs in all;
  any other status ends it. The last run's status is this command's.
"""
from __future__ import annotations

import argparse
import json
import shlex
import signal
import subprocess
import sys
import time

from .errors import EXIT_ERROR, EXIT_INTERRUPTED, EXIT_TEMPFAIL, EXIT_USAGE

#: seconds a Jobs API that stopped answering is polled before the run counts as 75
UNREACHABLE_S = 600.0


def _say(msg: str) -> None:
    print(f"[facebatch rerun] {msg}", file=sys.stderr, flush=True)


def run_local(cmd: list[str]) -> int:
    """``cmd`` as a child process; its exit status (128 + n for a signal, as a shell reports it)."""
    proc = subprocess.Popen(cmd)
    old = signal.getsignal(signal.SIGTERM)
    signal.signal(signal.SIGTERM, lambda signum, frame: proc.send_signal(signal.SIGTERM))
    try:
        while True:
            try:
                rc = proc.wait()
                break
            except KeyboardInterrupt:  # the child got the same Ctrl-C: let it finish saying so
                continue
    finally:
        signal.signal(signal.SIGTERM, old)
    return 128 - rc if rc < 0 else rc


def job_exit_status(status: str, driver_exit_code: int | None, error_type: str | None = None) -> int:
    """The exit status for a finished Ray job (``JobStatus`` name, ``JobInfo.driver_exit_code``)."""
    if status == "SUCCEEDED":
        return 0
    if status == "STOPPED":
        return EXIT_INTERRUPTED
    if driver_exit_code is not None:
        return 128 - driver_exit_code if driver_exit_code < 0 else int(driver_exit_code)
    if error_type and "ENTRYPOINT_COMMAND" in str(error_type).upper():
        return EXIT_ERROR  # the command could not start: a retry would not help
    return EXIT_TEMPFAIL  # no status from the driver: its supervisor, node or cluster was lost


def run_ray_job(address: str, cmd: list[str], runtime_env: dict | None = None,
                entrypoint_num_cpus: float | None = None) -> int:
    """Submit ``cmd`` to the Ray cluster at ``address``, stream its logs, return its driver's status."""
    import asyncio

    from ray.job_submission import JobStatus, JobSubmissionClient
    client = JobSubmissionClient(address)
    kw = {"entrypoint_num_cpus": entrypoint_num_cpus} if entrypoint_num_cpus is not None else {}
    job_id = client.submit_job(entrypoint=shlex.join(cmd), runtime_env=runtime_env, **kw)
    _say(f"submitted Ray job {job_id} to {address}")
    old = signal.getsignal(signal.SIGTERM)

    def stop(signum, frame):
        _say(f"SIGTERM: stopping Ray job {job_id}")
        try:
            client.stop_job(job_id)
        finally:
            raise SystemExit(128 + signal.SIGTERM)
    signal.signal(signal.SIGTERM, stop)
    try:
        async def tail() -> None:
            async for lines in client.tail_job_logs(job_id):
                print(lines, end="", flush=True)
        try:
            asyncio.run(tail())
        except Exception as exc:  # the log stream broke: keep polling the status
            _say(f"log stream ended: {type(exc).__name__}: {exc}")
        last_ok = time.monotonic()
        while True:
            try:
                info = client.get_job_info(job_id)
                last_ok = time.monotonic()
                if JobStatus(info.status).is_terminal():
                    break
            except Exception as exc:
                if time.monotonic() - last_ok > UNREACHABLE_S:
                    _say(f"the Jobs API at {address} did not answer for {UNREACHABLE_S:.0f} s "
                         f"({type(exc).__name__}); counting the run as 75")
                    return EXIT_TEMPFAIL
            time.sleep(2.0)
    finally:
        signal.signal(signal.SIGTERM, old)
    status = str(getattr(info.status, "value", info.status))
    rc = job_exit_status(status, info.driver_exit_code, getattr(info, "error_type", None))
    _say(f"Ray job {job_id}: {status}, driver exit status {info.driver_exit_code}: exiting {rc}")
    return rc


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m facebatch.batch.rerun", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--address", default=None,
                   help="a Ray dashboard URL (http://HEAD:8265): submit the command as a Ray job there; "
                        "default: run it here")
    p.add_argument("--runtime-env-json", default=None, help="with --address: the job's runtime environment (JSON)")
    p.add_argument("--entrypoint-num-cpus", type=float, default=None, help="with --address: CPUs for the driver")
    p.add_argument("--attempts", type=int, default=1, help="runs in all while the command exits 75")
    p.add_argument("--wait", type=float, default=60.0, help="seconds between a run that exited 75 and the next")
    p.add_argument("command", nargs=argparse.REMAINDER, help="-- then the command")
    return p


def parse(argv: list[str]) -> argparse.Namespace:
    args = build_parser().parse_args(argv)
    cmd = list(args.command)
    if cmd[:1] == ["--"]:
        cmd = cmd[1:]
    if not cmd:
        raise ValueError("no command: give it after --")
    if args.attempts < 1 or args.wait < 0:
        raise ValueError("--attempts must be at least 1 and --wait at least 0")
    args.command = cmd
    args.runtime_env = json.loads(args.runtime_env_json) if args.runtime_env_json else None
    return args


def main(argv: list[str] | None = None) -> int:
    try:
        args = parse(sys.argv[1:] if argv is None else list(argv))
    except (ValueError, json.JSONDecodeError) as exc:
        print(f"facebatch rerun: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    rc = EXIT_ERROR
    for attempt in range(1, args.attempts + 1):
        if args.address:
            rc = run_ray_job(args.address, args.command, args.runtime_env, args.entrypoint_num_cpus)
        else:
            rc = run_local(args.command)
        if rc != EXIT_TEMPFAIL or attempt == args.attempts:
            break
        _say(f"exit status 75 (try again later): run {attempt + 1} of {args.attempts} in {args.wait:g} s")
        time.sleep(args.wait)
    return rc


if __name__ == "__main__":
    sys.exit(main())
