"""Finding and loading model weights with errors a user can act on.

Search order for a weights file name:
1. the ``weights_dir`` argument (``--weights-dir`` on the command line);
2. ``$FACEBATCH_WEIGHTS_DIR``;
3. the user cache directory (``$XDG_CACHE_HOME/facebatch/weights``, default ``~/.cache/facebatch/weights``);
4. ``weights/`` inside the data directory (``$FACEBATCH_DATA``, default ``../shared/data``);
5. any extra places a backend names (e.g. retina-face's own ``~/.deepface/weights``).
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import TYPE_CHECKING, Iterable

from .paths import data_dir

if TYPE_CHECKING:  # torch loads on first use: finding and hashing files needs none (a job's driver)
    import torch
    from torch import nn


class WeightsError(RuntimeError):
    """A weights file is missing, unreadable, or does not match the architecture."""


class WeightsNotFoundError(WeightsError, FileNotFoundError):
    pass


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "facebatch" / "weights"


def search_dirs(weights_dir: str | os.PathLike | None = None, extra: Iterable[Path] = ()) -> list[Path]:
    """The directories searched for weights, in order, without duplicates."""
    dirs: list[Path] = []
    if weights_dir:
        dirs.append(Path(weights_dir))
    if os.environ.get("FACEBATCH_WEIGHTS_DIR"):
        dirs.append(Path(os.environ["FACEBATCH_WEIGHTS_DIR"]))
    dirs.append(cache_dir())
    dirs.append(data_dir() / "weights")
    dirs.extend(Path(p) for p in extra)
    seen, out = set(), []
    for d in dirs:
        key = str(d.expanduser().resolve())
        if key not in seen:
            seen.add(key)
            out.append(d.expanduser())
    return out


def find_weights(filename: str, weights_dir: str | os.PathLike | None = None,
                 extra: Iterable[Path] = (), hint: str = "") -> Path:
    """Return the first existing ``filename`` in :func:`search_dirs`, or raise a helpful error.

    Args:
        filename: a bare file name, or a path to an existing file (returned as is).
        weights_dir: directory given by the user, searched first.
        extra: further directories to search last.
        hint: a sentence telling the user how to obtain the file.
    """
    direct = Path(filename).expanduser()
    if direct.is_file() and (direct.is_absolute() or os.sep in filename):
        return direct
    places = search_dirs(weights_dir, extra)
    for d in places:
        candidate = d / filename
        if candidate.is_file():
            return candidate
    looked = "\n".join(f"  - {d / filename}" for d in places)
    raise WeightsNotFoundError(
        f"weights file {filename!r} not found. Looked in:\n{looked}\n"
        f"Put {filename} in one of these places, or pass --weights-dir DIR "
        f"(or set FACEBATCH_WEIGHTS_DIR) to the folder that holds it. {hint}".rstrip())


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def load_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Load a state dict with ``weights_only=True``; unreadable files raise :class:`WeightsError`."""
    import torch
    path = Path(path)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt files
        detail = (str(exc).strip().splitlines() or [""])[0][:200]
        raise WeightsError(
            f"could not read weights file {path} ({type(exc).__name__}: {detail}). "
            "The file is corrupt, truncated, or not a PyTorch state dict; delete it and fetch it again.") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(f"weights file {path} does not hold a state dict of tensors (got {type(obj).__name__}).")
    return obj


def load_into(model: nn.Module, state: dict[str, torch.Tensor], path: str | os.PathLike, what: str) -> nn.Module:
    """Strictly load ``state`` into ``model``; a mismatch raises :class:`WeightsError` naming the keys.
    A model with an ``upgrade_state(state)`` method renames an older file's keys first."""
    upgrade = getattr(model, "upgrade_state", None)
    if callable(upgrade):
        state = upgrade(state)
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state) if tuple(expected[k].shape) != tuple(state[k].shape))
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} shape mismatches (e.g. {k}: file {tuple(state[k].shape)} "
                         f"vs model {tuple(expected[k].shape)})")
        raise WeightsError(f"weights file {path} does not match the {what} architecture: "
                           + "; ".join(parts) + ". Check that the file is the right model.")
    model.load_state_dict(state, strict=True)
    return model
