"""Concurrency: steering in threads stays per model; stores are independent or locked."""

from __future__ import annotations

import threading

import pytest
import torch

import probes.store as st
from probes import BadInputError, load_model, record_to_store
from probes.store import ActivationStore
from steering.generate import last_logits
from steering.interventions import add
from tests.helpers import build_tiny_model
from tests.reliability.support import (
    PATIENCE,
    WRITER_REQUEST,
    partial_files,
    start_writer,
    wait_for_shard,
    writer_prompts,
)

PROMPTS = ["How do I bake bread?", "Write a short poem about the sea.", "Hi"]


@pytest.fixture(scope="module")
def tiny_b(tmp_path_factory):
    """A second tiny model with other weights (seed 1)."""
    path = build_tiny_model(tmp_path_factory.mktemp("tiny-b") / "qwen2-tiny-b", seed=1)
    return load_model(path, device="cpu", dtype="float32")


def test_add__two_models_steered_in_two_threads_see_only_their_own(tiny, tiny_b):
    gen = torch.Generator().manual_seed(0)
    jobs = {"a": (tiny, 8 * torch.randn(64, generator=gen)),
            "b": (tiny_b, 8 * torch.randn(64, generator=gen))}  # fmt: skip
    ref = {}
    for k, (model, v) in jobs.items():
        with add(model, v, layer=1):
            ref[k] = last_logits(model, PROMPTS)
        with add(model, jobs["b" if k == "a" else "a"][1], layer=1):  # the other's direction
            assert not torch.allclose(last_logits(model, PROMPTS), ref[k], atol=1e-3)
        assert not torch.allclose(last_logits(model, PROMPTS), ref[k], atol=1e-3)
    barrier, errors = threading.Barrier(2), []

    def steer(k: str) -> None:
        model, v = jobs[k]
        try:
            barrier.wait(timeout=PATIENCE)
            for _ in range(25):
                with add(model, v, layer=1):
                    got = last_logits(model, PROMPTS)
                torch.testing.assert_close(got, ref[k], rtol=1e-5, atol=1e-5)
        except BaseException as exc:  # reported by the main thread
            errors.append((k, exc))

    threads = [threading.Thread(target=steer, args=(k,)) for k in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=PATIENCE)
    assert not any(t.is_alive() for t in threads) and errors == []
    assert tiny.n_active_hooks() == 0 and tiny_b.n_active_hooks() == 0


def test_record_to_store__two_processes_at_once_are_independent(tiny, tiny_dir, tmp_path):
    """Two writer processes on two stores; a third writer on a busy store is refused."""
    n = 16
    outs = [tmp_path / "a", tmp_path / "b"]
    procs = [start_writer(tiny_dir, out, n, 100 * i, pause=0.5) for i, out in enumerate(outs)]
    try:
        wait_for_shard(outs[0], procs[0])
        if procs[0].poll() is None:  # still writing: a second writer must be refused
            with pytest.raises(BadInputError, match="another process is writing the store"):
                record_to_store(tiny, writer_prompts(n), outs[0], **WRITER_REQUEST)
        results = [p.communicate(timeout=PATIENCE) for p in procs]
    finally:
        for p in procs:
            p.kill()
    assert [p.returncode for p in procs] == [0, 0], [err[-2000:] for _, err in results]
    for i, out in enumerate(outs):
        got = ActivationStore(out).load()
        alone = record_to_store(tiny, writer_prompts(n, 100 * i), tmp_path / f"alone-{i}",
                                **WRITER_REQUEST).load()  # fmt: skip
        assert got.prompts == alone.prompts
        for key in alone.data:
            torch.testing.assert_close(got.data[key], alone.data[key])
        assert partial_files(out) == []


def test_record_to_store__second_writer_in_process_is_refused(tiny, tmp_path, monkeypatch):
    """A writer thread paused mid-store; a second writer gets the clear error, then all ends well."""
    prompts, out = writer_prompts(8), tmp_path / "s"
    real, started, release = st.record_slice, threading.Event(), threading.Event()

    def paused(*a, **k):
        started.set()
        assert release.wait(timeout=PATIENCE)
        return real(*a, **k)

    monkeypatch.setattr(st, "record_slice", paused)
    errors = []
    writer = threading.Thread(
        target=lambda: _capture(errors, record_to_store, tiny, prompts, out, **WRITER_REQUEST)
    )
    writer.start()
    try:
        assert started.wait(timeout=PATIENCE)
        manifest = (out / "manifest.json").read_bytes()
        with pytest.raises(BadInputError, match="another process is writing the store"):
            record_to_store(tiny, prompts, out, **WRITER_REQUEST)
        assert (out / "manifest.json").read_bytes() == manifest  # the loser changed nothing
    finally:
        release.set()
        writer.join(timeout=PATIENCE)
    assert errors == []
    monkeypatch.undo()
    acts = ActivationStore(out).load()
    alone = record_to_store(tiny, prompts, tmp_path / "alone", **WRITER_REQUEST).load()
    for key in alone.data:
        torch.testing.assert_close(acts.data[key], alone.data[key])


def _capture(errors: list, fn, *args, **kw) -> None:
    try:
        fn(*args, **kw)
    except BaseException as exc:  # reported by the main thread
        errors.append(exc)
