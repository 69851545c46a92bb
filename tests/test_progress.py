from __future__ import annotations

import pytest

from conftest import FIXTURES
from supervisor.run import progress
from supervisor.backends.runner import _split_lines


def test_real_tqdm_output_splits_and_parses() -> None:
    buffer = bytearray((FIXTURES / "probe1.stderr").read_bytes())
    lines = [raw.decode() for raw in _split_lines(buffer) if raw]
    assert not buffer  # the capture ends with "\n"
    bars = [b for b in map(progress.parse, lines) if b is not None]
    assert [b.n for b in bars[:3]] == [0, 1, 2]
    assert bars[-1].n == bars[-1].total == 20
    assert bars[-1].it_per_s == pytest.approx(4.51)
    assert bars[0].it_per_s is None and bars[0].eta_s is None
    assert sum("UserWarning" in line for line in lines) == 2


@pytest.mark.parametrize("line,n,total,rate", [
    ("optimizing:  45%|████▌     | 9/20 [00:02<00:02,  4.51it/s]", 9, 20, 4.51),
    ("optimizing:   3%|▎  | 300/10000 [01:02<33:41,  2.00s/it]", 300, 10000, 0.5),
    ("optimizing:   0%|          | 0/20 [00:00<?, ?it/s]", 0, 20, None),
])
def test_parse_bar(line: str, n: int, total: int, rate: float | None) -> None:
    bar = progress.parse(line)
    assert bar is not None and (bar.n, bar.total) == (n, total)
    assert bar.it_per_s == (pytest.approx(rate) if rate else None)


def test_non_progress_lines() -> None:
    assert progress.parse("Starting optimization...") is None


def test_split_caps_long_lines() -> None:
    buffer = bytearray(b"x" * 10000)
    lines = _split_lines(buffer)
    assert [len(line) for line in lines] == [4096, 4096] and len(buffer) == 1808
