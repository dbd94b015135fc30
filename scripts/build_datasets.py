"""Build the prompt sets in ``datasets/`` reproducibly.

Reads the raw contributor files in ``datasets/parts/`` when that folder exists,
otherwise the final files in ``datasets/`` themselves, and (re)writes:

- ``harmful.jsonl``, ``harmless.jsonl``, ``borderline.jsonl``, ``backdoor.jsonl``,
  ``benign_alarming.jsonl``, ``harmful_extra.jsonl``, ``harmless_extra.jsonl``,
  ``benign_long.jsonl``: one record per line with exactly the keys ``id, prompt,
  label, category, split, source``, sorted by ``id``;
- ``jailbreak_templates.jsonl`` (``id, kind, template, split, source``) and
  ``backdoor_triggers.json``.

Splits are seeded (seed 0) and stratified by category: 60% train / 20% val /
20% test for harmful, harmless and backdoor; 50% val / 50% test for borderline
(an evaluation set); 100% train for benign_alarming (hard negatives for training,
the train-side counterpart of borderline) and the two supplements; 50% train / 25% val /
25% test for benign_long (long benign messages: negatives and evaluation for the
jailbreak-attempt probe). A split depends only on the set name, the
category and the ids in it, so rebuilding from the final files reproduces the same
splits.

Usage::

    python scripts/build_datasets.py                 # build (from parts/ if present)
    python scripts/build_datasets.py --remove-parts  # build, then delete datasets/parts/
    python scripts/build_datasets.py --check         # exit 1 if the files are not up to date
    python scripts/build_datasets.py --tables        # print the README's markdown tables
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import statistics
import sys
from collections import Counter, defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "datasets"
PARTS = DATA / "parts"
SEED = 0
KEYS = ("id", "prompt", "label", "category", "split", "source")
SPLITS = ("train", "val", "test")
TEMPLATE_KEYS = ("id", "kind", "template", "split", "source")

# set name -> (part files, expected label, (train, val, test) fractions)
SETS: dict[str, tuple[tuple[str, ...], int, tuple[float, float, float]]] = {
    "harmful": (("harmful_a.jsonl", "harmful_b.jsonl"), 1, (0.6, 0.2, 0.2)),
    "harmless": (("harmless_a.jsonl", "harmless_b.jsonl"), 0, (0.6, 0.2, 0.2)),
    "borderline": (("borderline.jsonl",), 0, (0.0, 0.5, 0.5)),
    "backdoor": (("backdoor_prompts.jsonl",), 0, (0.6, 0.2, 0.2)),
    "benign_alarming": (("benign_alarming.jsonl",), 0, (1.0, 0.0, 0.0)),
    "harmful_extra": (("harmful_extra.jsonl",), 1, (1.0, 0.0, 0.0)),
    "harmless_extra": (("harmless_extra.jsonl",), 0, (1.0, 0.0, 0.0)),
    "benign_long": (("benign_long.jsonl",), 0, (0.5, 0.25, 0.25)),
}
TEMPLATES = "jailbreak_templates.jsonl"
TRIGGERS = "backdoor_triggers.json"


def read_jsonl(path: Path) -> list[dict]:
    """Read a JSONL file, failing loudly with the file and line on a bad line."""
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise SystemExit(f"{path}:{number}: invalid JSON ({err.msg})") from err
        if not isinstance(row, dict):
            raise SystemExit(f"{path}:{number}: expected a JSON object")
        rows.append(row)
    return rows


def assign_splits(name: str, rows: list[dict], fractions: tuple[float, float, float]) -> None:
    """Set ``row["split"]`` in place, stratified by category and seeded per category."""
    by_category: dict[str, list[dict]] = defaultdict(list)
    for row in rows:
        by_category[row["category"]].append(row)
    for category, group in sorted(by_category.items()):
        group.sort(key=lambda row: row["id"])
        random.Random(f"{SEED}:{name}:{category}").shuffle(group)
        n_val = round(len(group) * fractions[1])
        n_test = round(len(group) * fractions[2])
        n_train = len(group) - n_val - n_test
        for i, row in enumerate(group):
            row["split"] = "train" if i < n_train else "val" if i < n_train + n_val else "test"


def build_set(name: str, source_dir: Path) -> list[dict]:
    """Load one prompt set from parts/ or from its final file, validate it, split it."""
    files, label, fractions = SETS[name]
    paths = [source_dir / f for f in files] if source_dir == PARTS else [DATA / f"{name}.jsonl"]
    rows = [row for path in paths for row in read_jsonl(path)]
    for row in rows:
        for key in ("id", "prompt", "category", "source"):
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise SystemExit(f"{name}: record {row.get('id')!r} has no valid {key!r}")
        if row.get("label") != label:
            raise SystemExit(f"{name}: record {row['id']!r} has label {row.get('label')!r}")
    for key in ("id", "prompt"):
        dupes = [v for v, n in Counter(row[key] for row in rows).items() if n > 1]
        if dupes:
            raise SystemExit(f"{name}: duplicate {key}s: {dupes[:5]}")
    records = [{key: row.get(key) for key in KEYS} for row in rows]
    assign_splits(name, records, fractions)
    return sorted(records, key=lambda row: row["id"])


def build_templates(source_dir: Path) -> list[dict]:
    """Load and validate the jailbreak templates (each has exactly one ``{prompt}`` slot)."""
    rows = read_jsonl(source_dir / TEMPLATES)
    for row in rows:
        if row.get("template", "").count("{prompt}") != 1:
            raise SystemExit(f"template {row.get('id')!r} must contain exactly one {{prompt}}")
        if row.get("split") not in ("train", "test"):
            raise SystemExit(f"template {row.get('id')!r}: split must be train or test")
    return [{key: row.get(key) for key in TEMPLATE_KEYS} for row in rows]


def render() -> dict[str, str]:
    """Return the final files' contents, keyed by file name."""
    source_dir = PARTS if PARTS.is_dir() else DATA
    out = {}
    for name in SETS:
        rows = build_set(name, source_dir)
        out[f"{name}.jsonl"] = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    templates = build_templates(source_dir)
    out[TEMPLATES] = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in templates)
    triggers = json.loads((source_dir / TRIGGERS).read_text(encoding="utf-8"))
    out[TRIGGERS] = json.dumps(triggers, indent=2, ensure_ascii=False) + "\n"
    all_ids = [json.loads(line)["id"] for f in SETS for line in out[f"{f}.jsonl"].splitlines()]
    if len(all_ids) != len(set(all_ids)):
        raise SystemExit("ids are not unique across the prompt sets")
    return out


def tables() -> str:
    """Markdown tables (category x split counts, word-length stats) for datasets/README.md."""
    lines = []
    for name in SETS:
        rows = read_jsonl(DATA / f"{name}.jsonl")
        counts = Counter((row["category"], row["split"]) for row in rows)
        lines += [f"#### {name} ({len(rows)} prompts)", "", "| category | train | val | test |"]
        lines.append("|---|---:|---:|---:|")
        for category in sorted({row["category"] for row in rows}):
            cells = " | ".join(str(counts[(category, s)]) for s in SPLITS)
            lines.append(f"| {category} | {cells} |")
        totals = " | ".join(str(sum(row["split"] == s for row in rows)) for s in SPLITS)
        lines += [f"| **total** | {totals} |", ""]
        words = [len(row["prompt"].split()) for row in rows]
        lines.append(
            f"Length (words): median {statistics.median(words):g}, "
            f"mean {statistics.mean(words):.1f}, min {min(words)}, max {max(words)}."
        )
        lines.append("")
    return "\n".join(lines)


def _read(path: Path) -> str | None:
    return path.read_text(encoding="utf-8") if path.is_file() else None


def main(argv: list[str] | None = None) -> int:
    """Build, check or describe the datasets; see the module docstring."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="fail if files are out of date")
    parser.add_argument("--remove-parts", action="store_true", help="delete datasets/parts/")
    parser.add_argument("--tables", action="store_true", help="print README markdown tables")
    args = parser.parse_args(argv)
    if args.tables:
        print(tables())
        return 0
    files = render()
    if args.check:
        stale = [f for f, text in files.items() if _read(DATA / f) != text]
        for f in stale:
            print(f"out of date: datasets/{f}", file=sys.stderr)
        return 1 if stale else 0
    for name, text in files.items():
        tmp = DATA / f".{name}.tmp"
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(DATA / name)
        print(f"wrote datasets/{name} ({text.count(chr(10))} lines)", file=sys.stderr)
    if args.remove_parts and PARTS.is_dir():
        shutil.rmtree(PARTS)
        print("removed datasets/parts/", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
