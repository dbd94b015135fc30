"""Evaluate a refusal direction: ablation, addition and the coefficient sweep."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import numpy as np
import torch

from probes.errors import BadInputError
from probes.models import LoadedModel
from steering.directions import Direction
from steering.generate import generate, last_logits
from steering.interventions import ablate, add
from steering.judge import RefusalScorer, is_refusal


def _kl_each(p_logits, q_logits) -> torch.Tensor:
    """Per-prompt KL(p || q) of the next-token distributions, ``[n]`` float64."""
    p = torch.log_softmax(p_logits.double(), -1)
    q = torch.log_softmax(q_logits.double(), -1)
    return (p.exp() * (p - q)).sum(-1)


def _kl(p_logits, q_logits) -> float:
    return float(_kl_each(p_logits, q_logits).mean())


def _condition(model, direction, name, coeff=1.0):
    if name == "ablate":
        return ablate(model, direction)
    if name == "add":
        return add(model, direction, coeff=coeff)
    return contextlib.nullcontext()


def judge_condition(
    model: LoadedModel,
    prompts: Sequence[str],
    direction: Direction,
    condition: str,
    scorer: RefusalScorer | None,
    *,
    max_new_tokens: int = 48,
    coeff: float = 1.0,
) -> dict:
    """Generate under one condition (``none``/``ablate``/``add``) and judge every completion."""
    with _condition(model, direction, condition, coeff):
        texts = generate(model, prompts, max_new_tokens=max_new_tokens)
        logits = last_logits(model, prompts) if scorer else None
    refused = [is_refusal(t) for t in texts]
    out = {
        "condition": condition,
        "n": len(prompts),
        "refusal_rate": sum(refused) / len(prompts),
        "generations": [
            {"prompt": p, "completion": t, "refused": r} for p, t, r in zip(prompts, texts, refused)
        ],
    }
    if scorer:
        s = scorer.score_logits(logits)
        out["logit_score_mean"] = float(s.mean())
        out["logit_refusal_rate"] = float((s > 0).float().mean())
    return out


def evaluate_direction(
    model: LoadedModel,
    direction: Direction,
    harmful: Sequence[str],
    harmless: Sequence[str],
    scorer: RefusalScorer | None = None,
    *,
    max_new_tokens: int = 48,
    coeff: float = 1.0,
) -> dict:
    """Refusal on harmful (baseline, ablation), on harmless (baseline, addition), KL under ablation.

    ``kl_harmless_ablate`` averages over every harmless prompt; ``kl_harmless_ablate_answered``
    over those the model answers without ablation (by the substring judge), since on a
    harmless prompt it refuses the ablation is meant to change the answer (Arditi et al.
    measure KL on harmless prompts filtered this way).
    """
    res = {
        "harmful_baseline": judge_condition(model, harmful, direction, "none", scorer,
                                            max_new_tokens=max_new_tokens),
        "harmful_ablate": judge_condition(model, harmful, direction, "ablate", scorer,
                                          max_new_tokens=max_new_tokens),
        "harmless_baseline": judge_condition(model, harmless, direction, "none", scorer,
                                             max_new_tokens=max_new_tokens),
        "harmless_add": judge_condition(model, harmless, direction, "add", scorer,
                                        max_new_tokens=max_new_tokens, coeff=coeff),
    }  # fmt: skip
    base = last_logits(model, harmless)
    with ablate(model, direction):
        abl = last_logits(model, harmless)
    kl = _kl_each(base, abl)
    answered = torch.tensor([not g["refused"] for g in res["harmless_baseline"]["generations"]])
    res["kl_harmless_ablate"] = float(kl.mean())
    res["kl_harmless_ablate_answered"] = float(kl[answered].mean()) if answered.any() else None
    res["n_harmless_answered"] = int(answered.sum())
    return res


def coeff_sweep(
    model: LoadedModel,
    direction: Direction,
    harmful: Sequence[str],
    harmless: Sequence[str],
    coeffs: Sequence[float] = (0.0, 0.25, 0.5, 0.75, 1.0, 1.25),
    *,
    max_new_tokens: int = 24,
) -> dict:
    """Refusal on harmless and harmful, and KL on harmless, for each addition coefficient."""
    base = last_logits(model, harmless)
    rows = {"refusal on harmless": [], "refusal on harmful": [], "KL harmless": []}
    for c in coeffs:
        with add(model, direction, coeff=c):
            rows["refusal on harmless"].append(
                sum(map(is_refusal, generate(model, harmless, max_new_tokens=max_new_tokens)))
                / len(harmless)
            )
            rows["refusal on harmful"].append(
                sum(map(is_refusal, generate(model, harmful, max_new_tokens=max_new_tokens)))
                / len(harmful)
            )
            rows["KL harmless"].append(_kl(base, last_logits(model, harmless)))
    return {"coeffs": list(coeffs), **rows}


def select_coeff(
    model: LoadedModel,
    direction: Direction,
    harmless_val: Sequence[str],
    grid: Sequence[float] = (1.0, 1.5, 2.0, 3.0, 4.0),  # ascending
    *,
    target: float = 0.9,
    max_new_tokens: int = 12,
) -> dict:
    """Smallest addition coefficient whose refusal rate on harmless *val* prompts reaches ``target``.

    Chosen on validation prompts (never test). If none reaches the target, the smallest
    coefficient with the highest rate: a larger one that refuses no more often only
    pushes the model further off its distribution (on qwen2.5-coder-0.5b, coefficient 6
    refused as often as 4 on val and answered many prompts with "1.1.1.1...").
    """
    if not grid:
        raise BadInputError("select_coeff needs at least one coefficient in grid")
    rates = []
    for c in grid:
        with add(model, direction, coeff=c):
            texts = generate(model, harmless_val, max_new_tokens=max_new_tokens)
        rates.append(sum(map(is_refusal, texts)) / len(texts))
        if rates[-1] >= target:
            break
    best = int(np.argmax(rates))  # the first (smallest) of the highest rates
    return {"coeff": grid[best], "grid": list(grid[: len(rates)]), "val_refusal": rates}
