"""``python -m supervisor report CONFIG [--out report.html]``: one self-contained HTML page.

Plotly's JavaScript is embedded once, so the file opens offline and from a copy. Works on
a live run (reads only; see report_data) and on a finished one. Kept small at scale: one
timeline trace per outcome, histograms binned here, samples averaged down.
"""

from __future__ import annotations

import base64
import html
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from supervisor import paths, report_data as rd, samples as smp, slots
from supervisor.fsutil import atomic_write_bytes

REPORT_NAME = "report.html"
TOP_OBJECTS = 10
SAMPLE_POINTS = 12_000  # per figure, shared among the GPUs
COLOURS = {"merged": "#2ca02c", "discarded": "#9e9e9e", "failed": "#d62728",
           "interrupted": "#ff7f0e", "running": "#1f77b4"}
PLOT_CONFIG = {"displaylogo": False, "responsive": True}


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
        t, util, used = rd.downsample(a["t"], a["util_percent"], a["used_mib"] / 1024,
                                      points=points, peak=(False, True))
        t, util, used = rd.with_gaps(t, util, used)
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
        edges, counts = rd.histogram(values[term], limit)
        fig.add_bar(x=(edges[:-1] + edges[1:]) / 2, y=counts, width=np.diff(edges),
                    marker_color="#4c78a8", showlegend=False, name=term, row=row, col=col)
        if limit is not None:
            fig.add_vline(x=limit, line_dash="dash", line_color="#d62728", row=row, col=col,
                          annotation_text=f"max {limit:g}", annotation_position="top right")
    fig.update_layout(height=560, bargap=0, title=f"Energy terms of the delivered grasps "
                      f"({len(next(iter(values.values()), []))}; dashed: filter thresholds)")
    return fig


def object_table(rows: list[dict[str, Any]]) -> str:
    dedup = any(r["after_dedup"] is not None for r in rows)
    peak = any(r["peak_mib"] is not None for r in rows)
    cols = [("object", "object_code", None), ("status", "status", None),
            ("grasps", "collected", None), ("merged", "merged", "{}"),
            ("failed", "failed", "{}"), ("discarded", "discarded", "{}"),
            ("accepted after filter", "acceptance", "{:.0%}")]
    cols += [("after dedup", "after_dedup", "{:.0%}")] if dedup else []
    cols += [("GPU-hours", "gpu_hours", "{:.3g}"),
             ("grasps/GPU-h", "grasps_per_gpu_hour", "{:.0f}")]
    cols += [("peak MiB", "peak_mib", "{}")] if peak else []
    cols += [("failures", "failures", None)]
    head = "".join(f'<th title="click to sort">{html.escape(c[0])}</th>' for c in cols)
    body = []
    for r in rows:
        cells = []
        for _, key, fmt in cols:
            v = r[key]
            if key == "collected":
                cells.append(f'<td data-v="{v}">{v}/{r["target"]}</td>')
            elif fmt is None:
                title = f' title="{html.escape(r["reason"])}"' if key == "status" and \
                    r.get("reason") else ""
                cells.append(f"<td{title}>{html.escape(str(v or ''))}</td>")
            else:
                shown = "-" if v is None else fmt.format(v)
                cells.append(f'<td data-v="{"" if v is None else v}">{shown}</td>')
        body.append("<tr>" + "".join(cells) + "</tr>")
    return (f'<table class="sortable"><thead><tr>{head}</tr></thead><tbody>'
            + "\n".join(body) + "</tbody></table>")


# Click a header to sort by it (again: the other way); numbers as numbers, "-" lowest.
SORT_JS = """document.querySelectorAll('table.sortable th').forEach((th, i) =>
th.addEventListener('click', () => { const body = th.closest('table').tBodies[0];
const up = th.dataset.dir !== 'up'; th.dataset.dir = up ? 'up' : 'down';
const key = r => { const v = r.cells[i].dataset.v ?? r.cells[i].textContent;
  return v === '' ? -Infinity : (isNaN(v) ? v : Number(v)); };
body.append(...Array.from(body.rows).sort((a, b) => { const x = key(a), y = key(b);
  const d = typeof x === typeof y ? (x < y ? -1 : x > y ? 1 : 0) : (typeof x < typeof y ? -1 : 1);
  return up ? d : -d; })); }));"""
CSS = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
dl{display:grid;grid-template-columns:repeat(auto-fill,minmax(13em,1fr));gap:.6em}
dl div{background:#f4f4f4;padding:.5em .8em;border-radius:6px}dt{font-size:.8em;color:#666}
dd{margin:0;font-size:1.25em;font-weight:600}.note{color:#666;font-style:italic}
table{border-collapse:collapse;font-size:.85em}
th,td{padding:.2em .6em;text-align:right;white-space:nowrap}td:last-child{text-align:left}
th{cursor:pointer;background:#eee;position:sticky;top:0}
td:first-child,th:first-child{text-align:left}tr:nth-child(even){background:#fafafa}
.scroll{max-height:40em;overflow:auto}"""


HEADLINE = (
    ("objects done / failed", lambda h: f"{h['done']} / {h['failed']} of {h['objects']}"),
    ("grasps", lambda h: f"{h['grasps']:,} of {h['target']:,}"),
    ("wall time", lambda h: _duration(h["wall_s"])),
    ("GPU-hours", lambda h: f"{h['gpu_hours']:.3g}"),
    ("mean GPU utilisation", lambda h: "not sampled (no NVML)"
     if h["mean_util_percent"] is None else f"{h['mean_util_percent']:.0f}%"),
    ("launch gap (median)", lambda h: "-" if h["launch_gap_s"] is None
     else f"{h['launch_gap_s']:.3g} s"),
    ("ETA", lambda h: "done" if h["finished"] else _duration(h["eta_s"])),
    ("largest round memory", lambda h: "not sampled" if h["peak_round_mib"] is None
     else f"{h['peak_round_mib']:,} MiB"),
)


def build(exp_dir: Path, now: float | None = None) -> str:
    """The report of the experiment in ``exp_dir`` as one HTML document."""
    from supervisor.lock import live_holder

    now = time.time() if now is None else now
    live = live_holder(exp_dir)
    m = rd.load_manifest(exp_dir)
    s = smp.load(smp.samples_path(exp_dir))
    att = rd.attempts(m, now, live=live is not None)
    rows = rd.object_rows(m, att, s.round_peak_mib)
    head = rd.headline(m, rows, att, smp.mean_util(s.gpus), s.round_peak_mib)
    clock = Clock(now)
    values, unreadable = rd.energies(exp_dir, list(m["objects"]))
    figures = [
        ("Timeline", timeline_figure(att, clock) if att["row"] else "No round started yet."),
        ("GPUs", gpu_figure(s.gpus, clock) if s.gpus else "No GPU samples: NVML was not "
         "available (or nothing sampled yet), so utilisation and memory were not recorded."),
        ("Progress", progress_figure(rd.progress(m), head["target"], head["eta_s"], now,
                                     clock)),
        ("Objects", f'<div class="scroll">{object_table(rows)}</div>'),
        ("Energy terms", energy_figure(values, rd.thresholds(m)) if values else
         "No grasps delivered yet."),
    ]
    stamp = "%Y-%m-%d %H:%M:%S"
    name = html.escape(str(m.get("exp_name")))
    parts = [f"<h1>Experiment {name}</h1><p class=\"note\">"
             f"{f'running (supervisor pid {live})' if live else 'not running'}; manifest "
             f"updated {time.strftime(stamp, time.localtime(m.get('updated_at') or now))}; "
             f"report made {time.strftime(stamp, time.localtime(now))} ({clock.zone})</p>",
             "<dl>" + "".join(f"<div><dt>{k}</dt><dd>{html.escape(show(head))}</dd></div>"
                              for k, show in HEADLINE) + "</dl>"]
    for title, fig in figures:
        parts.append(f"<h2>{title}</h2>")
        if isinstance(fig, str):
            parts.append(fig if fig.startswith("<") else f'<p class="note">{fig}</p>')
        else:
            parts.append(pio.to_html(fig, full_html=False, include_plotlyjs=False,
                                     config=PLOT_CONFIG, validate=False))
    if unreadable:
        parts.append(f'<p class="note">{unreadable} final.npz file(s) could not be read.</p>')
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>Report: {name}"
            f"</title><style>{CSS}</style><script type=\"text/javascript\">{get_plotlyjs()}"
            f"</script></head><body>" + "\n".join(parts) + f"<script>{SORT_JS}</script>"
            "</body></html>\n")


def write(exp_dir: Path, out: Path | None = None) -> Path:
    """Write the report (atomically) to ``out``, by default ``{exp_dir}/report.html``."""
    out = exp_dir / REPORT_NAME if out is None else out
    atomic_write_bytes(out, build(exp_dir).encode())
    return out


def main(argv: Sequence[str]) -> int:
    from supervisor.commands import Parser, add_overrides, overrides_from
    from supervisor.config import load_config
    from supervisor.resume import RefusedError

    p = Parser(prog="python -m supervisor report", description=(
        "Write one self-contained HTML report of an experiment, live or finished. "
        "Give the same config overrides as the run (--exp_name ...)."))
    p.add_argument("config", type=Path, help="the experiment's TOML config file")
    p.add_argument("--out", type=Path, default=None,
                   help=f"the HTML file to write (default: {{exp_dir}}/{REPORT_NAME})")
    add_overrides(p)
    args = p.parse_args(argv)
    config = load_config(args.config, overrides_from(args))
    if not paths.manifest(config.exp_dir).exists():
        raise RefusedError(f"{paths.manifest(config.exp_dir)}: no manifest; experiment "
                           f"{config.exp_name!r} has not started")
    started = time.monotonic()
    try:
        out = write(config.exp_dir, args.out)
    except (rd.ReportError, smp.SamplesError) as exc:
        raise RefusedError(str(exc)) from None
    print(f"report: {out} ({out.stat().st_size / 1e6:.1f} MB, "
          f"{time.monotonic() - started:.1f} s)")
    return 0
