"""Text out of token streams: incremental decoding that is safe for streaming."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from mamba3_integrations.runtime.stopping import find_stop, held_back


class IncrementalDecoder:
    """Turns one row's generated token ids into text deltas.

    Each step decodes only a short window of recent tokens (the tokens since the
    last complete character and the ones before them, for context), so the cost
    per token does not grow with the length of the output. Text that may still
    change is held back: an incomplete UTF-8 character (decoded as U+FFFD) and a
    tail that could be the start of a stop string. ``finished`` turns true once a
    stop string appears; the text before it is the last delta.
    """

    def __init__(self, tokenizer: Any, stop_strings: Sequence[str] = ()) -> None:
        self.tokenizer, self.stop_strings = tokenizer, list(stop_strings)
        self.ids: list[int] = []
        self.prefix_offset = 0  # window start: context for decoding the new tokens
        self.read_offset = 0  # tokens before this are part of ``decoded``
        self.decoded = ""
        self.emitted = 0
        self.finished = False

    def _decode(self, start: int, end: int | None = None) -> str:
        return self.tokenizer.decode(self.ids[start:end], skip_special_tokens=True)

    def _advance(self, final: bool) -> None:
        """Move complete characters of the new tokens into ``decoded``."""
        known = self._decode(self.prefix_offset, self.read_offset)
        window = self._decode(self.prefix_offset)
        if len(window) > len(known) and (final or not window.endswith("\ufffd")):
            self.decoded += window[len(known):]
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)

    def text(self) -> str:
        """The text decoded so far (without an incomplete trailing character)."""
        return self.decoded

    def add(self, token_id: int) -> str:
        """Record a token and return the text that became final."""
        if self.finished:
            return ""
        self.ids.append(token_id)
        self._advance(final=False)
        return self._release()

    def flush(self) -> str:
        """The rest of the text at the end of generation (cut at a stop string)."""
        if self.finished:
            return ""
        self._advance(final=True)
        return self._release(final=True)

    def _release(self, final: bool = False) -> str:
        text = self.decoded
        # A stop string can only start in the part not yet released, or just before it.
        longest = max((len(s) for s in self.stop_strings), default=0)
        stop = find_stop(text[max(0, self.emitted - longest):], self.stop_strings)
        if stop >= 0:
            self.finished = True
            return self._emit(text[: max(0, self.emitted - longest) + stop])
        end = len(text) if final else len(text) - held_back(text, self.stop_strings)
        return self._emit(text[:end])

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
