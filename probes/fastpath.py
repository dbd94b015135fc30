"""HF kernels for the bridge's components wherever no hook reads their internals.

TransformerLens 4.x re-implements two components to expose their intermediate
hook points, and pays for them on every forward, hooked or not:

- ``RMSNormalizationBridge`` computes the norm once in float32 for
  ``hook_scale`` / ``hook_normalized`` and then again through the HF module;
- ``PositionEmbeddingsAttentionBridge`` runs eager attention (explicit score
  matrix, float32 softmax) so that ``hook_attn_scores`` / ``hook_pattern`` exist.

Measured on ``qwen2.5-coder-0.5b-instruct`` (bf16, 2 AMX cores, 2026-12-02): the
decoder through the bridge ran at 1,850 tokens/s against 2,080 for the stock HF
model on the same batches. :func:`install` gives each such component a forward that checks, per call, whether
any of its *internal* hook points has a hook; if none has, it calls the wrapped HF
module itself (its norm; its attention with the model's configured implementation,
eager for the bridge, RoPE and KV cache included), still firing the component's
``hook_in`` / ``hook_out`` (the ``attn_out`` site, the residual stream and every
block-level hook are unaffected). With an internal hook attached (``run_with_cache``
at its defaults, an attention-pattern hook) the bridge's own forward runs unchanged.

Numerics: the decoder's outputs equal those of the stock HF model loaded with the
same attention implementation, bit for bit (tested on Qwen2 and Llama configs in
float32, and seen on qwen2.5-coder-0.5b in bf16); the bridge's own path differs
from HF's at rounding level (within 1e-4 in float32, tested).

Example:
    >>> from probes.fastpath import install  # doctest: +SKIP
    >>> install(model.bridge)  # load_model does this unless fast_path=False  # doctest: +SKIP
"""

from __future__ import annotations

import types
from collections.abc import Callable
from typing import Any

import torch

_MARK = "_safety_probes_fast_path"


def _hook_points(module: torch.nn.Module, skip: tuple[Any, ...]) -> list[Any]:
    from transformer_lens.hook_points import HookPoint

    seen, out = {id(s) for s in skip}, []
    for m in module.modules():
        if isinstance(m, HookPoint) and id(m) not in seen:
            seen.add(id(m))
            out.append(m)
    return out


def _hooked(points: list[Any]) -> bool:
    """True if any point has a hook, added through TransformerLens or torch directly."""
    return any(
        p._forward_hooks or p._forward_pre_hooks or p._backward_hooks or p.fwd_hooks or p.bwd_hooks
        for p in points
    )


def _hf_forward(bridge: torch.nn.Module, internal: list[Any], attention: bool) -> Callable:
    """A forward that calls the wrapped HF module unless an internal hook point is hooked."""
    fallback = type(bridge).forward
    parts = (bridge, bridge.q, bridge.k, bridge.v, bridge.o) if attention else (bridge,)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        processed = any(getattr(c, "_use_processed_weights", False) for c in parts)
        folded = getattr(self.config, "layer_norm_folding", False)
        if processed or folded or self.training or _hooked(internal):
            return fallback(self, *args, **kwargs)
        if "hidden_states" in kwargs:
            kwargs["hidden_states"] = self.hook_in(kwargs["hidden_states"])
        else:
            args = (self.hook_in(args[0]), *args[1:])
        out = self.original_component(*args, **kwargs)
        if attention:  # HF attention returns (output [batch, seq, d], weights)
            return self.hook_out(out[0]), out[1]
        x = args[0] if args else kwargs["hidden_states"]  # the bridge keeps the input dtype
        return self.hook_out(out if out.dtype == x.dtype else out.to(x.dtype))

    return types.MethodType(forward, bridge)


def install(bridge: torch.nn.Module) -> int:
    """Give every plain norm and attention bridge the hook-aware HF forward; returns how many.

    Idempotent. Only these two exact bridge classes are changed (a subclass keeps its
    own forward); processed weights, layer-norm folding and training mode fall back to
    the bridge's forward at call time.
    """
    from transformer_lens.model_bridge.generalized_components.position_embeddings_attention import (  # noqa: E501
        PositionEmbeddingsAttentionBridge,
    )
    from transformer_lens.model_bridge.generalized_components.rms_normalization import (
        RMSNormalizationBridge,
    )

    n = 0
    for m in bridge.modules():
        attention = type(m) is PositionEmbeddingsAttentionBridge
        if not (attention or type(m) is RMSNormalizationBridge) or m.__dict__.get(_MARK):
            continue
        if getattr(m, "original_component", None) is None:
            continue
        fwd = _hf_forward(m, _hook_points(m, (m.hook_in, m.hook_out)), attention)
        # Bridges forward attribute writes to the HF module; write the instance dict.
        m.__dict__["forward"] = fwd
        m.__dict__[_MARK] = True
        n += 1
    return n


def uninstall(bridge: torch.nn.Module) -> int:
    """Restore the bridge's own forwards; returns how many components changed back."""
    n = 0
    for m in bridge.modules():
        if m.__dict__.pop(_MARK, False):
            m.__dict__.pop("forward", None)
            n += 1
    return n
