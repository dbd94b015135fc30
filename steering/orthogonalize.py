"""Weight orthogonalisation: bake directional ablation into the weights.

Every matrix that writes to the residual stream (token embedding, attention
output and MLP output projections, and their biases) has the direction
projected out, so the edited model behaves like :func:`steering.ablate`
without hooks. Tied embeddings are untied first so the unembedding is kept,
exactly as the hook ablation keeps it.

Example:
    >>> edited = orthogonalize(model, direction)  # doctest: +SKIP
    >>> edited.save_pretrained("qwen-no-refusal/")  # doctest: +SKIP
    >>> load_model("qwen-no-refusal/")  # doctest: +SKIP
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from probes.atomic import atomic_folder
from probes.errors import BadInputError
from probes.models import LoadedModel
from steering.directions import Direction
from steering.interventions import unit_vector


def _writers(hf: nn.Module) -> list[nn.Linear]:
    """The linear maps whose outputs are added to the residual stream."""
    layers = getattr(getattr(hf, "model", None), "layers", None)
    if layers is None:
        raise BadInputError(f"{type(hf).__name__}: no decoder layers found to orthogonalize")
    out = []
    for layer in layers:
        attn_o = getattr(layer.self_attn, "o_proj", None)
        mlp_o = getattr(layer.mlp, "down_proj", None)
        if attn_o is None or mlp_o is None:
            raise BadInputError(
                f"{type(layer).__name__}: unsupported block layout for orthogonalize"
            )
        out += [attn_o, mlp_o]
    return out


@torch.no_grad()
def orthogonalize_(hf: nn.Module, r: Tensor) -> nn.Module:
    """In place: project unit vector ``r`` ``[d]`` out of every residual writer of ``hf``."""
    emb = hf.get_input_embeddings()
    if hf.get_output_embeddings() is not None and (
        hf.get_output_embeddings().weight.data_ptr() == emb.weight.data_ptr()
    ):
        hf.lm_head.weight = nn.Parameter(emb.weight.detach().clone())
        hf.config.tie_word_embeddings = False
        if hasattr(hf.config, "get_text_config"):
            hf.config.get_text_config().tie_word_embeddings = False
    w = emb.weight  # [vocab, d]
    rr = r.to(w.dtype)
    w -= (w @ rr)[:, None] * rr[None, :]
    for lin in _writers(hf):
        w = lin.weight  # [d, d_in]
        rr = r.to(w.dtype)
        w -= rr[:, None] * (rr @ w)[None, :]
        if lin.bias is not None:
            lin.bias -= (lin.bias @ rr) * rr
    return hf


@dataclass
class OrthogonalizedModel:
    """A plain HF model with a direction removed from its weights, plus its tokenizer."""

    hf_model: Any
    tokenizer: Any
    provenance: dict

    def save_pretrained(self, path: str | os.PathLike) -> Path:
        """Write an HF folder (weights, config, tokenizer, provenance) atomically."""
        path = Path(path)
        if path.exists() and not path.is_dir():
            raise BadInputError(f"{path} exists and is not a folder")
        with atomic_folder(path) as tmp:
            self.hf_model.save_pretrained(tmp)
            self.tokenizer.save_pretrained(tmp)
            (tmp / "safety-probes-edit.json").write_text(json.dumps(self.provenance, indent=2))
        return path


def orthogonalize(model: LoadedModel, direction: Direction | Tensor) -> OrthogonalizedModel:
    """A copy of ``model``'s weights with ``direction`` projected out (the model is untouched)."""
    from transformers import AutoModelForCausalLM

    r = unit_vector(model, direction)
    hf = AutoModelForCausalLM.from_pretrained(model.path, dtype=torch.float32).eval()
    orthogonalize_(hf, r)
    prov = {"edit": "orthogonalize", "base": model.identity}
    if isinstance(direction, Direction):
        prov |= {"layer": direction.layer, "position": direction.position}
    return OrthogonalizedModel(hf, model.tokenizer, prov)


def hook_vs_weights_gap(model: LoadedModel, direction: Direction | Tensor, prompts) -> float:
    """Max absolute last-token logit difference: hook ablation vs orthogonalised weights.

    The two must agree (up to the model's dtype precision) on ``prompts``.
    """
    from probes.prompts import bucketed, encode, position_ids
    from steering.generate import last_logits
    from steering.interventions import ablate

    prompts = list(prompts)
    with ablate(model, direction):
        hooked = last_logits(model, prompts)
    edited = orthogonalize(model, direction).hf_model
    enc = encode(model.tokenizer, prompts)
    gap = 0.0
    for b in bucketed(enc, range(len(enc)), model.tokenizer.pad_token_id, 4096, 16):
        with torch.inference_mode():
            pos = position_ids(b.attention_mask)
            lg = edited(b.input_ids, attention_mask=b.attention_mask, position_ids=pos).logits[
                :, -1
            ]
        gap = max(gap, float((lg.float() - hooked[torch.tensor(b.rows)]).abs().max()))
    return gap
