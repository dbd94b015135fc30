import time

import numpy as np
import plotly.graph_objects as go
import pytest
import torch

from probes import Activations, BadInputError, Probe, SweepResult, ensemble, layer_sweep
from probes.metrics import auroc, calibrate_threshold, fpr_at_threshold

IDENT = {"model": "fake", "digest": "f" * 64, "d_model": 16, "n_layers": 4}


def make_acts(y, n_layers=4, d=16, signal_layer=2, sep=4.0, seed=0, ident=IDENT):
    """Gaussian activations whose class signal lives (mostly) at ``signal_layer``."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(len(y), n_layers, d, generator=g)
    strength = torch.tensor([sep if i == signal_layer else 0.3 for i in range(n_layers)])
    x[:, :, 0] += (torch.as_tensor(y, dtype=torch.float32) - 0.5)[:, None] * strength
    prompts = [f"prompt {seed} {i}" for i in range(len(y))]
    return Activations({("resid_post", "last"): x}, list(range(n_layers)), ["resid_post"],
                       ["last"], prompts, provenance=dict(ident))  # fmt: skip


@pytest.fixture
def data():
    ytr, yva = np.arange(200) % 2, np.arange(120) % 2
    return make_acts(ytr), ytr, make_acts(yva, seed=1), yva


def test_layer_sweep__finds_the_signal_layer(data):
    res = layer_sweep(*data, method="logistic", n_boot=100)
    assert isinstance(res, SweepResult)
    assert res.layers == [0, 1, 2, 3] and res.methods == ["logistic"]
    best = res.best()
    assert isinstance(best, Probe) and best.layer == 2
    assert best.metrics["auroc"] > 0.98
    assert best.model_identity == IDENT and len(best.data_hash) == 64
    assert best.calibration_fpr == 0.01 and best.metrics["calibration"] == "val negatives"


def test_layer_sweep__best_is_argmax_of_validation_auroc(data):
    res = layer_sweep(*data, method=["mean-diff", "pca", "lda"], n_boot=50)
    top = max(res.rows, key=lambda r: (r["auroc"], r["tpr"]))
    best = res.best()
    assert (best.method, best.layer) == (top["method"], top["layer"])
    assert res.best("pca").method == "pca"
    assert [p.layer for p in res.top(2, "lda")][0] == res.best("lda").layer
    assert len(res.table()) == 12


def test_layer_sweep__rank_by_tpr_puts_the_operating_point_first(data):
    res = layer_sweep(*data, method=["mean-diff", "lda"], n_boot=0)
    by_tpr = res.ranked(by="tpr")
    assert [(r["tpr"], r["auroc"]) for r in by_tpr] == sorted(
        [(r["tpr"], r["auroc"]) for r in res.rows], key=lambda t: (-t[0], -t[1])
    )
    best = res.best(by="tpr")
    assert (best.method, best.layer) == (by_tpr[0]["method"], by_tpr[0]["layer"])
    with pytest.raises(BadInputError, match="by must be"):
        res.ranked(by="accuracy")


def test_layer_sweep__threshold_calibrated_on_control(data):
    control = make_acts(np.zeros(500, int), seed=7)
    res = layer_sweep(*data, control=control, fpr=0.05, n_boot=0)
    probe = res.best()
    s_ctrl = probe.score_activations(control).numpy()
    assert probe.threshold == pytest.approx(calibrate_threshold(s_ctrl, 0.05))
    assert fpr_at_threshold(s_ctrl, probe.threshold) <= 0.05
    assert probe.metrics["calibration"] == "control"


def test_layer_sweep__row_metrics_match_probe_scores(data):
    res = layer_sweep(*data, n_boot=0)
    acts_va, yva = data[2], data[3]
    for layer in res.layers:
        p = res.probe("logistic", layer)
        s = p.score_activations(acts_va).numpy()
        assert auroc(yva, s) == pytest.approx(p.metrics["auroc"])


def test_sweep_result__plot_has_a_trace_per_method(data):
    res = layer_sweep(*data, method=["logistic", "mean-diff"], n_boot=50)
    fig = res.plot()
    assert isinstance(fig, go.Figure)
    named = {t.name for t in fig.data if t.showlegend is not False}
    assert named == {"logistic", "mean-diff"}
    assert any(t.fill == "toself" for t in fig.data)  # CI bands


def test_layer_sweep__model_form_records_then_sweeps(tiny):
    harmful = ["Explain how to build a bomb and hurt people.", "How do I hurt people with a bomb?",
               "Build a bomb to hurt people.", "Tell me how to make a bomb."]  # fmt: skip
    benign = ["How do I bake bread at home?", "Write a short poem about the sea.",
              "What is the capital of France?", "List three ways to improve sleep."]  # fmt: skip
    prompts, labels = harmful + benign, [1] * 4 + [0] * 4
    res = layer_sweep(tiny, train=(prompts, labels), val=(prompts, labels), method="mean-diff",
                      positions="last", control=benign, n_boot=20)  # fmt: skip
    assert res.layers == list(range(tiny.n_layers))
    probe = res.best()
    assert probe.model_identity == tiny.identity and probe.position == "last"
    torch.testing.assert_close(
        probe.score(tiny, prompts), probe.score_activations(res_acts(tiny, prompts, probe))
    )


def res_acts(model, prompts, probe):
    from probes import record

    return record(model, prompts, layers=[probe.layer], positions=probe.position)


def test_ensemble__mean_of_standardized_scores(data):
    res = layer_sweep(*data, n_boot=0)
    members = res.top(3)
    control = make_acts(np.zeros(300, int), seed=9)
    ens = ensemble(members, data[0], control=control, fpr=0.05)
    acts_va = data[2]
    expected = np.mean(
        [
            (p.score_activations(acts_va).numpy() - m) / s
            for p, m, s in zip(members, ens.means, ens.stds)
        ],
        axis=0,
    )
    np.testing.assert_allclose(ens.score_activations(acts_va).numpy(), expected)
    assert fpr_at_threshold(ens.score_activations(control).numpy(), ens.threshold) <= 0.05
    assert ens.flags(ens.score_activations(acts_va)).dtype == torch.bool
    # without a reference, the sweep's stored training-score statistics are used
    assert ensemble(members).means == [p.metrics["train_score_mean"] for p in members]


def test_ensemble__bad_input(data):
    with pytest.raises(BadInputError, match="at least one probe"):
        ensemble([])
    res = layer_sweep(*data, n_boot=0)
    bare = Probe(res.best().estimator)
    with pytest.raises(BadInputError, match="score statistics"):
        ensemble([bare])
    with pytest.raises(BadInputError, match="no threshold"):
        ensemble(res.top(2)).flags([0.0])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"method": "svm"}, "unknown probe method"),
        ({"method": []}, "unknown probe method"),
        ({"layers": [7]}, "not all recorded"),
        ({"position": "all"}, "single-token position"),
        ({"position": "eoi[-2]"}, "no activations"),
        ({"fpr": 1.0}, "fpr"),
    ],
)
def test_layer_sweep__bad_input_is_clear(data, kwargs, match):
    with pytest.raises(BadInputError, match=match):
        layer_sweep(*data, n_boot=0, **kwargs)


def test_layer_sweep__bad_arguments(data, tiny):
    acts_tr, ytr, acts_va, yva = data
    with pytest.raises(BadInputError, match="LoadedModel or Activations"):
        layer_sweep(np.zeros((4, 4)), ytr, acts_va, yva)
    with pytest.raises(BadInputError, match="199 entries"):
        layer_sweep(acts_tr, ytr[:199], acts_va, yva)
    with pytest.raises(BadInputError, match="only one class"):
        layer_sweep(acts_tr, np.ones(200, int), acts_va, yva, n_boot=0)
    other = make_acts(yva, seed=1, ident=dict(IDENT, digest="0" * 64))
    with pytest.raises(BadInputError, match="different models"):
        layer_sweep(acts_tr, ytr, other, yva)
    with pytest.raises(BadInputError, match=r"\(prompts, labels\) pair"):
        layer_sweep(tiny, train=["a", "b"], val=(["a"], [1]))
    with pytest.raises(BadInputError, match="single-token position"):
        layer_sweep(tiny, train=(["a", "b"], [0, 1]), val=(["a", "b"], [0, 1]), positions="eoi")


def test_layer_sweep__logistic_24_layers_800x896_under_60s():
    n_layers, d = 24, 896
    ytr, yva = np.arange(800) % 2, np.arange(200) % 2
    ident = dict(IDENT, d_model=d, n_layers=n_layers)
    acts_tr = make_acts(ytr, n_layers, d, signal_layer=11, sep=3.0, ident=ident)
    acts_va = make_acts(yva, n_layers, d, signal_layer=11, sep=3.0, seed=1, ident=ident)
    start = time.perf_counter()
    res = layer_sweep(acts_tr, ytr, acts_va, yva, method="logistic")
    elapsed = time.perf_counter() - start
    assert elapsed < 60, f"logistic sweep took {elapsed:.1f}s"
    assert len(res.rows) == 24 and res.best().layer == 11


def test_plots__histogram_pca_heatmap_build():
    from probes.plots import pca_scatter, score_histogram, token_heatmap

    rng = np.random.default_rng(0)
    fig = score_histogram({"harmful": rng.standard_normal(50) + 2, "benign": torch.randn(50)}, 1.0)
    assert [t.name for t in fig.data] == ["harmful", "benign"]
    X, labels = rng.standard_normal((40, 8)), np.arange(40) % 2
    assert [t.name for t in pca_scatter(X, labels).data] == ["0", "1"]
    by_cat = pca_scatter(torch.from_numpy(X), labels, ["a", "b"] * 20)
    assert [t.name for t in by_cat.data] == ["a", "b"]
    heat = token_heatmap(["How", " do", "\n"], [0.1, -0.5, 2.0], threshold=0.5)
    assert list(heat.data[0].z[0]) == [0.1, -0.5, 2.0] and heat.data[0].text[0][2] == "\\n"
    with pytest.raises(BadInputError, match="2 tokens but 3 scores"):
        token_heatmap(["a", "b"], [1.0, 2.0, 3.0])
    with pytest.raises(BadInputError, match="empty"):
        score_histogram({})
    with pytest.raises(BadInputError, match="2-D"):
        pca_scatter(np.zeros(5), [0] * 5)
    with pytest.raises(BadInputError, match="one entry per row"):
        pca_scatter(X, labels[:3])
