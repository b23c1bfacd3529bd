"""LangChain text splitter around the semantic chunker."""

from __future__ import annotations

import copy
import logging
from typing import Any

from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_text_splitters import TextSplitter

from mamba3_integrations.errors import InputError
from mamba3_integrations.text.chunking import Chunk, SemanticChunker
from mamba3_integrations.text.tokens import token_counter

logger = logging.getLogger(__name__)


class Mamba3SemanticTextSplitter(TextSplitter):
    """Split texts into semantically coherent chunks of at most ``max_tokens`` tokens.

    Chunks of a text are contiguous and rebuild it exactly (no overlap, whitespace kept), so
    ``start_index`` (with ``add_start_index=True``) is exact. Empty or whitespace-only texts
    give no chunks and a warning.
    """

    def __init__(
        self,
        embeddings: Embeddings,
        *,
        tokenizer: Any = None,
        breakpoint: str = "percentile",
        breakpoint_amount: float | None = None,
        buffer_size: int = 1,
        max_tokens: int = 512,
        min_tokens: int = 0,
        embed_batch_size: int = 256,
        add_start_index: bool = False,
    ) -> None:
        """``embeddings.embed_documents`` embeds the sentence windows; ``tokenizer`` counts
        tokens (None: words and punctuation; a tokenizer with ``.encode``; or a callable).
        The other options are those of ``SemanticChunker``."""
        count_tokens = token_counter(tokenizer)
        super().__init__(
            chunk_size=max_tokens,
            chunk_overlap=0,
            length_function=count_tokens,
            add_start_index=add_start_index,
            strip_whitespace=False,
        )
        self._chunker = SemanticChunker(
            embed=embeddings.embed_documents,
            count_tokens=count_tokens,
            breakpoint=breakpoint,
            breakpoint_amount=breakpoint_amount,
            buffer_size=buffer_size,
            max_tokens=max_tokens,
            min_tokens=min_tokens,
            embed_batch_size=embed_batch_size,
        )

    def split_text(self, text: str) -> list[str]:
        return [chunk.text for chunk in self._chunk([text])[0]]

    def create_documents(
        self, texts: list[str], metadatas: list[dict[Any, Any]] | None = None
    ) -> list[Document]:
        """Chunk ``texts`` (embedding calls batched across them) into ``Document`` objects."""
        if metadatas is not None and len(metadatas) != len(texts):
            raise InputError(f"got {len(texts)} texts but {len(metadatas)} metadatas")
        documents = []
        for i, chunks in enumerate(self._chunk(texts)):
            for chunk in chunks:
                metadata = copy.deepcopy(metadatas[i]) if metadatas else {}
                if self._add_start_index:
                    metadata["start_index"] = chunk.start_char
                documents.append(Document(page_content=chunk.text, metadata=metadata))
        return documents

    def _chunk(self, texts: list[str]) -> list[list[Chunk]]:
        kept = [text for text in texts if text.strip()]
        if len(kept) < len(texts):
            logger.warning("skipping %d empty or whitespace-only texts", len(texts) - len(kept))
        chunked = iter(self._chunker.chunk_documents(kept))
        return [next(chunked) if text.strip() else [] for text in texts]
