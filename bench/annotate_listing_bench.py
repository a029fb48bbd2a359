"""Listing + diff at scale: driver memory and time of the annotate job's listing on 1M S3 keys.

The issue: "Listing must scale: 1,000,000 keys may not need more than about 2 GB on the driver."

No images and no S3 server: a real ``s3fs.S3FileSystem`` is used, with only its ``_call_s3`` (the
HTTP request) replaced by a generator of ``list_objects_v2`` pages of 1,000 synthetic keys each,
as S3 returns them (Key, LastModified, ETag, Size, StorageClass, ChecksumAlgorithm). So s3fs's own
listing code and the job's code (:func:`facebatch.annotate.state.list_source`, ``load_manifest``,
``diff`` and the driver's planning of shards) run as they do against a bucket.

Each case runs in a fresh child process; it reports the child's peak RSS (``ru_maxrss``), the RSS
after imports, and the time of each step:

- ``first``: 1M keys listed, no manifest (first run: every key is to do, shards planned);
- ``nightly``: 1M keys listed against a manifest of 1M keys of which 1% changed (ETag), 0.5%
  deleted, and 1% of the listing is new;
- ``first-before`` / ``nightly-before``: the same with the listing and planning as the job did them
  before the streaming lister (``fs.find`` + an ``InputRecord`` per key, a dict per key to do).

    .venv/bin/python bench/annotate_listing_bench.py --keys 1000000
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time

BUCKET = "bench-bucket"
PAGE = 1000


def _key(i: int) -> str:
    return f"photos/{i // 10000:03d}/{i // 100 % 100:02d}/IMG_{i:08d}.jpg"


def _etag(i: int, gen: int = 0) -> str:
    return '"%032x"' % ((i * 2654435761 + gen * 97) % (1 << 128))


def patch_s3fs(n_keys: int) -> None:
    """Make s3fs answer list_objects_v2 with synthetic pages (keys 0..n_keys-1, sorted)."""
    import datetime as dt

    import s3fs

    lm = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)

    async def _call_s3(self, method, *args, **kw):
        if method == "head_object":
            raise FileNotFoundError(kw.get("Key"))
        if method == "head_bucket":
            return {}
        if method != "list_objects_v2":
            raise NotImplementedError(method)
        prefix, delim = kw.get("Prefix", ""), kw.get("Delimiter", "")
        if delim:  # one level (exists/isdir): common prefixes and direct objects, never paged here
            limit, prefixes, contents = int(kw.get("MaxKeys", 1000)), {}, []
            for i in range(n_keys):
                k = _key(i)
                if not k.startswith(prefix):
                    continue
                rest = k[len(prefix):]
                if delim in rest:
                    prefixes.setdefault(prefix + rest[:rest.index(delim) + 1], None)
                else:
                    contents.append(_obj(i))
                if len(prefixes) + len(contents) >= limit:
                    break
            return {"CommonPrefixes": [{"Prefix": p} for p in prefixes], "Contents": contents,
                    "IsTruncated": False, "KeyCount": len(prefixes) + len(contents)}
        start = int(kw.get("ContinuationToken") or 0)
        n = min(int(kw.get("MaxKeys", PAGE)), PAGE)
        end = min(start + n, n_keys)
        contents = [_obj(i) for i in range(start, end)]
        out = {"Contents": contents, "IsTruncated": end < n_keys, "KeyCount": len(contents)}
        if end < n_keys:
            out["NextContinuationToken"] = str(end)
        return out

    def _obj(i: int) -> dict:
        return {"Key": _key(i), "LastModified": lm, "ETag": _etag(i), "ChecksumAlgorithm": ["CRC32"],
                "ChecksumType": "FULL_OBJECT", "Size": 2_000_000 + i % 1_000_000, "StorageClass": "STANDARD"}

    s3fs.S3FileSystem._call_s3 = _call_s3


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def peak_mb() -> float:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def write_manifest(n_keys: int, dst: str) -> None:
    """The previous run's manifest for the nightly cases (written by its own child process)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from facebatch.annotate import state as ST
    if True:
        # previous manifest: keys 0..N-1 with 1% changed, 0.5% deleted (keys >= listing end), 1% new
        # listing = keys 0..N-1; manifest = keys N/100 .. N+N/200-1: 1% new, 0.5% deleted, and every
        # key with i % 100 == 7 has another ETag in the manifest (1% changed)
        prev_n = range(n_keys // 100, n_keys + n_keys // 200)
        m = pa.table({
            "path": pa.array([f"s3://{BUCKET}/{_key(i)}" for i in prev_n], pa.string()),
            "etag": pa.array([_etag(i, 1 if i % 100 == 7 else 0).strip('"') for i in prev_n], pa.string()),
            "size": pa.array([2_000_000 + i % 1_000_000 for i in prev_n], pa.int64()),
            "mtime": pa.array([1767225600.0] * len(prev_n), pa.float64()),
            "sha256": pa.array(["0" * 64] * len(prev_n), pa.string()),
            "run_id": pa.array(["20260101T000000000000Z-aaaaaa"] * len(prev_n), pa.string()),
            "status": pa.array(["ok"] * len(prev_n), pa.string()),
        }).sort_by("path")
        os.makedirs(os.path.join(dst, "_state"), exist_ok=True)
        pq.write_table(m.replace_schema_metadata({ST.META_LAST_RUN: b"20260101T000000000000Z-aaaaaa"}),
                       os.path.join(dst, "_state", "manifest.parquet"))
        del m


def list_before(src: str, options: dict):
    """The listing as the job did it before the streaming lister (commit 121b0d8): the preprocess
    lister's records (``fs.find(detail=True)``, an ``InputRecord`` and an info dict per key), then
    Python lists per column."""
    import pyarrow as pa

    from facebatch.annotate import state as ST
    from facebatch.batch.listing import etag_of, mtime_of
    from facebatch.formats.sources import list_inputs
    from facebatch.storage import filesystem
    records, listing = list_inputs(src, "folder", None, filesystem=filesystem(src, options)[0])
    paths, etags, sizes, mtimes = [], [], [], []
    for rec in records:
        info = listing.info.get(rec.path) or {}
        paths.append(rec.path)
        etags.append(etag_of(info))
        sizes.append(info.get("size"))
        mtimes.append(mtime_of(info))
    del records
    t = pa.Table.from_arrays([pa.array(paths, pa.string()), pa.array(etags, pa.string()),
                              pa.array(sizes, pa.int64()), pa.array(mtimes, pa.float64())], schema=ST.LISTING_SCHEMA)
    return t.sort_by("path"), listing.report()


def child(case: str, n_keys: int, tmp: str) -> dict:
    from facebatch.annotate import state as ST
    from facebatch.batch.shards import plan_shards
    patch_s3fs(n_keys)
    out = {"case": case, "keys": n_keys, "rss_after_imports_mb": round(rss_mb(), 1)}
    options = {"key": "x", "secret": "y", "client_kwargs": {"endpoint_url": "http://127.0.0.1:9"}}
    dst = os.path.join(tmp, "dst")
    import s3fs  # noqa: F401  (imported by the listing anyway; counted in the baseline)
    import gc
    gc.collect()
    out["rss_before_listing_mb"] = round(rss_mb(), 1)
    t0 = time.perf_counter()
    lister = list_before if case.endswith("-before") else ST.list_source
    listing, skipped = lister(f"s3://{BUCKET}/photos", options)
    t1 = time.perf_counter()
    out.update(listed=listing.num_rows, list_s=round(t1 - t0, 2), rss_after_list_mb=round(rss_mb(), 1),
               listing_arrow_mb=round(listing.nbytes / 2**20, 1))
    manifest, _ = ST.load_manifest(dst, {}) if case.startswith("nightly") else (None, None)
    t2 = time.perf_counter()
    d = ST.diff(listing, manifest, False)
    todo = d.todo
    t3 = time.perf_counter()
    out.update(counts=d.counts(), load_manifest_s=round(t2 - t1, 2), diff_s=round(t3 - t2, 2),
               rss_after_diff_mb=round(rss_mb(), 1))
    # what the driver does next with the keys to do (pipeline.run_annotate)
    if case.endswith("-before"):  # as the job did: a dict per key to do, then pickled shards
        shards = [pickle.dumps(s, protocol=5) for s in plan_shards(todo.to_pylist(), 64)]
    else:
        shards = ST.plan_todo(todo, 64)
    t4 = time.perf_counter()
    out.update(n_shards=len(shards), plan_s=round(t4 - t3, 2), total_s=round(t4 - t0, 2),
               rss_after_plan_mb=round(rss_mb(), 1), peak_rss_mb=round(peak_mb(), 1))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--keys", type=int, default=1_000_000)
    ap.add_argument("--cases", default="first-before,first,nightly-before,nightly",
                    help="first/nightly with the job's lister; *-before: as the job listed before")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--tmp", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child == "setup":
        write_manifest(a.keys, os.path.join(a.tmp, "dst"))
        return
    if a.child:
        print(json.dumps(child(a.child, a.keys, a.tmp)), flush=True)
        return
    print(f"load before: {os.getloadavg()}", flush=True)
    results = []
    for case in a.cases.split(","):
        with tempfile.TemporaryDirectory() as tmp:
            if case.startswith("nightly"):
                subprocess.run([sys.executable, __file__, "--child", "setup", "--keys", str(a.keys), "--tmp", tmp],
                               check=True)
            t = time.perf_counter()
            p = subprocess.run([sys.executable, __file__, "--child", case, "--keys", str(a.keys), "--tmp", tmp],
                               capture_output=True, text=True)
            if p.returncode:
                print(p.stdout, p.stderr, file=sys.stderr)
                raise SystemExit(f"case {case} failed")
            r = json.loads(p.stdout.strip().splitlines()[-1])
            r["child_wall_s"] = round(time.perf_counter() - t, 1)
            results.append(r)
            print(json.dumps(r), flush=True)
    print(f"load after: {os.getloadavg()}", flush=True)


if __name__ == "__main__":
    main()
