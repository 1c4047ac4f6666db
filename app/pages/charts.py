"""Plotly figure specs ({"data": [...], "layout": {...}}) for the pages' charts.

The pages embed them as JSON data blocks; /static/charts.js draws them with the locally served
plotly.min.js, so no script is inline and nothing comes from a CDN.
"""

from __future__ import annotations

import math
from typing import Any

from app.models import DensitySummary, Histogram, MapPoint

Spec = dict[str, Any]

# Interval bands, lowest to highest: light to dark, the same hue as the token shading.
BAND_COLOURS = [
    "#fde0c5",
    "#fcc89b",
    "#fbb071",
    "#f99848",
    "#f47f2a",
    "#e8680f",
    "#d35400",
    "#b84a00",
    "#9c3f00",
    "#7f3300",
]
NEUTRAL = "#8aa1b1"


def _layout(x_title: str, y_title: str, **extra: Any) -> dict[str, Any]:
    return {
        "height": 220,
        "margin": {"l": 48, "r": 12, "t": 8, "b": 40},
        "xaxis": {"title": {"text": x_title}},
        "yaxis": {"title": {"text": y_title}},
        "bargap": 0.02,
        "showlegend": False,
        "paper_bgcolor": "rgba(0,0,0,0)",
        "plot_bgcolor": "rgba(0,0,0,0)",
        **extra,
    }


def _bars(hist: Histogram, colours: list[str] | str, name: str) -> dict[str, Any]:
    edges = hist.edges
    n = min(len(hist.counts), max(len(edges) - 1, 0))
    centres = [(edges[i] + edges[i + 1]) / 2 for i in range(n)]
    widths = [edges[i + 1] - edges[i] for i in range(n)]
    return {
        "type": "bar",
        "x": centres,
        "y": hist.counts[:n],
        "width": widths,
        "marker": {"color": colours},
        "name": name,
        "hovertemplate": "%{x:.3g}: %{y}<extra></extra>",
    }


def band_of(value: float, band_edges: list[float]) -> int | None:
    for band in range(len(band_edges) - 1):
        if band_edges[band] <= value < band_edges[band + 1]:
            return band
    return len(band_edges) - 2 if band_edges and value >= band_edges[-1] else None


def activation_histogram(hist: Histogram, band_edges: list[float]) -> Spec | None:
    """Nonzero activations, each bar coloured by the interval band its centre falls in."""
    if not hist.counts:
        return None
    edges = hist.edges
    colours = []
    for i in range(min(len(hist.counts), len(edges) - 1)):
        band = band_of((edges[i] + edges[i + 1]) / 2, band_edges)
        colours.append(NEUTRAL if band is None else BAND_COLOURS[min(band, len(BAND_COLOURS) - 1)])
    return {"data": [_bars(hist, colours, "activations")], "layout": _layout("activation", "count")}


def logit_histogram(hist: Histogram) -> Spec | None:
    if not hist.counts:
        return None
    edges = hist.edges
    colours = ["#c0392b" if (edges[i] + edges[i + 1]) / 2 < 0 else "#2471a3" for i in range(len(edges) - 1)]
    return {
        "data": [_bars(hist, colours[: len(hist.counts)], "logit weights")],
        "layout": _layout("direct logit weight", "tokens"),
    }


def density_histogram(hist: Histogram, summary: DensitySummary | None = None) -> Spec | None:
    """Log10 densities of the units that fired, from 1 / tokens analysed up to 1; with `summary`,
    the ultralow region shaded and the measurable floor and the dead count marked."""
    if not hist.counts:
        return None
    layout = _layout("feature density (log scale)", "features")
    if hist.edges:
        low, high = math.floor(hist.edges[0]), math.ceil(hist.edges[-1])
        ticks = list(range(low, high + 1))
        layout["xaxis"] |= {"tickvals": ticks, "ticktext": [f"1e{t}" if t else "1" for t in ticks]}
    if summary is not None:
        shapes, notes = [], []
        if summary.min_density:
            floor = math.log10(summary.min_density)
            shapes.append(_vline(floor, "#5f6b76", "dot"))
            notes.append(_note(floor, "1 / tokens analysed", "left"))
        if summary.n_ultralow is not None:
            threshold = math.log10(summary.ultralow_threshold)
            shapes.append(
                {
                    "type": "rect",
                    "xref": "x",
                    "yref": "paper",
                    "x0": hist.edges[0] if hist.edges else threshold - 1,
                    "x1": threshold,
                    "y0": 0,
                    "y1": 1,
                    "fillcolor": "rgba(192, 57, 43, 0.08)",
                    "line": {"width": 0},
                    "layer": "below",
                }
            )
            notes.append(_note(threshold, f"ultralow ({summary.n_ultralow})", "right"))
        notes.append(
            {
                "xref": "paper",
                "yref": "paper",
                "x": 0,
                "y": 1,
                "xanchor": "left",
                "yanchor": "top",
                "showarrow": False,
                "text": f"dead (never fired): {summary.n_dead}",
                "font": {"size": 11},
            }
        )
        layout |= {"shapes": shapes, "annotations": notes, "margin": {"l": 48, "r": 12, "t": 20, "b": 40}}
    return {"data": [_bars(hist, "#2471a3", "features")], "layout": layout}


def _vline(x: float, colour: str, dash: str) -> dict[str, Any]:
    return {
        "type": "line",
        "xref": "x",
        "yref": "paper",
        "x0": x,
        "x1": x,
        "y0": 0,
        "y1": 1,
        "line": {"color": colour, "width": 1, "dash": dash},
    }


def _note(x: float, text: str, side: str) -> dict[str, Any]:
    return {
        "xref": "x",
        "yref": "paper",
        "x": x,
        "y": 0.85,
        "xanchor": "right" if side == "left" else "left",
        "showarrow": False,
        "text": text,
        "font": {"size": 10},
    }


MAP_LABEL_CHARS = 60


def feature_map(points: list[MapPoint], unit: str, link: str) -> Spec | None:
    """The run's feature map: a point per feature, coloured by log10 density; hover names it and
    a click opens it (`link` has `{index}` for the index: /static/charts.js follows it)."""
    if not points:
        return None
    densities = [p.density for p in points]
    floor = min((d for d in densities if d > 0), default=1e-9)
    return {
        "data": [
            {
                "type": "scatter",
                "mode": "markers",
                "x": [round(p.x, 3) for p in points],
                "y": [round(p.y, 3) for p in points],
                "customdata": [p.index for p in points],
                "text": [f"{unit} {p.index}: {p.label[:MAP_LABEL_CHARS]}" for p in points],
                "hovertemplate": "%{text}<extra></extra>",
                "marker": {
                    "size": 5,
                    "color": [round(math.log10(max(d, floor)), 2) for d in densities],
                    "colorscale": "Viridis",
                    "colorbar": {"title": {"text": "log₁₀ density"}, "thickness": 12},
                    "opacity": 0.8,
                },
            }
        ],
        "layout": _layout(
            "", "", height=520, xaxis={"visible": False}, yaxis={"visible": False}, hovermode="closest"
        ),
        "link": link,
    }


def training_curves(training_log: dict[str, Any]) -> list[tuple[str, Spec]]:
    """One line chart per logged series of the SAE and LM logs (loss, L0, dead...)."""
    charts: list[tuple[str, Spec]] = []
    for stage in ("sae", "lm"):
        records = [r for r in training_log.get(stage) or [] if isinstance(r, dict) and "step" in r]
        if not records:
            continue
        series = sorted(
            {k for r in records for k, v in r.items() if k != "step" and isinstance(v, int | float)}
        )
        traces = [
            {
                "type": "scatter",
                "mode": "lines",
                "name": name,
                "x": [r["step"] for r in records if isinstance(r.get(name), int | float)],
                "y": [r[name] for r in records if isinstance(r.get(name), int | float)],
            }
            for name in series
        ]
        layout = _layout("step", "", showlegend=True, legend={"orientation": "h", "y": -0.3}, height=260)
        if stage == "sae" and traces:
            # Series differ by orders of magnitude (MSE vs L0): a log axis keeps all readable.
            layout["yaxis"] = {"type": "log"}
        charts.append((stage, {"data": traces, "layout": layout}))
    return charts


def proxy_histogram(edges: list[float], positive: list[int], negative: list[int], unit: str) -> Spec | None:
    """The paper's case-study histogram: a unit's nonzero activations, each bar split into the
    tokens on the concept (orange) and the others (grey)."""
    n = min(len(positive), len(negative), max(len(edges) - 1, 0))
    if n == 0 or not any(positive[:n]) and not any(negative[:n]):
        return None
    centres = [(edges[i] + edges[i + 1]) / 2 for i in range(n)]
    widths = [edges[i + 1] - edges[i] for i in range(n)]
    traces = [
        {
            "type": "bar",
            "x": centres,
            "y": counts[:n],
            "width": widths,
            "marker": {"color": colour},
            "name": name,
            "hovertemplate": f"%{{x:.3g}}: %{{y}} {name}<extra></extra>",
        }
        for counts, colour, name in (
            (positive, "#e8680f", "on the concept"),
            (negative, NEUTRAL, "elsewhere"),
        )
    ]
    layout = _layout(f"{unit} activation", "tokens", barmode="stack", showlegend=True)
    layout["legend"] = {"orientation": "h", "x": 0, "y": 1.15}
    layout["margin"] = {"l": 48, "r": 12, "t": 24, "b": 40}
    return {"data": traces, "layout": layout}
