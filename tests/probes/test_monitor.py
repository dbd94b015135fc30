import pytest
import torch

from probes import BadInputError, record
from probes.estimators import LinearProbe
from probes.monitor import ProbeMonitor
from probes.probe import Probe
from steering.generate import generate


def make_probe(model, layer=1, position="last", seed=0, threshold=0.0):
    g = torch.Generator().manual_seed(seed)
    est = LinearProbe.from_linear(torch.randn(model.d_model, generator=g).numpy(), 0.1)
    return Probe(est, "resid_post", layer, position, "linear", threshold, 0.01, model.identity)


def test_monitor__prompt_scores_equal_offline_scores(tiny, prompts):
    probe = make_probe(tiny)
    offline = probe.score(tiny, prompts)
    with ProbeMonitor(tiny, probe) as mon:
        generate(tiny, prompts, max_new_tokens=4, max_batch=64)
    # generate() buckets by length; the monitor saw one batch in bucket order
    from probes.prompts import bucketed, encode

    enc = encode(tiny.tokenizer, prompts)
    order = next(iter(bucketed(enc, range(len(enc)), tiny.tokenizer.pad_token_id, 4096, 64))).rows
    torch.testing.assert_close(
        mon.prompt_scores["probe"].double(), offline[order], atol=1e-4, rtol=1e-4
    )
    assert mon.scores().shape[1] >= 2  # prompt + generated tokens
    assert tiny.n_active_hooks() == 0


def test_monitor__eoi_position_and_token_scores(tiny, prompts):
    probe = make_probe(tiny, position="eoi[-2]")
    with ProbeMonitor(tiny, {"p": probe}) as mon:
        generate(tiny, prompts[:1], max_new_tokens=3)
    offline = probe.score(tiny, prompts[:1])
    torch.testing.assert_close(mon.prompt_scores["p"].double(), offline, atol=1e-4, rtol=1e-4)
    # token scores equal what record() reads at each generated token
    assert len(mon.token_scores["p"]) >= 1


def test_monitor__mean_position_equals_offline_scores(tiny, prompts):
    from probes.prompts import bucketed, content_weights, encode

    probe = make_probe(tiny, position="mean")
    enc = encode(tiny.tokenizer, prompts)
    batch = next(iter(bucketed(enc, range(len(enc)), tiny.tokenizer.pad_token_id, 4096, 64)))
    with ProbeMonitor(tiny, probe) as mon:
        with pytest.raises(BadInputError, match="set_content_weights"):
            tiny.bridge(batch.input_ids, attention_mask=batch.attention_mask, return_type=None)
        mon.set_content_weights(content_weights(enc, batch))
        tiny.bridge(batch.input_ids, attention_mask=batch.attention_mask, return_type=None)
    offline = probe.score(tiny, prompts)
    torch.testing.assert_close(
        mon.prompt_scores["probe"].double(), offline[batch.rows], atol=1e-4, rtol=1e-4
    )
    assert tiny.n_active_hooks() == 0


def test_monitor__set_prompts_gives_mean_scores_for_one_generated_batch(tiny, prompts):
    probe = make_probe(tiny, position="mean")
    for p in prompts[:2]:
        with ProbeMonitor(tiny, probe) as mon:
            mon.set_prompts([p])
            generate(tiny, [p], max_new_tokens=2)
        torch.testing.assert_close(
            mon.prompt_scores["probe"].double(), probe.score(tiny, [p]), atol=1e-4, rtol=1e-4
        )
    assert tiny.n_active_hooks() == 0


def test_monitor__bad_input(tiny):
    with pytest.raises(BadInputError, match="at least one"):
        ProbeMonitor(tiny, [])
    with pytest.raises(BadInputError, match="'last', 'eoi\\[-k\\]' or 'mean'"):
        ProbeMonitor(tiny, make_probe(tiny, position="all"))
    other = make_probe(tiny)
    other.model_identity = {**tiny.identity, "digest": "f" * 64}
    with pytest.raises(BadInputError, match="another model"):
        ProbeMonitor(tiny, other)
    assert tiny.n_active_hooks() == 0


def test_monitor__no_hooks_left_after_exception(tiny, prompts):
    with pytest.raises(ZeroDivisionError), ProbeMonitor(tiny, make_probe(tiny)):
        record(tiny, prompts, layers=[2])
        raise ZeroDivisionError
    assert tiny.n_active_hooks() == 0
