"""LangChain face of the pgvector store: ``PGVector``, a thin translator over the core."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings
from langchain_core.vectorstores import VectorStore

from mamba3_integrations.errors import InputError
from mamba3_integrations.stores.async_store import AsyncPgVectorCore
from mamba3_integrations.stores.connection import ConnectionOptions
from mamba3_integrations.stores.dict_filters import parse_filter_dict
from mamba3_integrations.stores.distances import Distance
from mamba3_integrations.stores.indexes import HnswIndex, VectorIndex
from mamba3_integrations.stores.records import Record, ScoredRecord
from mamba3_integrations.stores.schema import CollectionConfig
from mamba3_integrations.stores.store import PgVectorCore

_DEFAULT_INDEX = HnswIndex()


class PGVector(VectorStore):
    """LangChain vector store on PostgreSQL + pgvector (see ``docs/pgvector.md``).

    ``connection`` is a libpq connection string; without it, ``MAMBA3_PG_DSN`` is used, and
    without that an embedded server is started. ``embedding_length`` is asked of the embeddings
    (one ``embed_query`` call) when not given. Scores are similarities, higher is better
    (cosine similarity, ``1 / (1 + L2 distance)`` or the inner product); relevance scores equal
    them. ``filter`` arguments take MongoDB-style dicts: ``$eq $ne $lt $lte $gt $gte $in $nin
    $like $ilike $between $exists $and $or $not``.
    """

    def __init__(
        self,
        embeddings: Embeddings,
        *,
        collection_name: str = "langchain",
        connection: str | None = None,
        distance_strategy: Distance | str = Distance.COSINE,
        embedding_length: int | None = None,
        index: VectorIndex | None = _DEFAULT_INDEX,
        text_search_config: str = "english",
        data_dir: str | None = None,
        pool_size: int = 4,
    ) -> None:
        self._embeddings = embeddings
        if embedding_length is None:
            embedding_length = len(embeddings.embed_query("dimension probe"))
        config = CollectionConfig(
            collection_name, embedding_length, distance_strategy, index, text_search_config
        )
        options = ConnectionOptions(dsn=connection, data_dir=data_dir, pool_size=pool_size)
        self._core = PgVectorCore(config, options)
        self._async_core = AsyncPgVectorCore(config, options)

    @property
    def embeddings(self) -> Embeddings:
        """The embeddings model given to the constructor."""
        return self._embeddings

    @property
    def core(self) -> PgVectorCore:
        """The synchronous core, for operations LangChain has no method for."""
        return self._core

    @property
    def async_core(self) -> AsyncPgVectorCore:
        """The asynchronous core."""
        return self._async_core

    def close(self) -> None:
        """Close the synchronous connection pool."""
        self._core.close()

    async def aclose(self) -> None:
        """Close the asynchronous connection pool."""
        await self._async_core.close()

    def delete_collection(self) -> None:
        """Drop the table and its registry entry."""
        self._core.drop()

    def add_embeddings(
        self,
        texts: Sequence[str],
        embeddings: Sequence[Sequence[float]],
        metadatas: Sequence[dict[str, Any]] | None = None,
        ids: Sequence[str | None] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Upsert texts with precomputed embeddings; returns their ids (new ones are UUIDs)."""
        records = _records(texts, embeddings, metadatas, ids)
        self._core.upsert(records)
        return [record.id for record in records]

    async def aadd_embeddings(
        self,
        texts: Sequence[str],
        embeddings: Sequence[Sequence[float]],
        metadatas: Sequence[dict[str, Any]] | None = None,
        ids: Sequence[str | None] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Async :meth:`add_embeddings`."""
        records = _records(texts, embeddings, metadatas, ids)
        await self._async_core.upsert(records)
        return [record.id for record in records]

    def add_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str | None] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Embed and upsert texts; ids that are given replace existing rows."""
        texts = list(texts)
        vectors = self._embeddings.embed_documents(texts) if texts else []
        return self.add_embeddings(texts, vectors, metadatas, ids)

    async def aadd_texts(
        self,
        texts: Iterable[str],
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str | None] | None = None,
        **kwargs: Any,
    ) -> list[str]:
        """Async :meth:`add_texts`."""
        texts = list(texts)
        vectors = await self._embeddings.aembed_documents(texts) if texts else []
        return await self.aadd_embeddings(texts, vectors, metadatas, ids)

    def delete(self, ids: list[str] | None = None, **kwargs: Any) -> bool:
        """Delete by ids (missing ids are ignored) or by ``filter=``; use ``delete_collection``
        or ``core.clear()`` to delete everything."""
        self._core.delete(ids, where=parse_filter_dict(kwargs.get("filter")))
        return True

    async def adelete(self, ids: list[str] | None = None, **kwargs: Any) -> bool:
        """Async :meth:`delete`."""
        await self._async_core.delete(ids, where=parse_filter_dict(kwargs.get("filter")))
        return True

    def get_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        """Documents with these ids, in the order asked; missing ids are skipped."""
        return [_document(record) for record in self._core.get(list(ids))]

    async def aget_by_ids(self, ids: Sequence[str], /) -> list[Document]:
        """Async :meth:`get_by_ids`."""
        return [_document(record) for record in await self._async_core.get(list(ids))]

    def similarity_search(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[Document]:
        """The ``k`` documents most similar to ``query``."""
        return _documents(self.similarity_search_with_score(query, k, filter))

    async def asimilarity_search(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[Document]:
        """Async :meth:`similarity_search`."""
        return _documents(await self.asimilarity_search_with_score(query, k, filter))

    def similarity_search_with_score(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        """``(document, similarity)`` pairs, most similar first."""
        vector = self._embeddings.embed_query(query)
        return self.similarity_search_with_score_by_vector(vector, k, filter)

    async def asimilarity_search_with_score(
        self, query: str, k: int = 4, filter: dict[str, Any] | None = None, **kwargs: Any
    ) -> list[tuple[Document, float]]:
        """Async :meth:`similarity_search_with_score`."""
        vector = await self._embeddings.aembed_query(query)
        return await self.asimilarity_search_with_score_by_vector(vector, k, filter)

    def similarity_search_by_vector(
        self,
        embedding: list[float],
        k: int = 4,
        filter: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        """The ``k`` documents nearest to ``embedding``."""
        return _documents(self.similarity_search_with_score_by_vector(embedding, k, filter))

    async def asimilarity_search_by_vector(
        self,
        embedding: list[float],
        k: int = 4,
        filter: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        """Async :meth:`similarity_search_by_vector`."""
        hits = await self.asimilarity_search_with_score_by_vector(embedding, k, filter)
        return _documents(hits)

    def similarity_search_with_score_by_vector(
        self,
        embedding: list[float],
        k: int = 4,
        filter: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[tuple[Document, float]]:
        """``(document, similarity)`` pairs nearest to ``embedding``."""
        return _scored(self._core.search(embedding, k, where=parse_filter_dict(filter)))

    async def asimilarity_search_with_score_by_vector(
        self,
        embedding: list[float],
        k: int = 4,
        filter: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[tuple[Document, float]]:
        """Async :meth:`similarity_search_with_score_by_vector`."""
        hits = await self._async_core.search(embedding, k, where=parse_filter_dict(filter))
        return _scored(hits)

    def max_marginal_relevance_search(
        self,
        query: str,
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        """``k`` relevant yet mutually different documents among the ``fetch_k`` nearest."""
        vector = self._embeddings.embed_query(query)
        return self.max_marginal_relevance_search_by_vector(vector, k, fetch_k, lambda_mult, filter)

    async def amax_marginal_relevance_search(
        self,
        query: str,
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        """Async :meth:`max_marginal_relevance_search`."""
        vector = await self._embeddings.aembed_query(query)
        return await self.amax_marginal_relevance_search_by_vector(
            vector, k, fetch_k, lambda_mult, filter
        )

    def max_marginal_relevance_search_by_vector(
        self,
        embedding: list[float],
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        """MMR search from an embedding (``lambda_mult`` 1: relevance only, 0: diversity)."""
        hits = self._core.mmr_search(
            embedding, k, fetch_k=fetch_k, lambda_mult=lambda_mult, where=parse_filter_dict(filter)
        )
        return [_document(hit.record) for hit in hits]

    async def amax_marginal_relevance_search_by_vector(
        self,
        embedding: list[float],
        k: int = 4,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        filter: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> list[Document]:
        """Async :meth:`max_marginal_relevance_search_by_vector`."""
        hits = await self._async_core.mmr_search(
            embedding, k, fetch_k=fetch_k, lambda_mult=lambda_mult, where=parse_filter_dict(filter)
        )
        return [_document(hit.record) for hit in hits]

    def _select_relevance_score_fn(self) -> Callable[[float], float]:
        """Scores already are similarities, so relevance is the score itself."""
        return _identity

    @classmethod
    def from_texts(
        cls,
        texts: list[str],
        embedding: Embeddings,
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> PGVector:
        """A store built with ``kwargs`` (``collection_name``, ``connection``...) and ``texts``."""
        store = cls(embedding, **kwargs)
        store.add_texts(texts, metadatas, ids=ids)
        return store

    @classmethod
    async def afrom_texts(
        cls,
        texts: list[str],
        embedding: Embeddings,
        metadatas: list[dict[str, Any]] | None = None,
        *,
        ids: list[str] | None = None,
        **kwargs: Any,
    ) -> PGVector:
        """Async :meth:`from_texts`."""
        store = cls(embedding, **kwargs)
        await store.aadd_texts(texts, metadatas, ids=ids)
        return store


def _identity(score: float) -> float:
    return score


def _records(
    texts: Sequence[str],
    embeddings: Sequence[Sequence[float]],
    metadatas: Sequence[dict[str, Any]] | None,
    ids: Sequence[str | None] | None,
) -> list[Record]:
    count = len(texts)
    for name, values in (("embeddings", embeddings), ("metadatas", metadatas), ("ids", ids)):
        if values is not None and len(values) != count:
            raise InputError(f"Got {len(values)} {name} for {count} texts.")
    metadatas = metadatas or [{}] * count
    ids = ids or [None] * count
    return [
        Record(id=id_ or str(uuid.uuid4()), embedding=vector, text=text, metadata=metadata or {})
        for text, vector, metadata, id_ in zip(texts, embeddings, metadatas, ids, strict=True)
    ]


def _document(record: Record) -> Document:
    return Document(id=record.id, page_content=record.text, metadata=dict(record.metadata))


def _documents(pairs: list[tuple[Document, float]]) -> list[Document]:
    return [document for document, _ in pairs]


def _scored(hits: list[ScoredRecord]) -> list[tuple[Document, float]]:
    return [(_document(hit.record), hit.score) for hit in hits]
