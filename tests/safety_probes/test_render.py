"""The HTML report renders in headless chromium with every figure drawn (issue 7).

The report is built by the real report writer from small synthetic stage outputs
(every section, every figure kind the demo makes), so no model runs here.
"""

import json
import zlib

import numpy as np
import pytest

from safety_probes.render import find_browser, png_stats, render_report, scan_figures
from safety_probes.report import SECTIONS, write_report

needs_browser = pytest.mark.skipif(
    find_browser() is None,
    reason="no chromium on PATH (Debian: apt-get install -y chromium; `make test` tries it)",
)


def _figure(i: int, name: str):
    import plotly.graph_objects as go

    rng = np.random.default_rng(i)
    kind = i % 4
    if kind == 0:
        trace = go.Scatter(x=list(range(10)), y=rng.random(10).tolist(), mode="lines+markers")
    elif kind == 1:
        trace = go.Histogram(x=rng.normal(size=200).tolist())
    elif kind == 2:
        trace = go.Heatmap(z=rng.random((6, 8)).tolist())
    else:
        trace = go.Bar(x=["a", "b", "c"], y=rng.random(3).tolist())
    return go.Figure(trace, layout={"title": name, "height": 320})


def _synthetic_report(out):
    names = [n for _, _, figs in SECTIONS for n in figs]
    (out / "figures").mkdir(parents=True)
    for i, name in enumerate(names):
        (out / "figures" / f"{name}.json").write_text(_figure(i, name).to_json())
    stages = {key: {"seconds": 1.0, "summary": {"test_auroc": 0.9}} for key, _, _ in SECTIONS}
    metrics = {"model": {"name": "synthetic"}, "machine": {"cpu": "test"},
               "config": {"fast": True}, "stages": stages}  # fmt: skip
    (out / "metrics.json").write_text(json.dumps(metrics))
    return write_report(out, metrics), names


def test_scan_figures__reads_plotly_divs_and_what_drew_inside():
    page = (
        '<div id="a" class="plotly-graph-div js-plotly-plot"><div><svg class="main-svg">'
        '<g class="trace scatter"></g><g class="trace bars"/></svg></div></div>'
        '<div id="b" class="plotly-graph-div"></div><br><svg class="main-svg"></svg>'
    )
    a, b = scan_figures(page)
    assert (a.div_id, a.ok, a.traces) == ("a", True, 2)
    assert (b.div_id, b.ok, b.svg) == ("b", False, False)  # the svg after b is not inside it


def test_png_stats__blank_image_scores_zero(tmp_path):
    def png(rows):
        h, w = rows.shape[:2]
        chunk = lambda k, d: (len(d).to_bytes(4, "big") + k + d  # noqa: E731
                              + zlib.crc32(k + d).to_bytes(4, "big"))  # fmt: skip
        ihdr = w.to_bytes(4, "big") + h.to_bytes(4, "big") + bytes([8, 2, 0, 0, 0])
        data = b"".join(b"\0" + r.tobytes() for r in rows)
        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                + chunk(b"IDAT", zlib.compress(data)) + chunk(b"IEND", b""))  # fmt: skip

    img = np.full((20, 30, 3), 255, np.uint8)
    (tmp_path / "blank.png").write_bytes(png(img))
    assert png_stats(tmp_path / "blank.png") == (30, 20, 0.0)
    img[5:10, 3:9] = 0
    (tmp_path / "text.png").write_bytes(png(img))
    assert png_stats(tmp_path / "text.png")[2] == pytest.approx(5 / 20)


@needs_browser
def test_render_report__every_figure_draws_in_headless_chromium(tmp_path):
    page, names = _synthetic_report(tmp_path / "out")
    shot = tmp_path / "report.png"
    res = render_report(page, shot, width=1000, height=1400)
    assert res.expected == len(names) >= 10
    assert res.ok, res.summary()
    assert all(f.traces >= 1 for f in res.figures), [(f.div_id, f.traces) for f in res.figures]
    w, h, content = png_stats(shot)
    assert (w, h) == (1000, 1400)
    assert content > 0.2, f"screenshot looks blank ({content:.0%} of rows hold content)"


@needs_browser
def test_screenshot_script__exits_1_when_a_figure_does_not_draw(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[2] / "scripts" / "screenshot_report.py"
    spec = importlib.util.spec_from_file_location("screenshot_report", path)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    page, names = _synthetic_report(tmp_path / "out")
    text = page.read_text()
    broken = 'if (document.getElementById("fig-refusal_candidates"))'
    assert broken in text
    page.write_text(text.replace(broken, "if (false)"))
    assert script.main([str(page)]) == 1
    out = capsys.readouterr().out
    assert f"{len(names) - 1}/{len(names)} plotly figures drew" in out
    assert "fig-refusal_candidates: NOT DRAWN" in out
    assert script.main([str(tmp_path / "missing.html")]) == 2
