"""Record throughput benchmark (same as `safety-probes bench record`).

Usage: python benchmarks/record_throughput.py [--model M] [--n-prompts N] [--repeats R] [--rounds K] [--json]
"""

from __future__ import annotations

import argparse
import json

from safety_probes.bench import bench_record

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    ap.add_argument("--n-prompts", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=2, help="timed passes per path (best kept)")
    ap.add_argument("--rounds", type=int, default=1, help="run every path K times over")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    doc = bench_record(args.model, args.n_prompts, repeats=args.repeats, rounds=args.rounds)
    print(json.dumps(doc) if args.json else json.dumps(doc, indent=2))
