"""``python -m supervisor report CONFIG [--out report.html]``: one self-contained HTML page.

Plotly's JavaScript is embedded once, so the file opens offline and from a copy. Works on
a live run (reads only; see data) and on a finished one. Kept small at scale: one
timeline trace per outcome, histograms binned here, samples averaged down.
"""

from __future__ import annotations

import html
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import plotly.io as pio
from plotly.offline import get_plotlyjs

from supervisor.commands.report import data as rd, series
from supervisor.commands.report.validation import validation_figures
from supervisor.commands.report.figures import (
    Clock, _duration, energy_figure, gpu_figure, progress_figure,
    timeline_figure,
)
from supervisor.gpus import samples as smp
from supervisor.storage import paths
from supervisor.storage.fsutil import atomic_write_bytes

REPORT_NAME = "report.html"
PLOT_CONFIG = {"displaylogo": False, "responsive": True}


def object_table(rows: list[dict[str, Any]]) -> str:
    dedup = any(r["after_dedup"] is not None for r in rows)
    peak = any(r["peak_mib"] is not None for r in rows)
    cols = [("object", "object_code", None), ("status", "status", None),
            ("grasps", "collected", None), ("merged", "merged", "{}"),
            ("failed", "failed", "{}"), ("discarded", "discarded", "{}"),
            ("accepted after filter", "acceptance", "{:.0%}")]
    cols += [("after dedup", "after_dedup", "{:.0%}")] if dedup else []
    cols += [("passed validation", "pass_rate", "{:.0%}")] \
        if any(r.get("pass_rate") is not None for r in rows) else []
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
.scroll{max-height:40em;overflow:auto}
.gallery-row{display:flex;gap:.4em;flex-wrap:wrap}.gallery-object h3{font-size:1em;margin:.8em 0 .3em}
.gallery img{border:1px solid #ddd;border-radius:4px}"""


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
    ("rounds at once", lambda h: h["packing"] or "fixed (max_rounds_per_gpu)"),
)


def build(exp_dir: Path, now: float | None = None, gallery: str | None = None) -> str:
    """The report of the experiment in ``exp_dir`` as one HTML document; ``gallery``: the
    section of ``supervisor.gallery`` (pictures linking to its folder beside the page)."""
    from supervisor.storage.lock import live_holder

    now = time.time() if now is None else now
    live = live_holder(exp_dir)
    m = rd.load_manifest(exp_dir)
    s = smp.load(smp.samples_path(exp_dir))
    att = rd.attempts(m, now, live=live is not None)
    rows = rd.object_rows(m, att, s.round_peak_mib)
    head = rd.headline(m, rows, att, smp.mean_util(s.gpus), s.round_peak_mib)
    clock = Clock(now)
    values, unreadable = series.energies(exp_dir, list(m["objects"]))
    figures = [
        ("Timeline", timeline_figure(att, clock) if att["row"] else "No round started yet."),
        ("GPUs", gpu_figure(s.gpus, clock) if s.gpus else "No GPU samples: NVML was not "
         "available (or nothing sampled yet), so utilisation and memory were not recorded."),
        ("Progress", progress_figure(rd.progress(m), head["target"], head["eta_s"], now,
                                     clock)),
        ("Objects", f'<div class="scroll">{object_table(rows)}</div>'),
        ("Energy terms", energy_figure(values, rd.thresholds(m)) if values else
         "No grasps delivered yet."),
        *validation_figures(exp_dir, m, clock),
        *([("Grasps", f'<div class="gallery">{gallery}</div>')] if gallery else []),
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


def write(exp_dir: Path, out: Path | None = None, gallery: str | None = None) -> Path:
    """Write the report (atomically) to ``out``, by default ``{exp_dir}/report.html``."""
    out = exp_dir / REPORT_NAME if out is None else out
    atomic_write_bytes(out, build(exp_dir, gallery=gallery).encode())
    return out


def main(argv: Sequence[str]) -> int:
    from supervisor.commands.args import Parser, add_overrides, overrides_from
    from supervisor.config.load import load_config
    from supervisor.run.resume import RefusedError

    p = Parser(prog="python -m supervisor report", description=(
        "Write one self-contained HTML report of an experiment, live or finished. "
        "Give the same config overrides as the run (--exp_name ...)."))
    p.add_argument("config", type=Path, help="the experiment's TOML config file")
    p.add_argument("--out", type=Path, default=None,
                   help=f"the HTML file to write (default: {{exp_dir}}/{REPORT_NAME})")
    p.add_argument("--no-gallery", action="store_true",
                   help="leave out the grasps' gallery (drawn with the checkout's hand model)")
    add_overrides(p)
    args = p.parse_args(argv)
    config = load_config(args.config, overrides_from(args), reading=True)
    if not paths.manifest(config.exp_dir).exists():
        raise RefusedError(f"{paths.manifest(config.exp_dir)}: no manifest; experiment "
                           f"{config.exp_name!r} has not started")
    started = time.monotonic()
    out = config.exp_dir / REPORT_NAME if args.out is None else args.out
    section = None if args.no_gallery else _gallery(config, out.parent)
    try:
        out = write(config.exp_dir, out, section)
    except (rd.ReportError, smp.SamplesError) as exc:
        raise RefusedError(str(exc)) from None
    print(f"report: {out} ({out.stat().st_size / 1e6:.1f} MB, "
          f"{time.monotonic() - started:.1f} s)")
    return 0


def _gallery(config: Any, folder: Path) -> str:
    from supervisor.gallery.build import GALLERY_DIR, report_gallery
    from supervisor.run.resume import RefusedError, open_state

    try:
        g = report_gallery(config, open_state(config), folder / GALLERY_DIR)
    except Exception as exc:  # the gallery is a part of the page: never the whole report
        line = f"not drawn: {type(exc).__name__}: {exc}" if not isinstance(exc, RefusedError) \
            else f"not drawn: {exc}"
        print(f"gallery: {line}", file=sys.stderr)
        return f'<p class="note">Gallery {html.escape(line)}</p>'

    size = sum(p.stat().st_size for p in (folder / GALLERY_DIR).glob("*") if p.is_file()) \
        if (folder / GALLERY_DIR).is_dir() else 0
    print(f"gallery: {g.objects} objects, {g.pictures} pictures, {size / 1e6:.1f} MB in "
          f"{folder / GALLERY_DIR} ({g.seconds:.1f} s, {g.helpers} helper(s))"
          + (f"; {g.note}" if g.note else "")
          + (f"; {len(g.problems)} object(s) not fully drawn, e.g. {g.problems[0]}"
             if g.problems else ""))
    return g.html
