"""Text as a terminal draws it: East Asian wide and fullwidth characters (CJK, most
emoji) take two columns, combining marks and format characters (accents, variation
selectors, joiners) none. Object codes are users' file names, so a table pads and cuts
them by these columns, not by ``len``."""

from __future__ import annotations

import unicodedata


def char_columns(c: str) -> int:
    if unicodedata.combining(c) or unicodedata.category(c) in ("Mn", "Me", "Cf"):
        return 0
    return 2 if unicodedata.east_asian_width(c) in ("W", "F") else 1


def columns(text: str) -> int:
    return sum(char_columns(c) for c in text)


def fit(text: str, width: int) -> str:
    """``text`` cut to at most ``width`` columns (never half a wide character), then
    padded with spaces to exactly ``width``."""
    out, used = [], 0
    for c in text:
        w = char_columns(c)
        if used + w > width:
            break
        out.append(c)
        used += w
    return "".join(out) + " " * (width - used)
