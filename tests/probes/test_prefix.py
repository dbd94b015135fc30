import importlib

import pytest
import torch

from probes import fastpath, load_model, record
from probes.packing import ROW_QUANTUM, Packed
from probes.prefix import PrefixCache, model_is_hooked, shared_prefix_length, strip
from probes.prompts import Batch, Encoded, encode
from probes.record import hooks

SYSTEM = "You are a careful assistant who answers briefly."
SITES = ["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out"]
record_module = importlib.import_module("probes.record")


def test_shared_prefix_length__stops_at_the_first_difference_or_content():
    a = Encoded([1, 2, 3, 4, 5, 9], 3, 5)
    b = Encoded([1, 2, 3, 7, 5, 9], 3, 5)
    c = Encoded([1, 2, 8, 7, 5, 9], 3, 5)
    assert shared_prefix_length([a, b], ["last"]) == 3  # capped at the content start
    assert shared_prefix_length([a, c], ["last"]) == 2  # the ids differ at 2
    assert shared_prefix_length([a, Encoded([1, 2, 3, 4, 5, 9], 1, 5)], ["mean"]) == 1
    assert shared_prefix_length([a, b], ["all"]) == 0  # 'all' needs the prefix rows
    assert shared_prefix_length([a], ["last"]) == 0  # nothing to share with one prompt
    assert strip([a], 3) == [Encoded([4, 5, 9], 0, 2)]


def test_shared_prefix_length__is_the_template_head_on_a_real_template(tiny, prompts):
    enc = encode(tiny.tokenizer, prompts, SYSTEM)
    n = shared_prefix_length(enc, ["last"])
    assert n == min(e.content_start for e in enc) > 5
    assert tiny.tokenizer.decode(enc[0].ids[:n]).startswith("<|im_start|>system")


@pytest.mark.parametrize("system", [None, SYSTEM])
def test_record__shared_prefix_equals_full_forward(tiny, prompts, system):
    kw = dict(sites=SITES, layers="all", positions=["eoi", "mean"], system=system, progress=False)
    full = record(tiny, prompts, share_prefix=False, **kw)
    shared = record(tiny, prompts, share_prefix=True, **kw)
    assert full.data.keys() == shared.data.keys()
    for key in full.data:
        torch.testing.assert_close(shared.data[key], full.data[key], atol=1e-5, rtol=1e-5)
    assert tiny.n_active_hooks() == 0 and not model_is_hooked(tiny)


def test_record__shared_prefix_runs_once_and_packs_the_rest(tiny, prompts, monkeypatch):
    seen = []
    real = record_module._run_batch

    def spy(model, req, encoded, batch, out_dtype, prefix=None):
        seen.append((type(batch), tuple(batch.input_ids.shape), prefix and prefix.length,
                     sorted(batch.rows)))  # fmt: skip
        return real(model, req, encoded, batch, out_dtype, prefix)

    monkeypatch.setattr(record_module, "_run_batch", spy)
    enc = encode(tiny.tokenizer, prompts, SYSTEM)
    n = shared_prefix_length(enc, ["last"])
    rest = sorted(len(e) - n for e in enc)
    assert rest[0] + rest[1] <= ROW_QUANTUM < rest[-1] * 2  # two prompts can share a row
    record(tiny, prompts, system=SYSTEM, progress=False, share_prefix=True)
    [(kind, (n_rows, width), head, rows)] = seen
    assert (kind, head, rows) == (Packed, n, list(range(len(prompts))))
    assert width == ROW_QUANTUM and n_rows < len(prompts)
    seen.clear()
    record(tiny, prompts, system=SYSTEM, progress=False)  # the default: the full prompts
    assert seen == [(Batch, (len(prompts), max(len(e) for e in enc)), None,
                     list(range(len(prompts))))]  # fmt: skip


def test_record__no_sharing_while_a_callers_hook_is_attached(tiny, prompts):
    seen = []
    with hooks(tiny, {"blocks.0.hook_resid_pre": lambda m, a, x: seen.append(tuple(x.shape))}):
        assert model_is_hooked(tiny)
        record(tiny, prompts, system=SYSTEM, layers=[1], progress=False, share_prefix=True)
    enc = encode(tiny.tokenizer, prompts, SYSTEM)
    assert seen == [(len(prompts), max(len(e) for e in enc), tiny.d_model)]  # the full batch
    assert not model_is_hooked(tiny)


def test_record__position_all_is_recorded_without_sharing(tiny, prompts):
    shared = record(tiny, prompts, positions="all", system=SYSTEM, progress=False,
                    share_prefix=True)  # fmt: skip
    full = record(tiny, prompts, positions="all", system=SYSTEM, share_prefix=False,
                  progress=False)  # fmt: skip
    torch.testing.assert_close(shared["resid_post"], full["resid_post"], atol=0, rtol=0)


def test_record__error_mid_way_leaves_no_hook_with_a_shared_prefix(tiny, prompts, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(PrefixCache, "update", boom)  # the first batch's forward fails
    with pytest.raises(RuntimeError, match="boom"):
        record(tiny, prompts, system=SYSTEM, progress=False, share_prefix=True)
    assert tiny.n_active_hooks() == 0 and not model_is_hooked(tiny)


@pytest.mark.slow
def test_record__compiled_blocks_read_the_shared_prefix(tiny_dir, tiny, prompts):
    comp = load_model(tiny_dir, device="cpu", dtype="float32", compile=True)
    calls, runs = [], [b.__dict__[fastpath._COMPILED] for b in comp.bridge.blocks]
    for b, run in zip(comp.bridge.blocks, runs):  # count calls of each block's compiled layer
        b.__dict__[fastpath._COMPILED] = lambda *a, _run=run, **k: (
            calls.append(type(k.get("past_key_values")).__name__) or _run(*a, **k)
        )
    try:
        got = record(comp, prompts, layers="all", positions=["last", "mean"], system=SYSTEM,
                     progress=False, share_prefix=True)  # fmt: skip
    finally:
        for b, run in zip(comp.bridge.blocks, runs):
            b.__dict__[fastpath._COMPILED] = run
    # the prefix's own forward fills an ordinary cache on the eager path; the batch is compiled
    assert calls == ["_PrefixKV"] * comp.n_layers
    want = record(tiny, prompts, layers="all", positions=["last", "mean"], system=SYSTEM,
                  progress=False)  # fmt: skip
    for key in want.data:
        torch.testing.assert_close(got.data[key], want.data[key], atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_record__smollm_shared_prefix_matches_full_forward(smollm, prompts):
    enc = encode(smollm.tokenizer, prompts)
    assert shared_prefix_length(enc, ["last"]) >= 20  # the template's default system turn
    kw = dict(layers="all", positions=["last", "mean"], progress=False)
    shared, full = record(smollm, prompts, share_prefix=True, **kw), record(smollm, prompts, **kw)
    for key in full.data:  # float32 rounding, against each layer's scale (up to ~570 late)
        scale = full.data[key].abs().amax(dim=(0, 2))  # [n_layers]
        err = (shared.data[key] - full.data[key]).abs().amax(dim=(0, 2))
        assert (err <= 1e-5 * scale).all(), (err / scale).max()
