"""Evaluation metrics in numpy: binary attributes, closed-set identity, face verification.

Faces the detector missed ("failed") stay in the denominators and count as wrong, so a model
cannot look better by dropping hard images.
"""
from __future__ import annotations

from typing import Any

import numpy as np

BINARY_KEYS = ("n", "failed", "accuracy", "balanced_accuracy", "precision", "recall_pos", "recall_neg",
               "f1", "roc_auc", "confusion")


def _as_bool_mask(mask: Any, n: int) -> np.ndarray:
    if mask is None:
        return np.zeros(n, dtype=bool)
    m = np.asarray(mask, dtype=bool).ravel()
    if m.shape[0] != n:
        raise ValueError(f"failed_mask has {m.shape[0]} items, expected {n}")
    return m


def _binary_labels(y_true: Any) -> np.ndarray:
    y = np.asarray(y_true).ravel()
    if y.dtype == bool:
        return y.astype(np.int64)
    y = y.astype(np.float64)
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("y_true must hold only 0 and 1 (drop or map missing and -1/1 labels first)")
    return y.astype(np.int64)


def average_ranks(x: Any) -> np.ndarray:
    """1-based ranks of ``x`` with ties given their average rank (as ``scipy.stats.rankdata``).

    Args:
        x: 1-D values.
    """
    x = np.asarray(x, dtype=np.float64).ravel()
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.r_[0, np.flatnonzero(np.diff(xs)) + 1]
    ends = np.r_[starts[1:], len(xs)]
    avg = (starts + ends + 1) / 2.0  # mean of 1-based ranks start+1 .. end
    ranks = np.empty(len(x), dtype=np.float64)
    ranks[order] = np.repeat(avg, ends - starts)
    return ranks


def roc_auc(y_true: Any, y_score: Any) -> float:
    """ROC AUC as the Mann-Whitney rank statistic (ties count one half); NaN with one class only.

    Args:
        y_true: 0/1 labels.
        y_score: scores, higher = more positive.
    """
    y = _binary_labels(y_true)
    s = np.asarray(y_score, dtype=np.float64).ravel()
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = average_ranks(s)
    return float((r[y == 1].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def binary_metrics(y_true: Any, y_score: Any, failed_mask: Any = None, threshold: float = 0.5) -> dict[str, Any]:
    """Metrics of a binary classifier, failures counted as wrong.

    The predicted label is ``y_score >= threshold``: pass probabilities (threshold 0.5), logits
    (threshold 0.0) or hard 0/1 predictions (then ROC AUC is that of the hard labels).

    Failed items (no face found) are predicted as the wrong class and given the worst score for
    ROC AUC (below every other score for a positive, above every other for a negative); their
    ``y_score`` entries are ignored and may be NaN.

    Returns exactly the keys ``n``, ``failed``, ``accuracy``, ``balanced_accuracy``,
    ``precision``, ``recall_pos``, ``recall_neg``, ``f1``, ``roc_auc`` and ``confusion``
    (``[[tn, fp], [fn, tp]]``, ints). Undefined values: precision with no positive predictions
    is 0.0 (sklearn's ``zero_division=0``); the recall of a class absent from ``y_true`` is NaN
    and ``balanced_accuracy`` averages the defined recalls; ``f1`` is 0.0 when precision and
    recall are 0 and NaN without positives; ``roc_auc`` is NaN with one class only.

    Args:
        y_true: 0/1 (or bool) labels, shape ``(n,)``.
        y_score: scores or predictions, shape ``(n,)``.
        failed_mask: bool ``(n,)``, True where the face was not found.
        threshold: decision threshold on ``y_score``.
    """
    y = _binary_labels(y_true)
    n = len(y)
    if n == 0:
        raise ValueError("binary_metrics needs at least one item")
    s = np.asarray(y_score, dtype=np.float64).ravel()
    if s.shape[0] != n:
        raise ValueError(f"y_score has {s.shape[0]} items, y_true {n}")
    failed = _as_bool_mask(failed_mask, n)
    ok = ~failed
    if np.isnan(s[ok]).any():
        raise ValueError("y_score has NaN for items not marked as failed")
    pred = np.where(ok, s >= threshold, 1 - y).astype(np.int64)
    tp = int(((pred == 1) & (y == 1)).sum())
    tn = int(((pred == 0) & (y == 0)).sum())
    fp = int(((pred == 1) & (y == 0)).sum())
    fn = int(((pred == 0) & (y == 1)).sum())
    n_pos, n_neg = tp + fn, tn + fp
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall_pos = tp / n_pos if n_pos else float("nan")
    recall_neg = tn / n_neg if n_neg else float("nan")
    if n_pos == 0:
        f1 = float("nan")
    else:
        f1 = 2 * precision * recall_pos / (precision + recall_pos) if precision + recall_pos else 0.0
    bal = float(np.nanmean([recall_pos, recall_neg]))

    scores = s.copy()
    if failed.any():
        valid = scores[ok]
        lo = (valid.min() - 1.0) if valid.size else -1.0
        hi = (valid.max() + 1.0) if valid.size else 1.0
        scores[failed] = np.where(y[failed] == 1, lo, hi)
    return {
        "n": n, "failed": int(failed.sum()), "accuracy": (tp + tn) / n, "balanced_accuracy": bal,
        "precision": float(precision), "recall_pos": float(recall_pos), "recall_neg": float(recall_neg),
        "f1": float(f1), "roc_auc": roc_auc(y, scores), "confusion": [[tn, fp], [fn, tp]],
    }


def balanced_threshold(y_true: Any, y_score: Any, lo: float = 0.02, hi: float = 0.98) -> float:
    """The score threshold that maximises balanced accuracy on held-out labels.

    For a rare attribute (eyeglasses: about 5% positive) 0.5 on a sigmoid trained with a
    positive weight is not where recall of both classes balances. Candidates are midpoints
    between sorted distinct scores, clipped to ``[lo, hi]``; among equally good thresholds
    the middle one of the best run is taken, so a handful of positives does not pin it to
    an edge. Returns 0.5 when either class is absent.

    Args:
        y_true: 0/1 labels.
        y_score: scores, higher = positive (e.g. sigmoid outputs).
    """
    y = _binary_labels(y_true)
    sc = np.asarray(y_score, np.float64)
    if y.min(initial=1) == y.max(initial=0) or len(y) == 0:
        return 0.5
    u = np.unique(sc)
    cands = np.clip(np.concatenate([[lo], (u[1:] + u[:-1]) / 2, [hi]]), lo, hi)
    cands = np.unique(cands)
    pos, neg = y == 1, y == 0
    pred = sc[None, :] >= cands[:, None]
    bal = 0.5 * (pred[:, pos].mean(1) + (~pred[:, neg]).mean(1))
    best = np.flatnonzero(bal >= bal.max() - 1e-12)
    return float(cands[best[len(best) // 2]])


def top1_accuracy(y_true: Any, y_pred: Any, failed_mask: Any = None) -> float:
    """Closed-set top-1 accuracy; failed items count as wrong.

    Args:
        y_true: class indices ``(n,)``.
        y_pred: predicted indices ``(n,)`` or scores/logits ``(n, n_classes)`` (argmax taken).
        failed_mask: bool ``(n,)``, True where the face was not found.
    """
    y = np.asarray(y_true).ravel()
    p = np.asarray(y_pred)
    if p.ndim == 2:
        p = p.argmax(axis=1)
    p = p.ravel()
    if len(y) == 0 or len(p) != len(y):
        raise ValueError(f"need matching non-empty inputs, got {len(y)} labels and {len(p)} predictions")
    correct = (p == y) & ~_as_bool_mask(failed_mask, len(y))
    return float(correct.mean())


def best_threshold(similarity: Any, same: Any) -> tuple[float, float]:
    """The similarity threshold maximising pair accuracy (``same`` iff ``sim >= threshold``).

    Candidates are midpoints between consecutive distinct similarities (plus one below the
    lowest and one above the highest); ties in accuracy go to the lowest threshold.

    Args:
        similarity: similarity of each pair ``(n,)``.
        same: True for same-person pairs ``(n,)``.

    Returns:
        ``(threshold, accuracy on these pairs)``.
    """
    s = np.asarray(similarity, dtype=np.float64).ravel()
    y = np.asarray(same, dtype=bool).ravel()
    u = np.unique(s)
    cand = np.r_[u[0] - 1e-6, (u[:-1] + u[1:]) / 2.0, u[-1] + 1e-6]
    s_same, s_diff = np.sort(s[y]), np.sort(s[~y])
    same_above = len(s_same) - np.searchsorted(s_same, cand, side="left")  # sim >= t
    diff_below = np.searchsorted(s_diff, cand, side="left")                # sim < t
    acc = (same_above + diff_below) / len(s)
    k = int(np.argmax(acc))
    return float(cand[k]), float(acc[k])


def make_pairs(labels: Any, n_pairs: int = 6000, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Balanced same/different-person pairs of item indices.

    Same pairs are drawn without replacement from all within-person pairs; as many different
    pairs are drawn at random (distinct, unordered). With too few same pairs available, both
    halves shrink to that number.

    Args:
        labels: person id per item ``(n,)``.
        n_pairs: total pairs wanted (half same, half different).
        seed: RNG seed.

    Returns:
        ``(pairs (P, 2) int, same (P,) bool)``.
    """
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels).ravel()
    _, inv = np.unique(labels, return_inverse=True)
    same_pairs = []
    for g in range(inv.max() + 1 if len(inv) else 0):
        idx = np.flatnonzero(inv == g)
        if len(idx) >= 2:
            a, b = np.triu_indices(len(idx), k=1)
            same_pairs.append(np.stack([idx[a], idx[b]], 1))
    if not same_pairs:
        raise ValueError("no person has two or more embeddings: cannot build same-person pairs")
    same_all = np.concatenate(same_pairs)
    n_same = min(n_pairs // 2, len(same_all))
    same_sel = same_all[rng.choice(len(same_all), n_same, replace=False)]
    diff: set[tuple[int, int]] = set()
    n = len(labels)
    while len(diff) < n_same:
        i, j = rng.integers(0, n, size=(2, 4 * n_same))
        for a, b in zip(i, j):
            if inv[a] != inv[b]:
                diff.add((min(a, b), max(a, b)))
                if len(diff) == n_same:
                    break
    diff_sel = np.array(sorted(diff), dtype=np.int64)
    pairs = np.concatenate([same_sel, diff_sel]).astype(np.int64)
    same = np.r_[np.ones(n_same, bool), np.zeros(n_same, bool)]
    return pairs, same


def verification_accuracy(embeddings: Any, labels: Any, pairs: Any = None, n_pairs: int = 6000,
                          seed: int = 0, n_folds: int = 10) -> dict[str, Any]:
    """Face verification accuracy with a cross-validated cosine-similarity threshold.

    LFW-style protocol: balanced same/different pairs (:func:`make_pairs`, 3,000 + 3,000 by
    default, as LFW's 6,000) are shuffled and split into ``n_folds`` folds; for each fold the
    threshold is fitted (:func:`best_threshold`) on the other folds and accuracy measured on the
    held-out fold. ``n_folds=2`` is "fit on one half, test on the other". Folds split pairs, not
    people (LFW's View 2 folds are person-disjoint); with a single fitted scalar the leak is small.

    Args:
        embeddings: ``(n, d)``; L2-normalised here.
        labels: person id per embedding ``(n,)``.
        pairs: optional ``(P, 2)`` index pairs to use instead of sampling.
        n_pairs: pairs to sample when ``pairs`` is None.
        seed: RNG seed for sampling and fold assignment.
        n_folds: cross-validation folds (>= 2).

    Returns:
        dict with ``accuracy`` (mean over folds), ``accuracy_std``, ``threshold`` (mean of the
        fold thresholds), ``fold_thresholds``, ``roc_auc`` (of the similarity over all pairs),
        ``n_pairs``, ``n_same``, ``n_folds``.
    """
    if n_folds < 2:
        raise ValueError("n_folds must be at least 2")
    e = np.asarray(embeddings, dtype=np.float64)
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    labels = np.asarray(labels).ravel()
    if pairs is None:
        pairs, same = make_pairs(labels, n_pairs, seed)
    else:
        pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
        same = labels[pairs[:, 0]] == labels[pairs[:, 1]]
    if len(pairs) < n_folds:
        raise ValueError(f"{len(pairs)} pairs are too few for {n_folds} folds")
    sim = np.einsum("ij,ij->i", e[pairs[:, 0]], e[pairs[:, 1]])
    order = np.random.default_rng(seed + 1).permutation(len(pairs))
    folds = np.array_split(order, n_folds)
    accs, ths = [], []
    for k in range(n_folds):
        test = folds[k]
        train = np.concatenate([folds[j] for j in range(n_folds) if j != k])
        t, _ = best_threshold(sim[train], same[train])
        accs.append(float(np.mean((sim[test] >= t) == same[test])))
        ths.append(t)
    return {"accuracy": float(np.mean(accs)), "accuracy_std": float(np.std(accs)),
            "threshold": float(np.mean(ths)), "fold_thresholds": ths,
            "roc_auc": roc_auc(same.astype(np.int64), sim), "n_pairs": int(len(pairs)),
            "n_same": int(same.sum()), "n_folds": n_folds}


def pair_similarity(embeddings: Any, pairs: Any) -> np.ndarray:
    """Cosine similarity of each index pair of ``embeddings`` (L2-normalised here).

    Args:
        embeddings: ``(n, d)``.
        pairs: ``(P, 2)`` item indices.

    Returns:
        ``(P,)`` float64 similarities.
    """
    e = np.asarray(embeddings, dtype=np.float64)
    e = e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12)
    pairs = np.asarray(pairs, dtype=np.int64).reshape(-1, 2)
    return np.einsum("ij,ij->i", e[pairs[:, 0]], e[pairs[:, 1]])


def _pair_inputs(similarity: Any, same: Any) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(similarity, dtype=np.float64).ravel()
    y = np.asarray(same, dtype=bool).ravel()
    if s.shape != y.shape:
        raise ValueError(f"similarity has {s.shape[0]} items, same {y.shape[0]}")
    if np.isnan(s).any():
        raise ValueError("similarity has NaN")
    if not y.any() or y.all():
        raise ValueError("need at least one same-person and one different-person pair")
    return s, y


def verification_roc(similarity: Any, same: Any) -> dict[str, Any]:
    """ROC of pair similarities: false- and true-accept rate at every threshold.

    A pair is accepted as the same person iff ``similarity >= threshold``. The thresholds are
    ``+inf`` (nothing accepted: FAR = TAR = 0) followed by every distinct similarity in
    decreasing order (the lowest accepts everything: FAR = TAR = 1), so FAR and TAR never
    decrease along the arrays.

    Args:
        similarity: similarity of each pair ``(n,)``.
        same: True for same-person pairs ``(n,)``; both kinds must be present.

    Returns:
        dict with arrays ``threshold``, ``far`` (false accepts / different-person pairs),
        ``tar`` (true accepts / same-person pairs), ``n_false_accept``, ``n_true_accept``
        (int counts), and ``n_same``, ``n_diff``.
    """
    s, y = _pair_inputs(similarity, same)
    thr = np.r_[np.inf, np.unique(s)[::-1]]
    s_same, s_diff = np.sort(s[y]), np.sort(s[~y])
    n_same, n_diff = len(s_same), len(s_diff)
    ta = n_same - np.searchsorted(s_same, thr, side="left")  # sim >= t
    fa = n_diff - np.searchsorted(s_diff, thr, side="left")
    return {"threshold": thr, "far": fa / n_diff, "tar": ta / n_same, "n_false_accept": fa.astype(np.int64),
            "n_true_accept": ta.astype(np.int64), "n_same": n_same, "n_diff": n_diff}


def tar_at_far(similarity: Any, same: Any, far: float = 0.01) -> dict[str, Any]:
    """The operating point at a stated false-accept rate: the lowest threshold whose FAR <= ``far``.

    Candidate thresholds are those of :func:`verification_roc` (the observed similarities, and
    ``+inf`` when even the highest one lets too many different-person pairs through). With
    ``n_diff`` different-person pairs at most ``floor(far * n_diff)`` of them may be accepted;
    ties in similarity are accepted together, so the FAR reached can be lower than ``far``.

    Args:
        similarity: similarity of each pair ``(n,)``.
        same: True for same-person pairs ``(n,)``; both kinds must be present.
        far: the false-accept rate allowed, in ``[0, 1]``.

    Returns:
        dict with ``threshold`` (accept iff ``similarity >= threshold``), ``far`` (reached),
        ``tar``, ``far_target``, ``n_false_accept``, ``n_diff``, ``n_true_accept``, ``n_same``.
    """
    if not 0.0 <= far <= 1.0:
        raise ValueError(f"far must be in [0, 1], got {far}")
    r = verification_roc(similarity, same)
    allowed = np.floor(far * r["n_diff"] + 1e-9)  # a float product like 0.07 * 100 may land just below 7
    k = int(np.flatnonzero(r["n_false_accept"] <= allowed)[-1])  # FAR rises along the arrays; index 0 has none
    return {"threshold": float(r["threshold"][k]), "far": float(r["far"][k]), "tar": float(r["tar"][k]),
            "far_target": float(far), "n_false_accept": int(r["n_false_accept"][k]), "n_diff": int(r["n_diff"]),
            "n_true_accept": int(r["n_true_accept"][k]), "n_same": int(r["n_same"])}
