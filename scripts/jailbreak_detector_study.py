"""Study: a linear "jailbreak attempt" probe (wrapped vs bare), with and without long benign
negatives. Not part of the library yet; see the README (Harmful-intent probe).

Trains logistic probes on the mean over the user's tokens at one layer: positives are
the training prompts of every shipped set, half of them re-added inside the shipped
training templates; negatives are the same prompts bare, plus (with ``--long-negatives``)
the even-numbered rows of ``datasets/candidates/benign_long.jsonl`` (weighted x10 by
repetition). The threshold is set at 1% FPR on the harmless val split. Reports the
flagged fraction on bare test sets, held-out-template-wrapped test prompts, the
odd-numbered (held-out) long benign prompts and, with ``--public DIR``, every JSONL there.

    python scripts/jailbreak_detector_study.py --long-negatives --public public/
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--layer", type=int, default=10)
    ap.add_argument("--long-negatives", action="store_true")
    ap.add_argument("--public", default="", help="folder of public prompt JSONL files")
    a = ap.parse_args(argv)
    if a.public and not Path(a.public).is_dir():
        print(f"error: --public {a.public} is not a folder", file=sys.stderr)
        return 2
    from probes import data, load_model, record
    from probes.estimators import make_estimator
    from probes.harmful_intent import (
        _stable_pick,
        control_set,
        jailbreak_test,
        stratified_prompts,
        template_groups,
    )
    from probes.metrics import calibrate_threshold

    model, layer = load_model(a.model), a.layer

    def acts(ps: list[str]) -> np.ndarray:
        rec = record(model, ps, sites="resid_post", layers=[layer], positions="mean")
        return rec.layer("resid_post", layer, "mean").float().numpy()

    train_t, _ = template_groups()
    bare = [r.prompt for n in ("harmful", "harmless", "benign_alarming", "harmful_extra",
                               "harmless_extra") for r in data.load(n, "train")]  # fmt: skip
    wrapped = data.wrap([p for p in bare if _stable_pick(p + "jb", 0.5)], train_t)
    long_rows = [r.prompt for r in data.load_jsonl(ROOT / "datasets/candidates/benign_long.jsonl")]
    neg = bare + (long_rows[0::2] * 10 if a.long_negatives else [])
    X = np.concatenate([acts(neg), acts(wrapped)])
    y = np.r_[np.zeros(len(neg)), np.ones(len(wrapped))]
    sets = {
        "harmful test": stratified_prompts("harmful", "test", None),
        "harmless test": stratified_prompts("harmless", "test", None),
        "borderline test": stratified_prompts("borderline", "test", None),
        "held-out templates, harmful test": jailbreak_test(),
        "held-out templates, harmless test": jailbreak_test(name="harmless"),
        "long benign, held out": long_rows[1::2],
    }
    for f in sorted(Path(a.public).glob("*.jsonl")) if a.public else ():
        sets[f.stem] = [r.prompt for r in data.load_jsonl(f)]
    control = acts(control_set())
    feats = {k: acts(v) for k, v in sets.items()}
    out = {}
    for c in (0.003, 0.03, 0.3):
        est = make_estimator(f"logistic(C={c})").fit(X, y)
        t = calibrate_threshold(est.decision_function(control), 0.01)
        out[f"C={c}"] = {k: float((est.decision_function(v) > t).mean()) for k, v in feats.items()}
    print(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
