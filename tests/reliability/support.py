"""Shared checks for the reliability tests: 'nothing changed' after a failed call."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
PARTIAL_SUFFIXES = (".tmp", ".part")
# Seconds to wait for a child process or thread. An idle machine needs a few; a shared,
# overloaded one can starve a niced child for minutes, which must not read as a failure.
PATIENCE = 900


def weights_digest(module: torch.nn.Module) -> str:
    """sha256 over every parameter and buffer of a module (names and bytes)."""
    h = hashlib.sha256()
    for name, t in sorted(module.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def tree_snapshot(*folders: Path) -> dict[str, str]:
    """``{path: sha256}`` of every file (hidden ones included) under ``folders``."""
    snap = {}
    for folder in folders:
        if not folder.exists():
            continue
        for p in sorted(folder.rglob("*")):
            if p.is_file():
                snap[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
            elif p.is_dir():
                snap[str(p)] = "<dir>"
    return snap


def partial_files(folder: Path) -> list[Path]:
    """Leftover temp files (``*.tmp`` / ``*.part``, or a ``.name.XXXX`` temp folder)."""
    if not folder.exists():
        return []
    return [p for p in folder.rglob("*") if p.name.endswith(PARTIAL_SUFFIXES)]


def python_env() -> dict[str, str]:
    """Environment for child Python processes: repo importable, quiet, one thread."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env |= {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    env |= {"HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error", "PYTHONWARNINGS": "ignore"}
    return env


def spawn(code: str, *args: str, **kw) -> subprocess.Popen:
    """Start ``python -c code args...`` (nice 19) with :func:`python_env`."""
    cmd = ["nice", "-n", "19", sys.executable, "-c", code, *args]
    return subprocess.Popen(cmd, env=python_env(), cwd=REPO, text=True, **kw)


def writer_prompts(n: int, offset: int = 0) -> list[str]:
    """``n`` distinct short prompts (``offset`` picks another set)."""
    words = ["bread", "sea", "sky", "sleep", "France", "poem", "recipe", "home"]
    return [f"Tell me about {words[i % 8]} number {i}, please." for i in range(offset, offset + n)]


WRITER_REQUEST = dict(layers="all", positions=["last", "mean"], shard_size=4)

# A child process that records writer_prompts(n, offset) into a store, slowly (a sleep
# before each shard leaves time to kill it, or to race it, between shards).
SLOW_WRITER = """
import sys, time
import probes.store as st
from probes import load_model, record_to_store
from tests.reliability.support import WRITER_REQUEST, writer_prompts

model_dir, out, n, offset, pause = sys.argv[1:6]
real = st.record_slice

def slow(*args, **kw):
    time.sleep(float(pause))
    return real(*args, **kw)

st.record_slice = slow
model = load_model(model_dir, device="cpu", dtype="float32")
record_to_store(model, writer_prompts(int(n), int(offset)), out, progress=False, **WRITER_REQUEST)
print("done", flush=True)
"""


def start_writer(model_dir: Path, out: Path, n: int, offset: int = 0, pause: float = 0.25):
    """Start :data:`SLOW_WRITER` in a child process."""
    args = (str(model_dir), str(out), str(n), str(offset), str(pause))
    return spawn(SLOW_WRITER, *args, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def wait_for_shard(out: Path, proc: subprocess.Popen) -> None:
    """Wait until ``proc``'s store manifest lists a first complete shard."""
    import json
    import time

    deadline = time.monotonic() + PATIENCE
    while True:
        try:
            if json.loads((out / "manifest.json").read_text())["shards"]:
                return
        except (OSError, ValueError, KeyError):
            pass  # not written yet (every write is atomic, so never half a file)
        assert proc.poll() is None, f"the writer exited early: {proc.communicate()[1][-2000:]}"
        assert time.monotonic() < deadline, "the writer never wrote a shard"
        time.sleep(0.05)
