"""Shared-prefix reuse: run the chat template's common head once per recording.

Every prompt read through a chat template starts with the same tokens (the
template's default system message and the user turn's header: 24 of about 51
tokens per prompt for qwen2.5-coder on the project's prompts). Causal attention
makes their activations, keys and values identical in every prompt, so
``probes.record(..., share_prefix=True)`` computes them once, as one row, and runs
each batch on the remaining tokens with that key/value cache repeated over the batch
(for qwen2.5-coder, 24 layers x 64 rows x 24 tokens: about 19 MB per batch). The
same technique is what serving engines call prefix caching. The remaining tokens are
short, so they are packed several prompts to a row (:mod:`probes.packing`) where the
model's attention takes a custom mask, and left-padded in length buckets otherwise.

It applies when

- the shared prefix ends at or before every prompt's content (so ``last``,
  ``eoi[-k]`` and ``mean`` all read suffix tokens; ``all`` needs the prefix's
  own rows and is recorded without sharing);
- nothing else is hooked on the model (a hook of the caller's would otherwise
  see a one-row forward of the prefix and batches without it).

Numerics: the activations equal those of the full left-padded forward up to
rounding (matmul shapes differ; tested within 1e-5 in float32), and the
position ids are those of the full forward. It is opt-in: in bf16 the rounding
moved the demo's threshold-bound results (qwen's probe-gated block defense
refused 3 of 84 harmless test prompts instead of 2), and the default keeps the
full forward, bit-identical to HF's.

Example:
    >>> enc = encode(model.tokenizer, prompts)  # doctest: +SKIP
    >>> n = shared_prefix_length(enc, ["last"])  # doctest: +SKIP
    >>> strip(enc, n)[0].ids == enc[0].ids[n:]  # doctest: +SKIP
    True
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from torch import Tensor
from transformers.cache_utils import DynamicCache

from probes.models import LoadedModel
from probes.prompts import Encoded


def shared_prefix_length(encoded: Sequence[Encoded], positions: Sequence[str]) -> int:
    """Tokens every prompt starts with, up to the first content token (0: do not share)."""
    if "all" in positions or len(encoded) < 2:
        return 0
    limit = min(e.content_start for e in encoded)
    first = encoded[0].ids
    n = 0
    while n < limit and all(e.ids[n] == first[n] for e in encoded):
        n += 1
    return n


def model_is_hooked(model: LoadedModel) -> bool:
    """True if any module of the model carries a torch hook of ours or the caller's.

    The model's own plumbing does not count: TransformerLens' capture pre-hooks
    (listed by each block) and transformers' output-capturing hooks.
    """
    modules = list(model.bridge.modules())
    own = {h.id for m in modules for h in getattr(m, "_capture_hook_handles", ())}
    for m in modules:
        for key, fn in [*m._forward_hooks.items(), *m._forward_pre_hooks.items()]:
            if key not in own and getattr(fn, "__name__", "") != "output_capturing_hook":
                return True
    return False


def strip(encoded: Sequence[Encoded], n: int) -> list[Encoded]:
    """The prompts without their first ``n`` tokens (content offsets moved with them)."""
    return [Encoded(e.ids[n:], e.content_start - n, e.content_end - n) for e in encoded]


class PrefixCache(DynamicCache):
    """An HF cache holding a shared prefix that a recording reads and never extends.

    The decoder treats it as any ``DynamicCache``; compiled blocks
    (:mod:`probes.fastpath`) see that they may attend to its prefix without keeping
    the batch's own keys and values.
    """

    read_only_prefix = True


@dataclass
class Prefix:
    """The key/value cache of a shared prefix, for the layers a recording runs."""

    length: int
    keys: list[Tensor]  # per layer [1, kv_heads, length, head_dim]
    values: list[Tensor]

    @staticmethod
    def from_cache(length: int, cache) -> Prefix:
        """Keep the filled layers of an HF ``DynamicCache`` from the prefix's forward."""
        layers = [layer for layer in cache.layers if layer.is_initialized]
        return Prefix(length, [la.keys for la in layers], [la.values for la in layers])

    def cache(self, model: LoadedModel, n_rows: int) -> PrefixCache:
        """A fresh cache holding the prefix for ``n_rows`` rows."""
        cache = PrefixCache(config=model.hf_model.config)
        for i, (k, v) in enumerate(zip(self.keys, self.values, strict=True)):
            cache.layers[i].update(k.expand(n_rows, -1, -1, -1), v.expand(n_rows, -1, -1, -1))
        return cache
