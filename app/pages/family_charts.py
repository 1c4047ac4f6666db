"""Plotly specs of the study's views: a feature family drawn as a tree across dictionary sizes
(the paper's feature-splitting figure) and histograms of best-match correlations."""

from __future__ import annotations

from app.family_models import BestMatchHistogram, FamilyTree
from app.links import feature_url
from app.pages.charts import Spec, _layout
from app.queries.splitting import SizeMapPointOut

LABEL_CHARS = 50


def _leaf_positions(tree: FamilyTree) -> dict[int, float]:
    """y of every node: leaves in depth-first order, a parent at the mean of its children."""
    children: dict[int, list[int]] = {node.id: [] for node in tree.nodes}
    for node in tree.nodes:
        if node.parent is not None:
            children[node.parent].append(node.id)
    y: dict[int, float] = {}
    next_leaf = 0.0

    def place(node_id: int) -> float:
        nonlocal next_leaf
        if not children[node_id]:
            y[node_id] = next_leaf
            next_leaf += 1
        else:
            y[node_id] = sum(place(child) for child in children[node_id]) / len(children[node_id])
        return y[node_id]

    for node in tree.nodes:
        if node.parent is None:
            place(node.id)
    return y


def family_tree(tree: FamilyTree) -> Spec | None:
    """Nodes by dictionary size (x) and family branch (y); edges to each node's parent; a click
    opens the feature (customdata holds its path: /static/charts.js follows it)."""
    if not tree.nodes:
        return None
    y = _leaf_positions(tree)
    by_id = {node.id: node for node in tree.nodes}
    edge_x: list[float | None] = []
    edge_y: list[float | None] = []
    for node in tree.nodes:
        if node.parent is not None:
            parent = by_id[node.parent]
            edge_x += [parent.level, node.level, None]
            edge_y += [y[parent.id], y[node.id], None]
    sizes = [level.n_features for level in tree.levels]
    nodes = tree.nodes
    return {
        "data": [
            {
                "type": "scatter",
                "mode": "lines",
                "x": edge_x,
                "y": edge_y,
                "line": {"color": "#b3c2cc", "width": 1.5},
                "hoverinfo": "skip",
            },
            {
                "type": "scatter",
                "mode": "markers+text",
                "x": [node.level for node in nodes],
                "y": [y[node.id] for node in nodes],
                "customdata": [node.url for node in nodes],
                "text": [str(node.index) for node in nodes],
                "textposition": "middle right",
                "hovertext": [
                    f"{sizes[node.level]} features, #{node.index}: {node.label[:LABEL_CHARS]}"
                    + ("" if node.correlation is None else f" (r {node.correlation:.2f} with parent)")
                    for node in nodes
                ],
                "hovertemplate": "%{hovertext}<extra></extra>",
                "marker": {
                    "size": [14 if node.on_path else 9 for node in nodes],
                    "color": ["#d35400" if node.on_path else "#2471a3" for node in nodes],
                },
            },
        ],
        "layout": _layout(
            "dictionary size",
            "",
            height=max(240, 34 * (max(y.values()) + 1) + 60),
            xaxis={
                "title": {"text": "dictionary size (features)"},
                "tickvals": list(range(len(sizes))),
                "ticktext": [str(s) for s in sizes],
                "range": [-0.3, len(sizes) - 0.4],
            },
            yaxis={"visible": False},
            hovermode="closest",
        ),
    }


def best_match_histograms(
    features: list[BestMatchHistogram], neurons: list[BestMatchHistogram]
) -> Spec | None:
    """The paper's universality figure: best-match correlation, features against neurons."""
    traces = []
    for name, colour, items in (("features", "#d35400", features), ("neurons", "#2471a3", neurons)):
        for item in items:
            n = min(len(item.counts), len(item.edges) - 1)
            total = max(sum(item.counts[:n]), 1)
            traces.append(
                {
                    "type": "bar",
                    "name": f"{name} ({item.run.slug} → {item.other.slug})",
                    "x": [(item.edges[i] + item.edges[i + 1]) / 2 for i in range(n)],
                    "y": [count / total for count in item.counts[:n]],
                    "marker": {"color": colour},
                    "opacity": 0.6,
                    "hovertemplate": "r %{x:.2f}: %{y:.1%}<extra></extra>",
                }
            )
    if not traces:
        return None
    return {
        "data": traces,
        "layout": _layout(
            "best-match activation correlation",
            "share of units",
            barmode="overlay",
            showlegend=True,
            legend={"orientation": "h", "y": -0.35},
            height=300,
        ),
    }


SIZE_COLOURS = ["#2471a3", "#d35400", "#1e8449", "#8e44ad", "#b7950b", "#c0392b", "#17a589"]


def size_map(points: list[SizeMapPointOut]) -> Spec | None:
    """Every feature of several dictionary sizes on one map, a colour per size (the paper's UMAP
    of several runs together); hover names a feature, a click opens it."""
    if not points:
        return None
    by_run: dict[str, list[SizeMapPointOut]] = {}
    for point in points:
        by_run.setdefault(point.run, []).append(point)
    traces = []
    for i, (slug, members) in enumerate(by_run.items()):
        n = members[0].n_features
        traces.append(
            {
                "type": "scatter",
                "mode": "markers",
                "name": f"{n} features ({slug})",
                "x": [p.x for p in members],
                "y": [p.y for p in members],
                "customdata": [feature_url(slug, p.index) for p in members],
                "text": [f"{n}: #{p.index} {p.label[:LABEL_CHARS]}" for p in members],
                "hovertemplate": "%{text}<extra></extra>",
                # Larger dictionaries have more, finer features: smaller points, drawn on top.
                "marker": {
                    "size": max(3, 8 - i),
                    "color": SIZE_COLOURS[i % len(SIZE_COLOURS)],
                    "opacity": 0.7,
                },
            }
        )
    return {
        "data": traces,
        "layout": _layout(
            "",
            "",
            height=560,
            xaxis={"visible": False},
            yaxis={"visible": False},
            hovermode="closest",
            showlegend=True,
            legend={"orientation": "h", "y": -0.05},
        ),
    }
