"""Attribute and identity metrics against hand-computed values."""
from __future__ import annotations

import math

import numpy as np
import pytest

from facebatch.attributes.metrics import (BINARY_KEYS, average_ranks, balanced_threshold, best_threshold, binary_metrics,
                                          make_pairs, pair_similarity, roc_auc, tar_at_far, top1_accuracy,
                                          verification_accuracy, verification_roc)

NAN = float("nan")


def test_average_ranks_and_auc_with_ties():
    np.testing.assert_array_equal(average_ranks([10, 20, 20, 5]), [2, 3.5, 3.5, 1])
    # pos (0.9, 0.4, 0.6) vs neg (0.3, 0.6, 0.1, 0.2): 4 + 3 + 3.5 (one tie) = 10.5 of 12 pairs
    assert roc_auc([1, 1, 1, 0, 0, 0, 0], [0.9, 0.4, 0.6, 0.3, 0.6, 0.1, 0.2]) == pytest.approx(10.5 / 12)
    assert roc_auc([1, 0], [0.5, 0.5]) == 0.5
    assert roc_auc([0, 1], [0.1, 0.9]) == 1.0 and roc_auc([0, 1], [0.9, 0.1]) == 0.0
    assert math.isnan(roc_auc([1, 1], [0.1, 0.9]))


def test_binary_metrics_by_hand_with_failures():
    y = [1, 1, 1, 0, 0, 0, 1, 0, 0]
    s = [0.9, 0.4, 0.6, 0.3, 0.6, 0.1, NAN, 0.99, 0.2]
    failed = [0, 0, 0, 0, 0, 0, 1, 1, 0]  # a missed positive and a missed negative: both wrong
    m = binary_metrics(y, s, failed_mask=failed)
    assert tuple(m) == BINARY_KEYS
    # TP: 0, 2   FN: 1, 6(failed)   TN: 3, 5, 8   FP: 4, 7(failed, its score ignored)
    assert m["confusion"] == [[3, 2], [2, 2]]
    assert (m["n"], m["failed"]) == (9, 2)
    assert m["accuracy"] == pytest.approx(5 / 9)
    assert m["precision"] == 0.5 and m["recall_pos"] == 0.5 and m["recall_neg"] == pytest.approx(0.6)
    assert m["balanced_accuracy"] == pytest.approx(0.55) and m["f1"] == pytest.approx(0.5)
    # failed positive ranks below everything, failed negative above: 4 + 3 + 3.5 + 0 of 4 x 5 pairs
    assert m["roc_auc"] == pytest.approx(10.5 / 20)
    ok = binary_metrics(y[:6] + [0], s[:6] + [0.2])
    assert ok["roc_auc"] == pytest.approx(10.5 / 12) and ok["failed"] == 0


def test_binary_metrics_logits_predictions_and_edge_cases():
    m = binary_metrics([True, False, True], [2.0, -1.0, -0.5], threshold=0.0)  # logits
    assert m["confusion"] == [[1, 0], [1, 1]] and m["precision"] == 1.0 and m["recall_pos"] == 0.5
    hard = binary_metrics([1, 0, 1, 0], [1, 1, 1, 0])
    assert hard["confusion"] == [[1, 1], [0, 2]] and hard["roc_auc"] == pytest.approx(0.75)
    none_pred = binary_metrics([1, 0], [0.1, 0.2])
    assert none_pred["precision"] == 0.0 and none_pred["f1"] == 0.0
    only_neg = binary_metrics([0, 0, 0], [0.1, 0.7, 0.2])
    assert math.isnan(only_neg["recall_pos"]) and math.isnan(only_neg["roc_auc"])
    assert only_neg["balanced_accuracy"] == pytest.approx(2 / 3)  # the defined recall only
    all_failed = binary_metrics([1, 0], [NAN, NAN], failed_mask=[True, True])
    assert all_failed["accuracy"] == 0.0 and all_failed["roc_auc"] == 0.0
    with pytest.raises(ValueError, match="only 0 and 1"):
        binary_metrics([1, -1], [0.2, 0.3])
    with pytest.raises(ValueError, match="NaN"):
        binary_metrics([1, 0], [NAN, 0.3])
    with pytest.raises(ValueError, match="failed_mask"):
        binary_metrics([1, 0], [0.1, 0.3], failed_mask=[True])


def test_top1_accuracy():
    logits = np.array([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5], [0.0, 0.0, 1.0]])
    assert top1_accuracy([1, 0, 1, 2], logits) == 0.75
    assert top1_accuracy([1, 0, 1, 2], logits, failed_mask=[False, True, False, False]) == 0.5
    assert top1_accuracy([3, 4], [3, 5]) == 0.5


def test_best_threshold_by_hand():
    assert best_threshold([0.9, 0.8, 0.3, 0.2], [True, True, False, False]) == (pytest.approx(0.55), 1.0)
    # overlap: t = 0.3 and t = 0.75 both give 3/4; the lower one wins
    t, acc = best_threshold([0.9, 0.5, 0.6, 0.1], [True, True, False, False])
    assert t == pytest.approx(0.3) and acc == 0.75


def test_make_pairs_is_balanced_and_valid():
    labels = np.repeat(np.arange(10), 4)  # 10 people x 4 -> 60 possible same pairs
    pairs, same = make_pairs(labels, n_pairs=100, seed=3)
    assert len(pairs) == 100 and same.sum() == 50
    assert np.all((labels[pairs[:, 0]] == labels[pairs[:, 1]]) == same)
    assert len({tuple(p) for p in pairs}) == 100 and np.all(pairs[:, 0] != pairs[:, 1])
    small, s_small = make_pairs(labels, n_pairs=1000, seed=3)  # only 60 same pairs exist
    assert len(small) == 120 and s_small.sum() == 60
    with pytest.raises(ValueError, match="two or more"):
        make_pairs([1, 2, 3])


def _clusters(n_people: int, per: int, dim: int, noise: float, seed: int):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(n_people, dim))
    labels = np.repeat(np.arange(n_people), per)
    return centres[labels] + noise * rng.normal(size=(len(labels), dim)), labels


def test_verification_accuracy_separable_and_random():
    emb, labels = _clusters(30, 6, 32, 0.1, seed=0)
    r = verification_accuracy(emb, labels, n_pairs=600, seed=1, n_folds=10)
    assert r["accuracy"] == 1.0 and r["n_pairs"] == 600 and r["n_same"] == 300 and len(r["fold_thresholds"]) == 10
    assert 0.0 < r["threshold"] < 0.99 and r["roc_auc"] == 1.0
    assert verification_accuracy(emb, labels, n_pairs=600, seed=1) == r  # deterministic
    noise, _ = _clusters(180, 1, 32, 0.0, seed=5)  # embeddings unrelated to the labels
    rr = verification_accuracy(noise, labels, n_pairs=600, seed=1, n_folds=2)
    assert 0.35 < rr["accuracy"] < 0.65 and rr["n_folds"] == 2
    with pytest.raises(ValueError, match="n_folds"):
        verification_accuracy(emb, labels, n_folds=1)


def test_verification_with_given_pairs():
    emb = np.array([[1, 0], [0.9, 0.1], [0, 1], [0.1, 0.9]], dtype=float)
    labels = np.array([0, 0, 1, 1])
    pairs = [[0, 1], [2, 3], [0, 2], [1, 3]] * 3
    r = verification_accuracy(emb, labels, pairs=pairs, n_folds=3)
    assert r["accuracy"] == 1.0 and r["n_same"] == 6


def test_confusion_png(tmp_path):
    from PIL import Image

    from facebatch.attributes.plots import save_confusion_png

    m = binary_metrics([1, 1, 0, 0, 1], [0.9, 0.2, 0.1, 0.7, 0.8])
    p = save_confusion_png(m["confusion"], tmp_path / "plots" / "smile.png", labels=("no", "smile"), title="smile")
    with Image.open(p) as im:
        assert im.format == "PNG" and im.size[0] > 200 and im.size[1] > 200
    with pytest.raises(ValueError):
        save_confusion_png([[1, 2]], tmp_path / "bad.png")


def test_balanced_threshold_separates_a_rare_class():
    # 3 positives among 20; scores separate them at 0.2-0.3, far from 0.5
    neg = np.linspace(0.0, 0.18, 17)
    y = [0] * 17 + [1, 1, 1]
    t = balanced_threshold(y, np.concatenate([neg, [0.3, 0.35, 0.9]]))
    assert 0.18 < t <= 0.3
    m = binary_metrics(y, np.concatenate([neg, [0.3, 0.35, 0.9]]), threshold=t)
    assert m["balanced_accuracy"] == 1.0
    assert binary_metrics(y, np.concatenate([neg, [0.3, 0.35, 0.9]]))["balanced_accuracy"] < 1.0
    # one class only: no information, keep 0.5; thresholds stay inside [lo, hi]
    assert balanced_threshold([1, 1], [0.2, 0.3]) == 0.5
    assert 0.02 <= balanced_threshold([0, 1], [0.0, 0.001]) <= 0.98


# 4 same-person pairs (0.9, 0.8, 0.6, 0.4) and 5 different-person pairs (0.7, 0.5, 0.3, 0.2, 0.1)
ROC_SIM = [0.9, 0.7, 0.8, 0.5, 0.6, 0.3, 0.4, 0.2, 0.1]
ROC_SAME = [True, False, True, False, True, False, True, False, False]


def test_verification_roc_by_hand():
    r = verification_roc(ROC_SIM, ROC_SAME)
    np.testing.assert_array_equal(r["threshold"], [np.inf, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2, 0.1])
    np.testing.assert_array_equal(r["n_true_accept"], [0, 1, 2, 2, 3, 3, 4, 4, 4, 4])
    np.testing.assert_array_equal(r["n_false_accept"], [0, 0, 0, 1, 1, 2, 2, 3, 4, 5])
    np.testing.assert_array_equal(r["tar"], np.array([0, 1, 2, 2, 3, 3, 4, 4, 4, 4]) / 4)
    np.testing.assert_array_equal(r["far"], np.array([0, 0, 0, 1, 1, 2, 2, 3, 4, 5]) / 5)
    assert (r["n_same"], r["n_diff"]) == (4, 5)
    # ties: one threshold per distinct similarity, a tied same/different pair accepted together
    t = verification_roc([0.5, 0.5, 0.9, 0.2], [True, False, True, False])
    np.testing.assert_array_equal(t["threshold"], [np.inf, 0.9, 0.5, 0.2])
    np.testing.assert_array_equal(t["n_true_accept"], [0, 1, 2, 2])
    np.testing.assert_array_equal(t["n_false_accept"], [0, 0, 1, 2])
    with pytest.raises(ValueError, match="same-person and one different"):
        verification_roc([0.1, 0.2], [True, True])
    with pytest.raises(ValueError, match="NaN"):
        verification_roc([NAN, 0.2], [True, False])
    with pytest.raises(ValueError, match="items"):
        verification_roc([0.1, 0.2, 0.3], [True, False])


def test_tar_at_far_by_hand():
    def point(far):
        r = tar_at_far(ROC_SIM, ROC_SAME, far)
        return r["threshold"], r["far"], r["tar"], r["n_false_accept"], r["n_true_accept"]
    assert point(0.0) == (0.8, 0.0, 0.5, 0, 2)    # the lowest threshold with no false accept
    assert point(0.2) == (0.6, 0.2, 0.75, 1, 3)   # one of 5 different pairs may pass
    assert point(0.25) == (0.6, 0.2, 0.75, 1, 3)  # floor(0.25 * 5) = 1
    assert point(0.4) == (0.4, 0.4, 1.0, 2, 4)
    assert point(1.0) == (0.1, 1.0, 1.0, 5, 4)
    r = tar_at_far(ROC_SIM, ROC_SAME)  # default 1%: 0.05 of 5 pairs rounds down to none
    assert r == {"threshold": 0.8, "far": 0.0, "tar": 0.5, "far_target": 0.01, "n_false_accept": 0, "n_diff": 5,
                 "n_true_accept": 2, "n_same": 4}
    # two different pairs tied at 0.6: accepting one accepts both, over 1 of 4, so the threshold stays above
    tie = tar_at_far([0.7, 0.6, 0.6, 0.6, 0.1, 0.0], [True, True, False, False, False, False], far=0.25)
    assert (tie["threshold"], tie["far"], tie["tar"], tie["n_false_accept"]) == (0.7, 0.0, 0.5, 0)
    # the highest similarity is a different pair: only +inf (accept nothing) meets FAR 0
    top = tar_at_far([0.5, 0.9, 0.1], [True, False, False], far=0.0)
    assert top["threshold"] == np.inf and top["tar"] == 0.0 and top["n_false_accept"] == 0
    # 0.29 * 100 is 28.999999999999996 in floats; 29 false accepts of 100 are still allowed
    diff = np.linspace(0.0, 0.99, 100)
    r29 = tar_at_far(np.r_[[1.5, 2.0], diff], np.r_[[True, True], np.zeros(100, bool)], far=0.29)
    assert r29["n_false_accept"] == 29 and r29["threshold"] == diff[-29] and r29["far"] == 0.29
    with pytest.raises(ValueError, match="far"):
        tar_at_far(ROC_SIM, ROC_SAME, far=1.5)


def test_pair_similarity_matches_verification_accuracy():
    np.testing.assert_allclose(pair_similarity([[3.0, 0.0], [0.0, 2.0], [1.0, 1.0]], [[0, 1], [0, 2], [2, 2]]),
                               [0.0, np.sqrt(0.5), 1.0])
    emb, labels = _clusters(10, 4, 8, 0.5, seed=3)
    pairs, same = make_pairs(labels, 60, seed=0)
    sim = pair_similarity(emb, pairs)
    assert verification_accuracy(emb, labels, pairs=pairs, n_folds=3)["roc_auc"] == roc_auc(same, sim)
