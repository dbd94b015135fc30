"""Detection metrics: AUROC, thresholds calibrated on a benign control set, bootstrap CIs.

Convention: higher scores mean "more likely harmful"; a row is flagged when its
score is *strictly greater* than the threshold. Labels are 0/1 (or bool), 1 = positive.

Example:
    >>> benign = np.random.randn(1000)
    >>> t = calibrate_threshold(benign, fpr=0.01)
    >>> float(np.mean(benign > t)) <= 0.01
    True
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from scipy.stats import rankdata
from torch import Tensor

from probes.errors import BadInputError
from probes.estimators import to_numpy


def scores_1d(s: Any, name: str = "scores") -> np.ndarray:
    """Validate a 1-D array of finite scores (numpy, torch or list) -> float64 [n]."""
    try:
        arr = np.asarray(to_numpy(s), dtype=np.float64)
    except (TypeError, ValueError):
        raise BadInputError(f"{name} must be numeric") from None
    if arr.ndim != 1:
        raise BadInputError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.size == 0:
        raise BadInputError(f"{name} is empty")
    if not np.isfinite(arr).all():
        raise BadInputError(f"{name} contains NaN or inf")
    return arr


def labels_01(y: Any, n: int | None = None, name: str = "labels") -> np.ndarray:
    """Validate 0/1 (or bool) labels -> int64 [n]."""
    arr = np.asarray(to_numpy(y))
    if arr.ndim != 1:
        raise BadInputError(f"{name} must be 1-D, got shape {arr.shape}")
    if n is not None and arr.shape[0] != n:
        raise BadInputError(f"{name} has {arr.shape[0]} entries, expected {n} (one per row)")
    if arr.dtype.kind not in "biuf" or not np.isin(arr, (0, 1)).all():
        raise BadInputError(f"{name} must be 0/1 (1 = positive), got values {np.unique(arr)[:5]}")
    return arr.astype(np.int64)


def _check_fpr(fpr: float) -> float:
    if isinstance(fpr, bool) or not isinstance(fpr, (int, float, np.floating)):
        raise BadInputError(f"fpr must be a number in (0, 1), got {fpr!r}")
    if not 0.0 < float(fpr) < 1.0:
        raise BadInputError(f"fpr must be in (0, 1), got {fpr}")
    return float(fpr)


def auroc(y: Any, s: Any) -> float:
    """Area under the ROC curve (Mann-Whitney, ties count 1/2).

    Args:
        y: 0/1 labels, shape [n]; both classes must be present.
        s: scores, shape [n].
    """
    s = scores_1d(s)
    y = labels_01(y, len(s))
    if y.min() == y.max():
        raise BadInputError("AUROC needs both classes in the labels; only one class is present")
    return _auroc(y, s)


def _auroc(y: np.ndarray, s: np.ndarray) -> float:
    """AUROC without validation (the bootstrap's inner loop)."""
    pos = y == 1
    n_pos = int(pos.sum())
    n_neg = len(y) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("one class only")
    ranks = rankdata(s)
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


THRESHOLD_RTOL = 1e-5  # see calibrate_threshold


def calibrate_threshold(benign_scores: Any, fpr: float = 0.01) -> float:
    """Threshold ``t`` such that at most ``fpr`` of the benign control set scores above it.

    Calibrate on a *separate* benign control set, never on the test set. With ``n``
    control scores, at most ``floor(fpr * n)`` of them are ``> t``.

    ``t`` sits a rounding tolerance (``1e-5 * max(1, |s|)``) above the control score
    ``s`` it is read from: the same example re-scored by another code path (float32 in
    :class:`~probes.monitor.ProbeMonitor`, another BLAS summation order) must not cross
    its own threshold. (A CI run scored one control example 1 ulp above it.)

    Args:
        benign_scores: control-set scores, shape [n].
        fpr: target false-positive rate in (0, 1).
    """
    fpr = _check_fpr(fpr)
    s = np.sort(scores_1d(benign_scores, "benign control scores"))[::-1]
    k = int(np.floor(fpr * len(s) + 1e-9))
    t = float(s[min(k, len(s) - 1)])
    return t + THRESHOLD_RTOL * max(1.0, abs(t))


def tpr_at_threshold(pos_scores: Any, t: float) -> float:
    """Fraction of positive scores strictly above ``t``."""
    return float(np.mean(scores_1d(pos_scores, "positive scores") > t))


def fpr_at_threshold(neg_scores: Any, t: float) -> float:
    """Fraction of negative scores strictly above ``t``."""
    return float(np.mean(scores_1d(neg_scores, "negative scores") > t))


def bootstrap_ci(
    metric_fn: Callable[..., float],
    *arrays: Any,
    n: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    paired: bool = True,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of ``metric_fn(*arrays)``.

    Args:
        metric_fn: maps resampled arrays to a float; a resample on which it raises
            ``ValueError`` (e.g. one class only) is skipped.
        arrays: the data; with ``paired`` they share their length and are resampled with
            the same row indices, otherwise each is resampled independently.
        n: number of resamples.
        seed: RNG seed.
        alpha: 1 - coverage (0.05 gives a 95% interval).

    Returns:
        ``(low, high)``.

    Example:
        >>> bootstrap_ci(auroc, labels, scores, n=500)  # doctest: +SKIP
        (0.91, 0.97)
    """
    if not arrays:
        raise BadInputError("bootstrap_ci needs at least one array")
    if not 0.0 < alpha < 1.0:
        raise BadInputError(f"alpha must be in (0, 1), got {alpha}")
    if int(n) < 1:
        raise BadInputError(f"n must be >= 1, got {n}")
    arrs = [np.asarray(to_numpy(a)) for a in arrays]
    lens = [len(a) for a in arrs]
    if min(lens) == 0:
        raise BadInputError("bootstrap_ci got an empty array")
    if paired and len(set(lens)) != 1:
        raise BadInputError(f"paired bootstrap needs arrays of one length, got lengths {lens}")
    rng = np.random.default_rng(seed)
    stats = []
    for _ in range(int(n)):
        if paired:
            idx = rng.integers(0, lens[0], lens[0])
            sample = [a[idx] for a in arrs]
        else:
            sample = [a[rng.integers(0, len(a), len(a))] for a in arrs]
        try:
            stats.append(float(metric_fn(*sample)))
        except ValueError:
            continue
    if not stats:
        raise BadInputError("the metric failed on every bootstrap resample")
    return _ci(np.asarray(stats), alpha)


def _ci(stats: np.ndarray, alpha: float) -> tuple[float, float]:
    lo, hi = np.quantile(stats, [alpha / 2, 1 - alpha / 2])
    return float(lo), float(hi)


def auroc_ci(
    y: Any, s: Any, *, n: int = 1000, seed: int = 0, alpha: float = 0.05
) -> tuple[float, float]:
    """Bootstrap CI of AUROC; a vectorised, equal-result form of ``bootstrap_ci(auroc, y, s)``."""
    s = scores_1d(s)
    y = labels_01(y, len(s))
    return _boot_auroc(y, s, int(n), np.random.default_rng(seed), alpha)


def _boot_auroc(y: np.ndarray, s: np.ndarray, n: int, rng, alpha: float) -> tuple[float, float]:
    idx = rng.integers(0, len(s), (n, len(s)))
    Y = y[idx]
    n_pos = Y.sum(1)
    n_neg = len(s) - n_pos
    ok = (n_pos > 0) & (n_neg > 0)
    ranks = rankdata(s[idx], axis=1)
    auc = ((ranks * Y).sum(1) - n_pos * (n_pos + 1) / 2) / np.maximum(n_pos * n_neg, 1)
    return _ci(auc[ok], alpha)


def _boot_tpr(pos: np.ndarray, control: np.ndarray, fpr: float, n: int, rng, alpha: float):
    """Bootstrap TPR at a threshold re-calibrated on each resampled control set."""
    m = len(control)
    kth = m - 1 - min(int(np.floor(fpr * m + 1e-9)), m - 1)
    P = pos[rng.integers(0, len(pos), (n, len(pos)))]
    C = control[rng.integers(0, m, (n, m))]
    t = np.partition(C, kth, axis=1)[:, kth]
    return _ci((P > t[:, None]).mean(1), alpha)


def evaluate_scores(
    test_scores: Any,
    test_labels: Any,
    control_scores: Any,
    fpr: float = 0.01,
    *,
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """Score a detector honestly: threshold from the control set, metrics on the test set.

    Args:
        test_scores: shape [n]. test_labels: 0/1, shape [n], both classes present.
        control_scores: benign control-set scores (separate from test), shape [m].
        fpr: target false-positive rate for the threshold.
        n_boot: bootstrap resamples for the CIs (0 disables them).
        seed: bootstrap seed. alpha: 1 - CI coverage.

    Returns:
        ``auroc``, ``auroc_ci``, ``threshold``, ``target_fpr``, ``tpr`` (TPR at the
        calibrated threshold), ``tpr_ci`` (resampling test positives *and* the control
        set), ``fpr`` (achieved on the test negatives), ``accuracy`` and the counts.
    """
    fpr = _check_fpr(fpr)
    s = scores_1d(test_scores, "test scores")
    y = labels_01(test_labels, len(s), "test labels")
    control = scores_1d(control_scores, "control scores")
    auc = auroc(y, s)
    t = calibrate_threshold(control, fpr)
    pos, neg = s[y == 1], s[y == 0]
    out: dict[str, Any] = {
        "auroc": auc,
        "threshold": t,
        "target_fpr": fpr,
        "tpr": tpr_at_threshold(pos, t),
        "fpr": fpr_at_threshold(neg, t),
        "accuracy": float(np.mean((s > t) == (y == 1))),
        "n_pos": int(len(pos)),
        "n_neg": int(len(neg)),
        "n_control": int(len(control)),
    }
    if n_boot:
        rng = np.random.default_rng(seed)
        out["auroc_ci"] = _boot_auroc(y, s, int(n_boot), rng, alpha)
        out["tpr_ci"] = _boot_tpr(pos, control, fpr, int(n_boot), rng, alpha)
    return out


def aggregate_tokens(scores: Any, offsets: Any, how: str = "max", alpha: float = 0.5) -> Tensor:
    """Pool token-level scores into one score per prompt.

    Args:
        scores: per-token scores, shape [n_tokens] (ragged, as recorded with ``all``).
        offsets: prompt boundaries, shape [n_prompts + 1].
        how: ``max``, ``mean``, ``last``, or ``ema`` (max over tokens of the
            exponential moving average ``e_t = alpha * s_t + (1 - alpha) * e_{t-1}``,
            which ignores one-token spikes).
        alpha: EMA weight of the newest token, in (0, 1].

    Returns:
        float64 tensor [n_prompts].

    Example:
        >>> aggregate_tokens(torch.tensor([0.0, 2.0, 1.0]), torch.tensor([0, 2, 3])).tolist()
        [2.0, 1.0]
    """
    s = torch.as_tensor(to_numpy(scores), dtype=torch.float64).cpu()
    off = torch.as_tensor(to_numpy(offsets)).long().cpu()
    if s.ndim != 1 or off.ndim != 1 or len(off) < 2 or int(off[0]) != 0 or int(off[-1]) != len(s):
        raise BadInputError(
            "scores must be [n_tokens] and offsets [n_prompts + 1] from 0 to n_tokens"
        )
    if (off.diff() <= 0).any():
        raise BadInputError("offsets must be strictly increasing (every prompt has >= 1 token)")
    if how not in ("max", "mean", "last", "ema"):
        raise BadInputError(f"unknown aggregation {how!r}; use max, mean, last or ema")
    if how == "ema" and not 0.0 < alpha <= 1.0:
        raise BadInputError(f"alpha must be in (0, 1], got {alpha}")
    out = torch.empty(len(off) - 1, dtype=torch.float64)
    for i in range(len(out)):
        seg = s[int(off[i]) : int(off[i + 1])]
        if how == "max":
            out[i] = seg.max()
        elif how == "mean":
            out[i] = seg.mean()
        elif how == "last":
            out[i] = seg[-1]
        else:
            e, best = float(seg[0]), float(seg[0])
            for v in seg[1:].tolist():
                e = alpha * v + (1 - alpha) * e
                best = max(best, e)
            out[i] = best
    return out
