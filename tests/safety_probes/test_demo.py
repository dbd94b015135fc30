"""The demo pipeline end to end (fast settings) on the embedded default model."""

import json
import time

import pytest

from probes import BadInputError
from safety_probes.demo import run_demo


@pytest.mark.slow
def test_demo__fast_runs_end_to_end_and_resumes(tmp_path):
    t0 = time.perf_counter()
    doc = run_demo(tmp_path / "out", fast=True)
    first = time.perf_counter() - t0
    out = tmp_path / "out"
    metrics = json.loads((out / "metrics.json").read_text())
    for stage in ("probe", "refusal", "steering", "defense"):
        assert stage in metrics["stages"]
    assert (out / "probes" / "harmful-intent.safetensors").is_file()
    probe = metrics["stages"]["probe"]["summary"]
    # the wrapper confound is measured beside the jailbreak TPR
    assert 0.0 <= probe["jailbreak_benign_flagged"] <= 1.0
    assert "jailbreak_benign_flagged" in metrics["stages"]["probe"]["summary"]
    assert (out / "refusal" / "direction.safetensors").is_file()
    assert (out / "defense" / "generations.jsonl").read_text().count("\n") > 0
    page = (out / "report.html").read_text()
    assert "Headline metrics" in page and page.count('class="plotly-graph-div"') >= 5
    assert "<script src=" not in page  # plotly.js is inlined: the page opens with no network
    assert first < 300, f"fast demo took {first:.0f} s"
    t0 = time.perf_counter()
    run_demo(tmp_path / "out", fast=True)  # every stage cached
    assert time.perf_counter() - t0 < first / 3
    assert doc["summary"]


def test_demo__output_path_that_is_a_file_is_refused(tmp_path):
    f = tmp_path / "f"
    f.write_text("x")
    with pytest.raises(BadInputError, match="is a file"):
        run_demo(f, fast=True)


def test_demo__stage_settings_name_real_config_keys():
    from safety_probes.demo import FAST, FULL, STAGE_SETTINGS

    for stage, keys in STAGE_SETTINGS.items():
        for k in keys:
            assert k in FULL and k in FAST or k == "fast", (stage, k)
    # every setting is read by some stage, so a changed setting never goes unnoticed
    used = {k for keys in STAGE_SETTINGS.values() for k in keys}
    assert set(FULL) - used <= {"smollm", "backdoor"}, set(FULL) - used


@pytest.mark.slow
def test_demo__smollm_block_stage_gates_on_both_probes(tmp_path):
    from safety_probes.demo import (
        FAST,
        stage_defense_smollm,
        stage_jailbreak_probe,
        stage_probe,
    )
    from safety_probes.report import summary_rows
    from safety_probes.stages import Context

    name = "smollm2-135m-instruct"
    ctx = Context(tmp_path / "out", dict(FAST, fast=True, model=name))
    (tmp_path / "out").mkdir()
    stage_probe(ctx, name, "-smollm")
    jb = stage_jailbreak_probe(ctx, name, "-smollm")
    assert jb["probe"].endswith("jailbreak-attempt-smollm.safetensors")
    res = stage_defense_smollm(ctx)
    assert res["gate_probes"] == ["intent", "jailbreak"]
    table = res["table"]
    assert set(table) == {"none", "probe-gate/block", "intent-gate/block"}
    n = FAST["defense_n"]
    for row in table.values():
        assert set(row) == {"harmful", "jailbreak", "harmless", "borderline", "jailbreak-harmless"}
        assert all(v["n"] == n for v in row.values())
    # the OR gate fires wherever the intent probe alone does, on the same prompts
    for s in table["none"]:
        assert (
            table["probe-gate/block"][s]["gate_rate"] >= table["intent-gate/block"][s]["gate_rate"]
        )
    rows = summary_rows({"stages": {"defense_smollm": res}})
    assert [r[0] for r in rows] == [f"smollm {k}" for k in table]
    assert "harmless in jailbreaks" in rows[1][2]
