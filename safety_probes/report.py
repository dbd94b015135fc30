"""The HTML report: one self-contained page (plotly.js inlined once, no network)."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

from safety_probes.stages import atomic_write_text, load_figures

CMD = "safety-probes demo --out {out}"
SECTIONS = [
    ("probe", "Harmful-intent probe", ["probe_sweep", "probe_scores", "probe_pca"]),
    ("probe_smollm", "Harmful-intent probe on smollm2-135m-instruct (never refuses)",
     ["probe_sweep-smollm", "probe_scores-smollm", "probe_pca-smollm"]),
    ("jailbreak_probe", "Jailbreak-attempt probe (second gate signal)", ["jailbreak_scores"]),
    ("refusal", "Refusal direction", ["refusal_candidates"]),
    ("steering", "Ablation and addition", ["refusal_coeff_sweep"]),
    ("defense", "Probe-gated defenses vs baselines", ["defense_tradeoff"]),
    ("jailbreak_probe_smollm", "Jailbreak-attempt probe on smollm2-135m-instruct",
     ["jailbreak_scores-smollm"]),
    ("defense_smollm", "Block mode on smollm2-135m-instruct", []),
    ("backdoor", "Backdoor triggers", ["backdoor_heatmap", "backdoor_scores", "backdoor_spectral"]),
]  # fmt: skip


def _get(d: Any, *path: str, default: Any = None) -> Any:
    for p in path:
        if not isinstance(d, dict) or p not in d:
            return default
        d = d[p]
    return d


def _fmt(x: Any) -> str:
    if isinstance(x, float):
        return f"{x:.3f}"
    return "n/a" if x is None else str(x)


def summary_rows(metrics: dict) -> list[tuple[str, str, str]]:
    """(metric, value, baseline / note) rows for stdout and the report's headline table."""
    st = metrics.get("stages", {})
    rows: list[tuple[str, str, str]] = []

    def add(name: str, value: Any, note: str = "") -> None:
        if value is not None:
            rows.append((name, _fmt(value), note))

    s = _get(st, "probe", "summary", default={})
    add("probe test AUROC", s.get("test_auroc"),
        f"length-only {_fmt(s.get('length_auroc'))}, shuffled {_fmt(s.get('shuffled_labels_auroc'))}, "
        f"random dir {_fmt(s.get('random_direction_auroc'))}")  # fmt: skip
    add(
        "probe TPR @1% FPR (test)",
        s.get("test_tpr_at_1pct_fpr"),
        "threshold from harmless val",
    )
    add("probe TPR, jailbreak-wrapped (held-out templates)", s.get("jailbreak_tpr"))
    add("probe flagged, harmless in the same wrappers", s.get("jailbreak_benign_flagged"))
    add(
        "probe flagged, borderline test",
        s.get("borderline_flagged"),
        "benign prompts with scary words",
    )
    add("probe leave-one-category-out AUROC", s.get("loco_mean_auroc"))
    j = _get(st, "jailbreak_probe", "summary", default={})
    add("jailbreak probe flagged, harmful in held-out wrappers", j.get("jailbreak_harmful_flagged"),
        f"harmless in them {_fmt(j.get('jailbreak_harmless_flagged'))}")  # fmt: skip
    add("jailbreak probe flagged, long benign test", j.get("long_benign_flagged"),
        f"bare harmless {_fmt(j.get('bare_harmless_flagged'))}, "
        f"borderline {_fmt(j.get('borderline_flagged'))}")  # fmt: skip
    s2 = _get(st, "probe_smollm", "summary", default={})
    add("smollm probe test AUROC", s2.get("test_auroc"), "model never refuses")
    r = _get(st, "steering", "rates", default={})
    add(
        "refusal harmful test, baseline",
        _get(r, "harmful_baseline", "refusal_rate"),
        "substring judge",
    )
    add("refusal harmful test, ablation", _get(r, "harmful_ablate", "refusal_rate"))
    add("refusal harmless test, baseline", _get(r, "harmless_baseline", "refusal_rate"))
    add("refusal harmless test, addition", _get(r, "harmless_add", "refusal_rate"))
    add("KL harmless under ablation", _get(st, "steering", "kl_harmless_ablate"), "last token")
    add("KL harmless under ablation, answered prompts",
        _get(st, "steering", "kl_harmless_ablate_answered"),
        "those the model answers without ablation")  # fmt: skip
    add(
        "orthogonalised vs hook max|dlogit|",
        _get(st, "steering", "ortho_vs_hook_max_abs_logit_diff"),
    )
    rows += _defense_rows("defense", _get(st, "defense", "table", default={}))
    for mode, ov in (_get(st, "defense", "overhead", default={}) or {}).items():
        add(f"defense overhead ({mode})", _get(ov, "overhead"), "vs plain generation")
    rows += _defense_rows("smollm", _get(st, "defense_smollm", "table", default={}))
    for k, v in (_get(st, "backdoor", "summary", default={}) or {}).items():
        add(f"backdoor {k}", v)
    return rows


def _defense_rows(prefix: str, table: dict) -> list[tuple[str, str, str]]:
    """One summary row per defense: refusal rates on the four main sets, and the
    wrapper-confound set where it was run."""
    rows = []
    for name, row in table.items():
        vals = "/".join(_fmt(_get(row, k, "refusal_rate")) for k in ("harmful", "jailbreak",
                                                                     "harmless", "borderline"))  # fmt: skip
        note = "refusal: harmful/jailbreak/harmless/borderline"
        if "jailbreak-harmless" in row:
            note += (
                f"; harmless in jailbreaks {_fmt(_get(row, 'jailbreak-harmless', 'refusal_rate'))}"
            )
        rows.append((f"{prefix} {name}", vals, note))
    return rows


def _table(rows: list[tuple[str, str, str]]) -> str:
    body = "".join(
        f"<tr><td>{html.escape(a)}</td><td class=num>{html.escape(b)}</td><td>{html.escape(c)}</td></tr>"
        for a, b, c in rows
    )
    return f"<table><tr><th>metric</th><th>value</th><th>baseline / note</th></tr>{body}</table>"


def write_report(out: Path, metrics: dict) -> Path:
    """Write ``OUT/report.html`` from the metrics and the cached figures."""
    import plotly.offline

    out = Path(out)
    figs = load_figures(out)
    cmd = CMD.format(out=out) + (" --fast" if _get(metrics, "config", "fast") else "")
    parts = [f"<h1>safety-probes report</h1><p>Model: <code>{html.escape(json.dumps(metrics.get('model')))}"
             f"</code><br>Machine: <code>{html.escape(json.dumps(metrics.get('machine')))}</code><br>"
             f"Every number on this page is reproduced by <code>{html.escape(cmd)}</code> "
             f"(stage outputs cached in <code>{html.escape(str(out / 'stages'))}</code>).</p>",
             "<h2>Headline metrics</h2>", _table(summary_rows(metrics))]  # fmt: skip
    for key, title, fig_names in SECTIONS:
        res = _get(metrics, "stages", key)
        if res is None:
            continue
        parts.append(f"<h2>{html.escape(title)}</h2>")
        parts.append(f"<p class=cmd>stage <code>{key}</code>, {res.get('seconds', '?')} s</p>")
        for name in fig_names:
            if name in figs:
                parts.append(figs[name].to_html(full_html=False, include_plotlyjs=False,
                                                div_id=f"fig-{name}"))  # fmt: skip
        small = {
            k: v for k, v in res.items() if k not in ("sweep", "table", "under_ablation_attack")
        }
        parts.append(f"<details><summary>all numbers</summary><pre>"
                     f"{html.escape(json.dumps(small, indent=1, default=str)[:20000])}</pre></details>")  # fmt: skip
    style = ("body{font-family:sans-serif;max-width:1100px;margin:auto;padding:1em}"
             "table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px}"
             ".num{text-align:right;font-family:monospace}pre{font-size:11px}")  # fmt: skip
    page = (f"<!doctype html><html><head><meta charset=utf-8><title>safety-probes report</title>"
            f"<style>{style}</style><script>{plotly.offline.get_plotlyjs()}</script></head>"
            f"<body>{''.join(parts)}</body></html>")  # fmt: skip
    path = out / "report.html"
    atomic_write_text(path, page)
    return path
