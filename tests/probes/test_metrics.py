import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from probes import BadInputError
from probes.metrics import (
    aggregate_tokens,
    auroc,
    auroc_ci,
    bootstrap_ci,
    calibrate_threshold,
    evaluate_scores,
    fpr_at_threshold,
    tpr_at_threshold,
)


def test_auroc__matches_sklearn_with_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    s = np.round(rng.standard_normal(300) + y, 1)  # rounding makes ties
    assert auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    assert auroc(torch.tensor(y), torch.tensor(s)) == pytest.approx(roc_auc_score(y, s))
    assert auroc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9]) == 1.0


@pytest.mark.parametrize("n", [50, 100, 999, 5000])
@pytest.mark.parametrize("fpr", [0.001, 0.01, 0.05, 0.3])
def test_calibrate_threshold__respects_fpr_on_control(n, fpr):
    control = np.random.default_rng(n).standard_normal(n)
    t = calibrate_threshold(control, fpr)
    assert fpr_at_threshold(control, t) <= fpr
    # rounding noise from re-scoring (float32, another summation order) stays inside
    noisy = control * (1 + 1e-6 * np.random.default_rng(0).standard_normal(n))
    assert fpr_at_threshold(noisy, t) <= fpr
    assert fpr_at_threshold(control.astype(np.float32), t) <= fpr
    # and it is the tightest such threshold: it sits within the tolerance of a control
    # score, and the next lower control score would exceed the budget
    below = np.sort(control)[np.sort(control) < t]
    assert t - below[-1] <= 1e-5 * max(1.0, abs(below[-1])) + 1e-12
    if len(below) > 1:
        assert fpr_at_threshold(control, below[-2]) > fpr or np.floor(fpr * n) == 0


def test_calibrate_threshold__ties_never_exceed_budget():
    control = np.zeros(100)
    t = calibrate_threshold(control, 0.05)
    assert fpr_at_threshold(control, t) == 0.0


def test_tpr_fpr_at_threshold__strictly_above():
    assert tpr_at_threshold([0.0, 1.0, 2.0, 3.0], 1.0) == 0.5
    assert fpr_at_threshold(np.array([0.0, 1.0]), 0.5) == 0.5


def test_bootstrap_ci__contains_estimate_and_is_seeded():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 400)
    s = rng.standard_normal(400) + y
    lo, hi = bootstrap_ci(auroc, y, s, n=300, seed=1)
    assert lo < auroc(y, s) < hi
    assert (lo, hi) == bootstrap_ci(auroc, y, s, n=300, seed=1)
    assert auroc_ci(y, s, n=300, seed=1) == pytest.approx((lo, hi))
    lo_small, hi_small = bootstrap_ci(auroc, y[:50], s[:50], n=300)
    assert hi_small - lo_small > hi - lo


def test_bootstrap_ci__unpaired_resamples_each_array():
    a, b = np.arange(10.0), np.arange(30.0)
    lo, hi = bootstrap_ci(lambda x, z: x.mean() - z.mean(), a, b, n=200, paired=False)
    assert lo < -10 < hi
    with pytest.raises(BadInputError, match="one length"):
        bootstrap_ci(lambda x, z: 0.0, a, b)


def test_bootstrap_ci__skips_one_class_resamples():
    y = np.array([1] + [0] * 9)
    lo, hi = bootstrap_ci(auroc, y, np.arange(10.0), n=100)
    assert 0 <= lo <= hi <= 1


def test_evaluate_scores__threshold_from_control_and_all_fields():
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(200), np.zeros(200)].astype(int)
    s = rng.standard_normal(400) + 3 * y
    control = rng.standard_normal(2000)
    r = evaluate_scores(s, y, control, fpr=0.01, n_boot=200)
    assert r["threshold"] == calibrate_threshold(control, 0.01)
    assert fpr_at_threshold(control, r["threshold"]) <= 0.01
    assert r["auroc"] == pytest.approx(auroc(y, s))
    assert r["tpr"] == tpr_at_threshold(s[y == 1], r["threshold"])
    assert r["fpr"] == fpr_at_threshold(s[y == 0], r["threshold"])
    assert r["auroc_ci"][0] <= r["auroc"] <= r["auroc_ci"][1]
    assert r["tpr_ci"][0] <= r["tpr"] <= r["tpr_ci"][1]
    assert 0 <= r["accuracy"] <= 1
    assert (r["n_pos"], r["n_neg"], r["n_control"]) == (200, 200, 2000)
    assert "auroc_ci" not in evaluate_scores(s, y, control, n_boot=0)


@pytest.mark.parametrize("fpr", [0, 1, -0.1, 1.5, float("nan"), "0.01", True])
def test_fpr_outside_open_unit_interval__rejected(fpr):
    with pytest.raises(BadInputError, match="fpr"):
        calibrate_threshold(np.zeros(10), fpr)
    with pytest.raises(BadInputError, match="fpr"):
        evaluate_scores([0.0, 1.0], [0, 1], np.zeros(10), fpr=fpr)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: calibrate_threshold([], 0.01), "empty"),
        (lambda: calibrate_threshold([0.0, np.nan], 0.01), "NaN"),
        (lambda: auroc([1, 1, 1], [0.1, 0.2, 0.3]), "one class"),
        (lambda: auroc([0, 1, 2], [0.1, 0.2, 0.3]), "0/1"),
        (lambda: auroc([0, 1], [0.1, 0.2, 0.3]), "2 entries, expected 3"),
        (lambda: auroc([0, 1], [[0.1], [0.2]]), "1-D"),
        (lambda: auroc([0, 1], [0.1, np.inf]), "inf"),
        (lambda: evaluate_scores([0.0, 1.0], [0, 1], [], 0.01), "control scores is empty"),
        (lambda: bootstrap_ci(auroc), "at least one array"),
        (lambda: bootstrap_ci(auroc, [0, 1], [0.0, 1.0], alpha=1.5), "alpha"),
        (lambda: tpr_at_threshold(["a"], 0.0), "numeric"),
    ],
)
def test_metrics__bad_input_is_clear(call, match):
    with pytest.raises(BadInputError, match=match):
        call()


def test_aggregate_tokens__max_mean_last_ema():
    s = torch.tensor([0.0, 4.0, 0.0, 1.0, 1.0, 1.0])
    off = torch.tensor([0, 3, 6])
    assert aggregate_tokens(s, off, "max").tolist() == [4.0, 1.0]
    assert aggregate_tokens(s, off, "mean").tolist() == pytest.approx([4 / 3, 1.0])
    assert aggregate_tokens(s, off, "last").tolist() == [0.0, 1.0]
    # EMA damps the one-token spike: e = 0, 2, 1 -> max 2 (alpha 0.5)
    assert aggregate_tokens(s, off, "ema", alpha=0.5).tolist() == [2.0, 1.0]
    assert aggregate_tokens(s, off, "ema", alpha=1.0).tolist() == [4.0, 1.0]


@pytest.mark.parametrize(
    ("scores", "offsets", "kw", "match"),
    [
        ([1.0, 2.0], [0, 3], {}, "offsets"),
        ([1.0, 2.0], [0, 0, 2], {}, "strictly increasing"),
        ([1.0, 2.0], [0, 2], {"how": "median"}, "unknown aggregation"),
        ([1.0, 2.0], [0, 2], {"how": "ema", "alpha": 0.0}, "alpha"),
    ],
)
def test_aggregate_tokens__bad_input(scores, offsets, kw, match):
    with pytest.raises(BadInputError, match=match):
        aggregate_tokens(scores, offsets, **kw)
