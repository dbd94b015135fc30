"""Chat formatting, named token positions and length-bucketed left-padded batches.

Prompts are read through the tokenizer's own chat template with the generation
prompt appended (never a template hard-coded per model family). Positions are
named:

- ``last``: the final prompt token (end of the template).
- ``eoi``: every template token after the user's content (end of instruction);
  ``eoi[-k]`` picks one of them (``eoi[-1]`` is ``last``).
- ``mean``: the mean over the user's content tokens.
- ``all``: every token (ragged; for token-level probes).

Example:
    >>> enc = encode(tokenizer, ["How do I bake bread?"])  # doctest: +SKIP
    >>> enc[0].n_eoi  # doctest: +SKIP
    5
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from probes.errors import BadInputError

_EOI_RE = re.compile(r"^eoi\[-(\d+)\]$")


@dataclass(frozen=True)
class Encoded:
    """One prompt after templating: token ids and where the user's content sits."""

    ids: list[int]
    content_start: int  # first content token
    content_end: int  # one past the last content token

    @property
    def n_eoi(self) -> int:
        return len(self.ids) - self.content_end

    def __len__(self) -> int:
        return len(self.ids)


def chat_text(tokenizer, prompt: str, system: str | None = None) -> str:
    """The prompt wrapped in the tokenizer's chat template, generation prompt appended."""
    if not getattr(tokenizer, "chat_template", None):
        raise BadInputError(
            "the tokenizer has no chat_template; positions like 'eoi' need an instruct model"
        )
    messages = [{"role": "system", "content": system}] if system else []
    messages.append({"role": "user", "content": prompt})
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def encode(tokenizer, prompts: Sequence[str], system: str | None = None) -> list[Encoded]:
    """Template and tokenize prompts, locating the content span by character offsets."""
    if isinstance(prompts, str):
        raise BadInputError("prompts must be a list of strings, not a single string")
    prompts = list(prompts)
    if not prompts:
        raise BadInputError("the prompt list is empty")
    if not getattr(tokenizer, "is_fast", False):
        raise BadInputError("a fast tokenizer (with offset mapping) is required")
    out = []
    for i, p in enumerate(prompts):
        if not isinstance(p, str) or not p.strip():
            raise BadInputError(f"prompt {i} is empty or not a string: {p!r}")
        text = chat_text(tokenizer, p, system)
        start = text.rfind(p)
        if start < 0:
            raise BadInputError(f"prompt {i} was altered by the chat template; cannot locate it")
        end = start + len(p)
        enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        inside = [j for j, (a, b) in enumerate(offsets) if b > start and a < end and b > a]
        out.append(Encoded(list(ids), inside[0], inside[-1] + 1))
    return out


def parse_positions(positions: str | Sequence[str], n_eoi: int) -> list[str]:
    """Expand position specs into labels; ``eoi`` becomes ``eoi[-n]..eoi[-1]``."""
    specs = [positions] if isinstance(positions, str) else list(positions)
    if not specs:
        raise BadInputError("no positions given; use last, eoi, eoi[-k], mean or all")
    labels: list[str] = []
    for s in specs:
        if s == "eoi":
            labels += [f"eoi[-{k}]" for k in range(n_eoi, 0, -1)]
        elif s in ("last", "mean", "all"):
            labels.append(s)
        elif m := _EOI_RE.match(s):
            k = int(m.group(1))
            if not 1 <= k <= n_eoi:
                raise BadInputError(
                    f"position {s!r} out of range: the template has {n_eoi} eoi tokens"
                )
            labels.append(s)
        else:
            raise BadInputError(f"unknown position {s!r}; use last, eoi, eoi[-k], mean or all")
    if "all" in labels and len(labels) > 1:
        raise BadInputError("position 'all' cannot be combined with other positions")
    return list(dict.fromkeys(labels))


def common_n_eoi(encoded: Sequence[Encoded]) -> int:
    """The number of end-of-instruction tokens, which the template fixes for all prompts."""
    counts = {e.n_eoi for e in encoded}
    if len(counts) != 1:
        raise BadInputError(f"prompts have differing end-of-instruction lengths {sorted(counts)}")
    return counts.pop()


@dataclass
class Batch:
    """A left-padded batch. ``rows`` are indices into the encoded list."""

    rows: list[int]
    input_ids: Tensor  # [batch, seq]
    attention_mask: Tensor  # [batch, seq]
    pad: Tensor  # [batch] left padding per row

    @property
    def n_real_tokens(self) -> int:
        return int(self.attention_mask.sum())


def make_batch(encoded: Sequence[Encoded], rows: Sequence[int], pad_id: int) -> Batch:
    lengths = [len(encoded[r]) for r in rows]
    width = max(lengths)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        n = lengths[i]
        ids[i, width - n :] = torch.tensor(encoded[r].ids)
        mask[i, width - n :] = 1
    pad = torch.tensor([width - n for n in lengths])
    return Batch(list(rows), ids, mask, pad)


def bucketed(
    encoded: Sequence[Encoded], rows: Sequence[int], pad_id: int, max_tokens: int, max_batch: int
) -> Iterator[Batch]:
    """Yield batches of ``rows`` sorted by length, each under a padded-token budget."""
    order = sorted(rows, key=lambda r: len(encoded[r]))
    current: list[int] = []
    for r in order:
        width = len(encoded[r])  # sorted ascending: the newcomer is the widest
        if current and (len(current) + 1) * width > max_tokens or len(current) >= max_batch:
            yield make_batch(encoded, current, pad_id)
            current = []
        current.append(r)
    if current:
        yield make_batch(encoded, current, pad_id)


def from_end(label: str) -> int:
    """How many tokens from a prompt's end a single-token label reads (``last``: 1)."""
    return 1 if label == "last" else int(_EOI_RE.match(label).group(1))


def position_index(encoded: Sequence[Encoded], batch: Batch, label: str) -> Tensor:
    """Padded-coordinate index per row for a single-token position label. Shape [batch]."""
    width = batch.input_ids.shape[1]
    return torch.full((len(batch.rows),), width - from_end(label), dtype=torch.long)


def position_ids(attention_mask: Tensor) -> Tensor:
    """Position ids for a left-padded batch: each row counts from its first real token.

    HF decoders number positions ``0..seq-1`` when no ids are given, which shifts every
    left-padded row. Rotary attention depends only on relative positions, so for it the
    shift changes rounding alone (visible in bf16); models with absolute position
    embeddings need the right ids. The bridge's own forward uses these ids, so passing
    them keeps our direct decoder calls bit-identical to it. Shape [batch, seq].
    """
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def content_weights(encoded: Sequence[Encoded], batch: Batch) -> Tensor:
    """Row-normalised weights over each row's content tokens. Shape [batch, seq]."""
    w = torch.zeros(batch.input_ids.shape, dtype=torch.float32)
    for i, r in enumerate(batch.rows):
        e, p = encoded[r], int(batch.pad[i])
        w[i, p + e.content_start : p + e.content_end] = 1.0 / (e.content_end - e.content_start)
    return w
