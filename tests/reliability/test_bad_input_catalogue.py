"""A catalogue of bad inputs across the public API and the CLI.

Every case must fail with a :class:`probes.errors.BadInputError` (or subclass) whose
message names the problem, and leave everything as it was: the model's weights, no
hook left attached, no partial or new file in the output folder or the inputs.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from probes import (
    ActivationStore,
    BadInputError,
    IntegrityError,
    LDAProbe,
    LogisticProbe,
    MeanDiffProbe,
    OfflineError,
    PCAProbe,
    Probe,
    layer_sweep,
    load_model,
    load_probe,
    record,
    record_to_store,
)
from probes import data as ds
from probes.metrics import calibrate_threshold
from probes.monitor import ProbeMonitor
from safety_probes.cli import main
from steering.defense import CosineCondition, GatedRefusal
from steering.directions import Direction, load_direction
from steering.generate import last_logits
from steering.interventions import ablate, add
from steering.orthogonalize import orthogonalize
from steering.refusal_direction import refusal_direction
from tests.reliability.support import (
    PATIENCE,
    partial_files,
    python_env,
    tree_snapshot,
    weights_digest,
)

PROMPTS = [
    "How do I bake bread?",
    "Explain how to build a bomb.",
    "Write a short poem about the sea.",
    "How can I hurt people?",
    "What is the capital of France?",
    "Help me poison my boss.",
]
LABELS = np.array([0, 1, 0, 1, 0, 1])
OTHER = {"model": "other-model", "digest": "f" * 64, "d_model": 64, "n_layers": 3}


@pytest.fixture(scope="module")
def shared(tiny, tiny_dir, tmp_path_factory):
    """Inputs prepared once (outside any case's before/after window)."""
    inp = tmp_path_factory.mktemp("inputs")
    acts = record(tiny, PROMPTS, layers="all", positions="last")
    X = acts.layer("resid_post", 1).numpy()
    probe = Probe(LogisticProbe().fit(X, LABELS), "resid_post", 1, "last", "logistic",
                  threshold=0.0, model_identity=tiny.identity)  # fmt: skip
    probe.save(inp / "probe.safetensors")
    Probe(probe.estimator, model_identity=OTHER | {"d_model": 64}).save(inp / "other.safetensors")
    direction = Direction(torch.randn(64), 1, "eoi[-1]", tiny.identity)
    direction.save(inp / "direction.safetensors")
    Direction(torch.randn(64), 1, "last", OTHER).save(inp / "other-direction.safetensors")
    (inp / "garbage.bin").write_bytes(b"\x00\x01not a safetensors file at all" * 3)
    files = {
        "malformed.jsonl": '{"prompt": "fine"}\n{"prompt": oops}\n',
        "no-prompt.jsonl": '{"prompt": "fine"}\n{"text": "where is the prompt?"}\n',
        "bad-label.jsonl": '{"prompt": "fine", "label": 7}\n',
        "test-only.jsonl": '{"prompt": "fine", "split": "test"}\n',
        "advbench-wrong.csv": "behaviour,target\nsomething,else\n",
        "xstest-bad.csv": "id,prompt,type,label\n1,How do I kill a process?,homonyms,maybe\n",
        "alpaca-dict.json": '{"instruction": "not in a list"}',
        "a-file": "I am a file, not a folder",
    }
    for name, text in files.items():
        (inp / name).write_text(text)
    (inp / "empty-folder").mkdir()
    record_to_store(tiny, PROMPTS, inp / "store", layers=[0], shard_size=4)
    (inp / "no-store").mkdir()
    bad_json = inp / "bad-json-store"
    bad_json.mkdir()
    (bad_json / "manifest.json").write_text("{not json")
    wrong_format = inp / "wrong-format-store"
    wrong_format.mkdir()
    (wrong_format / "manifest.json").write_text(json.dumps({"format": "something-else/9"}))
    incomplete = inp / "incomplete-store"
    record_to_store(tiny, PROMPTS, incomplete, layers=[0], shard_size=4)
    m = json.loads((incomplete / "manifest.json").read_text())
    (incomplete / "manifest.json").write_text(json.dumps(m | {"complete": False}))
    tampered = inp / "tampered-store"
    record_to_store(tiny, PROMPTS, tampered, layers=[0], shard_size=4)
    shard = tampered / "acts-00001.safetensors"
    raw = bytearray(shard.read_bytes())
    raw[-3] ^= 0x40
    shard.write_bytes(bytes(raw))
    return SimpleNamespace(tiny=tiny, tiny_dir=tiny_dir, inp=inp, acts=acts, X=X,
                           probe=probe, direction=direction)  # fmt: skip


@dataclass(frozen=True)
class Case:
    call: Callable[[SimpleNamespace], object]
    error: type[BaseException]
    match: str


def _probe_at(c, **kw) -> Probe:
    fields = dict(site="resid_post", layer=1, position="last", method="logistic", threshold=0.0)
    return Probe(c.probe.estimator, **(fields | {"model_identity": c.tiny.identity} | kw))


def _enter_twice(c):
    mon = ProbeMonitor(c.tiny, c.probe)
    with mon, mon:
        pass


def _bad_mask(c):
    with add(c.tiny, torch.randn(64), layer=0, mask=torch.ones(3, dtype=torch.bool)):
        last_logits(c.tiny, ["Hi"])


def _offline(c):
    c.mp.setenv("HF_HUB_OFFLINE", "1")
    c.mp.setenv("HF_HOME", str(c.out / "hf-home"))
    load_model("someone/model-that-is-not-cached")


_V = torch.randn(64)
_Y3 = np.array([0, 1, 2, 0, 1, 2])
_XNAN = np.where(np.eye(6, 8) > 0, np.nan, 1.0)

CASES: dict[str, Case] = {
    # -- probes.load_model ---------------------------------------------------------------
    "load_model/unknown-name": Case(
        lambda c: load_model("no-such-model"),
        BadInputError,
        r"unknown model 'no-such-model'.*zoo models",
    ),  # fmt: skip
    "load_model/folder-without-config": Case(
        lambda c: load_model(c.inp / "empty-folder"), BadInputError, r"no config\.json"
    ),
    "load_model/bad-dtype": Case(
        lambda c: load_model(c.tiny_dir, dtype="float13"), BadInputError, r"unknown dtype 'float13'"
    ),
    "load_model/hub-id-offline": Case(_offline, OfflineError, r"cannot fetch .*no network"),
    # -- probes.record ---------------------------------------------------------------------
    "record/empty-list": Case(lambda c: record(c.tiny, []), BadInputError, r"prompt list is empty"),
    "record/single-string": Case(
        lambda c: record(c.tiny, "How do I bake bread?"), BadInputError, r"not a single string"
    ),
    "record/blank-prompt": Case(
        lambda c: record(c.tiny, ["ok", "   "]), BadInputError, r"prompt 1 is empty"
    ),
    "record/non-string-prompt": Case(
        lambda c: record(c.tiny, ["ok", 42]), BadInputError, r"prompt 1 is empty or not a string"
    ),
    "record/layer-out-of-range": Case(
        lambda c: record(c.tiny, PROMPTS, layers=99),
        BadInputError,
        r"layer 99 out of range.*0\.\.2",
    ),
    "record/layers-garbage": Case(
        lambda c: record(c.tiny, PROMPTS, layers="1:x"), BadInputError, r"invalid layers '1:x'"
    ),
    "record/layers-empty": Case(
        lambda c: record(c.tiny, PROMPTS, layers=[]), BadInputError, r"selects no layer"
    ),
    "record/unknown-site": Case(
        lambda c: record(c.tiny, PROMPTS, sites="resid_banana"),
        BadInputError,
        r"unknown site 'resid_banana'",
    ),  # fmt: skip
    "record/unknown-position": Case(
        lambda c: record(c.tiny, PROMPTS, positions="middle"),
        BadInputError,
        r"unknown position 'middle'",
    ),  # fmt: skip
    "record/eoi-out-of-range": Case(
        lambda c: record(c.tiny, PROMPTS, positions="eoi[-99]"),
        BadInputError,
        r"'eoi\[-99\]' out of range",
    ),  # fmt: skip
    "record/all-combined": Case(
        lambda c: record(c.tiny, PROMPTS, positions=["all", "last"]),
        BadInputError,
        r"'all' cannot be combined",
    ),  # fmt: skip
    # -- probes.record_to_store / ActivationStore.load -------------------------------------
    "record_to_store/path-is-a-file": Case(
        lambda c: record_to_store(c.tiny, PROMPTS, c.inp / "a-file"),
        BadInputError,
        r"exists and is not a folder",
    ),  # fmt: skip
    "record_to_store/shard-size-0": Case(
        lambda c: record_to_store(c.tiny, PROMPTS, c.out / "s", shard_size=0),
        BadInputError,
        r"shard_size must be >= 1",
    ),  # fmt: skip
    "record_to_store/bad-layers-creates-nothing": Case(
        lambda c: record_to_store(c.tiny, PROMPTS, c.out / "s", layers="7"),
        BadInputError,
        r"layer 7 out of range",
    ),  # fmt: skip
    "record_to_store/other-request": Case(
        lambda c: record_to_store(c.tiny, PROMPTS, c.inp / "store", layers=[1], shard_size=4),
        BadInputError,
        r"made for a different request",
    ),  # fmt: skip
    "store.load/not-a-store": Case(
        lambda c: ActivationStore(c.inp / "no-store").load(),
        BadInputError,
        r"not an activation store \(no manifest\.json\)",
    ),  # fmt: skip
    "store.load/manifest-not-json": Case(
        lambda c: ActivationStore(c.inp / "bad-json-store").load(),
        IntegrityError,
        r"manifest\.json is not valid JSON",
    ),  # fmt: skip
    "store.load/wrong-format": Case(
        lambda c: ActivationStore(c.inp / "wrong-format-store").load(),
        IntegrityError,
        r"not a safety-probes-store/1 manifest",
    ),  # fmt: skip
    "store.load/incomplete": Case(
        lambda c: ActivationStore(c.inp / "incomplete-store").load(),
        BadInputError,
        r"incomplete; re-run the recording to resume",
    ),  # fmt: skip
    "store.load/tampered-shard": Case(
        lambda c: ActivationStore(c.inp / "tampered-store").load(),
        IntegrityError,
        r"acts-00001\.safetensors is missing or fails its sha256",
    ),  # fmt: skip
    # -- probes.layer_sweep ------------------------------------------------------------------
    "layer_sweep/wrong-source": Case(
        lambda c: layer_sweep("a model, honestly"),
        BadInputError,
        r"takes a LoadedModel or Activations first, got str",
    ),  # fmt: skip
    "layer_sweep/label-count": Case(
        lambda c: layer_sweep(c.acts, LABELS[:3], c.acts, LABELS, n_boot=10),
        BadInputError,
        r"y_train has 3 entries, expected 6",
    ),  # fmt: skip
    "layer_sweep/non-binary-labels": Case(
        lambda c: layer_sweep(c.acts, _Y3, c.acts, LABELS, n_boot=10),
        BadInputError,
        r"y_train must be 0/1",
    ),  # fmt: skip
    "layer_sweep/unknown-method": Case(
        lambda c: layer_sweep(c.acts, LABELS, c.acts, LABELS, method="svm", n_boot=10),
        BadInputError,
        r"unknown probe method 'svm'",
    ),  # fmt: skip
    "layer_sweep/layer-not-recorded": Case(
        lambda c: layer_sweep(c.acts, LABELS, c.acts, LABELS, layers=[5], n_boot=10),
        BadInputError,
        r"layers \[5\] are not all recorded",
    ),  # fmt: skip
    "layer_sweep/train-not-a-pair": Case(
        lambda c: layer_sweep(c.tiny, train="prompts", val=(PROMPTS, LABELS)),
        BadInputError,
        r"train must be a \(prompts, labels\) pair",
    ),  # fmt: skip
    "layer_sweep/position-all": Case(
        lambda c: layer_sweep(
            c.tiny, train=(PROMPTS, LABELS), val=(PROMPTS, LABELS), positions="all"
        ),
        BadInputError,
        r"one single-token position, got 'all'",
    ),  # fmt: skip
    # -- estimators -------------------------------------------------------------------------
    "fit/one-class": Case(
        lambda c: LogisticProbe().fit(c.X, np.zeros(6)), BadInputError, r"only one class"
    ),
    "fit/three-classes": Case(
        lambda c: MeanDiffProbe().fit(c.X, _Y3), BadInputError, r"exactly two classes"
    ),
    "fit/continuous-labels": Case(
        lambda c: LDAProbe().fit(c.X, np.linspace(0, 1, 6)), BadInputError, r"continuous"
    ),
    "fit/nan-features": Case(lambda c: MeanDiffProbe().fit(_XNAN, LABELS), BadInputError, r"NaN"),
    "fit/length-mismatch": Case(
        lambda c: PCAProbe().fit(c.X, LABELS[:4]), BadInputError, r"inconsistent numbers of samples"
    ),
    "fit/negative-C": Case(
        lambda c: LogisticProbe(C=-1.0).fit(c.X, LABELS), BadInputError, r"C must be a positive"
    ),
    "fit/bad-shrinkage": Case(
        lambda c: LDAProbe(shrinkage=2.0).fit(c.X, LABELS),
        BadInputError,
        r"shrinkage must be 'auto', a float in \[0, 1\]",
    ),  # fmt: skip
    "fit/bad-pca-mode": Case(
        lambda c: PCAProbe(mode="kernel").fit(c.X, LABELS),
        BadInputError,
        r"mode must be 'pairs' or 'means'",
    ),  # fmt: skip
    "decision_function/wrong-width": Case(
        lambda c: c.probe.estimator.decision_function(np.ones((2, 5))),
        BadInputError,
        r"5 features.*expecting 64",
    ),  # fmt: skip
    # -- metrics.calibrate_threshold -------------------------------------------------------
    "calibrate_threshold/fpr-zero": Case(
        lambda c: calibrate_threshold([0.1, 0.2], fpr=0.0),
        BadInputError,
        r"fpr must be in \(0, 1\)",
    ),
    "calibrate_threshold/fpr-above-one": Case(
        lambda c: calibrate_threshold([0.1, 0.2], fpr=1.5), BadInputError, r"fpr must be in"
    ),
    "calibrate_threshold/fpr-bool": Case(
        lambda c: calibrate_threshold([0.1, 0.2], fpr=True), BadInputError, r"must be a number"
    ),
    "calibrate_threshold/empty": Case(
        lambda c: calibrate_threshold([]), BadInputError, r"benign control scores is empty"
    ),
    "calibrate_threshold/nan": Case(
        lambda c: calibrate_threshold([0.1, float("nan")]), BadInputError, r"NaN or inf"
    ),
    "calibrate_threshold/2d": Case(
        lambda c: calibrate_threshold(np.ones((3, 2))), BadInputError, r"must be 1-D"
    ),
    "calibrate_threshold/strings": Case(
        lambda c: calibrate_threshold(["high", "low"]), BadInputError, r"must be numeric"
    ),
    # -- load_probe / Probe.score / ProbeMonitor ----------------------------------------------
    "load_probe/missing-file": Case(
        lambda c: load_probe(c.inp / "nope.safetensors"), BadInputError, r"cannot read probe file"
    ),
    "load_probe/garbage": Case(
        lambda c: load_probe(c.inp / "garbage.bin"), IntegrityError, r"garbage\.bin"
    ),
    "load_probe/a-direction-file": Case(
        lambda c: load_probe(c.inp / "direction.safetensors"),
        IntegrityError,
        r"not a safety-probes-probe/1 file",
    ),  # fmt: skip
    "load_probe/other-model": Case(
        lambda c: load_probe(c.inp / "other.safetensors", c.tiny),
        BadInputError,
        r"made for another model",
    ),  # fmt: skip
    "Probe.score/empty-prompts": Case(
        lambda c: c.probe.score(c.tiny, []), BadInputError, r"prompt list is empty"
    ),
    "Probe.score/layer-beyond-model": Case(
        lambda c: _probe_at(c, layer=7).score(c.tiny, PROMPTS), BadInputError, r"reads layer 7"
    ),
    "Probe.score/unknown-position": Case(
        lambda c: _probe_at(c, position="middle").score(c.tiny, PROMPTS),
        BadInputError,
        r"unknown position 'middle'",
    ),  # fmt: skip
    "ProbeMonitor/no-probes": Case(
        lambda c: ProbeMonitor(c.tiny, []), BadInputError, r"at least one probe"
    ),
    "ProbeMonitor/not-a-probe": Case(
        lambda c: ProbeMonitor(c.tiny, {"p": "probe.safetensors"}),
        BadInputError,
        r"'p' is not a Probe",
    ),  # fmt: skip
    "ProbeMonitor/token-level-position": Case(
        lambda c: ProbeMonitor(c.tiny, _probe_at(c, position="all")),
        BadInputError,
        r"'last', 'eoi\[-k\]' or 'mean', not 'all'",
    ),  # fmt: skip
    "ProbeMonitor/entered-twice": Case(_enter_twice, BadInputError, r"already attached"),
    # -- probes.data --------------------------------------------------------------------------
    "data.load/unknown-set": Case(
        lambda c: ds.load("no-such-set"), BadInputError, r"unknown prompt set 'no-such-set'"
    ),
    "data.load/unknown-split": Case(
        lambda c: ds.load("harmful", "dev"), BadInputError, r"unknown split 'dev'"
    ),
    "data.load/missing-split": Case(
        lambda c: ds.load("borderline", "train"), BadInputError, r"borderline has no 'train' split"
    ),
    "data.load/unknown-category": Case(
        lambda c: ds.load("harmful", category="gardening"),
        BadInputError,
        r"no category 'gardening'",
    ),  # fmt: skip
    "data.load_jsonl/malformed": Case(
        lambda c: ds.load_jsonl(c.inp / "malformed.jsonl"),
        BadInputError,
        r"malformed\.jsonl, line 2: malformed JSON",
    ),  # fmt: skip
    "data.load_jsonl/no-prompt": Case(
        lambda c: ds.load_jsonl(c.inp / "no-prompt.jsonl"),
        BadInputError,
        r"line 2: missing or empty 'prompt'",
    ),  # fmt: skip
    "data.load_jsonl/bad-label": Case(
        lambda c: ds.load_jsonl(c.inp / "bad-label.jsonl"),
        BadInputError,
        r"label must be 0, 1 or null, not 7",
    ),  # fmt: skip
    "data.load_jsonl/missing-file": Case(
        lambda c: ds.load_jsonl(c.inp / "nope.jsonl"), BadInputError, r"nope\.jsonl: cannot read"
    ),
    "data.wrap/single-string": Case(
        lambda c: ds.wrap("one prompt", "{prompt}!"), BadInputError, r"not a single string"
    ),
    "data.wrap/no-slot": Case(
        lambda c: ds.wrap(PROMPTS, "no slot here"), BadInputError, r"no template id and has no"
    ),
    "data.wrap/no-template": Case(
        lambda c: ds.wrap(PROMPTS, []), BadInputError, r"at least one template"
    ),
    "data.load_benchmark/unknown": Case(
        lambda c: ds.load_benchmark("mmlu", c.inp / "a-file"),
        BadInputError,
        r"unknown benchmark 'mmlu'",
    ),  # fmt: skip
    "data.load_advbench/missing-column": Case(
        lambda c: ds.load_advbench(c.inp / "advbench-wrong.csv"),
        BadInputError,
        r"missing column 'goal'",
    ),  # fmt: skip
    "data.load_xstest/bad-label": Case(
        lambda c: ds.load_xstest(c.inp / "xstest-bad.csv"),
        BadInputError,
        r"row 1: label 'maybe' is not safe/unsafe",
    ),  # fmt: skip
    "data.load_alpaca/not-a-list": Case(
        lambda c: ds.load_alpaca(c.inp / "alpaca-dict.json"),
        BadInputError,
        r"expected a JSON list",
    ),  # fmt: skip
    # -- steering -------------------------------------------------------------------------------
    "add/wrong-width": Case(
        lambda c: add(c.tiny, torch.randn(32), layer=0).__enter__(),
        BadInputError,
        r"width 32 but d_model is 64",
    ),  # fmt: skip
    "add/no-layer": Case(lambda c: add(c.tiny, _V).__enter__(), BadInputError, r"needs a layer"),
    "add/nan-coeff": Case(
        lambda c: add(c.tiny, _V, layer=0, coeff=float("nan")).__enter__(),
        BadInputError,
        r"NaN or inf",
    ),  # fmt: skip
    "add/layer-out-of-range": Case(
        lambda c: add(c.tiny, _V, layer=3).__enter__(), BadInputError, r"layer 3 out of range"
    ),
    "add/bad-positions": Case(
        lambda c: add(c.tiny, _V, layer=0, positions="first").__enter__(),
        BadInputError,
        r"positions must be 'all' or 'last'",
    ),  # fmt: skip
    "add/mask-shape-inside-forward": Case(_bad_mask, BadInputError, r"mask has shape \(3,\)"),
    "add/direction-for-other-model": Case(
        lambda c: add(c.tiny, Direction(_V, 0, "last", OTHER)).__enter__(),
        BadInputError,
        r"direction was made for model 'other-model'",
    ),  # fmt: skip
    "ablate/zero-vector": Case(
        lambda c: ablate(c.tiny, torch.zeros(64)).__enter__(), BadInputError, r"zero vector"
    ),
    "ablate/nan-vector": Case(
        lambda c: ablate(c.tiny, torch.full((64,), float("nan"))).__enter__(),
        BadInputError,
        r"NaN or inf",
    ),  # fmt: skip
    "ablate/layer-out-of-range": Case(
        lambda c: ablate(c.tiny, _V, layers=[0, 5]).__enter__(),
        BadInputError,
        r"layer 5 out of range",
    ),  # fmt: skip
    "load_direction/missing": Case(
        lambda c: load_direction(c.inp / "nope.safetensors"), BadInputError, r"does not exist"
    ),
    "load_direction/garbage": Case(
        lambda c: load_direction(c.inp / "garbage.bin"), IntegrityError, r"garbage\.bin"
    ),
    "load_direction/a-probe-file": Case(
        lambda c: load_direction(c.inp / "probe.safetensors"),
        IntegrityError,
        r"probe\.safetensors is not a valid direction file",
    ),  # fmt: skip
    "load_direction/other-model": Case(
        lambda c: load_direction(c.inp / "other-direction.safetensors", c.tiny),
        BadInputError,
        r"made for model 'other-model'",
    ),  # fmt: skip
    "orthogonalize/zero-direction": Case(
        lambda c: orthogonalize(c.tiny, torch.zeros(64)), BadInputError, r"zero vector"
    ),
    "orthogonalize/wrong-width": Case(
        lambda c: orthogonalize(c.tiny, torch.ones(10)), BadInputError, r"width 10"
    ),
    "GatedRefusal/unknown-mode": Case(
        lambda c: GatedRefusal(c.tiny, c.probe, c.direction, mode="pray"),
        BadInputError,
        r"unknown mode 'pray'",
    ),  # fmt: skip
    "GatedRefusal/not-a-probe": Case(
        lambda c: GatedRefusal(c.tiny, "probe", c.direction),
        BadInputError,
        r"probe must be a Probe, got str",
    ),  # fmt: skip
    "GatedRefusal/steer-without-direction": Case(
        lambda c: GatedRefusal(c.tiny, c.probe, None, mode="steer"),
        BadInputError,
        r"mode 'steer' needs a refusal direction",
    ),  # fmt: skip
    "GatedRefusal/uncalibrated-probe": Case(
        lambda c: GatedRefusal(c.tiny, _probe_at(c, threshold=None), c.direction),
        BadInputError,
        r"no finite threshold",
    ),  # fmt: skip
    "GatedRefusal/threshold-outside-score-range": Case(
        lambda c: GatedRefusal(
            c.tiny,
            _probe_at(c, metrics={"train_score_mean": 0.0, "train_score_std": 1.0}),
            c.direction,
            threshold=1e6,
        ),
        BadInputError,
        r"threshold 1e\+06 is outside the probe's score range \[-10, 10\]",
    ),  # fmt: skip
    "GatedRefusal/cast-threshold-outside-cosine-range": Case(
        lambda c: GatedRefusal(
            c.tiny,
            CosineCondition(torch.ones(64), 1, 0.5, c.tiny.identity),
            c.direction,
            threshold=1.5,
        ),
        BadInputError,
        r"threshold 1.5 is outside the probe's score range \[-1, 1\] \(cosine similarity\)",
    ),  # fmt: skip
    "refusal_direction/too-few-train": Case(
        lambda c: refusal_direction(c.tiny, PROMPTS[:3], PROMPTS, progress=False),
        BadInputError,
        r"harmful has 3 prompts; at least 8",
    ),  # fmt: skip
    "refusal_direction/too-few-val": Case(
        lambda c: refusal_direction(
            c.tiny,
            PROMPTS * 2,
            PROMPTS * 2,
            harmful_val=PROMPTS[:2],
            harmless_val=PROMPTS,
            progress=False,
        ),
        BadInputError,
        r"harmful_val has 2 prompts; at least 4",
    ),  # fmt: skip
}

# CLI cases: argv (with {tiny}, {inp}, {out} placeholders) and the expected stderr line.
CLI_CASES: dict[str, tuple[list[str], str]] = {
    "fetch/unknown-model": (["fetch", "no-such-model"], r"unknown zoo model 'no-such-model'"),
    "record/unknown-model": (
        [
            "record",
            "--model",
            "no-such-model",
            "--data",
            "{inp}/test-only.jsonl",
            "--out",
            "{out}/s",
        ],
        r"unknown model 'no-such-model'",
    ),
    "record/model-folder-without-config": (
        ["record", "--model", "{inp}/empty-folder", "--data", "harmful", "--out", "{out}/s"],
        r"no config\.json",
    ),
    "record/unknown-dataset": (
        ["record", "--data", "no-such-set", "--out", "{out}/s"],
        r"unknown prompt set",
    ),
    "record/unknown-split": (
        ["record", "--data", "harmful", "--split", "dev", "--out", "{out}/s"],
        r"unknown split 'dev'",
    ),
    "record/malformed-jsonl": (
        ["record", "--data", "{inp}/malformed.jsonl", "--out", "{out}/s"],
        r"line 2: malformed JSON",
    ),
    "record/empty-split-of-file": (
        ["record", "--data", "{inp}/test-only.jsonl", "--split", "train", "--out", "{out}/s"],
        r"no prompts in .*test-only\.jsonl.* split 'train'",
    ),
    "record/layer-out-of-range": (
        [
            "record",
            "--model",
            "{tiny}",
            "--data",
            "{inp}/test-only.jsonl",
            "--layers",
            "99",
            "--out",
            "{out}/s",
        ],
        r"layer 99 out of range",
    ),  # fmt: skip
    "record/unknown-site": (
        [
            "record",
            "--model",
            "{tiny}",
            "--data",
            "{inp}/test-only.jsonl",
            "--sites",
            "banana",
            "--out",
            "{out}/s",
        ],
        r"unknown site 'banana'",
    ),  # fmt: skip
    "record/unknown-position": (
        [
            "record",
            "--model",
            "{tiny}",
            "--data",
            "{inp}/test-only.jsonl",
            "--positions",
            "middle",
            "--out",
            "{out}/s",
        ],
        r"unknown position 'middle'",
    ),  # fmt: skip
    "record/bad-dtype": (
        [
            "record",
            "--model",
            "{tiny}",
            "--data",
            "{inp}/test-only.jsonl",
            "--dtype",
            "float13",
            "--out",
            "{out}/s",
        ],
        r"unknown dtype 'float13'",
    ),  # fmt: skip
    "record/out-is-a-file": (
        ["record", "--model", "{tiny}", "--data", "{inp}/test-only.jsonl", "--out", "{inp}/a-file"],
        r"exists and is not a folder",
    ),  # fmt: skip
    "argparse/missing-out": (["record", "--data", "harmful"], r"required: --out"),
    "argparse/unknown-command": (["frobnicate"], r"invalid choice: 'frobnicate'"),
    "argparse/bad-bench-choice": (["bench", "banana"], r"invalid choice: 'banana'"),
}
PROGRESS = re.compile(
    r"^[\w ]+: +\d+%\|.*\|.*it/s\]$"
)  # a tqdm bar, e.g. "Loading weights: 100%|..."
SUBPROCESS_CASES = ("fetch/unknown-model", "record/malformed-jsonl", "argparse/missing-out")


@pytest.fixture
def case_dirs(shared, tmp_path, monkeypatch):
    """A clean output folder per case; runs from it so relative paths land there too."""
    out = tmp_path / "out"
    out.mkdir()
    monkeypatch.chdir(out)
    monkeypatch.setenv("SAFETY_PROBES_CACHE", str(tmp_path / "cache"))
    return SimpleNamespace(**vars(shared), out=out, mp=monkeypatch)


def _assert_unchanged(c, run: Callable[[], None]) -> None:
    weights, hooks_before = weights_digest(c.tiny.hf_model), c.tiny.n_active_hooks()
    before = tree_snapshot(c.out, c.inp)
    run()
    assert weights_digest(c.tiny.hf_model) == weights, "the model's weights changed"
    assert c.tiny.n_active_hooks() == hooks_before == 0, "a hook was left attached"
    assert partial_files(c.out) == [] and partial_files(c.inp) == []
    after = tree_snapshot(c.out, c.inp)
    assert after == before, f"files changed: {sorted(set(after) ^ set(before))}"


@pytest.mark.parametrize("name", list(CASES))
def test_api__bad_input_is_refused_cleanly(name, case_dirs):
    case = CASES[name]

    def run():
        with pytest.raises(BadInputError) as info:
            case.call(case_dirs)
        assert isinstance(info.value, case.error), f"{type(info.value).__name__}: {info.value}"
        assert re.search(case.match, str(info.value)), str(info.value)

    _assert_unchanged(case_dirs, run)


def _argv(c, argv: list[str]) -> list[str]:
    fill = {"tiny": str(c.tiny_dir), "inp": str(c.inp), "out": str(c.out)}
    return [a.format(**fill) for a in argv]


@pytest.mark.parametrize("name", list(CLI_CASES))
def test_cli__bad_input_exits_2_with_one_line(name, case_dirs, capsys):
    argv, match = CLI_CASES[name]

    def run():
        try:
            rc = main(_argv(case_dirs, argv))
        except SystemExit as exc:  # argparse errors
            rc = exc.code
        captured = capsys.readouterr()
        assert rc == 2 and "Traceback" not in captured.err and captured.out == ""
        lines = captured.err.strip().splitlines()
        if "{tiny}" in argv:  # the model loads first: its progress bar may precede the error
            lines = [line for line in lines if not PROGRESS.match(line)]
        assert len(lines) == 1, captured.err
        assert lines[0].startswith("safety-probes: error: ") and re.search(match, lines[0])

    _assert_unchanged(case_dirs, run)


def test_cli__subprocess_bad_input_exits_2_without_traceback(case_dirs):
    """The real entry point, in fresh processes (run side by side to keep this fast)."""
    procs = {
        name: subprocess.Popen(
            [
                "nice",
                "-n",
                "19",
                sys.executable,
                "-m",
                "safety_probes.cli",
                *_argv(case_dirs, CLI_CASES[name][0]),
            ],
            cwd=case_dirs.out,
            env=python_env() | {"SAFETY_PROBES_CACHE": str(case_dirs.out / "c")},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for name in SUBPROCESS_CASES
    }
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=PATIENCE)
        assert proc.returncode == 2, (name, err)
        assert "Traceback" not in err and out == ""
        lines = err.strip().splitlines()
        assert len(lines) == 1 and re.search(CLI_CASES[name][1], lines[0]), (name, err)
    assert sorted(p.name for p in Path(case_dirs.out).iterdir()) == []


def test_catalogue__is_large_enough():
    assert len(CASES) + len(CLI_CASES) >= 40
