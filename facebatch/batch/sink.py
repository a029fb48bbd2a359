"""Where a batch job's rows go.

A job builds its :class:`Sink` on the driver and sends it to the workers with the job (so it
must pickle). Each worker hands a finished shard's rows to :meth:`Sink.write_part`; the driver
reads back what was written for the rows-in = rows-out check (:meth:`Sink.keys`,
:meth:`Sink.parts`) and, when the check passed, calls :meth:`Sink.commit` once: the point after
which the run's rows are visible. :class:`ParquetSink` (one Parquet file per shard) is what the
jobs use by default; a new output (a database, a table format) is another ``Sink``.
"""
from __future__ import annotations

import abc
from typing import Any, Callable

from ..storage import filesystem, join
from .shards import PART_GLOB, part_name
from .write import write_table_atomic

#: how a job turns a shard's rows into an Arrow table (its schema and file metadata)
ToTable = Callable[[list], Any]


class Sink(abc.ABC):
    """The rows of a batch job, one part per shard."""

    @abc.abstractmethod
    def write_part(self, shard_id: int, rows: list[dict], to_table: ToTable) -> None:
        """Store one shard's rows (in a worker). All or nothing, and a shard written again replaces
        its earlier part. ``to_table(rows)`` gives them as the job's Arrow table, for sinks that
        store Arrow or Parquet."""

    @abc.abstractmethod
    def parts(self) -> list[str]:
        """The parts written so far (for the check: one per shard)."""

    @abc.abstractmethod
    def keys(self) -> list[tuple[str, int]]:
        """``(path, face index)`` of every row stored (for the check); a row without a face counts as
        face 0."""

    def commit(self, summary: dict) -> None:
        """Make the run's rows visible (on the driver, once, after the check). Nothing by default."""


class ParquetSink(Sink):
    """``FOLDER/part-NNNNN.parquet`` per shard, written atomically (:mod:`facebatch.batch.write`)."""

    def __init__(self, folder: str, options: dict | None = None) -> None:
        self.folder, self.options = folder, options or {}

    def __str__(self) -> str:
        return self.folder

    def write_part(self, shard_id: int, rows: list[dict], to_table: ToTable) -> None:
        fs, root = filesystem(self.folder, self.options)
        write_table_atomic(fs, join(root, part_name(shard_id)), to_table(rows))

    def parts(self) -> list[str]:
        fs, root = filesystem(self.folder, self.options)
        return sorted(fs.glob(join(root, PART_GLOB)))

    def keys(self) -> list[tuple[str, int]]:
        import pyarrow.parquet as pq
        from .. import schema as S
        fs, _ = filesystem(self.folder, self.options)
        found: list[tuple[str, int]] = []
        for p in self.parts():
            with fs.open(p, "rb") as f:
                t = pq.read_table(f, columns=[S.PATH, S.FACE_INDEX])
            found.extend(zip(t.column(S.PATH).to_pylist(), (max(0, fi or 0) for fi in t.column(S.FACE_INDEX).to_pylist())))
        return found
