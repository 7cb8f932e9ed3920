"""Multi-label annotation metrics: decoding scores into label sets, and scoring those sets.

numpy only, so evaluation runs anywhere the runtime does (no torch, no scikit-learn). Conventions:

* Ranking is by descending score, ties broken by the lower label index (a stable argsort of
  ``-scores``), so every decode is deterministic.
* Every ratio with a zero denominator (0/0) counts as 0, as scikit-learn's ``zero_division=0``.
* Per-class averages (CP, CR, mean_class_F1) are over ALL classes, including classes with no
  ground-truth positives or no predictions: dropping them would flatter a model that ignores rare
  labels.
* Results are plain Python ``float``/``int`` so ``evaluate`` output is JSON-ready.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

LABEL_METRIC_KEYS: tuple[str, ...] = ("CP", "CR", "CF1", "OP", "OR", "OF1", "mean_class_F1")
"""Keys of `label_metrics`, in table order."""

MODES: tuple[str, ...] = ("predicted_k", "fixed_k", "threshold", "oracle_k")
"""Decode modes; ``fixed_k`` may also be spelt ``top{fixed_k}`` (e.g. ``"top3"``)."""

_TABLE_HEADERS: tuple[str, ...] = ("CP", "CR", "CF1", "OP", "OR", "OF1", "mCF1")


# --------------------------------------------------------------------------- validation


def _scores_matrix(scores: ArrayLike, name: str = "scores") -> NDArray[np.floating]:
    """A 2-D float array without NaN: a NaN would silently sort last and corrupt rankings."""
    arr = np.asarray(scores)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D [N, C], got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.floating):
        arr = arr.astype(np.float64)
    if np.isnan(arr).any():
        raise ValueError(f"{name} contains NaN")
    return arr


def _bool_matrix(labels: ArrayLike, name: str) -> NDArray[np.bool_]:
    """A 2-D bool array; accepts 0/1 numbers (the data pipeline yields float32 multi-hot)."""
    arr = np.asarray(labels)
    if arr.ndim != 2:
        raise ValueError(f"{name} must be 2-D [N, C], got shape {arr.shape}")
    return _to_bool(arr, name)


def _to_bool(arr: NDArray[Any], name: str) -> NDArray[np.bool_]:
    """Refuse values other than 0/1 rather than guess (e.g. scores passed as labels)."""
    if arr.dtype == np.bool_:
        return arr
    if not np.isin(arr, (0, 1)).all():
        raise ValueError(f"{name} must hold only 0/1 or bool values")
    return arr.astype(np.bool_)


def _same_shape(a: NDArray[Any], b: NDArray[Any], a_name: str, b_name: str) -> None:
    if a.shape != b.shape:
        raise ValueError(
            f"{a_name} and {b_name} must have the same shape [N, C], got {a.shape} and {b.shape}"
        )


def _vector(values: ArrayLike, n: int, name: str) -> NDArray[Any]:
    """A 1-D array of length ``n`` (one value per image)."""
    arr = np.asarray(values)
    if arr.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) (one value per image), got {arr.shape}")
    return arr


def _int_vector(values: ArrayLike, n: int, name: str) -> NDArray[np.int64]:
    """Counts must be whole numbers: silently truncating 2.7 to 2 would hide a decoding bug.

    Integral floats are accepted because counts summed from float32 multi-hot labels are floats.
    """
    arr = _vector(values, n, name)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must hold integers, got dtype {arr.dtype}")
    if not np.issubdtype(arr.dtype, np.integer) and not (
        np.isfinite(arr).all() and (arr == np.floor(arr)).all()
    ):
        raise ValueError(f"{name} must hold whole numbers, got non-integral values")
    return arr.astype(np.int64)


# --------------------------------------------------------------------------- decoding


def rank_labels(scores: ArrayLike) -> NDArray[np.intp]:
    """[N, C] label indices by descending score; ties go to the lower index (stable sort)."""
    return np.argsort(-_scores_matrix(scores), axis=1, kind="stable")


def topk_mask(scores: ArrayLike, k: int | ArrayLike) -> NDArray[np.bool_]:
    """The k best-ranked labels of each image; k (int or [N]) is clamped to C, negative raises."""
    s = _scores_matrix(scores)
    n, c = s.shape
    k_arr = np.asarray(k)
    if k_arr.ndim == 0:
        k_arr = np.full(n, k_arr)
    k_arr = _int_vector(k_arr, n, "k")
    if (k_arr < 0).any():
        raise ValueError(f"k must be >= 0, got minimum {int(k_arr.min())}")
    position = np.empty((n, c), dtype=np.int64)
    np.put_along_axis(position, rank_labels(s), np.arange(c), axis=1)
    return position < np.minimum(k_arr, c)[:, None]


def threshold_mask(scores: ArrayLike, threshold: float) -> NDArray[np.bool_]:
    """Labels scoring at least ``threshold`` (>=, so a score equal to it is predicted)."""
    if np.isnan(threshold):
        raise ValueError("threshold is NaN")
    return _scores_matrix(scores) >= threshold


def decode_quantity(q: ArrayLike, k_max: int) -> NDArray[np.int64]:
    """Label counts from a regressed quantity q [N]: clamp(floor(q + 0.5), 1, k_max).

    floor(q + 0.5) rounds halves up (2.5 -> 3), unlike ``np.round`` which rounds half to even
    (2.5 -> 2); the quantity head is trained on integer counts, so a half is a coin flip and
    rounding up never drops a label. At least one label is always predicted.
    """
    if isinstance(k_max, bool) or not isinstance(k_max, int | np.integer) or k_max < 1:
        raise ValueError(f"k_max must be an integer >= 1, got {k_max!r}")
    q_arr = np.asarray(q, dtype=np.float64)
    if q_arr.ndim != 1:
        raise ValueError(f"q must be 1-D [N], got shape {q_arr.shape}")
    if np.isnan(q_arr).any():
        raise ValueError("q contains NaN")
    return np.clip(np.floor(q_arr + 0.5), 1, k_max).astype(np.int64)


def decide_k(
    scores: ArrayLike, q: ArrayLike, k_max: int, threshold: float | None = None
) -> NDArray[np.int64]:
    """The product's label count per image (what ``predicted_k`` scores): without a decision
    threshold the paper's ``decode_quantity(q)``; with one, the number of labels scoring >=
    ``threshold``, at most ``k_max`` and possibly 0 (issue 15: for overall F1, fewer labels when
    the scores are unsure beats a forced count). The exported graph computes the same k."""
    if threshold is None:
        return decode_quantity(q, k_max)
    counts = (_scores_matrix(scores) >= np.float32(threshold)).sum(axis=1)
    return np.minimum(counts, k_max).astype(np.int64)


def fit_decision_threshold(
    y_true: ArrayLike, scores: ArrayLike, k_max: int, grid: ArrayLike | None = None
) -> tuple[float, float]:
    """The threshold of ``decide_k`` that maximises overall F1 on (validation) data, from a
    0.05-step grid; ties go to the higher threshold. Returns (threshold, its O-F1)."""
    y = _bool_matrix(y_true, "y_true")
    s = _scores_matrix(scores)
    grid = np.round(np.arange(0.05, 0.951, 0.05), 2) if grid is None else np.asarray(grid)
    best_t, best = float(grid[-1]), -1.0
    for t in sorted((float(v) for v in grid), reverse=True):
        f1 = label_metrics(y, topk_mask(s, decide_k(s, None, k_max, t)))["OF1"]
        if f1 > best + 1e-12:
            best_t, best = t, f1
    return best_t, best


def fixed_mode_name(fixed_k: int) -> str:
    """The result key of the fixed top-k mode, e.g. ``"top3"``."""
    return f"top{fixed_k}"


def decode(
    scores: ArrayLike,
    mode: str,
    *,
    k: ArrayLike | None = None,
    threshold: float = 0.5,
    true_counts: ArrayLike | None = None,
    fixed_k: int = 3,
) -> NDArray[np.bool_]:
    """Predicted label sets [N, C] for one decode ``mode`` (see `MODES`).

    ``predicted_k`` takes the top ``k[i]`` labels (k from `decode_quantity`); ``fixed_k`` (alias
    ``top{fixed_k}``) the top ``fixed_k``; ``threshold`` every score >= ``threshold``;
    ``oracle_k`` the top ``true_counts[i]``, an upper bound on what a perfect count predictor gives.
    """
    if mode == "predicted_k":
        if k is None:
            raise ValueError("mode 'predicted_k' needs k (predicted label count per image)")
        return topk_mask(scores, k)
    if mode in ("fixed_k", fixed_mode_name(fixed_k)):
        return topk_mask(scores, fixed_k)
    if mode == "threshold":
        return threshold_mask(scores, threshold)
    if mode == "oracle_k":
        if true_counts is None:
            raise ValueError("mode 'oracle_k' needs true_counts (ground-truth labels per image)")
        return topk_mask(scores, true_counts)
    raise ValueError(
        f"unknown decode mode {mode!r}; expected one of {', '.join(MODES)} "
        f"or {fixed_mode_name(fixed_k)!r} (fixed_k={fixed_k})"
    )


# --------------------------------------------------------------------------- label-set metrics


def _safe_div(num: ArrayLike, den: ArrayLike) -> NDArray[np.float64]:
    """num / den with 0/0 (and x/0) as 0, so an empty class contributes 0, never NaN."""
    num_f = np.asarray(num, dtype=np.float64)
    den_f = np.asarray(den, dtype=np.float64)
    out = np.zeros(np.broadcast(num_f, den_f).shape, dtype=np.float64)
    np.divide(num_f, den_f, out=out, where=den_f != 0)
    return out


def _harmonic(a: ArrayLike, b: ArrayLike) -> NDArray[np.float64]:
    """2ab / (a + b), 0 when both are 0 (the F1 convention)."""
    a_f = np.asarray(a, dtype=np.float64)
    b_f = np.asarray(b, dtype=np.float64)
    return _safe_div(2.0 * a_f * b_f, a_f + b_f)


def per_class_counts(
    y_true: ArrayLike, y_pred: ArrayLike
) -> tuple[NDArray[np.int64], NDArray[np.int64], NDArray[np.int64]]:
    """Per-class (TP, FP, FN), each [C]."""
    t = _bool_matrix(y_true, "y_true")
    p = _bool_matrix(y_pred, "y_pred")
    _same_shape(t, p, "y_true", "y_pred")
    tp = (t & p).sum(axis=0, dtype=np.int64)
    fp = (~t & p).sum(axis=0, dtype=np.int64)
    fn = (t & ~p).sum(axis=0, dtype=np.int64)
    return tp, fp, fn


def per_class_prf(
    y_true: ArrayLike, y_pred: ArrayLike
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Per-class (precision, recall, F1), each [C], with 0/0 as 0."""
    tp, fp, fn = per_class_counts(y_true, y_pred)
    precision = _safe_div(tp, tp + fp)
    recall = _safe_div(tp, tp + fn)
    return precision, recall, _harmonic(precision, recall)


def label_metrics(y_true: ArrayLike, y_pred: ArrayLike) -> dict[str, float]:
    """CP/CR/CF1 (per-class means), OP/OR/OF1 (pooled counts) and mean_class_F1, as fractions.

    CF1 is the harmonic mean of CP and CR (the usual definition in multi-label annotation
    papers); some papers instead call the mean of per-class F1 "CF1", so that is reported
    separately as ``mean_class_F1``.
    """
    tp, fp, fn = per_class_counts(y_true, y_pred)
    precision = _safe_div(tp, tp + fp)
    recall = _safe_div(tp, tp + fn)
    cp, cr = precision.mean(), recall.mean()
    op = _safe_div(tp.sum(), tp.sum() + fp.sum())
    o_r = _safe_div(tp.sum(), tp.sum() + fn.sum())
    values = (
        cp,
        cr,
        _harmonic(cp, cr),
        op,
        o_r,
        _harmonic(op, o_r),
        _harmonic(precision, recall).mean(),
    )
    return {key: float(v) for key, v in zip(LABEL_METRIC_KEYS, values, strict=True)}


# --------------------------------------------------------------------------- ranking metrics


def average_precision(y_true_col: ArrayLike, scores_col: ArrayLike) -> float:
    """Non-interpolated AP of one class, equal to ``sklearn.metrics.average_precision_score``.

    AP = sum_n (R_n - R_{n-1}) P_n over distinct score thresholds, highest first: tied scores
    form one threshold, so their order cannot change the result. The arithmetic follows
    scikit-learn step for step so results agree to the last bit. A class with no positives has
    AP 0.0 (scikit-learn also returns 0, with a warning); `mean_average_precision` excludes such
    classes instead.
    """
    t = np.asarray(y_true_col)
    s = np.asarray(scores_col)
    if t.ndim != 1 or s.ndim != 1 or t.shape != s.shape:
        raise ValueError(
            f"y_true_col and scores_col must be 1-D of equal length, got {t.shape} and {s.shape}"
        )
    if t.size == 0:
        raise ValueError("average_precision needs at least one sample")
    if not np.issubdtype(s.dtype, np.floating):
        s = s.astype(np.float64)  # -s would wrap around for unsigned ints
    if np.isnan(s).any():
        raise ValueError("scores_col contains NaN")
    positives = _to_bool(t, "y_true_col")
    if not positives.any():
        return 0.0
    order = np.argsort(-s, kind="stable")
    s_sorted = s[order]
    # Last index of each run of equal scores (`!=` rather than diff, so +-inf ties stay ties).
    last = np.r_[np.flatnonzero(s_sorted[1:] != s_sorted[:-1]), s.size - 1]
    tps = np.cumsum(positives[order], dtype=np.float64)[last]
    fps = 1 + last.astype(np.float64) - tps
    precision = tps / (tps + fps)
    recall = tps / tps[-1]
    # scikit-learn's curve runs from high recall to low, ending at (recall 0, precision 1).
    recall_desc = np.r_[recall[::-1], 0.0]
    precision_desc = np.r_[precision[::-1], 1.0]
    return float(max(0.0, -np.sum(np.diff(recall_desc) * precision_desc[:-1])))


def mean_average_precision(y_true: ArrayLike, scores: ArrayLike) -> tuple[float, int]:
    """(mAP over classes with at least one positive, number of classes excluded for having none).

    A class without positives has no defined AP, so it is excluded and counted rather than
    scored 0 (which would depend on how rare labels fell into the split). With no positive
    class at all the mAP is 0.0.
    """
    t = _bool_matrix(y_true, "y_true")
    s = _scores_matrix(scores)
    _same_shape(t, s, "y_true", "scores")
    has_positive = t.any(axis=0)
    aps = [average_precision(t[:, c], s[:, c]) for c in np.flatnonzero(has_positive)]
    n_excluded = int((~has_positive).sum())
    return (float(np.mean(aps)) if aps else 0.0), n_excluded


# --------------------------------------------------------------------------- quantity metrics


def quantity_metrics(
    k_pred: ArrayLike, true_counts: ArrayLike, q: ArrayLike | None = None
) -> dict[str, float]:
    """How well the label count is predicted: exact-match ``acc``, ``mae`` of the decoded count,
    and ``mae_raw`` of the raw regressed quantity q (if given) to separate regression error
    from rounding/clamping error."""
    counts = np.asarray(true_counts)
    if counts.ndim != 1 or counts.size == 0:
        raise ValueError(f"true_counts must be 1-D and non-empty, got shape {counts.shape}")
    n = counts.size
    counts = _int_vector(counts, n, "true_counts")
    k = _int_vector(k_pred, n, "k_pred")
    result = {"acc": float(np.mean(k == counts)), "mae": float(np.mean(np.abs(k - counts)))}
    if q is not None:
        q_arr = _vector(q, n, "q").astype(np.float64)
        if np.isnan(q_arr).any():
            raise ValueError("q contains NaN")
        result["mae_raw"] = float(np.mean(np.abs(q_arr - counts)))
    return result


# --------------------------------------------------------------------------- entry point


def evaluate(
    y_true: ArrayLike,
    scores: ArrayLike,
    *,
    k: ArrayLike | None = None,
    q: ArrayLike | None = None,
    threshold: float = 0.5,
    fixed_k: int = 3,
    quantity_k: ArrayLike | None = None,
) -> dict[str, Any]:
    """Every metric for one split, as a JSON-ready dict (the ``eval`` command's output).

    ``k`` is the predicted label count per image (enables the ``predicted_k`` mode and the
    ``quantity`` block); ``q`` the raw regressed quantity behind it (adds ``mae_raw``).
    ``quantity_k``: the quantity head's own decoded count, when the decision ``k`` is not it
    (a decision threshold, see `decide_k`): the ``quantity`` block then scores the head.
    """
    t = _bool_matrix(y_true, "y_true")
    s = _scores_matrix(scores)
    _same_shape(t, s, "y_true", "scores")
    n, c = t.shape
    if n == 0 or c == 0:
        raise ValueError(f"need at least one image and one class, got shape {t.shape}")
    if q is not None and k is None:
        raise ValueError("q was given without k; decode it first (decode_quantity) and pass both")
    true_counts = t.sum(axis=1, dtype=np.int64)
    mean_ap, n_without = mean_average_precision(t, s)
    result: dict[str, Any] = {
        "n_images": int(n),
        "mAP": mean_ap,
        "n_classes_without_positives": n_without,
    }
    modes: dict[str, dict[str, float]] = {}
    if k is not None:
        k_arr = _int_vector(k, n, "k")
        head_k = k_arr if quantity_k is None else _int_vector(quantity_k, n, "quantity_k")
        result["quantity"] = quantity_metrics(head_k, true_counts, q)
        modes["predicted_k"] = label_metrics(t, topk_mask(s, k_arr))
    modes[fixed_mode_name(fixed_k)] = label_metrics(t, topk_mask(s, fixed_k))
    modes["threshold"] = label_metrics(t, threshold_mask(s, threshold))
    modes["oracle_k"] = label_metrics(t, topk_mask(s, true_counts))
    result["modes"] = modes
    return result


def format_table(result: dict[str, Any]) -> str:
    """A plain-text summary of `evaluate` output: one row per mode (percentages, 1 decimal),
    then mAP and, if present, quantity accuracy and MAE."""
    modes: dict[str, dict[str, float]] = result["modes"]
    name_width = max([len("mode"), *(len(name) for name in modes)])
    header = f"{'mode':<{name_width}}" + "".join(f"{h:>7}" for h in _TABLE_HEADERS)
    lines = [header, "-" * len(header)]
    for name, metrics in modes.items():
        cells = "".join(f"{100 * metrics[key]:>7.1f}" for key in LABEL_METRIC_KEYS)
        lines.append(f"{name:<{name_width}}{cells}")
    lines.append(
        f"mAP {100 * result['mAP']:.1f}  "
        f"({result['n_images']} images, "
        f"{result['n_classes_without_positives']} classes without positives excluded)"
    )
    quantity = result.get("quantity")
    if quantity is not None:
        line = f"quantity acc {100 * quantity['acc']:.1f}  MAE {quantity['mae']:.3f}"
        if "mae_raw" in quantity:
            line += f"  raw MAE {quantity['mae_raw']:.3f}"
        lines.append(line)
    return "\n".join(lines)
