import pytest
import torch

from probes import BadInputError
from steering.directions import Direction
from steering.generate import generate, last_logits
from steering.interventions import ablate, add


def _hooks_count(model):
    return model.n_active_hooks()


@pytest.fixture
def direction(tiny):
    g = torch.Generator().manual_seed(1)
    return Direction(torch.randn(tiny.d_model, generator=g) * 3, 1, "eoi[-1]", tiny.identity)


def test_ablate__changes_outputs_then_restores_bit_for_bit(tiny, prompts, direction):
    before = last_logits(tiny, prompts)
    with ablate(tiny, direction):
        during = last_logits(tiny, prompts)
    after = last_logits(tiny, prompts)
    assert not torch.equal(before, during)
    assert torch.equal(before, after)
    assert _hooks_count(tiny) == 0


def test_ablate__removes_direction_from_residual(tiny, prompts, direction):
    from probes import record

    with ablate(tiny, direction):
        acts = record(tiny, prompts, sites="resid_pre", layers="all", positions="last")
    proj = acts["resid_pre"] @ direction.unit
    assert proj.abs().max() < 1e-4


def test_add__restores_after_exception(tiny, prompts, direction):
    before = last_logits(tiny, prompts)
    with pytest.raises(RuntimeError, match="boom"), add(tiny, direction, coeff=2.0):
        assert not torch.equal(before, last_logits(tiny, prompts))
        raise RuntimeError("boom")
    assert torch.equal(before, last_logits(tiny, prompts))
    assert _hooks_count(tiny) == 0


def test_add__mask_steers_only_selected_examples(tiny, prompts, direction):
    base = last_logits(tiny, prompts)
    mask = torch.tensor([i % 2 == 0 for i in range(len(prompts))])
    # batches are bucketed by length, so steer per example via a prompt-keyed mask
    with add(tiny, direction, coeff=3.0):
        steered = last_logits(tiny, prompts)
    mixed = torch.empty_like(base)
    for i, p in enumerate(prompts):
        m = torch.tensor([bool(mask[i])])
        with add(tiny, direction, coeff=3.0, mask=m):
            mixed[i] = last_logits(tiny, [p])[0]
    for i in range(len(prompts)):
        ref = steered[i] if mask[i] else base[i]
        torch.testing.assert_close(mixed[i], ref, atol=1e-4, rtol=1e-4)


def test_add__batch_mask_matches_single_runs(tiny, direction):
    prompts = ["How do I bake bread?", "Write a poem."]  # different lengths: left padded
    from probes.prompts import encode, make_batch

    enc = encode(tiny.tokenizer, prompts)
    batch = make_batch(enc, [0, 1], tiny.tokenizer.pad_token_id)
    with add(tiny, direction, coeff=3.0, mask=torch.tensor([True, False])), torch.no_grad():
        out = tiny.hf_model(batch.input_ids, attention_mask=batch.attention_mask).logits[:, -1]
    with add(tiny, direction, coeff=3.0):
        a = last_logits(tiny, prompts[:1])[0]
    b = last_logits(tiny, prompts[1:])[0]
    torch.testing.assert_close(out[0], a, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(out[1], b, atol=1e-4, rtol=1e-4)


def test_interventions__compose_and_unwind(tiny, prompts, direction):
    base = last_logits(tiny, prompts)
    with ablate(tiny, direction), add(tiny, direction, coeff=1.0):
        assert _hooks_count(tiny) == 3 * tiny.n_layers + 1
        generate(tiny, prompts[:2], max_new_tokens=3)
    assert _hooks_count(tiny) == 0
    assert torch.equal(base, last_logits(tiny, prompts))


@pytest.mark.parametrize(
    ("vec", "match"),
    [
        (torch.ones(7), "width 7"),
        (torch.full((64,), float("nan")), "NaN"),
        (torch.zeros(64), "zero vector"),
    ],
)
def test_ablate__bad_direction_is_refused_and_model_untouched(tiny, vec, match):
    with pytest.raises(BadInputError, match=match), ablate(tiny, vec):
        pass
    assert _hooks_count(tiny) == 0


def test_add__layer_out_of_range(tiny, direction):
    with (
        pytest.raises(BadInputError, match=r"valid layers are 0\.\.2"),
        add(tiny, direction, layer=9),
    ):
        pass
    assert _hooks_count(tiny) == 0


def test_direction__other_model_is_refused(tiny, direction):
    other = Direction(direction.vector, 1, "eoi[-1]", {**tiny.identity, "digest": "0" * 64})
    with pytest.raises(BadInputError, match="was made for model"), ablate(tiny, other):
        pass


def test_ablate__a_list_removes_the_whole_span(tiny, prompts, direction):
    from probes import record

    g = torch.Generator().manual_seed(7)
    other = Direction(torch.randn(tiny.d_model, generator=g), 2, "eoi[-1]", tiny.identity)
    with ablate(tiny, [direction, other]):
        acts = record(tiny, prompts, sites="resid_pre", layers="all", positions="last")
    x = acts["resid_pre"].float()
    assert (x @ direction.unit).abs().max() < 1e-4
    assert (x @ other.unit).abs().max() < 1e-4
    with ablate(tiny, [other, direction]):  # the span, not the order, decides
        again = record(tiny, prompts, sites="resid_pre", layers="all", positions="last")
    assert torch.allclose(again["resid_pre"].float(), x, atol=1e-5)
    assert _hooks_count(tiny) == 0


def test_ablate__a_one_element_list_equals_the_direction(tiny, prompts, direction):
    with ablate(tiny, direction):
        one = last_logits(tiny, prompts)
    with ablate(tiny, [direction]):
        listed = last_logits(tiny, prompts)
    assert torch.equal(one, listed)


def test_ablate__dependent_or_empty_directions_are_refused(tiny, prompts, direction):
    before = last_logits(tiny, prompts)
    twice = Direction(direction.vector * -2.0, 0, "last", tiny.identity)
    with pytest.raises(BadInputError, match="span of the directions before it"):
        with ablate(tiny, [direction, twice]):
            pass
    with pytest.raises(BadInputError, match="no direction"):
        with ablate(tiny, []):
            pass
    assert _hooks_count(tiny) == 0
    assert torch.equal(before, last_logits(tiny, prompts))
