"""The backdoor stage of the demo: build (or reuse) the organism, run every detector, plot.

``run_backdoor(out, fast=False)`` returns ``{"summary": {...}, "figures": {...}, ...}``:
the headline numbers, the plotly figures (``backdoor_heatmap``, ``backdoor_scores``,
``backdoor_spectral``) and every measurement of :func:`evaluate_organism`. The
organism is cached in ``$SAFETY_PROBES_CACHE/organisms/`` (built once; see the README
for the measured build time). ``fast=True`` builds a tiny organism (16 rows, one step
on the top blocks): its numbers only show that the pipeline runs, not that the attack
works.

Example:
    >>> res = run_backdoor("results/backdoor", fast=True)  # doctest: +SKIP
    >>> res["summary"]["trigger probe AUROC"]  # doctest: +SKIP
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

from probes.backdoor.evaluate import evaluate_organism, summary
from probes.backdoor.finetune import TrainConfig
from probes.backdoor.organism import Organism, OrganismConfig, build_organism
from probes.backdoor.plots import score_figure, spectral_figure, token_heatmap

BASE = "smollm2-135m-instruct"
FULL = {"organism": OrganismConfig(), "n_train": None, "n_test": None, "gen_tokens": 8,
        "variants": None}  # fmt: skip
FAST = {
    "organism": OrganismConfig(n_rows=16, poison_fraction=0.125, max_response_tokens=4,
                               train=TrainConfig(epochs=1, batch_size=8, train_from=0.9)),
    "n_train": 4, "n_test": 4, "gen_tokens": 4, "variants": 1,
}  # fmt: skip


def settings(fast: bool = False) -> dict:
    """The stage's settings as JSON-able values (a demo cache key: a change re-runs the stage)."""
    cfg = FAST if fast else FULL
    return {k: (asdict(v) if k == "organism" else v) for k, v in cfg.items()}


def _log(msg: str) -> None:
    print(f"[backdoor] {msg}", file=sys.stderr, flush=True)


def figures(organism: Organism, artifacts: dict, factor: float = 1.5) -> dict:
    """The three report figures from :func:`evaluate_organism`'s artifacts."""
    probe, poison = artifacts["probe"], artifacts["poison"]
    trig = artifacts["test_triggered"]
    examples = [trig[0], trig[0].replace(organism.trigger, "").strip()]
    var = artifacts["variant_scores"]
    panels = {}
    for det in ("trigger_probe", "defection"):
        groups = {f"{k} (held-out)": v for k, v in artifacts["scores"][det].items()}
        groups |= {f"variant: {k}": s[det] for k, s in var.items()}
        panels[det.replace("_", " ")] = groups
    return {
        "backdoor_heatmap": token_heatmap(organism, probe, examples),
        "backdoor_scores": score_figure(panels),
        "backdoor_spectral": spectral_figure(poison["features"], organism.poisoned,
                                             poison["scores"], factor=factor),
    }  # fmt: skip


def run_backdoor(out: str | Path, *, fast: bool = False, base: str = BASE) -> dict:
    """Build/reuse the organism, evaluate it, write ``OUT/generations.jsonl`` and return results.

    Returns:
        ``{"summary": {...}, "figures": {name: Figure}, "metrics": {...}}`` (the figures
        are not JSON; a caller stores them, as the demo's stage does).
    """
    from probes import data

    cfg = FAST if fast else FULL
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    org_cfg: OrganismConfig = cfg["organism"]
    organism = build_organism(base, org_cfg.trigger, config=org_cfg)
    _log(f"organism ready: {organism.path}")
    variants = data.triggers()["heldout"]
    if cfg["variants"] is not None:
        variants = variants[: cfg["variants"]]
    metrics, art = evaluate_organism(organism, n_train=cfg["n_train"], n_test=cfg["n_test"],
                                     gen_tokens=cfg["gen_tokens"], variants=variants, log=_log)  # fmt: skip
    (out / "generations.jsonl").write_text(
        "".join(json.dumps(g) + "\n" for g in art["generations"])
    )
    (out / "metrics.json").write_text(json.dumps(metrics, indent=1))
    return {"summary": summary(metrics), "figures": figures(organism, art), "metrics": metrics}
