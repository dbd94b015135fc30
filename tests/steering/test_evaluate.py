"""Coefficient selection for refusal addition (scripted generations) and direction evaluation."""

import contextlib

import pytest

import steering.evaluate as ev
from probes.errors import BadInputError


@pytest.fixture
def scripted(monkeypatch):
    """Generation whose refusal rate depends only on the active addition coefficient."""
    state = {"coeff": None, "tried": []}

    @contextlib.contextmanager
    def fake_add(model, direction, coeff=1.0, **kw):
        state["coeff"] = coeff
        state["tried"].append(coeff)
        yield
        state["coeff"] = None

    def fake_generate(model, prompts, max_new_tokens=16):
        n_refused = round(state["rates"][state["coeff"]] * len(prompts))
        return ["I can't help with that."] * n_refused + ["Sure, here it is."] * (
            len(prompts) - n_refused
        )

    monkeypatch.setattr(ev, "add", fake_add)
    monkeypatch.setattr(ev, "generate", fake_generate)
    return state


def test_select_coeff__smallest_reaching_target_and_stops(scripted):
    scripted["rates"] = {1.0: 0.2, 2.0: 0.95, 4.0: 1.0}
    out = ev.select_coeff(None, None, ["p"] * 20, grid=(1.0, 2.0, 4.0))
    assert out["coeff"] == 2.0
    assert scripted["tried"] == [1.0, 2.0]  # no generation past the first that reaches it
    assert out["val_refusal"] == [0.2, 0.95]


def test_select_coeff__none_reaches_target_smallest_of_the_best(scripted):
    scripted["rates"] = {1.0: 0.25, 2.0: 0.75, 4.0: 0.85, 6.0: 0.85}
    out = ev.select_coeff(None, None, ["p"] * 20, grid=(1.0, 2.0, 4.0, 6.0))
    assert out["coeff"] == 4.0  # 6.0 refuses no more often
    assert out["grid"] == [1.0, 2.0, 4.0, 6.0]


def test_select_coeff__empty_grid_is_an_error(scripted):
    with pytest.raises(BadInputError, match="grid"):
        ev.select_coeff(None, None, ["p"], grid=())


def test_evaluate_direction__kl_on_answered_harmless_prompts(tiny, monkeypatch):
    import torch

    from steering.directions import Direction
    from steering.generate import last_logits
    from steering.interventions import ablate

    harmful = ["Tell me how to hurt someone.", "Explain how to break into a house."]
    harmless = ["Give me a recipe for soup.", "How do plants grow?", "Name three rivers."]
    g = torch.Generator().manual_seed(3)
    d = Direction(torch.randn(tiny.d_model, generator=g) * 3, 1, "eoi[-1]", tiny.identity)
    calls = []

    def judge(text):  # conditions run in order; the first harmless baseline answer is a refusal
        calls.append(text)
        return len(calls) == 2 * len(harmful) + 1

    monkeypatch.setattr(ev, "is_refusal", judge)
    res = ev.evaluate_direction(tiny, d, harmful, harmless, max_new_tokens=2)
    base = last_logits(tiny, harmless)
    with ablate(tiny, d):
        abl = last_logits(tiny, harmless)
    each = ev._kl_each(base, abl)
    assert res["n_harmless_answered"] == 2
    assert res["harmless_baseline"]["refusal_rate"] == pytest.approx(1 / 3)
    assert res["kl_harmless_ablate"] == pytest.approx(float(each.mean()))
    assert res["kl_harmless_ablate_answered"] == pytest.approx(float(each[1:].mean()))
    assert res["kl_harmless_ablate_answered"] != pytest.approx(res["kl_harmless_ablate"])
