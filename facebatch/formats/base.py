"""The uniform input record, filesystem helpers shared by the format readers, and the person split."""
from __future__ import annotations

import hashlib
import posixpath
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
KEYPOINT_SCHEMES = ("ibug68", "kaggle15")


@dataclass
class InputRecord:
    """One input image and whatever labels its dataset gives it.

    ``path`` is an absolute local path or a URI (``s3://bucket/key``); formats that carry the pixels
    inline (kaggle15) use a synthetic ``<csv>#row=<i>`` path and set ``image_bytes``.
    ``keypoints`` is ``(K, 2)`` float32 in pixels of the original image, NaN where missing.
    """

    path: str
    keypoints: np.ndarray | None = None
    keypoint_scheme: str | None = None
    attributes: dict[str, int] = field(default_factory=dict)
    identity: str | None = None
    person: str | None = None
    split: str | None = None
    image_bytes: bytes | None = None


def is_image_name(name: str) -> bool:
    """True for image extensions (case-insensitive), excluding hidden and macOS ``._`` files."""
    base = posixpath.basename(name)
    return not base.startswith(".") and base.lower().endswith(IMAGE_EXTENSIONS)


# --- filesystems -------------------------------------------------------------------------------

def resolve_fs(source: str, filesystem: Any = None) -> tuple[Any, str]:
    """Return ``(fs, path)``: an fsspec filesystem and ``source`` without its protocol.

    A passed-in ``filesystem`` (e.g. an ``s3fs.S3FileSystem`` with an endpoint) wins; otherwise one
    is created from the URI (plain paths give the local filesystem).
    """
    source = str(source)
    if filesystem is not None:
        return filesystem, filesystem._strip_protocol(source).rstrip("/") or "/"
    from fsspec.core import url_to_fs

    fs, path = url_to_fs(source)
    return fs, path.rstrip("/") or "/"


def is_local(fs: Any) -> bool:
    protocol = fs.protocol if isinstance(fs.protocol, (tuple, list)) else (fs.protocol,)
    return "file" in protocol or "local" in protocol


def to_uri(fs: Any, path: str) -> str:
    """The record path for ``path`` on ``fs``: a plain absolute path locally, a URI otherwise."""
    return path if is_local(fs) else fs.unstrip_protocol(path)


def join(base: str, rel: str) -> str:
    """Join a relative posix path (as written in a label file) onto ``base``."""
    return posixpath.normpath(posixpath.join(base, rel.replace("\\", "/")))


def require_exists(fs: Any, path: str, what: str, hint: str) -> None:
    """Raise ``FileNotFoundError`` naming ``what`` and ``path`` with a hint when it does not exist."""
    if not fs.exists(path):
        raise FileNotFoundError(f"{what} not found: {to_uri(fs, path)} ({hint})")


def find_images(fs: Any, root: str) -> list[str]:
    """All image files below ``root`` (recursive, fs paths without protocol), sorted.

    Hidden files and folders (``.name``) and ``__MACOSX`` folders are skipped.
    """
    out = []
    for p in fs.find(root):
        if not is_image_name(p):
            continue
        parts = relative_parts(root, p)
        if any(d.startswith(".") or d == "__MACOSX" for d in parts):
            continue
        out.append(p)
    return sorted(out)


def read_text(fs: Any, path: str) -> str:
    """Read a small label file as text (UTF-8, tolerating a BOM)."""
    with fs.open(path, "rb") as f:
        return f.read().decode("utf-8-sig")


def relative_parts(root: str, path: str) -> list[str]:
    """Directory components of ``path`` below ``root`` (excluding the file name)."""
    prefix = root.rstrip("/") + "/"
    rel = path[len(prefix):] if path.startswith(prefix) else posixpath.basename(path)
    return [p for p in posixpath.dirname(rel).split("/") if p and p != "."]


# --- ordering and splits -----------------------------------------------------------------------

_ROW_RE = re.compile(r"^(.*)#row=(\d+)$")


def record_sort_key(path: str) -> tuple[str, int]:
    """Sort by path; synthetic ``<csv>#row=<i>`` paths sort by their row number, not as text."""
    m = _ROW_RE.match(path)
    return (m.group(1), int(m.group(2))) if m else (path, -1)


def sort_records(records: list[InputRecord]) -> list[InputRecord]:
    return sorted(records, key=lambda r: record_sort_key(r.path))


def assign_split(person: str, val_fraction: float = 0.1, seed: int = 0) -> str:
    """``'train'`` or ``'val'`` from a hash of ``person`` (and ``seed``): stable across runs and
    machines, so all images of one person land on the same side."""
    if not 0.0 <= val_fraction <= 1.0:
        raise ValueError(f"val_fraction must be in [0, 1], got {val_fraction}")
    digest = hashlib.sha256(f"{seed}\x00{person}".encode("utf-8")).digest()
    u = int.from_bytes(digest[:8], "big") / 2.0**64
    return "val" if u < val_fraction else "train"
