"""Where data lives: ``$FACEBATCH_DATA``, default ``../shared/data`` from the repository root."""
from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent


def data_dir() -> Path:
    """The shared data directory (may not exist; callers check and explain)."""
    env = os.environ.get("FACEBATCH_DATA")
    if env:
        return Path(env).expanduser()
    return (REPO_ROOT.parent / "shared" / "data").resolve()
