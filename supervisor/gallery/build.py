"""The gallery's two uses: ``show`` (one object's chosen grasps, one self-contained page)
and the report's gallery (a folder beside the report: per object a page and a small
picture of each grasp chosen to show its range, plotly.js and the hands' script once).
Only a final.npz that ``dataset.integrity`` finds to be its object's is drawn.
"""

from __future__ import annotations

import html
import re
import time
from urllib.parse import quote
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection, Sequence

import numpy as np

from supervisor.config.schema import Config
from supervisor.core.state import State
from supervisor.dataset import integrity
from supervisor.dataset.results import QPOS_NAMES
from supervisor.gallery import meshes, page, picture, select
from supervisor.gallery.cache import Cache
from supervisor.gallery.failed import failed_of
from supervisor.gallery.drawing import Drawn, Job, View, draw
from supervisor.storage.fsutil import atomic_write_bytes

MAX_VIEWS = 12  # a browser keeps about 16 WebGL contexts on one page
GALLERY_DIR = "gallery"


class GalleryError(ValueError):
    pass


def view_of(config: Config) -> View:
    command, cwd, env = config.view.resolved(config.main)
    return View(command, cwd, env, config.view.timeout_s, config.view.workers)


def grasps_of(config: Config, state: State, code: str) -> dict[str, np.ndarray] | str:
    """The object's final.npz, or why it cannot be drawn."""
    finding = integrity.check(config, state, code, deep=True)
    if not finding.usable:
        return f"{finding.problem}; {integrity.advice(config, state, code, finding)}"
    if finding.data is None or len(finding.data["energy"]) == 0:
        return "no grasps yet (no final.npz written)"
    return {**finding.data, "qpos_names": np.array(QPOS_NAMES)}


def show(config: Config, state: State, code: str, out: Path, indices: Sequence[int] = (),
         best: int | None = None, failed: bool = False) -> tuple[Path, list[str]]:
    """Write ``out``; returns it and the lines to print (notes). ``failed``: grasps that
    failed validation, from their round folders ([validate])."""
    from plotly.offline import get_plotlyjs

    if code not in state.objects:
        raise GalleryError(f"{code!r} is not an object of experiment {config.exp_name!r} "
                           f"(its objects: {', '.join(list(state.objects)[:5])}"
                           f"{', ...' if len(state.objects) > 5 else ''})")
    if failed:
        return _show_failed(config, state, code, out, list(indices), get_plotlyjs())
    data = grasps_of(config, state, code)
    if isinstance(data, str):
        raise GalleryError(f"{code}: {data}")
    try:
        rows = select.chosen(data, indices, best)
    except select.SelectError as exc:
        raise GalleryError(f"{code}: {exc}") from None
    lines = []
    if len(rows) > MAX_VIEWS:
        which = "first" if indices else "lowest-energy"
        lines.append(f"showing the {which} {MAX_VIEWS} of {len(rows)} grasps: a browser keeps "
                     f"about 16 3D views on one page")
        rows = rows[:MAX_VIEWS]
    whys = [("lowest energy" if not indices and n == 0 else
             f"energy rank {n + 1}" if not indices else f"--index {r}") for n, r in
            enumerate(rows)]
    drawn = draw(view_of(config), config.exp_dir, [Job(code, data, rows)])
    job = drawn.jobs[0]
    lines += [n for n in (drawn.note, drawn.cache and drawn.cache.problem) if n] + job.notes
    atomic_write_bytes(out, page.build(drawn, job, whys, get_plotlyjs(), True).encode())
    return out, lines


def _show_failed(config: Config, state: State, code: str, out: Path, indices: list[int],
                 plotly_js: str) -> tuple[Path, list[str]]:
    got = failed_of(config, state, code, indices)
    if isinstance(got, str):
        raise GalleryError(f"{code}: {got}")
    data, whys = got
    drawn = draw(view_of(config), config.exp_dir, [Job(code, data, list(range(len(whys))))])
    job = drawn.jobs[0]
    lines = [n for n in (drawn.note, drawn.cache and drawn.cache.problem) if n] + job.notes
    atomic_write_bytes(out, page.build(drawn, job, whys, plotly_js, True).encode())
    return out, lines


@dataclass
class Gallery:
    html: str  # the report's section
    objects: int
    pictures: int
    seconds: float
    helpers: int
    note: str | None
    problems: list[str] = field(default_factory=list)  # per object: what was not drawn


def _pictures(cache: Cache, drawn: Drawn, job: Job) -> list[bytes]:
    out = []
    for n, row in enumerate(job.rows):
        name = f"{drawn.fingerprint or 'wrists'}-{job.keys[n]}-{picture.WIDTH}-" \
            f"v{picture.VERSION}"
        png = cache.picture(job.code, name)
        if png is None:
            png = picture.render(_parts(drawn, job, n, row))
            cache.put_picture(job.code, name, png)
        out.append(png)
    return out


def _parts(drawn: Drawn, job: Job, n: int, row: int) -> list[tuple[Any, Any, str]]:
    parts: list[tuple[Any, Any, str]] = []
    if job.mesh is not None:
        parts.append((job.mesh[0] * float(job.data["scale"][row]), job.mesh[1], "object"))
    motion = job.motions[n]
    if drawn.hands is not None and motion is not None:
        for side in meshes.SIDES:
            v, f = meshes.posed(drawn.hands, side, motion[side])
            parts.append((v, f, f"{side} hand"))
        return parts
    for side, axis, start, end in meshes.wrist_axes(job.data, row):
        if axis == "x":  # the wrist itself, in its hand's colour
            parts.append((*picture.cube(start, 0.012), f"{side} hand"))
        parts.append((*picture.stick(start, end, 0.003), axis))
    return parts


def _key() -> str:
    """Which hand is which, once above the pictures."""
    swatches = ", ".join(f'<span style="color:{picture.hex_colour(f"{side} hand")}">'
                         f'&#9632;</span> {side} hand' for side in meshes.SIDES)
    return f'<p class="note">{swatches} ({html.escape(picture.KEY)})</p>'


def report_gallery(config: Config, state: State, folder: Path) -> Gallery:
    """Write the report's gallery folder; returns the report's section."""
    from plotly.offline import get_plotlyjs

    started = time.monotonic()
    count = config.view.grasps_per_object
    jobs, skipped = [], []
    for code in state.order:
        data = grasps_of(config, state, code)
        if isinstance(data, str):
            skipped.append(f"{code}: {data}")
            continue
        picked = select.spread(data, count)
        if picked:
            jobs.append(Job(code, data, [r for r, _ in picked], [w for _, w in picked]))
    if not jobs or count == 0:
        if folder.is_dir():  # an earlier report's pictures: nothing links to them now
            _prune(folder, set(), state.objects)
        return Gallery('<p class="note">No grasps to draw yet.</p>' if count else
                       '<p class="note">Gallery off ([view] grasps_per_object = 0).</p>',
                       0, 0, time.monotonic() - started, 0, None)
    cache = Cache(config.exp_dir)
    drawn = draw(view_of(config), config.exp_dir, jobs, cache)
    folder.mkdir(parents=True, exist_ok=True)
    written = _shared(folder, drawn, get_plotlyjs())
    blocks, pictures = [], 0
    for job in drawn.jobs:
        whys = job.whys
        written.add(f"{job.code}.html")
        atomic_write_bytes(folder / f"{job.code}.html",
                           page.build(drawn, job, whys, None, False).encode())
        cells = []
        for n, png in enumerate(_pictures(cache, drawn, job)):
            name = f"{job.code}-{n}.png"
            written.add(name)
            atomic_write_bytes(folder / name, png)
            pictures += 1
            energy = float(job.data["energy"][job.rows[n]])
            cells.append(f'<a href="{GALLERY_DIR}/{_url(job.code + ".html")}#g{n}">'
                         f'<img src="{GALLERY_DIR}/{_url(name)}" loading="lazy" '
                         f'width="{picture.WIDTH}" height="{picture.HEIGHT}" '
                         f'alt="{html.escape(whys[n])}" title="{html.escape(whys[n])}, energy '
                         f'{energy:.4g}"></a>')
        notes = "".join(f'<p class="note">{html.escape(x)}</p>' for x in job.notes)
        blocks.append(f'<div class="gallery-object"><h3><a href="{GALLERY_DIR}/'
                      f'{_url(job.code + ".html")}">{html.escape(job.code)}</a></h3>'
                      f'{notes}<div class="gallery-row">{"".join(cells)}</div></div>')
    _prune(folder, written, state.objects)
    note = "; ".join(n for n in (drawn.note, cache.problem) if n) or None
    head = "".join(f'<p class="note">{html.escape(n)}</p>' for n in (drawn.note, cache.problem)
                   if n)
    tail = "".join(f'<p class="note">not drawn: {html.escape(s)}</p>' for s in skipped)
    problems = [f"{j.code}: {j.notes[0]}" for j in drawn.jobs if j.notes] + skipped
    return Gallery(head + _key() + "".join(blocks) + tail, len(drawn.jobs), pictures,
                   time.monotonic() - started, drawn.helpers, note, problems)


def _url(name: str) -> str:
    """A file name as a link: '#', '?' and '%' in object codes are not URL syntax."""
    return html.escape(quote(name))


def _shared(folder: Path, drawn: Drawn, plotly_js: str) -> set[str]:
    """The files every page uses; returns their names."""
    target = folder / page.PLOTLY_FILE
    if not target.exists() or target.stat().st_size != len(plotly_js.encode()):
        atomic_write_bytes(target, plotly_js.encode())
    if drawn.hands is None:
        return {page.PLOTLY_FILE}
    if not (folder / page.hands_file(drawn)).exists():
        atomic_write_bytes(folder / page.hands_file(drawn), page.hands_script(drawn).encode())
    return {page.PLOTLY_FILE, page.hands_file(drawn)}


def _prune(folder: Path, written: set[str], codes: Collection[str]) -> None:
    """Pages, pictures and hand scripts of an earlier report that this one did not write
    (an object no longer drawn, fewer grasps per object, another checkout's hands) go:
    nothing links to them. Only names a report gives (``CODE.html``, ``CODE-N.png`` for
    the experiment's object codes, ``hands-FINGERPRINT.js``); other files are the user's."""
    ours = re.compile(r"hands-[0-9a-f]{16}\.js")
    for path in folder.iterdir():
        stem, _, n = path.stem.rpartition("-")
        mine = (path.suffix == ".html" and path.stem in codes) or ours.fullmatch(path.name) \
            or (path.suffix == ".png" and n.isdigit() and stem in codes)
        if mine and path.is_file() and path.name not in written:
            path.unlink(missing_ok=True)
