"""HF kernels for the bridge's components wherever no hook reads their internals.

TransformerLens 4.x re-implements two components to expose their intermediate
hook points, and pays for them on every forward, hooked or not:

- ``RMSNormalizationBridge`` computes the norm once in float32 for
  ``hook_scale`` / ``hook_normalized`` and then again through the HF module;
- ``PositionEmbeddingsAttentionBridge`` runs eager attention (explicit score
  matrix, float32 softmax) so that ``hook_attn_scores`` / ``hook_pattern`` exist.

Measured on ``qwen2.5-coder-0.5b-instruct`` (bf16, 2 AMX cores, 2026-12-02): the
decoder through the bridge ran at 1,850 tokens/s against 2,080 for the stock HF
model on the same batches. :func:`install` gives each such component a forward
that checks, per call, whether any of its *internal* hook points has a hook; if
none has, it runs HF's own computation directly (the norm's formula with its
float32 part in torch's fused ``rms_norm``; attention as HF's implementation for
the model's configured ``_attn_implementation``, which the bridge sets to eager),
still firing the component's ``hook_in`` / ``hook_out`` (the ``attn_out`` site, the
residual stream and every block-level hook are unaffected). With an internal hook
attached (``run_with_cache`` at its defaults, an attention-pattern hook) the
bridge's own forward runs unchanged.

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
import torch.nn.functional as F
from torch import Tensor

_MARK = "_safety_probes_fast_path"
# HF norm classes computing weight * (x32 * rsqrt(mean(x32^2) + eps)).to(input dtype).
_HF_RMS_NORMS = frozenset({"Qwen2RMSNorm", "LlamaRMSNorm", "MistralRMSNorm"})


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


def _norm_forward(bridge: torch.nn.Module, internal: list[Any]) -> Callable:
    fallback = type(bridge).forward

    def forward(self, hidden_states: Tensor, **kwargs: Any) -> Tensor:  # [batch, seq, d]
        if kwargs or _hooked(internal) or getattr(self.config, "layer_norm_folding", False):
            return fallback(self, hidden_states, **kwargs)
        x = self.hook_in(hidden_states)  # [batch, seq, d]
        hf = self.original_component
        if type(hf).__name__ not in _HF_RMS_NORMS:
            out = hf(x)
            return self.hook_out(out.to(x.dtype) if out.dtype != x.dtype else out)
        # HF's formula, weight * (x32 * rsqrt(mean(x32^2) + eps)).to(dtype), with the
        # float32 part in torch's fused kernel instead of five elementwise passes.
        normed = F.rms_norm(x.float(), (x.shape[-1],), None, hf.variance_epsilon)
        return self.hook_out(hf.weight * normed.to(x.dtype))

    return types.MethodType(forward, bridge)


def _plain_norm(bridge: torch.nn.Module) -> bool:
    hf = getattr(bridge, "original_component", None)
    return (
        getattr(bridge, "uses_rms_norm", False)
        and getattr(bridge, "use_native_layernorm_autograd", False)
        and not getattr(bridge, "uses_weight_offset", True)
        and hf is not None
        and not isinstance(hf, torch.nn.Identity)
    )


def _plain_attention(bridge: torch.nn.Module) -> bool:
    """True for standard rotary GQA attention: nothing the fast forward would skip."""
    hf, cfg = getattr(bridge, "original_component", None), getattr(bridge, "config", None)
    if hf is None or cfg is None or not (hasattr(hf, "head_dim") and hasattr(hf, "scaling")):
        return False
    flags = ("use_split_qkv_input", "use_attn_in", "gated_q_proj", "use_attn_result",
             "rotary_interleaved_cos_sin", "rotary_adjacent_pairs", "qk_norm_after_rope")  # fmt: skip
    if any(getattr(cfg, f, False) for f in flags):
        return False
    if any(k in bridge.submodules for k in ("q_norm", "k_norm")):
        return False
    if bridge._modules.get("gate") is not None:
        return False
    for attr in ("key_multiplier", "attn_logit_softcapping", "sinks", "sliding_window"):
        if getattr(hf, attr, None) is not None:
            return False
    hf_cfg = getattr(hf, "config", None)
    if getattr(hf_cfg, "clip_qkv", None) is not None:
        return False
    rope = getattr(hf_cfg, "rope_parameters", None)
    if isinstance(rope, dict) and rope.get("llama_4_scaling_beta") is not None:
        return False
    if type(bridge)._pre_output_projection is not _base_pre_output_projection():
        return False
    return all(hasattr(bridge, n) for n in ("q", "k", "v", "o"))


def _base_pre_output_projection() -> Callable:
    from transformer_lens.model_bridge.generalized_components.position_embeddings_attention import (  # noqa: E501
        PositionEmbeddingsAttentionBridge,
    )

    return PositionEmbeddingsAttentionBridge._pre_output_projection


def _rotate_half(x: Tensor) -> Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _eager_attention(
    q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scaling: float
) -> Tensor:
    """HF's eager attention: ``q`` [batch, heads, q_len, hd], ``k``/``v`` [batch, kv_heads, kv_len, hd]."""
    groups = q.shape[1] // k.shape[1]
    if groups > 1:
        k, v = k.repeat_interleave(groups, dim=1), v.repeat_interleave(groups, dim=1)
    scores = torch.matmul(q, k.transpose(2, 3)) * scaling  # [batch, heads, q_len, kv_len]
    if mask is not None:
        scores = scores + mask
    else:
        q_len, kv_len = scores.shape[-2:]
        causal = torch.ones(q_len, kv_len, dtype=torch.bool, device=q.device).tril(kv_len - q_len)
        scores = scores.masked_fill(~causal, torch.finfo(scores.dtype).min)
    weights = F.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
    return torch.matmul(weights, v)  # [batch, heads, q_len, hd]


def _attention_forward(bridge: torch.nn.Module, internal: list[Any]) -> Callable:
    fallback = type(bridge).forward
    linears = (bridge.q, bridge.k, bridge.v, bridge.o)
    eager = getattr(bridge.original_component.config, "_attn_implementation", None) == "eager"

    def forward(self, *args: Any, **kwargs: Any) -> tuple[Tensor, None]:
        processed = any(getattr(c, "_use_processed_weights", False) for c in (self, *linears))
        rope = kwargs.get("position_embeddings")
        hd = self.original_component.head_dim
        if (
            processed
            or _hooked(internal)
            or self.training
            or rope is None
            or rope[0].shape[-1] != hd
        ):
            return fallback(self, *args, **kwargs)
        x = kwargs.pop("hidden_states") if "hidden_states" in kwargs else args[0]
        cos, sin = kwargs.pop("position_embeddings")  # [batch, seq, head_dim]
        mask = kwargs.pop("attention_mask", None)
        hf = self.original_component
        x = self.hook_in(x)  # [batch, seq, d_model]
        b, s, _ = x.shape
        q = self.q.original_component(x).view(b, s, -1, hd).transpose(1, 2)
        k = self.k.original_component(x).view(b, s, -1, hd).transpose(1, 2)
        v = self.v.original_component(x).view(b, s, -1, hd).transpose(1, 2)
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        q = q * cos + _rotate_half(q) * sin
        k = k * cos + _rotate_half(k) * sin
        k, v = self._update_kv_cache(k, v, **kwargs)
        if mask is not None:
            mask = mask[..., : k.shape[-2]]
        if eager:
            o = _eager_attention(q, k, v, mask, hf.scaling)
        else:
            causal = mask is None and q.shape[-2] > 1
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal,
                                               scale=hf.scaling, enable_gqa=True)  # fmt: skip
        o = o.transpose(1, 2).reshape(b, s, -1)  # [batch, seq, heads * head_dim]
        w = self.o.original_component.weight
        if o.dtype != w.dtype and w.dtype.is_floating_point:
            o = o.to(w.dtype)
        return self.hook_out(self.o.original_component(o)), None

    return types.MethodType(forward, bridge)


def install(bridge: torch.nn.Module) -> int:
    """Give every plain norm and attention bridge the hook-aware HF forward; returns how many.

    Idempotent. A component with an unusual variant (Q/K norms, soft-capping, sinks,
    sliding windows, split QKV inputs, ...) keeps the bridge's forward.
    """
    from transformer_lens.model_bridge.generalized_components.position_embeddings_attention import (  # noqa: E501
        PositionEmbeddingsAttentionBridge,
    )
    from transformer_lens.model_bridge.generalized_components.rms_normalization import (
        RMSNormalizationBridge,
    )

    n = 0
    for m in bridge.modules():
        if m.__dict__.get(_MARK):
            continue
        if isinstance(m, RMSNormalizationBridge) and _plain_norm(m):
            internal = _hook_points(m, (m.hook_in, m.hook_out))
            fwd = _norm_forward(m, internal)
        elif isinstance(m, PositionEmbeddingsAttentionBridge) and _plain_attention(m):
            internal = _hook_points(m, (m.hook_in, m.hook_out))
            fwd = _attention_forward(m, internal)
        else:
            continue
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
