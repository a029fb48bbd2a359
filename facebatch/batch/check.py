"""Rows in equal rows out, checked at the end of every batch job.

Counts alone are not enough: the *set* of paths in the written output is compared with the
listing (:func:`check_output_paths`): no input missing, none repeated, no row of an input that
was not listed. :func:`check_rows` adds the counts that the shards reported.
"""
from __future__ import annotations

from collections import Counter
from typing import Iterable

from .errors import JobFailed


class OutputCheckError(RuntimeError):
    """The written output does not hold exactly one result per listed input."""


def check_output_paths(expected: Iterable[str], found: Iterable[tuple[str, int]], all_faces: bool) -> dict:
    """Compare the output's rows with the listing as sets.

    Args:
        expected: the listed inputs' paths.
        found: ``(path, face_index)`` for every row in the output files.
        all_faces: several rows per input are allowed (distinct ``face_index``).

    Returns:
        ``{"inputs": n, "rows": n}`` when every input has its row(s), no row is repeated and no
        row belongs to an input that was not listed.

    Raises:
        OutputCheckError: naming the first few missing, duplicated and unexpected paths.
    """
    exp = list(expected)
    exp_set = set(exp)
    rows = list(found)
    keys = Counter((p, fi if all_faces else 0) for p, fi in rows)
    dup = sorted({p for (p, _), n in keys.items() if n > 1})
    per_path = Counter(p for p, _ in rows)
    if not all_faces:
        dup = sorted(set(dup) | {p for p, n in per_path.items() if n > 1})
    seen = set(per_path)
    missing = sorted(exp_set - seen)
    extra = sorted(seen - exp_set)
    dup_listing = len(exp) - len(exp_set)
    if missing or extra or dup or dup_listing:
        def few(xs):
            return ", ".join(xs[:3]) + (" ..." if len(xs) > 3 else "")
        msg = [f"output check failed: {len(exp_set)} inputs listed, {len(rows)} rows in the output"]
        if missing:
            msg.append(f"{len(missing)} inputs without a row ({few(missing)})")
        if dup:
            msg.append(f"{len(dup)} inputs with repeated rows ({few(dup)})")
        if extra:
            msg.append(f"{len(extra)} rows for inputs not in the listing ({few(extra)})")
        if dup_listing:
            msg.append(f"{dup_listing} paths listed twice")
        raise OutputCheckError("; ".join(msg))
    return {"inputs": len(exp_set), "rows": len(rows)}


def check_rows(sink, expected: list[str], results: dict[int, dict], n_shards: int, all_faces: bool,
               rerun: str) -> dict:
    """The end-of-job check: every shard reported (else :class:`JobFailed`, whose message ends with
    ``rerun``), the sink holds exactly the rows listed (:func:`check_output_paths`), one part per
    shard and as many rows as the shards reported (else ``RuntimeError``).

    Returns ``{"inputs", "rows", "rows_in_files", "parts"}``.
    """
    missing = [i for i in range(n_shards) if i not in results]
    if missing:
        raise JobFailed(f"shards {missing[:10]} produced no result; {rerun}")
    n_in = sum(r["n_inputs"] for r in results.values())
    n_rows = sum(r["n_rows"] for r in results.values())
    found = sink.keys()
    parts = sink.parts()
    check_output_paths(expected, found, all_faces)
    if n_in != len(expected) or len(found) != n_rows or len(parts) != n_shards or (not all_faces and n_rows != n_in):
        raise RuntimeError(f"row check failed: {len(expected)} inputs, {n_in} processed, {n_rows} rows reported, "
                           f"{len(found)} rows in {len(parts)} files for {n_shards} shards")
    return {"inputs": n_in, "rows": n_rows, "rows_in_files": len(found), "parts": len(parts)}
