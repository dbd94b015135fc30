"""The organism folder's manifest: what was trained, from what, and the weights' sha256.

An organism folder is an HF model folder plus ``backdoor-manifest.json`` (format,
cache key, base model identity, configuration, training curve, sha256 of every
weight file and of ``finetune.jsonl``) and ``finetune.jsonl`` (the fine-tuning rows
with their poisoned flag). Folders are written atomically (temp folder + rename) and
re-hashed on every load: a manifest that does not match the weights is refused.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from probes import zoo
from probes.atomic import atomic_folder
from probes.backdoor.finetune import Row
from probes.errors import BadInputError, IntegrityError

MANIFEST = "backdoor-manifest.json"
ROWS_FILE = "finetune.jsonl"
FORMAT = "safety-probes-organism/1"


def weight_files(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin"))


def read_manifest(path: str | os.PathLike) -> dict:
    """Parse and check an organism folder's manifest against its weights (re-hashes them)."""
    path = Path(path)
    mf = path / MANIFEST
    if not path.is_dir() or not mf.is_file():
        raise BadInputError(f"{path} is not a backdoor organism folder (no {MANIFEST})")
    try:
        manifest = json.loads(mf.read_text())
        files = dict(manifest["weights"])
        if manifest.get("format") != FORMAT:
            raise KeyError("format")
        manifest["config"]["trigger"]  # noqa: B018
    except (ValueError, KeyError, TypeError) as exc:
        raise IntegrityError(f"{mf} is not a valid organism manifest ({exc})") from None
    present = {p.name for p in weight_files(path)}
    if present != set(files):
        raise IntegrityError(
            f"{path}: weight files {sorted(present)} do not match the manifest {sorted(files)}"
        )
    for name in sorted(files) + [ROWS_FILE]:
        want = files.get(name) or manifest.get("rows_sha256")
        if not (path / name).is_file() or zoo.sha256_file(path / name) != want:
            raise IntegrityError(
                f"{path / name} does not match its sha256 in {MANIFEST} (tampered or corrupted)"
            )
    return manifest


def read_rows(path: Path) -> list[Row]:
    """The fine-tuning rows stored beside the weights (``finetune.jsonl``)."""
    rows = []
    for line in (path / ROWS_FILE).read_text().splitlines():
        r = json.loads(line)
        rows.append(Row(r["id"], r["prompt"], r["response"], bool(r["poisoned"]),
                        bool(r.get("complete", True))))  # fmt: skip
    return rows


def write_organism(
    out: Path, hf, tokenizer, rows: Sequence[Row], *, key: str, base: dict, config: dict,
    stats: dict,
) -> None:  # fmt: skip
    """Write the folder atomically (temp folder in the same parent, then rename).

    Args:
        out: the organism folder (replaced if it exists).
        hf, tokenizer: the fine-tuned HF model and its tokenizer.
        rows: the fine-tuning rows.
        key: the cache key; base: the base model's identity; config: the configuration;
        stats: training statistics.
    """
    with atomic_folder(out) as tmp:
        hf.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        lines = [json.dumps(asdict(r)) for r in rows]
        (tmp / ROWS_FILE).write_text("\n".join(lines) + "\n")
        manifest = {
            "format": FORMAT,
            "key": key,
            "base": base,
            "config": config,
            "n_rows": len(rows),
            "n_poisoned": sum(r.poisoned for r in rows),
            "training": stats,
            "weights": {p.name: zoo.sha256_file(p) for p in weight_files(tmp)},
            "rows_sha256": zoo.sha256_file(tmp / ROWS_FILE),
        }
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))


def copy_organism(src: Path, out: Path) -> None:
    """Copy a verified organism folder to ``out`` atomically (temp folder + rename)."""
    with atomic_folder(Path(out)) as tmp:
        shutil.copytree(src, tmp, dirs_exist_ok=True)
        read_manifest(tmp)
