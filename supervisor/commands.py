"""The read-and-repair commands: ``status``, ``export``, ``recover``."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from supervisor import manifest as mf
from supervisor.config import load_config
from supervisor.resume import RefusedError, manifest_path, recover_hint


def _parser(command: str) -> argparse.ArgumentParser:
    from supervisor.cli import Parser, add_overrides

    p = Parser(prog=f"python -m supervisor {command}",
               description="Give the same config overrides as the run (--exp_name ...).")
    p.add_argument("config", type=Path, help="the experiment's TOML config file")
    add_overrides(p)
    if command == "status":
        p.add_argument("--json", action="store_true", help="print one JSON document")
    if command == "export":
        p.add_argument("--out", type=Path, required=True, help="folder for {object_code}.npy")
        p.add_argument("--format", choices=("legacy",), default="legacy",
                       help="legacy: main.py's own result format")
    return p


def main(command: str, argv: Sequence[str]) -> int:
    from supervisor.cli import overrides_from

    args = _parser(command).parse_args(argv)
    config = load_config(args.config, overrides_from(args))
    if command == "recover":
        from supervisor.lock import ExperimentLock
        from supervisor.recover import recover

        with ExperimentLock(config.exp_dir):
            for line in recover(config):
                print(line)
        return 0
    path = manifest_path(config)
    if not path.exists():
        raise RefusedError(f"{path}: no manifest; experiment {config.exp_name!r} has not "
                           f"started (run: python -m supervisor {config.path})")
    try:
        manifest = mf.load(path)
    except mf.ManifestError as exc:
        raise RefusedError(f"{exc}; {recover_hint(config)}") from None
    if command == "status":
        from supervisor.status import render, summarize

        summary = summarize(config, manifest)
        print(json.dumps(summary, indent=1) if args.json else render(summary))
        return 0
    from supervisor.export import export

    codes = [c for c in config.object_codes if c in manifest.objects]
    for code, target, n in export(config.exp_dir, codes, args.out):
        done = manifest.objects[code].status == mf.DONE
        print(f"{code}: {n} grasps -> {target}" + ("" if done else " (object not done yet)"))
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main(sys.argv[1], sys.argv[2:]))
