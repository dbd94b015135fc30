import pytest
import torch
from transformers import LlamaConfig, Qwen2Config

from probes import load_model, record
from probes.packing import ROW_QUANTUM, packable, packed
from probes.prompts import Encoded

SYSTEM = "You are a careful assistant who answers briefly."


def _enc(lengths: list[int]) -> list[Encoded]:
    """Prompts of the given lengths whose ids say which prompt and token they are."""
    return [Encoded([100 * i + t for t in range(n)], 0, n) for i, n in enumerate(lengths)]


@pytest.mark.parametrize("max_tokens,max_batch", [(4096, 64), (256, 64), (128, 3), (64, 64)])
def test_packed__places_every_prompt_once_within_the_budget(max_tokens, max_batch):
    g = torch.Generator().manual_seed(0)
    lengths = [int(x) for x in torch.randint(1, 90, (60,), generator=g)] + [150, 7]
    enc = _enc(lengths)
    batches = list(packed(enc, range(len(enc)), 0, max_tokens, max_batch))
    seen = [r for b in batches for r in b.rows]
    assert sorted(seen) == list(range(len(enc)))
    for b in batches:
        n_rows, width = b.input_ids.shape
        longest = max(lengths[r] for r in b.rows)
        assert width % ROW_QUANTUM == 0 and longest <= width < longest + ROW_QUANTUM
        assert n_rows <= max_batch and (n_rows * width <= max_tokens or n_rows == 1)
        for i, r in enumerate(b.rows):  # each prompt's ids sit where the batch says
            a, n = int(b.start[i]), int(b.length[i])
            assert b.input_ids[int(b.row[i]), a : a + n].tolist() == enc[r].ids
        spans = sorted(
            (int(b.row[i]), int(b.start[i]), int(b.length[i])) for i in range(len(b.rows))
        )
        for (r1, a1, n1), (r2, a2, _) in zip(spans, spans[1:]):
            assert r1 != r2 or a1 + n1 <= a2  # no overlap
        assert b.n_real_tokens == sum(lengths[r] for r in b.rows)
    padded = sum(b.input_ids.numel() for b in batches)
    if max_tokens == 4096:  # one width for all, the short prompts fill the gaps
        assert padded - sum(lengths) < 0.2 * sum(lengths)


def test_packed__mask_positions_and_reads_follow_each_prompt():
    enc = [Encoded([1, 2, 3], 1, 2), Encoded([4, 5], 0, 1)]
    [b] = packed(enc, [0, 1], 9, 4096, 64)
    assert b.input_ids.shape == (1, ROW_QUANTUM) and b.rows == [0, 1]
    assert b.input_ids[0, :6].tolist() == [1, 2, 3, 4, 5, 9]
    mask = b.mask(2, torch.float32)  # two shared prefix tokens
    assert mask.shape == (1, 1, ROW_QUANTUM, 2 + ROW_QUANTUM)
    allowed = (mask[0, 0] == 0).int()
    want = torch.tensor([
        [1, 1, 1, 0, 0, 0, 0, 0],  # prompt 0, token 0: the prefix and itself
        [1, 1, 1, 1, 0, 0, 0, 0],
        [1, 1, 1, 1, 1, 0, 0, 0],
        [1, 1, 0, 0, 0, 1, 0, 0],  # prompt 1 does not see prompt 0
        [1, 1, 0, 0, 0, 1, 1, 0],
        [1, 1, 0, 0, 0, 0, 0, 1],  # padding: the prefix and itself
    ])  # fmt: skip
    assert torch.equal(allowed[:6, :8], want)
    assert allowed.sum(1).min() >= 1 and mask.min() == torch.finfo(torch.float32).min
    assert b.position_ids(2)[0, :6].tolist() == [2, 3, 4, 2, 3, 2]
    assert [t.tolist() for t in b.index("last")] == [[0, 0], [2, 4]]
    assert [t.tolist() for t in b.index("eoi[-2]")] == [[0, 0], [1, 3]]
    w = b.content_weights(enc)
    assert w.shape == (2, 1, ROW_QUANTUM)
    assert w[0, 0, :6].tolist() == [0, 1, 0, 0, 0, 0] and w[1, 0, :6].tolist() == [0, 0, 0, 1, 0, 0]


def test_packable__only_attention_that_takes_a_custom_mask():
    cfg = Qwen2Config(num_hidden_layers=2)
    for impl, ok in [("eager", True), ("sdpa", True), ("flash_attention_2", False)]:
        cfg._attn_implementation = impl
        assert packable(cfg) is ok, impl
    cfg._attn_implementation = "eager"
    cfg.layer_types = ["full_attention", "sliding_attention"]
    assert not packable(cfg)
    llama = LlamaConfig(num_hidden_layers=2)
    llama._attn_implementation = "eager"
    assert packable(llama)
    llama.sliding_window = 128  # a Mistral-style window, no use_sliding_window switch
    assert not packable(llama)


@pytest.mark.parametrize("fast_path", [True, False])
def test_record__packed_prefix_equals_full_forward_on_both_attention_paths(
    tiny_dir, prompts, fast_path
):
    m = load_model(tiny_dir, device="cpu", dtype="float32", fast_path=fast_path)
    kw = dict(layers="all", positions=["last", "eoi[-2]", "mean"], system=SYSTEM, progress=False,
              sites=["resid_pre", "attn_out", "resid_post"])  # fmt: skip
    many = prompts * 7  # several packed rows and two batches
    full = record(m, many, **kw)
    got = record(m, many, share_prefix=True, max_tokens=4 * ROW_QUANTUM, **kw)
    for key in full.data:
        torch.testing.assert_close(got.data[key], full.data[key], atol=1e-5, rtol=1e-5)
    assert m.n_active_hooks() == 0


def test_record__packed_prefix_with_sdpa_attention(tiny_dir, prompts):
    m = load_model(tiny_dir, device="cpu", dtype="float32")
    m.hf_model.set_attn_implementation("sdpa")
    assert m.hf_model.config._attn_implementation == "sdpa"
    kw = dict(layers="all", positions=["last", "mean"], system=SYSTEM, progress=False)
    full = record(m, prompts, **kw)
    got = record(m, prompts, share_prefix=True, **kw)
    for key in full.data:
        torch.testing.assert_close(got.data[key], full.data[key], atol=1e-5, rtol=1e-5)


def test_record_to_store__packed_shards_equal_the_full_forward(tiny, prompts, tmp_path):
    from probes.store import record_to_store

    many = prompts * 5
    kw = dict(layers="all", positions=["last", "mean"], system=SYSTEM)
    store = record_to_store(tiny, many, tmp_path / "s", shard_size=8, share_prefix=True,
                            max_tokens=2 * ROW_QUANTUM, progress=False, **kw)  # fmt: skip
    assert len(store.manifest["shards"]) == 4
    got, full = store.load(), record(tiny, many, progress=False, **kw)
    for key in full.data:
        torch.testing.assert_close(got.data[key], full.data[key], atol=1e-5, rtol=1e-5)
