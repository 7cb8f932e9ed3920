"""Tests for m3trt.metrics: hand-computed examples (arithmetic in comments) and scikit-learn
cross-checks on random data, including tied scores."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from m3trt import metrics as m


@pytest.fixture
def sk_metrics():
    """scikit-learn is a dev-only reference; its absence skips only the cross-checks."""
    return pytest.importorskip("sklearn.metrics")


# --------------------------------------------------------------------------- decoding


def test_rank_labels_descending_with_ties_to_lower_index() -> None:
    scores = np.array([[0.2, 0.9, 0.2, 0.9], [0.5, 0.5, 0.5, 0.5]])
    # Row 0: 0.9 at 1 and 3 (1 first), then 0.2 at 0 and 2 (0 first).
    # Row 1: all tied -> index order.
    np.testing.assert_array_equal(m.rank_labels(scores), [[1, 3, 0, 2], [0, 1, 2, 3]])


def test_rank_labels_ties_stable_on_wide_rows() -> None:
    # Wide rows with 3 distinct values: an unstable sort (numpy's introsort beyond 16 items)
    # would scramble tied labels. Reference: sort by (-score, index).
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 3, size=(4, 300)).astype(np.float64)
    idx = np.arange(300)
    expected = np.stack([np.lexsort((idx, -row)) for row in scores])
    np.testing.assert_array_equal(m.rank_labels(scores), expected)
    mask = m.topk_mask(scores, 50)
    for row, ranked in zip(mask, expected, strict=True):
        assert set(np.flatnonzero(row)) == set(ranked[:50])


def test_rank_labels_rejects_nan_and_1d() -> None:
    with pytest.raises(ValueError, match="NaN"):
        m.rank_labels(np.array([[0.1, np.nan]]))
    with pytest.raises(ValueError, match="2-D"):
        m.rank_labels(np.array([0.1, 0.2]))


def test_topk_mask_ties_lower_index_wins() -> None:
    scores = np.array([[0.3, 0.7, 0.7, 0.7]])
    # Three labels tie at 0.7; top-2 takes indices 1 and 2, not 3.
    np.testing.assert_array_equal(m.topk_mask(scores, 2), [[False, True, True, False]])


def test_topk_mask_per_image_k_zero_and_larger_than_c() -> None:
    scores = np.array([[0.1, 0.9, 0.5], [0.8, 0.2, 0.4], [0.3, 0.2, 0.1]])
    mask = m.topk_mask(scores, np.array([1, 0, 7]))
    np.testing.assert_array_equal(
        mask,
        [
            [False, True, False],  # k=1 -> label 1 (0.9)
            [False, False, False],  # k=0 -> nothing
            [True, True, True],  # k=7 > C=3 -> clamped to all labels
        ],
    )
    assert m.topk_mask(scores, 10).all()
    assert not m.topk_mask(scores, 0).any()


def test_topk_mask_accepts_integral_floats_and_rejects_bad_k() -> None:
    scores = np.array([[0.1, 0.9], [0.8, 0.2]])
    np.testing.assert_array_equal(
        m.topk_mask(scores, np.array([1.0, 2.0])), [[False, True], [True, True]]
    )
    with pytest.raises(ValueError, match=">= 0"):
        m.topk_mask(scores, -1)
    with pytest.raises(ValueError, match=">= 0"):
        m.topk_mask(scores, np.array([1, -2]))
    with pytest.raises(ValueError, match="whole numbers"):
        m.topk_mask(scores, np.array([1.5, 1.0]))
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        m.topk_mask(scores, np.array([1, 1, 1]))


def test_threshold_mask_is_inclusive() -> None:
    scores = np.array([[0.49, 0.5, 0.51]])
    np.testing.assert_array_equal(m.threshold_mask(scores, 0.5), [[False, True, True]])
    with pytest.raises(ValueError, match="NaN"):
        m.threshold_mask(scores, float("nan"))


@pytest.mark.parametrize(
    ("q", "expected"),
    [
        (1.49, 1),  # floor(1.99) = 1
        (1.5, 2),  # floor(2.0) = 2
        (2.5, 3),  # floor(3.0) = 3 (np.round would give 2)
        (3.49, 3),
        (0.2, 1),  # below 1 -> clamped to 1
        (-4.0, 1),
        (9.7, 5),  # above k_max=5 -> 5
        (5.0, 5),
    ],
)
def test_decode_quantity_rounding_and_clamping(q: float, expected: int) -> None:
    out = m.decode_quantity(np.array([q]), 5)
    assert out.dtype == np.int64
    assert out.tolist() == [expected]


def test_decode_quantity_vector_and_errors() -> None:
    assert m.decode_quantity([0.5, 1.5, 2.5, 3.5], 10).tolist() == [1, 2, 3, 4]
    with pytest.raises(ValueError, match="NaN"):
        m.decode_quantity(np.array([1.0, np.nan]), 5)
    with pytest.raises(ValueError, match="k_max"):
        m.decode_quantity(np.array([1.0]), 0)
    with pytest.raises(ValueError, match="1-D"):
        m.decode_quantity(np.ones((2, 2)), 3)


def test_decode_modes() -> None:
    scores = np.array([[0.9, 0.6, 0.6, 0.1], [0.2, 0.4, 0.8, 0.55]])
    # Ranking: row 0 -> 0, 1, 2, 3 (1 beats 2 on the tie); row 1 -> 2, 3, 1, 0.
    k = np.array([1, 3])
    np.testing.assert_array_equal(
        m.decode(scores, "predicted_k", k=k), [[1, 0, 0, 0], [0, 1, 1, 1]]
    )
    top3 = [[1, 1, 1, 0], [0, 1, 1, 1]]
    np.testing.assert_array_equal(m.decode(scores, "top3"), top3)
    np.testing.assert_array_equal(m.decode(scores, "fixed_k"), top3)
    np.testing.assert_array_equal(m.decode(scores, "top2", fixed_k=2), [[1, 1, 0, 0], [0, 0, 1, 1]])
    np.testing.assert_array_equal(
        m.decode(scores, "threshold", threshold=0.55), [[1, 1, 1, 0], [0, 0, 1, 1]]
    )
    np.testing.assert_array_equal(
        m.decode(scores, "oracle_k", true_counts=np.array([2, 0])), [[1, 1, 0, 0], [0, 0, 0, 0]]
    )


def test_decode_errors() -> None:
    scores = np.array([[0.9, 0.1]])
    with pytest.raises(ValueError, match="needs k"):
        m.decode(scores, "predicted_k")
    with pytest.raises(ValueError, match="needs true_counts"):
        m.decode(scores, "oracle_k")
    with pytest.raises(ValueError, match="unknown decode mode"):
        m.decode(scores, "bogus")
    with pytest.raises(ValueError, match="unknown decode mode"):
        m.decode(scores, "top5", fixed_k=3)  # the name must agree with fixed_k


# --------------------------------------------------------------------------- label metrics

# N=4 images, C=3 classes.
Y_TRUE = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]], dtype=bool)
Y_PRED = np.array([[1, 1, 0], [0, 1, 1], [1, 0, 0], [1, 0, 1]], dtype=bool)
# class 0: true {0,2}, pred {0,2,3} -> TP 2, FP 1, FN 0 -> P 2/3, R 1,   F1 2*(2/3)/(5/3) = 0.8
# class 1: true {1,2}, pred {0,1}   -> TP 1, FP 1, FN 1 -> P 1/2, R 1/2, F1 1/2
# class 2: true {0,3}, pred {1,3}   -> TP 1, FP 1, FN 1 -> P 1/2, R 1/2, F1 1/2


def test_per_class_counts_hand_example() -> None:
    tp, fp, fn = m.per_class_counts(Y_TRUE, Y_PRED)
    assert tp.tolist() == [2, 1, 1]
    assert fp.tolist() == [1, 1, 1]
    assert fn.tolist() == [0, 1, 1]


def test_label_metrics_hand_example() -> None:
    got = m.label_metrics(Y_TRUE, Y_PRED)
    assert list(got) == ["CP", "CR", "CF1", "OP", "OR", "OF1", "mean_class_F1"]
    assert all(type(v) is float for v in got.values())
    # CP = (2/3 + 1/2 + 1/2) / 3 = 5/9;  CR = (1 + 1/2 + 1/2) / 3 = 2/3
    # CF1 = 2 (5/9)(2/3) / (5/9 + 6/9) = (20/27) / (11/9) = 20/33
    # OP = 4 / (4 + 3) = 4/7;  OR = 4 / (4 + 2) = 2/3
    # OF1 = 2 (4/7)(2/3) / (4/7 + 2/3) = (16/21) / (26/21) = 8/13
    # mean_class_F1 = (0.8 + 0.5 + 0.5) / 3 = 0.6  (differs from CF1 = 0.6061)
    expected = {
        "CP": 5 / 9,
        "CR": 2 / 3,
        "CF1": 20 / 33,
        "OP": 4 / 7,
        "OR": 2 / 3,
        "OF1": 8 / 13,
        "mean_class_F1": 0.6,
    }
    assert got == pytest.approx(expected, abs=1e-12)


def test_label_metrics_zero_over_zero_class_counts_as_zero() -> None:
    y_true = np.array([[1, 0], [1, 0]])
    y_pred = np.array([[1, 0], [0, 0]])
    # class 0: TP 1, FP 0, FN 1 -> P 1, R 1/2, F1 2/3
    # class 1: no positives, no predictions -> P = R = F1 = 0/0 = 0, still averaged in
    # CP = (1 + 0)/2 = 1/2; CR = (1/2 + 0)/2 = 1/4; CF1 = 2 (1/2)(1/4) / (3/4) = 1/3
    # OP = 1/1 = 1; OR = 1/2; OF1 = 2/3; mean_class_F1 = (2/3 + 0)/2 = 1/3
    got = m.label_metrics(y_true, y_pred)
    assert got == pytest.approx(
        {
            "CP": 0.5,
            "CR": 0.25,
            "CF1": 1 / 3,
            "OP": 1.0,
            "OR": 0.5,
            "OF1": 2 / 3,
            "mean_class_F1": 1 / 3,
        },
        abs=1e-12,
    )


def test_label_metrics_nothing_predicted_is_all_zero() -> None:
    got = m.label_metrics(Y_TRUE, np.zeros_like(Y_TRUE))
    assert got == dict.fromkeys(m.LABEL_METRIC_KEYS, 0.0)


def test_label_metrics_perfect_prediction_is_all_one() -> None:
    got = m.label_metrics(Y_TRUE, Y_TRUE)
    assert got == dict.fromkeys(m.LABEL_METRIC_KEYS, 1.0)


def test_label_metrics_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="same shape"):
        m.label_metrics(Y_TRUE, Y_PRED[:, :2])
    with pytest.raises(ValueError, match="0/1"):
        m.label_metrics(Y_TRUE, Y_PRED * 0.7)
    with pytest.raises(ValueError, match="2-D"):
        m.label_metrics(Y_TRUE[0], Y_PRED[0])


@pytest.mark.parametrize("seed", range(20))
def test_per_class_and_averages_match_sklearn(seed: int, sk_metrics) -> None:
    rng = np.random.default_rng(seed)
    # C >= 2: sklearn reads a single column as binary, not multilabel.
    n, c = int(rng.integers(1, 30)), int(rng.integers(2, 8))
    # Sparse labels so some classes have no positives and/or no predictions (0/0 cases).
    y_true = rng.random((n, c)) < 0.25
    y_pred = rng.random((n, c)) < 0.25
    p, r, f1 = m.per_class_prf(y_true, y_pred)
    sp, sr, sf, _ = sk_metrics.precision_recall_fscore_support(
        y_true, y_pred, average=None, zero_division=0
    )
    np.testing.assert_allclose(p, sp, atol=1e-12)
    np.testing.assert_allclose(r, sr, atol=1e-12)
    np.testing.assert_allclose(f1, sf, atol=1e-12)

    got = m.label_metrics(y_true, y_pred)
    mp, mr, mf, _ = sk_metrics.precision_recall_fscore_support(
        y_true, y_pred, average="micro", zero_division=0
    )
    assert (got["OP"], got["OR"], got["OF1"]) == pytest.approx((mp, mr, mf), abs=1e-12)
    # sklearn's macro precision/recall are CP/CR; its macro F1 is the mean per-class F1.
    ap_, ar_, af_, _ = sk_metrics.precision_recall_fscore_support(
        y_true, y_pred, average="macro", zero_division=0
    )
    assert (got["CP"], got["CR"], got["mean_class_F1"]) == pytest.approx((ap_, ar_, af_), abs=1e-12)


# --------------------------------------------------------------------------- ranking metrics


def test_average_precision_hand_example() -> None:
    # Ranked: + (0.8), - (0.6), + (0.4); P@1 = 1 at R = 1/2, P@3 = 2/3 at R = 1
    # AP = 1/2 * 1 + 1/2 * 2/3 = 5/6
    assert m.average_precision([1, 0, 1], [0.8, 0.6, 0.4]) == pytest.approx(5 / 6, abs=1e-12)


def test_average_precision_groups_ties_into_one_threshold() -> None:
    y = np.array([1, 0, 1, 0, 1])
    s = np.array([0.9, 0.9, 0.5, 0.5, 0.1])
    # >= 0.9: TP 1, FP 1 -> P 1/2, R 1/3
    # >= 0.5: TP 2, FP 2 -> P 1/2, R 2/3
    # >= 0.1: TP 3, FP 2 -> P 3/5, R 1
    # AP = 1/3 * 1/2 + 1/3 * 1/2 + 1/3 * 3/5 = 8/15  (ignoring ties would give 0.7556)
    assert m.average_precision(y, s) == pytest.approx(8 / 15, abs=1e-12)
    # Swapping items within tie groups cannot change it.
    assert m.average_precision(y[[1, 0, 3, 2, 4]], s) == pytest.approx(8 / 15, abs=1e-12)


def test_average_precision_edge_cases() -> None:
    assert m.average_precision([1, 1], [0.3, 0.1]) == 1.0
    assert m.average_precision([0, 0, 0], [0.3, 0.2, 0.1]) == 0.0  # no positives
    # All scores tied: one threshold, P = 2/4, R = 1 -> AP = 1/2
    assert m.average_precision([1, 0, 1, 0], [0.5] * 4) == pytest.approx(0.5, abs=1e-12)
    with pytest.raises(ValueError, match="NaN"):
        m.average_precision([1, 0], [np.nan, 0.1])
    with pytest.raises(ValueError, match="equal length"):
        m.average_precision([1, 0], [0.1, 0.2, 0.3])


def test_average_precision_matches_sklearn_with_ties_many_seeds(sk_metrics) -> None:
    checked = 0
    for seed in range(300):
        rng = np.random.default_rng(seed)
        n = int(rng.integers(1, 60))
        y = rng.random(n) < rng.uniform(0.05, 0.9)
        if not y.any():
            continue
        scores = np.round(rng.random(n), 1)  # 11 distinct values -> many ties
        expected = sk_metrics.average_precision_score(y, scores)
        assert m.average_precision(y, scores) == pytest.approx(expected, rel=1e-12, abs=1e-15)
        checked += 1
    assert checked > 250


def test_average_precision_matches_sklearn_float32_and_ints(sk_metrics) -> None:
    rng = np.random.default_rng(7)
    y = rng.random(200) < 0.3
    s32 = rng.random(200).astype(np.float32)
    assert m.average_precision(y, s32) == pytest.approx(
        sk_metrics.average_precision_score(y, s32), rel=1e-12
    )
    s_int = rng.integers(0, 5, size=200).astype(np.uint8)  # -s would wrap for uint8
    assert m.average_precision(y, s_int) == pytest.approx(
        sk_metrics.average_precision_score(y, s_int), rel=1e-12
    )


def test_mean_average_precision_excludes_and_counts_classes_without_positives() -> None:
    y = np.array([[1, 0, 0], [0, 0, 1], [1, 0, 1]])
    s = np.array([[0.8, 0.1, 0.2], [0.6, 0.5, 0.9], [0.4, 0.3, 0.7]])
    # class 0: y [1,0,1], s [0.8,0.6,0.4] -> AP 5/6 (see hand example above)
    # class 1: no positives -> excluded, counted
    # class 2: y [0,1,1], s [0.2,0.9,0.7] -> both positives ranked first -> AP 1
    # mAP = (5/6 + 1) / 2 = 11/12
    mean_ap, n_excluded = m.mean_average_precision(y, s)
    assert mean_ap == pytest.approx(11 / 12, abs=1e-12)
    assert n_excluded == 1
    assert type(mean_ap) is float and type(n_excluded) is int


def test_mean_average_precision_no_positives_at_all() -> None:
    assert m.mean_average_precision(np.zeros((3, 4)), np.ones((3, 4))) == (0.0, 4)


@pytest.mark.parametrize("seed", range(10))
def test_mean_average_precision_matches_sklearn_macro(seed: int, sk_metrics) -> None:
    rng = np.random.default_rng(seed)
    y = rng.random((40, 6)) < 0.3
    y[:, 0] = False  # one class without positives
    scores = np.round(rng.random((40, 6)), 1)
    keep = y.any(axis=0)
    expected = sk_metrics.average_precision_score(y[:, keep], scores[:, keep], average="macro")
    mean_ap, n_excluded = m.mean_average_precision(y, scores)
    assert mean_ap == pytest.approx(expected, rel=1e-12)
    assert n_excluded == int((~keep).sum())


# --------------------------------------------------------------------------- quantity


def test_quantity_metrics_hand_example() -> None:
    k = np.array([1, 2, 3, 3])
    counts = np.array([1, 3, 3, 1])
    q = np.array([1.2, 2.4, 2.5, 3.0])
    # acc: matches at 0 and 2 -> 2/4 = 0.5
    # mae: (0 + 1 + 0 + 2) / 4 = 0.75
    # mae_raw: (0.2 + 0.6 + 0.5 + 2.0) / 4 = 0.825
    got = m.quantity_metrics(k, counts, q)
    assert got == pytest.approx({"acc": 0.5, "mae": 0.75, "mae_raw": 0.825}, abs=1e-12)
    assert set(m.quantity_metrics(k, counts)) == {"acc", "mae"}


def test_quantity_metrics_errors() -> None:
    with pytest.raises(ValueError, match="shape"):
        m.quantity_metrics([1, 2], [1, 2, 3])
    with pytest.raises(ValueError, match="NaN"):
        m.quantity_metrics([1, 2], [1, 2], [1.0, np.nan])


# --------------------------------------------------------------------------- evaluate

E_TRUE = np.array([[1, 0, 0], [0, 1, 1]], dtype=np.float32)  # float multi-hot, as the data yields
E_SCORES = np.array([[0.9, 0.8, 0.1], [0.2, 0.7, 0.6]])


def test_evaluate_shape_keys_and_values() -> None:
    result = m.evaluate(E_TRUE, E_SCORES, k=np.array([1, 1]), q=np.array([0.8, 1.4]))
    assert list(result) == ["n_images", "mAP", "n_classes_without_positives", "quantity", "modes"]
    assert list(result["modes"]) == ["predicted_k", "top3", "threshold", "oracle_k"]
    for metrics in result["modes"].values():
        assert list(metrics) == list(m.LABEL_METRIC_KEYS)
    json.dumps(result)  # JSON-ready: plain Python numbers only
    assert result["n_images"] == 2
    assert result["n_classes_without_positives"] == 0
    # AP: class 0 y [1,0] s [.9,.2] -> 1; class 1 y [0,1] s [.8,.7] -> P 1/2 at R 1 -> 1/2;
    # class 2 y [0,1] s [.1,.6] -> 1.  mAP = 2.5 / 3 = 5/6
    assert result["mAP"] == pytest.approx(5 / 6, abs=1e-12)
    # true counts [1, 2]; k [1, 1] -> acc 1/2, mae 1/2; mae_raw (0.2 + 0.6) / 2 = 0.4
    assert result["quantity"] == pytest.approx({"acc": 0.5, "mae": 0.5, "mae_raw": 0.4})
    modes = result["modes"]
    # oracle_k: img0 top1 {0}, img1 top2 {1,2} -> perfect
    assert modes["oracle_k"] == dict.fromkeys(m.LABEL_METRIC_KEYS, 1.0)
    # top3 = every label: each class TP 1, FP 1 -> P 1/2, R 1; CF1 = 2/3; OP 3/6, OR 1
    assert modes["top3"] == pytest.approx(
        {
            "CP": 0.5,
            "CR": 1.0,
            "CF1": 2 / 3,
            "OP": 0.5,
            "OR": 1.0,
            "OF1": 2 / 3,
            "mean_class_F1": 2 / 3,
        }
    )
    # threshold 0.5: img0 {0,1}, img1 {1,2}; P = [1, 1/2, 1] -> CP 5/6, CR 1; OP 3/4, OR 1
    assert modes["threshold"]["CP"] == pytest.approx(5 / 6)
    assert modes["threshold"]["OP"] == pytest.approx(3 / 4)
    # predicted_k k=[1,1]: img0 {0}, img1 {1}; class 2 P = 0/0 = 0, R = 0/1
    # CP = CR = 2/3; OP = 2/2 = 1, OR = 2/3
    assert modes["predicted_k"]["CP"] == pytest.approx(2 / 3)
    assert modes["predicted_k"]["CR"] == pytest.approx(2 / 3)
    assert modes["predicted_k"]["OP"] == pytest.approx(1.0)
    assert modes["predicted_k"]["OR"] == pytest.approx(2 / 3)


def test_evaluate_without_k_and_custom_fixed_k() -> None:
    result = m.evaluate(E_TRUE, E_SCORES, fixed_k=2, threshold=0.75)
    assert "quantity" not in result
    assert list(result["modes"]) == ["top2", "threshold", "oracle_k"]
    assert result["modes"]["top2"] == m.label_metrics(E_TRUE, m.topk_mask(E_SCORES, 2))
    assert result["modes"]["threshold"] == m.label_metrics(E_TRUE, E_SCORES >= 0.75)
    assert "mae_raw" not in m.evaluate(E_TRUE, E_SCORES, k=[1, 2])["quantity"]


def test_evaluate_counts_classes_without_positives() -> None:
    y = np.array([[1, 0, 0], [1, 0, 0]])
    result = m.evaluate(y, np.array([[0.9, 0.5, 0.1], [0.3, 0.2, 0.1]]))
    assert result["n_classes_without_positives"] == 2
    assert result["mAP"] == 1.0


def test_evaluate_validation_errors() -> None:
    with pytest.raises(ValueError, match="same shape"):
        m.evaluate(E_TRUE, E_SCORES[:1])  # N differs
    with pytest.raises(ValueError, match="same shape"):
        m.evaluate(E_TRUE, E_SCORES[:, :2])  # C differs
    with pytest.raises(ValueError, match="2-D"):
        m.evaluate(E_TRUE[0], E_SCORES[0])
    with pytest.raises(ValueError, match="NaN"):
        m.evaluate(E_TRUE, np.where(E_SCORES > 0.8, np.nan, E_SCORES))
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        m.evaluate(E_TRUE, E_SCORES, k=np.array([1, 1, 1]))
    with pytest.raises(ValueError, match="without k"):
        m.evaluate(E_TRUE, E_SCORES, q=np.array([1.0, 2.0]))
    with pytest.raises(ValueError, match="at least one image"):
        m.evaluate(np.zeros((0, 3)), np.zeros((0, 3)))


def test_format_table() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = m.evaluate(E_TRUE, E_SCORES, k=np.array([1, 1]), q=np.array([0.8, 1.4]))
    lines = m.format_table(result).splitlines()
    assert lines[0].split() == ["mode", "CP", "CR", "CF1", "OP", "OR", "OF1", "mCF1"]
    rows = {line.split()[0]: line.split()[1:] for line in lines[2:6]}
    assert rows["top3"] == ["50.0", "100.0", "66.7", "50.0", "100.0", "66.7", "66.7"]
    assert rows["oracle_k"] == ["100.0"] * 7
    assert lines[6].startswith("mAP 83.3")
    assert lines[7] == "quantity acc 50.0  MAE 0.500  raw MAE 0.400"
    no_k = m.format_table(m.evaluate(E_TRUE, E_SCORES))
    assert "quantity" not in no_k and "predicted_k" not in no_k


def test_decide_k_threshold_counts_scores_capped_at_k_max_and_allows_none() -> None:
    scores = np.array([[0.9, 0.8, 0.7, 0.1], [0.2, 0.1, 0.3, 0.0], [0.5, 0.4, 0.6, 0.5]])
    q = np.array([1.2, 2.6, 3.0])
    assert m.decide_k(scores, q, 3).tolist() == [1, 3, 3]  # no threshold: round(q)
    assert m.decide_k(scores, q, 2, threshold=0.5).tolist() == [2, 0, 2]
    assert m.decide_k(scores, None, 4, threshold=0.5).tolist() == [3, 0, 3]


def test_fit_decision_threshold_maximises_overall_f1() -> None:
    y = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0]], bool)
    scores = np.array([[0.7, 0.4, 0.1], [0.2, 0.65, 0.3], [0.8, 0.62, 0.35]])
    t, f1 = m.fit_decision_threshold(y, scores, 3)
    assert 0.4 < t <= 0.6 and f1 == 1.0  # every true label above t, every other below


def test_quantity_block_scores_the_head_not_the_decision() -> None:
    y = np.array([[1, 1, 0], [1, 0, 0]], bool)
    scores = np.array([[0.9, 0.2, 0.1], [0.8, 0.3, 0.2]])
    q = np.array([2.1, 0.9])
    k = m.decide_k(scores, q, 3, threshold=0.5)  # [1, 1]
    head = m.decode_quantity(q, 3)  # [2, 1]: both counts right
    result = m.evaluate(y, scores, k=k, q=q, quantity_k=head)
    assert result["quantity"]["acc"] == 1.0
    assert result["modes"]["predicted_k"]["OP"] == 1.0
    assert m.evaluate(y, scores, k=k, q=q)["quantity"]["acc"] == 0.5
