"""Parsers for label files (text in, Python values out); no filesystem access here."""
from __future__ import annotations

import csv
import io
import logging
from typing import Any

CELEBA_ALIASES = {"smiling": "smile"}  # extra names exposed next to CelebA's own
TABLE_RESERVED = ("path", "identity", "person", "split")
_TRUE = {"1", "1.0", "true", "yes"}
_FALSE = {"0", "0.0", "false", "no"}


def parse_genki_labels(text: str, name: str) -> list[tuple[int, int]]:
    """GENKI-4K ``labels.txt``: line N holds ``smile yaw pitch roll`` for ``files/fileNNNN.jpg``.

    Returns ``[(N, smile)]``. A blank line is only allowed at the end (numbering is by line).
    """
    lines = text.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    out = []
    for n, line in enumerate(lines, start=1):
        fields = line.split()
        if not fields:
            raise ValueError(f"{name}:{n}: blank line; line N must label files/file{n:04d}.jpg")
        if fields[0] not in ("0", "1"):
            raise ValueError(f"{name}:{n}: smile label must be 0 or 1, got {fields[0]!r}")
        out.append((n, int(fields[0])))
    return out


def parse_celeba_attrs(text: str, name: str) -> dict[str, dict[str, int]]:
    """CelebA ``list_attr_celeba.txt`` -> ``{file: {attribute: 0/1}}`` (names lower-cased, -1 -> 0).

    Line 1 is the row count (optional here), line 2 the attribute names, then ``file v1 ... vN``.
    ``smiling`` is also exposed as ``smile``.
    """
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        raise ValueError(f"{name}: empty attribute file")
    count = None
    if lines[0].split()[0].isdigit() and len(lines[0].split()) == 1:
        count = int(lines[0])
        lines = lines[1:]
    if not lines:
        raise ValueError(f"{name}: no attribute-name line after the count")
    attr_names = [a.lower() for a in lines[0].split()]
    out: dict[str, dict[str, int]] = {}
    for lineno, line in enumerate(lines[1:], start=3 if count is not None else 2):
        fields = line.split()
        if len(fields) != 1 + len(attr_names):
            raise ValueError(f"{name}: line {lineno}: {len(fields)} fields, expected 1 + "
                             f"{len(attr_names)} attributes")
        try:
            values = [1 if int(v) > 0 else 0 for v in fields[1:]]
        except ValueError:
            raise ValueError(f"{name}: line {lineno}: attribute values must be 1/-1") from None
        attrs = dict(zip(attr_names, values))
        for src, alias in CELEBA_ALIASES.items():
            if src in attrs and alias not in attrs:
                attrs[alias] = attrs[src]
        out[fields[0]] = attrs
    if count is not None and count != len(out):
        logging.getLogger(__name__).warning("%s: header says %d rows, found %d", name, count, len(out))
    return out


def parse_celeba_mapping(text: str) -> dict[str, str]:
    """Two-column CelebA side files (``identity_CelebA.txt``, ``list_eval_partition.txt``)."""
    out = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 2:
            out[fields[0]] = fields[1]
    return out


CELEBA_PARTITIONS = {"0": "train", "1": "val", "2": "test"}


def read_table(data: bytes, name: str) -> list[dict[str, Any]]:
    """Rows of a CSV (tab-separated when ``name`` ends ``.tsv``) or Parquet table (recognised by
    its ``PAR1`` magic); column names stripped and lower-cased; CSV values are strings."""
    if data[:4] == b"PAR1":
        import pyarrow.parquet as pq

        table = pq.read_table(io.BytesIO(data))
        rows = table.to_pylist()
        return [{str(k).strip().lower(): v for k, v in r.items()} for r in rows]
    text = data.decode("utf-8-sig")
    delimiter = "\t" if name.lower().endswith((".tsv", ".tab")) else ","
    reader = csv.DictReader(io.StringIO(text), delimiter=delimiter)
    if reader.fieldnames is None:
        raise ValueError(f"{name}: empty table; expected a header with a 'path' column")
    return [{(k or "").strip().lower(): v for k, v in r.items()} for r in reader]


def table_paths(rows: list[dict[str, Any]], name: str) -> list[str]:
    """The ``path`` column, blank cells dropped; ``ValueError`` naming the file when it is absent."""
    if rows and "path" not in rows[0]:
        raise ValueError(f"{name}: no 'path' column (columns: {sorted(rows[0])}); the table must "
                         f"list one image per row in a column named 'path'")
    return [str(r["path"]).strip() for r in rows if r.get("path") is not None and str(r["path"]).strip()]


def binary_label(value: Any, column: str, where: str) -> int | None:
    """A 0/1 label cell -> int, ``None`` when blank; ``ValueError`` for anything else."""
    if value is None:
        return None
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        if value != value:  # NaN from Parquet
            return None
        if value in (0, 1):
            return int(value)
    else:
        s = str(value).strip().lower()
        if not s:
            return None
        if s in _TRUE:
            return 1
        if s in _FALSE:
            return 0
    raise ValueError(f"{where}: column {column!r} holds {value!r}; label columns must be 0/1 "
                     f"(drop the column, or name it one of {TABLE_RESERVED})")
