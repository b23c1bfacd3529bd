"""Order-preserving context selection: keep the most relevant chunks, present them in reading order.

``select_context`` drops chunks under ``min_score``, removes duplicates, keeps the best chunks
that fit ``token_budget``, then orders them document by document (the document holding the
best chunk first) and, inside a document, by position. The result depends on the set of input
chunks, not on their order (bar duplicates differing only in metadata). ``render_context``
formats the selection for a prompt.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mamba3_integrations.errors import ConfigError, InputError
from mamba3_integrations.text.tokens import TokenCounter, count_word_tokens

logger = logging.getLogger(__name__)

DEFAULT_DOCUMENT_TEMPLATE = '<document id="{doc_id}" rank="{doc_rank}">\n{chunks}\n</document>'
DEFAULT_CHUNK_TEMPLATE = '<chunk index="{index}" score="{score:.3f}">\n{text}\n</chunk>'


@dataclass(frozen=True)
class ScoredChunk:
    """A retrieved chunk with its relevance score and its place in its document."""

    text: str
    score: float
    doc_id: str
    index: int
    """Position in the document (chunk number or start offset): the order and dedup key."""
    start_char: int | None = None
    end_char: int | None = None
    token_count: int | None = None
    """``None``: counted with the selection's token counter."""
    metadata: Mapping[str, Any] = field(default_factory=dict, compare=False)
    source: Any = field(default=None, compare=False, repr=False)
    """The framework object this chunk came from, handed back untouched."""
    parts: tuple[ScoredChunk, ...] = field(default=(), compare=False, repr=False)
    """For a merged chunk, the chunks it was merged from, in order; otherwise empty."""

    def __post_init__(self) -> None:
        if not isinstance(self.score, numbers.Real) or isinstance(self.score, bool):
            raise InputError(f"score must be a number, got {self.score!r} for {self.doc_id!r}")
        if not isinstance(self.doc_id, str):
            raise InputError(f"doc_id must be a str, got {type(self.doc_id).__name__}")
        if not isinstance(self.index, numbers.Integral):
            raise InputError(f"index must be an int, got {self.index!r} for {self.doc_id!r}")


def scores_or_ranks(scores: Sequence[float | None]) -> list[float]:
    """Return ``scores`` if every one is a number, else reciprocal ranks ``1, 1/2, 1/3, ...``.

    Retrievers that give no scores still give an order; this turns that order into scores so
    that selection can work with it. Mixed input falls back to ranks, with a warning.
    """
    if all(score is not None for score in scores):
        return [float(score) for score in scores]  # type: ignore[arg-type]
    if any(score is not None for score in scores):
        logger.warning(
            "%d of %d chunks have no relevance score; ranking all of them by retrieval order",
            sum(score is None for score in scores),
            len(scores),
        )
    return [1.0 / rank for rank in range(1, len(scores) + 1)]


def select_context(
    chunks: Iterable[ScoredChunk],
    *,
    min_score: float | None = None,
    token_budget: int | None = None,
    count_tokens: TokenCounter = count_word_tokens,
    merge_adjacent: bool = False,
) -> list[ScoredChunk]:
    """Choose and order chunks for a prompt.

    1. Drop chunks scoring below ``min_score`` and chunks whose score is NaN.
    2. Keep one chunk per ``(doc_id, index)``: the best scoring (ties: text, token count,
       offsets; duplicates equal in all of these but metadata keep the first one given).
    3. Walk chunks from best to worst (ties: doc_id, then index) and keep each one that still
       fits in ``token_budget`` (``None``: no limit); the budget counts chunk text only.
    4. Order documents by their best kept score (ties: doc_id) and chunks by index.
    5. With ``merge_adjacent``, join neighbouring chunks of a document whose character spans
       touch or overlap; chunks without ``start_char``/``end_char`` are never merged.
    """
    if token_budget is not None and token_budget < 0:
        raise ConfigError(f"token_budget must be >= 0 or None, got {token_budget}")
    best: dict[tuple[str, int], ScoredChunk] = {}
    for chunk in chunks:
        if math.isnan(chunk.score) or (min_score is not None and chunk.score < min_score):
            continue
        key = (chunk.doc_id, chunk.index)
        if key not in best or _duplicate_key(chunk) < _duplicate_key(best[key]):
            best[key] = chunk
    kept = []
    used = 0
    for chunk in sorted(best.values(), key=_rank_key):
        tokens = chunk.token_count if chunk.token_count is not None else count_tokens(chunk.text)
        if token_budget is None or used + tokens <= token_budget:
            kept.append(chunk)
            used += tokens
    doc_rank: dict[str, int] = {}
    for chunk in kept:
        doc_rank.setdefault(chunk.doc_id, len(doc_rank))
    ordered = sorted(kept, key=lambda chunk: (doc_rank[chunk.doc_id], chunk.index))
    return _merge_adjacent(ordered, count_tokens) if merge_adjacent else ordered


def _rank_key(chunk: ScoredChunk) -> tuple[float, str, int]:
    return (-chunk.score, chunk.doc_id, chunk.index)


def _duplicate_key(chunk: ScoredChunk) -> tuple[float, str, int, int, int]:
    """Best score first, then text, token count and offsets; only metadata/source never decide."""
    fields = (chunk.token_count, chunk.start_char, chunk.end_char)
    return (-chunk.score, chunk.text, *(-1 if value is None else value for value in fields))


def _merge_adjacent(chunks: list[ScoredChunk], count_tokens: TokenCounter) -> list[ScoredChunk]:
    merged: list[ScoredChunk] = []
    for chunk in chunks:
        previous = merged[-1] if merged else None
        if previous is not None and _touches(previous, chunk):
            merged[-1] = _join(previous, chunk, count_tokens)
        else:
            merged.append(chunk)
    return merged


def _touches(first: ScoredChunk, second: ScoredChunk) -> bool:
    return (
        first.doc_id == second.doc_id
        and None not in (first.start_char, first.end_char, second.start_char, second.end_char)
        and first.start_char <= second.start_char <= first.end_char  # type: ignore[operator]
    )


def _join(first: ScoredChunk, second: ScoredChunk, count_tokens: TokenCounter) -> ScoredChunk:
    overlap = first.end_char - second.start_char  # type: ignore[operator]
    text = first.text + second.text[overlap:]
    return ScoredChunk(
        text=text,
        score=max(first.score, second.score),
        doc_id=first.doc_id,
        index=first.index,
        start_char=first.start_char,
        end_char=max(first.end_char, second.end_char),  # type: ignore[type-var]
        token_count=count_tokens(text),
        metadata=first.metadata,
        parts=(first.parts or (first,)) + (second.parts or (second,)),
    )


@dataclass(frozen=True)
class ContextTemplate:
    """How ``render_context`` formats chunks.

    ``document`` must contain ``{chunks}`` once and may use ``{doc_id}`` and ``{doc_rank}``
    (1-based). ``chunk`` may use ``{text}`` (stripped), ``{score}``, ``{doc_id}``, ``{index}``,
    ``{start_char}``, ``{end_char}`` and ``{metadata}`` (e.g. ``{metadata[title]}``).
    """

    document: str = DEFAULT_DOCUMENT_TEMPLATE
    chunk: str = DEFAULT_CHUNK_TEMPLATE
    separator: str = "\n\n"

    def __post_init__(self) -> None:
        if self.document.count("{chunks}") != 1:
            raise ConfigError(
                f"the document template must contain '{{chunks}}' exactly once: {self.document!r}"
            )
        sample = ScoredChunk(
            text="text",
            score=1.0,
            doc_id="doc",
            index=0,
            start_char=0,
            end_char=4,
            metadata=defaultdict(str),
        )
        try:
            _render_document_edges(self, sample.doc_id, 1)
            _render_chunk(self, sample)
        except (KeyError, IndexError, ValueError, AttributeError) as error:
            raise ConfigError(
                f"bad context template ({type(error).__name__}: {error}); the fields are listed "
                "in ContextTemplate's docstring"
            ) from None


def render_pieces(
    chunks: Sequence[ScoredChunk], template: ContextTemplate | None = None
) -> list[str]:
    """One string per chunk; a document's first and last chunks carry its header and footer.

    Consecutive chunks with the same ``doc_id`` form one document. ``None``: default template.
    """
    template = template or ContextTemplate()
    pieces = []
    doc_rank = 0
    for position, chunk in enumerate(chunks):
        piece = _render_chunk(template, chunk)
        if position == 0 or chunks[position - 1].doc_id != chunk.doc_id:
            doc_rank += 1
            header, _ = _render_document_edges(template, chunk.doc_id, doc_rank)
            piece = header + piece
        if position == len(chunks) - 1 or chunks[position + 1].doc_id != chunk.doc_id:
            _, footer = _render_document_edges(template, chunk.doc_id, doc_rank)
            piece += footer
        pieces.append(piece)
    return pieces


def render_context(chunks: Sequence[ScoredChunk], template: ContextTemplate | None = None) -> str:
    """Format chunks, in the given order, as one prompt string (``None``: default template)."""
    template = template or ContextTemplate()
    return template.separator.join(render_pieces(chunks, template))


def _render_document_edges(template: ContextTemplate, doc_id: str, doc_rank: int) -> list[str]:
    edges = template.document.split("{chunks}")
    return [edge.format(doc_id=doc_id, doc_rank=doc_rank) for edge in edges]


def _render_chunk(template: ContextTemplate, chunk: ScoredChunk) -> str:
    return template.chunk.format(
        text=chunk.text.strip(),
        score=chunk.score,
        doc_id=chunk.doc_id,
        index=chunk.index,
        start_char=chunk.start_char,
        end_char=chunk.end_char,
        metadata=chunk.metadata,
    )
