"""An object's gallery page: one interactive 3D view per grasp (both hands, the object),
its energy terms and provenance beside it. The hands' reference pose is one script per
hand model (``hands-{fingerprint}.js``) and each grasp only its links' motions, so a page
is small; in a folder (the report's gallery) plotly.js and the hands are shared files, and
``standalone`` puts both in the page (``show``'s single file). Each hand is named in the
legend and on hover, in its pictures' colour (``picture.COLOURS``). Coordinates are
float32 (a hundredth of a millimetre at a metre), the object mesh decimated (``drawing``).
"""

from __future__ import annotations

import base64
import html
import json
from typing import Any

import numpy as np

from supervisor.gallery import meshes, picture
from supervisor.gallery.drawing import Drawn, Job

TERMS = ("energy", "E_fc", "E_dis", "E_pen", "E_spen", "E_joints")
PLOTLY_FILE = "plotly.min.js"

SCRIPT = """
function b64(s, T) { var b = atob(s), u = new Uint8Array(b.length);
  for (var i = 0; i < b.length; i++) u[i] = b.charCodeAt(i); return new T(u.buffer); }
function hand(ref, m, side) { var v = b64(ref.v, Float32Array), l = b64(ref.link, Uint8Array),
  f = b64(ref.f, Uint32Array), t = b64(m, Float32Array), n = l.length;
  var x = new Float32Array(n), y = new Float32Array(n), z = new Float32Array(n);
  for (var i = 0; i < n; i++) { var o = 12 * l[i], a = v[3*i], b = v[3*i+1], c = v[3*i+2];
    x[i] = t[o]*a + t[o+1]*b + t[o+2]*c + t[o+3];
    y[i] = t[o+4]*a + t[o+5]*b + t[o+6]*c + t[o+7];
    z[i] = t[o+8]*a + t[o+9]*b + t[o+10]*c + t[o+11]; }
  var I = [], J = [], K = []; for (var k = 0; k < f.length; k += 3) {
    I.push(f[k]); J.push(f[k+1]); K.push(f[k+2]); }
  return {type: 'mesh3d', x: x, y: y, z: z, i: I, j: J, k: K, color: side.color,
          opacity: 1, flatshading: false, name: side.name, showlegend: true,
          hoverinfo: 'name'}; }
function object(o, s) { var v = b64(o.v, Float32Array), f = b64(o.f, Uint32Array);
  var x = [], y = [], z = [], I = [], J = [], K = [];
  for (var i = 0; i < v.length; i += 3) { x.push(v[i]*s); y.push(v[i+1]*s); z.push(v[i+2]*s); }
  for (var k = 0; k < f.length; k += 3) { I.push(f[k]); J.push(f[k+1]); K.push(f[k+2]); }
  return {type: 'mesh3d', x: x, y: y, z: z, i: I, j: J, k: K, color: 'seashell',
          opacity: 1, name: 'object', showlegend: false, hoverinfo: 'name'}; }
function draw() { var page = JSON.parse(document.getElementById('grasps').textContent);
  var drawn = 0; document.body.dataset.views = page.grasps.length;
  page.grasps.forEach(function (g, n) { var traces = [];
    if (page.object) traces.push(object(page.object, g.scale));
    if (g.motion) ['left', 'right'].forEach(function (s) {
      traces.push(hand(window.GALLERY_HANDS[s], g.motion[s], page.sides[s])); });
    (g.lines || []).forEach(function (l) { traces.push(l.mark ?
      {type: 'scatter3d', mode: 'markers', x: l.x, y: l.y, z: l.z, name: l.name,
       marker: {color: l.color, size: 6, symbol: 'square'}, showlegend: true} :
      {type: 'scatter3d', mode: 'lines', x: l.x, y: l.y, z: l.z,
       line: {color: l.color, width: 6}, name: l.name, showlegend: false}); });
    var div = document.getElementById('view' + n);
    Plotly.newPlot(div, traces, {paper_bgcolor: '#E2F0D9', showlegend: true,
      legend: {x: 0, y: 1, bgcolor: 'rgba(255,255,255,0.6)', font: {size: 11}},
      margin: {l: 0, r: 0, t: 0, b: 0}, scene: {aspectmode: 'data',
      xaxis: {visible: false}, yaxis: {visible: false}, zaxis: {visible: false}}},
      {displaylogo: false, responsive: true}).then(function () {
        div.dataset.drawn = '1'; drawn += 1; document.body.dataset.drawn = drawn; }); }); }
window.addEventListener('load', draw);
"""

STYLE = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
.grid{display:flex;flex-wrap:wrap;gap:1em}.card{border:1px solid #ccc;padding:.5em}
.view{width:420px;height:340px}.note{color:#a40}table{font-size:.85em}
td{padding:0 .6em 0 0}"""


def b64(array: np.ndarray, dtype: str) -> str:
    return base64.b64encode(np.ascontiguousarray(array, dtype).tobytes()).decode()


def hands_script(drawn: Drawn) -> str:
    """``window.GALLERY_HANDS``: each hand's reference vertices, faces, link per vertex."""
    assert drawn.hands is not None
    out = {}
    for side in meshes.SIDES:
        v, f, link = drawn.hands.merged(side)
        out[side] = {"v": b64(v, "<f4"), "f": b64(f, "<u4"), "link": b64(link, "u1")}
    return "window.GALLERY_HANDS = " + json.dumps(out) + ";\n"


def hands_file(drawn: Drawn) -> str:
    return f"hands-{drawn.fingerprint}.js"


def _lines(job: Job, row: int) -> list[dict[str, Any]]:
    """Without a hand model: each wrist as a point in its hand's colour (named in the
    legend) with its three axes."""
    out: list[dict[str, Any]] = []
    for side, axis, a, b in meshes.wrist_axes(job.data, row):
        if axis == "x":
            out.append({"x": [float(a[0])], "y": [float(a[1])], "z": [float(a[2])],
                        "color": picture.hex_colour(f"{side} hand"), "name": f"{side} wrist",
                        "mark": True})
        out.append({"x": [float(a[0]), float(b[0])], "y": [float(a[1]), float(b[1])],
                    "z": [float(a[2]), float(b[2])], "color": picture.hex_colour(axis),
                    "name": f"{side} wrist {axis}"})
    return out


def _grasp(job: Job, n: int, row: int, why: str) -> dict[str, Any]:
    motion = job.motions[n]
    g: dict[str, Any] = {"scale": float(job.data["scale"][row])}
    if motion is not None:
        g["motion"] = {s: b64(motion[s].reshape(-1), "<f4") for s in meshes.SIDES}
    else:
        g["lines"] = _lines(job, row)
    return g


def _card(job: Job, n: int, row: int, why: str) -> str:
    d = job.data
    rows = "".join(f"<tr><td>{t}</td><td>{float(d[t][row]):.5g}</td></tr>"
                   for t in TERMS if t in d)
    prov = (f"row {row} &middot; seed {int(d['seed'][row])} &middot; round "
            f"{int(d['round_id'][row])} &middot; item {int(d['item_index'][row])}")
    label = "" if job.motions[n] is not None else \
        '<p class="note">wrists only (position and axes): no hand drawn</p>'
    return (f'<div class="card" id="g{n}"><div class="view" id="view{n}"></div>'
            f"<p><b>{html.escape(why)}</b><br>{prov}</p>{label}<table>{rows}</table></div>")


def build(drawn: Drawn, job: Job, whys: list[str], plotly_js: str | None,
          standalone: bool) -> str:
    """The page's HTML. ``plotly_js``: inline when standalone, else None (shared file)."""
    page: dict[str, Any] = {"grasps": [_grasp(job, n, r, w) for n, (r, w)
                                       in enumerate(zip(job.rows, whys))],
                            "sides": {s: {"name": f"{s} hand",
                                          "color": picture.hex_colour(f"{s} hand")}
                                      for s in meshes.SIDES}}
    if job.mesh is not None:
        page["object"] = {"v": b64(job.mesh[0], "<f4"), "f": b64(job.mesh[1], "<u4")}
    notes = [n for n in (drawn.note, drawn.cache and drawn.cache.problem) if n] + job.notes
    if job.mesh is None:
        notes.append("no object mesh: neither the checkout nor data/meshdata/"
                     f"{job.code} gave one")
    elif job.mesh[2] == "meshdata":
        notes.append(f"object mesh read from data/meshdata/{job.code} (not the checkout)")
    has_hands = drawn.hands is not None and any(m is not None for m in job.motions)
    if standalone:
        scripts = f"<script>{plotly_js}</script>" + \
            (f"<script>{hands_script(drawn)}</script>" if has_hands else "")
    else:
        scripts = f'<script src="{PLOTLY_FILE}"></script>' + \
            (f'<script src="{hands_file(drawn)}"></script>' if has_hands else "")
    cards = "".join(_card(job, n, r, w) for n, (r, w) in enumerate(zip(job.rows, whys)))
    data = json.dumps(page).replace("</", "<\\/")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>"
            f"{html.escape(job.code)}: grasps</title><style>{STYLE}</style>{scripts}</head>"
            f"<body><h1>{html.escape(job.code)}</h1>"
            + "".join(f'<p class="note">{html.escape(n)}</p>' for n in notes)
            + f'<div class="grid">{cards}</div>'
            f'<script type="application/json" id="grasps">{data}</script>'
            f"<script>{SCRIPT}</script></body></html>")
