"""LangChain document compressor around order-preserving context selection."""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any

from langchain_core.callbacks import Callbacks
from langchain_core.documents import BaseDocumentCompressor, Document
from pydantic import ConfigDict, model_validator

from mamba3_integrations.errors import ConfigError, InputError
from mamba3_integrations.text.context import (
    DEFAULT_CHUNK_TEMPLATE,
    DEFAULT_DOCUMENT_TEMPLATE,
    ContextTemplate,
    ScoredChunk,
    render_pieces,
    scores_or_ranks,
    select_context,
)
from mamba3_integrations.text.tokens import token_counter

START_INDEX_KEY = "start_index"


class OrderPreservingCompressor(BaseDocumentCompressor):
    """Keep the most relevant documents within a token budget, returned in reading order.

    Metadata is read with the first key present in each tuple: the score from ``score_keys``
    (when any document has none, every document is scored by retrieval rank: 1, 1/2, 1/3, ...),
    the source document from ``doc_id_keys`` (else the document's ``id``, else it stands
    alone), the position from ``position_keys`` (documents without one come first, in retrieval
    order). ``start_index`` plus the text length gives the span used by ``merge_adjacent``.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    min_score: float | None = None
    token_budget: int | None = None
    tokenizer: Any = None
    """None (words and punctuation), a tokenizer with ``.encode``, or a callable."""
    merge_adjacent: bool = False
    render: bool = False
    """Rewrite ``page_content`` with document and chunk markers from the templates."""
    document_template: str = DEFAULT_DOCUMENT_TEMPLATE
    chunk_template: str = DEFAULT_CHUNK_TEMPLATE
    score_keys: tuple[str, ...] = ("relevance_score", "score")
    doc_id_keys: tuple[str, ...] = ("doc_id", "source")
    position_keys: tuple[str, ...] = (START_INDEX_KEY, "chunk_index")

    @model_validator(mode="after")
    def _check_options(self) -> OrderPreservingCompressor:
        self._template()
        if self.token_budget is not None and self.token_budget < 0:
            raise ConfigError(f"token_budget must be >= 0 or None, got {self.token_budget}")
        return self

    def _template(self) -> ContextTemplate:
        return ContextTemplate(document=self.document_template, chunk=self.chunk_template)

    def compress_documents(
        self, documents: Sequence[Document], query: str, callbacks: Callbacks | None = None
    ) -> Sequence[Document]:
        count_tokens = token_counter(self.tokenizer)
        scores = scores_or_ranks([self._score(doc) for doc in documents])
        first_rank: dict[str, int] = {}  # a document retrieved twice keeps its first rank
        chunks = []
        for rank, (doc, score) in enumerate(zip(documents, scores, strict=True)):
            start = doc.metadata.get(START_INDEX_KEY)
            has_start = isinstance(start, int)
            doc_id = _first_of(doc.metadata, self.doc_id_keys)
            position = _first_of(doc.metadata, self.position_keys)
            first = first_rank.setdefault(doc.id or doc.page_content, rank)
            chunks.append(
                ScoredChunk(
                    text=doc.page_content,
                    score=score,
                    doc_id=str(doc_id if doc_id is not None else doc.id or f"#{first}"),
                    # Without a position: negative, in retrieval order, never a real position.
                    index=position if isinstance(position, int) else first - len(documents),
                    start_char=start if has_start else None,
                    end_char=start + len(doc.page_content) if has_start else None,
                    metadata=doc.metadata,
                    source=doc,
                )
            )
        selected = select_context(
            chunks,
            min_score=self.min_score,
            token_budget=self.token_budget,
            count_tokens=count_tokens,
            merge_adjacent=self.merge_adjacent,
        )
        results = [_document(chunk) for chunk in selected]
        if self.render:
            pieces = render_pieces(selected, self._template())
            results = [
                doc.model_copy(update={"page_content": piece})
                for doc, piece in zip(results, pieces, strict=True)
            ]
        return results

    def _score(self, doc: Document) -> float | None:
        score = _first_of(doc.metadata, self.score_keys)
        if score is not None and (not isinstance(score, numbers.Real) or isinstance(score, bool)):
            raise InputError(
                f"document metadata holds a non-numeric relevance score {score!r}; set "
                f"score_keys (now {self.score_keys}) to the key that holds the score"
            )
        return score


def _first_of(metadata: Mapping[str, Any], keys: Sequence[str]) -> Any:
    return next((metadata[key] for key in keys if metadata.get(key) is not None), None)


def _document(chunk: ScoredChunk) -> Document:
    if not chunk.parts:
        return chunk.source
    metadata = dict(chunk.parts[0].source.metadata)
    metadata[START_INDEX_KEY] = chunk.start_char
    return Document(page_content=chunk.text, metadata=metadata)
