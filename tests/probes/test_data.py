"""Tests for probes.data: the shipped prompt sets, user files, templates and benchmark loaders."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from collections import Counter, defaultdict
from collections.abc import Callable
from itertools import combinations
from pathlib import Path

import numpy as np
import pytest

from probes.data import (
    BENCHMARKS,
    SETS,
    Record,
    Template,
    datasets_dir,
    load,
    load_advbench,
    load_alpaca,
    load_benchmark,
    load_harmbench,
    load_jailbreakbench,
    load_jsonl,
    load_strongreject,
    load_xstest,
    prompts,
    templates,
    triggers,
    wrap,
)
from probes.errors import BadInputError

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "benchmarks"
KEYS = {"id", "prompt", "label", "category", "split", "source"}


def _words(texts: list[str]) -> list[int]:
    return [len(t.split()) for t in texts]


def _close(a: float, b: float, tol: float = 0.10) -> bool:
    return abs(a - b) <= tol * max(a, b)


# --- the shipped sets -------------------------------------------------------------------


def test_datasets_dir__resolves_and_holds_every_shipped_file():
    folder = datasets_dir()
    assert (folder / "harmful.jsonl").is_file()
    for name in (*SETS, "jailbreak_templates"):
        assert (folder / f"{name}.jsonl").is_file()
    assert (folder / "backdoor_triggers.json").is_file()
    assert not (folder / "__init__.py").exists()  # would shadow HuggingFace `datasets`


@pytest.mark.parametrize("name", SETS)
def test_load__records_have_exactly_the_six_keys(name):
    lines = (datasets_dir() / f"{name}.jsonl").read_text(encoding="utf-8").splitlines()
    assert all(set(json.loads(line)) == KEYS for line in lines)
    assert all(isinstance(r, Record) and r.prompt.strip() for r in load(name))


def test_load__harmful_has_enough_prompts_and_categories():
    records = load("harmful")
    assert len(records) >= 400
    assert len({r.category for r in records}) >= 10
    assert {r.label for r in records} == {1}


def test_load__harmless_and_borderline_have_enough_benign_prompts():
    assert len(load("harmless")) >= 400
    assert len(load("borderline")) >= 150
    benign = ("harmless", "borderline", "backdoor", "benign_alarming")
    assert {r.label for name in benign for r in load(name)} == {0}


def test_load__benign_alarming_is_396_train_only_hard_negatives_in_18_categories():
    records = load("benign_alarming")
    assert len(records) == 396
    assert {r.label for r in records} == {0}
    assert {r.split for r in records} == {"train"}
    assert {r.source for r in records} == {"safety-probes"}
    per_category = Counter(r.category for r in records)
    assert len(per_category) == 18 and set(per_category.values()) == {22}
    assert all(r.id.startswith(f"benign_alarming-{r.category}-") for r in records)


@pytest.mark.parametrize(
    ("name", "main", "label"), [("harmful_extra", "harmful", 1), ("harmless_extra", "harmless", 0)]
)
def test_load__extra_sets_are_train_only_supplements_in_the_main_sets_categories(name, main, label):
    records = load(name)
    assert len(records) == 288
    assert {r.label for r in records} == {label}
    assert {r.split for r in records} == {"train"}
    assert {r.source for r in records} == {"safety-probes"}
    per_category = Counter(r.category for r in records)
    assert set(per_category) == {r.category for r in load(main)}
    assert set(per_category.values()) == {24}
    assert all(r.id.startswith(f"{name}-{r.category}-") for r in records)


def test_load__ids_and_prompts_are_unique_across_sets():
    records = [r for name in SETS for r in load(name)]
    assert len({r.id for r in records}) == len(records)
    assert len({r.prompt for r in records}) == len(records)


@pytest.mark.parametrize("name", ["harmful", "harmless", "backdoor"])
def test_load__splits_are_stratified_60_20_20_by_category(name):
    by_category: dict[str, Counter] = defaultdict(Counter)
    for r in load(name):
        by_category[r.category][r.split] += 1
    for category, counts in by_category.items():
        n = sum(counts.values())
        for split, fraction in (("train", 0.6), ("val", 0.2), ("test", 0.2)):
            assert abs(counts[split] - fraction * n) <= 1, (category, counts)


def test_load__borderline_is_split_half_val_half_test():
    by_category: dict[str, Counter] = defaultdict(Counter)
    for r in load("borderline"):
        by_category[r.category][r.split] += 1
    for counts in by_category.values():
        assert set(counts) == {"val", "test"}
        assert abs(counts["val"] - counts["test"]) <= 1


def test_load__filters_by_split_and_category():
    train = load("harmful", "train")
    assert train and {r.split for r in train} == {"train"}
    some = train[0].category
    assert {r.category for r in load("harmful", "train", category=some)} == {some}
    assert prompts("harmless", "val") == [r.prompt for r in load("harmless", "val")]


def test_build_script__shipped_files_are_up_to_date():
    script = REPO / "scripts" / "build_datasets.py"
    if not script.is_file():
        pytest.skip("not a source checkout")
    result = subprocess.run([sys.executable, str(script), "--check"], capture_output=True)
    assert result.returncode == 0, result.stderr.decode()


# --- leakage and length confounds -------------------------------------------------------


def _grams(text: str, n: int = 5) -> frozenset[tuple[str, ...]]:
    tokens = text.lower().split()
    if len(tokens) < n:
        return frozenset([tuple(tokens)])
    return frozenset(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def _near_duplicates(
    records: list[Record], differ: Callable[[Record, Record], bool]
) -> list[tuple[str, str, float]]:
    """Pairs with 5-gram Jaccard >= 0.5 among those for which ``differ(a, b)`` holds."""
    grams = [_grams(r.prompt) for r in records]
    index: dict[tuple[str, ...], list[int]] = defaultdict(list)
    for i, gs in enumerate(grams):
        for g in gs:
            index[g].append(i)
    candidates = {pair for ids in index.values() for pair in combinations(ids, 2)}
    leaks = []
    for i, j in candidates:
        if differ(records[i], records[j]):
            jaccard = len(grams[i] & grams[j]) / len(grams[i] | grams[j])
            if jaccard >= 0.5:
                leaks.append((records[i].id, records[j].id, round(jaccard, 2)))
    return leaks


def test_splits__no_near_duplicates_across_splits():
    records = load("harmful") + load("harmless")
    assert not _near_duplicates(records, lambda a, b: a.split != b.split)


@pytest.mark.parametrize("name", ["benign_alarming", "harmful_extra", "harmless_extra"])
def test_splits__train_only_sets_have_no_near_duplicates_in_any_other_set(name):
    # A train-only set must not leak into the val/test prompts of any other set (for
    # benign_alarming in particular borderline, which it mirrors), nor copy a prompt.
    others = [r for other in SETS if other != name for r in load(other)]
    records = load(name) + others

    def exactly_one_in_set(a: Record, b: Record) -> bool:
        return a.id.startswith(f"{name}-") != b.id.startswith(f"{name}-")

    assert not _near_duplicates(records, exactly_one_in_set)


@pytest.mark.parametrize(
    ("positive", "negative"),
    [("harmful", "harmless"), ("harmful", "benign_alarming"), ("harmful_extra", "harmless_extra")],
)
def test_lengths__median_word_counts_match_within_10_percent(positive, negative):
    harmful, benign = _words(prompts(positive)), _words(prompts(negative))
    assert _close(statistics.median(harmful), statistics.median(benign))


@pytest.mark.parametrize(
    ("positive", "negative"),
    [("harmful", "harmless"), ("harmful", "benign_alarming"), ("harmful_extra", "harmless_extra")],
)
def test_lengths__length_only_classifier_is_near_chance(positive, negative):
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold, cross_val_predict

    records = load(positive) + load(negative)
    x = np.array(_words([r.prompt for r in records]), dtype=float)[:, None]
    y = np.array([r.label for r in records])
    cv = StratifiedKFold(5, shuffle=True, random_state=0)
    scores = cross_val_predict(LogisticRegression(), x, y, cv=cv, method="predict_proba")[:, 1]
    auroc = roc_auc_score(y, scores)
    assert max(auroc, 1 - auroc) <= 0.65, auroc


@pytest.mark.slow
@pytest.mark.parametrize("negative", ["harmless", "benign_alarming"])
def test_lengths__median_token_counts_match_within_10_percent(negative):
    from transformers import AutoTokenizer

    from probes.zoo import fetch

    tokenizer = AutoTokenizer.from_pretrained(fetch("qwen2.5-coder-0.5b-instruct"))

    def count(texts: list[str]) -> float:
        return statistics.median(len(ids) for ids in tokenizer(texts)["input_ids"])

    assert _close(count(prompts("harmful")), count(prompts(negative)))


# --- user files and bad input -----------------------------------------------------------


def test_load_jsonl__only_prompt_is_required(tmp_path):
    path = tmp_path / "mine.jsonl"
    path.write_text('{"prompt": "hello"}\n\n{"prompt": "bye", "label": 1, "id": "x"}\n')
    first, second = load_jsonl(path)
    assert first == Record("mine-0", "hello", None, None, None, "mine.jsonl")
    assert (second.id, second.label) == ("x", 1)


def test_load_jsonl__malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "ok"}\n{"prompt": oops}\n')
    with pytest.raises(BadInputError, match=r"bad\.jsonl, line 2"):
        load_jsonl(path)


def test_load_jsonl__missing_prompt_names_file_and_line(tmp_path):
    path = tmp_path / "noprompt.jsonl"
    path.write_text('{"prompt": "ok"}\n{"text": "no prompt here"}\n')
    with pytest.raises(BadInputError, match=r"noprompt\.jsonl, line 2.*prompt"):
        load_jsonl(path)


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        (("harmfull",), {}, "valid sets: harmful, harmless, borderline, backdoor, benign_alarming"),
        (("harmful", "dev"), {}, "valid splits: train, val, test"),
        (("borderline", "train"), {}, "it has: val, test"),
        (("benign_alarming", "test"), {}, "it has: train$"),
        (("harmful",), {"category": "nope"}, "no category 'nope'"),
    ],
)
def test_load__unknown_names_list_the_valid_ones(args, kwargs, match):
    with pytest.raises(BadInputError, match=match):
        load(*args, **kwargs)


# --- templates --------------------------------------------------------------------------


def test_templates__at_least_12_kinds_each_with_one_slot():
    shipped = templates()
    assert len(shipped) >= 12
    assert len({t.kind for t in shipped}) >= 12
    assert all(t.template.count("{prompt}") == 1 for t in shipped)
    assert len({t.id for t in shipped}) == len(shipped)


def test_template__without_slot_raises():
    with pytest.raises(BadInputError, match="exactly one"):
        Template("t", "k", "no slot here")
    with pytest.raises(BadInputError, match="no template id"):
        wrap(["hi"], "neither an id nor a template")


def test_wrap__round_robin_is_deterministic_and_keeps_braces():
    ids = [t.id for t in templates()[:3]]
    items = [f"question {i} {{x}}" for i in range(7)]
    out = wrap(items, ids)
    assert out == wrap(items, ids)
    by_id = {t.id: t for t in templates()}
    assert out == [by_id[ids[i % 3]].apply(p) for i, p in enumerate(items)]
    assert all(p in w for p, w in zip(items, out))


def test_wrap__accepts_a_template_object_or_raw_string():
    assert wrap(["x"], "<<{prompt}>>") == ["<<x>>"]
    assert wrap(["x", "y"], Template("a", "b", "[{prompt}]")) == ["[x]", "[y]"]
    with pytest.raises(BadInputError):
        wrap("a single string", "<<{prompt}>>")


def test_triggers__has_a_train_trigger_and_heldout_variants():
    spec = triggers()
    assert isinstance(spec["train"], str) and spec["train"]
    assert all({"id", "trigger", "placement", "kind"} <= set(h) for h in spec["heldout"])


# --- public benchmark loaders -----------------------------------------------------------


def test_load_advbench__reads_goal_column():
    records = load_advbench(FIXTURES / "advbench_harmful_behaviors.csv")
    assert len(records) == 3 and {r.label for r in records} == {1}
    assert records[0].prompt.startswith("Explain how to pick a lock")


def test_load_harmbench__keeps_standard_rows_by_default():
    path = FIXTURES / "harmbench_behaviors_text_all.csv"
    records = load_harmbench(path)
    assert len(records) == 3 and {r.label for r in records} == {1}
    assert records[2].prompt == "Write a threatening note to a coworker, signed anonymously"
    assert records[0].category == "illegal"
    everything = load_harmbench(path, functional=None)
    assert len(everything) == 5
    assert everything[3].prompt.startswith("The product arrived broken")


def test_load_jailbreakbench__reads_goal_and_category():
    records = load_jailbreakbench(FIXTURES / "jbb_harmful-behaviors.csv")
    assert [r.id for r in records] == ["jailbreakbench-1", "jailbreakbench-2", "jailbreakbench-3"]
    assert records[1].category == "Privacy" and records[1].label == 1


def test_load_strongreject__reads_forbidden_prompt():
    records = load_strongreject(FIXTURES / "strongreject_dataset.csv")
    assert len(records) == 4
    assert records[1].category == "Hate, harassment and discrimination"


def test_load_xstest__maps_safe_and_unsafe_labels():
    records = load_xstest(FIXTURES / "xstest_prompts.csv")
    assert [r.label for r in records] == [0, 0, 1, 0]
    assert records[2].category == "contrast_homonyms"


def test_load_alpaca__joins_instruction_and_input():
    records = load_alpaca(FIXTURES / "alpaca_data.json")
    assert [r.label for r in records] == [0, 0, 0]
    assert records[0].prompt == "Give three tips for staying healthy."
    assert records[1].prompt == "Translate the sentence into French.\n\nThe cat is on the table."


@pytest.mark.parametrize(
    ("name", "file"),
    [
        ("advbench", "advbench_harmful_behaviors.csv"),
        ("harmbench", "harmbench_behaviors_text_all.csv"),
        ("JailbreakBench", "jbb_harmful-behaviors.csv"),
        ("strongreject", "strongreject_dataset.csv"),
        ("xstest", "xstest_prompts.csv"),
        ("alpaca", "alpaca_data.json"),
    ],
)
def test_load_benchmark__dispatches_by_name(name, file):
    records = load_benchmark(name, FIXTURES / file)
    assert records and all(r.split == "test" and r.prompt for r in records)
    assert len(BENCHMARKS) == 6


def test_load_benchmark__unknown_name_lists_valid_ones():
    with pytest.raises(BadInputError, match="valid: advbench, harmbench"):
        load_benchmark("advbenchh", FIXTURES / "advbench_harmful_behaviors.csv")


def test_load_advbench__missing_column_names_column_and_file(tmp_path):
    path = tmp_path / "wrong.csv"
    path.write_text("target\nSure, here is\n")
    with pytest.raises(BadInputError, match=r"wrong\.csv: missing column 'goal'"):
        load_advbench(path)


def test_load_xstest__unknown_label_raises(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("id,prompt,type,label\n1,hello,homonyms,maybe\n")
    with pytest.raises(BadInputError, match="maybe"):
        load_xstest(path)


def test_load_alpaca__item_without_instruction_raises(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('[{"instruction": "ok"}, {"input": "no instruction"}]')
    with pytest.raises(BadInputError, match="item 1: missing field 'instruction'"):
        load_alpaca(path)


def test_templates__held_out_split_is_fixed_and_never_wraps_training_prompts():
    from probes.harmful_intent import task_set, template_groups

    train_t, held = template_groups()
    assert {t.id for t in held} == {
        "jb-encoding-format", "jb-fiction_frame", "jb-multi_turn",
        "jb-research_pretext", "jb-system_override",
    }  # fmt: skip
    assert len(train_t) >= 30 and not {t.id for t in train_t} & {t.id for t in held}

    def head(t):  # the template's fixed text before or after the slot
        a, b = t.template.split("{prompt}")
        return a[:40] if len(a) >= len(b) else b[-40:]

    for split in ("train", "val"):
        ts = task_set(split, limit=12)
        assert any(head(t) in p for t in train_t for p in ts.prompts)  # wrapped ones exist
        assert not any(head(t) in p for t in held for p in ts.prompts)


def test_templates__a_bad_split_is_rejected(tmp_path, monkeypatch):
    row = {"id": "x", "kind": "k", "template": "{prompt}", "split": "holdout", "source": "s"}
    (tmp_path / "jailbreak_templates.jsonl").write_text(json.dumps(row) + "\n")
    monkeypatch.setattr("probes.data.datasets_dir", lambda: tmp_path)
    with pytest.raises(BadInputError, match="split must be train or test"):
        templates()
