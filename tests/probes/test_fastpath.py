"""The bridge fast path: HF numerics, hook semantics kept, fallback when internals are hooked."""

import pytest
import torch
from transformers import AutoModelForCausalLM

from probes import fastpath, load_model, record
from probes.generation import greedy
from probes.prompts import encode, make_batch, position_ids


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def pair(request, tiny_dir, tiny_llama_dir):
    """(fast-path model, the same model without it, stock HF model), all fp32."""
    folder = tiny_dir if request.param == "qwen2" else tiny_llama_dir
    fast = load_model(folder, device="cpu", dtype="float32")
    slow = load_model(folder, device="cpu", dtype="float32", fast_path=False)
    # The bridge configures its HF model for eager attention; the fast path runs HF's
    # eager computation, so the reference is the stock model with the same setting.
    stock = AutoModelForCausalLM.from_pretrained(
        folder, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    return fast, slow, stock


def _hidden(model_or_hf, batch) -> torch.Tensor:
    base = getattr(model_or_hf, "hf_model", model_or_hf).model
    with torch.inference_mode():
        out = base(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                   position_ids=position_ids(batch.attention_mask), use_cache=False)  # fmt: skip
    return out.last_hidden_state


def _batch(model, prompts):
    enc = encode(model.tokenizer, prompts)
    return make_batch(enc, range(len(enc)), model.tokenizer.pad_token_id)


def test_install__every_norm_and_attention_and_idempotent(pair):
    fast, slow, _ = pair
    n_layers = fast.n_layers
    assert fastpath.install(fast.bridge) == 0  # load_model installed them already
    marked = [m for m in fast.bridge.modules() if m.__dict__.get(fastpath._MARK)]
    assert len(marked) == 3 * n_layers + 1  # two norms and attention per block, final norm
    assert not any(m.__dict__.get(fastpath._MARK) for m in slow.bridge.modules())


def test_fast_path__equals_stock_hf_and_bridge_left_padded(pair, prompts):
    fast, slow, stock = pair
    batch = _batch(fast, prompts)
    real = batch.attention_mask.bool()
    h_fast, h_slow, h_stock = (_hidden(m, batch)[real] for m in (fast, slow, stock))
    torch.testing.assert_close(h_fast, h_stock, atol=0, rtol=0)  # HF's own numerics
    torch.testing.assert_close(h_fast, h_slow, atol=1e-4, rtol=1e-4)


def test_fast_path__record_all_sites_match_bridge(pair, prompts):
    fast, slow, _ = pair
    sites = ["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out"]
    a = record(fast, prompts, sites=sites, layers="all", positions=["last", "mean"], progress=False)
    b = record(slow, prompts, sites=sites, layers="all", positions=["last", "mean"], progress=False)
    for site in sites:
        for pos in ("last", "mean"):
            torch.testing.assert_close(a[site, pos], b[site, pos], atol=1e-4, rtol=1e-4)
    assert fast.n_active_hooks() == 0


def test_fast_path__internal_hook_takes_the_bridge_path(pair, prompts):
    fast, slow, _ = pair
    batch = _batch(fast, prompts)
    seen = []

    def pattern(x, hook):
        seen.append(tuple(x.shape))

    for m in (fast, slow):
        for i in range(m.n_layers):
            m.bridge.hook_dict[f"blocks.{i}.attn.hook_pattern"].add_hook(pattern)
    try:
        h_fast, h_slow = _hidden(fast, batch), _hidden(slow, batch)
    finally:
        fast.bridge.reset_hooks()
        slow.bridge.reset_hooks()
    assert len(seen) == 2 * fast.n_layers  # the hook fired on every layer of both
    torch.testing.assert_close(h_fast, h_slow, atol=0, rtol=0)  # same code path


def test_fast_path__kv_cache_generation_matches_bridge(pair, prompts):
    fast, slow, _ = pair
    a = greedy(fast.hf_model, fast.tokenizer, prompts, max_new_tokens=6)
    b = greedy(slow.hf_model, slow.tokenizer, prompts, max_new_tokens=6)
    assert a == b


def test_uninstall__restores_the_bridge_forward(tiny_dir, prompts):
    m = load_model(tiny_dir, device="cpu", dtype="float32")
    n = fastpath.uninstall(m.bridge)
    assert n == 3 * m.n_layers + 1
    assert not any("forward" in mod.__dict__ for mod in m.bridge.modules())
    assert fastpath.install(m.bridge) == n


def test_fast_path__is_taken_when_nothing_is_hooked(pair, prompts):
    fast, slow, _ = pair
    calls = []

    def count_hf_attention_calls(model):  # the wrapped HF modules, which the bridge bypasses
        return [
            layer.self_attn.original_component.register_forward_hook(lambda *a: calls.append(1))
            for layer in model.hf_model.model.layers
        ]

    handles = count_hf_attention_calls(slow) + count_hf_attention_calls(fast)
    try:
        _hidden(slow, _batch(slow, prompts))
        assert calls == []
        _hidden(fast, _batch(fast, prompts))
    finally:
        for h in handles:
            h.remove()
    assert len(calls) == fast.n_layers


def test_fast_path__a_plain_torch_hook_on_an_internal_point_is_honoured(pair, prompts):
    fast, slow, _ = pair
    batch = _batch(fast, prompts)
    seen = []
    hp = fast.bridge.hook_dict["blocks.0.attn.hook_attn_scores"]
    handle = hp.register_forward_hook(lambda mod, args, out: seen.append(out.shape))
    try:
        h_fast = _hidden(fast, batch)
    finally:
        handle.remove()
    assert len(seen) == 1  # layer 0 took the bridge path; the others the fast one
    torch.testing.assert_close(h_fast, _hidden(slow, batch), atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def compiled(tiny_dir):
    """(compiled-block model, eager fast-path model), fp32 tiny Qwen2."""
    return (
        load_model(tiny_dir, device="cpu", dtype="float32", compile=True),
        load_model(tiny_dir, device="cpu", dtype="float32"),
    )


@pytest.mark.slow
def test_compiled__equals_eager_within_rounding_and_takes_the_compiled_path(compiled, prompts):
    comp, eager = compiled
    marked = [b for b in comp.bridge.blocks if b.__dict__.get(fastpath._MARK)]
    assert len(marked) == comp.n_layers
    batch = _batch(comp, prompts)
    real = batch.attention_mask.bool()
    calls, runs = [], [b.__dict__[fastpath._COMPILED] for b in comp.bridge.blocks]
    for b, run in zip(comp.bridge.blocks, runs):  # count calls of each block's compiled layer
        b.__dict__[fastpath._COMPILED] = lambda *a, _run=run, **k: calls.append(1) or _run(*a, **k)
    try:
        h = _hidden(comp, batch)[real]
    finally:
        for b, run in zip(comp.bridge.blocks, runs):
            b.__dict__[fastpath._COMPILED] = run
    assert len(calls) == comp.n_layers
    torch.testing.assert_close(h, _hidden(eager, batch)[real], atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_compiled__record_every_site_matches_eager(compiled, prompts):
    comp, eager = compiled
    sites = ["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out"]
    for group in (["resid_pre", "resid_post"], sites):  # block-level hooks only; then internal
        a = record(comp, prompts, sites=group, layers="all", positions=["last", "mean"],
                   progress=False)  # fmt: skip
        b = record(eager, prompts, sites=group, layers="all", positions=["last", "mean"],
                   progress=False)  # fmt: skip
        for site in group:
            for pos in ("last", "mean"):
                torch.testing.assert_close(a[site, pos], b[site, pos], atol=1e-4, rtol=1e-4)
    assert comp.n_active_hooks() == 0


@pytest.mark.slow
def test_compiled__internal_hook_sends_the_block_to_the_bridge(compiled, prompts):
    comp, eager = compiled
    batch = _batch(comp, prompts)
    seen = []
    comp.bridge.hook_dict["blocks.1.hook_mlp_out"].add_hook(lambda x, hook: seen.append("tl"))
    handle = comp.bridge.blocks[0].attn.register_forward_hook(lambda *a: seen.append("torch"))
    try:
        h = _hidden(comp, batch)
    finally:
        comp.bridge.reset_hooks()
        handle.remove()
    assert sorted(seen) == ["tl", "torch"]  # a TL hook point and a plain torch hook both fire
    torch.testing.assert_close(h, _hidden(eager, batch), atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_compiled__kv_cache_generation_matches_eager(compiled, prompts):
    comp, eager = compiled
    a = greedy(comp.hf_model, comp.tokenizer, prompts, max_new_tokens=6)
    assert a == greedy(eager.hf_model, eager.tokenizer, prompts, max_new_tokens=6)


def test_compiled__uninstall_restores_every_block(tiny_dir):
    m = load_model(tiny_dir, device="cpu", dtype="float32", compile=True)
    assert fastpath.uninstall(m.bridge) == 4 * m.n_layers + 1  # + one block each
    assert not any("forward" in mod.__dict__ for mod in m.bridge.modules())


def test_compiled__needs_the_fast_path_and_a_compiler(tiny_dir, monkeypatch):
    from torch._inductor import cpp_builder

    from probes.errors import BadInputError

    with pytest.raises(BadInputError, match="fast path"):
        load_model(tiny_dir, device="cpu", dtype="float32", fast_path=False, compile=True)

    def missing():
        raise RuntimeError("no working C++ compiler found")

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", missing)
    with pytest.raises(BadInputError, match="C\\+\\+ compiler"):
        load_model(tiny_dir, device="cpu", dtype="float32", compile=True)
