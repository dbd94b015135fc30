"""Render a demo report in headless chromium, check every plotly figure drew, screenshot it.

    python scripts/screenshot_report.py results/report.html --png docs/report.png

Prints ``N/M plotly figures drew ...`` and exits 0 only when every figure drew; exits 1
when one did not, 2 on bad input or when no chromium is installed
(``apt-get install -y chromium`` on Debian).
"""

from __future__ import annotations

import argparse
import sys

from probes.errors import BadInputError
from safety_probes.render import png_stats, render_report


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("html", help="the report.html to render")
    ap.add_argument("--png", help="write a screenshot of the top of the page here")
    ap.add_argument("--width", type=int, default=1280)
    ap.add_argument("--height", type=int, default=1600)
    ap.add_argument("--budget-ms", type=int, default=20000, help="virtual time for scripts")
    ap.add_argument("--browser", help="browser binary (default: chromium on PATH)")
    args = ap.parse_args(argv)
    try:
        res = render_report(args.html, args.png, width=args.width, height=args.height,
                            budget_ms=args.budget_ms, browser=args.browser)  # fmt: skip
    except (BadInputError, RuntimeError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(res.summary())
    if res.screenshot is not None:
        w, h, content = png_stats(res.screenshot)
        print(f"  screenshot {w}x{h}, {content:.0%} of pixel rows hold content")
    for f in res.figures:
        print(f"  {f.div_id}: {'drawn' if f.ok else 'NOT DRAWN'} ({f.traces} trace layers)")
    return 0 if res.ok and res.expected > 0 else 1


if __name__ == "__main__":
    sys.exit(main())
