"""A jailbreak-attempt probe: is this request wrapped in a jailbreak template?

The harmful-intent probe reads the mean over the user's tokens, so a long jailbreak
wrapper dilutes the request it carries (qwen2.5-coder-0.5b: 11% of our harmful test
prompts flagged inside public "DAN"-style jailbreaks). This probe detects the wrapper
itself; a defense can fire on either (``GatedRefusal`` with both probes).

Trained naively (bare vs wrapped prompts) such a probe learns "long and instruction-heavy":
it flagged all of 40 long benign messages. So its negatives include the ``benign_long``
set (benign personas with rule lists, pasted documents, strict output formats, games,
multi-part tasks: the surface of a jailbreak without its intent), weighted by repetition.

Data (fixed splits; selection on val, never test):

- templates: the training group (``split == "train"``) is split again, every fifth by id
  going to validation, so that the layer and regularisation are chosen by how well the
  probe finds wrappers it was not fitted on (with one template pool for both, every
  layer scores a perfect val TPR and the tie goes to layer 0, whose features are the
  templates' words);
- train: the train prompts of every shipped prompt set bare (label 0), a stable half of
  them re-added inside the fitting templates (label 1), and the ``benign_long`` train
  split (label 0, repeated ``long_weight`` times);
- val: harmful and harmless val prompts bare and (a stable half) wrapped in the
  validation templates, and the ``benign_long`` val split;
- control (threshold at ``fpr``): the harmless val split and the ``benign_long`` val split;
- test (:func:`evaluate_jailbreak_attempt`): harmful and harmless test prompts inside the
  held-out templates (detection rate), and the flagged fraction of the bare harmful,
  harmless and borderline test prompts and of the ``benign_long`` test split.

Example:
    >>> probe, sweep, acts = train_jailbreak_attempt(model)  # doctest: +SKIP
    >>> evaluate_jailbreak_attempt(model, probe)["summary"]  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from probes import data
from probes.activations import Activations
from probes.errors import BadInputError
from probes.harmful_intent import (
    DEFAULT_METHODS,
    TaskSet,
    _stable_pick,
    jailbreak_test,
    stratified_prompts,
    subset,
    template_groups,
)
from probes.metrics import auroc
from probes.models import LoadedModel
from probes.probe import Probe
from probes.record import parse_layers, record
from probes.sweep import SweepResult, sweep_activations

TRAIN_SETS = ("harmful", "harmless", "benign_alarming", "harmful_extra", "harmless_extra")
POSITION = "mean"


def jailbreak_task_set(split: str, *, limit: int | None = None, long_weight: int = 1) -> TaskSet:
    """Bare (0) vs template-wrapped (1) prompts of ``split``, plus long benign messages (0).

    Train prompts are wrapped in the fitting templates and val prompts in the validation
    templates (:func:`template_split`); the held-out test templates are for
    :func:`evaluate_jailbreak_attempt` only. ``long_weight`` repeats the
    ``benign_long`` rows (train: they are few against thousands of short prompts).
    Categories: ``bare``, ``wrapped`` and ``long:<kind>``.
    """
    if split not in ("train", "val"):
        raise BadInputError(f"jailbreak_task_set takes split 'train' or 'val', not {split!r}")
    if long_weight < 1:
        raise BadInputError(f"long_weight must be >= 1, got {long_weight}")
    fit_t, val_t = template_split()
    names = TRAIN_SETS if split == "train" else ("harmful", "harmless")
    bare = [r for n in names for r in subset(data.load(n, split), limit)]
    picked = [r.prompt for r in bare if _stable_pick(r.id + ":jailbreak", 0.5)]
    wrapped = data.wrap(picked, fit_t if split == "train" else val_t) if picked else []
    long = subset(data.load("benign_long", split), limit) * long_weight
    prompts = [r.prompt for r in bare] + wrapped + [r.prompt for r in long]
    labels = [0] * len(bare) + [1] * len(wrapped) + [0] * len(long)
    cats = ["bare"] * len(bare) + ["wrapped"] * len(wrapped) + [f"long:{r.category}" for r in long]
    return TaskSet(prompts, np.array(labels), cats)


def template_split() -> tuple[list[data.Template], list[data.Template]]:
    """(fitting, validation) templates: the training group, every fifth by id to validation."""
    train_t, _ = template_groups()
    return ([t for i, t in enumerate(train_t) if i % 5 != 4],
            [t for i, t in enumerate(train_t) if i % 5 == 4])  # fmt: skip


def control_prompts(limit: int | None = None) -> list[str]:
    """The benign calibration set: harmless val and benign_long val (never test)."""
    return stratified_prompts("harmless", "val", limit) + stratified_prompts(
        "benign_long", "val", limit
    )


def _rec(model: LoadedModel, prompts: Sequence[str], layers) -> Activations:
    return record(model, list(prompts), sites="resid_post", layers=layers, positions=POSITION)


def train_jailbreak_attempt(
    model: LoadedModel,
    *,
    method: str | Sequence[str] = DEFAULT_METHODS,
    layer: int | str = "auto",
    fpr: float = 0.01,
    limit: int | None = None,
    long_weight: int = 10,
    n_boot: int = 200,
) -> tuple[Probe, SweepResult, dict[str, Activations]]:
    """Record the task, sweep layers and methods at the ``mean`` position, choose on val.

    The choice: val TPR at the threshold calibrated on :func:`control_prompts` at
    ``fpr``, then val AUROC. Returns ``(probe, sweep, activations)``.
    """
    layers = "all" if layer == "auto" else parse_layers(layer, model.n_layers)
    tr = jailbreak_task_set("train", limit=limit)  # long rows once; repeated below
    va = jailbreak_task_set("val", limit=limit)
    acts = {"train": _rec(model, tr.prompts, layers), "val": _rec(model, va.prompts, layers),
            "control": _rec(model, control_prompts(limit), layers)}  # fmt: skip
    is_long = np.array([c.startswith("long:") for c in tr.categories])
    train = acts["train"]
    y = tr.labels
    if long_weight > 1 and is_long.any():
        idx = np.flatnonzero(is_long)
        extra = Activations.concat([_take(train, idx)] * (long_weight - 1))
        train = Activations.concat([train, extra])
        y = np.concatenate([y, np.tile(tr.labels[idx], long_weight - 1)])
    sweep = sweep_activations(train, y, acts["val"], va.labels, method=method, position=POSITION,
                              control=acts["control"], fpr=fpr, n_boot=n_boot)  # fmt: skip
    best = sweep.ranked(by="tpr")[0]
    probe = sweep.probe(best["method"], best["layer"])
    probe.metrics["task"] = "jailbreak attempt"
    probe.metrics["long_weight"] = long_weight
    return probe, sweep, acts


def _take(acts: Activations, idx: np.ndarray) -> Activations:
    """Rows ``idx`` of single-position activations, as an Activations object."""
    sel = list(map(int, idx))
    return replace(acts, data={k: v[sel] for k, v in acts.data.items()},
                   prompts=[acts.prompts[i] for i in sel])  # fmt: skip


def evaluate_jailbreak_attempt(
    model: LoadedModel, probe: Probe, *, limit: int | None = None
) -> dict:
    """Test-split evaluation at the probe's threshold (calibrated on val, never test)."""
    t = probe.threshold
    if t is None:
        raise BadInputError("the probe is uncalibrated (no threshold)")
    sets = {
        "harmful test in held-out templates": jailbreak_test(limit),
        "harmless test in held-out templates": jailbreak_test(limit, "harmless"),
        "harmful test (bare)": stratified_prompts("harmful", "test", limit),
        "harmless test (bare)": stratified_prompts("harmless", "test", limit),
        "borderline test": stratified_prompts("borderline", "test", limit),
        "long benign test": stratified_prompts("benign_long", "test", limit),
    }
    scores = {k: probe.score(model, v).numpy() for k, v in sets.items()}
    flagged = {k: float((s > t).mean()) for k, s in scores.items()}
    wrapped = np.concatenate([scores[k] for k in list(sets)[:2]])
    unwrapped = np.concatenate([scores[k] for k in list(sets)[2:]])
    y = np.r_[np.ones(len(wrapped)), np.zeros(len(unwrapped))]
    return {
        "threshold": t,
        "calibration": "harmless val + benign_long val",
        "flagged": flagged,
        "n": {k: len(v) for k, v in sets.items()},
        "auroc_wrapped_vs_unwrapped": auroc(y, np.r_[wrapped, unwrapped]),
        "scores": {k: s.tolist() for k, s in scores.items()},
        "summary": {
            "layer": probe.layer,
            "method": probe.method,
            "jailbreak_harmful_flagged": flagged["harmful test in held-out templates"],
            "jailbreak_harmless_flagged": flagged["harmless test in held-out templates"],
            "long_benign_flagged": flagged["long benign test"],
            "bare_harmless_flagged": flagged["harmless test (bare)"],
            "borderline_flagged": flagged["borderline test"],
        },
    }
