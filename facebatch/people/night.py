"""One night of the people stage on arrays: which person each face belongs to afterwards.

Pure numpy. The whole algorithm is Chinese whispers (:mod:`.cluster`) on the kNN threshold graph
(:mod:`.graph`), run so that a night only ever adds to what earlier nights decided:

1. **Nodes.** Faces already in a person are *frozen*: their label is their person id and never
   changes. The *pool* is every clusterable face in no person: tonight's new faces and the old
   faces that are still in no person (they were in a group smaller than ``min_faces``).
2. **Edges.** The first night (no frozen face), the threshold graph of the pool with itself. Later
   nights, each new face's ``k`` most similar faces above the threshold among all clusterable
   faces, then the same for the pool faces those reached (``rounds`` times): only what the new
   faces touch is computed, never the whole collection again.
3. **Whispers.** Pool nodes start with labels of their own and take, pass after pass, the label
   with the largest summed similarity among their neighbours; frozen nodes vote with their
   person's id. A pool face that ends with a person's id joins that person (*assigned to an
   existing person*); pool faces that share a new label form a new person when they are at least
   ``min_faces``, else stay in no person.
4. **Merges.** A person that grew or was created tonight is merged with another when the average
   similarity between the two persons' faces (``S_a . S_b / (n_a n_b)`` from the embedding sums:
   exact, no pair loop) passes the threshold: greedy average linkage, best pair first, the
   combined person re-checked before each further merge. The older (smaller) id is kept; two
   persons with different names are never merged.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .cluster import chinese_whispers
from .graph import DEFAULT_BLOCK, Edges, query_graph, threshold_graph

NO_PERSON = -1


@dataclass
class Params:
    """Knobs of a night. ``threshold`` is the identity model's verification threshold."""

    threshold: float
    min_faces: int = 2
    k: int = 10
    block: int = DEFAULT_BLOCK
    rounds: int = 3
    max_iter: int = 30
    seed: int = 0
    mapper: object = None  # row-block mapper for the graph (:mod:`.parallel`); None: this process


@dataclass
class NightResult:
    person: np.ndarray  # int64 (n,), NO_PERSON for none
    next_id: int
    created: list[int] = field(default_factory=list)
    merged: list[tuple[int, int]] = field(default_factory=list)  # (merged id, kept id)
    assigned_existing: int = 0
    edges: int = 0


def sums_by_person(person: np.ndarray, emb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(ids, embedding sums (P, d), counts)`` of the faces with a person (sorted by id)."""
    m = person >= 0
    p, e = person[m], emb[m]
    order = np.argsort(p, kind="stable")
    p, e = p[order], e[order]
    ids, start, counts = np.unique(p, return_index=True, return_counts=True)
    sums = np.add.reduceat(e.astype(np.float64), start, axis=0) if len(p) else np.zeros((0, emb.shape[1]))
    return ids, sums, counts


def _graph(emb: np.ndarray, ok: np.ndarray, pool: np.ndarray, new: np.ndarray, p: Params) -> Edges:
    """Edges (global face indices) around the pool; see the module doc, step 2."""
    if not (ok & ~pool).any() and new[pool].all():
        idx = np.flatnonzero(pool)
        e = threshold_graph(emb[idx], p.threshold, p.k, p.block, p.mapper)
        return Edges(idx[e.src], idx[e.dst], e.sim)
    base = np.flatnonzero(ok)
    in_pool = pool[base]
    queried = np.zeros(len(emb), bool)
    todo = np.flatnonzero(new & pool)
    parts = []
    for _ in range(max(1, p.rounds)):
        if len(todo) == 0:
            break
        queried[todo] = True
        e = query_graph(emb[todo], emb[base], p.threshold, p.k, p.block, p.mapper)
        parts.append(Edges(todo[e.src], base[e.dst], e.sim))
        reached = base[e.dst[in_pool[e.dst]]]
        todo = np.unique(reached[~queried[reached]])
    e = Edges.concat(parts)
    keep = e.src != e.dst
    return e.take(keep)


def run_night(emb: np.ndarray, ok: np.ndarray, person: np.ndarray, new: np.ndarray, names: dict[int, str],
              next_id: int, p: Params) -> NightResult:
    """Persons after one night (module doc).

    Args:
        emb: ``(n, d)`` unit embeddings of the live faces (anything where ``ok`` is False).
        ok: ``bool (n,)``: clusterable (passed the quality gate).
        person: ``int64 (n,)``: person id of faces kept from earlier nights, ``NO_PERSON`` otherwise.
        new: ``bool (n,)``: faces first seen tonight.
        names: names of named persons (merges between two names are refused).
        next_id: the first unused person id.
    """
    person = np.where(ok, person, NO_PERSON).astype(np.int64)
    pool = ok & (person < 0)
    before = person.copy()
    res = NightResult(person, next_id)
    if not pool.any():
        return res
    e = _graph(emb, ok, pool, new, p)
    res.edges = len(e)
    nodes = np.unique(np.concatenate([e.src, e.dst, np.flatnonzero(pool & new)]))
    local = np.searchsorted(nodes, [e.src, e.dst])
    start = np.where(person[nodes] >= 0, person[nodes], -(nodes + 1))  # pool faces: labels of their own
    lab = chinese_whispers(len(nodes), Edges(local[0], local[1], e.sim), p.max_iter, p.seed, start,
                           movable=pool[nodes])
    joined = pool[nodes] & (lab >= 0)
    person[nodes[joined]] = lab[joined]
    grown = set(np.unique(lab[joined]).tolist())
    free = pool[nodes] & (lab < 0)
    groups, counts = np.unique(lab[free], return_counts=True)
    for g in groups[counts >= p.min_faces][np.argsort(-counts[counts >= p.min_faces], kind="stable")]:
        person[nodes[free & (lab == g)]] = res.next_id
        res.created.append(res.next_id)
        res.next_id += 1
    res.merged = merge_persons(emb, person, grown | set(res.created), names, p.threshold, p.block)
    for gone, kept in res.merged:
        person[person == gone] = kept
    res.assigned_existing = int(((before < 0) & (person >= 0) & ~np.isin(person, res.created)).sum())
    return res


def merge_persons(emb: np.ndarray, person: np.ndarray, touched: set[int], names: dict[int, str],
                  threshold: float, block: int = DEFAULT_BLOCK, k: int = 5) -> list[tuple[int, int]]:
    """Greedy average-linkage merges of touched persons (module doc, step 4): ``(merged, kept)``
    pairs, in the order they were made (a kept id may itself be merged later: follow the chain)."""
    if not touched:
        return []
    ids, sums, counts = sums_by_person(person, emb)
    means = (sums / counts[:, None]).astype(np.float32)
    t = np.flatnonzero(np.isin(ids, list(touched)))
    e = query_graph(means[t], means, threshold, k + 1, block)
    cand = [(float(s), int(t[a]), int(b)) for a, b, s in zip(e.src, e.dst, e.sim) if t[a] != b]
    cand.sort(key=lambda c: -c[0])
    root = list(range(len(ids)))
    S, N = sums.copy(), counts.astype(np.float64).copy()
    label = {i: names.get(int(ids[i])) for i in range(len(ids))}

    def find(i: int) -> int:
        while root[i] != i:
            root[i] = root[root[i]]
            i = root[i]
        return i

    out = []
    for _, a, b in cand:
        ra, rb = find(a), find(b)
        if ra == rb or (label[ra] and label[rb] and label[ra] != label[rb]):
            continue
        if float(S[ra] @ S[rb]) / (N[ra] * N[rb]) < threshold:  # re-check the groups as they are now
            continue
        keep, drop = (ra, rb) if ids[ra] < ids[rb] else (rb, ra)
        root[drop] = keep
        S[keep] += S[drop]
        N[keep] += N[drop]
        label[keep] = label[keep] or label[drop]
        out.append((int(ids[drop]), int(ids[keep])))
    return out


def carry_ids(old: np.ndarray, fresh: np.ndarray, next_id: int) -> tuple[np.ndarray, dict]:
    """Give a from-scratch clustering (``fresh`` labels, ``-1`` none) the ids of the persons it
    replaces (``old``, ``-1`` none), so that re-clustering keeps ids and names.

    Each old person's *heir* is the fresh cluster holding most of its faces. A cluster that is the
    heir of several old persons takes the oldest (smallest) id and the others are merged into it;
    a cluster that is nobody's heir gets a new id, recorded as a ``split`` of the old person most
    of its faces came from (``created`` when none). Returns ``(person ids, events)`` with events
    ``created``, ``split`` (new id, from), ``merged`` (merged, kept) and ``next_id``.
    """
    person = np.full(len(fresh), NO_PERSON, np.int64)
    ev: dict = {"created": [], "split": [], "merged": [], "next_id": next_id}
    both = (old >= 0) & (fresh >= 0)
    pairs, n = np.unique(np.c_[old[both], fresh[both]], axis=0, return_counts=True) if both.any() \
        else (np.zeros((0, 2), np.int64), np.zeros(0, np.int64))
    order = np.lexsort((pairs[:, 1], -n, pairs[:, 0])) if len(n) else np.zeros(0, np.int64)
    heir: dict[int, int] = {}
    for o, f in pairs[order]:
        heir.setdefault(int(o), int(f))
    heirs: dict[int, list[int]] = {}
    for o, f in heir.items():
        heirs.setdefault(f, []).append(o)
    source = {}  # cluster -> the old person most of its faces came from
    for i in np.lexsort((pairs[:, 0], -n, pairs[:, 1])) if len(n) else []:
        source.setdefault(int(pairs[i, 1]), int(pairs[i, 0]))
    for f in np.unique(fresh[fresh >= 0]).tolist():
        if f in heirs:
            keep = min(heirs[f])
            ev["merged"] += [(o, keep) for o in sorted(heirs[f]) if o != keep]
        else:
            keep = ev["next_id"]
            ev["next_id"] += 1
            ev["split" if f in source else "created"].append((keep, source.get(f)))
        person[fresh == f] = keep
    return person, ev
