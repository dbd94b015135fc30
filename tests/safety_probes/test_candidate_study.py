"""datasets/candidates and scripts/candidate_study.py: candidate training data, kept apart."""

import json
from pathlib import Path

import pytest

from probes import data
from tests.helpers import load_script

ROOT = Path(__file__).parents[2]
CANDIDATES = ROOT / "datasets" / "candidates"
KEYS = {"id", "prompt", "label", "category", "split", "source"}


@pytest.fixture(scope="module")
def cs():
    return load_script("candidate_study")


def _rows(name: str) -> list[dict]:
    text = (CANDIDATES / f"{name}.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]


@pytest.mark.parametrize("name", ["harmful_extra", "harmless_extra", "benign_alarming"])
def test_candidates__prompts_fit_their_shipped_set_and_collide_with_nothing(name):
    rows, shipped = _rows(name), data.load(name)
    assert rows and all(set(r) == KEYS for r in rows)
    assert {r["label"] for r in rows} == {r.label for r in shipped}
    assert {r["split"] for r in rows} == {"train"}
    assert {r["category"] for r in rows} <= {r.category for r in shipped}
    assert all(r["id"].startswith(f"{name}-{r['category']}-") for r in rows)
    every = [r for n in ("harmful", "harmless", "borderline", "backdoor", "benign_alarming",
                         "harmful_extra", "harmless_extra") for r in data.load(n)]  # fmt: skip
    ids, prompts = [r.id for r in every], {r.prompt.lower() for r in every}
    assert len({r["id"] for r in rows}) == len(rows) and not {r["id"] for r in rows} & set(ids)
    assert not {r["prompt"].lower() for r in rows} & prompts


def test_candidates__templates_have_one_slot_and_new_ids():
    rows = _rows("jailbreak_templates")
    shipped = {t.id for t in data.templates()}
    for r in rows:
        t = data.Template(r["id"], r["kind"], r["template"], r["split"])  # raises without a slot
        assert r["split"] == "train" and t.id not in shipped
        assert "{" not in t.template.replace("{prompt}", "")
        assert 250 <= len(t.template.split()) <= 700


def test_candidate_study__missing_public_folder_exits_2_and_writes_nothing(cs, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert cs.main(["--public", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert not out.exists()


def test_candidate_study__unknown_candidate_name_is_rejected(cs, tmp_path):
    with pytest.raises(SystemExit) as err:
        cs.main(["--add", "harmful", "--out", str(tmp_path / "r.json")])
    assert err.value.code == 2
