"""Loading models: one object that carries the bridge, tokenizer and identity.

``load_model`` accepts a zoo name (see :mod:`probes.zoo`), a local HuggingFace
folder, or a hub id (only where the user has network or a warm HF cache). It
returns a :class:`LoadedModel` wrapping a TransformerLens 4.x
``TransformerBridge`` with hook points on every block.

Example:
    >>> from probes import load_model
    >>> model = load_model("smollm2-135m-instruct")  # doctest: +SKIP
    >>> model.n_layers, model.d_model  # doctest: +SKIP
    (30, 576)
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from probes import fastpath, zoo
from probes.errors import BadInputError, OfflineError

SITES = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")


def cpu_has_native_bf16() -> bool:
    """True when this CPU executes bf16 matmuls natively (AVX-512-BF16 / AMX, or ARM BF16)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    machine = platform.machine().lower()
    if machine in ("x86_64", "amd64"):
        return any(f" {f}" in flags for f in ("avx512_bf16", "amx_bf16"))
    if machine in ("aarch64", "arm64"):
        return " bf16" in flags
    return False


def pick_device_dtype(
    device: str | None = None, dtype: str | torch.dtype | None = None
) -> tuple[str, torch.dtype]:
    """Resolve ``auto`` device/dtype: CUDA if present; bf16 on CPU only where native."""
    if device in (None, "auto"):
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if isinstance(dtype, str) and dtype != "auto":
        table = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16}
        table |= {"bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}
        if dtype not in table:
            raise BadInputError(f"unknown dtype {dtype!r}; use one of {sorted(table)} or 'auto'")
        dtype = table[dtype]
    if dtype in (None, "auto"):
        if device.startswith("cuda"):
            dtype = torch.bfloat16
        else:
            dtype = torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    return device, dtype


@dataclass
class LoadedModel:
    """A hooked model plus everything needed to read it reproducibly.

    Attributes:
        bridge: the TransformerLens ``TransformerBridge`` (hook points, generate).
        tokenizer: the HF tokenizer (chat template taken from it).
        name: the zoo name, folder path or hub id it was loaded from.
        digest: sha256 identity of the weights (GGUF digest for zoo models).
        path: the local HF folder behind it.
    """

    bridge: Any
    tokenizer: Any
    name: str
    digest: str
    path: Path
    device: str
    dtype: torch.dtype
    meta: dict = field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        return int(self.bridge.cfg.n_layers)

    @property
    def d_model(self) -> int:
        return int(self.bridge.cfg.d_model)

    @property
    def hf_model(self) -> torch.nn.Module:
        """The underlying HuggingFace module (shares weights with the bridge)."""
        return self.bridge.original_model

    @property
    def identity(self) -> dict:
        """What a probe or direction records to refuse being used on another model."""
        return {"model": self.name, "digest": self.digest, "d_model": self.d_model,
                "n_layers": self.n_layers}  # fmt: skip

    def hook_name(self, site: str, layer: int) -> str:
        """TransformerLens hook name for a site at a layer, e.g. ``blocks.3.hook_resid_post``."""
        check_site(site)
        check_layer(self, layer)
        return f"blocks.{layer}.hook_{site}"

    def hook_point(self, site: str, layer: int) -> Any:
        """The bridge's HookPoint module for ``(site, layer)``."""
        return self.bridge.hook_dict[self.hook_name(site, layer)]

    def n_active_hooks(self) -> int:
        """Forward hooks currently attached to the model's hook points (0 when clean)."""
        points = {id(hp): hp for hp in self.bridge.hook_dict.values()}
        return sum(len(hp._forward_hooks) + len(hp._forward_pre_hooks) for hp in points.values())

    def __repr__(self) -> str:
        return (f"LoadedModel({self.name!r}, layers={self.n_layers}, d_model={self.d_model}, "
                f"device={self.device}, dtype={self.dtype})")  # fmt: skip


def check_site(site: str) -> None:
    if site not in SITES:
        raise BadInputError(f"unknown site {site!r}; valid sites: {', '.join(SITES)}")


def check_layer(model: LoadedModel, layer: int) -> None:
    if not isinstance(layer, int) or isinstance(layer, bool):
        raise BadInputError(f"layer must be an int, got {layer!r}")
    if not 0 <= layer < model.n_layers:
        raise BadInputError(f"layer {layer} out of range; valid layers are 0..{model.n_layers - 1}")


def folder_digest(path: Path) -> str:
    """sha256 over the weight files of an HF folder (names and bytes)."""
    mf = path / zoo.MANIFEST
    if mf.is_file():
        return json.loads(mf.read_text())["gguf_sha256"]
    h = hashlib.sha256()
    weights = sorted(p for p in path.iterdir() if p.suffix in (".safetensors", ".bin", ".gguf"))
    if not weights:
        raise BadInputError(f"{path} contains no weight files (*.safetensors / *.bin)")
    for p in weights:
        h.update(p.name.encode())
        h.update(zoo.sha256_file(p).encode())
    return h.hexdigest()


def _resolve(name_or_path: str | os.PathLike) -> tuple[Path, str]:
    """Map a zoo name / folder / hub id to a local folder and a display name."""
    text = str(name_or_path)
    if text in zoo.ZOO:
        return zoo.fetch(text), text
    path = Path(text).expanduser()
    if path.exists():
        if not (path / "config.json").is_file():
            raise BadInputError(f"{path} is not a HuggingFace model folder (no config.json)")
        if (path / zoo.MANIFEST).is_file():
            zoo.verify_folder(path)
        return path, text
    if "/" not in text:
        raise BadInputError(
            f"unknown model {text!r}: not a zoo name, a local folder, or a hub id "
            f"(owner/name); zoo models: {', '.join(sorted(zoo.ZOO))}"
        )
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(text, allow_patterns=["*.json", "*.safetensors", "*.model",
                                                        "*.txt", "*.jinja"])  # fmt: skip
    except Exception as exc:  # hub client raises many network/offline types
        raise OfflineError(
            f"cannot fetch {text!r} from the Hugging Face hub (no network reachable, "
            f"or not cached: {type(exc).__name__}); use a zoo model instead: "
            f"{', '.join(sorted(zoo.ZOO))}"
        ) from None
    return Path(local), text


def load_tokenizer(name_or_path: str | os.PathLike = zoo.DEFAULT_MODEL) -> tuple[Any, Path]:
    """The model's tokenizer set up as :func:`load_model` sets it (left padding, a pad
    token), and the model's local folder; no weights are loaded."""
    path, _ = _resolve(name_or_path)
    return _tokenizer(path), path


def _tokenizer(path: Path) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"
    return tokenizer


def load_model(
    name_or_path: str | os.PathLike = zoo.DEFAULT_MODEL,
    *,
    device: str | None = "auto",
    dtype: str | torch.dtype | None = "auto",
    device_map: str | dict | None = None,
    fast_path: bool = True,
    compile: bool = False,
) -> LoadedModel:
    """Load a model with hook points.

    Args:
        name_or_path: zoo name, local HF folder, or hub id.
        device: ``"auto"`` (CUDA if present, else CPU) or a torch device string.
        dtype: ``"auto"`` (bf16 on CUDA or bf16-native CPUs, else fp32) or a dtype.
        device_map: an HF/accelerate device map (``"auto"``, ``"balanced"``, a dict) for
            models larger than one GPU, passed to ``TransformerBridge.boot_transformers``;
            exclusive with an explicit ``device``. ``LoadedModel.device`` is then the
            device of the input embeddings (where inputs go).
        fast_path: run norms and attention through the wrapped HF modules whenever no
            hook reads their internals (:mod:`probes.fastpath`); False keeps every bridge forward.
        compile: also run each decoder block with nothing hooked inside it as one
            ``torch.compile``-d HF layer (needs ``fast_path``; a C++ compiler on CPU; one
            compilation per process, paid back on long recordings; outputs equal the
            eager ones at rounding level). See :mod:`probes.fastpath`.

    Returns:
        A :class:`LoadedModel` in eval mode.
    """
    from transformer_lens.model_bridge import TransformerBridge

    if device_map is not None and device not in (None, "auto"):
        raise BadInputError("pass either device or device_map, not both")
    if compile and not fast_path:
        raise BadInputError("compile=True builds on the fast path; drop fast_path=False")
    path, name = _resolve(name_or_path)
    device, dtype = pick_device_dtype(device, dtype)
    if compile:
        fastpath.check_compiler(device)
    tokenizer = _tokenizer(path)
    place = {"device": device} if device_map is None else {"device_map": device_map}
    bridge = TransformerBridge.boot_transformers(
        str(path), dtype=dtype, tokenizer=tokenizer, **place
    )
    bridge.eval()
    if device_map is not None:
        device = str(bridge.original_model.get_input_embeddings().weight.device)
    for p in bridge.original_model.parameters():
        p.requires_grad_(False)
    contiguous_unembedding(bridge.original_model)
    if fast_path:
        fastpath.install(bridge, compile=compile)
    return LoadedModel(bridge, tokenizer, name, folder_digest(path), path, device, dtype)


class _ContiguousLinear(torch.nn.Linear):
    """``nn.Linear`` that makes its input contiguous first (same weights, same outputs)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.contiguous())


def contiguous_unembedding(hf_model: torch.nn.Module) -> None:
    """Make the unembedding copy its input to contiguous memory before the matmul.

    HF generation unembeds only the last position, a strided slice
    ``hidden[:, -1:, :]``. On this CPU torch 2.13's bf16 linear takes ~10 s for that
    slice against the 151,936-row Qwen unembedding, and 0.03 s for a contiguous
    copy of it (measured; 16 prompts): it made every generation's prefill ~300x
    slower than needed. The copy is ``batch x d_model`` values. Only the module's class
    changes; weights, outputs and saved files are untouched, and no hook is added.
    """
    head = hf_model.get_output_embeddings() if hasattr(hf_model, "get_output_embeddings") else None
    lin = getattr(head, "original_component", head)
    if type(lin) is torch.nn.Linear:
        lin.__class__ = _ContiguousLinear
