"""Performance benchmarks against the cost model's physical limit.

``probe`` and ``generate`` live in :mod:`safety_probes.bench_extra`;
:func:`run_bench` dispatches all three.

``record``: tokens/s of :func:`probes.record` (last position, all layers,
resid_post; at its defaults, with ``share_prefix=True``, and compiled with it)
side by side with a bare forward of the stock HF base model loaded from the same
folder (no bridge, no hidden states, no logits) on the full prompts' batches, and TransformerLens ``run_with_cache`` on a bridge as
TransformerLens ships it (no :mod:`probes.fastpath`; with a ``names_filter``, and at
its defaults), plus achieved GFLOP/s from the cost model (2 x block parameters x real
prompt tokens; and x the tokens a path actually runs, which is fewer where the prefix
is shared), the fraction of this machine's measured matmul peak in the same dtype, the
padding fraction and peak RSS.
"""

from __future__ import annotations

import json
import platform
import resource
import subprocess
import sys
import time
from collections.abc import Callable

import torch

from probes import data, load_model, record
from probes.allocator import keep_freed_memory
from probes.errors import BadInputError
from probes.models import load_tokenizer, pick_device_dtype
from probes.packing import packable, packed
from probes.prefix import shared_prefix_length, strip
from probes.prompts import bucketed, encode, position_ids

SQUARES = ((1024, 1024, 1024), (2048, 2048, 2048), (4096, 4096, 4096))


def matmul_peak_gflops(
    dtype: torch.dtype,
    shapes: tuple[tuple[int, int, int], ...] = SQUARES,
    seconds: float = 2.0,
) -> float:
    """Best sustained GFLOP/s of an ``m x k`` by ``k x n`` matmul in ``dtype`` over ``shapes``.

    Each shape runs ``seconds`` of 5-matmul rounds into a preallocated output; the best
    round of any shape is the peak (a fraction of it is then a conservative figure).
    """
    best = 0.0
    for m, k, n in shapes:
        a, b = torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)
        out = torch.empty(m, n, dtype=dtype)
        for _ in range(3):
            torch.mm(a, b, out=out)
        deadline = time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            t = time.perf_counter()
            for _ in range(5):
                torch.mm(a, b, out=out)
            best = max(best, 5 * 2 * m * k * n / (time.perf_counter() - t) / 1e9)
    return best


def peak_shapes(model) -> list[tuple[int, int, int]]:
    """The square sizes and every distinct projection of the model's blocks at a full batch.

    A projection ``k -> n`` becomes ``MAX_TOKENS x k`` by ``k x n``: record's batches run
    up to that many rows, and on this project's machine such shapes run faster than any
    square (qwen2.5-coder's 896 -> 4864 MLP projection at 3,413 GFLOP/s against 2,626
    for 4096^3, 2026-12-04), so the peak would be understated without them.
    """
    linears = {
        (m.in_features, m.out_features)
        for m in model.hf_model.model.layers.modules()
        if isinstance(m, torch.nn.Linear)
    }
    return [*SQUARES, *((MAX_TOKENS, k, n) for k, n in sorted(linears))]


def _timed(fn: Callable[[], None], repeats: int) -> tuple[float, list[float]]:
    """Wall time of a warm-up run of ``fn``, and of each of ``repeats`` runs after it."""
    t = time.perf_counter()
    fn()
    first, times = time.perf_counter() - t, []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return first, times


RECORD_PATHS = (
    "record",
    "record_shared",
    "record_compiled",
    "hf_forward",
    "run_with_cache_filtered",
    "run_with_cache_default",
)


MAX_TOKENS, MAX_BATCH = 4096, 64  # record's default batch budget: every path's batches


def _batches(tokenizer, n_prompts: int):
    pool = data.prompts("harmful") + data.prompts("harmless")
    prompts = (pool * (n_prompts // len(pool) + 1))[:n_prompts]
    enc = encode(tokenizer, prompts)
    return (
        pool,
        prompts,
        list(bucketed(enc, range(len(enc)), tokenizer.pad_token_id, MAX_TOKENS, MAX_BATCH)),
    )


def _tokens(encoded, pad_id: int, shared: bool = False, pack: bool = False) -> tuple[int, int, int]:
    """(shared head length, real tokens, padded tokens) of record's batches of ``encoded``.

    With ``shared``, the head every prompt starts with runs once, outside the batches,
    and the rest is packed (:mod:`probes.packing`) if ``pack`` (the model allows it).
    """
    head = shared_prefix_length(encoded, ["last"]) if shared else 0
    rest = strip(encoded, head)
    batching = packed if head and pack else bucketed
    batches = list(batching(rest, range(len(rest)), pad_id, MAX_TOKENS, MAX_BATCH))
    return head, sum(b.n_real_tokens for b in batches), sum(b.input_ids.numel() for b in batches)


def time_record_path(model_name: str, path: str, n_prompts: int, repeats: int) -> dict:
    """Wall times of one path of the record benchmark (warm-up, then each pass), this process.

    ``record_shared`` passes ``share_prefix=True`` (the template head once);
    ``record_compiled`` is that on ``load_model(..., compile=True)`` (the warm-up run
    pays the compilation); ``hf_forward`` is the stock HF base model from
    the same folder (no bridge, HF's default attention, no hidden states, no logits);
    ``run_with_cache_*`` run on a bridge as TransformerLens ships it (no
    :mod:`probes.fastpath`).
    """
    if path not in RECORD_PATHS:
        raise BadInputError(f"unknown record path {path!r}; choose from {RECORD_PATHS}")
    keep_freed_memory()  # as the CLI does; every path runs under the same allocator
    if path == "hf_forward":  # the stock model alone: no bridge is booted in this process
        from transformers import AutoModelForCausalLM

        tokenizer, folder = load_tokenizer(model_name)
        device, dtype = pick_device_dtype("auto", "auto")
        stock = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
        base = stock.to(device).eval().model
    else:
        ours = path.startswith("record")
        model = load_model(model_name, fast_path=ours, compile=path == "record_compiled")
        tokenizer = model.tokenizer
        names = {f"blocks.{i}.hook_resid_post" for i in range(model.n_layers)}
    _, prompts, batches = _batches(tokenizer, n_prompts)

    def run() -> None:
        if path.startswith("record"):
            record(model, prompts, layers="all", positions="last", progress=False,
                   share_prefix=path != "record")  # fmt: skip
            return
        with torch.inference_mode():
            for b in batches:
                if path == "hf_forward":
                    base(input_ids=b.input_ids, attention_mask=b.attention_mask,
                         position_ids=position_ids(b.attention_mask), use_cache=False)  # fmt: skip
                else:
                    kw = {"names_filter": lambda n: n in names} if path.endswith("filtered") else {}
                    model.bridge.run_with_cache(b.input_ids, attention_mask=b.attention_mask, **kw)

    first, times = _timed(run, repeats)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"pass_seconds": times, "first_run_seconds": first, "peak_rss_mb": round(rss, 1)}


def _in_fresh_process(model_name: str, path: str, n_prompts: int, repeats: int) -> dict:
    args = json.dumps([model_name, path, n_prompts, repeats])
    proc = subprocess.run([sys.executable, "-m", "safety_probes.bench", args],
                          capture_output=True, text=True, check=False)  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"record benchmark path {path} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _merged(runs: list[dict]) -> dict:
    """One path's runs from several rounds: every pass, the largest RSS, the first warm-up."""
    return {
        "pass_seconds": [t for r in runs for t in r["pass_seconds"]],
        "first_run_seconds": runs[0]["first_run_seconds"],
        "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
    }


def bench_record(model_name: str, n_prompts: int = 256, repeats: int = 2, rounds: int = 1) -> dict:
    """Record throughput vs a bare HF forward and ``run_with_cache``, same prompts.

    Each path runs in its own fresh process, one after the other in this call: the
    heap a path inherits changes its speed (``run_with_cache`` at its defaults ran at
    607 to 1058 tokens/s in one shared process depending on what ran before it, and at
    1206 in a fresh one, on the same machine), so no path pays for another's allocations.
    With ``rounds`` > 1 the whole sequence of paths runs again that many times and each
    path keeps its best pass over all rounds: a machine that slows for a minute then
    costs one round of one path, not the comparison (on this project's shared 2-core
    machine one path's best moved by up to 36% between runs hours apart: compiled
    blocks with the shared head, 2,692 to 3,668 tokens/s).
    ``model_name`` is anything :func:`probes.load_model` accepts (zoo name, folder, hub id).
    """
    if repeats < 1:
        raise BadInputError(f"repeats must be at least 1, got {repeats}")
    if rounds < 1:
        raise BadInputError(f"rounds must be at least 1, got {rounds}")
    model = load_model(model_name)
    pool, prompts, _ = _batches(model.tokenizer, n_prompts)
    pad_id = model.tokenizer.pad_token_id
    enc, full = encode(model.tokenizer, prompts), encode(model.tokenizer, pool)
    _, real, padded = _tokens(enc, pad_id)
    pack = packable(model.hf_model.config)
    shared, real_shared, padded_shared = _tokens(enc, pad_id, shared=True, pack=pack)
    _, full_real, full_padded = _tokens(full, pad_id)  # padding on the whole sets
    _, full_real_shared, full_padded_shared = _tokens(full, pad_id, shared=True, pack=pack)
    block_params = sum(p.numel() for p in model.hf_model.model.layers.parameters())
    flops = 2 * block_params * real
    run_tokens = {p: real for p in RECORD_PATHS}
    run_tokens["record_shared"] = run_tokens["record_compiled"] = shared + real_shared
    dtype, shapes = model.dtype, peak_shapes(model)
    model = None
    by_round, by_shape = [], dict.fromkeys(shapes, 0.0)
    for _ in range(rounds):  # the peak too is the best over the rounds
        by_round.append({p: _in_fresh_process(model_name, p, n_prompts, repeats)
                         for p in RECORD_PATHS})  # fmt: skip
        for shape in shapes:
            by_shape[shape] = max(by_shape[shape], matmul_peak_gflops(dtype, (shape,)))
    runs = {p: _merged([r[p] for r in by_round]) for p in RECORD_PATHS}
    times = {p: min(r["pass_seconds"]) for p, r in runs.items()}  # best pass
    peak = max(by_shape.values())
    out = {
        "model": model_name,
        "dtype": str(dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "n_prompts": len(prompts),
        "real_tokens": real,
        "shared_prefix_tokens": shared,
        "run_tokens": run_tokens,
        "padding_fraction": round(1 - real / padded, 4),
        "padding_fraction_shared": round(1 - real_shared / padded_shared, 4),
        "padding_fraction_harmful_harmless": round(1 - full_real / full_padded, 4),
        "padding_fraction_harmful_harmless_shared": round(
            1 - full_real_shared / full_padded_shared, 4
        ),
        "n_prompts_harmful_harmless": len(pool),
        "matmul_peak_gflops": round(peak, 1),
        "matmul_gflops_by_shape": {"x".join(map(str, k)): round(g, 1) for k, g in by_shape.items()},
        "tokens_per_s": {k: round(real / t, 1) for k, t in times.items()},
        "gflops": {k: round(flops / t / 1e9, 1) for k, t in times.items()},
        "gflops_run": {
            k: round(2 * block_params * run_tokens[k] / t / 1e9, 1) for k, t in times.items()
        },
        "peak_rss_mb": {k: r["peak_rss_mb"] for k, r in runs.items()},
        "first_run_seconds": {k: round(r["first_run_seconds"], 2) for k, r in runs.items()},
        "repeats": repeats,
        "rounds": rounds,
        "pass_seconds": {k: [round(t, 3) for t in r["pass_seconds"]] for k, r in runs.items()},
        "best_pass_by_round": {
            k: [round(min(r[k]["pass_seconds"]), 3) for r in by_round] for k in RECORD_PATHS
        },
    }
    for ours in ("record", "record_shared", "record_compiled"):
        t = times[ours]
        out[f"{ours}_vs_hf_forward"] = round(times["hf_forward"] / t, 3)
        out[f"{ours}_vs_run_with_cache_default"] = round(times["run_with_cache_default"] / t, 2)
        out[f"{ours}_vs_run_with_cache_filtered"] = round(times["run_with_cache_filtered"] / t, 2)
        out[f"{ours}_fraction_of_peak"] = round(flops / t / 1e9 / peak, 3)
        out[f"{ours}_run_fraction_of_peak"] = round(out["gflops_run"][ours] / peak, 3)
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


if __name__ == "__main__":  # one path of the record benchmark, for bench_record
    print(json.dumps(time_record_path(*json.loads(sys.argv[1]))))
