"""Batched greedy decoding of chat prompts with any HF causal LM.

One loop serves every caller: :func:`steering.generate` (the bridge-wrapped model,
so active interventions fire) and the backdoor organism's plain HF copies.

Example:
    >>> greedy(model.hf_model, model.tokenizer, ["How do I bake bread?"], max_new_tokens=16)  # doctest: +SKIP
    ['To bake bread, you need flour, water, yeast and salt...']
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import Tensor

from probes.prompts import Batch, Encoded, bucketed, encode

BeforeBatch = Callable[[Sequence[Encoded], Batch], None]
AfterBatch = Callable[[Batch, Tensor], None]


def greedy(
    hf_model,
    tokenizer,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 16,
    max_batch: int = 16,
    max_tokens: int = 4096,
    system: str | None = None,
    with_ended: bool = False,
    before_batch: BeforeBatch | None = None,
    after_batch: AfterBatch | None = None,
) -> list[str] | tuple[list[str], list[bool]]:
    """Greedy completions of ``prompts`` read through the chat template, in input order.

    Prompts run in length-bucketed, left-padded batches of up to ``max_batch``. On CPU
    the prefill dominates short completions and wide batches pad more: 48 prompts on
    qwen2.5-coder-0.5b prefilled in 9.5 s as one batch and in 5.9 s in batches of 16
    (24 new tokens: 17.6 s and 22.4 s, so 16 is not the fastest for long completions).
    With ``with_ended``, also returns whether each completion produced the end token
    (a whole answer) rather than stopping at ``max_new_tokens``.

    ``before_batch(encoded, batch)`` runs before each batch is generated and
    ``after_batch(batch, new_tokens[batch, steps])`` after it (a defense sets its
    gate's inputs and reads its monitor there).
    """
    enc = encode(tokenizer, prompts, system)
    out: list[str] = [""] * len(enc)
    ended = [False] * len(enc)
    device = hf_model.get_input_embeddings().weight.device
    for batch in bucketed(enc, range(len(enc)), tokenizer.pad_token_id, max_tokens, max_batch):
        if before_batch is not None:
            before_batch(enc, batch)
        with torch.inference_mode():
            ids = hf_model.generate(
                input_ids=batch.input_ids.to(device),
                attention_mask=batch.attention_mask.to(device),
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
                eos_token_id=tokenizer.eos_token_id,
            )
        new = ids[:, batch.input_ids.shape[1] :].cpu()
        if after_batch is not None:
            after_batch(batch, new)
        for i, r in enumerate(batch.rows):
            out[r] = tokenizer.decode(new[i], skip_special_tokens=True).strip()
            ended[r] = bool((new[i] == tokenizer.eos_token_id).any())
    return (out, ended) if with_ended else out
