"""The report's figures as plotly dicts: the rounds on a timeline, each GPU's utilisation
and memory, progress over time, the energy terms' histograms."""

from __future__ import annotations

import base64
import time
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from supervisor.commands.report import data as rd, series
from supervisor.core import slots

TOP_OBJECTS = 10
SAMPLE_POINTS = 12_000  # per figure, shared among the GPUs
COLOURS = {"merged": "#2ca02c", "discarded": "#9e9e9e", "failed": "#d62728",
           "interrupted": "#ff7f0e", "running": "#1f77b4"}


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Clock:
    """Epoch seconds to plotly date-axis milliseconds in the local time of the report."""

    def __init__(self, now: float) -> None:
        self.offset_s = time.localtime(now).tm_gmtoff
        sign, minutes = "+-"[self.offset_s < 0], abs(self.offset_s) // 60
        self.zone = f"UTC{sign}{minutes // 60:02d}:{minutes % 60:02d}"

    def ms(self, t: Any) -> Any:
        return (np.asarray(t, float) + self.offset_s) * 1000.0


def _typed(values: np.ndarray) -> dict[str, str]:
    """A numeric array as plotly.js's base64 typed array (``{dtype, bdata}``)."""
    return {"dtype": values.dtype.str.lstrip("<|"), "bdata": base64.b64encode(
        np.ascontiguousarray(values).tobytes()).decode()}


def timeline_figure(att: dict[str, Any], clock: Clock) -> dict[str, Any]:
    """A figure dict, not go.Figure: validating 60,000 bars' hover texts takes a second."""
    rows = rd.row_order(att["row"])
    index = {r: i for i, r in enumerate(rows)}
    y = np.array([index[r] for r in att["row"]], np.int16)
    outcome = np.array(att["outcome"], object)
    layout = go.Figure(layout={
        "barmode": "overlay", "height": max(260, 30 * len(rows) + 140), "showlegend": True,
        "title": "Rounds per GPU (each bar one attempt, start to end)",
        "xaxis": {"type": "date", "title": f"local time ({clock.zone})"},
        "yaxis": {"tickvals": list(range(len(rows))), "ticktext": rows,
                  "autorange": "reversed"}}).to_dict()["layout"]
    traces = []
    for name in rd.OUTCOMES:
        sel = np.flatnonzero(outcome == name)
        if not len(sel):
            continue
        start, end = att["start"][sel], att["end"][sel]
        text = [f"{att['code'][i]} r{att['round_id'][i]}: {name}, {_duration(e - s)}"
                + (f", {att['accepted'][i]} accepted" if att["accepted"][i] is not None else "")
                for i, s, e in zip(sel.tolist(), start.tolist(), end.tolist())]
        traces.append({
            "type": "bar", "orientation": "h", "name": f"{name} ({len(sel)})",
            "y": _typed(y[sel]), "x": _typed(((end - start) * 1000.0).astype("<f4")),
            "base": np.round(clock.ms(start)).astype(np.int64).tolist(),
            "marker": {"color": COLOURS[name],
                       "line": {"width": 1 if len(y) < 5000 else 0, "color": "white"}},
            "hovertext": text, "hoverinfo": "text"})
    return {"data": traces, "layout": layout}


def gpu_figure(gpus: dict[Any, dict[str, np.ndarray]], clock: Clock) -> go.Figure:
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=("utilisation (%)", "memory used (GiB)"))
    points = max(200, SAMPLE_POINTS // max(1, len(gpus)))
    capacity = 0.0
    for n, (g, a) in enumerate(sorted(gpus.items(), key=lambda i: slots.order(i[0]))):
        t, util, used = series.downsample(a["t"], a["util_percent"], a["used_mib"] / 1024,
                                      points=points, peak=(False, True))
        t, util, used = series.with_gaps(t, util, used)
        colour = f"hsl({n * 137 % 360},65%,45%)"
        x = clock.ms(t)
        fig.add_scatter(x=x, y=util.astype(np.float32), name=slots.label(g), legendgroup=str(g),
                        line={"color": colour, "width": 1}, row=1, col=1)
        fig.add_scatter(x=x, y=used.astype(np.float32), name=slots.label(g), legendgroup=str(g),
                        showlegend=False, line={"color": colour, "width": 1}, row=2, col=1)
        capacity = max(capacity, float(a["total_mib"].max()) / 1024)
    if capacity > 0:
        fig.add_hline(y=capacity, line_dash="dot", line_color="#666", row=2, col=1,
                      annotation_text=f"{capacity:.0f} GiB", annotation_position="top left")
    fig.update_layout(height=520, title="GPU utilisation and memory (sampled)")
    fig.update_xaxes(type="date", title_text=f"local time ({clock.zone})", row=2, col=1)
    fig.update_yaxes(range=[0, 105], row=1, col=1)
    return fig


def progress_figure(prog: dict[str, Any], target: int, eta: float | None,
                    now: float, clock: Clock) -> go.Figure:
    fig = go.Figure()
    t, total = prog["t"], prog["total"]
    if len(t) > 4000:
        keep = np.unique(np.r_[np.linspace(0, len(t) - 1, 4000).astype(int), len(t) - 1])
        t, total = t[keep], total[keep]
    fig.add_scatter(x=clock.ms(t), y=total, name="all objects", line_shape="hv",
                    line={"width": 3, "color": "#222"})
    top = sorted(prog["objects"].items(), key=lambda kv: -kv[1][1][-1])[:TOP_OBJECTS]
    for code, (ot, oy) in top:
        fig.add_scatter(x=clock.ms(ot), y=oy, name=code[:40], line_shape="hv",
                        line={"width": 1}, visible="legendonly" if len(top) > 5 else True)
    if eta and len(t) and total[-1] < target:
        fig.add_scatter(x=clock.ms([t[-1], now + eta]), y=[total[-1], target],
                        name=f"ETA {_duration(eta)}", line={"dash": "dash", "color": "#888"})
    fig.update_layout(height=420, title=f"Accepted grasps over time (top {len(top)} objects "
                      "by grasps in the legend)", xaxis={"type": "date",
                      "title": f"local time ({clock.zone})"}, yaxis={"title": "grasps"})
    return fig


def energy_figure(values: dict[str, np.ndarray], thresholds: dict[str, float]) -> go.Figure:
    fig = make_subplots(rows=2, cols=3, subplot_titles=rd.ENERGY_TERMS,
                        horizontal_spacing=0.07, vertical_spacing=0.15)
    for i, term in enumerate(rd.ENERGY_TERMS):
        row, col = i // 3 + 1, i % 3 + 1
        if term not in values:
            continue
        limit = thresholds.get(term)
        edges, counts = series.histogram(values[term], limit)
        fig.add_bar(x=(edges[:-1] + edges[1:]) / 2, y=counts, width=np.diff(edges),
                    marker_color="#4c78a8", showlegend=False, name=term, row=row, col=col)
        if limit is not None:
            fig.add_vline(x=limit, line_dash="dash", line_color="#d62728", row=row, col=col,
                          annotation_text=f"max {limit:g}", annotation_position="top right")
    fig.update_layout(height=560, bargap=0, title=f"Energy terms of the delivered grasps "
                      f"({len(next(iter(values.values()), []))}; dashed: filter thresholds)")
    return fig
