"""Compare refusal defenses in one evaluation run.

Defenses: no defense, always-on activation addition, a CAST-style cosine
condition gate (decided once at the prompt), and the probe gate in each mode.
Each is run on the same evaluation sets (e.g. harmful test, jailbreak-wrapped
harmful test, harmless test, borderline) and judged with the substring judge.
A white-box attack (the attacker ablates the refusal direction everywhere)
can be layered under any defense to test robustness.

Example:
    >>> table = compare_defenses(model, defenses, sets)  # doctest: +SKIP
    >>> table["probe-gate/calibrate"]["harmful"]["refusal_rate"]  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import torch

from probes.metrics import calibrate_threshold
from probes.models import LoadedModel
from probes.probe import Probe
from probes.record import record
from steering.defense import CosineCondition, GatedRefusal
from steering.directions import Direction
from steering.generate import generate
from steering.interventions import ablate, add
from steering.judge import is_refusal

Runner = Callable[[Sequence[str]], tuple[list[str], list[bool] | None]]


def cast_condition(
    model: LoadedModel,
    direction: Direction,
    harmful: Sequence[str],
    benign: Sequence[str],
    *,
    layer: int | None = None,
) -> CosineCondition:
    """A CAST-style condition: cosine with the refusal direction, threshold by best accuracy.

    As in Conditional Activation Steering, the threshold is a grid search that
    maximises accuracy separating ``harmful`` from ``benign`` prompts.
    """
    layer = direction.layer if layer is None else layer
    acts_h = record(model, harmful, layers=[layer], positions="last", progress=False)
    acts_b = record(model, benign, layers=[layer], positions="last", progress=False)
    cond = CosineCondition(direction.vector.float(), layer, 0.0, model.identity)
    sh = cond.score_hidden(acts_h.layer("resid_post", layer)).numpy()
    sb = cond.score_hidden(acts_b.layer("resid_post", layer)).numpy()
    grid = np.unique(np.concatenate([sh, sb]))
    acc = [((sh > t).sum() + (sb <= t).sum()) / (len(sh) + len(sb)) for t in grid]
    cond.threshold = float(grid[int(np.argmax(acc))])
    return cond


def plain_runner(model: LoadedModel, max_new_tokens: int, ctx=None) -> Runner:
    def run(prompts: Sequence[str]):
        with ctx() if ctx else contextlib.nullcontext():
            return generate(model, prompts, max_new_tokens=max_new_tokens), None

    return run


def gated_runner(
    defense: GatedRefusal, max_new_tokens: int, attack: Direction | None = None
) -> Runner:
    def run(prompts: Sequence[str]):
        with ablate(defense.model, attack) if attack is not None else contextlib.nullcontext():
            texts = defense.generate(prompts, max_new_tokens=max_new_tokens)
        return texts, [r["fired"] for r in defense.report()]

    return run


def standard_defenses(
    model: LoadedModel,
    probe,
    direction: Direction,
    cast: CosineCondition,
    *,
    max_new_tokens: int = 32,
    modes: Sequence[str] = ("steer", "calibrate", "block"),
    coeff: float = 1.0,
    attack: bool = False,
    recheck_threshold: float | Mapping[str, float] | None = None,
    extra_probes: Mapping[str, Probe] | None = None,
    ablate_directions: Sequence[Direction] | None = None,
) -> dict[str, Runner]:
    """The comparison set: none, always-on addition, CAST-style gate, probe gate per mode.

    With ``attack=True`` every defense runs under a white-box ablation of the
    refusal direction (the attacker removes it everywhere). ``recheck_threshold``
    is the probe gates' token-level threshold (see ``GatedRefusal.calibrate_recheck``),
    one for all or one per mode (a mapping; ``intent-gate/block`` reads key ``"intent"``).
    ``extra_probes`` (e.g. ``{"jailbreak": probe}``) join the harmful-intent probe in an
    OR gate and ``ablate_directions`` replace the direction the two-sided modes ablate;
    given either, the row ``intent-gate/block`` keeps the intent probe alone with the
    refusal direction alone, for comparison.
    """
    atk = direction if attack else None
    pre = (lambda: ablate(model, direction)) if attack else None
    runners: dict[str, Runner] = {"none": plain_runner(model, max_new_tokens, pre)}
    if not attack:
        runners["always-add"] = plain_runner(
            model, max_new_tokens, lambda: add(model, direction, coeff=coeff)
        )
    cast_def = GatedRefusal(model, cast, direction, mode="steer", coeff=coeff, recheck=False)
    runners["cast-gate"] = gated_runner(cast_def, max_new_tokens, atk)
    gate_probes = {"intent": probe, **(extra_probes or {})}

    def recheck(key: str) -> float | None:
        if isinstance(recheck_threshold, Mapping):
            return recheck_threshold[key]
        return recheck_threshold

    for mode in modes:
        d = GatedRefusal(model, gate_probes, direction, mode=mode, coeff=coeff,
                         recheck_threshold=recheck(mode),
                         ablate_directions=ablate_directions)  # fmt: skip
        runners[f"probe-gate/{mode}"] = gated_runner(d, max_new_tokens, atk)
    if extra_probes or ablate_directions is not None:
        d = GatedRefusal(model, probe, direction, mode="block", coeff=coeff,
                         recheck_threshold=recheck("intent"))  # fmt: skip
        runners["intent-gate/block"] = gated_runner(d, max_new_tokens, atk)
    return runners


def compare_defenses(
    runners: Mapping[str, Runner],
    sets: Mapping[str, Sequence[str]],
    *,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Run every defense on every set; refusal rate, gate rate, generations and seconds."""
    table: dict[str, dict] = {}
    names = list(sets)
    everything = [p for n in names for p in sets[n]]
    for name, run in runners.items():
        if progress:
            progress(f"{name} on {', '.join(f'{n} ({len(sets[n])})' for n in names)}")
        t0 = time.perf_counter()
        texts, fired = run(everything)  # one call: larger, better-filled batches
        seconds = time.perf_counter() - t0
        fired = fired or [None] * len(texts)
        table[name], start = {}, 0
        for set_name in names:
            k = len(sets[set_name])
            t, f, ps = (
                texts[start : start + k],
                fired[start : start + k],
                everything[start : start + k],
            )
            start += k
            refused = [is_refusal(x) for x in t]
            table[name][set_name] = {
                "refusal_rate": sum(refused) / max(k, 1),
                "gate_rate": None if f[:1] == [None] else sum(map(bool, f)) / max(k, 1),
                "n": k,
                "seconds": round(seconds * k / max(len(everything), 1), 2),
                "generations": [
                    {"prompt": p, "completion": x, "refused": r, "gated": g}
                    for p, x, r, g in zip(ps, t, refused, f)
                ],
            }
    return table


def threshold_sweep(
    model: LoadedModel,
    probe,
    harmful: Sequence[str],
    benign: Sequence[str],
    *,
    fprs: Sequence[float] = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2),
    control: Sequence[str] = (),
) -> list[dict]:
    """Gate rate on harmful vs benign as the threshold moves (calibrated on ``control``).

    Uses prompt-level probe scores (the gate's decision at the prompt), so the
    curve costs one recording, not one generation per point.
    """
    s_h = probe.score(model, list(harmful)).numpy()
    s_b = probe.score(model, list(benign)).numpy()
    s_c = probe.score(model, list(control)).numpy() if control else s_b
    rows = []
    for f in fprs:
        t = calibrate_threshold(s_c, f)
        rows.append({"fpr_target": f, "threshold": t, "harmful_gated": float((s_h > t).mean()),
                     "benign_gated": float((s_b > t).mean())})  # fmt: skip
    return rows


def defense_figure(table: Mapping[str, dict], harmful_sets: Sequence[str], benign_sets: Sequence[str],
                   sweep: Sequence[dict] | None = None):  # fmt: skip
    """Refusal on harmful vs refusal on benign, one point per defense (+ our threshold sweep)."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for name, row in table.items():
        h = float(np.mean([row[s]["refusal_rate"] for s in harmful_sets if s in row]))
        b = float(np.mean([row[s]["refusal_rate"] for s in benign_sets if s in row]))
        fig.add_trace(go.Scatter(x=[b], y=[h], mode="markers+text", text=[name], name=name,
                                 textposition="top center", marker=dict(size=12)))  # fmt: skip
    if sweep:
        fig.add_trace(go.Scatter(x=[r["benign_gated"] for r in sweep],
                                 y=[r["harmful_gated"] for r in sweep], mode="lines+markers",
                                 name="probe gate: threshold sweep (gate rate)",
                                 line=dict(dash="dot")))  # fmt: skip
    fig.update_layout(title="Refusal on harmful vs on benign prompts, per defense", height=480,
                      xaxis_title="refusal on benign (harmless + borderline)",
                      yaxis_title="refusal on harmful (plain + jailbreak-wrapped)")  # fmt: skip
    fig.update_xaxes(range=[-0.02, 1.02])
    fig.update_yaxes(range=[-0.02, 1.05])
    return fig


def overhead(model: LoadedModel, defense: GatedRefusal, prompts: Sequence[str],
             max_new_tokens: int = 32) -> dict:  # fmt: skip
    """Generation time with the defense vs without, same prompts (min of 2 runs each)."""

    def best(fn) -> float:
        ts = []
        for _ in range(2):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return min(ts)

    torch.manual_seed(0)
    plain = best(lambda: generate(model, prompts, max_new_tokens=max_new_tokens))
    gated = best(lambda: defense.generate(prompts, max_new_tokens=max_new_tokens))
    return {"plain_s": plain, "defended_s": gated, "overhead": gated / plain - 1}
