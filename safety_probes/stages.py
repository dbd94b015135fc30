"""Cached pipeline stages: each stage writes its outputs once, a re-run skips it.

A stage is a function ``fn(ctx) -> dict`` (JSON-able metrics). Its result is
stored in ``OUT/stages/<name>.json`` together with a hash of the stage's
configuration; a re-run with the same configuration loads it instead of
recomputing. Stage files are written atomically, so an interrupted run
(Ctrl-C) resumes from the last finished stage. Figures are stored as plotly
JSON in ``OUT/figures/`` so the report can always be rebuilt from the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from probes.allocator import release_free_memory
from probes.errors import BadInputError


def atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def check_out_dir(out: Path) -> Path:
    """An output folder we can write to, or a one-line BadInputError saying why not."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise BadInputError(f"output path {out} exists and is a file, not a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        raise BadInputError(f"output folder {out} is not writable: {exc.strerror}") from None
    return out


@dataclass
class Context:
    """Shared state of one pipeline run."""

    out: Path
    config: dict
    objects: dict[str, Any] = field(default_factory=dict)  # in-memory (model, probe, ...)
    results: dict[str, dict] = field(default_factory=dict)
    figures: dict[str, Any] = field(default_factory=dict)

    def log(self, msg: str) -> None:
        print(f"[demo] {msg}", file=sys.stderr, flush=True)

    def figure(self, name: str, fig) -> None:
        """Keep a plotly figure for the report (stored as JSON)."""
        atomic_write_text(self.out / "figures" / f"{name}.json", fig.to_json())
        self.figures[name] = fig

    def write_jsonl(self, rel: str, rows: list[dict]) -> None:
        atomic_write_text(self.out / rel, "".join(json.dumps(r) + "\n" for r in rows))


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_stage(ctx: Context, name: str, fn: Callable[[Context], dict], deps: dict) -> dict:
    """Run ``fn`` unless ``OUT/stages/<name>.json`` holds a result for the same ``deps``."""
    key = _hash(deps)
    path = ctx.out / "stages" / f"{name}.json"
    if path.is_file():
        try:
            cached = json.loads(path.read_text())
        except ValueError:
            cached = {}
        if cached.get("key") == key:
            ctx.log(f"{name}: cached ({path})")
            ctx.results[name] = cached["result"]
            return cached["result"]
    ctx.log(f"{name}: running")
    t0 = time.perf_counter()
    result = fn(ctx)
    release_free_memory()  # what the stage freed goes back to the OS (probes.allocator)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    atomic_write_text(path, json.dumps({"key": key, "result": result}, indent=1, default=str))
    ctx.results[name] = result
    ctx.log(f"{name}: done in {result['seconds']} s")
    return result


def load_figures(out: Path) -> dict:
    """Figures stored by earlier runs (for a report rebuilt from the cache)."""
    import plotly.io as pio

    figs = {}
    for p in sorted((out / "figures").glob("*.json")):
        figs[p.stem] = pio.from_json(p.read_text())
    return figs
