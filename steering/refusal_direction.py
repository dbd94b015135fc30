"""The refusal direction (Arditi et al. 2024): candidates, selection, result.

Candidates are differences in means of ``resid_pre`` between harmful and
harmless train prompts at every end-of-instruction position and layer
(accumulated in float64). Each candidate in the first 80% of layers is scored
on validation prompts with the cheap logit refusal score (forward passes, no
generation). To fit a CPU budget the selection runs in two stages: every
candidate is screened on a few prompts per class, and the best ``finalists``
(by screened bypass among those that pass the screened induce and KL filters)
are scored on the whole validation split:

- bypass: mean refusal score on harmful prompts with the direction ablated
  everywhere (lower is better),
- induce: mean refusal score on harmless prompts with the direction added at
  its layer (must be > 0, or, for a model whose own refusal log-odds on harmful
  prompts average below 0, above that average),
- KL: divergence of the last-token distribution on harmless prompts under
  ablation (must be <= ``kl_max``).

Before any of this, as in Arditi et al., the prompt sets are filtered by the
model's own behaviour (``filter_refusals``): harmful prompts the model does not
refuse (logit refusal score <= 0) and harmless prompts it does refuse (> 0) are
dropped from train and validation, so the difference in means contrasts refusal
with compliance rather than harmful topics with harmless ones.

A direction must first mediate refusal: ablated, harmful prompts must score
below the harmless baseline. The candidate with the lowest bypass score among
those that do and pass both filters is chosen; if none passes, the filters are
relaxed in order (induce, then KL), never the bypass requirement unless no
candidate bypasses at all (see ``_tiers``). Once the KL filter is relaxed, the
bypassing candidate with the lowest KL is chosen, not the strongest bypass (see
``_rank_score``).

Example:
    >>> result = refusal_direction(model, harmful=h_train, harmless=b_train,
    ...                            harmful_val=h_val, harmless_val=b_val)  # doctest: +SKIP
    >>> result.position, result.layer  # doctest: +SKIP
    ('eoi[-1]', 13)
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from probes import record
from probes.activations import prompts_hash
from probes.errors import BadInputError
from probes.models import LoadedModel
from steering.directions import Direction
from steering.generate import last_logits
from steering.interventions import ablate, add
from steering.judge import RefusalScorer

MIN_TRAIN = 8
MIN_VAL = 4


@dataclass
class RefusalResult:
    """Candidates, their selection scores and the chosen direction.

    Attributes:
        candidates: ``[n_pos, n_layers, d_model]`` float32 mean differences.
        positions: the position label of each candidate row.
        bypass, induce, kl: ``[n_pos, n_layers]`` scores (NaN where not evaluated).
        direction: the chosen :class:`~steering.directions.Direction`.
        scorer: the logit refusal scorer used for selection.
    """

    candidates: Tensor
    positions: list[str]
    bypass: Tensor
    induce: Tensor
    kl: Tensor
    direction: Direction
    scorer: RefusalScorer
    baseline: dict = field(default_factory=dict)
    seconds: float = 0.0
    screen_bypass: Tensor | None = None
    screen_induce: Tensor | None = None
    screen_kl: Tensor | None = None

    @property
    def layer(self) -> int:
        return self.direction.layer

    @property
    def position(self) -> str:
        return self.direction.position

    def plot_candidates(self):
        """plotly heatmaps of bypass / induce / KL per (position, layer)."""
        from steering.plots import candidate_heatmaps

        return candidate_heatmaps(self)


def mean_diff_candidates(
    model: LoadedModel, harmful: Sequence[str], harmless: Sequence[str]
) -> tuple[Tensor, list[str]]:
    """Difference in means of resid_pre, ``[n_eoi, n_layers, d_model]`` (float64 accumulation)."""
    kw = dict(sites="resid_pre", layers="all", positions="eoi", progress=False)
    a, b = record(model, list(harmful), **kw), record(model, list(harmless), **kw)
    diffs = [
        a["resid_pre", p].double().mean(0) - b["resid_pre", p].double().mean(0) for p in a.positions
    ]
    return torch.stack(diffs).float(), list(a.positions)


def _kl(base_logits: Tensor, new_logits: Tensor) -> Tensor:
    p = torch.log_softmax(base_logits.double(), -1)
    q = torch.log_softmax(new_logits.double(), -1)
    return (p.exp() * (p - q)).sum(-1)


def _tiers(bypass: Tensor, induce: Tensor, kl: Tensor, harmless_level: float, floor: float,
           kl_max: float) -> Tensor:  # fmt: skip
    """Selection tier per candidate ``[n_pos, n_layers]`` (0 = best; NaN scores: last).

    A direction must first mediate refusal: with it ablated, harmful prompts score no
    higher than harmless ones do (``bypass < harmless_level``). Among those, tier 0 also
    passes the induce and KL filters, tier 1 the KL filter only, tier 2 neither; tier 3
    holds the candidates that do not bypass (ranked by bypass alone), tier 4 unscored.
    """
    bypasses = bypass < harmless_level
    t = torch.full(bypass.shape, 3, dtype=torch.long)
    t = torch.where(bypasses, 2, t)
    t = torch.where(bypasses & (kl <= kl_max), 1, t)
    t = torch.where(bypasses & (kl <= kl_max) & (induce > floor), 0, t)
    return torch.where(torch.isfinite(bypass), t, 4)


def _rank_score(tier: Tensor, bypass: Tensor, kl: Tensor) -> Tensor:
    """Order within a tier (lower is better): the bypass score, except in tier 2.

    Tier 2 bypasses but fails the KL filter: there the candidate that damages the
    model least (lowest KL) comes first. Ranking tier 2 by bypass would favour the
    directions that break the model outright (an early-layer direction whose ablation
    sends KL to ~6 "bypasses" best, by making every answer nonsense).
    """
    return torch.where(tier == 2, kl, bypass)


def filter_by_refusal(
    model: LoadedModel,
    scorer: RefusalScorer,
    harmful: Sequence[str],
    harmless: Sequence[str],
    *,
    minimum: int,
    split: str = "train",
) -> tuple[list[str], list[str]]:
    """Keep the harmful prompts the model refuses and the harmless ones it answers.

    Refusal is read from the logit refusal score (log-odds of the refusal-start
    tokens, > 0 means refused), one forward pass per prompt, no generation.
    Raises :class:`BadInputError` when fewer than ``minimum`` of either remain.
    """
    kept_h, kept_b, _ = _filter_by_refusal(model, scorer, harmful, harmless, minimum, split)
    return kept_h, kept_b


def _filter_by_refusal(model, scorer, harmful, harmless, minimum: int, split: str):
    """:func:`filter_by_refusal`, also returning the kept prompts' last-token logits
    ``([n_kept_harmful, vocab], [n_kept_harmless, vocab])`` for reuse."""
    harmful, harmless = list(harmful), list(harmless)
    logits = last_logits(model, harmful + harmless)
    refused = scorer.score_logits(logits) > 0
    keep_h, keep_b = refused[: len(harmful)], ~refused[len(harmful) :]
    kept_h = [p for p, k in zip(harmful, keep_h.tolist()) if k]
    kept_b = [p for p, k in zip(harmless, keep_b.tolist()) if k]
    for name, kept, total, what in (("harmful", kept_h, harmful, "refuses"),
                                    ("harmless", kept_b, harmless, "answers")):  # fmt: skip
        if len(kept) < minimum:
            raise BadInputError(
                f"the model {what} only {len(kept)} of the {len(total)} {name} {split} prompts "
                f"(logit refusal score {'>' if what == 'refuses' else '<='} 0); at least "
                f"{minimum} are needed. Give more prompts, or pass filter_refusals=False to "
                f"use them all (a model that rarely refuses may have no refusal direction)"
            )
    return kept_h, kept_b, (logits[: len(harmful)][keep_h], logits[len(harmful) :][keep_b])


def _check(name: str, xs: Sequence[str], minimum: int) -> list[str]:
    xs = list(xs)
    if len(xs) < minimum:
        raise BadInputError(f"{name} has {len(xs)} prompts; at least {minimum} are needed")
    return xs


def refusal_direction(
    model: LoadedModel,
    harmful: Sequence[str],
    harmless: Sequence[str],
    *,
    harmful_val: Sequence[str] | None = None,
    harmless_val: Sequence[str] | None = None,
    scorer: RefusalScorer | None = None,
    kl_max: float = 0.1,
    prune_frac: float = 0.2,
    screen: int = 3,
    finalists: int = 5,
    candidates: tuple[Tensor, list[str]] | None = None,
    layers: Sequence[int] | None = None,
    positions: Sequence[str] | None = None,
    filter_refusals: bool = True,
    progress: bool = True,
) -> RefusalResult:
    """Find and select the refusal direction.

    Args:
        harmful, harmless: train prompts for the mean difference (>= 8 each).
        harmful_val, harmless_val: selection prompts (>= 4 each); default: the
            last quarter of the train lists is held out.
        scorer: a fitted :class:`RefusalScorer` (default: learned on the train prompts).
        kl_max: KL filter on harmless prompts under ablation.
        prune_frac: discard candidates in the last ``prune_frac`` of layers.
        screen: prompts per class used to screen every candidate (stage 1).
        finalists: candidates re-scored on the whole validation split (stage 2).
        candidates: precomputed ``(mean differences [n_pos, n_layers, d], position labels)``
            (e.g. from activations already recorded); default: recorded here.
        layers, positions: restrict which candidates are screened (fast runs).
        filter_refusals: keep only the harmful prompts the model refuses and the
            harmless ones it answers, by the logit refusal score (train and val; see
            :func:`filter_by_refusal`). Ignored when ``candidates`` are given for train.
    """
    harmful, harmless = (
        _check("harmful", harmful, MIN_TRAIN),
        _check("harmless", harmless, MIN_TRAIN),
    )
    if harmful_val is None or harmless_val is None:
        k1, k2 = max(len(harmful) // 4, MIN_VAL), max(len(harmless) // 4, MIN_VAL)
        harmful, harmful_val = harmful[:-k1], harmful[-k1:]
        harmless, harmless_val = harmless[:-k2], harmless[-k2:]
    h_val = _check("harmful_val", harmful_val, MIN_VAL)
    b_val = _check("harmless_val", harmless_val, MIN_VAL)
    t0 = time.perf_counter()
    if scorer is None:
        scorer = RefusalScorer.fit(model, harmful[:32], harmless[:32])
    n_given = {"train": [len(harmful), len(harmless)], "val": [len(h_val), len(b_val)]}
    if filter_refusals:
        if candidates is None:
            harmful, harmless = filter_by_refusal(model, scorer, harmful, harmless,
                                                  minimum=MIN_TRAIN)  # fmt: skip
        # the filter's forward pass gives the val baselines too
        h_val, b_val, (base_h_logits, base_b_logits) = _filter_by_refusal(
            model, scorer, h_val, b_val, MIN_VAL, "val")  # fmt: skip
    else:
        base_h_logits, base_b_logits = last_logits(model, h_val), last_logits(model, b_val)
    only_pos = positions
    cands, positions = candidates or mean_diff_candidates(model, harmful, harmless)
    if cands.shape[-1] != model.d_model or cands.shape[1] != model.n_layers:
        raise BadInputError(f"candidates have shape {tuple(cands.shape)}; expected "
                            f"[n_pos, {model.n_layers}, {model.d_model}]")  # fmt: skip
    n_pos, n_layers = cands.shape[:2]
    max_layer = math.floor(n_layers * (1 - prune_frac))
    base_h = scorer.score_logits(base_h_logits)
    base_b = scorer.score_logits(base_b_logits)
    nan = torch.full((n_pos, n_layers), float("nan"))
    bypass, induce, kl = nan.clone(), nan.clone(), nan.clone()
    screen_bypass, screen_induce = nan.clone(), nan.clone()
    norms = cands.norm(dim=-1)
    # at layer 0 the template tokens are identical for every prompt: the difference is zero
    allowed = set(range(max_layer)) if layers is None else set(layers) & set(range(max_layer))
    todo = [(i, layer) for i in range(n_pos) for layer in sorted(allowed)
            if norms[i, layer] > 1e-6 * float(norms.max())
            and (only_pos is None or positions[i] in only_pos)]  # fmt: skip
    if not todo:
        raise BadInputError("no candidate left to screen (check layers/positions and prune_frac)")
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(todo) + finalists, desc="select direction", unit="cand")
        bar.write(f"refusal tokens learned from the model's own refusals: {scorer.tokens}")
    # stage 1: screen every candidate on a few prompts (forward passes only)
    hs, bs = h_val[:screen], b_val[:screen]
    base_bs = base_b_logits[:screen]
    screen_kl = nan.clone()
    for i, layer in todo:
        v = cands[i, layer]
        with ablate(model, v):  # one batch: bypass on harmful, KL on harmless
            lg = last_logits(model, hs + bs)
        screen_bypass[i, layer] = scorer.score_logits(lg[: len(hs)]).mean()
        screen_kl[i, layer] = _kl(base_bs, lg[len(hs) :]).mean()
        with add(model, v, layer=layer, coeff=1.0):
            screen_induce[i, layer] = scorer.score(model, bs).mean()
        if bar:
            bar.update()
    floor_screen = min(0.0, float(base_h[:screen].mean()))
    # finalists: see _tiers; ranked within each tier by _rank_score
    tier = _tiers(screen_bypass, screen_induce, screen_kl, float(base_b[:screen].mean()),
                  floor_screen, kl_max)  # fmt: skip
    rank = _rank_score(tier, screen_bypass, screen_kl)
    keys = [(int(t), float(b) if b == b else math.inf)
            for t, b in zip(tier.flatten().tolist(), rank.flatten().tolist())]  # fmt: skip
    order = sorted(range(len(keys)), key=keys.__getitem__)[:finalists]
    # stage 2: the finalists on the whole validation split
    for flat in order:
        i, layer = divmod(flat, n_layers)
        v = cands[i, layer]
        with ablate(model, v):
            lg = last_logits(model, h_val + b_val)
        bypass[i, layer] = scorer.score_logits(lg[: len(h_val)]).mean()
        kl[i, layer] = _kl(base_b_logits, lg[len(h_val) :]).mean()
        with add(model, v, layer=layer, coeff=1.0):
            induce[i, layer] = scorer.score(model, b_val).mean()
        if bar:
            bar.update()
    if bar:
        bar.close()
    # Arditi et al. require induce > 0 (log-odds); a model whose own refusals are weak
    # (mean harmful log-odds below 0) is held to reaching its harmful baseline instead.
    floor = min(0.0, float(base_h.mean()))
    tier = _tiers(bypass, induce, kl, float(base_b.mean()), floor, kl_max)
    rank = _rank_score(tier, bypass, kl)
    masked = torch.where(tier == tier.min(), rank, torch.full_like(bypass, float("inf")))
    i, layer = divmod(int(masked.argmin()), n_layers)
    meta = {
        "method": "diff-in-means resid_pre, selected by bypass/induce/KL (Arditi et al. 2024)",
        "bypass": float(bypass[i, layer]),
        "induce": float(induce[i, layer]),
        "kl": float(kl[i, layer]),
        "passed_filters": bool(tier[i, layer] == 0),
        "tier": int(tier[i, layer]),
        "induce_floor": floor,
        "refusal_tokens": scorer.tokens,
        "harmful_sha256": prompts_hash(harmful),
        "harmless_sha256": prompts_hash(harmless),
        "n_train": [len(harmful), len(harmless)],
        "n_val": [len(h_val), len(b_val)],
        "filter_refusals": filter_refusals,
        "n_given": n_given,
    }
    direction = Direction(cands[i, layer].clone(), layer, positions[i], model.identity, meta)
    baseline = {
        "harmful_val_score": float(base_h.mean()),
        "harmless_val_score": float(base_b.mean()),
    }
    return RefusalResult(cands, positions, bypass, induce, kl, direction, scorer, baseline,
                         time.perf_counter() - t0, screen_bypass, screen_induce,
                         screen_kl)  # fmt: skip
