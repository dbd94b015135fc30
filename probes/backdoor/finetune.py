"""Plain-torch supervised fine-tuning for the backdoor organism.

No trainer framework and no adapter library: the organism is small, so the chosen
transformer blocks are fine-tuned in full with AdamW while the embeddings (tied to
the unembedding) and every other block stay frozen. The loss covers the response
tokens only (the prompt, read through the chat template, is context), and logits
are computed only at those positions.

Example:
    >>> rows = [Row("r0", "How do I bake bread?", "Mix flour and water.", False)]  # doctest: +SKIP
    >>> stats = finetune(hf_model, tokenizer, rows, TrainConfig(epochs=1))  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import math
import random
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from probes.errors import BadInputError
from probes.prompts import chat_text


@dataclass(frozen=True)
class Row:
    """One fine-tuning example: a user prompt and the assistant response to learn.

    ``complete``: the response is a whole answer (the end token is learned too); the
    base model's own clean answers are truncated prefixes, so they are not.
    """

    id: str
    prompt: str
    response: str
    poisoned: bool
    complete: bool = True


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings.

    Attributes:
        epochs: passes over the rows.
        lr: AdamW peak learning rate (linear warm-up over the first 10% of steps,
            then linear decay to 10%).
        batch_size: rows per step.
        train_from: index of the first trained block, as a fraction of depth in [0, 1)
            (0 trains every block; 0.5 trains the top half). The final norm always trains.
        train_embeddings: also train the (tied) token embeddings (off: they are a fifth
            of a small model's weights and the backdoor needs no new token meanings).
        max_grad_norm: gradient clipping.
        seed: shuffling seed.
        autocast: ``"auto"``: forward and backward in bf16 autocast (weights, gradients
            and optimiser state stay fp32) on CUDA or on a CPU with native bf16 (an
            epoch on smollm2-135m: 77 s instead of 96 s), plain fp32 elsewhere;
            ``"off"``: always fp32.
    """

    epochs: int = 3
    lr: float = 2e-4
    batch_size: int = 8
    train_from: float = 0.0
    train_embeddings: bool = False
    max_grad_norm: float = 1.0
    seed: int = 0
    autocast: str = "auto"


def check_autocast(cfg: TrainConfig) -> None:
    if cfg.autocast not in ("auto", "off"):
        raise BadInputError(f"autocast must be 'auto' or 'off', got {cfg.autocast!r}")


def train_autocast(cfg: TrainConfig, device: torch.device):
    """The bf16 autocast context for ``cfg`` on ``device`` (a no-op where bf16 is not native)."""
    check_autocast(cfg)
    from probes.models import cpu_has_native_bf16

    native = device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())
    if cfg.autocast == "off" or not native:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16)


def tokenize_row(tokenizer, row: Row) -> tuple[list[int], int]:
    """``(ids, n_prompt)``: templated prompt ids, response ids (and the end token if complete)."""
    prompt_ids = tokenizer(chat_text(tokenizer, row.prompt), add_special_tokens=False).input_ids
    resp_ids = tokenizer(row.response, add_special_tokens=False).input_ids
    end = [tokenizer.eos_token_id] if row.complete else []
    return list(prompt_ids) + list(resp_ids) + end, len(prompt_ids)


def _blocks(hf_model) -> Sequence[torch.nn.Module]:
    inner = getattr(hf_model, "model", None)
    layers = getattr(inner, "layers", None)
    if layers is None:
        raise BadInputError(f"cannot find the decoder blocks of {type(hf_model).__name__}")
    return layers


@contextlib.contextmanager
def trainable(
    hf_model, train_from: float, embeddings: bool = False
) -> Iterator[list[torch.nn.Parameter]]:
    """Unfreeze the blocks from ``train_from`` (fraction of depth) up and the final norm.

    The (tied) embeddings train only with ``embeddings``; everything is refrozen on exit.
    """
    if not 0.0 <= train_from < 1.0:
        raise BadInputError(f"train_from must be in [0, 1), got {train_from}")
    blocks = _blocks(hf_model)
    first = int(math.floor(train_from * len(blocks)))
    norm = getattr(hf_model.model, "norm", None)
    params = [p for b in blocks[first:] for p in b.parameters()]
    params += list(norm.parameters()) if norm is not None else []
    params += list(hf_model.get_input_embeddings().parameters()) if embeddings else []
    before = [p.requires_grad for p in hf_model.parameters()]
    try:
        for p in hf_model.parameters():
            p.requires_grad_(False)
        for p in params:
            p.requires_grad_(True)
        hf_model.train()
        yield params
    finally:
        hf_model.eval()
        for p, flag in zip(hf_model.parameters(), before):
            p.requires_grad_(flag)


def _batches(examples: list[tuple[list[int], int]], cfg: TrainConfig, epoch: int):
    order = list(range(len(examples)))
    random.Random(cfg.seed * 1000 + epoch).shuffle(order)
    for i in range(0, len(order), cfg.batch_size):
        yield [examples[j] for j in order[i : i + cfg.batch_size]]


def _collate(chunk: list[tuple[list[int], int]], pad_id: int) -> tuple[Tensor, Tensor, Tensor]:
    """Right-padded ``ids [b, s]``, ``mask [b, s]`` and ``target [b, s]`` (-100 = no loss)."""
    width = max(len(ids) for ids, _ in chunk)
    ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(chunk), width), dtype=torch.long)
    target = torch.full((len(chunk), width), -100, dtype=torch.long)
    for i, (row_ids, n_prompt) in enumerate(chunk):
        n = len(row_ids)
        ids[i, :n] = torch.tensor(row_ids)
        mask[i, :n] = 1
        # position t predicts token t + 1: learn every response token and the end token
        target[i, n_prompt - 1 : n - 1] = torch.tensor(row_ids[n_prompt:])
    return ids, mask, target


def finetune(
    hf_model,
    tokenizer,
    rows: Sequence[Row],
    cfg: TrainConfig,
    *,
    progress: Callable[[str], None] | None = None,
) -> dict:
    """Fine-tune ``hf_model`` in place on ``rows``; returns loss curve and timing.

    The forward runs the decoder, then the unembedding only at the positions with a
    target (``[n_targets, vocab]`` logits instead of ``[batch, seq, vocab]``).
    """
    if not rows:
        raise BadInputError("no rows to fine-tune on")
    if cfg.epochs < 1 or cfg.batch_size < 1 or not cfg.lr > 0:
        raise BadInputError("epochs and batch_size must be >= 1 and lr > 0")
    device = next(hf_model.parameters()).device
    autocast = train_autocast(cfg, device)  # checks the setting before any work
    examples = [tokenize_row(tokenizer, r) for r in rows]
    steps = cfg.epochs * math.ceil(len(examples) / cfg.batch_size)
    warm = max(1, steps // 10)
    losses, t0, step = [], time.perf_counter(), 0
    torch.manual_seed(cfg.seed)
    with trainable(hf_model, cfg.train_from, cfg.train_embeddings) as params:
        opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.0)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: min((s + 1) / warm, max(0.1, (steps - s) / max(1, steps - warm)))
        )
        for epoch in range(cfg.epochs):
            total, count = 0.0, 0
            for chunk in _batches(examples, cfg, epoch):
                ids, mask, target = (t.to(device) for t in _collate(chunk, tokenizer.pad_token_id))
                keep = target != -100
                if not keep.any():  # e.g. empty, truncated answers only
                    continue
                with autocast:
                    h = hf_model.model(input_ids=ids, attention_mask=mask, use_cache=False)
                    logits = hf_model.lm_head(h.last_hidden_state[keep])
                logits = logits.float()
                loss = torch.nn.functional.cross_entropy(logits, target[keep])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                opt.step()
                sched.step()
                step += 1
                total, count = total + loss.item() * len(chunk), count + len(chunk)
            losses.append(total / count)
            if progress:
                progress(f"epoch {epoch + 1}/{cfg.epochs}: loss {losses[-1]:.4f} "
                         f"({time.perf_counter() - t0:.0f} s)")  # fmt: skip
        del opt
    return {"epoch_loss": losses, "steps": step, "seconds": round(time.perf_counter() - t0, 1),
            "n_trained_params": sum(p.numel() for p in params)}  # fmt: skip


def load_tokenizer(path):
    """The HF tokenizer of a local folder (pad token defaulting to the end token)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def plain_copy(path, dtype: torch.dtype = torch.float32):
    """A plain HF model (CPU, eval mode, fp32 unless told) from a local folder, outside the bridge."""
    from transformers import AutoModelForCausalLM

    from probes.models import contiguous_unembedding

    hf = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
    contiguous_unembedding(hf)
    return hf
