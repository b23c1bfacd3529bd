"""LlamaIndex ``Mamba3Embedding``: a Mamba-3 embedding model as a ``BaseEmbedding``."""

from __future__ import annotations

import asyncio
from typing import Any

from llama_index.core.base.embeddings.base import BaseEmbedding, Embedding
from llama_index.core.bridge.pydantic import ConfigDict, Field, PrivateAttr

from mamba3_integrations.runtime.completion import model_name
from mamba3_integrations.runtime.embedding import (
    DEFAULT_BATCH_SIZE,
    Mamba3Encoder,
    load_encoder,
)


class Mamba3Embedding(BaseEmbedding):
    """A Mamba-3 embedding model for LlamaIndex indexes, retrievers and ingestion.

    Give ``model_path`` (an embedding model folder) or ``encoder`` (a loaded
    ``Mamba3Encoder``, e.g. with overridden settings; it wins over ``model_path``).
    Queries get the model's query prefix, texts its document prefix. LlamaIndex hands
    over ``embed_batch_size`` texts at a time; the encoder sorts them by length. Async
    forms run in a worker thread. Empty or whitespace-only texts, non-strings and
    invalid Unicode raise ``InputError``.
    """

    model_config = ConfigDict(extra="forbid", protected_namespaces=())

    model_path: str | None = Field(default=None, description="Folder of the model.")
    embed_batch_size: int = Field(default=DEFAULT_BATCH_SIZE, gt=0,
                                  description="Texts per call.")
    dtype: str | None = Field(default=None, description="Weights dtype when loading.")
    device: str | None = Field(default=None, description="Device when loading.")

    _encoder: Mamba3Encoder = PrivateAttr()

    def __init__(self, model_path: str | None = None, encoder: Mamba3Encoder | None = None,
                 **kwargs: Any) -> None:
        encoder = load_encoder(model_path, encoder, kwargs.get("dtype"), kwargs.get("device"),
                               kwargs.get("embed_batch_size", DEFAULT_BATCH_SIZE))
        kwargs.setdefault("model_name", model_name(model_path))
        super().__init__(model_path=model_path, **kwargs)
        self._encoder = encoder

    @classmethod
    def class_name(cls) -> str:
        return "Mamba3Embedding"

    @property
    def encoder(self) -> Mamba3Encoder:
        """The loaded encoder."""
        return self._encoder

    def _get_query_embedding(self, query: str) -> Embedding:
        return self._encoder.embed_queries([query])[0]

    def _get_text_embedding(self, text: str) -> Embedding:
        return self._encoder.embed_documents([text])[0]

    def _get_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return self._encoder.embed_documents(texts)

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return await asyncio.to_thread(self._get_query_embedding, query)

    async def _aget_text_embedding(self, text: str) -> Embedding:
        return await asyncio.to_thread(self._get_text_embedding, text)

    async def _aget_text_embeddings(self, texts: list[str]) -> list[Embedding]:
        return await asyncio.to_thread(self._get_text_embeddings, texts)
