"""The main job: record -> probe sweep -> refusal direction -> steering -> defenses -> backdoor.

``run_demo(out)`` runs every stage on the embedded default model and writes
``OUT/report.html``, ``OUT/metrics.json``, the probes and directions it
trained, and the generations it judged. Stages are cached (see
:mod:`safety_probes.stages`): a re-run skips what is done. ``fast=True`` runs
the same pipeline on small subsets and few tokens (used by the tests).
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

import torch

from probes import data, load_model, load_probe
from probes.errors import BadInputError
from probes.harmful_intent import (
    DEFAULT_METHODS,
    MAX_FLAGGED,
    control_set,
    evaluate_harmful_intent,
    jailbreak_test,
    stratified_prompts,
    train_harmful_intent,
)
from probes.plots import pca_scatter, score_histogram
from probes.zoo import DEFAULT_MODEL, sha256_file
from safety_probes.stages import Context, atomic_write_text, check_out_dir, run_stage
from steering import compare, evaluate
from steering.directions import load_direction
from steering.judge import RefusalScorer
from steering.orthogonalize import hook_vs_weights_gap
from steering.plots import coeff_sweep_figure
from steering.refusal_direction import refusal_direction

# coeff_val_n=32: the addition coefficient is chosen on 32 harmless val prompts; on 8, one
# prompt answered with sympathy ("I'm sorry to hear ...") moved a rate by 12.5 points and
# flipped the choice.
# refusal_train=64, filter_refusals=False: the direction the demo's defenses were measured
# with. REFUSAL (below; `safety-probes refusal`) selects the direction as the library does
# by default, from every train prompt the model refuses / answers: it meets the
# refusal-direction targets (README) but, ablated on the defenses' benign path, raised
# block's harmless refusals from 2 to 4 of 84 through the generated-token re-check.
# defense_n=None: the defenses run on every test prompt (84 / 84 / 84 / 90); at 20 per set
# one prompt moved a rate by 5 points, coarser than the 3% over-refusal target.
FULL = dict(limit=None, methods=[*DEFAULT_METHODS, "mean-diff"], select_by="tpr", n_boot=300, extra=True,
            refusal_train=64,
            refusal_val=16, filter_refusals=False, screen=3, finalists=8, cand_layers=None, cand_positions=None,
            eval_n=48, gen_tokens=24, sweep_n=8, sweep_tokens=16, defense_n=None, recheck_n=64,
            attack_n=8, overhead_n=16, smollm=True, backdoor=True, coeff_val_n=32, coeff_target=0.9,
            coeff_tokens="sweep",
            defense_modes=("steer", "calibrate", "block"), recheck_sets=("harmless", "borderline"),
            coeff_grid=(1.0, 1.5, 2.0, 3.0, 4.0, 6.0), sweep_coeffs=(0.0, 1.0, 2.0, 4.0, 6.0),
            jailbreak_probe=True, benign_ablation_k=1, max_flagged=MAX_FLAGGED)  # fmt: skip
# `safety-probes refusal`: Arditi et al.'s filter on every train and val prompt, a wider
# screen, and the addition coefficient that refuses 95% of every harmless val prompt,
# judged on as many new tokens as the test (aiming at 90% on 32 prompts with 16 tokens, a
# coefficient at 0.94 on val refused 0.896 of the test prompts).
REFUSAL = dict(refusal_train=None, refusal_val=None, filter_refusals=True, screen=8, finalists=16,
               coeff_val_n=None, coeff_target=0.95, coeff_tokens="gen")  # fmt: skip
FAST = dict(limit=6, methods=["logistic(C=0.03)"], select_by="tpr", n_boot=100, extra=True,
            refusal_train=8, refusal_val=4, filter_refusals=False,
            screen=2, finalists=2, cand_layers=[6, 10, 14], cand_positions=["eoi[-1]"],
            eval_n=4, gen_tokens=6, sweep_n=2, sweep_tokens=6, defense_n=3, recheck_n=3, attack_n=0,
            overhead_n=0, smollm=False, backdoor=False, coeff_val_n=2, coeff_target=0.9,
            coeff_tokens="sweep",
            defense_modes=("steer", "calibrate", "block"), recheck_sets=("harmless", "borderline"),
            coeff_grid=(1.0, 2.0), sweep_coeffs=(0.0, 2.0), jailbreak_probe=True,
            benign_ablation_k=1, max_flagged=MAX_FLAGGED)  # fmt: skip


# The settings each stage reads: a stage's cache is reused unless one of these changes
# (or its data, model, upstream results or the pipeline version).
STAGE_SETTINGS = {
    "probe": ("limit", "methods", "select_by", "n_boot", "extra", "max_flagged"),
    "refusal": ("refusal_train", "refusal_val", "filter_refusals", "screen", "finalists", "cand_layers",
                "cand_positions"),
    "steering": ("eval_n", "gen_tokens", "sweep_n", "sweep_tokens", "coeff_val_n", "coeff_target",
                 "coeff_tokens", "coeff_grid", "sweep_coeffs"),
    "jailbreak_probe": ("limit", "n_boot"),
    "defense": ("limit", "defense_n", "recheck_n", "recheck_sets", "attack_n", "overhead_n",
                "gen_tokens", "defense_modes", "jailbreak_probe", "benign_ablation_k",
                "refusal_train"),
    "defense_smollm": ("defense_n", "recheck_n", "recheck_sets", "gen_tokens", "jailbreak_probe"),
    "backdoor": ("fast",),
}  # fmt: skip


def _model(ctx: Context, name: str | None = None):
    name = name or ctx.config["model"]
    if name not in ctx.objects:
        ctx.log(f"loading {name}")
        ctx.objects[name] = load_model(name)
    return ctx.objects[name]


def _p(name: str, split: str, n: int | None) -> list[str]:
    """Up to ``n`` prompts of a set and split, stratified by category."""
    return stratified_prompts(name, split, n)


def stage_probe(ctx: Context, model_name: str | None = None, tag: str = "") -> dict:
    c, model = ctx.config, _model(ctx, model_name)
    probe, sweep, acts = train_harmful_intent(model, method=c["methods"], limit=c["limit"],
                                              n_boot=c["n_boot"], select_by=c["select_by"],
                                              extra=c["extra"], max_flagged=c["max_flagged"])  # fmt: skip
    report = evaluate_harmful_intent(model, probe, train_acts=acts["train"], limit=c["limit"],
                                     n_boot=c["n_boot"], extra=c["extra"])  # fmt: skip
    probe.threshold = report["threshold"]
    probe.metrics = {**probe.metrics, "test": report["summary"]}
    path = ctx.out / "probes" / f"harmful-intent{tag}.safetensors"
    probe.save(path)
    ctx.figure(f"probe_sweep{tag}", sweep.plot(title=f"Layer sweep: harmful intent ({model.name})"))
    scores = report.pop("scores")
    ctx.figure(f"probe_scores{tag}", score_histogram(scores, report["threshold"]))
    X = acts["val"].layer("resid_post", probe.layer, probe.position).numpy()
    from probes.harmful_intent import task_set

    va = task_set("val", limit=c["limit"])
    ctx.figure(f"probe_pca{tag}", pca_scatter(X, va.labels, va.categories))
    rows = [{k: v for k, v in r.items() if not k.endswith("_ci")} for r in sweep.table()]
    return {"model": model.identity, "probe": str(path), "layer": probe.layer,
            "method": probe.method, "sweep": rows, **report}  # fmt: skip


def stage_refusal(ctx: Context) -> dict:
    c, model = ctx.config, _model(ctx)
    n, v = c["refusal_train"], c["refusal_val"]
    h_tr, b_tr = _p("harmful", "train", n), _p("harmless", "train", n)
    h_va, b_va = _p("harmful", "val", v), _p("harmless", "val", v)
    res = refusal_direction(model, h_tr, b_tr, harmful_val=h_va, harmless_val=b_va,
                            screen=c["screen"], finalists=c["finalists"], layers=c["cand_layers"],
                            positions=c["cand_positions"],
                            filter_refusals=c["filter_refusals"])  # fmt: skip
    res.direction.meta["refusal_token_ids"] = res.scorer.token_ids
    res.direction.save(ctx.out / "refusal" / "direction.safetensors")
    ctx.figure("refusal_candidates", res.plot_candidates())
    return {"layer": res.layer, "position": res.position, "seconds_selection": res.seconds,
            "n_train": res.direction.meta["n_train"], "n_val": res.direction.meta["n_val"],
            "refusal_tokens": res.scorer.tokens, "baseline_val": res.baseline,
            "chosen": {k: res.direction.meta[k] for k in ("bypass", "induce", "kl")},
            "direction": str(ctx.out / "refusal" / "direction.safetensors")}  # fmt: skip


def _direction_and_scorer(ctx: Context):
    model = _model(ctx)
    d = load_direction(ctx.out / "refusal" / "direction.safetensors", model)
    ids = d.meta["refusal_token_ids"]
    return d, RefusalScorer(ids, [model.tokenizer.decode([i]) for i in ids])


def stage_steering(ctx: Context) -> dict:
    c, model = ctx.config, _model(ctx)
    d, scorer = _direction_and_scorer(ctx)
    h_te = _p("harmful", "test", c["eval_n"])
    b_te = _p("harmless", "test", c["eval_n"])
    sel = evaluate.select_coeff(model, d, _p("harmless", "val", c["coeff_val_n"]),
                                grid=c["coeff_grid"], target=c["coeff_target"],
                                max_new_tokens=c["gen_tokens" if c["coeff_tokens"] == "gen" else "sweep_tokens"])  # fmt: skip
    ev = evaluate.evaluate_direction(model, d, h_te, b_te, scorer, max_new_tokens=c["gen_tokens"],
                                     coeff=sel["coeff"])  # fmt: skip
    gens = []
    for cond in ("harmful_baseline", "harmful_ablate", "harmless_baseline", "harmless_add"):
        gens += [{"condition": cond, **g} for g in ev[cond].pop("generations")]
    ctx.write_jsonl("refusal/generations.jsonl", gens)
    sw = evaluate.coeff_sweep(model, d, h_te[: c["sweep_n"]], b_te[: c["sweep_n"]],
                              coeffs=c["sweep_coeffs"], max_new_tokens=c["sweep_tokens"])  # fmt: skip
    coeffs = sw.pop("coeffs")
    ctx.figure("refusal_coeff_sweep", coeff_sweep_figure(coeffs, sw))
    diff = hook_vs_weights_gap(model, d, h_te[:4] + b_te[:4])
    rates = {k: {kk: ev[k][kk] for kk in ("refusal_rate", "logit_refusal_rate", "n")}
             for k in ev if isinstance(ev[k], dict)}  # fmt: skip
    return {"rates": rates, "kl_harmless_ablate": ev["kl_harmless_ablate"],
            "kl_harmless_ablate_answered": ev["kl_harmless_ablate_answered"],
            "n_harmless_answered": ev["n_harmless_answered"], "addition": sel,
            "ortho_vs_hook_max_abs_logit_diff": diff,
            "coeff_sweep": {"coeffs": coeffs, **sw}}  # fmt: skip


def _sets(c: dict, wrapped_harmless: bool = False) -> dict[str, list[str]]:
    sets = {
        "harmful": _p("harmful", "test", c["defense_n"]),
        "jailbreak": jailbreak_test(c["defense_n"]),
        "harmless": _p("harmless", "test", c["defense_n"]),
        "borderline": _p("borderline", "test", c["defense_n"]),
    }
    if wrapped_harmless:  # the wrapper confound: benign requests in the held-out wrappers
        sets["jailbreak-harmless"] = jailbreak_test(c["defense_n"], "harmless")
    return sets


def stage_jailbreak_probe(ctx: Context, model_name: str | None = None, tag: str = "") -> dict:
    """The jailbreak-attempt probe (``probes.jailbreak_attempt``), a second gate signal."""
    from probes.jailbreak_attempt import evaluate_jailbreak_attempt, train_jailbreak_attempt

    c, model = ctx.config, _model(ctx, model_name)
    probe, sweep, _ = train_jailbreak_attempt(model, limit=c["limit"], n_boot=c["n_boot"])
    path = ctx.out / "probes" / f"jailbreak-attempt{tag}.safetensors"
    probe.save(path)
    ev = evaluate_jailbreak_attempt(model, probe, limit=c["limit"])
    ctx.figure(f"jailbreak_scores{tag}", score_histogram(ev.pop("scores"), probe.threshold))
    rows = [{k: v for k, v in r.items() if not k.endswith("_ci")} for r in sweep.table()]
    return {"probe": str(path), "layer": probe.layer, "method": probe.method, "sweep": rows,
            **ev}  # fmt: skip


def _benign_ablation(ctx: Context, model, d, probes: list) -> list:
    """The refusal direction plus the directions whose ablation removes most refusal on
    benign val prompts (``steering.benign_ablation``), on the layers the gate ablates."""
    from steering.benign_ablation import select_benign_ablation

    c = ctx.config
    _, scorer = _direction_and_scorer(ctx)
    after = max(p.layer for p in probes) + 1
    layers = list(range(after, model.n_layers))
    benign = [p for name in c["recheck_sets"] for p in _p(name, "val", c["limit"])]
    n = c["refusal_train"]
    sel = select_benign_ablation(model, d, _p("harmful", "train", n), _p("harmless", "train", n),
                                 benign, scorer, layers=layers, ablate_layers=layers,
                                 k=c["benign_ablation_k"])  # fmt: skip
    return sel


def stage_defense(ctx: Context) -> dict:
    c, model = ctx.config, _model(ctx)
    d, _ = _direction_and_scorer(ctx)
    probe = load_probe(ctx.out / "probes" / "harmful-intent.safetensors", model)
    extra = {}
    if c["jailbreak_probe"]:
        extra["jailbreak"] = load_probe(ctx.out / "probes" / "jailbreak-attempt.safetensors", model)
    sel = _benign_ablation(ctx, model, d, [probe, *extra.values()])
    dirs = sel.directions
    h_va, b_va = _p("harmful", "val", c["limit"]), _p("harmless", "val", c["limit"])
    cast = compare.cast_condition(model, d, h_va, b_va)
    sets = _sets(c, wrapped_harmless=True)
    coeff = float(ctx.results["steering"]["addition"]["coeff"])
    from steering.defense import GatedRefusal

    gates = {"intent": probe, **extra}
    plain = _recheck_threshold(ctx, GatedRefusal(model, probe, mode="block"))
    benign_path = _recheck_threshold(ctx, GatedRefusal(model, gates, d, mode="block",
                                                       ablate_directions=dirs))  # fmt: skip
    # steer never ablates; the two-sided modes answer benign prompts with the ablation on
    recheck = {"steer": plain, "calibrate": benign_path, "block": benign_path, "intent": plain}
    kw = dict(max_new_tokens=c["gen_tokens"], coeff=coeff, recheck_threshold=recheck,
              extra_probes=extra, ablate_directions=dirs)  # fmt: skip
    table = compare.compare_defenses(
        compare.standard_defenses(model, probe, d, cast, modes=c["defense_modes"], **kw),
        sets, progress=ctx.log,
    )  # fmt: skip
    attack_sets = {k: v[: c["attack_n"]] for k, v in sets.items() if k in ("harmful", "jailbreak")}
    attacked = {} if not c["attack_n"] else compare.compare_defenses(
        compare.standard_defenses(model, probe, d, cast, modes=("steer", "calibrate", "block"),
                                  attack=True, **kw),
        attack_sets, progress=ctx.log,
    )  # fmt: skip
    sweep = compare.threshold_sweep(model, probe, sets["harmful"] + sets["jailbreak"],
                                    sets["harmless"] + sets["borderline"],
                                    control=control_set(c["limit"]))  # fmt: skip
    ctx.figure("defense_tradeoff", compare.defense_figure(table, ["harmful", "jailbreak"],
                                                          ["harmless", "borderline"], sweep))  # fmt: skip
    gens = [{"defense": k, "set": s, **g} for k, row in table.items() for s, v in row.items()
            for g in v.pop("generations")]  # fmt: skip
    gens += [{"defense": k, "set": s, "attack": "ablate", **g} for k, row in attacked.items()
             for s, v in row.items() for g in v.pop("generations")]  # fmt: skip
    ctx.write_jsonl("defense/generations.jsonl", gens)
    ov = {}
    for mode in c["defense_modes"] if c["overhead_n"] else ():
        gate = GatedRefusal(model, gates, d, mode=mode, coeff=coeff,
                            recheck_threshold=recheck[mode], ablate_directions=dirs)  # fmt: skip
        ov[mode] = compare.overhead(model, gate, sets["harmless"][: c["overhead_n"]],
                                    c["gen_tokens"])  # fmt: skip
    return {"table": table, "under_ablation_attack": attacked, "threshold_sweep": sweep,
            "cast_threshold": cast.threshold, "cast_layer": cast.layer, "overhead": ov,
            "coeff": coeff, "probe_threshold": probe.threshold,
            "recheck_threshold": recheck, "gate_probes": ["intent", *extra],
            "benign_ablation": {"directions": [[x.position, x.layer] for x in dirs],
                                "baseline": sel.baseline,
                                "steps": [{str(k): v for k, v in st.items()} for st in sel.steps]}}  # fmt: skip


def _recheck_threshold(ctx: Context, gate) -> float:
    """The gate's token-level threshold, calibrated on benign generations (val splits).

    The benign sets (``recheck_sets``, val splits) are harmless plus borderline:
    answers to benign requests with alarming words use alarming words too, and a
    threshold calibrated on plain harmless answers alone fired on 4 of 20 borderline
    test answers (2026-12-02, qwen, block mode). A two-sided ``gate`` generates them
    with its ablation on, as it answers benign prompts.
    """
    c = ctx.config
    benign = [p for name in c["recheck_sets"] for p in _p(name, "val", c["recheck_n"])]
    return gate.calibrate_recheck(benign, fpr=0.01, max_new_tokens=c["gen_tokens"])


def stage_defense_smollm(ctx: Context) -> dict:
    """``mode="block"`` on a model that never refuses (no refusal direction to ablate).

    With ``jailbreak_probe`` on, the gate is the same OR of the intent probe and the
    jailbreak-attempt probe as on the default model, and the intent probe alone is
    run beside it (``intent-gate/block``).
    """
    c = ctx.config
    model = _model(ctx, "smollm2-135m-instruct")
    probe = load_probe(ctx.out / "probes" / "harmful-intent-smollm.safetensors", model)
    gates = {"intent": probe}
    if c["jailbreak_probe"]:
        gates["jailbreak"] = load_probe(
            ctx.out / "probes" / "jailbreak-attempt-smollm.safetensors", model
        )
    sets = _sets(c, wrapped_harmless=c["jailbreak_probe"])
    runners = {"none": compare.plain_runner(model, c["gen_tokens"])}
    from steering.defense import GatedRefusal

    # block without a direction generates benign prompts unsteered, whatever the gate
    recheck = _recheck_threshold(ctx, GatedRefusal(model, probe, mode="block"))
    gate = GatedRefusal(model, gates, mode="block", recheck_threshold=recheck)
    runners["probe-gate/block"] = compare.gated_runner(gate, c["gen_tokens"])
    if len(gates) > 1:
        alone = GatedRefusal(model, probe, mode="block", recheck_threshold=recheck)
        runners["intent-gate/block"] = compare.gated_runner(alone, c["gen_tokens"])
    table = compare.compare_defenses(runners, sets, progress=ctx.log)
    gens = [{"defense": k, "set": s, **g} for k, row in table.items() for s, v in row.items()
            for g in v.pop("generations")]  # fmt: skip
    ctx.write_jsonl("defense/generations-smollm.jsonl", gens)
    return {"table": table, "probe_threshold": probe.threshold, "recheck_threshold": recheck,
            "gate_probes": list(gates)}  # fmt: skip


def stage_backdoor(ctx: Context) -> dict:
    from probes.backdoor.pipeline import run_backdoor

    res = run_backdoor(ctx.out / "backdoor", fast=ctx.config["fast"])
    for name, fig in res.pop("figures").items():
        ctx.figure(name, fig)
    return res


def run_demo(
    out: str | Path = "results", *, fast: bool = False, model: str = DEFAULT_MODEL
) -> dict:
    """Run the whole pipeline; returns the metrics written to ``OUT/metrics.json``."""
    out = check_out_dir(Path(out))
    cfg = dict(FAST if fast else FULL, fast=fast, model=model)
    ctx = Context(out, cfg)
    data_hash = {n: sha256_file(data.datasets_dir() / f"{n}.jsonl")
                 for n in ("harmful", "harmless", "borderline", "benign_alarming",
                           "harmful_extra", "harmless_extra", "jailbreak_templates")}  # fmt: skip

    def key(stage: str, **after) -> dict:
        """What a stage's cached result depends on: its own settings, data, upstream results."""
        own = {k: cfg[k] for k in STAGE_SETTINGS[stage]}
        # version: bumped when the library's numerics or judging change (3: probes.fastpath,
        # 4: the judge reads sympathy as an answer, select_coeff's fallback)
        return {"cfg": own, "model": cfg["model"], "data": data_hash, "version": 4, **after}

    def probe_hash(tag: str) -> str:  # the trained probe itself, not just its layer
        return probe_hash_of(f"harmful-intent{tag}")

    def probe_hash_of(name: str) -> str:
        return sha256_file(ctx.out / "probes" / f"{name}.safetensors")

    run_stage(ctx, "probe", stage_probe, key("probe"))
    run_stage(ctx, "refusal", stage_refusal, key("refusal"))
    run_stage(ctx, "steering", stage_steering, key("steering", after=ctx.results["refusal"]))
    # both models' jailbreak-attempt stages: same settings, data and long benign set
    jb_key = key(
        "jailbreak_probe", long_data=sha256_file(data.datasets_dir() / "benign_long.jsonl")
    )
    if cfg["jailbreak_probe"]:
        run_stage(ctx, "jailbreak_probe", stage_jailbreak_probe, jb_key)
    jb_hash = probe_hash_of("jailbreak-attempt") if cfg["jailbreak_probe"] else None
    run_stage(ctx, "defense", stage_defense,
              key("defense", after=[ctx.results["refusal"], probe_hash(""),
                                    ctx.results["steering"]["addition"], jb_hash],
                  recheck="benign path"))  # fmt: skip
    if cfg["smollm"]:
        run_stage(ctx, "probe_smollm",
                  lambda cx: stage_probe(cx, "smollm2-135m-instruct", "-smollm"),
                  key("probe"))  # fmt: skip
        jb_smollm = None
        if cfg["jailbreak_probe"]:
            run_stage(ctx, "jailbreak_probe_smollm",
                      lambda cx: stage_jailbreak_probe(cx, "smollm2-135m-instruct", "-smollm"),
                      jb_key)  # fmt: skip
            jb_smollm = probe_hash_of("jailbreak-attempt-smollm")
        run_stage(ctx, "defense_smollm", stage_defense_smollm,
                  key("defense_smollm", after=[probe_hash("-smollm"), jb_smollm]))  # fmt: skip
    if cfg["backdoor"]:
        try:
            from probes.backdoor.pipeline import settings

            run_stage(ctx, "backdoor", stage_backdoor,
                      key("backdoor", after=settings(cfg["fast"])))  # fmt: skip
        except ImportError as exc:
            ctx.log(f"backdoor: skipped ({exc})")
    metrics = {
        "model": _identity(ctx),
        "machine": {
            "platform": platform.platform(),
            "cpu": platform.processor() or platform.machine(),
            "threads": torch.get_num_threads(),
        },  # fmt: skip
        "config": cfg,
        "data_sha256": data_hash,
        "stages": ctx.results,
    }
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=1, default=str))
    from safety_probes.report import summary_rows, write_report

    write_report(out, metrics)
    rows = summary_rows(metrics)
    width = max(len(r[0]) for r in rows)
    summary = "\n".join(f"{a:<{width}}  {b:>10}  {c}" for a, b, c in rows)
    return {"out": str(out), "report": str(out / "report.html"), "summary": summary}


def rebuild_report(out: str | Path) -> dict:
    """Rebuild ``metrics.json`` and ``report.html`` from the stages already cached in ``out``."""
    out = check_out_dir(Path(out))
    stages = {}
    for p in sorted((out / "stages").glob("*.json")):
        stages[p.stem] = json.loads(p.read_text())["result"]
    if not stages:
        raise BadInputError(f"{out} holds no finished stage; run the demo first")
    old = json.loads((out / "metrics.json").read_text()) if (out / "metrics.json").is_file() else {}
    metrics = {**old, "model": stages.get("probe", {}).get("model", old.get("model")),
               "stages": stages}  # fmt: skip
    metrics.setdefault("machine", {"platform": platform.platform(),
                                   "cpu": platform.processor() or platform.machine(),
                                   "threads": torch.get_num_threads()})  # fmt: skip
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=1, default=str))
    from safety_probes.report import summary_rows, write_report

    write_report(out, metrics)
    rows = summary_rows(metrics)
    width = max(len(r[0]) for r in rows)
    summary = "\n".join(f"{a:<{width}}  {b:>10}  {c}" for a, b, c in rows)
    return {"out": str(out), "report": str(out / "report.html"), "summary": summary}


def _identity(ctx: Context) -> dict:
    probe = ctx.results.get("probe", {})
    return probe.get("model", {"model": ctx.config["model"]})


def run_refusal(out: str | Path, *, model: str = DEFAULT_MODEL, fast: bool = False) -> dict:
    """The refusal-direction part of the pipeline alone (``safety-probes refusal``)."""
    out = check_out_dir(Path(out))
    cfg = (
        dict(FAST, fast=fast, model=model)
        if fast
        else dict(FULL, **REFUSAL, fast=fast, model=model)
    )
    ctx = Context(out, cfg)
    base = {"cfg": cfg, "version": 3}  # 2: probes.fastpath, 3: judge and select_coeff
    run_stage(ctx, "refusal", stage_refusal, base)
    run_stage(ctx, "steering", stage_steering, base | {"after": ctx.results["refusal"]})
    metrics = {"model": model, "stages": ctx.results}
    atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=1, default=str))
    from safety_probes.stages import load_figures

    for name, fig in load_figures(out).items():
        atomic_write_text(out / f"{name}.html", fig.to_html(include_plotlyjs=True))
    direction = load_direction(out / "refusal" / "direction.safetensors")
    direction.save(out / "direction.safetensors")
    return {"out": str(out), "direction": str(out / "direction.safetensors"),
            "refusal": ctx.results["refusal"], "steering": ctx.results["steering"]}  # fmt: skip
