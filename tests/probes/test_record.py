import pytest
import torch

from probes import BadInputError, record
from probes.prompts import encode
from probes.record import parse_layers


def _hooks_count(model):
    return model.n_active_hooks()


def test_record__shapes_last_all_layers(tiny, prompts):
    acts = record(tiny, prompts, layers="all", positions="last")
    assert acts["resid_post"].shape == (len(prompts), tiny.n_layers, tiny.d_model)
    assert acts.layers == list(range(tiny.n_layers))
    assert torch.isfinite(acts["resid_post"]).all()


def test_record__eoi_expands_to_template_tokens(tiny, prompts):
    n_eoi = encode(tiny.tokenizer, prompts)[0].n_eoi
    acts = record(tiny, prompts, layers=[1], positions="eoi")
    assert acts.positions == [f"eoi[-{k}]" for k in range(n_eoi, 0, -1)]
    last = record(tiny, prompts, layers=[1], positions="last")
    torch.testing.assert_close(acts["resid_post", "eoi[-1]"], last["resid_post"])


def test_record__batched_equals_one_by_one(tiny, prompts):
    batched = record(
        tiny,
        prompts,
        sites=["resid_pre", "resid_post", "attn_out", "mlp_out"],
        layers="all",
        positions=["last", "mean", "eoi[-2]"],
    )
    for i, p in enumerate(prompts):
        single = record(
            tiny,
            [p],
            sites=["resid_pre", "resid_post", "attn_out", "mlp_out"],
            layers="all",
            positions=["last", "mean", "eoi[-2]"],
        )
        for key, t in single.data.items():
            torch.testing.assert_close(batched.data[key][i], t[0], atol=1e-5, rtol=1e-5)


def test_record__all_positions_ragged_matches_singles(tiny, prompts):
    acts = record(tiny, prompts, layers=[0, 2], positions="all")
    lens = [len(e) for e in encode(tiny.tokenizer, prompts)]
    assert acts.offsets.tolist() == [0, *torch.tensor(lens).cumsum(0).tolist()]
    single = record(tiny, [prompts[1]], layers=[0, 2], positions="all")
    torch.testing.assert_close(
        acts.tokens("resid_post", 1), single.tokens("resid_post", 0), atol=1e-5, rtol=1e-5
    )


def test_record__matches_hf_hidden_states(tiny, prompts):
    acts = record(
        tiny, prompts[:1], sites=["resid_pre", "resid_post"], layers="all", positions="all"
    )
    enc = encode(tiny.tokenizer, prompts[:1])[0]
    with torch.no_grad():
        hs = tiny.hf_model(torch.tensor([enc.ids]), output_hidden_states=True).hidden_states
    toks_post = acts.tokens("resid_post", 0)
    toks_pre = acts.tokens("resid_pre", 0)
    for layer in range(tiny.n_layers - 1):  # HF's last hidden state is after the final norm
        torch.testing.assert_close(toks_post[:, layer], hs[layer + 1][0], atol=1e-4, rtol=0)
    for layer in range(tiny.n_layers):
        torch.testing.assert_close(toks_pre[:, layer], hs[layer][0], atol=1e-4, rtol=0)


def test_record__equals_bridge_run_with_cache_on_a_left_padded_batch(tiny, prompts):
    # record calls the HF decoder (whose blocks are the bridge's); it must give exactly
    # what the bridge's own forward gives, padded rows included.
    from probes.prompts import bucketed

    sites = ["resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post"]
    acts = record(tiny, prompts, sites=sites, layers="all", positions=["last", "eoi[-2]"])
    enc = encode(tiny.tokenizer, prompts)
    (batch,) = bucketed(enc, range(len(enc)), tiny.tokenizer.pad_token_id, 10**6, 10**6)
    assert batch.attention_mask.min() == 0  # the batch really is left-padded
    with torch.inference_mode():
        _, cache = tiny.bridge.run_with_cache(batch.input_ids, attention_mask=batch.attention_mask)
    rows = torch.tensor(batch.rows)
    for s in sites:
        for layer in range(tiny.n_layers):
            x = cache[f"blocks.{layer}.hook_{s}"]  # [batch, seq, d]
            torch.testing.assert_close(acts[s, "last"][rows, layer], x[:, -1], atol=1e-5, rtol=0)
            torch.testing.assert_close(acts[s, "eoi[-2]"][rows, layer], x[:, -2], atol=1e-5, rtol=0)


def test_record__stops_after_last_needed_layer(tiny, prompts):
    fired = []
    hp = tiny.bridge.hook_dict[f"blocks.{tiny.n_layers - 1}.hook_resid_pre"]
    h = hp.register_forward_hook(lambda m, a, o: fired.append(1))
    try:
        record(tiny, prompts, layers=[0], positions="last")
    finally:
        h.remove()
    assert fired == []


def test_record__no_hooks_left_after_success_or_error(tiny, prompts):
    before = _hooks_count(tiny)
    record(tiny, prompts, layers="all", positions="mean")
    assert _hooks_count(tiny) == before

    def boom(n):
        raise RuntimeError("interrupted")

    from probes.prompts import common_n_eoi
    from probes.record import Request, record_slice

    enc = encode(tiny.tokenizer, prompts)
    req = Request.build(tiny, "resid_post", "all", "last", common_n_eoi(enc))
    with pytest.raises(RuntimeError):
        record_slice(tiny, prompts, req, enc, progress=boom)
    assert _hooks_count(tiny) == before


def test_record__small_token_budget_gives_same_result(tiny, prompts):
    a = record(tiny, prompts, layers="all", positions="last")
    b = record(tiny, prompts, layers="all", positions="last", max_tokens=40, max_batch=2)
    torch.testing.assert_close(a["resid_post"], b["resid_post"], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"layers": [99]}, r"valid layers are 0\.\.2"),
        ({"layers": "1:1"}, "selects no layer"),
        ({"layers": "x"}, "invalid layers"),
        ({"sites": "resid_banana"}, "unknown site"),
        ({"positions": "middle"}, "unknown position"),
        ({"positions": "eoi[-99]"}, "out of range"),
        ({"positions": ["all", "last"]}, "cannot be combined"),
    ],
)
def test_record__bad_input_is_clear(tiny, prompts, kwargs, match):
    before = _hooks_count(tiny)
    with pytest.raises(BadInputError, match=match):
        record(tiny, prompts, **kwargs)
    assert _hooks_count(tiny) == before


def test_record__empty_prompts_rejected(tiny):
    with pytest.raises(BadInputError, match="empty"):
        record(tiny, [])
    with pytest.raises(BadInputError, match="not a single string"):
        record(tiny, "How do I bake bread?")


def test_parse_layers__forms():
    assert parse_layers("all", 4) == [0, 1, 2, 3]
    assert parse_layers("1:3", 4) == [1, 2]
    assert parse_layers("0,3", 4) == [0, 3]
    assert parse_layers(2, 4) == [2]


@pytest.mark.slow
@pytest.mark.parametrize("share_prefix", [False, True])
def test_record__smollm_matches_hf_output_hidden_states(smollm, prompts, share_prefix):
    # The full forward is bit-identical to HF's. The shared template head runs as its own
    # forward (other matmul shapes), so rounding differs by float32 ulps of the residual
    # stream's largest entries (smollm's reach ~540): 1.5e-4 seen, 1e-6 of the largest allowed.
    acts = record(smollm, prompts, layers="all", positions="last", share_prefix=share_prefix)
    for i, p in enumerate(prompts):
        enc = encode(smollm.tokenizer, [p])[0]
        with torch.no_grad():
            hs = smollm.hf_model(torch.tensor([enc.ids]), output_hidden_states=True).hidden_states
        for layer in range(smollm.n_layers - 1):
            want = hs[layer + 1][0, -1]
            atol = max(1e-4, 1e-6 * float(want.abs().max())) if share_prefix else 1e-4
            torch.testing.assert_close(acts["resid_post"][i, layer], want, atol=atol, rtol=0)
