"""Text out of token streams: incremental decoding that is safe for streaming."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from mamba3_integrations.runtime.stopping import find_stop, held_back


class IncrementalDecoder:
    """Turns one row's generated token ids into text deltas.

    Text that may still change is held back: an incomplete UTF-8 character at the
    end (decoded as U+FFFD) and a tail that could be the start of a stop string.
    ``finished`` turns true once a stop string appears; the text before it is the
    last delta.
    """

    def __init__(self, tokenizer: Any, stop_strings: Sequence[str] = ()) -> None:
        self.tokenizer, self.stop_strings = tokenizer, list(stop_strings)
        self.ids: list[int] = []
        self.emitted = 0
        self.finished = False

    def text(self) -> str:
        return self.tokenizer.decode(self.ids, skip_special_tokens=True)

    def add(self, token_id: int) -> str:
        """Record a token and return the text that became final."""
        if self.finished:
            return ""
        self.ids.append(token_id)
        text = self.text()
        stop = find_stop(text, self.stop_strings)
        if stop >= 0:
            self.finished = True
            return self._emit(text[:stop])
        end = len(text) - held_back(text, self.stop_strings)
        while end > self.emitted and text[end - 1] == "\ufffd":
            end -= 1
        return self._emit(text[:end])

    def flush(self) -> str:
        """The rest of the text at the end of generation (cut at a stop string)."""
        if self.finished:
            return ""
        text = self.text()
        stop = find_stop(text, self.stop_strings)
        return self._emit(text if stop < 0 else text[:stop])

    def _emit(self, final_text: str) -> str:
        delta = final_text[self.emitted:]
        self.emitted = max(self.emitted, len(final_text))
        return delta


def iter_text(token_stream: Iterator[int], tokenizer: Any,
              stop_strings: Sequence[str] = ()) -> Iterator[str]:
    """Text deltas of one row's token stream, ending at a stop string."""
    decoder = IncrementalDecoder(tokenizer, stop_strings)
    for token in token_stream:
        delta = decoder.add(token)
        if delta:
            yield delta
        if decoder.finished:
            return
    rest = decoder.flush()
    if rest:
        yield rest
