"""Semantic chunking: consecutive sentences are grouped, and a chunk ends where the topic shifts.

Each sentence is embedded together with ``buffer_size`` neighbours on each side; a breakpoint
falls between two sentences whose embeddings are far apart. Chunks are then cut further so that
none exceeds ``max_tokens``, and chunks under ``min_tokens`` are merged into their closer
neighbour when the bound allows. Chunks of a document are contiguous, in order, and
``"".join(chunk.text for chunk in chunks) == text``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise

import numpy as np

from mamba3_integrations.errors import ConfigError, InputError
from mamba3_integrations.text.packing import Fits, pack, split_to_fit
from mamba3_integrations.text.sentences import Span, split_sentences
from mamba3_integrations.text.tokens import TokenCounter, count_word_tokens

Embed = Callable[[list[str]], "Sequence[Sequence[float]] | np.ndarray"]

BREAKPOINT_DEFAULTS: dict[str, float] = {
    "threshold": 0.5,
    "percentile": 95.0,
    "standard_deviation": 3.0,
    "interquartile": 1.5,
}
"""Breakpoint kinds and their default amounts.

- ``threshold``: break where the cosine similarity of neighbours is below the amount.
- ``percentile``: break where the cosine distance exceeds this percentile of the document's.
- ``standard_deviation``: break where the distance exceeds mean + amount * std.
- ``interquartile``: break where the distance exceeds mean + amount * IQR.
"""


@dataclass(frozen=True)
class Chunk:
    """A contiguous piece of a document."""

    text: str
    doc_id: str | None
    index: int
    """Position of the chunk in its document, from 0."""
    start_char: int
    end_char: int
    token_count: int
    break_score: float | None
    """Cosine distance across the cut that starts this chunk; ``None`` for the first chunk."""


@dataclass(frozen=True)
class SemanticChunker:
    """Split documents into semantically coherent chunks of at most ``max_tokens`` tokens."""

    embed: Embed
    """``embed(texts) -> vectors``, one vector per text; called with up to
    ``embed_batch_size`` texts at a time, across documents."""
    count_tokens: TokenCounter = count_word_tokens
    breakpoint: str = "percentile"
    breakpoint_amount: float | None = None
    """``None`` takes the kind's default from ``BREAKPOINT_DEFAULTS``."""
    buffer_size: int = 1
    max_tokens: int = 512
    min_tokens: int = 0
    embed_batch_size: int = 256

    def __post_init__(self) -> None:
        if self.breakpoint not in BREAKPOINT_DEFAULTS:
            raise ConfigError(
                f"unknown breakpoint {self.breakpoint!r}; use one of {sorted(BREAKPOINT_DEFAULTS)}"
            )
        amount = self.amount
        if self.breakpoint == "threshold" and not -1.0 <= amount <= 1.0:
            raise ConfigError(f"a threshold is a cosine similarity in [-1, 1], got {amount}")
        if self.breakpoint == "percentile" and not 0.0 <= amount <= 100.0:
            raise ConfigError(f"a percentile is in [0, 100], got {amount}")
        if amount < 0 and self.breakpoint in ("standard_deviation", "interquartile"):
            raise ConfigError(f"{self.breakpoint} amount must be >= 0, got {amount}")
        if self.max_tokens < 1:
            raise ConfigError(f"max_tokens must be >= 1, got {self.max_tokens}")
        if not 0 <= self.min_tokens <= self.max_tokens:
            raise ConfigError(
                f"min_tokens must be between 0 and max_tokens ({self.max_tokens}), "
                f"got {self.min_tokens}"
            )
        if self.buffer_size < 0:
            raise ConfigError(f"buffer_size must be >= 0, got {self.buffer_size}")
        if self.embed_batch_size < 1:
            raise ConfigError(f"embed_batch_size must be >= 1, got {self.embed_batch_size}")

    @property
    def amount(self) -> float:
        """The breakpoint amount in force."""
        if self.breakpoint_amount is None:
            return BREAKPOINT_DEFAULTS[self.breakpoint]
        return float(self.breakpoint_amount)

    def chunk(self, text: str | bytes, doc_id: str | None = None) -> list[Chunk]:
        """Chunk one document.

        Raises ``InputError`` when ``text`` is empty, whitespace-only, or not valid UTF-8.
        """
        return self.chunk_documents([text], [doc_id])[0]

    def chunk_documents(
        self, texts: Sequence[str | bytes], doc_ids: Sequence[str | None] | None = None
    ) -> list[list[Chunk]]:
        """Chunk several documents, batching their embedding calls together."""
        if doc_ids is None:
            doc_ids = [None] * len(texts)
        if len(doc_ids) != len(texts):
            raise InputError(f"got {len(texts)} texts but {len(doc_ids)} doc_ids")
        documents = [
            _checked_text(text, f"document {doc_id!r}" if doc_id is not None else f"text #{i}")
            for i, (text, doc_id) in enumerate(zip(texts, doc_ids, strict=True))
        ]
        units = [self._sentence_units(text) for text in documents]
        windows = [self._windows(text, spans) for text, spans in zip(documents, units, strict=True)]
        vectors = self._embed_all([window for group in windows for window in group])
        chunks = []
        offset = 0
        for text, doc_id, spans, group in zip(documents, doc_ids, units, windows, strict=True):
            distances = _cosine_distances(vectors[offset : offset + len(group)])
            offset += len(group)
            chunks.append(self._chunks(text, doc_id, spans, distances))
        return chunks

    def _fits(self, text: str) -> Fits:
        return lambda start, end: self.count_tokens(text[start:end]) <= self.max_tokens

    def _sentence_units(self, text: str) -> list[Span]:
        """Sentences, with those over ``max_tokens`` cut into pieces that fit."""
        fits = self._fits(text)
        units: list[Span] = []
        for start, end in split_sentences(text):
            units.extend(split_to_fit(text, start, end, fits))
        return units

    def _windows(self, text: str, units: list[Span]) -> list[str]:
        """The text embedded for each unit: the unit and ``buffer_size`` neighbours each side."""
        if len(units) < 2:
            return []
        last = len(units) - 1
        return [
            text[
                units[max(0, i - self.buffer_size)][0] : units[min(last, i + self.buffer_size)][1]
            ].strip()
            for i in range(len(units))
        ]

    def _embed_all(self, texts: list[str]) -> np.ndarray:
        """Embed ``texts`` in batches. A blank text (a whitespace piece of an over-long sentence)
        is not sent to ``embed``; it takes the vector of the text before it (or the first)."""
        filled = [i for i, text in enumerate(texts) if text]
        batches = []
        for first in range(0, len(filled), self.embed_batch_size):
            batch = [texts[i] for i in filled[first : first + self.embed_batch_size]]
            vectors = np.asarray(self.embed(batch), dtype=np.float64)
            if vectors.ndim != 2 or len(vectors) != len(batch):
                raise ConfigError(
                    f"embed must return one vector per text: got shape {vectors.shape} for "
                    f"{len(batch)} texts"
                )
            batches.append(vectors)
        if not batches:
            return np.zeros((len(texts), 1))
        if len({batch.shape[1] for batch in batches}) > 1:
            raise ConfigError("embed returned vectors of different sizes across batches")
        source = np.searchsorted(filled, np.arange(len(texts)), side="right") - 1
        return np.concatenate(batches)[np.maximum(source, 0)]

    def _breaks(self, distances: np.ndarray) -> np.ndarray:
        """Indices ``i`` such that a chunk boundary falls between unit ``i`` and ``i + 1``."""
        if distances.size == 0:
            return distances.astype(int)
        if self.breakpoint == "threshold":
            return np.flatnonzero(1.0 - distances < self.amount)
        if self.breakpoint == "percentile":
            cutoff = np.percentile(distances, self.amount)
        elif self.breakpoint == "standard_deviation":
            cutoff = distances.mean() + self.amount * distances.std()
        else:
            q1, q3 = np.percentile(distances, [25.0, 75.0])
            cutoff = distances.mean() + self.amount * (q3 - q1)
        return np.flatnonzero(distances > cutoff)

    def _chunks(
        self, text: str, doc_id: str | None, units: list[Span], distances: np.ndarray
    ) -> list[Chunk]:
        fits = self._fits(text)
        edges = [0, *(int(i) + 1 for i in self._breaks(distances)), len(units)]
        groups: list[tuple[int, int]] = []  # unit index ranges
        for first, stop in pairwise(edges):
            bounds = [units[k][0] for k in range(first, stop)] + [units[stop - 1][1]]
            groups.extend((first + i, first + j) for i, j in pack(bounds, fits))
        counts = [self.count_tokens(text[units[a][0] : units[b - 1][1]]) for a, b in groups]
        self._merge_small(text, units, distances, groups, counts)

        def distance_before(first_unit: int) -> float | None:
            return float(distances[first_unit - 1]) if first_unit > 0 else None

        return [
            Chunk(
                text=text[units[a][0] : units[b - 1][1]],
                doc_id=doc_id,
                index=index,
                start_char=units[a][0],
                end_char=units[b - 1][1],
                token_count=count,
                break_score=distance_before(a),
            )
            for index, ((a, b), count) in enumerate(zip(groups, counts, strict=True))
        ]

    def _merge_small(
        self,
        text: str,
        units: list[Span],
        distances: np.ndarray,
        groups: list[tuple[int, int]],
        counts: list[int],
    ) -> None:
        """Merge groups under ``min_tokens`` into the closer neighbour that keeps the bound."""
        i = 0
        while i < len(groups):
            if counts[i] >= self.min_tokens:
                i += 1
                continue
            neighbours = [j for j in (i - 1, i + 1) if 0 <= j < len(groups)]
            neighbours.sort(key=lambda j: distances[groups[max(i, j)][0] - 1])
            for j in neighbours:
                low, high = min(i, j), max(i, j)
                merged = (groups[low][0], groups[high][1])
                count = self.count_tokens(text[units[merged[0]][0] : units[merged[1] - 1][1]])
                if count <= self.max_tokens:
                    groups[low : high + 1] = [merged]
                    counts[low : high + 1] = [count]
                    i = low
                    break
            else:
                i += 1


def _checked_text(text: str | bytes, label: str) -> str:
    """Decode and validate one document's text, or raise ``InputError`` saying what is wrong."""
    if isinstance(text, (bytes, bytearray, memoryview)):
        raw = bytes(text)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise InputError(
                f"{label} is not valid UTF-8: byte offset {error.start} "
                f"({raw[error.start : error.end]!r}: {error.reason}); decode it with its real "
                "encoding and pass a str"
            ) from None
    elif not isinstance(text, str):
        raise InputError(f"{label} must be str or bytes, got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise InputError(
            f"{label} cannot be encoded as UTF-8: lone surrogate at character offset "
            f"{error.start}; it was probably decoded with errors='surrogateescape'"
        ) from None
    if not text.strip():
        raise InputError(
            f"{label} is empty or whitespace-only; drop such documents before chunking"
        )
    return text


def _cosine_distances(vectors: np.ndarray) -> np.ndarray:
    """``1 - cos`` between each vector and the next; a zero vector is at distance 1."""
    if len(vectors) < 2:
        return np.zeros(0)
    norms = np.linalg.norm(vectors, axis=1)
    dots = np.einsum("ij,ij->i", vectors[:-1], vectors[1:])
    denominators = norms[:-1] * norms[1:]
    similarities = np.divide(dots, denominators, out=np.zeros_like(dots), where=denominators > 0)
    return np.clip(1.0 - similarities, 0.0, 2.0)
