"""Render the HTML report in headless chromium: screenshot it and check every figure drew.

The report's acceptance test (issue 7) is that ``report.html`` opens with no network
and that every plotly figure on it is actually drawn. :func:`render_report` loads the
page in headless chromium with networking cut off, dumps the DOM after the scripts ran
and checks each figure ``<div class="plotly-graph-div">`` of the page: plotly marks a
drawn div with the class ``js-plotly-plot`` and fills it with an ``<svg class="main-svg">``.
It can also write a PNG screenshot of the top of the page (used for the README).
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import tempfile
import zlib
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

from probes.errors import BadInputError

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# elements that never have an end tag in serialised HTML
_VOID = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param",
         "source", "track", "wbr"}  # fmt: skip
# no network: every host name fails to resolve and any proxied request goes nowhere
_OFFLINE = ["--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=http://127.0.0.1:9",
            "--proxy-bypass-list=<-loopback>", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--disable-extensions",
            "--no-first-run", "--no-default-browser-check"]  # fmt: skip


def find_browser() -> str | None:
    """Path of a chromium-family browser on ``PATH``, or None."""
    for name in BROWSERS:
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class FigureState:
    """One plotly figure div of the page and what the browser made of it."""

    div_id: str
    drawn: bool = False  # gained class js-plotly-plot
    svg: bool = False  # holds an <svg class="main-svg">
    traces: int = 0  # drawn trace groups (scatter/bar/heatmap/... layers)

    @property
    def ok(self) -> bool:
        return self.drawn and self.svg


@dataclass
class RenderResult:
    """What :func:`render_report` saw: the figures expected, those drawn, the screenshot."""

    html: Path
    figures: list[FigureState] = field(default_factory=list)
    screenshot: Path | None = None

    @property
    def expected(self) -> int:
        return len(self.figures)

    @property
    def drawn(self) -> int:
        return sum(f.ok for f in self.figures)

    @property
    def missing(self) -> list[str]:
        return [f.div_id for f in self.figures if not f.ok]

    @property
    def ok(self) -> bool:
        return self.drawn == self.expected

    def summary(self) -> str:
        line = f"{self.drawn}/{self.expected} plotly figures drew in {self.html}"
        if self.missing:
            line += f"; not drawn: {', '.join(self.missing)}"
        if self.screenshot is not None:
            line += f"; screenshot {self.screenshot}"
        return line


class _FigureScan(HTMLParser):
    """Find ``plotly-graph-div`` divs and what is drawn inside each (tracks nesting)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[tuple[str, FigureState | None]] = []
        self.figures: list[FigureState] = []

    def _inside(self) -> FigureState | None:
        for _, fig in reversed(self.stack):
            if fig is not None:
                return fig
        return None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        classes = set((a.get("class") or "").split())
        fig = None
        if tag == "div" and "plotly-graph-div" in classes:
            fig = FigureState(a.get("id") or f"#{len(self.figures)}")
            fig.drawn = "js-plotly-plot" in classes
            self.figures.append(fig)
        else:
            outer = self._inside()
            if outer is not None:
                if tag == "svg" and "main-svg" in classes:
                    outer.svg = True
                if tag == "g" and ("trace" in classes or "hm" in classes):
                    outer.traces += 1
        if tag not in _VOID:
            self.stack.append((tag, fig))

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.handle_starttag(tag, attrs)
        if tag not in _VOID and self.stack and self.stack[-1][0] == tag:
            self.stack.pop()

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i][0] == tag:
                del self.stack[i:]
                return


def scan_figures(html_text: str) -> list[FigureState]:
    """The plotly figure divs of an HTML text (a saved page or a browser's DOM dump)."""
    scan = _FigureScan()
    scan.feed(html_text)
    scan.close()
    return scan.figures


def png_stats(path: str | Path) -> tuple[int, int, float]:
    """(width, height, fraction of pixel rows that are not one flat colour) of an 8-bit PNG.

    A blank page scores 0. No image library needed: a row that is one colour filters
    (None/Sub/Up/Average/Paeth) to bytes that repeat every pixel after the first, so a row
    whose filtered bytes do not repeat holds content (text, lines, plots).
    """
    import numpy as np

    raw = Path(path).read_bytes()
    if raw[:8] != b"\x89PNG\r\n\x1a\n":
        raise BadInputError(f"{path} is not a PNG")
    pos, idat, w = 8, [], 0
    h = depth = ctype = 0
    while pos < len(raw):
        (n,), kind = struct.unpack(">I", raw[pos : pos + 4]), raw[pos + 4 : pos + 8]
        body = raw[pos + 8 : pos + 8 + n]
        if kind == b"IHDR":
            w, h, depth, ctype = struct.unpack(">IIBB", body[:10])
        elif kind == b"IDAT":
            idat.append(body)
        pos += 12 + n
    bpp = {0: 1, 2: 3, 4: 2, 6: 4}.get(ctype)
    if depth != 8 or bpp is None or w < 2:
        raise BadInputError(f"{path}: unsupported PNG (bit depth {depth}, colour type {ctype})")
    rows = np.frombuffer(zlib.decompress(b"".join(idat)), np.uint8).reshape(h, 1 + w * bpp)
    px = rows[:, 1 + bpp :].reshape(h, w - 1, bpp)
    content = (px != px[:, :1, :]).any(axis=(1, 2))
    return w, h, float(content.mean())


def _run(cmd: list[str], timeout: float) -> str:
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"headless browser timed out after {timeout:.0f} s") from None
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-5:]
        raise RuntimeError(f"headless browser failed (exit {proc.returncode}): {' | '.join(tail)}")
    return proc.stdout


def render_report(
    html_path: str | Path,
    screenshot: str | Path | None = None,
    *,
    width: int = 1280,
    height: int = 1600,
    budget_ms: int = 20000,
    browser: str | None = None,
    timeout: float = 180.0,
) -> RenderResult:
    """Load ``html_path`` in headless chromium (no network) and check every figure drew.

    Returns the figures the saved page declares, each marked with whether the browser
    drew it. With ``screenshot``, also writes a ``width`` x ``height`` PNG of the top of
    the page. ``budget_ms`` is chromium's virtual-time budget for the page's scripts.
    Raises :class:`BadInputError` for a missing page and ``RuntimeError`` when no
    browser is installed or it fails.
    """
    html_path = Path(html_path).resolve()
    if not html_path.is_file():
        raise BadInputError(f"no report at {html_path}")
    exe = browser or find_browser()
    if exe is None:
        raise RuntimeError(f"no headless browser found on PATH (tried {', '.join(BROWSERS)})")
    expected = [f.div_id for f in scan_figures(html_path.read_text(encoding="utf-8"))]
    url = html_path.as_uri()
    with tempfile.TemporaryDirectory(prefix="sp-chromium-") as profile:
        base = [exe, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                "--hide-scrollbars", f"--user-data-dir={profile}", *_OFFLINE,
                f"--virtual-time-budget={budget_ms}", f"--window-size={width},{height}"]  # fmt: skip
        dom = _run([*base, "--dump-dom", url], timeout)
        shot = None
        if screenshot is not None:
            shot = Path(screenshot).resolve()
            shot.parent.mkdir(parents=True, exist_ok=True)
            _run([*base, "--run-all-compositor-stages-before-draw", f"--screenshot={shot}", url],
                 timeout)  # fmt: skip
            if not shot.is_file():
                raise RuntimeError(f"headless browser wrote no screenshot to {shot}")
    seen = {f.div_id: f for f in scan_figures(dom)}
    figures = [seen.get(i, FigureState(i)) for i in expected]
    return RenderResult(html_path, figures, shot)
