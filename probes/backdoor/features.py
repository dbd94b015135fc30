"""Activations the backdoor detectors read: per token, per fine-tuning row, per free text.

All of them go through :func:`probes.record.record_slice` (early-stopped forward,
length-bucketed left-padded batches, hooks always removed) with hand-built token
sequences, so a row's response tokens or a contrast pair's answer token are read
exactly like prompt tokens are read by :func:`probes.record`.

Example:
    >>> X = row_features(organism.model, organism.rows, layer=15)  # doctest: +SKIP
    >>> X.shape  # doctest: +SKIP
    (244, 576)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from probes.backdoor.finetune import Row, tokenize_row
from probes.errors import BadInputError
from probes.models import LoadedModel, check_layer
from probes.prompts import Encoded, chat_text, encode
from probes.record import Request, parse_sites, record_slice


def resolve_model(model) -> LoadedModel:
    """Accept a :class:`LoadedModel` or anything with a ``.model`` that is one (an Organism)."""
    inner = getattr(model, "model", model)
    if not isinstance(inner, LoadedModel):
        raise BadInputError(f"expected a LoadedModel or an Organism, got {type(model).__name__}")
    return inner


def default_layer(model: LoadedModel, layer: int | None) -> int:
    """``layer``, checked; None -> the middle block (``n_layers // 2``)."""
    layer = model.n_layers // 2 if layer is None else layer
    check_layer(model, layer)
    return layer


def _run(
    model: LoadedModel, names: Sequence[str], enc: Sequence[Encoded], layer: int, site: str,
    position: str,
) -> Tensor:  # fmt: skip
    req = Request(parse_sites(site), [layer], [position])
    acts = record_slice(model, list(names), req, list(enc))
    return acts[req.sites[0], position][:, 0]


@dataclass
class TokenActs:
    """Token-level activations of prompts read through the chat template.

    Attributes:
        acts: ``[n_tokens, d_model]`` float32, every templated token of every prompt.
        offsets: ``[n_prompts + 1]`` row boundaries of each prompt in ``acts``.
        encoded: the templated token ids and content span of each prompt.
    """

    acts: Tensor
    offsets: Tensor
    encoded: list[Encoded]

    def prompt(self, i: int) -> Tensor:
        """``[n_tok_i, d_model]`` activations of prompt ``i``."""
        return self.acts[int(self.offsets[i]) : int(self.offsets[i + 1])]

    def content(self, i: int) -> Tensor:
        """``[n_content_i, d_model]``: only the user's content tokens of prompt ``i``."""
        e = self.encoded[i]
        return self.prompt(i)[e.content_start : e.content_end]


def token_acts(
    model: LoadedModel, prompts: Sequence[str], layer: int, site: str = "resid_post"
) -> TokenActs:
    """Every token's residual at ``(site, layer)`` for chat-templated ``prompts``."""
    enc = encode(model.tokenizer, prompts)
    acts = _run(model, prompts, enc, layer, site, "all")
    lengths = torch.tensor([len(e) for e in enc])
    offsets = torch.cat([torch.zeros(1, dtype=torch.long), lengths.cumsum(0)])
    return TokenActs(acts, offsets, enc)


def content_token_spans(tokenizer, prompt: str, needle: str) -> list[bool]:
    """Which *content* tokens of the templated ``prompt`` overlap an occurrence of ``needle``.

    Returns one flag per content token (the span :func:`probes.prompts.encode` locates).
    """
    text = chat_text(tokenizer, prompt)
    start = text.rfind(prompt)
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    spans, k = [], prompt.find(needle) if needle else -1
    while k >= 0:
        spans.append((start + k, start + k + len(needle)))
        k = prompt.find(needle, k + len(needle))
    end = start + len(prompt)
    offsets = enc["offset_mapping"]
    inside = [j for j, (a, b) in enumerate(offsets) if b > start and a < end and b > a]
    flags = []
    for j in range(inside[0], inside[-1] + 1):  # the content span, as encode() counts it
        a, b = offsets[j]
        flags.append(any(b > s and a < e for s, e in spans))
    return flags


def row_features(
    model, rows: Sequence[Row], *, layer: int | None = None, view: str = "response",
    site: str = "resid_post",
) -> np.ndarray:  # fmt: skip
    """One vector per fine-tuning row, ``[n_rows, d_model]`` float64.

    Args:
        model: the (fine-tuned) model whose representations are inspected.
        rows: the fine-tuning rows (prompt and the response it was trained on).
        layer: block index (default: the middle block).
        view: ``"response"``: mean over the response tokens given the prompt (what the
            row teaches); ``"prompt"``: the last prompt token (where the model decides).
    """
    model = resolve_model(model)
    layer = default_layer(model, layer)
    if not rows:
        raise BadInputError("no fine-tuning rows given")
    tok = model.tokenizer
    enc = []
    for r in rows:
        ids, n_prompt = tokenize_row(tok, r)
        if len(ids) == n_prompt:
            raise BadInputError(f"row {r.id} has an empty response")
        if view == "response":
            enc.append(Encoded(ids, n_prompt, len(ids)))
        elif view == "prompt":
            enc.append(Encoded(ids[:n_prompt], 0, n_prompt))
        else:
            raise BadInputError(f"unknown view {view!r}; use 'response' or 'prompt'")
    position = "mean" if view == "response" else "last"
    names = [f"{r.id}:{r.prompt}" for r in rows]
    return _run(model, names, enc, layer, site, position).double().numpy()


def text_last_acts(
    model: LoadedModel, texts: Sequence[str], layer: int, site: str = "resid_post"
) -> Tensor:
    """``[n_texts, d_model]``: the residual at the final token of already formatted texts."""
    tok = model.tokenizer
    enc = []
    for t in texts:
        ids = tok(t, add_special_tokens=False).input_ids
        if not ids:
            raise BadInputError(f"text {t!r} tokenizes to nothing")
        enc.append(Encoded(list(ids), 0, len(ids)))
    return _run(model, texts, enc, layer, site, "last")


def prompt_last_acts(
    model: LoadedModel, prompts: Sequence[str], layer: int, site: str = "resid_post"
) -> Tensor:
    """``[n_prompts, d_model]``: the residual at the last chat-template token of each prompt."""
    enc = encode(model.tokenizer, prompts)
    return _run(model, prompts, enc, layer, site, "last")
