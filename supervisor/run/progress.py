"""Parse tqdm progress lines such as
``optimizing:  45%|████▌     | 9/20 [00:02<00:02,  4.51it/s]``."""

from __future__ import annotations

import re
from dataclasses import dataclass

_BAR = re.compile(
    r"(?P<n>\d+)/(?P<total>\d+)\s*\[(?P<elapsed>[\d:]+)<(?P<eta>[\d:?]+)"
    r"(?:,\s*(?P<rate>[\d.]+|\?)\s*(?P<unit>it/s|s/it))?"
)


@dataclass(frozen=True)
class Progress:
    n: int
    total: int
    elapsed_s: float
    eta_s: float | None
    it_per_s: float | None

    @property
    def fraction(self) -> float:
        return self.n / self.total if self.total else 0.0


def _seconds(clock: str) -> float | None:
    if "?" in clock:
        return None
    value = 0.0
    for part in clock.split(":"):
        value = value * 60 + int(part)
    return value


def parse(line: str) -> Progress | None:
    m = _BAR.search(line)
    if not m:
        return None
    rate = m["rate"]
    it_per_s = None
    if rate not in (None, "?") and float(rate) > 0:
        it_per_s = float(rate) if m["unit"] == "it/s" else 1.0 / float(rate)
    return Progress(int(m["n"]), int(m["total"]), _seconds(m["elapsed"]) or 0.0,
                    _seconds(m["eta"]), it_per_s)
