import math

import numpy as np
import pytest

from probes import BadInputError, data
from probes.harmful_intent import template_groups
from probes.jailbreak_attempt import (
    control_prompts,
    evaluate_jailbreak_attempt,
    jailbreak_task_set,
    template_split,
    train_jailbreak_attempt,
)


def test_task_set__wraps_half_in_training_templates_and_adds_long_benign():
    ts = jailbreak_task_set("train", limit=6, long_weight=3)
    cats = np.array(ts.categories)
    wrapped = [p for p, c in zip(ts.prompts, cats) if c == "wrapped"]
    assert set(ts.labels[cats == "wrapped"]) == {1}
    assert set(ts.labels[cats != "wrapped"]) == {0}
    assert 0 < len(wrapped) < (cats == "bare").sum()
    fit_t, val_t = template_split()
    train_t, held = template_groups()
    assert sorted(t.id for t in fit_t + val_t) == sorted(t.id for t in train_t)
    assert len(val_t) == len(train_t) // 5 and not {t.id for t in fit_t} & {t.id for t in val_t}
    used = {t.id for p in wrapped for t in train_t + held if _wrapped_by(p, t)}
    assert used and used <= {t.id for t in fit_t}
    long = [p for p, c in zip(ts.prompts, cats) if c.startswith("long:")]
    assert len(long) == 3 * len(set(long)) and set(long) <= set(
        data.prompts("benign_long", "train")
    )


def _wrapped_by(prompt, template):
    before, after = template.template.split("{prompt}")
    return prompt.startswith(before) and prompt.endswith(after)


def test_task_set__val_uses_only_val_prompts_and_bad_input():
    ts = jailbreak_task_set("val")
    wrapped = [p for p, c in zip(ts.prompts, ts.categories) if c == "wrapped"]
    _, val_t = template_split()
    assert all(any(_wrapped_by(p, t) for t in val_t) for p in wrapped)
    bare = {p for p, c in zip(ts.prompts, ts.categories) if c == "bare"}
    assert bare == set(data.prompts("harmful", "val")) | set(data.prompts("harmless", "val"))
    assert set(control_prompts()) >= set(data.prompts("benign_long", "val"))
    with pytest.raises(BadInputError, match="split"):
        jailbreak_task_set("test")
    with pytest.raises(BadInputError, match="long_weight"):
        jailbreak_task_set("train", long_weight=0)


def test_train_and_evaluate__on_a_tiny_model(tiny, monkeypatch):
    import probes.jailbreak_attempt as ja

    seen = {}
    real = ja.sweep_activations

    def spy(train, y, *a, **kw):
        seen["train"], seen["y"] = train, np.asarray(y)
        return real(train, y, *a, **kw)

    monkeypatch.setattr(ja, "sweep_activations", spy)
    probe, sweep, acts = train_jailbreak_attempt(tiny, limit=2, long_weight=4, n_boot=0,
                                                 method="logistic(C=0.03)")  # fmt: skip
    assert probe.position == "mean" and math.isfinite(probe.threshold)
    assert probe.metrics["task"] == "jailbreak attempt"
    ts = jailbreak_task_set("train", limit=2)
    long = [p for p, c in zip(ts.prompts, ts.categories) if c.startswith("long:")]
    # the long benign rows are repeated 4 times in training, as negatives
    assert len(seen["train"]) == len(acts["train"]) + 3 * len(long) == len(seen["y"])
    assert seen["train"].prompts[len(ts.prompts) :] == long * 3
    assert seen["y"][len(ts.prompts) :].sum() == 0
    ev = evaluate_jailbreak_attempt(tiny, probe, limit=2)
    assert set(ev["flagged"]) == set(ev["n"]) and all(0 <= v <= 1 for v in ev["flagged"].values())
    assert ev["summary"]["layer"] == probe.layer
    assert tiny.n_active_hooks() == 0
