"""plotly figures for steering results."""

from __future__ import annotations

from collections.abc import Sequence

import plotly.graph_objects as go
from plotly.subplots import make_subplots


def candidate_heatmaps(result) -> go.Figure:
    """Bypass / induce / KL per (position, layer) for a RefusalResult, chosen cell marked."""
    titles = ("bypass (screen): refusal score on harmful, ablated (lower = better)",
              "induce (screen): refusal score on harmless, added (> 0 needed)",
              "KL on harmless under ablation (screen)")  # fmt: skip
    fig = make_subplots(rows=3, cols=1, subplot_titles=titles, vertical_spacing=0.08)
    layers = list(range(result.candidates.shape[1]))
    for row, (z, scale) in enumerate(
        [
            (result.screen_bypass if result.screen_bypass is not None else result.bypass, "RdBu_r"),
            (result.screen_induce if result.screen_induce is not None else result.induce, "RdBu_r"),
            (result.screen_kl if result.screen_kl is not None else result.kl, "Viridis"),
        ],
        start=1,
    ):
        fig.add_trace(
            go.Heatmap(z=z.numpy(), x=layers, y=result.positions, colorscale=scale,
                       showscale=False, hovertemplate="layer %{x}, %{y}: %{z:.3f}<extra></extra>"),
            row=row, col=1,
        )  # fmt: skip
        fig.add_trace(
            go.Scatter(x=[result.layer], y=[result.position], mode="markers", showlegend=row == 1,
                       marker=dict(symbol="x", size=12, color="black"), name="chosen"),
            row=row, col=1,
        )  # fmt: skip
    fig.update_layout(height=750, title="Refusal-direction candidates")
    fig.update_xaxes(title_text="layer", row=3, col=1)
    return fig


def coeff_sweep_figure(coeffs: Sequence[float], rows: dict[str, Sequence[float]]) -> go.Figure:
    """Refusal on harmless / harmful and KL vs the addition coefficient."""
    fig = make_subplots(specs=[[{"secondary_y": True}]])
    for name, ys in rows.items():
        fig.add_trace(
            go.Scatter(x=list(coeffs), y=list(ys), mode="lines+markers", name=name),
            secondary_y=name.startswith("KL"),
        )
    fig.update_layout(title="Activation addition: safety / utility trade-off", height=420)
    fig.update_xaxes(title_text="addition coefficient")
    fig.update_yaxes(title_text="refusal rate", range=[0, 1.05], secondary_y=False)
    fig.update_yaxes(title_text="KL (harmless, last token)", secondary_y=True)
    return fig
