"""More refusal directions to ablate where a two-sided defense is sure a request is benign.

The refusal direction (:func:`steering.refusal_direction`) is chosen for a trade-off:
remove refusal, induce it when added, and keep KL on harmless prompts small. It need not
remove every way a model refuses. With it ablated, qwen2.5-coder-0.5b-instruct still
opens some benign answers with "As an AI language model, I cannot discuss topics related
to politics, religion, sex, violence ..." (a topic refusal that a single direction does
not carry). A two-sided defense (``GatedRefusal`` in ``calibrate`` or ``block`` mode)
ablates only on examples its probe is confident are benign; there, removing refusal
completely is the point.

:func:`select_benign_ablation` adds directions greedily: each step tries every
difference-in-means candidate at the refusal direction's position and the given layers,
ablates it together with the directions already chosen (on the defense's layers), and
keeps the one that lowers the mean logit refusal score on benign validation prompts the
most. Forward passes only, no generation. Selection reads benign prompts only; its effect
on harmful prompts is nil where the gate fires and is measured by the defense evaluation.

Example:
    >>> sel = select_benign_ablation(model, direction, h_train, b_train, benign_val, scorer,
    ...                              layers=range(11, 24), ablate_layers=range(11, 24))  # doctest: +SKIP
    >>> GatedRefusal(model, probe, direction, mode="block",
    ...              ablate_directions=sel.directions)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from torch import Tensor

from probes.errors import BadInputError
from probes.models import LoadedModel, check_layer
from steering.directions import Direction
from steering.interventions import ablate, orthonormal_basis
from steering.judge import RefusalScorer
from steering.refusal_direction import mean_diff_candidates


@dataclass
class BenignAblation:
    """The chosen directions and what each selection step measured.

    Attributes:
        directions: the refusal direction first, then the added ones.
        baseline: mean refusal log-odds and refused fraction (score > 0) on the benign
            prompts with only the refusal direction ablated.
        steps: per step, ``{layer: (mean log-odds, refused fraction)}`` for every candidate.
    """

    directions: list[Direction]
    baseline: tuple[float, float]
    steps: list[dict[int, tuple[float, float]]] = field(default_factory=list)


def select_benign_ablation(
    model: LoadedModel,
    direction: Direction,
    harmful: Sequence[str],
    harmless: Sequence[str],
    benign: Sequence[str],
    scorer: RefusalScorer,
    *,
    layers: Sequence[int],
    ablate_layers: Sequence[int] | None = None,
    k: int = 1,
    min_gain: float = 0.1,
    candidates: tuple[Tensor, list[str]] | None = None,
) -> BenignAblation:
    """Greedily add up to ``k`` directions that lower refusal on ``benign`` when ablated.

    Args:
        direction: the refusal direction (always kept, first).
        harmful, harmless: train prompts for the candidates' difference in means (as
            for the refusal direction; ignored when ``candidates`` is given).
        benign: benign validation prompts (never test prompts).
        scorer: the logit refusal scorer (refusal-start tokens of this model).
        layers: candidate layers, at the refusal direction's position.
        ablate_layers: the layers the defense ablates on (default: every layer).
        k: at most this many added directions.
        min_gain: a step must lower the mean refusal log-odds by at least this much.
        candidates: precomputed ``mean_diff_candidates`` output.
    """
    direction.check_model(model)
    benign = list(benign)
    if not benign:
        raise BadInputError("select_benign_ablation needs benign validation prompts")
    if k < 1:
        raise BadInputError(f"k must be >= 1, got {k}")
    for layer in layers:
        check_layer(model, layer)
    ablate_layers = list(range(model.n_layers) if ablate_layers is None else ablate_layers)
    cands, positions = candidates or mean_diff_candidates(model, harmful, harmless)
    if direction.position not in positions:
        raise BadInputError(
            f"the direction's position {direction.position!r} is not among the candidates' "
            f"{positions}"
        )
    row = cands[positions.index(direction.position)]  # [n_layers, d_model]

    def measure(dirs: list[Direction]) -> tuple[float, float]:
        with ablate(model, dirs, layers=ablate_layers):
            s = scorer.score(model, benign)
        return float(s.mean()), float((s > 0).float().mean())

    chosen = [direction]
    result = BenignAblation(chosen, measure(chosen))
    current = result.baseline[0]
    for _ in range(k):
        step: dict[int, tuple[float, float]] = {}
        for layer in layers:
            cand = Direction(row[layer].clone(), int(layer), direction.position,
                             direction.model_identity,
                             {"method": "mean difference", "role": "benign ablation"})  # fmt: skip
            try:
                orthonormal_basis(model, chosen + [cand])
            except BadInputError:
                continue  # zero, or (nearly) inside the span already chosen (the direction itself)
            step[int(layer)] = measure(chosen + [cand])
        result.steps.append(step)
        if not step:
            break
        best = min(step, key=lambda la: step[la][0])
        if current - step[best][0] < min_gain:
            break
        current = step[best][0]
        chosen.append(Direction(row[best].clone(), best, direction.position,
                                direction.model_identity,
                                {"method": "mean difference", "role": "benign ablation",
                                 "benign_mean_log_odds": step[best][0],
                                 "benign_refused": step[best][1]}))  # fmt: skip
    return result
