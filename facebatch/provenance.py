"""What produced an output: package version, git commit, host, time. Saved beside every output."""
from __future__ import annotations

import datetime as dt
import platform
import subprocess
from functools import lru_cache
from pathlib import Path

from . import __version__


@lru_cache(maxsize=1)
def git_commit() -> str | None:
    """The source tree's commit (with ``+dirty`` for uncommitted changes), or ``None`` outside git."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("+dirty" if dirty else "")
    except Exception:
        return None


def provenance() -> dict:
    return {"facebatch_version": __version__, "git_commit": git_commit(), "python": platform.python_version(),
            "host": platform.node(), "time_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")}
