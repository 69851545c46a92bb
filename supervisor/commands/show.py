"""``python -m supervisor show CONFIG OBJECT_CODE [--index I ...] [--best N] [--out FILE]``:
one self-contained HTML page of an object's grasps drawn with the checkout's own hand
model (``supervisor.gallery``); it opens in the browser on a desktop, as ``fig.show()``
does, and the path is printed either way."""

from __future__ import annotations

import os
import sys
import webbrowser
from pathlib import Path
from typing import Sequence

from supervisor.commands.args import Parser, add_overrides, overrides_from
from supervisor.config.load import load_config
from supervisor.run.resume import RefusedError, open_state
from supervisor.storage import paths


def _desktop() -> bool:
    return sys.platform == "darwin" or bool(os.environ.get("DISPLAY")
                                            or os.environ.get("WAYLAND_DISPLAY"))


def _check_out(out: Path | None) -> None:
    """A file the user named goes in a folder that exists: a typo makes no folders."""
    if out is None:
        return
    if not out.parent.is_dir():
        raise RefusedError(f"--out {out}: the folder {out.parent.absolute()} does not exist; "
                           f"create it, or name a file in an existing folder")
    if out.is_dir():
        raise RefusedError(f"--out {out} is a folder; name the HTML file to write, e.g. "
                           f"{out / 'show.html'}")


def main(argv: Sequence[str]) -> int:
    from supervisor.gallery.build import GalleryError, show

    p = Parser(prog="python -m supervisor show", description=(
        "Draw grasps of one object (default: its lowest-energy one) with the checkout's own "
        "hand model, on one self-contained HTML page. Give the same config overrides as "
        "the run (--exp_name ...)."))
    p.add_argument("config", type=Path, help="the experiment's TOML config file")
    p.add_argument("object_code", help="the object whose final.npz to draw")
    p.add_argument("--index", type=int, nargs="+", default=[], metavar="I",
                   help="rows of final.npz to draw (0 is the first, -1 the last)")
    p.add_argument("--best", type=int, default=None, metavar="N",
                   help="the N lowest-energy grasps")
    p.add_argument("--out", type=Path, default=None,
                   help="the HTML file, in an existing folder (default: "
                   "{exp_dir}/show/{object_code}.html)")
    p.add_argument("--failed", action="store_true",
                   help="[validate]: grasps that failed validation, with the reason (read "
                   "from round folders that are kept); --index picks among them")
    p.add_argument("--no-open", action="store_true", help="never open a browser")
    add_overrides(p)
    args = p.parse_args(argv)
    if args.best is not None and args.best < 1:
        p.error("--best must be at least 1")
    if args.index and args.best is not None:
        p.error("give --index or --best, not both")
    if args.failed and args.best is not None:
        p.error("--failed draws failed grasps in order: --index picks among them, not --best")
    _check_out(args.out)
    config = load_config(args.config, overrides_from(args), reading=True)
    if not paths.manifest(config.exp_dir).exists():
        raise RefusedError(f"{paths.manifest(config.exp_dir)}: no manifest; experiment "
                           f"{config.exp_name!r} has not started (run: {config.command()})")
    state = open_state(config)
    out = args.out or config.exp_dir / "show" / f"{args.object_code}.html"
    if args.out is None:
        out.parent.mkdir(parents=True, exist_ok=True)  # the default's folder is ours
    try:
        written, lines = show(config, state, args.object_code, out, args.index, args.best,
                              failed=args.failed)
    except GalleryError as exc:
        raise RefusedError(str(exc)) from None
    for line in lines:
        print(f"note: {line}", file=sys.stderr)
    print(f"show: {written.resolve()} ({written.stat().st_size / 1e6:.1f} MB)")
    if not args.no_open and _desktop():
        webbrowser.open(written.resolve().as_uri())
    return 0
