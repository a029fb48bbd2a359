"""Incremental state of an annotate output ``DST`` and the live view.

Layout::

    DST/_state/manifest.parquet     per source object: path, etag, size, mtime, sha256, run_id, status,
                                    models, identity_model (the models that annotated it, :mod:`.versions`)
    DST/_state/deleted.parquet      objects seen deleted: the same plus deleted_run_id, deleted_at
    DST/_state/erased.parquet       paths whose faces were erased (``facebatch forget``): never annotated again
    DST/_state/erasures.parquet     one row per forget: when, selector, how many photos and faces, run id
    DST/_state/lock.json            the running run (see :mod:`.lock`)
    DST/dt=YYYY-MM-DD/run=RUN_ID/   part-NNNNN.parquet, _deleted.parquet, _summary.json, _SUCCESS

A run folder is complete only with ``_SUCCESS``; readers ignore others. Each run folder holds
everything needed to apply it to the state (its rows and ``_deleted.parquet``), so the state is
*rolled forward*: the manifest records the last run applied (``facebatch.last_run`` in its
metadata), and a run that wrote ``_SUCCESS`` but died before replacing the manifest is applied
by the next run. Run ids sort by time, and runs hold the lock, so runs apply in order.

The diff of a listing against the manifest is done with pyarrow joins (no Python loop per key).
"""
from __future__ import annotations

import datetime as _dt
import io
import os
import uuid
from dataclasses import dataclass
from typing import Any, Iterable

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .. import schema as S
from ..batch.listing import etag_of, mtime_of
from ..batch.shards import PART_GLOB, RETRY_ON_RESUME
from ..batch.sink import ParquetSink
from ..batch.write import write_table_atomic
from ..storage import filesystem, join, object_info
from .versions import is_stale

STATE_DIR = "_state"
MANIFEST = "manifest.parquet"
DELETED = "deleted.parquet"
ERASED = "erased.parquet"
ERASURES = "erasures.parquet"
RUN_DELETED = "_deleted.parquet"
SUCCESS = "_SUCCESS"
SUMMARY = "_summary.json"
META_LAST_RUN = b"facebatch.last_run"

#: statuses that a rerun could change without the object changing: redone by the next run
RETRY_STATUSES = RETRY_ON_RESUME
#: statuses whose rows come from the models: redone when the models change (the object is stale)
STALE_STATUSES = (S.OK, S.NO_FACE)

LISTING_SCHEMA = pa.schema([pa.field("path", pa.string()), pa.field("etag", pa.string()),
                            pa.field("size", pa.int64()), pa.field("mtime", pa.float64())])
MANIFEST_SCHEMA = pa.schema([*LISTING_SCHEMA, pa.field("sha256", pa.string()), pa.field("run_id", pa.string()),
                             pa.field("status", pa.string()), pa.field("models", pa.string()),
                             pa.field("identity_model", pa.string())])
DELETED_SCHEMA = pa.schema([*MANIFEST_SCHEMA, pa.field("deleted_run_id", pa.string()),
                            pa.field("deleted_at", pa.timestamp("ms", tz="UTC"))])
ERASED_SCHEMA = pa.schema([pa.field("path", pa.string()), pa.field("forget_id", pa.string()),
                           pa.field("erased_at", pa.timestamp("ms", tz="UTC"))])


def conform(t: pa.Table, schema: pa.Schema) -> pa.Table:
    """``t`` in ``schema``: columns in its order, missing ones null (state files written by older
    releases lack the newer columns), no metadata."""
    t = t.replace_schema_metadata(None)
    cols = [t[f.name].cast(f.type) if f.name in t.column_names else pa.nulls(t.num_rows, f.type) for f in schema]
    return pa.Table.from_arrays(cols, schema=schema)


def new_run_id(now: _dt.datetime | None = None) -> str:
    """``YYYYmmddTHHMMSSffffffZ-xxxxxx``: sorts by start time."""
    now = now or _dt.datetime.now(_dt.timezone.utc)
    return now.strftime("%Y%m%dT%H%M%S%fZ") + "-" + uuid.uuid4().hex[:6]


def run_date(run_id: str) -> str:
    return f"{run_id[0:4]}-{run_id[4:6]}-{run_id[6:8]}"


def run_dir(dst_root: str, run_id: str) -> str:
    return join(dst_root, f"dt={run_date(run_id)}", f"run={run_id}")


def run_uri(dst: str, options: dict, run_id: str) -> str:
    """The run folder named as DST is (an ``s3://`` URI, or a local path)."""
    return run_dir(dst.rstrip("/") if "://" in dst else filesystem(dst, options)[1], run_id)


# ---- listing -------------------------------------------------------------------------------------

def input_format(src: str, options: dict) -> str:
    """``manifest`` for a ``.csv``/``.parquet`` file, else ``folder``."""
    low = str(src).lower().split("?")[0]
    return "manifest" if low.endswith((".csv", ".parquet", ".txt")) else "folder"


def list_source(src: str, options: dict) -> tuple[pa.Table, dict]:
    """``(listing table path/etag/size/mtime sorted by path, skipped report)``.

    A folder or ``s3://`` prefix is listed as a stream (:func:`_list_folder`): each object's
    path, ETag, size and mtime go straight into Arrow arrays, so 1M keys cost about 0.2 GB on the
    driver instead of several GB of per-key dicts and records (``bench/annotate_listing_bench.py``).
    The same rules as the preprocess job's lister (:func:`facebatch.formats.sources.find_images`):
    its extensions (``.gif`` too), hidden files and ``__MACOSX`` skipped and counted. A manifest goes
    through :func:`facebatch.formats.sources.list_inputs`; objects it names that the listing did not
    stat are stat-ed here.
    """
    from ..storage import storage_error_message
    fmt = input_format(src, options)
    try:
        if fmt == "folder":
            t, report = _list_folder(src, options)
            return t.sort_by("path"), report
        fs_in = filesystem(src, options)[0] if "://" in src else None
        from ..formats.sources import list_inputs
        records, listing = list_inputs(src, fmt, None, filesystem=fs_in)
    except Exception as exc:
        msg = storage_error_message(exc, src, options)
        if msg:
            raise ValueError(msg) from exc
        raise
    paths, etags, sizes, mtimes = [], [], [], []
    for rec in records:
        info = object_info(rec.path, options, listing.info.get(rec.path))  # {} if gone: read_error later
        paths.append(rec.path)
        etags.append(etag_of(info))
        sizes.append(info.get("size"))
        mtimes.append(mtime_of(info))
    del records
    t = pa.Table.from_arrays([pa.array(paths, pa.string()), pa.array(etags, pa.string()),
                              pa.array(sizes, pa.int64()), pa.array(mtimes, pa.float64())], schema=LISTING_SCHEMA)
    return t.sort_by("path"), listing.report()


class _Columns:
    """Listing columns gathered in Python lists and flushed into Arrow chunks every ``chunk`` keys."""

    def __init__(self, chunk: int = 4096) -> None:
        self.chunk, self.batches = chunk, []
        self.cols: tuple[list, list, list, list] = ([], [], [], [])

    def add(self, path: str, etag, size, mtime) -> None:
        c = self.cols
        c[0].append(path), c[1].append(etag), c[2].append(size), c[3].append(mtime)
        if len(c[0]) >= self.chunk:
            self.flush()

    def flush(self) -> None:
        c = self.cols
        if c[0]:
            self.batches.append(pa.RecordBatch.from_arrays(
                [pa.array(c[0], pa.string()), pa.array(c[1], pa.string()), pa.array(c[2], pa.int64()),
                 pa.array(c[3], pa.float64())], schema=LISTING_SCHEMA))
        self.cols = ([], [], [], [])

    def table(self) -> pa.Table:
        self.flush()
        return pa.Table.from_batches(self.batches, schema=LISTING_SCHEMA)


def _list_folder(src: str, options: dict) -> tuple[pa.Table, dict]:
    """Stream the files below a local folder or an S3 prefix into a listing table (unsorted)."""
    import posixpath

    from ..formats.base import relative_parts, require_exists, resolve_fs, to_uri
    from ..formats.sources import LISTED_EXTENSIONS, Listing, need_dir
    fs, root = resolve_fs(src, filesystem(src, options)[0] if "://" in src else None)
    require_exists(fs, root, "input path", "check --input; S3 inputs look like s3://bucket/prefix")
    need_dir(fs, root, "folder", "to read a list of files use format 'manifest'")
    lst, cols = Listing(), _Columns()
    uri_prefix = to_uri(fs, "x")[:-1] if "://" in src else ""

    def take(p: str, info: dict) -> None:
        base = posixpath.basename(p)
        if not base:  # an S3 "folder" marker object
            return
        if base.startswith(".") or any(d.startswith(".") or d == "__MACOSX" for d in relative_parts(root, p)):
            lst.skip("hidden", uri_prefix + p)
        elif not base.lower().endswith(LISTED_EXTENSIONS):
            lst.skip("not an image extension", uri_prefix + p)
        else:
            cols.add(uri_prefix + p, etag_of(info), info.get("size"), mtime_of(info))

    if hasattr(fs, "_iterdir") and hasattr(fs, "split_path"):  # s3fs: page by page, no dircache
        from fsspec.asyn import sync
        bucket, key, _ = fs.split_path(root)
        prefix = key.rstrip("/") + "/" if key else ""

        async def _walk() -> None:
            async for info in fs._iterdir(bucket, delimiter="", prefix=prefix):
                if info.get("type") != "directory":
                    take(info["name"], info)

        sync(fs.loop, _walk)
    elif "://" not in src:  # local: os.walk, following links to folders as fsspec's find does
        for d, _dirs, files in os.walk(root, followlinks=True):
            for name in files:
                p = os.path.join(d, name)
                try:
                    st = os.stat(p)
                except OSError:  # a dangling link or a file gone since: the read reports it
                    st = None
                take(p, {} if st is None else {"size": st.st_size, "mtime": st.st_mtime})
    else:  # another fsspec filesystem: its find
        for p, info in fs.find(root, detail=True).items():
            if info.get("type") != "directory":
                take(p, info)
    return cols.table(), lst.report()


def plan_todo(todo: pa.Table, shard_size: int) -> list[bytes]:
    """The objects to do cut into shards of ``shard_size``, each a pickled list of
    ``{path, etag, size, mtime}`` dicts: only one shard's Python objects exist at a time."""
    import pickle
    if shard_size < 1:
        raise ValueError(f"shard size must be at least 1, got {shard_size}")
    todo = todo.select(LISTING_SCHEMA.names)
    return [pickle.dumps(todo.slice(i, shard_size).to_pylist(), protocol=5)
            for i in range(0, todo.num_rows, shard_size)]


# ---- the diff ------------------------------------------------------------------------------------

@dataclass
class Diff:
    """What a run does with each listed object (tables sorted by path; ``stale`` oldest annotation first)."""

    new: pa.Table
    changed: pa.Table
    retry: pa.Table  # unchanged, but the last result had a status a rerun could change
    unchanged: pa.Table
    deleted: pa.Table  # manifest rows whose object is no longer listed
    stale: pa.Table | None = None  # unchanged, annotated by other models: re-annotated this run
    stale_left: int = 0  # stale objects left for later runs (``--max-reannotate``)
    erased: pa.Table | None = None  # listed, but erased by ``facebatch forget``: never annotated again

    @property
    def todo(self) -> pa.Table:
        """New, changed and retried objects (by path), then the stale ones."""
        first = pa.concat_tables([self.new, self.changed, self.retry]).sort_by("path")
        return first if self.stale is None or not self.stale.num_rows else pa.concat_tables([first, self.stale])

    def counts(self) -> dict:
        n = lambda t: 0 if t is None else t.num_rows  # noqa: E731
        return {"new": self.new.num_rows, "changed": self.changed.num_rows, "retried": self.retry.num_rows,
                "unchanged": self.unchanged.num_rows, "deleted": self.deleted.num_rows,
                "stale": n(self.stale) + self.stale_left, "reannotated": n(self.stale), "stale_left": self.stale_left,
                "erased": n(self.erased)}


def diff(listing: pa.Table, manifest: pa.Table | None, full: bool = False, models: dict[str, str] | None = None,
         erased: pa.Table | None = None, max_reannotate: int | None = None) -> Diff:
    """Diff a listing against the manifest with joins.

    Changed: size differs, or the ETag differs, or (no ETag on either side) the mtime differs.
    ``full``: every listed object is redone (counted as new or changed as the diff says).
    ``models``: this run's model fingerprints (:func:`.versions.run_models`); an unchanged object
    with status ``ok``/``no_face`` annotated by other models is *stale*: redone after the others,
    at most ``max_reannotate`` of them (``None``: all), oldest annotation first.
    ``erased``: paths erased by ``facebatch forget`` (a table with ``path``; manifest rows with
    status ``erased`` count too): never redone, not even with ``full``.
    """
    listing = listing.select(LISTING_SCHEMA.names)
    gone_rows = _deleted(listing, manifest) if manifest is not None and manifest.num_rows else \
        (manifest if manifest is not None else MANIFEST_SCHEMA.empty_table()).slice(0, 0)
    listing, erased_listed = _split_erased(listing, manifest, erased)
    if manifest is None or manifest.num_rows == 0:
        empty = listing.slice(0, 0)
        return Diff(listing, empty, empty, empty, gone_rows, erased=erased_listed)
    has_models = "models" in manifest.column_names
    prev = manifest.select(["path", "etag", "size", "mtime", "status", "run_id"] + (["models"] if has_models else []))
    prev = prev.rename_columns(["path", "p_etag", "p_size", "p_mtime", "p_status", "p_run_id"] +
                               (["p_models"] if has_models else [])).append_column(
        "_known", pa.array([True] * manifest.num_rows, pa.bool_()))
    j = listing.join(prev, keys="path", join_type="left outer")
    known = pc.fill_null(j["_known"], False)
    e1, e2 = j["etag"], j["p_etag"]
    etag_both = pc.and_(pc.is_valid(e1), pc.is_valid(e2))
    etag_diff = pc.fill_null(pc.and_(etag_both, pc.not_equal(e1, e2)), False)
    size_diff = pc.fill_null(pc.not_equal(j["size"], j["p_size"]), False)
    size_null_mismatch = pc.xor(pc.is_valid(j["size"]), pc.is_valid(j["p_size"]))
    mtime_diff = pc.fill_null(pc.and_(pc.invert(etag_both), pc.not_equal(j["mtime"], j["p_mtime"])), False)
    changed = pc.and_(known, pc.or_(pc.or_(etag_diff, size_diff), pc.or_(mtime_diff, size_null_mismatch)))
    retry = pc.and_(pc.and_(known, pc.invert(changed)),
                    pc.fill_null(pc.is_in(j["p_status"], pa.array(RETRY_STATUSES)), False))
    new = pc.invert(known)
    cols = LISTING_SCHEMA.names
    pick = lambda m: j.filter(m).select(cols).sort_by("path")  # noqa: E731
    unchanged_mask = pc.and_(pc.and_(known, pc.invert(changed)), pc.invert(retry))
    if full:
        return Diff(pick(new), pick(pc.or_(changed, unchanged_mask)), pick(retry), pick(pc.and_(new, pc.invert(new))),
                    gone_rows, erased=erased_listed)
    stale_mask = pc.and_(unchanged_mask, _stale(j, models, has_models))
    stale = j.filter(stale_mask).sort_by([("p_run_id", "ascending"), ("path", "ascending")]).select(cols)
    take = stale.num_rows if max_reannotate is None else max(0, min(int(max_reannotate), stale.num_rows))
    return Diff(pick(new), pick(changed), pick(retry), pick(pc.and_(unchanged_mask, pc.invert(stale_mask))),
                gone_rows, stale=stale.slice(0, take), stale_left=stale.num_rows - take, erased=erased_listed)


def _stale(j: pa.Table, models: dict[str, str] | None, has_models: bool):
    """Per joined row: annotated (status ok/no_face) by models other than ``models``. Decided once
    per distinct ``models`` string of the manifest, not per object."""
    if models is None:
        return pa.array([False] * j.num_rows, pa.bool_())
    col = j["p_models"] if has_models else pa.nulls(j.num_rows, pa.string())
    values = pc.unique(col).to_pylist()
    stale_values = [v for v in values if v is not None and is_stale(v, models)]
    mask = pc.fill_null(pc.is_in(col, value_set=pa.array(stale_values, pa.string())), False)
    if None in values:  # annotated before models were recorded: stale
        mask = pc.or_(mask, pc.is_null(col))
    return pc.and_(mask, pc.fill_null(pc.is_in(j["p_status"], pa.array(STALE_STATUSES)), False))


def _split_erased(listing: pa.Table, manifest: pa.Table | None, erased: pa.Table | None) -> tuple[pa.Table, pa.Table]:
    """``(listing without the erased paths, the erased ones listed)``."""
    paths = []
    if erased is not None and erased.num_rows:
        paths.append(erased["path"].combine_chunks())
    if manifest is not None and manifest.num_rows:
        paths.append(manifest.filter(pc.equal(manifest["status"], S.ERASED))["path"].combine_chunks())
    paths = [p for p in paths if len(p)]
    if not paths:
        return listing, listing.slice(0, 0)
    mask = pc.is_in(listing["path"], value_set=pa.concat_arrays([p.cast(pa.string()) for p in paths]))
    return listing.filter(pc.invert(mask)), listing.filter(mask)


def _deleted(listing: pa.Table, manifest: pa.Table) -> pa.Table:
    return manifest.join(listing.select(["path"]), keys="path", join_type="left anti").sort_by("path")


# ---- state files ---------------------------------------------------------------------------------

def _read_parquet(fs, path: str) -> pa.Table | None:
    if not fs.exists(path):
        return None
    with fs.open(path, "rb") as f:
        return pq.read_table(io.BytesIO(f.read()))


def load_manifest(dst: str, options: dict) -> tuple[pa.Table | None, str | None]:
    """``(manifest table or None, last applied run id or None)``."""
    fs, root = filesystem(dst, options)
    t = _read_parquet(fs, join(root, STATE_DIR, MANIFEST))
    if t is None:
        return None, None
    last = (t.schema.metadata or {}).get(META_LAST_RUN)
    return conform(t, MANIFEST_SCHEMA), (last.decode() if last else None)


def load_erased(dst: str, options: dict) -> pa.Table:
    """``_state/erased.parquet``: the paths ``facebatch forget`` erased (empty when none)."""
    fs, root = filesystem(dst, options)
    t = _read_parquet(fs, join(root, STATE_DIR, ERASED))
    return ERASED_SCHEMA.empty_table() if t is None else conform(t, ERASED_SCHEMA)


def run_folders(dst: str, options: dict) -> list[tuple[str, str, bool]]:
    """``(run_id, folder, has _SUCCESS)`` of every run folder, sorted by run id."""
    fs, root = filesystem(dst, options)
    # run folders and their _SUCCESS are written by other processes (and other fsspec instances):
    # a listing cached by this instance (s3fs keeps them without expiry) would hide a newer run
    fs.invalidate_cache()
    out = []
    for d in fs.glob(join(root, "dt=*", "run=*")):
        rid = d.rstrip("/").rsplit("run=", 1)[1]
        out.append((rid, d, fs.exists(join(d, SUCCESS))))
    return sorted(out)


def run_parts(fs, folder: str) -> list[str]:
    return sorted(fs.glob(join(folder, PART_GLOB)))


def _run_manifest_rows(fs, folder: str) -> pa.Table:
    """One manifest row per input of a finished run (its face 0 or no-face/failed row)."""
    tables = []
    for p in run_parts(fs, folder):
        with fs.open(p, "rb") as f:
            pf = pq.ParquetFile(f)
            cols = [c for c in [*MANIFEST_SCHEMA.names, "face_index"] if c in pf.schema_arrow.names]
            t = pf.read(columns=cols)
        tables.append(conform(t.filter(pc.less_equal(pc.fill_null(t["face_index"], -1), 0)), MANIFEST_SCHEMA))
    if not tables:
        return MANIFEST_SCHEMA.empty_table()
    return pa.concat_tables(tables)


def write_run_deleted(fs, folder: str, deleted: pa.Table, run_id: str) -> None:
    now = _dt.datetime.now(_dt.timezone.utc)
    d = conform(deleted, MANIFEST_SCHEMA)
    d = d.append_column("deleted_run_id", pa.array([run_id] * d.num_rows, pa.string())).append_column(
        "deleted_at", pa.array([now] * d.num_rows, DELETED_SCHEMA.field("deleted_at").type))
    write_table_atomic(fs, join(folder, RUN_DELETED), d.cast(DELETED_SCHEMA))


def apply_run(dst: str, options: dict, run_id: str, folder: str, full: bool = False) -> dict:
    """Fold one finished run into ``_state``: deleted.parquet first, then the manifest (the commit
    point, atomically replaced, recording ``run_id`` as the last run applied). Idempotent."""
    fs, root = filesystem(dst, options)
    state = join(root, STATE_DIR)
    fs.makedirs(state, exist_ok=True)
    manifest, _ = load_manifest(dst, options)
    manifest = manifest if manifest is not None else MANIFEST_SCHEMA.empty_table()
    done = _run_manifest_rows(fs, folder)
    gone = _read_parquet(fs, join(folder, RUN_DELETED))
    gone = conform(gone, DELETED_SCHEMA) if gone is not None else DELETED_SCHEMA.empty_table()
    # deleted.parquet: history of deletions; drop this run's rows first so reapplying is harmless
    hist = _read_parquet(fs, join(state, DELETED))
    hist = conform(hist, DELETED_SCHEMA) if hist is not None else DELETED_SCHEMA.empty_table()
    hist = hist.filter(pc.not_equal(hist["deleted_run_id"], run_id)) if hist.num_rows else hist
    if gone.num_rows or not fs.exists(join(state, DELETED)):
        write_table_atomic(fs, join(state, DELETED), pa.concat_tables([hist, gone]))
    drop = pa.concat_tables([done.select(["path"]), gone.select(["path"])])
    keep = manifest.join(drop, keys="path", join_type="left anti") if drop.num_rows else manifest
    new = pa.concat_tables([conform(keep, MANIFEST_SCHEMA), done]).sort_by("path")
    new = new.replace_schema_metadata({META_LAST_RUN: run_id.encode()})
    write_table_atomic(fs, join(state, MANIFEST), new)
    return {"manifest_rows": new.num_rows, "applied": done.num_rows, "deleted": gone.num_rows}


class RunSink(ParquetSink):
    """The annotate job's default sink: ``part-NNNNN.parquet`` in the run folder; :meth:`commit`
    writes ``_SUCCESS`` (readers see the run from then on) and applies the run to the manifest (the
    state the next run's diff starts from)."""

    def __init__(self, dst: str, options: dict, run_id: str) -> None:
        super().__init__(run_uri(dst, options, run_id), options)
        self.dst, self.run_id = dst, run_id

    def commit(self, summary: dict) -> None:
        fs, folder = filesystem(self.folder, self.options)
        with fs.open(join(folder, SUCCESS), "w") as f:
            f.write(self.run_id)
        apply_run(self.dst, self.options, self.run_id, folder)


def recover(dst: str, options: dict, log=print) -> dict:
    """Before a run (holding the lock): remove run folders without ``_SUCCESS`` (a killed run) and
    apply finished runs that the manifest does not have yet (killed between ``_SUCCESS`` and the
    manifest). Returns what it did."""
    fs, root = filesystem(dst, options)
    _, last = load_manifest(dst, options)
    removed, applied = [], []
    for rid, folder, ok in run_folders(dst, options):
        if not ok:
            fs.rm(folder, recursive=True)
            removed.append(rid)
        elif last is None or rid > last:
            apply_run(dst, options, rid, folder)
            applied.append(rid)
            last = rid
    if removed:
        log(f"[facebatch] removed {len(removed)} unfinished run folder(s) of killed runs: {', '.join(removed)}")
    if applied:
        log(f"[facebatch] applied {len(applied)} finished run(s) missing from the manifest: {', '.join(applied)}")
    return {"removed_runs": removed, "applied_runs": applied}


# ---- the live view -------------------------------------------------------------------------------

def read_latest(dst: str, columns: Iterable[str] | None = None, options: dict[str, Any] | None = None,
                identity_model: str | None = None) -> pa.Table:
    """The current annotation of every live object: for each path the rows of the latest successful
    run that annotated it, unless a later run saw it deleted.

    Only run folders with ``_SUCCESS`` count, so a running or killed run is never seen. Works from
    the run folders alone (not the manifest). ``columns``: read only these (``path``, ``run_id``,
    ``face_index`` and ``identity_model`` are always read). Returns a pyarrow Table sorted by path
    and face_index (``.to_pandas()``).

    Embeddings of two identity models are never mixed: by default an ``embedding`` is returned only
    where the row's ``identity_model`` is the *current* one (that of the latest run that ran an
    identity model), and is null in rows annotated by another identity model (they are re-annotated
    as stale objects, see :mod:`.versions`). ``identity_model=FINGERPRINT`` keeps only the latest
    rows annotated with that identity model (12 hex digits, the ``identity_model`` column).
    """
    from ..storage import storage_options
    options = storage_options() if options is None else options
    fs, root = filesystem(dst, options)
    runs = [(rid, folder) for rid, folder, ok in run_folders(dst, options) if ok]
    always = ["path", "run_id", "face_index", "identity_model"]
    cols = None if columns is None else list(dict.fromkeys([*always, *columns]))
    tables, gone = [], []
    for rid, folder in runs:
        for p in run_parts(fs, folder):
            with fs.open(p, "rb") as f:
                pf = pq.ParquetFile(f)
                have = pf.schema_arrow.names  # parts of older runs lack newer columns
                tables.append(pf.read(columns=None if cols is None else [c for c in cols if c in have]))
        d = _read_parquet(fs, join(folder, RUN_DELETED))
        if d is not None and d.num_rows:
            gone.append(d.select(["path", "deleted_run_id"]))
    if not tables:
        return pa.table({"path": pa.array([], pa.string()), "run_id": pa.array([], pa.string())})
    rows = pa.concat_tables(tables, promote_options="default")
    latest = rows.group_by("path").aggregate([("run_id", "max")]).rename_columns(["path", "run_id"])
    if gone:
        g = pa.concat_tables(gone).group_by("path").aggregate([("deleted_run_id", "max")]).rename_columns(
            ["path", "deleted_run_id"])
        latest = latest.join(g, keys="path", join_type="left outer")
        alive = pc.or_(pc.is_null(latest["deleted_run_id"]),
                       pc.fill_null(pc.greater(latest["run_id"], latest["deleted_run_id"]), True))
        latest = latest.filter(alive).select(["path", "run_id"])
    # join on the keys only (acero cannot carry fixed-size list columns through a join), then take
    keys = pa.table({"path": rows["path"], "run_id": rows["run_id"], "_i": pa.array(range(rows.num_rows), pa.int64())})
    idx = keys.join(latest, keys=["path", "run_id"], join_type="inner")["_i"]
    current = current_identity_model(rows)
    out = rows.take(idx.combine_chunks().take(pc.sort_indices(idx)))
    out = out.take(pc.sort_indices(out, sort_keys=[("path", "ascending"), ("face_index", "ascending")]))
    return _one_identity_model(out, current, identity_model)


def current_identity_model(rows: pa.Table) -> str | None:
    """The ``identity_model`` of the latest run (by run id) whose rows have one; None if none has."""
    if "identity_model" not in rows.column_names:
        return None
    t = rows.select(["run_id", "identity_model"]).filter(pc.is_valid(rows["identity_model"]))
    if not t.num_rows:
        return None
    return t["identity_model"][pc.index(t["run_id"], pc.max(t["run_id"])).as_py()].as_py()


def _one_identity_model(out: pa.Table, current: str | None, identity_model: str | None) -> pa.Table:
    """``out`` restricted to one identity model's embeddings (see :func:`read_latest`)."""
    has = "identity_model" in out.column_names
    if identity_model is not None:
        if not has:
            return out.slice(0, 0)
        return out.filter(pc.fill_null(pc.equal(out["identity_model"], identity_model), False))
    if current is None or "embedding" not in out.column_names:
        return out
    same = pc.fill_null(pc.equal(out["identity_model"], current), False) if has else \
        pa.chunked_array([pa.array([False] * out.num_rows)])
    i = out.schema.get_field_index("embedding")
    emb = out["embedding"]
    return out.set_column(i, out.schema.field(i), pc.if_else(same, emb, pa.scalar(None, emb.type)))
