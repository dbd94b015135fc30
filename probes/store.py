"""A resumable on-disk activation store: ``manifest.json`` + safetensors shards.

Layout of a store folder::

    manifest.json            request, model identity, prompt hash, shard list
    acts-00000.safetensors   one shard per ``shard_size`` prompts, in input order
    .lock                    held while a process writes

Every shard and the manifest are written to a temp file and renamed, so a
crash leaves the last complete shard list intact; a re-run with the same
request skips the shards already present (verified by sha256) and a re-run
of a finished store records nothing. Nothing is pickled. Prompts are encoded
shard by shard, so memory is bounded by ``shard_size``, not the prompt count.
:func:`write_shard`, :func:`store_key` and :func:`store_provenance` are the
building blocks that :mod:`probes.distributed` shares with :func:`record_to_store`.

Example:
    >>> store = record_to_store(model, prompts, "acts/", layers="all")  # doctest: +SKIP
    >>> acts = store.load()  # doctest: +SKIP
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import tempfile
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from probes.activations import Activations, prompts_hash
from probes.errors import BadInputError, IntegrityError
from probes.models import LoadedModel
from probes.prompts import common_n_eoi, encode
from probes.record import Request, record_slice
from probes.zoo import sha256_file

MANIFEST = "manifest.json"
FORMAT = "safety-probes-store/1"


def atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with disk_full_is_clear(path), os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def disk_full_is_clear(path: Path):
    """Report a full disk as a one-line error naming ``path`` (the store stays resumable)."""
    try:
        yield
    except OSError as exc:
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise BadInputError(
            f"disk full while writing {path}; free some space and re-run to resume"
        ) from exc


@contextmanager
def write_lock(folder: Path, name: str = ".lock"):
    """Hold an exclusive, non-blocking lock file ``folder/name`` while writing."""
    fh = open(folder / name, "w")
    try:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BadInputError(f"another process is writing the store {folder}") from None
        yield
    finally:
        fh.close()


@dataclass
class ActivationStore:
    """Handle on a store folder."""

    path: Path

    @property
    def manifest(self) -> dict:
        mf = self.path / MANIFEST
        if not mf.is_file():
            raise BadInputError(f"{self.path} is not an activation store (no {MANIFEST})")
        try:
            m = json.loads(mf.read_text())
        except ValueError as exc:
            raise IntegrityError(f"{mf} is not valid JSON: {exc}") from None
        if not isinstance(m, dict) or m.get("format") != FORMAT:
            raise IntegrityError(f"{mf} is not a {FORMAT} manifest")
        return m

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    def load(self) -> Activations:
        """Verify every shard's digest and shape, then concatenate into memory."""
        m = self.manifest
        if not m.get("complete"):
            raise BadInputError(f"store {self.path} is incomplete; re-run the recording to resume")
        _check_manifest(m, self.path / MANIFEST)
        req = m["request"]
        parts = []
        for sh in m["shards"]:
            parts.append(self._load_shard(m, sh, req))
        if not parts:
            raise IntegrityError(f"store {self.path} lists no shards")
        acts = Activations.concat(parts)
        acts.provenance = dict(m["provenance"])
        return acts

    def _load_shard(self, m: dict, sh: dict, req: dict) -> Activations:
        p = self.path / sh["file"]
        if not p.is_file() or sha256_file(p) != sh["sha256"]:
            raise IntegrityError(f"shard {p} is missing or fails its sha256 check")
        try:
            tensors = load_file(p)
        except (SafetensorError, OSError, ValueError) as exc:
            raise IntegrityError(f"shard {p} is not a readable safetensors file: {exc}") from None
        n = sh["end"] - sh["start"]
        data = {}
        for s in req["sites"]:
            for pos in req["positions"]:
                t = tensors.get(f"{s}|{pos}")
                if t is None or t.ndim != 3 or t.shape[1:] != (len(req["layers"]), m["d_model"]):
                    raise IntegrityError(f"shard {p} has a missing or mis-shaped tensor {s}|{pos}")
                if pos != "all" and t.shape[0] != n:
                    raise IntegrityError(
                        f"shard {p}: {s}|{pos} has {t.shape[0]} rows, expected {n}"
                    )
                data[s, pos] = t
        offsets = None
        if "all" in req["positions"]:
            offsets = tensors.get("offsets")
            rows = {t.shape[0] for t in data.values()}
            if not (offsets is not None and offsets.dtype == torch.int64 and offsets.shape == (n + 1,)
                    and int(offsets[0]) == 0 and bool((offsets.diff() > 0).all())
                    and rows == {int(offsets[-1])}):  # fmt: skip
                raise IntegrityError(f"shard {p} has missing or inconsistent token offsets")
        prompts = m["prompts"][sh["start"] : sh["end"]]
        return Activations(
            data, req["layers"], req["sites"], req["positions"], prompts, offsets, {}
        )


def _check_manifest(m: dict, where: Path) -> None:
    """Refuse a manifest whose fields ``load`` relies on are missing, mistyped or inconsistent.

    Shard files must be plain names inside the store, and the shards must cover the
    prompts in order without gaps or overlaps.
    """

    def strings(x) -> bool:
        return isinstance(x, list) and all(isinstance(v, str) for v in x)

    req, prompts, shards = m.get("request"), m.get("prompts"), m.get("shards")
    if not (isinstance(req, dict) and strings(req.get("sites")) and strings(req.get("positions"))
            and isinstance(req.get("layers"), list) and all(type(v) is int for v in req["layers"])
            and strings(prompts) and type(m.get("d_model")) is int
            and isinstance(m.get("provenance"), dict) and isinstance(shards, list)):  # fmt: skip
        raise IntegrityError(
            f"{where} is malformed (request, prompts, d_model, provenance or shards)"
        )
    end = 0
    for sh in shards:
        f = sh.get("file") if isinstance(sh, dict) else None
        if not (isinstance(f, str) and Path(f).name == f and f.endswith(".safetensors")
                and isinstance(sh.get("sha256"), str) and type(sh.get("start")) is int
                and sh["start"] == end and type(sh.get("end")) is int
                and end < sh["end"] <= len(prompts)):  # fmt: skip
            raise IntegrityError(f"{where} has a bad shard entry {str(sh)[:120]}")
        end = sh["end"]
    if end != len(prompts):
        raise IntegrityError(f"{where}: the shards cover {end} of {len(prompts)} prompts")


def shard_name(start: int, shard_size: int) -> str:
    """File name of the shard that begins at prompt ``start``."""
    return f"acts-{start // shard_size:05d}.safetensors"


def build_request(
    model: LoadedModel, prompts: Sequence[str], sites, layers, positions, system: str | None
) -> tuple[Request, int]:
    """Validate the prompts cheaply and parse the request (encoding only the first prompt).

    The template fixes the end-of-instruction length for every prompt; each shard
    re-checks it when it is encoded (see :func:`write_shard`).

    Returns:
        The parsed request and the template's end-of-instruction length.
    """
    if isinstance(prompts, str) or not prompts:
        raise BadInputError("prompts must be a non-empty list of strings")
    for i, p in enumerate(prompts):
        if not isinstance(p, str) or not p.strip():
            raise BadInputError(f"prompt {i} is empty or not a string: {p!r}")
    n_eoi = encode(model.tokenizer, prompts[:1], system)[0].n_eoi
    return Request.build(model, sites, layers, positions, n_eoi), n_eoi


def store_key(
    model: LoadedModel, prompts: Sequence[str], req: Request, system: str | None, shard_size: int
) -> dict:
    """The manifest fields that identify a request; a store is reused only if they match."""
    request = {"sites": req.sites, "layers": req.layers, "positions": req.positions}
    return {"format": FORMAT, "model": model.identity, "request": request, "system": system,
            "prompts_sha256": prompts_hash(prompts), "shard_size": shard_size,
            "d_model": model.d_model, "dtype": "float32"}  # fmt: skip


def store_provenance(model: LoadedModel, key: dict, n_prompts: int) -> dict:
    """The ``provenance`` a finished store carries (what :meth:`ActivationStore.load` returns)."""
    return {**model.identity, "prompts_sha256": key["prompts_sha256"], "n_prompts": n_prompts,
            "dtype": str(model.dtype).removeprefix("torch.")}  # fmt: skip


def verified(folder: Path, shards: Sequence[dict]) -> list[dict]:
    """The shard entries whose file exists and matches its sha256."""
    return [sh for sh in shards
            if (folder / sh["file"]).is_file() and sha256_file(folder / sh["file"]) == sh["sha256"]]  # fmt: skip


def write_shard(
    model: LoadedModel,
    folder: Path,
    prompts: Sequence[str],
    req: Request,
    start: int,
    shard_size: int,
    *,
    system: str | None = None,
    n_eoi: int | None = None,
    max_tokens: int = 4096,
    max_batch: int = 64,
    progress=None,
    share_prefix: bool = False,
) -> dict:
    """Encode and record ``prompts[start:start + shard_size]``; write the shard atomically.

    Only this shard's prompts are encoded and held in memory, so recording any
    number of prompts runs in memory bounded by ``shard_size``.

    Returns:
        The manifest entry ``{"file", "start", "end", "sha256"}``.
    """
    end = min(start + shard_size, len(prompts))
    part = list(prompts[start:end])
    encoded = encode(model.tokenizer, part, system)
    got = common_n_eoi(encoded)
    if n_eoi is not None and got != n_eoi:
        raise BadInputError(f"prompts have differing end-of-instruction lengths {[n_eoi, got]}")
    acts = record_slice(model, part, req, encoded, max_tokens=max_tokens, max_batch=max_batch,
                        progress=progress, share_prefix=share_prefix)  # fmt: skip
    tensors = {f"{s}|{p}": t.contiguous() for (s, p), t in acts.data.items()}
    if acts.offsets is not None:
        tensors["offsets"] = acts.offsets
    name = shard_name(start, shard_size)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=".tmp")
    os.close(fd)
    try:
        with disk_full_is_clear(folder / name):
            save_file(tensors, tmp)
        digest = sha256_file(Path(tmp))
        os.replace(tmp, folder / name)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return {"file": name, "start": start, "end": end, "sha256": digest}


def record_to_store(
    model: LoadedModel,
    prompts: Sequence[str],
    folder: str | os.PathLike,
    *,
    sites="resid_post",
    layers="all",
    positions="last",
    system: str | None = None,
    shard_size: int = 256,
    max_tokens: int = 4096,
    max_batch: int = 64,
    progress: bool | None = None,
    share_prefix: bool = False,
) -> ActivationStore:
    """Record into a store folder, resuming from its last complete shard.

    Memory stays bounded by ``shard_size`` (prompts are encoded shard by shard).
    ``share_prefix`` is :func:`probes.record`'s (with it, each shard computes its
    prompts' shared template head once).
    Raises ``BadInputError`` if the folder holds a store made for another
    request (model, prompts, sites, layers or positions), or is a file.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise BadInputError(f"store path {folder} exists and is not a folder")
    if shard_size < 1:
        raise BadInputError(f"shard_size must be >= 1, got {shard_size}")
    prompts = list(prompts)
    req, n_eoi = build_request(model, prompts, sites, layers, positions, system)
    key = store_key(model, prompts, req, system, shard_size)
    folder.mkdir(parents=True, exist_ok=True)
    store = ActivationStore(folder)
    with write_lock(folder):
        if (folder / MANIFEST).exists():
            m = store.manifest
            if {k: m.get(k) for k in key} != key:
                raise BadInputError(
                    f"store {folder} was made for a different request (model, prompts, sites, "
                    f"layers, positions or shard size); use another folder"
                )
        else:
            m = dict(key, prompts=prompts, shards=[], complete=False, provenance={})
            atomic_write(folder / MANIFEST, json.dumps(m).encode())
        m["shards"] = verified(folder, m["shards"])
        done = {sh["start"] for sh in m["shards"]}
        starts = [s for s in range(0, len(prompts), shard_size) if s not in done]
        bar = None
        if (len(prompts) > 64 if progress is None else progress) and starts:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(prompts), initial=len(prompts) - sum(
                min(shard_size, len(prompts) - s) for s in starts), desc="record", unit="prompt")  # fmt: skip
        try:
            for start in starts:
                sh = write_shard(
                    model, folder, prompts, req, start, shard_size, system=system, n_eoi=n_eoi,
                    max_tokens=max_tokens, max_batch=max_batch, progress=bar.update if bar else None,
                    share_prefix=share_prefix,
                )  # fmt: skip
                m["shards"].append(sh)
                m["shards"].sort(key=lambda sh: sh["start"])
                m["provenance"] = store_provenance(model, key, len(prompts))
                atomic_write(folder / MANIFEST, json.dumps(m).encode())
        finally:
            if bar:
                bar.close()
        if not m["complete"]:
            m["complete"] = True
            atomic_write(folder / MANIFEST, json.dumps(m).encode())
    return store
