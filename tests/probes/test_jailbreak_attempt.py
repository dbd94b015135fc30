import math

import numpy as np
import pytest

from probes import BadInputError, data
from probes.harmful_intent import template_groups
from probes.jailbreak_attempt import (
    control_prompts,
    evaluate_jailbreak_attempt,
    jailbreak_task_set,
    train_jailbreak_attempt,
)


def test_task_set__wraps_half_in_training_templates_and_adds_long_benign():
    ts = jailbreak_task_set("train", limit=6, long_weight=3)
    cats = np.array(ts.categories)
    wrapped = [p for p, c in zip(ts.prompts, cats) if c == "wrapped"]
    assert set(ts.labels[cats == "wrapped"]) == {1}
    assert set(ts.labels[cats != "wrapped"]) == {0}
    assert 0 < len(wrapped) < (cats == "bare").sum()
    train_t, held = template_groups()
    heads = [t.template.split("{prompt}")[0][:40] for t in train_t]
    held_heads = [t.template.split("{prompt}")[0][:40] for t in held]
    assert all(any(p.startswith(h) for h in heads) for p in wrapped)
    assert not any(p.startswith(h) for p in wrapped for h in held_heads if h)
    long = [p for p, c in zip(ts.prompts, cats) if c.startswith("long:")]
    assert len(long) == 3 * len(set(long)) and set(long) <= set(
        data.prompts("benign_long", "train")
    )


def test_task_set__val_uses_only_val_prompts_and_bad_input():
    ts = jailbreak_task_set("val")
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
