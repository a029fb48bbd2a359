"""The people stage's pure core on synthetic data: metrics, graph blocks, whispers, pose, id carry-over,
the state's atomic swap. No Ray, no models, no data folder (tests/test_people.py uses real faces)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from facebatch.evaluation.people import bcubed_prf, clustering_metrics, pairwise_prf, singletons
from facebatch.people.cluster import chinese_whispers, components
from facebatch.people.graph import Edges, best_match, query_graph, threshold_graph
from facebatch.people.night import NO_PERSON, Params, carry_ids, merge_persons, run_night
from facebatch.people.quality import MEAN_FACE_3D, POSE_POINTS, QualityGate, gate, head_pose


def clustered(n_centres: int, per: int, noise: float, dim: int = 32, seed: int = 0):
    rng = np.random.default_rng(seed)
    c = rng.normal(size=(n_centres, dim))
    c /= np.linalg.norm(c, axis=1, keepdims=True)
    x = np.repeat(c, per, axis=0) + rng.normal(scale=noise, size=(n_centres * per, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32), np.repeat(np.arange(n_centres), per)


def brute_force_edges(x: np.ndarray, thr: float) -> set[tuple[int, int]]:
    s = x @ x.T
    a, b = np.nonzero(np.triu(s >= thr, 1))
    return set(zip(a.tolist(), b.tolist()))


# ---- metrics ------------------------------------------------------------------------------------

def test_metrics_known_values():
    truth = ["a", "a", "a", "b", "b"]
    assert bcubed_prf(truth, truth) == {"precision": 1.0, "recall": 1.0, "f": 1.0}
    pred = [1, 1, 2, 2, 2]  # one 'a' put with the two 'b's
    b = bcubed_prf(pred, truth)
    assert b["precision"] == pytest.approx((1 + 1 + 1 / 3 + 2 / 3 + 2 / 3) / 5)
    assert b["recall"] == pytest.approx((2 / 3 + 2 / 3 + 1 / 3 + 1 + 1) / 5)
    pw = pairwise_prf(pred, truth)  # predicted pairs: (0,1), (2,3), (2,4), (3,4); true: (0,1),(0,2),(1,2),(3,4)
    assert pw["precision"] == pytest.approx(2 / 4) and pw["recall"] == pytest.approx(2 / 4)
    m = clustering_metrics(singletons(np.array([5, 5, -1, -1, 7])), truth)
    assert m["persons_found"] == 1 and m["persons_true"] == 2  # 7 is alone: below min_faces 2
    all_apart = bcubed_prf(list(range(5)), truth)
    assert all_apart["precision"] == 1.0 and all_apart["recall"] < 0.7


# ---- graph and clustering -----------------------------------------------------------------------

@pytest.mark.parametrize("block", [1, 7, 64, 4096])
def test_threshold_graph_in_blocks_is_exact(block):
    x, _ = clustered(12, 8, 0.3)
    thr = 0.6
    e = threshold_graph(x, thr, k=1000, block=block)
    assert set(zip(e.src.tolist(), e.dst.tolist())) == brute_force_edges(x, thr)
    assert (e.src < e.dst).all() and np.allclose(e.sim, np.einsum("ij,ij->i", x[e.src], x[e.dst]), atol=1e-5)


def test_knn_cap_keeps_each_faces_best_neighbours():
    x, _ = clustered(3, 40, 0.05)
    e = threshold_graph(x, 0.5, k=5, block=16)
    deg = np.bincount(np.r_[e.src, e.dst], minlength=len(x))
    assert deg.min() >= 5 and len(e) <= 5 * len(x)  # union of kNN lists: at least k, at most k per face
    q = query_graph(x[:10], x, 0.5, k=3, block=4)
    assert np.bincount(q.src, minlength=10).tolist() == [3] * 10


def test_best_match_in_blocks():
    x, _ = clustered(20, 3, 0.2)
    idx, sim = best_match(x[:7], x[20:], block=5)
    full = x[:7] @ x[20:].T
    assert (idx == full.argmax(1) + 0).all() and np.allclose(sim, full.max(1), atol=1e-6)


def test_chinese_whispers_separates_cliques_joined_by_one_edge():
    a, b = np.triu_indices(6, 1)
    clique = lambda off: Edges(a + off, b + off, np.full(len(a), 0.9, np.float32))  # noqa: E731
    bridge = Edges(np.array([5]), np.array([6]), np.array([0.95], np.float32))
    e = Edges.concat([clique(0), clique(6), bridge])
    lab = chinese_whispers(12, e)
    assert len(set(lab[:6])) == 1 and len(set(lab[6:])) == 1 and lab[0] != lab[6]
    assert len(set(components(12, e))) == 1  # components chain them: why whispers are used
    frozen = chinese_whispers(12, e, labels=np.r_[[100] * 6, -np.arange(1, 7)], movable=np.r_[[False] * 6, [True] * 6])
    assert (frozen[:6] == 100).all() and len(set(frozen[6:])) == 1 and frozen[6] < 0


def test_night_freezes_known_persons_and_merges_by_average_linkage():
    x, truth = clustered(10, 10, 0.1, seed=1)
    p = Params(threshold=0.6, k=10, block=16)
    first = np.isin(np.arange(len(x)) % 10, range(7))
    n1 = run_night(x, first, np.full(len(x), NO_PERSON), first, {}, 1, p)
    n2 = run_night(x, np.ones(len(x), bool), n1.person, ~first, {}, n1.next_id, p)
    assert (n1.person[first] >= 0).all() and (n2.person[first] == n1.person[first]).all()
    assert bcubed_prf(singletons(n2.person), truth)["f"] == 1.0
    split = n2.person.copy()
    split[(truth == 0) & (np.arange(len(x)) % 2 == 0)] = 99  # person 0 split in two
    assert merge_persons(x, split, {99}, {}, 0.6) == [(99, int(n2.person[truth == 0][0]))]
    assert merge_persons(x, split, {99}, {99: "Bob", int(n2.person[truth == 0][0]): "Alice"}, 0.6) == []


def test_carry_ids_keeps_oldest_id_and_records_splits():
    old = np.array([1, 1, 1, 1, 2, 2, 3, 3, -1])
    fresh = np.array([7, 7, 7, 8, 9, 9, 9, 9, 8])  # 1 split (7 heir, 8 new), 2 and 3 merged into 9
    person, ev = carry_ids(old, fresh, next_id=10)
    assert person.tolist() == [1, 1, 1, 10, 2, 2, 2, 2, 10]
    assert ev["split"] == [(10, 1)] and ev["merged"] == [(3, 2)] and ev["next_id"] == 11


# ---- quality gate -------------------------------------------------------------------------------

def _rotate(yaw: float, pitch: float) -> np.ndarray:
    a, b = np.radians(yaw), np.radians(pitch)
    ry = np.array([[np.cos(a), 0, -np.sin(a)], [0, 1, 0], [np.sin(a), 0, np.cos(a)]])
    rx = np.array([[1, 0, 0], [0, np.cos(b), -np.sin(b)], [0, np.sin(b), np.cos(b)]])
    pts = MEAN_FACE_3D @ (ry @ rx).T
    kp = np.zeros((68, 2))
    kp[list(POSE_POINTS)] = pts[:, :2] * 1.7 + 120
    return kp.reshape(-1)


@pytest.mark.parametrize("yaw,pitch", [(0, 0), (35, 0), (-50, 10), (20, -25)])
def test_head_pose_recovers_a_rotated_mean_face(yaw, pitch):
    y, p = head_pose(_rotate(yaw, pitch)[None])
    assert y[0] == pytest.approx(yaw, abs=0.5) and p[0] == pytest.approx(pitch, abs=0.5)


def test_gate_reasons_in_order():
    kp = np.stack([_rotate(0, 0), _rotate(0, 0), _rotate(0, 0), _rotate(70, 0), _rotate(0, 0)])
    reason = gate(5, QualityGate(), np.array([True, False, True, True, True]),
                  face_size=np.array([80, 80, 20, 80, 80.0]), score=np.array([0.99, 0.99, 0.99, 0.99, 0.5]),
                  keypoints68=kp)
    assert reason.tolist() == [None, "no_embedding", "small", "pose", "low_score"]
    assert gate(1, QualityGate(max_yaw=None, max_pitch=None), np.ones(1, bool), keypoints68=kp[3:4])[0] is None


# ---- state --------------------------------------------------------------------------------------

def test_state_swap_is_atomic_and_rolls_forward(tmp_path):
    from facebatch.people import state as S
    dst = str(tmp_path)
    st = S.PeopleState.empty()
    st.history = S.events("r1", [{"event": "created", "person_id": 1}])
    S.save_state(dst, st, "r1")
    assert S.load_state(dst).history.num_rows == 1 and S.load_state(dst).meta["run_id"] == "r1"
    # a run killed after its commit point: staged files written, log pending, nothing moved yet
    st.history = pa.concat_tables([st.history, S.events("r2", [{"event": "forgotten", "person_id": 1}])])
    root = tmp_path / "_people"
    orig = S.finish_swap
    S.finish_swap = lambda *a, **k: False
    try:
        S.save_state(dst, st, "r2")
    finally:
        S.finish_swap = orig
    assert (root / ".staging" / "r2" / "faces.parquet").exists()
    assert S.load_state(dst).history.num_rows == 2  # readers see the committed run's staged files
    assert S.finish_swap(dst) and not (root / ".staging" / "r2").exists()
    assert S.load_state(dst).meta["run_id"] == "r2"
    with pytest.raises(ValueError, match="unknown people event"):
        S.events("r3", [{"event": "renamed", "person_id": 1}])
