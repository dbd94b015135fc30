"""The benchmarks run end to end on the tiny model (numbers are not checked, only shapes)."""

import json

import pytest

from safety_probes.bench import bench_record, run_bench
from safety_probes.bench_extra import bench_generate, bench_probe, synthetic_activations
from safety_probes.cli import main


def test_bench_record__accepts_a_model_folder(tiny_dir):
    doc = bench_record(str(tiny_dir), n_prompts=8, repeats=1, rounds=2)
    assert doc["n_prompts"] == 8 and doc["real_tokens"] > 0
    assert set(doc["tokens_per_s"]) >= {"record", "record_shared", "record_compiled",
                                        "hf_forward"}  # fmt: skip
    # every path ran once per round; its time is its best pass over both rounds
    assert all(len(t) == 2 for t in doc["pass_seconds"].values())
    for path, best in doc["best_pass_by_round"].items():
        assert len(best) == 2 and min(best) == min(doc["pass_seconds"][path])
    # the shared paths run the template head once: fewer tokens than the prompts hold
    shared = doc["run_tokens"]["record_shared"]
    assert 0 < doc["shared_prefix_tokens"] and shared < doc["real_tokens"]
    assert doc["run_tokens"]["record"] == doc["real_tokens"]
    assert doc["gflops_run"]["record_shared"] < doc["gflops"]["record_shared"]
    # the peak is the best of the squares and the tiny model's projections at a full batch
    shapes = doc["matmul_gflops_by_shape"]
    assert {"4096x4096x4096", "4096x64x128", "4096x128x64", "4096x64x32"} <= set(shapes)
    assert doc["matmul_peak_gflops"] == max(shapes.values()) > 0


def test_bench_record__refuses_zero_repeats_or_rounds(tiny_dir):
    from probes.errors import BadInputError

    with pytest.raises(BadInputError, match="repeats"):
        bench_record(str(tiny_dir), n_prompts=8, repeats=0)
    with pytest.raises(BadInputError, match="rounds"):
        bench_record(str(tiny_dir), n_prompts=8, rounds=0)


def test_synthetic_activations__shape_and_planted_signal():
    acts = synthetic_activations(40, 3, 16)
    x = acts["resid_post"]
    assert x.shape == (40, 3, 16) and acts.layers == [0, 1, 2]
    gap = (x[0::2].mean(0) - x[1::2].mean(0)).norm(dim=-1)
    assert gap[-1] > gap[0]


def test_bench_probe__synthetic_times_each_method():
    doc = bench_probe(synthetic=True, n_prompts=80, n_layers=3, d_model=16, n_boot=10)
    assert doc["shape"] == [80, 3, 16] and doc["source"] == "synthetic"
    for field in ("sweep_s", "sweep_ci_s", "per_layer_ms", "best_val_auroc"):
        assert set(doc[field]) == {"logistic", "mean-diff"}
    assert doc["best_val_auroc"]["mean-diff"] > 0.8


def test_bench_probe__on_recorded_activations(tiny):
    doc = bench_probe(tiny, n_prompts=24, n_boot=5)
    assert doc["source"] == "recorded" and doc["shape"] == [24, tiny.n_layers, tiny.d_model]
    assert doc["record_s"] > 0


def test_bench_generate__plain_steered_gated(tiny):
    doc = bench_generate(tiny, n_prompts=4, max_new_tokens=4, n_fit=8)
    assert set(doc["runs"]) == {"plain", "steered", "gated"}
    for r in doc["runs"].values():
        assert {"seconds", "tokens", "tokens_per_s", "overhead_pct"} <= set(r)
    assert doc["runs"]["plain"]["overhead_pct"] == 0.0
    assert 0 <= doc["runs"]["gated"]["fired"] <= 4
    assert tiny.n_active_hooks() == 0


def test_run_bench__unknown_benchmark_is_bad_input():
    from probes import BadInputError

    with pytest.raises(BadInputError, match="unknown benchmark"):
        run_bench("banana", model="x")


def test_cli__bench_probe_synthetic_json(tiny_dir, capsys):
    argv = ["bench", "probe", "--model", str(tiny_dir), "--synthetic", "--n-prompts", "40"]
    assert main([*argv, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["shape"] == [40, 3, 64] and doc["sweep_s"]


def test_cli__bench_record_zero_rounds_exits_2(tiny_dir, capsys):
    argv = ["bench", "record", "--model", str(tiny_dir), "--n-prompts", "8", "--rounds", "0"]
    assert main(argv) == 2
    assert "rounds must be at least 1" in capsys.readouterr().err
