"""The similarity graph of face embeddings, built block by block (pure numpy, no N x N matrix).

Embeddings are unit length, so the cosine similarity of two faces is their dot product. The graph
keeps an edge ``(a, b, s)`` when ``s >= threshold`` (the identity model's verification threshold)
and ``b`` is among ``a``'s ``k`` most similar faces, or ``a`` among ``b``'s (the union of the two
kNN lists, capped so one very frequent person cannot produce a quadratic number of edges).

Why numpy and not a library index: the graph is a *threshold* graph over exact inner products; a
flat faiss index computes the same ``float32`` GEMM through BLAS, but its query/index interface
cannot use the symmetry of a collection against itself (``X @ X.T``: only the blocks on and above
the diagonal are computed here, half the work), and an approximate index (IVF, HNSW) trades recall
for a speed the target does not need (``bench/people_bench.py``: a first night of 100k faces in
about 33 s on 2 cores, a 1% night in about 2 s; docs/BENCHMARKS.md). Memory: one ``block x block``
float32 tile at a time (64 MB at the default 4096) plus the kept edges, at most ``2 k`` per face.

``row_blocks`` cuts the work into independent row blocks, which :mod:`.parallel` maps over Ray tasks
for big collections; :func:`block_edges` is what one task runs.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_BLOCK = 4096
DEFAULT_K = 32


@dataclass
class Edges:
    """Edges ``src[i] -> dst[i]`` with similarity ``sim[i]`` (``int64``, ``int64``, ``float32``)."""

    src: np.ndarray
    dst: np.ndarray
    sim: np.ndarray

    @classmethod
    def empty(cls) -> "Edges":
        return cls(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32))

    @classmethod
    def concat(cls, parts: list["Edges"]) -> "Edges":
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()
        return cls(np.concatenate([p.src for p in parts]), np.concatenate([p.dst for p in parts]),
                   np.concatenate([p.sim for p in parts]))

    def __len__(self) -> int:
        return len(self.src)

    def take(self, mask_or_index: np.ndarray) -> "Edges":
        return Edges(self.src[mask_or_index], self.dst[mask_or_index], self.sim[mask_or_index])


def _rank_within(key: np.ndarray, sim: np.ndarray) -> np.ndarray:
    """For each element, its rank among the elements with the same ``key``, by ``sim`` descending."""
    if len(key) == 0:
        return np.zeros(0, np.int64)
    order = np.lexsort((-sim, key))
    k = key[order]
    start = np.r_[0, np.flatnonzero(k[1:] != k[:-1]) + 1]
    ranks_sorted = np.arange(len(k)) - np.repeat(start, np.diff(np.r_[start, len(k)]))
    ranks = np.empty(len(k), np.int64)
    ranks[order] = ranks_sorted
    return ranks


def cap_edges(e: Edges, k: int, undirected: bool) -> Edges:
    """Keep an edge when it is among the ``k`` best of its source (or, ``undirected``, of either end)."""
    if len(e) == 0:
        return e
    if not undirected:
        return e.take(_rank_within(e.src, e.sim) < k)
    m = len(e)  # an undirected edge counts among the edges of both its ends
    rank = _rank_within(np.concatenate([e.src, e.dst]), np.concatenate([e.sim, e.sim]))
    return e.take((rank[:m] < k) | (rank[m:] < k))


def block_edges(queries: np.ndarray, base: np.ndarray, q_offset: int, threshold: float, k: int,
                block: int, self_join: bool) -> Edges:
    """Edges of one row block ``queries`` (rows ``q_offset...`` of the query set) against ``base``.

    ``self_join``: queries are rows of ``base`` itself; only columns after the query row are
    compared (the upper triangle), and each pair is emitted once as ``(smaller, larger)``.
    Returns source indices in query-set numbering and destination indices into ``base``.
    """
    parts = []
    start_col = q_offset if self_join else 0
    q = np.ascontiguousarray(queries, dtype=np.float32)
    for c0 in range(start_col, len(base), block):
        tile = q @ base[c0:c0 + block].T  # (len(q), <= block) similarities
        if self_join and c0 < q_offset + len(q):  # the tile crosses the diagonal: upper triangle only
            rows = np.arange(len(q))[:, None] + q_offset
            cols = np.arange(tile.shape[1])[None, :] + c0
            tile[cols <= rows] = -np.inf
        r, c = np.nonzero(tile >= threshold)
        if len(r):
            e = Edges(r.astype(np.int64) + q_offset, c.astype(np.int64) + c0, tile[r, c].astype(np.float32))
            parts.append(cap_edges(e, k, undirected=self_join))
    return cap_edges(Edges.concat(parts), k, undirected=self_join)


def row_blocks(n: int, block: int) -> list[tuple[int, int]]:
    """``(start, stop)`` of each row block of ``n`` rows."""
    if block < 1:
        raise ValueError(f"block size must be at least 1, got {block}")
    return [(i, min(i + block, n)) for i in range(0, n, block)]


def threshold_graph(x: np.ndarray, threshold: float, k: int = DEFAULT_K, block: int = DEFAULT_BLOCK,
                    mapper=None) -> Edges:
    """The undirected kNN threshold graph of ``x`` against itself; each edge once, ``src < dst``.

    ``mapper(fn, jobs)``: how row blocks are computed (:func:`facebatch.people.parallel.mapper`
    gives Ray tasks for big inputs); ``None`` runs them here, one after the other.
    """
    x = np.ascontiguousarray(x, dtype=np.float32)
    jobs = [(x[a:b], a) for a, b in row_blocks(len(x), block)]
    run = mapper or _serial
    parts = run(lambda q, off, base: block_edges(q, base, off, threshold, k, block, True), jobs, x)
    return cap_edges(Edges.concat(parts), k, undirected=True)


def query_graph(queries: np.ndarray, base: np.ndarray, threshold: float, k: int = DEFAULT_K,
                block: int = DEFAULT_BLOCK, mapper=None) -> Edges:
    """Directed kNN threshold edges from each query row to rows of ``base`` (indices into each)."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    base = np.ascontiguousarray(base, dtype=np.float32)
    if len(q) == 0 or len(base) == 0:
        return Edges.empty()
    jobs = [(q[a:b], a) for a, b in row_blocks(len(q), block)]
    run = mapper or _serial
    parts = run(lambda qq, off, b: block_edges(qq, b, off, threshold, k, block, False), jobs, base)
    return cap_edges(Edges.concat(parts), k, undirected=False)


def best_match(queries: np.ndarray, targets: np.ndarray, block: int = DEFAULT_BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """Index of the most similar target row of each query and that similarity (``-1``, ``-inf``
    when there are no targets), in blocks of targets."""
    q = np.ascontiguousarray(queries, dtype=np.float32)
    best = np.full(len(q), -1, np.int64)
    sim = np.full(len(q), -np.inf, np.float32)
    for c0 in range(0, len(targets), block):
        for r0 in range(0, len(q), block):
            tile = q[r0:r0 + block] @ np.asarray(targets[c0:c0 + block], np.float32).T
            j = tile.argmax(axis=1)
            s = tile[np.arange(len(j)), j]
            better = s > sim[r0:r0 + block]
            best[r0:r0 + block][better] = j[better] + c0
            sim[r0:r0 + block][better] = s[better]
    return best, sim


def _serial(fn, jobs, base) -> list[Edges]:
    return [fn(q, off, base) for q, off in jobs]
