import torch
from transformers import AutoModelForCausalLM

from probes.prompts import encode
from steering.generate import generate


def _hf_greedy(path, tokenizer, prompt: str, n: int) -> str:
    """Plain transformers greedy decoding with a KV cache, one prompt (no padding)."""
    hf = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    ids = torch.tensor([encode(tokenizer, [prompt])[0].ids])
    with torch.inference_mode():
        out = hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=n,
                          do_sample=False, pad_token_id=tokenizer.pad_token_id,
                          eos_token_id=tokenizer.eos_token_id)  # fmt: skip
    return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()


def test_generate__equals_plain_transformers_decoding(tiny, tiny_dir, prompts):
    """Generation through the bridge-wrapped model (KV cache, left padding) equals plain HF."""
    ours = generate(tiny, prompts, max_new_tokens=8)
    for p, o in zip(prompts, ours):
        assert o == _hf_greedy(tiny_dir, tiny.tokenizer, p, 8)


def test_unembedding__takes_a_contiguous_copy_and_gives_the_same_logits(tiny):
    # load_model swaps the unembedding's class (see probes.models.contiguous_unembedding):
    # generation unembeds a strided slice, which torch's bf16 CPU linear handles very slowly.
    from probes.models import _ContiguousLinear

    lin = tiny.hf_model.get_output_embeddings().original_component
    assert type(lin) is _ContiguousLinear
    h = torch.randn(3, 5, tiny.d_model)
    with torch.inference_mode():
        torch.testing.assert_close(
            lin(h[:, -1:]), torch.nn.functional.linear(h[:, -1:], lin.weight)
        )
    assert tiny.n_active_hooks() == 0
