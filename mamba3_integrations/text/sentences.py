"""Sentence splitting into character spans that rebuild the text exactly.

The text is first cut into Markdown-aware blocks (paragraphs, list items, headings, thematic
breaks, tables, fenced and indented code), then paragraphs and list items are cut into
sentences. Headings, thematic breaks, tables and code blocks are single units and are never
cut inside.

Whitespace rule: a sentence owns the whitespace that follows it; a block-level unit starts at
the beginning of its line (so code keeps its indentation); leading whitespace of the text
belongs to the first span.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from itertools import pairwise

Span = tuple[int, int]

_LINE = re.compile(r"[^\n]*\n|[^\n]+")
_FENCE_OPEN = re.compile(r" {0,3}(`{3,}|~{3,})")
_HEADING = re.compile(r" {0,3}#{1,6}(?:\s|$)")
_THEMATIC_BREAK = re.compile(r" {0,3}([-*_])(?:[ \t]*\1){2,}[ \t]*$")
_LIST_ITEM = re.compile(r"[ \t]*(?:[-*+•]|\d{1,9}[.)])[ \t]+(?=\S)")
_TABLE_ROW = re.compile(r"[ \t]*\|")
_INDENTED = re.compile(r"(?: {4}|\t)")

_CLOSERS = "\"'”’»)\\]}"
_SENTENCE_END = re.compile(rf"[.!?…]+[{_CLOSERS}]*(?=\s)|[。！？]+[{_CLOSERS}」』]*")
_NON_SPACE = re.compile(r"\S")
_WORD_BEFORE = re.compile(r"[\w.]*$")
_INITIALISM = re.compile(r"(?:\w\.)+\w")

# Abbreviations after which a period never ends a sentence (compared case-sensitively).
# fmt: off
_TITLES = frozenset({
    "Mr", "Mrs", "Ms", "Dr", "Prof", "Rev", "Gen", "Col", "Capt", "Lt", "Sgt", "Gov", "Sen",
    "Rep", "Hon", "St", "Mt", "Fig", "Figs", "No", "Nos", "Vol", "Vols", "Eq", "Eqs", "Sec",
    "Ch", "Art", "Jan", "Feb", "Mar", "Apr", "Jun", "Jul", "Aug", "Sep", "Sept", "Oct", "Nov",
    "Dec",
})
# fmt: on
# Abbreviations after which a period never ends a sentence (compared lower-cased).
_NEVER_FINAL = frozenset({"e.g", "i.e", "vs", "cf", "viz", "approx", "incl", "esp", "resp", "pp"})
# Abbreviations that often end a sentence: a period ends it unless lower case or a digit follows.
_MAYBE_FINAL = frozenset({"etc", "al", "inc", "ltd", "co", "corp", "bros", "jr", "sr"})


def split_sentences(text: str) -> list[Span]:
    """Return ``(start, end)`` spans, in order, that cover ``text`` exactly (``[]`` if empty)."""
    starts: list[int] = []
    for start, end, is_paragraph in _blocks(text):
        starts.append(start)
        if is_paragraph:
            marker = _LIST_ITEM.match(text, start, end)
            starts.extend(_sentence_starts(text, marker.end() if marker else start, end))
    edges = [0, *starts[1:], len(text)]
    return [(a, b) for a, b in pairwise(edges) if a < b]


def _classify(line: str) -> str:
    if not line.strip():
        return "blank"
    if _FENCE_OPEN.match(line):
        return "fence"
    if _HEADING.match(line) or _THEMATIC_BREAK.match(line):
        return "heading"
    if _LIST_ITEM.match(line):
        return "item"
    if _TABLE_ROW.match(line):
        return "table"
    if _INDENTED.match(line):
        return "indented"
    return "text"


def _blocks(text: str) -> Iterator[tuple[int, int, bool]]:
    """Yield ``(first line start, content end, is paragraph)`` for each block, in order."""
    block: list = []  # [start, end, kind] of the open block
    fence = ""  # opening fence of an unclosed fenced code block
    after_blank = True
    for match in _LINE.finditer(text):
        line = match.group().rstrip("\r\n")
        line_end = match.start() + len(line)
        if fence:
            block[1] = line_end
            stripped = line.strip()
            if stripped.startswith(fence) and not stripped.strip(fence[0]):
                fence = ""
            continue
        kind = _classify(line)
        if kind == "blank":
            after_blank = True
            continue
        kind_of_block = block[2] if block else ""
        continues = (
            (kind_of_block == "paragraph" and kind in ("text", "indented") and not after_blank)
            or (kind_of_block == "indented" and kind == "indented")
            or (kind_of_block == "table" and kind == "table" and not after_blank)
        )
        after_blank = False
        if continues:
            block[1] = line_end
            continue
        if block:
            yield block[0], block[1], block[2] == "paragraph"
        if kind == "fence":
            fence = _FENCE_OPEN.match(line).group(1)
        block = [match.start(), line_end, "paragraph" if kind in ("text", "item") else kind]
    if block:
        yield block[0], block[1], block[2] == "paragraph"


def _sentence_starts(text: str, start: int, end: int) -> Iterator[int]:
    """Yield the start of every sentence after the first in ``text[start:end]``."""
    for match in _SENTENCE_END.finditer(text, start, end):
        following = _NON_SPACE.search(text, match.end(), end)
        if following is None:
            return
        if _ends_sentence(text, match, following.group()):
            yield following.start()


def _ends_sentence(text: str, match: re.Match[str], next_char: str) -> bool:
    mark = match.group().rstrip(_CLOSERS + "」』")
    if any(char in mark for char in "!?。！？"):
        return True
    if mark != ".":
        return not next_char.islower()  # an ellipsis: "Wait... maybe" goes on
    word = _WORD_BEFORE.search(text, max(0, match.start() - 32), match.start()).group()
    word = word.lstrip(".")
    if word in _TITLES or word.lower() in _NEVER_FINAL:
        return False
    if len(word) == 1 and word.isupper():
        return False  # an initial: "J. Smith"
    if word.lower() in _MAYBE_FINAL or _INITIALISM.fullmatch(word):
        return not (next_char.islower() or next_char.isdigit())
    return True
