"""Prompt data: the sets shipped in ``datasets/``, user prompt files and public benchmarks.

The shipped sets (``harmful``, ``harmless``, ``borderline``, ``backdoor``,
``benign_alarming``, ``harmful_extra``, ``harmless_extra``) are JSONL files with the
keys ``id, prompt, label, category, split, source``; ``datasets/README.md`` is their
dataset card. Public benchmarks are never downloaded here: the user fetches the file
and passes its local path to a loader, which reads it in its own format.

Example:
    >>> from probes.data import load, prompts, wrap
    >>> train = load("harmful", "train")
    >>> wrapped = wrap(prompts("harmful", "test"), ["jb-fiction_frame", "jb-grandma"])
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from probes.errors import BadInputError

SETS = (
    "harmful",
    "harmless",
    "borderline",
    "backdoor",
    "benign_alarming",
    "harmful_extra",
    "harmless_extra",
    "benign_long",
)
SPLITS = ("train", "val", "test")
_FIELDS = ("id", "prompt", "label", "category", "split", "source")
_SLOT = "{prompt}"


@dataclass(frozen=True)
class Record:
    """One prompt with its metadata (``label`` 1 = harmful, 0 = harmless, None = unknown)."""

    id: str
    prompt: str
    label: int | None = None
    category: str | None = None
    split: str | None = None
    source: str = "safety-probes"


@dataclass(frozen=True)
class Template:
    """A jailbreak wrapper with exactly one ``{prompt}`` slot.

    ``split``: ``"train"`` (may wrap training prompts) or ``"test"`` (held out: wraps only
    test prompts, so jailbreak results measure unseen wrappers); None for custom templates.
    """

    id: str
    kind: str
    template: str
    split: str | None = None

    def __post_init__(self) -> None:
        if self.template.count(_SLOT) != 1:
            raise BadInputError(f"template {self.id!r} must contain exactly one {_SLOT} slot")

    def apply(self, prompt: str) -> str:
        """Return the template with ``prompt`` in its slot (braces in the prompt are kept)."""
        return self.template.replace(_SLOT, prompt)


def datasets_dir() -> Path:
    """Return the folder holding the shipped JSONL files.

    An installed wheel carries them as package data in ``probes/datasets/``; a source
    checkout has them in ``<repo>/datasets/``.
    """
    here = Path(__file__).resolve().parent
    for candidate in (here / "datasets", here.parent / "datasets"):
        if (candidate / "harmful.jsonl").is_file():
            return candidate
    raise FileNotFoundError(f"no datasets folder with harmful.jsonl in {here} or {here.parent}")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise BadInputError(f"{path}: cannot read ({type(err).__name__})") from None


def _json_lines(path: Path) -> Iterator[tuple[str, dict]]:
    """Yield ``("file, line N", object)`` for each non-blank line of a JSONL file."""
    for number, line in enumerate(_read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}, line {number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise BadInputError(f"{where}: malformed JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise BadInputError(f"{where}: expected a JSON object, got {type(row).__name__}")
        yield where, row


def _parse_records(path: Path, *, strict: bool) -> list[Record]:
    records = []
    for where, row in _json_lines(path):
        missing = [k for k in _FIELDS if k not in row] if strict else []
        prompt = row.get("prompt")
        if "prompt" in missing or not isinstance(prompt, str) or not prompt.strip():
            raise BadInputError(f"{where}: missing or empty 'prompt' field")
        if missing:
            raise BadInputError(f"{where}: missing field(s) {', '.join(missing)}")
        label, split = row.get("label"), row.get("split")
        if label not in (0, 1, None):
            raise BadInputError(f"{where}: label must be 0, 1 or null, not {label!r}")
        if split not in (*SPLITS, None):
            raise BadInputError(f"{where}: split must be one of {', '.join(SPLITS)}, not {split!r}")
        rid, cat = str(row.get("id", f"{path.stem}-{len(records)}")), row.get("category")
        label, cat = (None if label is None else int(label)), (None if cat is None else str(cat))
        records.append(Record(rid, prompt, label, cat, split, row.get("source", path.name)))
    return records


def load_jsonl(path: str | Path) -> list[Record]:
    """Read a user's JSONL prompts file; only ``prompt`` is required on each line.

    Missing fields default to ``id = f"{stem}-{i}"``, ``label``/``category``/``split``
    None and ``source`` the file name.

    Raises:
        BadInputError: a malformed line or a line without ``prompt`` (names file and line).
    """
    return _parse_records(Path(path), strict=False)


def load(name: str, split: str | None = None, *, category: str | None = None) -> list[Record]:
    """Load a shipped prompt set, optionally one split and/or one category.

    Args:
        name: one of ``SETS``.
        split: ``"train"``, ``"val"``, ``"test"`` or None for all (borderline has val/test
            only; benign_alarming, its train-side counterpart, has train only, as have
            harmful_extra and harmless_extra, the training supplements).
        category: keep only this category.

    Raises:
        BadInputError: an unknown set, split or category (the message lists valid ones).
    """
    if name not in SETS:
        raise BadInputError(f"unknown prompt set {name!r}; valid sets: {', '.join(SETS)}")
    if split is not None and split not in SPLITS:
        raise BadInputError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    records = _parse_records(datasets_dir() / f"{name}.jsonl", strict=True)
    if split is not None:
        present = [s for s in SPLITS if any(r.split == s for r in records)]
        if split not in present:
            raise BadInputError(f"{name} has no {split!r} split; it has: {', '.join(present)}")
        records = [r for r in records if r.split == split]
    if category is not None:
        categories = sorted({str(r.category) for r in records})
        if category not in categories:
            raise BadInputError(f"{name} has no category {category!r}; valid: {categories}")
        records = [r for r in records if r.category == category]
    return records


def prompts(name: str, split: str | None = None) -> list[str]:
    """Return the prompt texts of ``load(name, split)``."""
    return [r.prompt for r in load(name, split)]


def templates() -> list[Template]:
    """Return the shipped jailbreak templates (``jailbreak_templates.jsonl``)."""
    out = []
    for where, row in _json_lines(datasets_dir() / "jailbreak_templates.jsonl"):
        if not all(isinstance(row.get(k), str) for k in ("id", "kind", "template", "split")):
            raise BadInputError(
                f"{where}: a template needs string fields id, kind, template, split"
            )
        if row["split"] not in ("train", "test"):
            raise BadInputError(
                f"{where}: template split must be train or test, got {row['split']!r}"
            )
        out.append(Template(row["id"], row["kind"], row["template"], row["split"]))
    return out


def wrap(prompts: Sequence[str], template: Template | str | Sequence[Template | str]) -> list[str]:
    """Wrap prompts in jailbreak templates.

    Args:
        prompts: the prompts to wrap.
        template: a ``Template``, a template id, a raw template string containing
            ``{prompt}``, or a list of these; with several, prompt ``i`` gets template
            ``i % len(templates)`` (deterministic round-robin).

    Raises:
        BadInputError: an unknown id, a template without a ``{prompt}`` slot, or no template.
    """
    if isinstance(prompts, str):
        raise BadInputError("wrap() takes a list of prompts, not a single string")
    chosen = [template] if isinstance(template, str | Template) else list(template)
    if not chosen:
        raise BadInputError("wrap() needs at least one template")
    shipped = {s.id: s for s in templates()} if any(isinstance(t, str) for t in chosen) else {}
    for t in chosen:
        if isinstance(t, str) and t not in shipped and _SLOT not in t:
            ids = ", ".join(shipped)
            raise BadInputError(f"{t[:60]!r} is no template id and has no {_SLOT}; ids: {ids}")
    resolved = [
        t if isinstance(t, Template) else shipped.get(t) or Template("custom", "custom", t)
        for t in chosen
    ]
    return [resolved[i % len(resolved)].apply(p) for i, p in enumerate(prompts)]


def triggers() -> dict:
    """Return the backdoor trigger spec (``backdoor_triggers.json``): train trigger, held-out."""
    return json.loads((datasets_dir() / "backdoor_triggers.json").read_text(encoding="utf-8"))


def _read_csv(path: str | Path, required: Sequence[str]) -> list[dict[str, str]]:
    path = Path(path)
    try:
        reader = csv.DictReader(io.StringIO(_read_text(path), newline=""))
        header = [h.strip() for h in reader.fieldnames or []]
        rows = [{k.strip(): (v or "").strip() for k, v in r.items() if k} for r in reader]
    except csv.Error as err:
        raise BadInputError(f"{path}: malformed CSV ({err})") from None
    for column in required:
        if column not in header:
            raise BadInputError(f"{path}: missing column {column!r} (found: {', '.join(header)})")
    return rows


_Label = int | Callable[[dict[str, str]], int]


def _records(
    rows: list[dict[str, str]],
    source: str,
    prompt: str,
    label: _Label,
    category: str = "",
    id_column: str = "",
) -> list[Record]:
    """Turn CSV rows into test-split records, skipping rows with an empty prompt."""
    out = []
    for i, r in enumerate(rows):
        y = label(r) if callable(label) else label
        rid = f"{source}-{r.get(id_column) or i}"
        out.append(Record(rid, r[prompt], y, r.get(category) or None, "test", source))
    return [rec for rec in out if rec.prompt]


def load_advbench(path: str | Path) -> list[Record]:
    """AdvBench ``harmful_behaviors.csv`` (columns ``goal,target``); label 1."""
    return _records(_read_csv(path, ("goal",)), "advbench", "goal", 1)


def load_harmbench(
    path: str | Path, functional: Sequence[str] | None = ("standard",)
) -> list[Record]:
    """HarmBench behaviors CSV (``Behavior, FunctionalCategory, SemanticCategory, ...``); label 1.

    Args:
        path: e.g. ``harmbench_behaviors_text_all.csv``.
        functional: FunctionalCategory values to keep (default the ``standard`` rows;
            None keeps all). A contextual row's ``ContextString`` is prepended.
    """
    rows = _read_csv(path, ("Behavior", "FunctionalCategory"))
    for r in rows:
        context = r.get("ContextString", "")
        r["Behavior"] = f"{context}\n\n---\n\n{r['Behavior']}" if context else r["Behavior"]
    rows = [r for r in rows if functional is None or r["FunctionalCategory"] in functional]
    return _records(rows, "harmbench", "Behavior", 1, "SemanticCategory", "BehaviorID")


def load_jailbreakbench(path: str | Path, label: int = 1) -> list[Record]:
    """JailbreakBench JBB-Behaviors CSV (``Index, Goal, Target, Behavior, Category, Source``).

    ``label`` is 1 for ``harmful-behaviors.csv``; pass 0 for ``benign-behaviors.csv``.
    """
    rows = _read_csv(path, ("Goal",))
    return _records(rows, "jailbreakbench", "Goal", label, "Category", "Index")


def load_strongreject(path: str | Path) -> list[Record]:
    """StrongREJECT ``strongreject_dataset.csv`` (``category, source, forbidden_prompt``); label 1."""
    rows = _read_csv(path, ("forbidden_prompt",))
    return _records(rows, "strongreject", "forbidden_prompt", 1, "category")


def load_xstest(path: str | Path) -> list[Record]:
    """XSTest ``xstest_prompts.csv`` (``id, prompt, type, label, focus, note``).

    ``label`` "safe" -> 0 (benign prompts that look scary, like our borderline set),
    "unsafe" -> 1; ``category`` is the ``type`` column.
    """
    rows = _read_csv(path, ("prompt", "label"))
    labels = {"safe": 0, "unsafe": 1}
    for i, r in enumerate(rows, 1):
        if r["label"] not in labels:
            raise BadInputError(f"{path}, row {i}: label {r['label']!r} is not safe/unsafe")
    return _records(rows, "xstest", "prompt", lambda r: labels[r["label"]], "type", "id")


def load_alpaca(path: str | Path) -> list[Record]:
    """Alpaca JSON (a list of ``{instruction, input, output}``); label 0.

    The prompt is the instruction, plus ``"\\n\\n" + input`` when the input is non-empty.
    """
    path = Path(path)
    try:
        items = json.loads(_read_text(path))
    except json.JSONDecodeError as err:
        raise BadInputError(f"{path}: malformed JSON ({err.msg}, line {err.lineno})") from None
    if not isinstance(items, list):
        raise BadInputError(f"{path}: expected a JSON list of {{instruction, input, output}}")
    out = []
    for i, item in enumerate(items):
        if not isinstance(item, dict) or not isinstance(item.get("instruction"), str):
            raise BadInputError(f"{path}, item {i}: missing field 'instruction'")
        extra = str(item.get("input") or "").strip()
        prompt = item["instruction"].strip() + (f"\n\n{extra}" if extra else "")
        out.append(Record(f"alpaca-{i}", prompt, 0, None, "test", "alpaca"))
    return out


BENCHMARKS: dict[str, Callable[[str | Path], list[Record]]] = {
    "advbench": load_advbench,
    "harmbench": load_harmbench,
    "jailbreakbench": load_jailbreakbench,
    "strongreject": load_strongreject,
    "xstest": load_xstest,
    "alpaca": load_alpaca,
}


def load_benchmark(name: str, path: str | Path) -> list[Record]:
    """Load a public benchmark file from a local ``path`` by ``name`` (see ``BENCHMARKS``)."""
    key = name.lower().replace("-", "").replace("_", "")
    if key not in BENCHMARKS:
        raise BadInputError(f"unknown benchmark {name!r}; valid: {', '.join(BENCHMARKS)}")
    return BENCHMARKS[key](path)
