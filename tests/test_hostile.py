"""Hostile input: generated configs and command lines never give a traceback, always a
clean exit 2 with one line; names never escape their folders."""

from __future__ import annotations

import io
import tempfile
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings, strategies as st

from conftest import Layout, write_toml
from supervisor.commands import cli
from supervisor.storage import paths
from supervisor.core import plan
from supervisor.config.load import TOP_KEYS, parse_config
from supervisor.config.toml import ConfigError, check_name


SETTINGS = settings(max_examples=60, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow])

scalars = st.one_of(
    st.integers(-10**12, 10**12), st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(), st.text(max_size=20),
)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=8)
keys = st.one_of(st.sampled_from(TOP_KEYS), st.text(min_size=1, max_size=12))
sections = ("main", "gpu", "retry", "timeouts", "filter", "cleanup", "disk", "logs")


def run_main(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = cli.main(argv)
    return code, out.getvalue(), err.getvalue()


def base(root: Path) -> dict[str, Any]:
    layout = Layout(root)
    return layout.config_data()


@SETTINGS
@given(changes=st.dictionaries(keys, values, min_size=1, max_size=3),
       section=st.sampled_from(sections), inner=st.dictionaries(st.text(max_size=10), values,
                                                               max_size=2))
def test_generated_configs_load_or_fail_with_one_line(changes, section, inner) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data = base(Path(tmp))
        data.update(changes)
        if isinstance(data.get(section), dict):
            data[section] = {**data[section], **inner}
        try:
            parse_config(data, Path(tmp) / "c.toml")
        except ConfigError as exc:
            assert "\n" not in str(exc) and "c.toml" in str(exc)


@SETTINGS
@given(changes=st.dictionaries(st.sampled_from(TOP_KEYS[:13]), values, min_size=1,
                               max_size=2))
def test_generated_config_files_through_the_cli(changes) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        data = base(Path(tmp))
        data.update(changes)
        try:
            path = write_toml(Path(tmp) / "c.toml", data)
        except (TypeError, UnicodeEncodeError):
            return  # not expressible in TOML
        code, _, err = run_main([str(path), "--dry-run"])
        assert code in (0, 2)
        if code == 2:
            assert len(err.strip().splitlines()) == 1, err


FLAGS = ["--exp_name", "--gpus", "--resume", "--no-resume", "--target_count_per_object",
         "--round_batch_size", "--object_code_list", "--object_code_file", "--max_rounds",
         "--merge_stride", "--seed_base", "--log-format", "--keep_intermediate", "--bogus"]


@SETTINGS
@given(args=st.lists(st.one_of(st.sampled_from(FLAGS), st.text(max_size=12)), max_size=6),
       with_config=st.booleans())
def test_generated_command_lines_exit_cleanly(args, with_config) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = write_toml(Path(tmp) / "c.toml", base(Path(tmp)))
        argv = ([str(path)] if with_config else []) + args + ["--dry-run"]
        if argv[0] in ("status", "export", "recover"):
            argv = argv[1:]
        code, _, err = run_main(argv)
        assert code in (0, 2)
        if code == 2:
            assert len(err.strip().splitlines()) == 1, err
        assert not (Path(tmp) / "exp").exists()  # a dry run writes nothing


@SETTINGS
@given(name=st.text(min_size=1, max_size=30))
def test_accepted_names_never_escape_their_folders(name: str) -> None:
    try:
        check_name("c.toml", "object_code_list", name)
    except ConfigError:
        return
    with tempfile.TemporaryDirectory() as tmp:
        layout = Layout(Path(tmp))
        config = layout.config(object_code_list=[name], exp_name="e")
        rounds_root = config.main.output_dir.resolve()
        folder = paths.round_dir(config, plan.round_name("e", name, 3)).resolve()
        assert folder.parent == rounds_root
        final = paths.final(config.exp_dir, name).resolve()
        assert final.parent.parent == (config.exp_dir / "final").resolve()


def test_traversal_attempts_are_rejected() -> None:
    for name in ("../x", "a/../../b", "..", "/etc", "a\\b", ".hidden", "-rf", "a\nb"):
        try:
            check_name("c.toml", "object_code_list", name)
        except ConfigError:
            continue
        raise AssertionError(f"{name!r} was accepted")
