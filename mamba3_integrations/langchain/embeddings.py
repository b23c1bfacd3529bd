"""LangChain ``Mamba3Embeddings``: a Mamba-3 embedding model as ``Embeddings``."""

from __future__ import annotations

from typing import Any

from langchain_core.embeddings import Embeddings
from pydantic import BaseModel, ConfigDict, Field, model_validator

from mamba3_integrations.runtime.embedding import DEFAULT_BATCH_SIZE, load_encoder


class Mamba3Embeddings(BaseModel, Embeddings):
    """A Mamba-3 embedding model for LangChain vector stores and retrievers.

    Give ``model_path`` (an embedding model folder) or ``encoder`` (a loaded
    ``Mamba3Encoder``, e.g. with overridden settings; it wins over ``model_path``).
    ``embed_documents`` adds the model's document prefix and ``embed_query`` its query
    prefix; the async forms run in a worker thread. Empty or whitespace-only texts,
    non-strings and invalid Unicode raise ``InputError``.
    """

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True, protected_namespaces=())

    model_path: str | None = None
    """Folder of the embedding model: config.json with 'embedding' settings, weights,
    tokenizer."""
    encoder: Any = Field(default=None, exclude=True)
    """A loaded ``Mamba3Encoder`` (set from ``model_path`` when not given)."""
    dtype: str | None = None
    """Weights dtype when loading, e.g. "bfloat16" (default: as saved)."""
    device: str | None = None
    """Device when loading, e.g. "cuda" (default: "cpu")."""
    batch_size: int = DEFAULT_BATCH_SIZE
    """Texts per forward pass when loading."""

    @model_validator(mode="after")
    def _load_model(self) -> Mamba3Embeddings:
        self.encoder = load_encoder(
            self.model_path, self.encoder, self.dtype, self.device, self.batch_size
        )
        return self

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """One embedding per text, in order."""
        return self.encoder.embed_documents(texts)

    def embed_query(self, text: str) -> list[float]:
        """The embedding of a search query."""
        return self.encoder.embed_queries([text])[0]
