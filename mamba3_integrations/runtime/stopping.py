"""Stop conditions of generation: end-of-sequence tokens and stop strings."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from mamba3_integrations.errors import InputError


def find_stop(text: str, stop_strings: Sequence[str]) -> int:
    """Index of the earliest stop string in ``text``, or -1."""
    hits = [i for s in stop_strings if (i := text.find(s)) >= 0]
    return min(hits) if hits else -1


def held_back(text: str, stop_strings: Sequence[str]) -> int:
    """How many trailing characters of ``text`` could still start a stop string.

    A stream must not emit them yet: the next tokens may complete the stop string.
    """
    longest = 0
    for s in stop_strings:
        for n in range(min(len(s) - 1, len(text)), longest, -1):
            if text.endswith(s[:n]):
                longest = n
                break
    return longest


class StopStringMatcher:
    """Tracks the generated text of one row and says when a stop string appears.

    Decodes the tail of the generated ids only, so checking stays cheap for long
    generations.
    """

    def __init__(self, tokenizer: Any, stop_strings: Sequence[str]) -> None:
        if tokenizer is None:
            raise InputError("stop strings need a tokenizer; load one or pass tokenizer=")
        if any(not s for s in stop_strings):
            raise InputError("stop strings must be non-empty")
        self.tokenizer, self.stop_strings = tokenizer, list(stop_strings)
        self.window = max(len(s) for s in self.stop_strings) + 8
        self.ids: list[int] = []

    def add(self, token_id: int) -> bool:
        """Record a generated token; True once the text contains a stop string."""
        self.ids.append(token_id)
        tail = self.tokenizer.decode(self.ids[-self.window:], skip_special_tokens=False)
        return find_stop(tail, self.stop_strings) >= 0
