"""``show`` and the report's gallery end to end: the demo run over the emulator, its grasps
drawn with the stand-in checkout's hand model (tests/fixtures/standin-checkout), and the
pages opened in headless Chromium, where the 3D views must have drawn (their pixels), not
only exist."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, run_cli

STANDIN = ROOT / "tests" / "fixtures" / "standin-checkout"
CODE = "Curver_Storage_Bin_Black_Small"
HAND_RGB = (119, 136, 153)  # lightslategray, as visualization.py draws the hands: the left
RIGHT_HAND_RGB = (214, 128, 48)  # and the right one orange (#25: which hand is which)


def bench(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "bench" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def demo_copy(root: Path, view: str) -> None:
    text = (ROOT / "config.example.toml").read_text().split("\n[view]\n")[0]  # ours instead
    (root / "config.example.toml").write_text(
        text.replace('EMULATOR_ITER_S = "0.01"', 'EMULATOR_ITER_S = "0.002"') + view)
    shutil.copytree(ROOT / "demo", root / "demo",
                    ignore=shutil.ignore_patterns("data", "experiments"))
    assert run_cli("config.example.toml", cwd=root).returncode == 0


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("gallery-demo")
    demo_copy(root, f'\n[view]\ncwd = "{STANDIN / "BimanGrasp-Optimization"}"\n'
                    f'env = {{ PYTHONPATH = "{STANDIN / "site"}" }}\nworkers = 2\n')
    return root


def test_show_writes_one_page_with_the_chosen_grasps(demo: Path) -> None:
    proc = run_cli("show", "config.example.toml", CODE, "--best", "2", "--out", "best.html",
                   cwd=demo)
    assert proc.returncode == 0, proc.stderr
    page = (demo / "best.html").read_text()
    assert f"show: {demo / 'best.html'}" in proc.stdout and proc.stderr == ""
    assert page.count('class="view"') == 2 and "GALLERY_HANDS" in page
    assert "lowest energy" in page and "energy rank 2" in page and "seed " in page
    assert '<script src=' not in page  # self-contained: plotly.js and the hands inside
    assert (demo / "best.html").stat().st_size < 10e6
    proc = run_cli("show", "config.example.toml", CODE, "--index", "0", "3", cwd=demo)
    out = demo / "demo/experiments/demo/show" / f"{CODE}.html"
    assert proc.returncode == 0 and out.read_text().count('class="view"') == 2


@pytest.mark.parametrize("args, expected", [
    (["no_such_object"], "'no_such_object' is not an object of experiment 'demo'"),
    ([CODE, "--index", "999"], "--index 999 is outside 0..49"),
    ([CODE, "--best", "0"], "--best must be at least 1"),
])
def test_show_refuses_in_one_line(demo: Path, args: list[str], expected: str) -> None:
    proc = run_cli("show", "config.example.toml", *args, cwd=demo)
    assert proc.returncode == 2 and expected in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_show_refuses_an_out_file_in_a_missing_folder(demo: Path) -> None:
    """Found by a tester (#25): show --out a/b/c.html made a/b/ (a typo became folders)."""
    proc = run_cli("show", "config.example.toml", CODE, "--no-open", "--out",
                   "no-such/folder/page.html", cwd=demo)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert f"{demo / 'no-such/folder'} does not exist" in proc.stderr
    assert not (demo / "no-such").exists()


def test_show_never_draws_another_objects_grasps(demo: Path, tmp_path: Path) -> None:
    final = demo / "demo/experiments/demo/final"
    a, b = final / CODE / "final.npz", next(p for p in final.glob("*/final.npz")
                                             if p.parent.name != CODE)
    saved = tmp_path / "saved.npz"
    shutil.copy(a, saved)
    shutil.copy(b, a)
    try:
        proc = run_cli("show", "config.example.toml", CODE, cwd=demo)
    finally:
        shutil.copy(saved, a)
    assert proc.returncode == 2 and f"not {CODE}'s" in proc.stderr, proc.stderr


@pytest.fixture(scope="module")
def reported(demo: Path):
    proc = run_cli("report", "config.example.toml", cwd=demo)
    assert proc.returncode == 0, proc.stderr
    return proc


def test_the_report_has_a_gallery_that_a_second_report_reuses(demo: Path, reported) -> None:
    proc = reported
    exp = demo / "demo/experiments/demo"
    report = (exp / "report.html").read_text()
    pictures = re.findall(r'<img src="gallery/([^"]+\.png)"', report)
    assert len(pictures) == 12  # 3 objects x 4 grasps
    key = re.findall(r"&#9632;</span> left hand, <span[^>]*>&#9632;</span> right hand "
                     r"\(left hand grey-blue, right hand orange\)", report)
    assert len(key) == 1  # which hand is which, once above the pictures (#25)
    for name in pictures:
        assert (exp / "gallery" / name).read_bytes()[:4] == b"\x89PNG"
    assert (exp / "gallery" / "plotly.min.js").exists()
    assert len(list((exp / "gallery").glob("hands-*.js"))) == 1
    assert re.search(r"gallery: 3 objects, 12 pictures, .* \(.*, [12] helper", proc.stdout)
    # An earlier report's files that this one does not write go; the user's stay, even
    # named like ours (found by a tester: the first version deleted them too).
    stale = [f"{CODE}-9.png", "hands-0123456789abcdef.js"]
    mine = ["notes.txt", "my-picture.png", f"{CODE}-backup.png", f"{CODE}-notes.html",
            "hands-mine.js"]
    for name in stale + mine:
        (exp / "gallery" / name).write_text("old")
    again = run_cli("report", "config.example.toml", cwd=demo)
    assert "0 helper(s)" in again.stdout  # everything from the cache
    assert not [n for n in stale if (exp / "gallery" / n).exists()]
    assert all((exp / "gallery" / n).exists() for n in mine)
    for name in mine:
        (exp / "gallery" / name).unlink()
    assert sorted(p.name for p in (exp / "gallery").glob("*.png")) == sorted(pictures)
    for page in (exp / "gallery").glob("*.html"):
        assert page.stat().st_size < 10e6


def test_without_a_checkout_the_gallery_says_so_and_shows_the_wrists(demo: Path) -> None:
    (demo / "empty").mkdir(exist_ok=True)
    text = (demo / "config.example.toml").read_text().split("\n[view]\n")[0]
    (demo / "no-checkout.toml").write_text(text + '\n[view]\ncwd = "empty"\n')
    proc = run_cli("report", "no-checkout.toml", "--out", "other/report.html", cwd=demo)
    assert proc.returncode == 0, proc.stderr
    assert "hands not drawn: no BimanGrasp checkout in" in proc.stdout
    page = (demo / "other" / "gallery" / f"{CODE}.html").read_text()
    assert "wrists only (position and axes): no hand drawn" in page
    assert '"name": "left wrist", "mark": true' in page  # each wrist marked, named
    assert "hands-" not in page  # no hand model's script: nothing made up


# in the browser

def pixels(png: Path) -> np.ndarray:
    """An RGB(A) PNG as an array (Chromium's screenshots: 8-bit, filtered rows)."""
    data = png.read_bytes()
    width, height, depth, kind = struct.unpack(">IIBB", data[16:26])
    assert depth == 8 and kind in (2, 6)
    channels = 3 if kind == 2 else 4
    chunks, at = [], 8
    while at < len(data):
        length = struct.unpack(">I", data[at:at + 4])[0]
        if data[at + 4:at + 8] == b"IDAT":
            chunks.append(data[at + 8:at + 8 + length])
        at += 12 + length
    raw = np.frombuffer(zlib.decompress(b"".join(chunks)), np.uint8)
    stride = width * channels
    rows = raw.reshape(height, stride + 1)
    out = np.zeros((height, stride), np.int32)
    for y in range(height):
        f, line = rows[y, 0], rows[y, 1:].astype(np.int32)
        up = out[y - 1] if y else np.zeros(stride, np.int32)
        if f in (0, 2):
            out[y] = (line + (up if f == 2 else 0)) % 256
            continue
        row = np.zeros(stride, np.int32)
        for x in range(stride):
            left = row[x - channels] if x >= channels else 0
            corner = up[x - channels] if x >= channels else 0
            if f == 1:
                pred = left
            elif f == 3:
                pred = (left + up[x]) // 2
            else:
                p = left + up[x] - corner
                pa, pb, pc = abs(p - left), abs(p - up[x]), abs(p - corner)
                pred = left if pa <= pb and pa <= pc else up[x] if pb <= pc else corner
            row[x] = (line[x] + pred) % 256
        out[y] = row
    return out.reshape(height, width, channels)[:, :, :3]


@pytest.fixture(scope="module")
def chromium() -> str:
    found = bench("screenshot_report").find_chromium()
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("CI=true but no chromium found: .ci/run installs Debian's chromium")
        pytest.skip("no chromium found (apt-get install chromium)")
    return found


def test_a_gallery_page_draws_its_3d_views_in_chromium(demo: Path, reported, chromium: str,
                                                       tmp_path: Path) -> None:
    shots = bench("screenshot_report")
    page = demo / "demo/experiments/demo/gallery" / f"{CODE}.html"
    result = shots.check_page(chromium, page, page.parent)  # its scripts are beside it
    assert result["errors"] == []
    assert 'data-views="4"' in result["dom"] and 'data-drawn="4"' in result["dom"]
    png = tmp_path / "page.png"
    shots.screenshot(chromium, page, png, tmp_path, size=(960, 640))
    image = pixels(png)
    hand = np.all(np.abs(image - HAND_RGB) < 40, axis=2)
    assert hand[80:440, :460].sum() > 200  # the first view shows the left hand's grey...
    right = np.all(np.abs(image - RIGHT_HAND_RGB) < 40, axis=2)
    assert right[80:440, :460].sum() > 200  # ...and the right hand's orange
    legend = re.findall(r'class="legendtext"[^>]*>([^<]+)<', result["dom"])
    assert legend.count("left hand") == legend.count("right hand") == 4, legend


def test_the_reports_gallery_shows_its_pictures_in_chromium(demo: Path, reported,
                                                            chromium: str) -> None:
    shots = bench("screenshot_report")
    report = demo / "demo/experiments/demo/report.html"
    probe = report.with_name("probe-report.html")  # beside it: gallery/ is relative
    probe.write_text(report.read_text().replace('loading="lazy" ', "").replace(
        "</body>", "<script>window.addEventListener('load', function () {"
        "document.body.dataset.pictures = Array.from(document.images).filter("
        "function (i) { return i.complete && i.naturalWidth > 0; }).length; });</script>"
        "</body>"))
    result = shots.check_page(chromium, probe, probe.parent)
    assert result["errors"] == [] and result["rendered"] == result["plots"]
    assert 'data-pictures="12"' in result["dom"]


def test_a_cache_that_cannot_be_written_still_gives_the_gallery(demo: Path, tmp_path: Path,
                                                                monkeypatch, capsys) -> None:
    """Found by a tester (#25): with gallery-cache/ read-only, the report's pictures (and
    hands) were lost to the failing cache writes. Now drawn anyway, said once."""
    from supervisor.commands import cli
    from supervisor.gallery import cache as cache_module
    from supervisor.gallery.cache import Cache

    def refuse(path: Path, payload: bytes) -> None:
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(cache_module, "atomic_write_bytes", refuse)
    shutil.copytree(demo / "demo/experiments/demo", tmp_path / "copy" / "demo",
                    ignore=shutil.ignore_patterns("gallery*", "show", "report.html"))
    assert cli.main(["report", str(demo / "config.example.toml"), "--experiments_dir",
                     str(tmp_path / "copy")]) == 0
    out = capsys.readouterr().out
    exp = tmp_path / "copy" / "demo"
    report = (exp / "report.html").read_text()
    assert len(re.findall(r'<img src="gallery/([^"]+\.png)"', report)) == 12
    assert len(list((exp / "gallery").glob("*.png"))) == 12
    assert report.count("gallery cache not written") == 1 and "Permission denied" in report
    assert out.count("gallery cache not written") == 1
    assert "not drawn" not in report and Cache(exp).describe()["files"] == 0
    page = (exp / "gallery" / f"{CODE}.html").read_text()
    assert re.search(r'<script src="hands-[0-9a-f]{16}\.js">', page)  # the hands drawn
    assert "wrists only" not in page
    assert cli.main(["show", str(demo / "config.example.toml"), CODE, "--no-open",
                     "--experiments_dir", str(tmp_path / "copy")]) == 0
    err = capsys.readouterr().err
    assert err.count("note: gallery cache not written") == 1 and err.count("\n") == 1, err
    assert "hands not drawn" not in (exp / "show" / f"{CODE}.html").read_text()
