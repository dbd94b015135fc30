"""Probe-sweep and generation-overhead benchmarks (``safety-probes bench probe|generate``).

``probe``: wall time of a layer sweep (:func:`probes.sweep.sweep_activations`)
with logistic and mean-difference probes, on activations recorded from the
model (last position, every layer, resid_post; half harmful, half harmless)
or on synthetic ``[n, n_layers, d_model]`` activations with a planted
direction. Timed without bootstrap CIs (fit, score, calibrate) and with them.

``generate``: greedy generation of the same prompts plain, steered (refusal
direction added with :func:`steering.interventions.add`) and probe-gated
(:class:`steering.defense.GatedRefusal`, ``mode="steer"``). The direction is a
quick difference in means and the probe a logistic probe fitted on a few
prompts at the middle layer: the point is the cost, not the quality. Tokens
are counted by re-tokenizing the completions (they can stop early at EOS), so
``overhead_pct`` compares seconds per generated token and
``overhead_pct_wall`` compares seconds.

Example:
    >>> bench_probe("qwen2.5-coder-0.5b-instruct", synthetic=True)  # doctest: +SKIP
    {'source': 'synthetic', 'shape': [800, 24, 896], 'sweep_s': {...}, ...}
"""

from __future__ import annotations

import os
import time

import numpy as np
import torch

from probes import data, load_model, record
from probes.activations import Activations
from probes.allocator import keep_freed_memory
from probes.models import LoadedModel
from probes.sweep import sweep_activations

METHODS = ("logistic", "mean-diff")


def _model(model: str | os.PathLike | LoadedModel | None) -> LoadedModel:
    keep_freed_memory()  # as the CLI does (probes.allocator)
    if isinstance(model, LoadedModel):
        return model
    return load_model() if model is None else load_model(model)


def _balanced(n: int, split: str | None = None) -> tuple[list[str], np.ndarray]:
    """``n`` prompts alternating harmful / harmless (pools cycled if short), labels 1/0."""
    pools = [data.prompts("harmful", split), data.prompts("harmless", split)]
    prompts = [pools[i % 2][(i // 2) % len(pools[i % 2])] for i in range(n)]
    return prompts, np.array([1 - i % 2 for i in range(n)])


def synthetic_activations(n: int, n_layers: int, d_model: int, seed: int = 0) -> Activations:
    """Gaussian activations ``[n, n_layers, d_model]`` with a class shift along one direction.

    Labels alternate 1, 0, 1, ...; the shift grows with depth so layers differ.
    """
    g = torch.Generator().manual_seed(seed)
    x = torch.randn((n, n_layers, d_model), generator=g)
    u = torch.nn.functional.normalize(torch.randn(d_model, generator=g), dim=0)
    y = torch.tensor([1 - i % 2 for i in range(n)], dtype=torch.float32)
    scale = torch.linspace(0.2, 2.0, n_layers)
    x += y[:, None, None] * scale[None, :, None] * u
    return Activations({("resid_post", "last"): x}, list(range(n_layers)), ["resid_post"],
                       ["last"], [f"synthetic-{i}" for i in range(n)])  # fmt: skip


def _rows(acts: Activations, rows: np.ndarray) -> Activations:
    idx = torch.as_tensor(rows)
    return Activations({k: v[idx] for k, v in acts.data.items()}, acts.layers, acts.sites,
                       acts.positions, [acts.prompts[i] for i in rows], None,
                       dict(acts.provenance))  # fmt: skip


def bench_probe(
    model: str | os.PathLike | LoadedModel | None = None,
    n_prompts: int = 800,
    *,
    synthetic: bool = False,
    n_layers: int | None = None,
    d_model: int | None = None,
    methods: tuple[str, ...] = METHODS,
    n_boot: int = 200,
) -> dict:
    """Layer-sweep wall time per method on ``n_prompts`` activations (train/val halves).

    Args:
        model: zoo name, folder, hub id or a loaded model; gives the activations, or
            only the shape when ``synthetic`` (unless ``n_layers`` and ``d_model`` are given).
        n_prompts: rows in total; half train, half validation.
        synthetic: use :func:`synthetic_activations` instead of recording.
        n_boot: bootstrap resamples of the timed run with CIs.
    """
    out: dict = {"source": "synthetic" if synthetic else "recorded", "n_boot": n_boot}
    if synthetic and n_layers is not None and d_model is not None:
        acts = synthetic_activations(n_prompts, n_layers, d_model)
    else:
        lm = _model(model)
        out |= {"model": lm.name, "dtype": str(lm.dtype).removeprefix("torch.")}
        if synthetic:
            acts = synthetic_activations(n_prompts, lm.n_layers, lm.d_model)
        else:
            prompts, _ = _balanced(n_prompts)
            t = time.perf_counter()
            acts = record(lm, prompts, layers="all", positions="last", progress=False)
            out["record_s"] = round(time.perf_counter() - t, 3)
    idx = np.arange(len(acts))
    y = 1 - idx % 2  # labels alternate; split alternating pairs so both halves hold both
    tr, va = idx[(idx // 2) % 2 == 0], idx[(idx // 2) % 2 == 1]
    a_tr, a_va = _rows(acts, tr), _rows(acts, va)
    n, n_l, d = acts["resid_post"].shape
    out |= {"shape": [n, n_l, d], "threads": torch.get_num_threads(), "sweep_s": {},
            "sweep_ci_s": {}, "per_layer_ms": {}, "best_val_auroc": {}}  # fmt: skip
    for m in methods:
        for boot, field in ((0, "sweep_s"), (n_boot, "sweep_ci_s")):
            t = time.perf_counter()
            res = sweep_activations(a_tr, y[tr], a_va, y[va], method=m, n_boot=boot)
            out[field][m] = round(time.perf_counter() - t, 3)
        out["per_layer_ms"][m] = round(1000 * out["sweep_s"][m] / n_l, 2)
        out["best_val_auroc"][m] = round(max(r["auroc"] for r in res.rows), 4)
    return out


def _quick_defense(model: LoadedModel, n_fit: int, layer: int):
    """A difference-in-means direction and a logistic probe at ``layer`` from a few prompts."""
    from steering.directions import Direction

    (p_tr, y_tr), (p_va, y_va) = _balanced(n_fit, "train"), _balanced(n_fit, "val")
    kw = dict(sites=["resid_pre", "resid_post"], layers=[layer], positions="last", progress=False)
    a_tr, a_va = record(model, p_tr, **kw), record(model, p_va, **kw)
    x = a_tr.layer("resid_pre", layer).double()
    yt = torch.as_tensor(y_tr).bool()
    vec = (x[yt].mean(0) - x[~yt].mean(0)).float()
    direction = Direction(vec, layer, "last", model.identity, {"method": "bench mean-diff"})
    probe = sweep_activations(a_tr, y_tr, a_va, y_va, method="logistic", n_boot=0).best()
    return direction, probe


def bench_generate(
    model: str | os.PathLike | LoadedModel,
    n_prompts: int = 16,
    *,
    max_new_tokens: int = 32,
    coeff: float = 1.0,
    layer: int | None = None,
    n_fit: int = 16,
) -> dict:
    """Seconds, tokens/s and overhead of steered and gated generation vs plain generation.

    Args:
        model: zoo name, folder, hub id or a loaded model.
        n_prompts: test prompts, half harmful, half harmless.
        max_new_tokens: greedy decoding length cap.
        coeff: addition coefficient for the steered and gated runs.
        layer: where the direction is added and the probe reads (default: middle layer).
        n_fit: prompts used to fit the direction and the probe (and to validate it).
    """
    from steering.defense import GatedRefusal
    from steering.generate import generate
    from steering.interventions import add

    lm = _model(model)
    layer = lm.n_layers // 2 if layer is None else layer
    direction, probe = _quick_defense(lm, n_fit, layer)
    prompts, _ = _balanced(n_prompts, "test")
    gate = GatedRefusal(lm, probe, direction, mode="steer", coeff=coeff)

    def plain() -> list[str]:
        return generate(lm, prompts, max_new_tokens=max_new_tokens)

    def steered() -> list[str]:
        with add(lm, direction, coeff=coeff):
            return generate(lm, prompts, max_new_tokens=max_new_tokens)

    def gated() -> list[str]:
        return gate.generate(prompts, max_new_tokens=max_new_tokens)

    generate(lm, prompts[:2], max_new_tokens=2)  # warm-up
    runs = {}
    for name, fn in (("plain", plain), ("steered", steered), ("gated", gated)):
        t = time.perf_counter()
        texts = fn()
        s = time.perf_counter() - t
        toks = sum(len(lm.tokenizer(x, add_special_tokens=False)["input_ids"]) for x in texts)
        runs[name] = {"seconds": round(s, 3), "tokens": toks,
                      "tokens_per_s": round(toks / s, 1) if toks else 0.0}  # fmt: skip
    base = runs["plain"]
    for r in runs.values():
        per_tok = (r["seconds"] / max(r["tokens"], 1)) / (base["seconds"] / max(base["tokens"], 1))
        r["overhead_pct"] = round(100 * (per_tok - 1), 1)
        r["overhead_pct_wall"] = round(100 * (r["seconds"] / base["seconds"] - 1), 1)
    runs["gated"]["fired"] = sum(r["fired"] for r in gate.report())
    return {"model": lm.name, "dtype": str(lm.dtype).removeprefix("torch."),
            "threads": torch.get_num_threads(), "n_prompts": len(prompts),
            "max_new_tokens": max_new_tokens, "layer": layer, "coeff": coeff, "runs": runs}  # fmt: skip
