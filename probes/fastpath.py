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

Compiled blocks (``install(bridge, compile=True)``, ``load_model(..., compile=True)``):
each decoder block whose internal hook points are all free runs a shallow copy of its HF
layer with every bridge replaced by the module it wraps, compiled once with
``torch.compile(dynamic=True)`` (TorchInductor fuses the norms, rotary embedding, SiLU
and gated product into a few kernels; every block shares one compiled graph). The
block's ``hook_in`` / ``hook_out`` (``resid_pre`` / ``resid_post``) still fire. A block
falls back to the bridge's forward per call when a hook sits inside it, with a KV
cache (generation; a recording's read-only shared-prefix cache, :mod:`probes.prefix`,
stays compiled: the layer gets the prefix's keys and values and keeps nothing), under
training, processed weights or TransformerLens'
``stop_at_layer`` / ``start_at_layer``. Outputs then differ from the eager ones at
rounding level (fused reductions; tested within 1e-4 in float32). Costs: a C++
compiler on CPU and one compilation per process (about 4 s for qwen2.5-coder-0.5b on 2
cores with TorchInductor's on-disk cache warm, 15-25 s more cold); it pays on long
recordings.

Example:
    >>> from probes.fastpath import install  # doctest: +SKIP
    >>> install(model.bridge)  # load_model does this unless fast_path=False  # doctest: +SKIP
"""

from __future__ import annotations

import copy
import types
from collections.abc import Callable
from typing import Any

import torch

from probes.errors import BadInputError

_MARK = "_safety_probes_fast_path"
_COMPILED = "_safety_probes_compiled_layer"  # a block's compiled HF layer (instance dict)
_LAYER = "_safety_probes_layer_idx"  # the block's index in a KV cache (instance dict)


def _hook_points(module: torch.nn.Module, skip: tuple[Any, ...]) -> list[Any]:
    from transformer_lens.hook_points import HookPoint

    seen, out = {id(s) for s in skip}, []
    for m in module.modules():
        if isinstance(m, HookPoint) and id(m) not in seen:
            seen.add(id(m))
            out.append(m)
    return out


def _hooked(modules: list[torch.nn.Module], ignore: frozenset[int] = frozenset()) -> bool:
    """True if any module has a hook, added through TransformerLens or torch directly.

    Torch forward pre-hooks whose ids are in ``ignore`` do not count.
    """
    for m in modules:
        if m._forward_hooks or m._backward_hooks or m._backward_pre_hooks:
            return True
        if any(k not in ignore for k in m._forward_pre_hooks):
            return True
        if getattr(m, "fwd_hooks", None) or getattr(m, "bwd_hooks", None):
            return True
    return False


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


def _unwrapped(module: torch.nn.Module) -> torch.nn.Module:
    """Shallow copy of an HF module tree with every bridge replaced by the module it wraps.

    Parameters and buffers are shared with the model (no copy of any weight), so weight
    edits made in place on the model are seen.
    """
    from transformer_lens.model_bridge.generalized_components.base import GeneralizedComponent

    if isinstance(module, GeneralizedComponent):
        module = module.original_component
    clone = copy.copy(module)
    clone._modules = {k: None if c is None else _unwrapped(c) for k, c in module._modules.items()}
    return clone


def _patched(module: torch.nn.Module) -> bool:
    """True if a module in an unwrapped tree has an instance forward (e.g. accelerate's hooks)."""
    return any("forward" in m.__dict__ for m in module.modules())


def check_compiler(device: str) -> None:
    """Raise :class:`BadInputError` if ``torch.compile`` cannot build CPU kernels here."""
    if not str(device).startswith("cpu"):
        return
    from torch._inductor import cpp_builder

    try:
        cpp_builder.get_cpp_compiler()
    except Exception as e:  # InvalidCxxCompiler and friends
        raise BadInputError(
            f"compile=True needs a C++ compiler for TorchInductor's CPU kernels ({e}); "
            "install g++ or pass compile=False"
        ) from None


class _PrefixKV:
    """One layer's cached prefix keys and values, seen by the compiled layer as its cache.

    ``update`` returns the prefix (expanded to the batch) followed by the new keys and
    values, and keeps nothing: a recording never reads them again. One small object per
    call, so the compiled graph is shared by every layer.
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor) -> None:
        self.keys, self.values = keys, values  # [1 or batch, kv_heads, prefix, head_dim]

    def update(self, keys: torch.Tensor, values: torch.Tensor, *args: Any, **kwargs: Any):
        n = keys.shape[0]
        k = torch.cat([self.keys.expand(n, -1, -1, -1), keys], dim=-2)
        v = torch.cat([self.values.expand(n, -1, -1, -1), values], dim=-2)
        return k, v


def _cache_allowed(cache: Any, layer_idx: int | None) -> bool:
    """No cache, or a read-only prefix cache (:class:`probes.prefix.PrefixCache`) whose
    layer for this block is known."""
    if cache is None:
        return True
    return getattr(cache, "read_only_prefix", False) and layer_idx is not None


def _block_forward(block: torch.nn.Module) -> Callable:
    """A block forward that runs its compiled HF layer when nothing inside is hooked.

    "Inside" is every bridge component and hook point of the block but its ``hook_in``
    / ``hook_out``, with TransformerLens or plain torch hooks; the pre-hooks
    TransformerLens wires itself to capture the block's input are ignored. Hooks on the
    wrapped HF modules (e.g. transformers' own output-capturing hooks) are shared with
    the compiled layer's copies, so they run on either path.
    """
    from transformer_lens.hook_points import HookPoint
    from transformer_lens.model_bridge.generalized_components.base import GeneralizedComponent

    fallback = type(block).forward
    inner = [  # the bridge side; hooks on the wrapped HF modules fire in both paths
        m
        for m in block.modules()
        if isinstance(m, (GeneralizedComponent, HookPoint))
        and m is not block
        and m is not block.hook_in
        and m is not block.hook_out
    ]
    parts = [m for m in inner if hasattr(m, "_use_processed_weights")]

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        own = frozenset(h.id for h in getattr(self, "_capture_hook_handles", ()))
        if (
            self.training
            or _hooked(inner, own)
            or not _cache_allowed(kwargs.get("past_key_values"), self.__dict__[_LAYER])
            or kwargs.get("past_key_value") is not None
            or getattr(self, "_stop_at_layer_idx", None) is not None
            or getattr(self, "_start_at_layer_idx", None) is not None
            or getattr(self.config, "layer_norm_folding", False)
            or any(c._use_processed_weights for c in parts)
        ):
            return fallback(self, *args, **kwargs)
        args, kwargs = self._hook_input_hidden_states(args, kwargs)
        kwargs = self._filter_kwargs_for_forward(kwargs, len(args))
        if kwargs.get("past_key_values") is not None:  # a read-only prefix: hand over its layer
            layer = kwargs["past_key_values"].layers[self.__dict__[_LAYER]]
            kwargs["past_key_values"] = _PrefixKV(layer.keys, layer.values)
        out = self.__dict__[_COMPILED](*args, **kwargs)
        bare = self._is_standalone_hidden_state_call(args, kwargs)
        return self._apply_output_hook(out, force_tuple_for_bare_tensor=bare)

    return types.MethodType(forward, block)


def _install_blocks(bridge: torch.nn.Module) -> int:
    from transformer_lens.model_bridge.generalized_components.block import BlockBridge

    n = 0
    for m in bridge.modules():
        if type(m) is not BlockBridge or m.__dict__.get(_MARK):
            continue
        layer = getattr(m, "original_component", None)
        if layer is None:
            continue
        plain = _unwrapped(layer)
        if _patched(plain):
            continue
        m.__dict__[_COMPILED] = torch.compile(plain, dynamic=True)
        m.__dict__[_LAYER] = getattr(getattr(layer, "self_attn", None), "layer_idx", None)
        m.__dict__["forward"] = _block_forward(m)
        m.__dict__[_MARK] = True
        n += 1
    return n


def install(bridge: torch.nn.Module, compile: bool = False) -> int:
    """Give every plain norm and attention bridge the hook-aware HF forward; returns how many.

    Idempotent. Only these two exact bridge classes are changed (a subclass keeps its
    own forward); processed weights, layer-norm folding and training mode fall back to
    the bridge's forward at call time. With ``compile=True`` every plain
    ``BlockBridge`` also gets a compiled HF layer for calls with nothing hooked inside
    it (see the module docstring; counted in the return value too).
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
    if compile:
        n += _install_blocks(bridge)
    return n


def uninstall(bridge: torch.nn.Module) -> int:
    """Restore the bridge's own forwards; returns how many components changed back."""
    n = 0
    for m in bridge.modules():
        if m.__dict__.pop(_MARK, False):
            m.__dict__.pop("forward", None)
            m.__dict__.pop(_COMPILED, None)
            n += 1
    return n
