"""Batched greedy generation and last-token logits through the chat template.

Both run the HF model inside the bridge, so every active intervention hook
fires (on the prompt and on each decoded token).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from probes.generation import greedy
from probes.models import LoadedModel
from probes.prompts import bucketed, encode, position_ids


def generate(
    model: LoadedModel,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 64,
    max_batch: int = 16,
    system: str | None = None,
    max_tokens: int = 4096,
) -> list[str]:
    """Greedy completions for ``prompts``, in input order (:func:`probes.generation.greedy`
    on the bridge-wrapped HF model, so active interventions fire).

    Example:
        >>> generate(model, ["How do I bake bread?"], max_new_tokens=16)  # doctest: +SKIP
        ['To bake bread, you need flour, water, yeast and salt...']
    """
    return greedy(model.hf_model, model.tokenizer, prompts, max_new_tokens=max_new_tokens,
                  max_batch=max_batch, max_tokens=max_tokens, system=system)  # fmt: skip


def last_logits(
    model: LoadedModel,
    prompts: Sequence[str],
    *,
    max_batch: int = 16,
    system: str | None = None,
    max_tokens: int = 4096,
) -> Tensor:
    """Next-token logits at the last prompt position, ``[n_prompts, vocab]`` float32.

    Runs the base model and applies the unembedding to the last position only
    (2 x d x vocab FLOPs per prompt, not per token).
    """
    enc = encode(model.tokenizer, prompts, system)
    hf = model.hf_model
    out = None
    for batch in bucketed(
        enc, range(len(enc)), model.tokenizer.pad_token_id, max_tokens, max_batch
    ):
        with torch.inference_mode():
            mask = batch.attention_mask.to(model.device)
            h = hf.model(
                input_ids=batch.input_ids.to(model.device),
                attention_mask=mask,
                position_ids=position_ids(mask),
                use_cache=False,
            ).last_hidden_state[:, -1]
            logits = hf.lm_head(h).float().cpu()
        if out is None:
            out = torch.empty((len(enc), logits.shape[-1]), dtype=torch.float32)
        out[torch.tensor(batch.rows)] = logits
    return out
