"""Tests for probes.harmful_intent: the task's data and the probe selection rule."""

from __future__ import annotations

import pytest

from probes import data
from probes.errors import BadInputError
from probes.harmful_intent import task_set, train_harmful_intent


def test_task_set__train_holds_the_extra_supplements_unless_told_not_to():
    extra = set(data.prompts("harmful_extra")) | set(data.prompts("harmless_extra"))
    with_extra = task_set("train", limit=4, wrap_frac=0.0)
    without = task_set("train", limit=4, wrap_frac=0.0, extra=False)
    assert len(extra & set(with_extra.prompts)) == 8  # 4 per supplement, stratified
    assert not extra & set(without.prompts)
    labels = dict(zip(with_extra.prompts, with_extra.labels, strict=True))
    assert all(labels[p] == 1 for p in data.prompts("harmful_extra") if p in labels)
    assert all(labels[p] == 0 for p in data.prompts("harmless_extra") if p in labels)
    assert not extra & set(task_set("val", limit=4, extra=True).prompts)  # train-only


@pytest.mark.parametrize("max_flagged", [0.0, 0.5, 1.0])
def test_train__selection_prefers_probes_under_the_borderline_val_bound(tiny, max_flagged):
    probe, sweep, acts = train_harmful_intent(tiny, method=("logistic(C=0.03)", "mean-diff"),
                                              limit=4, n_boot=10, max_flagged=max_flagged)  # fmt: skip
    assert "borderline_val" in acts
    rows = sweep.rows
    assert all(0.0 <= r["borderline_val_flagged"] <= 1.0 for r in rows)
    chosen = next(r for r in rows if (r["method"], r["layer"]) == (probe.method, probe.layer))
    eligible = [r for r in rows if r["borderline_val_flagged"] <= max_flagged]
    if eligible:  # the chosen probe respects the bound whenever one in its sweep does
        assert chosen["borderline_val_flagged"] <= max_flagged
        assert chosen["tpr"] == max(r["tpr"] for r in eligible)
    else:
        assert chosen["borderline_val_flagged"] == min(r["borderline_val_flagged"] for r in rows)


def test_train__without_the_bound_nothing_extra_is_recorded(tiny):
    probe, sweep, acts = train_harmful_intent(tiny, method="mean-diff", limit=4, n_boot=10,
                                              max_flagged=None)  # fmt: skip
    assert "borderline_val" not in acts
    assert all("borderline_val_flagged" not in r for r in sweep.rows)
    top = sweep.ranked(by="tpr")[0]  # the returned sweep is the chosen probe's position's
    assert (probe.method, probe.layer, probe.position) == (top["method"], top["layer"],
                                                           sweep.position)  # fmt: skip


def test_train__bounds_the_borderline_flag_rate_by_default(tiny):
    from probes.harmful_intent import MAX_FLAGGED

    _, sweep, acts = train_harmful_intent(tiny, method="mean-diff", limit=4, n_boot=10)
    assert MAX_FLAGGED == 0.1 and "borderline_val" in acts
    assert all("borderline_val_flagged" in r for r in sweep.rows)


@pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
def test_train__a_bound_outside_0_1_is_refused_before_recording(tiny, bad):
    with pytest.raises(BadInputError, match=r"max_flagged must be a fraction in \[0, 1\]"):
        train_harmful_intent(tiny, method="mean-diff", limit=4, n_boot=10, max_flagged=bad)


def test_evaluate__extra_training_set_matches_between_train_and_evaluate(tiny):
    from probes.harmful_intent import evaluate_harmful_intent

    probe, _, acts = train_harmful_intent(tiny, method="mean-diff", limit=3, n_boot=10,
                                          position="last", extra=True)  # fmt: skip
    assert len(acts["train"].prompts) == len(task_set("train", limit=3, extra=True).prompts)
    report = evaluate_harmful_intent(tiny, probe, train_acts=acts["train"], limit=3,
                                     n_boot=10, extra=True)  # fmt: skip
    assert "leave_one_category_out" in report and "baselines" in report
    with pytest.raises(BadInputError, match=r"train_acts has \d+ rows .* extra=False"):
        evaluate_harmful_intent(tiny, probe, train_acts=acts["train"], limit=3, n_boot=10,
                                extra=False)  # fmt: skip
