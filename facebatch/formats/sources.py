"""``list_records``: list a dataset's images and labels as :class:`InputRecord`, locally or on S3.

All listing and reading goes through an fsspec filesystem (``find``, ``ls``, ``open``), so the
same code serves local folders and ``s3://bucket/prefix`` (pass an ``s3fs.S3FileSystem`` with
your endpoint and credentials, or let fsspec build one from the URI).
"""
from __future__ import annotations

import contextvars
import io
import logging
import os
import posixpath
import tempfile
from typing import Any, Callable

from facebatch.formats.base import (
    IMAGE_EXTENSIONS, InputRecord, is_local, join, read_text, relative_parts, require_exists,
    resolve_fs, sort_records, to_uri,
)
from facebatch.formats.kaggle15 import iter_kaggle15_rows
from facebatch.formats.labelfiles import (
    CELEBA_PARTITIONS, TABLE_RESERVED, binary_label, parse_celeba_attrs, parse_celeba_mapping,
    parse_genki_labels, read_table, table_paths,
)
from facebatch.formats.udacity68 import person_of, read_udacity68_csv

log = logging.getLogger(__name__)

FORMATS = ("folder", "classes", "manifest", "csv", "udacity68", "kaggle15", "genki", "celeba")
_NO_LABELS = ("folder", "classes", "manifest")

UDACITY_SUFFIX = "_frames_keypoints.csv"
SPLIT_DIRS = {"train_dataset": "train", "test_dataset": "test", "train": "train",
              "training": "train", "test": "test", "testing": "test", "val": "val",
              "valid": "val", "validation": "val"}
CONTAINER_DIRS = {"img_align_celeba", "img_celeba", "images", "imgs", "files"}

Labels = tuple[Any, str] | None  # (filesystem, path) of the --labels file

#: extensions the lister takes as images (the decoder reads all of them, GIF's first frame too)
LISTED_EXTENSIONS = tuple(IMAGE_EXTENSIONS) + (".gif",)
#: how many skipped names a listing keeps as examples
SKIPPED_EXAMPLES = 5


class Listing:
    """What a listing saw besides its records: skipped files (by reason, with the first few names)
    and each listed file's fsspec info (size, mtime or ETag) for input hashes."""

    def __init__(self) -> None:
        self.skipped: dict[str, int] = {}
        self.examples: list[str] = []
        self.info: dict[str, dict] = {}

    def skip(self, reason: str, uri: str) -> None:
        self.skipped[reason] = self.skipped.get(reason, 0) + 1
        if len(self.examples) < SKIPPED_EXAMPLES:
            self.examples.append(uri)

    def report(self) -> dict:
        """``{"count": n, "by_reason": {...}, "examples": [...]}`` for the job summary."""
        return {"count": sum(self.skipped.values()), "by_reason": dict(sorted(self.skipped.items())),
                "examples": list(self.examples)}


_LISTING: contextvars.ContextVar[Listing | None] = contextvars.ContextVar("facebatch_listing", default=None)


def _note_skip(reason: str, uri: str) -> None:
    lst = _LISTING.get()
    if lst is not None:
        lst.skip(reason, uri)


def find_images(fs: Any, root: str, ignore: tuple[str, ...] = ()) -> list[str]:
    """All image files below ``root`` (recursive, fs paths), sorted; everything else is counted as
    skipped in the current :class:`Listing` (hidden files and folders, ``__MACOSX``, other
    extensions), except the label files named in ``ignore`` (basenames)."""
    lst = _LISTING.get()
    found = fs.find(root, detail=True)
    out = []
    for p, info in found.items():
        if info.get("type") == "directory":
            continue
        base = posixpath.basename(p)
        parts = relative_parts(root, p)
        if any(d.startswith(".") or d == "__MACOSX" for d in parts) or base.startswith("."):
            _note_skip("hidden", to_uri(fs, p))
        elif not base.lower().endswith(LISTED_EXTENSIONS):
            if base not in ignore:
                _note_skip("not an image extension", to_uri(fs, p))
        else:
            out.append(p)
            if lst is not None:
                lst.info[to_uri(fs, p)] = info
    return sorted(out)


def list_inputs(source: str, fmt: str, labels: str | None = None,
                filesystem: Any = None) -> tuple[list[InputRecord], Listing]:
    """:func:`list_records` plus what the listing skipped and the listed files' info."""
    lst = Listing()
    token = _LISTING.set(lst)
    try:
        return list_records(source, fmt, labels, filesystem), lst
    finally:
        _LISTING.reset(token)


def list_records(source: str, fmt: str, labels: str | None = None,
                 filesystem: Any = None) -> list[InputRecord]:
    """List the records of ``source`` read as format ``fmt``, sorted by path.

    Args:
        source: a local path or ``s3://bucket/prefix`` (a folder, or a file for table formats).
        fmt: one of :data:`FORMATS`.
        labels: an optional label file overriding the format's default location.
        filesystem: an fsspec filesystem for ``source`` (and ``labels`` when it has the same
            protocol); default: built from the URI.

    Raises:
        ValueError: unknown format, ``labels`` given to a format without labels, malformed labels.
        FileNotFoundError: ``source`` or the labels file does not exist.
    """
    key = str(fmt).strip().lower()
    if key not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}: choose one of {', '.join(FORMATS)}")
    fs, root = resolve_fs(source, filesystem)
    require_exists(fs, root, "input path", "check --input; S3 inputs look like s3://bucket/prefix")
    lab: Labels = None
    if labels is not None:
        if key in _NO_LABELS:
            raise ValueError(f"--labels {labels} is not used by format {key!r}; drop it, or use "
                             f"format 'csv' for a table of paths with 0/1 label columns")
        lfs, lpath = _resolve_labels(labels, source, filesystem)
        require_exists(lfs, lpath, "labels file", "check --labels")
        lab = (lfs, lpath)
    records = _READERS[key](fs, root, lab)
    if not records:
        log.warning("format %r found no records in %s", key, to_uri(fs, root))
    return sort_records(records)


# --- helpers -----------------------------------------------------------------------------------

def _resolve_labels(labels: str, source: str, filesystem: Any) -> tuple[Any, str]:
    """The labels file's filesystem: the given one when the protocols agree, else from its URI."""
    labels = str(labels)
    if filesystem is not None:
        protos = filesystem.protocol if isinstance(filesystem.protocol, (tuple, list)) else (filesystem.protocol,)
        if "://" in labels:
            if labels.split("://", 1)[0] in protos:
                return resolve_fs(labels, filesystem)
        elif "://" not in str(source):
            return resolve_fs(labels, filesystem)
    return resolve_fs(labels)


def need_dir(fs: Any, root: str, fmt: str, hint: str) -> None:
    """Raise ``ValueError`` (with ``hint``) unless ``root`` is a folder: format ``fmt`` reads folders."""
    if not fs.isdir(root):
        raise ValueError(f"input {to_uri(fs, root)} is a file, but format {fmt!r} needs a folder; {hint}")


def _dedupe(paths: list[str], where: str) -> list[str]:
    seen: set[str] = set()
    out = [p for p in paths if not (p in seen or seen.add(p))]
    if len(out) != len(paths):
        log.warning("%s: %d duplicate paths dropped", where, len(paths) - len(out))
    return out


def _entry_path(fs: Any, base_dir: str, entry: str) -> str:
    """A path from a table: URIs kept, absolute paths kept, relative ones joined to ``base_dir``."""
    if "://" in entry:
        return entry
    if entry.startswith("/"):
        return to_uri(fs, fs._strip_protocol(entry))
    return to_uri(fs, join(base_dir, entry))


def _table_source(fs: Any, root: str, lab: Labels, fmt: str) -> tuple[Any, str, str]:
    """``(table_fs, table_path, base_dir)`` for table formats: the table given as --input (paths
    relative to its folder), or a folder as --input with the table as --labels."""
    if lab is not None:
        need_dir(fs, root, fmt, "with --labels, --input is the folder the table's paths are relative to")
        return lab[0], lab[1], root
    if fs.isdir(root):
        raise ValueError(f"input {to_uri(fs, root)} is a folder, but format {fmt!r} reads a table: "
                         f"give the CSV/Parquet file as --input, or pass it as --labels")
    return fs, root, posixpath.dirname(root)


def _read_bytes(fs: Any, path: str) -> bytes:
    with fs.open(path, "rb") as f:
        return f.read()


def _split_of(parts: list[str]) -> str | None:
    for d in parts:
        if d.lower() in SPLIT_DIRS:
            return SPLIT_DIRS[d.lower()]
    return None


# --- readers -----------------------------------------------------------------------------------

def _folder(fs: Any, root: str, lab: Labels) -> list[InputRecord]:
    need_dir(fs, root, "folder", "to read a list of files use format 'manifest'")
    return [InputRecord(path=to_uri(fs, p)) for p in find_images(fs, root)]


def _classes(fs: Any, root: str, lab: Labels) -> list[InputRecord]:
    need_dir(fs, root, "classes", "give the folder that holds one sub-folder per class")
    out, loose = [], 0
    for p in find_images(fs, root):
        parts = relative_parts(root, p)
        if not parts:
            loose += 1
            _note_skip("in no class folder", to_uri(fs, p))
            continue
        out.append(InputRecord(path=to_uri(fs, p), identity=parts[0], person=parts[0]))
    if loose:
        log.warning("%d images directly in %s are in no class folder; skipped", loose, to_uri(fs, root))
    return out


def _manifest(fs: Any, root: str, lab: Labels) -> list[InputRecord]:
    tfs, tpath, base = _table_source(fs, root, lab, "manifest")
    name = to_uri(tfs, tpath)
    paths = [_entry_path(tfs, base, p) for p in table_paths(read_table(_read_bytes(tfs, tpath), name), name)]
    return [InputRecord(path=p) for p in _dedupe(paths, name)]


def _csv(fs: Any, root: str, lab: Labels) -> list[InputRecord]:
    tfs, tpath, base = _table_source(fs, root, lab, "csv")
    name = to_uri(tfs, tpath)
    base_fs = fs if lab is not None else tfs
    rows = read_table(_read_bytes(tfs, tpath), name)
    table_paths(rows, name)  # checks the 'path' column
    out, seen = [], set()
    for i, row in enumerate(rows):
        entry = str(row.get("path") or "").strip()
        if not entry:
            continue
        path = _entry_path(base_fs, base, entry)
        if path in seen:
            log.warning("%s: row %d repeats %s; dropped", name, i, path)
            continue
        seen.add(path)
        where = f"{name}: row {i}"
        attrs = {}
        for col, v in row.items():
            if col and col not in TABLE_RESERVED:
                b = binary_label(v, col, where)
                if b is not None:
                    attrs[col] = b
        text = {k: (str(row[k]).strip() or None) if row.get(k) is not None else None
                for k in ("identity", "person", "split")}
        out.append(InputRecord(path=path, attributes=attrs, identity=text["identity"],
                               person=text["person"] or text["identity"],
                               split=text["split"].lower() if text["split"] else None))
    return out


def _read_udacity(fs: Any, path: str) -> dict:
    if is_local(fs):
        return read_udacity68_csv(path)
    with tempfile.TemporaryDirectory() as tmp:  # read_udacity68_csv opens local files only
        local = os.path.join(tmp, posixpath.basename(path))
        with open(local, "wb") as f:
            f.write(_read_bytes(fs, path))
        return read_udacity68_csv(local)


def _udacity68(fs: Any, root: str, lab: Labels) -> list[InputRecord]:
    need_dir(fs, root, "udacity68", "give the folder holding training/ and "
              "training_frames_keypoints.csv, or the image folder with --labels CSV")
    if lab is not None:
        pairs = [(lab[0], lab[1], root)]
    else:
        csvs = sorted(p for p in fs.ls(root, detail=False) if posixpath.basename(p).endswith(UDACITY_SUFFIX))
        pairs = [(fs, c, join(root, posixpath.basename(c)[: -len(UDACITY_SUFFIX)])) for c in csvs]
        beside = join(posixpath.dirname(root), posixpath.basename(root) + UDACITY_SUFFIX)
        if not pairs and fs.exists(beside):
            pairs = [(fs, beside, root)]
        if not pairs:
            raise FileNotFoundError(
                f"no *{UDACITY_SUFFIX} in {to_uri(fs, root)} (nor {to_uri(fs, beside)}): give the folder "
                f"holding training_frames_keypoints.csv and training/, or the image folder with --labels CSV")
    out: list[InputRecord] = []
    for lfs, csv_path, img_dir in pairs:
        require_exists(fs, img_dir, "udacity68 image folder", f"expected beside {to_uri(lfs, csv_path)}")
        table = _read_udacity(lfs, csv_path)
        present = {p[len(img_dir.rstrip('/')) + 1:]: p for p in find_images(fs, img_dir)}
        split = _split_of([posixpath.basename(img_dir)])
        missing = 0
        for name, kp in table.items():
            p = present.get(name)
            if p is None:
                missing += 1
                continue
            person = person_of(name)
            out.append(InputRecord(path=to_uri(fs, p), keypoints=kp, keypoint_scheme="ibug68",
                                   identity=person, person=person, split=split))
        unlabelled = len(present) - (len(table) - missing)
        for name in sorted(set(present) - set(table)):
            _note_skip("no labels", to_uri(fs, present[name]))
        if missing or unlabelled:
            log.warning("%s: %d labelled images missing from %s, %d images without labels (skipped)",
                        to_uri(lfs, csv_path), missing, to_uri(fs, img_dir), unlabelled)
    return out


def _kaggle15(fs: Any, root: str, lab: Labels) -> list[InputRecord]:
    if lab is not None:
        tfs, tpath = lab
    elif fs.isdir(root):
        tfs, tpath = fs, join(root, "training.csv")
        require_exists(tfs, tpath, "Kaggle CSV", "give the CSV file itself as --input")
    else:
        tfs, tpath = fs, root
    name = to_uri(tfs, tpath)
    out = []
    with tfs.open(tpath, "rb") as fb:
        text = io.TextIOWrapper(fb, encoding="utf-8-sig", newline="")
        for i, kp, png in iter_kaggle15_rows(text, name):
            path = f"{name}#row={i}"
            out.append(InputRecord(path=path, keypoints=kp, keypoint_scheme="kaggle15" if kp is not None else None,
                                   person=path, image_bytes=png))
    return out


def _genki(fs: Any, root: str, lab: Labels) -> list[InputRecord]:
    need_dir(fs, root, "genki", "give the folder holding labels.txt and files/")
    lfs, lpath = lab if lab is not None else (fs, join(root, "labels.txt"))
    require_exists(lfs, lpath, "GENKI labels.txt", "expected beside files/; or pass --labels")
    img_dir = join(root, "files") if fs.isdir(join(root, "files")) else root
    entries = parse_genki_labels(read_text(lfs, lpath), to_uri(lfs, lpath))
    present = set(find_images(fs, img_dir, ignore=(posixpath.basename(lpath),)))
    out, missing = [], 0
    for n, smile in entries:
        stem = f"file{n:04d}"
        p = join(img_dir, stem + ".jpg")
        if p not in present:
            missing += 1
            continue
        out.append(InputRecord(path=to_uri(fs, p), attributes={"smile": smile}, person=stem))
    used = {join(img_dir, f"file{n:04d}.jpg") for n, _ in entries}
    for p in sorted(present - used):
        _note_skip("no labels", to_uri(fs, p))
    if missing:
        log.warning("%s: %d labelled images missing from %s", to_uri(lfs, lpath), missing, to_uri(fs, img_dir))
    return out


def _celeba(fs: Any, root: str, lab: Labels) -> list[InputRecord]:
    need_dir(fs, root, "celeba", "give the folder holding list_attr_celeba.txt and the images")
    lfs, lpath = lab if lab is not None else (fs, join(root, "list_attr_celeba.txt"))
    require_exists(lfs, lpath, "CelebA list_attr_celeba.txt", "expected in --input; or pass --labels")
    attrs = parse_celeba_attrs(read_text(lfs, lpath), to_uri(lfs, lpath))
    side: dict[str, dict[str, str]] = {}
    for key, fname in (("identity", "identity_CelebA.txt"), ("partition", "list_eval_partition.txt")):
        p = join(posixpath.dirname(lpath), fname)
        side[key] = parse_celeba_mapping(read_text(lfs, p)) if lfs.exists(p) else {}
    out, unlabelled = [], 0
    label_files = (posixpath.basename(lpath), "identity_CelebA.txt", "list_eval_partition.txt")
    for p in find_images(fs, root, ignore=label_files):
        base = posixpath.basename(p)
        a = attrs.get(base)
        if a is None:
            unlabelled += 1
            _note_skip("no labels", to_uri(fs, p))
            continue
        parts = relative_parts(root, p)
        named = [d for d in parts if d.lower() not in SPLIT_DIRS and d.lower() not in CONTAINER_DIRS]
        identity = named[-1] if named else side["identity"].get(base)
        split = _split_of(parts) or CELEBA_PARTITIONS.get(side["partition"].get(base, ""))
        out.append(InputRecord(path=to_uri(fs, p), attributes=dict(a), identity=identity,
                               person=identity or posixpath.splitext(base)[0], split=split))
    if unlabelled:
        log.warning("%d images under %s have no row in %s; skipped", unlabelled, to_uri(fs, root),
                    to_uri(lfs, lpath))
    return out


_READERS: dict[str, Callable[[Any, str, Labels], list[InputRecord]]] = {
    "folder": _folder, "classes": _classes, "manifest": _manifest, "csv": _csv,
    "udacity68": _udacity68, "kaggle15": _kaggle15, "genki": _genki, "celeba": _celeba,
}
