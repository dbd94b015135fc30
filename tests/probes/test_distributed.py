"""Data-parallel recording: two torchrun ranks (gloo, CPU) build the single-process store."""

import json
import os
import socket
import subprocess
import sys

import torch

from probes import record_to_store
from probes.distributed import record_distributed, shard_slice
from probes.store import ActivationStore

PROMPTS = [f"Tell me about topic {i} and the sea" + " please" * (i % 5) for i in range(40)]
KW = dict(layers="all", positions=["last", "mean"], shard_size=8)
SMALL = dict(layers=[0], shard_size=8)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(tmp_path, model_dir, out, *extra):
    data = tmp_path / "prompts.jsonl"
    data.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    cmd = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(_free_port()),
        "-m", "probes.distributed", "--model", str(model_dir), "--data", str(data),
        "--out", str(out), "--layers", "all", "--positions", "last,mean", "--shard-size", "8",
        "--device", "cpu", "--dtype", "float32", "--json", *extra,
    ]  # fmt: skip
    scratch = tmp_path / "tmp"  # torchrun's own torchelastic_* folders land here, not in /tmp
    scratch.mkdir(exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false", TMPDIR=str(scratch))
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)


def test_shard_slice__contiguous_disjoint_and_covering():
    for n, world in [(5, 2), (2, 3), (7, 4), (0, 2)]:
        parts = [list(shard_slice(n, r, world)) for r in range(world)]
        assert [i for p in parts for i in p] == list(range(n))


def test_record_distributed__two_ranks_equal_single_process(tiny, tiny_dir, tmp_path):
    proc = _torchrun(tmp_path, tiny_dir, tmp_path / "dist")
    assert proc.returncode == 0, proc.stderr[-4000:]
    doc = json.loads(proc.stdout.strip().splitlines()[-1])
    assert doc["world_size"] == 2 and doc["shards"] == 5
    single = record_to_store(tiny, PROMPTS, tmp_path / "single", **KW)
    merged = ActivationStore(tmp_path / "dist")
    assert merged.manifest == single.manifest  # same keys, shard list, digests, provenance
    assert not list((tmp_path / "dist").glob("manifest.rank*.json"))
    a, b = merged.load(), single.load()
    assert a.prompts == b.prompts and a.provenance == b.provenance
    for key in b.data:
        torch.testing.assert_close(a.data[key], b.data[key], rtol=0, atol=0)


def test_record_distributed__resumes_from_another_world_size(tiny, tmp_path, monkeypatch):
    import probes.distributed as pd

    single = record_to_store(tiny, PROMPTS, tmp_path / "single", **SMALL)
    # rank 1 of an interrupted 2-rank run left its partial manifest and shards behind
    monkeypatch.setattr(pd, "_init", lambda model: (1, 2, False))
    monkeypatch.setattr(pd, "_barrier", lambda world: None)
    record_distributed(tiny, PROMPTS, tmp_path / "d", **SMALL)
    assert (tmp_path / "d" / "manifest.rank1.json").is_file()
    # a single-process re-run records only rank 0's shards and merges
    monkeypatch.setattr(pd, "_init", lambda model: (0, 1, False))
    written, real = [], pd.write_shard
    monkeypatch.setattr(pd, "write_shard", lambda *a, **k: written.append(a[4]) or real(*a, **k))
    store = record_distributed(tiny, PROMPTS, tmp_path / "d", **SMALL)
    assert written == [0, 8]
    assert store.manifest == single.manifest
    assert not list((tmp_path / "d").glob("manifest.rank*.json"))


def test_record_distributed__without_launcher_runs_as_one_process(tiny, tmp_path, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    store = record_distributed(tiny, PROMPTS[:10], tmp_path / "d", layers=[0], shard_size=4)
    assert store.complete and len(store.manifest["shards"]) == 3
    torch.testing.assert_close(
        store.load()["resid_post"],
        record_to_store(tiny, PROMPTS[:10], tmp_path / "s", layers=[0]).load()["resid_post"],
    )
