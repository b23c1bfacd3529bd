"""Fit text into pieces under a token bound, cutting at the coarsest boundary that works."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

from mamba3_integrations.errors import ConfigError

Fits = Callable[[int, int], bool]
"""``fits(start, end)``: whether ``text[start:end]`` is within the token bound."""

# Cut points, coarsest first: after a newline, before a word (whitespace stays with the word
# before it); the last resort is between any two characters.
_CUT_POINTS = (re.compile(r"(?<=\n)"), re.compile(r"(?<=\s)(?=\S)"))


def pack(bounds: Sequence[int], fits: Fits) -> list[tuple[int, int]]:
    """Group consecutive pieces ``[bounds[k], bounds[k + 1])`` into the longest runs that fit.

    Returns index pairs ``(i, j)`` into ``bounds``; a single piece that does not fit is a run
    of its own. Finds each run by galloping then bisecting, so a run costs ``O(log n)`` checks.
    """
    runs = []
    last = len(bounds) - 1
    i = 0
    while i < last:
        good, bad = i + 1, None  # bounds[i:good] fits (or is a lone piece); bounds[i:bad] doesn't
        step = 1
        while good < last:
            probe = min(good + step, last)
            if fits(bounds[i], bounds[probe]):
                good, step = probe, step * 2
            else:
                bad = probe
                break
        while bad is not None and bad - good > 1:
            middle = (good + bad) // 2
            if fits(bounds[i], bounds[middle]):
                good = middle
            else:
                bad = middle
        runs.append((i, good))
        i = good
    return runs


def split_to_fit(
    text: str, start: int, end: int, fits: Fits, level: int = 0
) -> list[tuple[int, int]]:
    """Cut ``text[start:end]`` into contiguous spans that fit, at lines, then words, then chars."""
    if fits(start, end):
        return [(start, end)]
    if level > len(_CUT_POINTS):
        raise ConfigError(
            f"the single character {text[start:end]!r} at offset {start} exceeds the token "
            "bound on its own; raise max_tokens"
        )
    bounds = _bounds(text, start, end, level)
    spans = []
    for i, j in pack(bounds, fits):
        spans.extend(split_to_fit(text, bounds[i], bounds[j], fits, level + 1))
    return spans


def _bounds(text: str, start: int, end: int, level: int) -> Sequence[int]:
    if level == len(_CUT_POINTS):
        return range(start, end + 1)
    cuts = (m.start() for m in _CUT_POINTS[level].finditer(text, start + 1, end))
    return [start, *(cut for cut in cuts if cut < end), end]
