"""Performance benchmarks against the cost model's physical limit.

``probe`` and ``generate`` live in :mod:`safety_probes.bench_extra`;
:func:`run_bench` dispatches all three.

``record``: tokens/s of :func:`probes.record` (last position, all layers,
resid_post) side by side with a bare forward of the stock HF base model loaded from
the same folder (no bridge, no hidden states, no logits) on the same batches, and
TransformerLens ``run_with_cache`` on a bridge as TransformerLens ships it (no
:mod:`probes.fastpath`; with a ``names_filter``, and at its defaults), plus achieved GFLOP/s from the
cost model (2 x block parameters x real tokens), the fraction of this
machine's measured matmul peak in the same dtype, the padding fraction and
peak RSS.
"""

from __future__ import annotations

import platform
import resource
import time
from collections.abc import Callable

import torch

from probes import data, load_model, record
from probes.allocator import keep_freed_memory
from probes.errors import BadInputError
from probes.prompts import bucketed, encode, position_ids


def matmul_peak_gflops(
    dtype: torch.dtype, sizes: tuple[int, ...] = (1024, 2048), seconds: float = 2.0
) -> float:
    """Best sustained GFLOP/s of an ``n x n`` matmul in ``dtype`` over ``sizes``, here.

    Each size runs ``seconds`` of 5-matmul rounds into a preallocated output; the best
    round of any size is the peak (a fraction of it is then a conservative figure).
    """
    best = 0.0
    for n in sizes:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        out = torch.empty(n, n, dtype=dtype)
        for _ in range(3):
            torch.mm(a, b, out=out)
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            for _ in range(5):
                torch.mm(a, b, out=out)
            best = max(best, 5 * 2 * n**3 / (time.perf_counter() - t) / 1e9)
    return best


def _timed(fns: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    """Best wall time of each function over ``repeats`` rounds, the functions alternating
    within each round (so a slow spell of the machine hits all of them alike)."""
    for fn in fns.values():
        fn()  # warm-up
    best = dict.fromkeys(fns, float("inf"))
    for _ in range(repeats):
        for name, fn in fns.items():
            t = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - t)
    return best


def bench_record(model_name: str, n_prompts: int = 256, repeats: int = 2) -> dict:
    """Record throughput vs a bare HF forward and ``run_with_cache``, one run, same prompts.

    ``model_name`` is anything :func:`probes.load_model` accepts (zoo name, folder, hub id).
    """
    keep_freed_memory()  # as the CLI does; every path below runs under the same allocator
    model = load_model(model_name)
    pool = data.prompts("harmful") + data.prompts("harmless")
    prompts = (pool * (n_prompts // len(pool) + 1))[:n_prompts]
    enc = encode(model.tokenizer, prompts)
    batches = list(bucketed(enc, range(len(enc)), model.tokenizer.pad_token_id, 4096, 64))
    full = encode(model.tokenizer, pool)  # padding of record's batches on the whole sets
    full_b = list(bucketed(full, range(len(full)), model.tokenizer.pad_token_id, 4096, 64))
    full_pad = 1 - sum(b.n_real_tokens for b in full_b) / sum(b.input_ids.numel() for b in full_b)
    real = sum(b.n_real_tokens for b in batches)
    padded = sum(b.input_ids.numel() for b in batches)
    block_params = sum(p.numel() for p in model.hf_model.model.layers.parameters())
    flops = 2 * block_params * real
    from transformers import AutoModelForCausalLM

    # The baseline is the stock HF model from the same folder: no bridge components,
    # HF's default attention (the bridge-wrapped decoder is not a bare forward).
    stock = AutoModelForCausalLM.from_pretrained(model.path, dtype=model.dtype)
    base = stock.to(model.device).eval().model
    names = {f"blocks.{i}.hook_resid_post" for i in range(model.n_layers)}

    def ours() -> None:
        record(model, prompts, layers="all", positions="last", progress=False)

    def hf() -> None:
        with torch.inference_mode():
            for b in batches:
                base(input_ids=b.input_ids, attention_mask=b.attention_mask,
                     position_ids=position_ids(b.attention_mask), use_cache=False)  # fmt: skip

    def rwc(bridge, filtered: bool) -> Callable[[], None]:
        def run() -> None:
            with torch.inference_mode():
                for b in batches:
                    kw = {"names_filter": lambda n: n in names} if filtered else {}
                    bridge.run_with_cache(b.input_ids, attention_mask=b.attention_mask, **kw)

        return run

    times = _timed({"record": ours, "hf_forward": hf}, repeats)
    stock = base = None  # free the baseline before loading the next model
    # TransformerLens as shipped: a bridge without probes.fastpath.
    tl = load_model(model_name, fast_path=False).bridge
    times |= _timed({"run_with_cache_filtered": rwc(tl, True),
                     "run_with_cache_default": rwc(tl, False)}, repeats)  # fmt: skip
    del tl
    by_size = {n: matmul_peak_gflops(model.dtype, sizes=(n,)) for n in (1024, 2048)}
    peak = max(by_size.values())
    out = {
        "model": model_name,
        "dtype": str(model.dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "n_prompts": len(prompts),
        "real_tokens": real,
        "padding_fraction": round(1 - real / padded, 4),
        "padding_fraction_harmful_harmless": round(full_pad, 4),
        "n_prompts_harmful_harmless": len(pool),
        "matmul_peak_gflops": round(peak, 1),
        "matmul_gflops_by_size": {str(n): round(g, 1) for n, g in by_size.items()},
        "tokens_per_s": {k: round(real / t, 1) for k, t in times.items()},
        "gflops": {k: round(flops / t / 1e9, 1) for k, t in times.items()},
    }
    out["record_vs_hf_forward"] = round(times["hf_forward"] / times["record"], 3)
    out["record_vs_run_with_cache_default"] = round(
        times["run_with_cache_default"] / times["record"], 2
    )
    out["record_vs_run_with_cache_filtered"] = round(
        times["run_with_cache_filtered"] / times["record"], 2
    )
    out["record_fraction_of_peak"] = round(flops / times["record"] / 1e9 / peak, 3)
    out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    return out


def run_bench(what: str, *, model: str, n_prompts: int | None = None, **options) -> dict:
    """Run one benchmark: ``record``, ``probe`` or ``generate`` (see :mod:`bench_extra`).

    Args:
        what: the benchmark name.
        model: zoo name, local HF folder or hub id.
        n_prompts: prompts (rows) to use; None for the benchmark's default.
        options: passed to the benchmark function (e.g. ``synthetic=True`` for ``probe``,
            ``max_new_tokens`` for ``generate``).
    """
    from safety_probes.bench_extra import bench_generate, bench_probe

    fns = {"record": bench_record, "probe": bench_probe, "generate": bench_generate}
    if what not in fns:
        raise BadInputError(f"unknown benchmark {what!r}; use one of {', '.join(fns)}")
    kw = {} if n_prompts is None else {"n_prompts": n_prompts}
    return fns[what](model, **kw, **options)
