"""Orthogonalised weights vs hook ablation on the embedded model, in fp32.

Loads the model in float32, ablates ``DIRECTION`` with hooks and with edited weights,
and prints the max absolute difference of the last-token logits over a batch of
harmful + harmless test prompts (the issue's acceptance: <= 1e-3 in fp32).

Usage::

    python scripts/ortho_check.py results/refusal/direction.safetensors [--n 8]
"""

from __future__ import annotations

import argparse
import json

from probes import load_model
from probes.harmful_intent import stratified_prompts
from probes.zoo import DEFAULT_MODEL
from steering import load_direction
from steering.orthogonalize import hook_vs_weights_gap


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("direction")
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--n", type=int, default=8, help="prompts per set")
    args = ap.parse_args()
    model = load_model(args.model, dtype="float32")
    d = load_direction(args.direction, model)
    batch = stratified_prompts("harmful", "test", args.n) + stratified_prompts(
        "harmless", "test", args.n
    )
    diff = hook_vs_weights_gap(model, d, batch)
    print(json.dumps({"model": args.model, "dtype": "float32", "n_prompts": len(batch),
                      "max_abs_logit_diff": diff}))  # fmt: skip


if __name__ == "__main__":
    main()
