"""The report's [validate] figures: the pass rate per object and over time (from the
manifest's rounds), and the distributions of the validator's figures over every grasp it
validated, passed or not (from the experiment's validation/ files), with the
thresholds of the built-in protocol."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from supervisor.commands.report import series
from supervisor.commands.report.figures import Clock
from supervisor.dataset import validation

TOP_OBJECTS = 40  # bars of the per-object pass rate (the lowest first)
FIGURES = (("max_translation_m", "max_translation_m", "largest translation (m)"),
           ("max_rotation_deg", "max_rotation_deg", "largest rotation (degrees)"))


def _rounds(m: dict[str, Any]) -> list[tuple[float, str, int, int]]:
    """(validated_at, object, passed, validated) of every validated round, by time."""
    out = [(r["validated_at"], code, r["passed"], r.get("accepted") or 0)
           for code, obj in m["objects"].items() for r in obj.get("rounds", {}).values()
           if r.get("passed") is not None and r.get("validated_at")]
    return sorted(out)


def _figures(exp_dir: Path, codes: list[str]) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Every validated grasp's figures (those the validator gave), and failures by reason."""
    parts: dict[str, list[np.ndarray]] = {}
    reasons: dict[str, int] = {}
    for code in codes:
        for file in sorted((exp_dir / "validation" / code).glob("r*.npz")):
            try:
                _, figures = validation.read(file)
            except validation.ValidationError:
                continue
            for key, _, _ in FIGURES:
                if key in figures and figures[key].dtype.kind == "f":
                    parts.setdefault(key, []).append(figures[key].astype(np.float32))
            for reason, n in validation.failed_by(figures).items():
                reasons[reason] = reasons.get(reason, 0) + n
    return {k: np.concatenate(v) for k, v in parts.items()}, reasons


def validation_figures(exp_dir: Path, m: dict[str, Any], clock: Clock) -> list[tuple[str, Any]]:
    """The report's "Validation" section, or nothing without [validate]."""
    settings = m.get("config", {}).get("validate") or {}
    if not (settings.get("kind") or settings.get("command")):
        return []
    done = _rounds(m)
    if not done:
        return [("Validation", "No round validated yet.")]
    values, reasons = _figures(exp_dir, list(m["objects"]))
    fig = make_subplots(rows=2, cols=2, vertical_spacing=0.16, horizontal_spacing=0.08,
                        subplot_titles=("pass rate over time (validated so far)",
                                        f"pass rate per object (lowest {TOP_OBJECTS})",
                                        *(title for _, _, title in FIGURES)))
    t = np.array([d[0] for d in done])
    passed = np.cumsum([d[2] for d in done])
    tried = np.maximum(1, np.cumsum([d[3] for d in done]))
    fig.add_scatter(x=clock.ms(t), y=passed / tried, name="all objects", line_shape="hv",
                    showlegend=False, row=1, col=1)
    per: dict[str, list[int]] = {}
    for _, code, p, n in done:
        got = per.setdefault(code, [0, 0])
        got[0], got[1] = got[0] + p, got[1] + n
    rates = sorted(((p / n if n else 0.0, code) for code, (p, n) in per.items()))[:TOP_OBJECTS]
    fig.add_bar(x=[c[:30] for _, c in rates], y=[r for r, _ in rates], showlegend=False,
                marker_color="#4c78a8", row=1, col=2)
    for i, (key, limit_key, _) in enumerate(FIGURES):
        if key not in values:
            continue
        limit = settings.get(limit_key) if settings.get("kind") else None
        edges, counts = series.histogram(values[key], limit)
        fig.add_bar(x=(edges[:-1] + edges[1:]) / 2, y=counts, width=np.diff(edges),
                    marker_color="#72b7b2", showlegend=False, row=2, col=i + 1)
        if limit is not None:
            fig.add_vline(x=limit, line_dash="dash", line_color="#d62728", row=2, col=i + 1,
                          annotation_text=f"max {limit:g}", annotation_position="top right")
    fig.update_yaxes(range=[0, 1.05], tickformat=".0%", row=1, col=1)
    fig.update_yaxes(range=[0, 1.05], tickformat=".0%", row=1, col=2)
    fig.update_xaxes(type="date", row=1, col=1)
    total = int(tried[-1]) if len(done) else 0
    why = ", ".join(f"{k} {n}" for k, n in sorted(reasons.items(), key=lambda kv: -kv[1]))
    fig.update_layout(height=680, bargap=0, title=(
        f"Validation: {int(passed[-1])} of {total} grasps passed"
        + (f"; failed: {why}" if why else "")))
    return [("Validation", fig)]
