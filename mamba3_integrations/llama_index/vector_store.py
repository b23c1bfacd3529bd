"""LlamaIndex face of the pgvector store: ``PGVectorStore``, a thin translator over the core."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from llama_index.core.bridge.pydantic import Field, PrivateAttr
from llama_index.core.schema import BaseNode, MetadataMode, TextNode
from llama_index.core.vector_stores.types import (
    BasePydanticVectorStore,
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryMode,
    VectorStoreQueryResult,
)
from llama_index.core.vector_stores.utils import metadata_dict_to_node, node_to_metadata_dict

from mamba3_integrations.errors import InputError
from mamba3_integrations.stores.async_store import AsyncPgVectorCore
from mamba3_integrations.stores.base import CoreBase
from mamba3_integrations.stores.connection import ConnectionOptions
from mamba3_integrations.stores.errors import InvalidFilterError
from mamba3_integrations.stores.filters import (
    And,
    Condition,
    DocumentIdIn,
    Filter,
    IdIn,
    Not,
    Op,
    Or,
    all_of,
)
from mamba3_integrations.stores.indexes import HnswIndex, VectorIndex
from mamba3_integrations.stores.operations import TextMatch
from mamba3_integrations.stores.records import Record, ScoredRecord
from mamba3_integrations.stores.schema import CollectionConfig
from mamba3_integrations.stores.store import PgVectorCore

_OPERATORS = {
    FilterOperator.EQ: Op.EQ,
    FilterOperator.NE: Op.NE,
    FilterOperator.GT: Op.GT,
    FilterOperator.GTE: Op.GTE,
    FilterOperator.LT: Op.LT,
    FilterOperator.LTE: Op.LTE,
    FilterOperator.IN: Op.IN,
    FilterOperator.NIN: Op.NIN,
    FilterOperator.ANY: Op.CONTAINS_ANY,
    FilterOperator.ALL: Op.CONTAINS_ALL,
    FilterOperator.CONTAINS: Op.CONTAINS,
    FilterOperator.TEXT_MATCH: Op.LIKE,
    FilterOperator.TEXT_MATCH_INSENSITIVE: Op.ILIKE,
    FilterOperator.IS_EMPTY: Op.IS_EMPTY,
}
_TEXT_MODES = (VectorStoreQueryMode.TEXT_SEARCH, VectorStoreQueryMode.SPARSE)
_SUPPORTED_MODES = (
    VectorStoreQueryMode.DEFAULT,
    VectorStoreQueryMode.HYBRID,
    VectorStoreQueryMode.MMR,
    *_TEXT_MODES,
)


class PGVectorStore(BasePydanticVectorStore):
    """LlamaIndex vector store on PostgreSQL + pgvector (see ``docs/pgvector.md``).

    Stores each node's text, metadata and serialised node, so ``stores_text`` is true and nodes
    round-trip. Query modes: ``DEFAULT`` (vector), ``TEXT_SEARCH``/``SPARSE`` (full text),
    ``HYBRID`` (reciprocal-rank fusion; ``alpha`` weighs vector vs text) and ``MMR``
    (``mmr_threshold``, on the query or as a keyword, is the relevance/diversity trade-off;
    ``mmr_prefetch_k`` or ``mmr_prefetch_factor`` set how many candidates it looks at).
    Similarities are higher-is-better.

    With no ``connection_string`` and no ``MAMBA3_PG_DSN``, an embedded server is started.
    """

    stores_text: bool = True
    flat_metadata: bool = False
    table_name: str = Field(description="Collection (table) name.")
    embed_dim: int = Field(description="Dimension of the embeddings.")
    connection_string: str | None = Field(default=None, exclude=True, repr=False)
    distance: str = Field(default="cosine", description="cosine, l2 or inner_product.")
    index: VectorIndex | None = Field(default_factory=HnswIndex)
    text_search_config: str = "english"
    text_match: TextMatch = "any"
    data_dir: str | None = None
    pool_size: int = 4

    _core: PgVectorCore = PrivateAttr()
    _async_core: AsyncPgVectorCore = PrivateAttr()

    def __init__(self, **data: Any) -> None:
        super().__init__(**data)
        config = CollectionConfig(
            self.table_name,
            self.embed_dim,
            self.distance,
            self.index,
            self.text_search_config,
        )
        options = ConnectionOptions(
            dsn=self.connection_string, data_dir=self.data_dir, pool_size=self.pool_size
        )
        self._core = PgVectorCore(config, options)
        self._async_core = AsyncPgVectorCore(config, options)

    @classmethod
    def class_name(cls) -> str:
        return "Mamba3PGVectorStore"

    @property
    def client(self) -> PgVectorCore:
        """The synchronous core, for operations LlamaIndex has no method for."""
        return self._core

    @property
    def async_client(self) -> AsyncPgVectorCore:
        """The asynchronous core."""
        return self._async_core

    def close(self) -> None:
        """Close the synchronous connection pool."""
        self._core.close()

    async def aclose(self) -> None:
        """Close the asynchronous connection pool."""
        await self._async_core.close()

    def add(self, nodes: Sequence[BaseNode], **add_kwargs: Any) -> list[str]:
        """Upsert nodes (which must carry embeddings); returns their ids."""
        self._core.upsert(map(self._to_record, nodes))
        return [node.node_id for node in nodes]

    async def async_add(self, nodes: Sequence[BaseNode], **kwargs: Any) -> list[str]:
        """Async :meth:`add`."""
        await self._async_core.upsert(map(self._to_record, nodes))
        return [node.node_id for node in nodes]

    def delete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        """Delete every node of the source document ``ref_doc_id``."""
        self._core.delete(document_ids=[ref_doc_id])

    async def adelete(self, ref_doc_id: str, **delete_kwargs: Any) -> None:
        """Async :meth:`delete`."""
        await self._async_core.delete(document_ids=[ref_doc_id])

    def delete_nodes(
        self,
        node_ids: list[str] | None = None,
        filters: MetadataFilters | None = None,
        **delete_kwargs: Any,
    ) -> None:
        """Delete nodes by id and/or filter (both must match when both are given)."""
        self._core.delete(node_ids, where=to_filter_tree(filters))

    async def adelete_nodes(
        self,
        node_ids: list[str] | None = None,
        filters: MetadataFilters | None = None,
        **delete_kwargs: Any,
    ) -> None:
        """Async :meth:`delete_nodes`."""
        await self._async_core.delete(node_ids, where=to_filter_tree(filters))

    def get_nodes(
        self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None
    ) -> list[BaseNode]:
        """Nodes by id and/or filter; every node when both are ``None``."""
        records = self._core.get(node_ids, where=to_filter_tree(filters))
        return [_to_node(record) for record in records]

    async def aget_nodes(
        self, node_ids: list[str] | None = None, filters: MetadataFilters | None = None
    ) -> list[BaseNode]:
        """Async :meth:`get_nodes`."""
        records = await self._async_core.get(node_ids, where=to_filter_tree(filters))
        return [_to_node(record) for record in records]

    def clear(self) -> None:
        """Delete every node, keeping the table."""
        self._core.clear()

    async def aclear(self) -> None:
        """Async :meth:`clear`."""
        await self._async_core.clear()

    def query(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        """Run a vector, text, hybrid or MMR query (see the class docstring)."""
        return _to_result(self._core_call(self._core, query, kwargs)())

    async def aquery(self, query: VectorStoreQuery, **kwargs: Any) -> VectorStoreQueryResult:
        """Async :meth:`query`."""
        return _to_result(await self._core_call(self._async_core, query, kwargs)())

    def _core_call(
        self, core: CoreBase, query: VectorStoreQuery, kwargs: dict[str, Any]
    ) -> Callable[[], Any]:
        """The call of ``core`` (sync or async) that answers ``query``."""
        mode = VectorStoreQueryMode(query.mode)
        if mode not in _SUPPORTED_MODES:
            supported = ", ".join(m.name for m in _SUPPORTED_MODES)
            raise InputError(f"Query mode {mode.name} is not supported; use one of {supported}.")
        where = all_of(
            IdIn(tuple(query.node_ids)) if query.node_ids else None,
            DocumentIdIn(tuple(query.doc_ids)) if query.doc_ids else None,
            to_filter_tree(query.filters),
        )
        k = query.similarity_top_k
        text_k = query.sparse_top_k or k
        if mode in _TEXT_MODES:
            return partial(
                core.text_search, _query_text(query), text_k, where=where, match=self.text_match
            )
        embedding = _query_embedding(query)
        if mode is VectorStoreQueryMode.HYBRID:
            alpha = 0.5 if query.alpha is None else query.alpha
            return partial(
                core.hybrid_search,
                embedding,
                _query_text(query),
                query.hybrid_top_k or k,
                where=where,
                vector_k=k,
                text_k=text_k,
                vector_weight=alpha,
                text_weight=1.0 - alpha,
                match=self.text_match,
            )
        if mode is VectorStoreQueryMode.MMR:
            fetch_k = kwargs.get("mmr_prefetch_k") or k * kwargs.get("mmr_prefetch_factor", 4)
            threshold = kwargs.get("mmr_threshold", query.mmr_threshold)
            lambda_mult = 0.5 if threshold is None else threshold
            return partial(
                core.mmr_search, embedding, k, fetch_k=fetch_k, lambda_mult=lambda_mult, where=where
            )
        return partial(core.search, embedding, k, where=where)

    @staticmethod
    def _to_record(node: BaseNode) -> Record:
        metadata = node_to_metadata_dict(node, remove_text=True, flat_metadata=False)
        return Record(
            id=node.node_id,
            embedding=node.embedding,
            text=node.get_content(metadata_mode=MetadataMode.NONE),
            metadata=metadata,
            document_id=node.ref_doc_id,
        )


def to_filter_tree(filters: MetadataFilters | None) -> Filter | None:
    """Translate LlamaIndex metadata filters into the core filter tree.

    ``NOT`` means none of the listed filters holds, as in LlamaIndex's in-memory store;
    ``TEXT_MATCH`` is a literal substring match (``TEXT_MATCH_INSENSITIVE`` ignoring case).
    """
    if filters is None or not filters.filters:
        return None
    parts = tuple(_translate(item) for item in filters.filters)
    condition = FilterCondition(filters.condition or FilterCondition.AND)
    if condition is FilterCondition.AND:
        return And(parts)
    if condition is FilterCondition.OR:
        return Or(parts)
    if condition is FilterCondition.NOT:
        return Not(Or(parts))
    raise InvalidFilterError(f"Unsupported filter condition {condition!r}.")


def _translate(item: MetadataFilter | MetadataFilters) -> Filter:
    if isinstance(item, MetadataFilters):
        nested = to_filter_tree(item)
        return nested if nested is not None else And(())
    operator = FilterOperator(item.operator)
    if operator not in _OPERATORS:
        raise InvalidFilterError(f"Unsupported filter operator {operator!r}.")
    value = item.value
    if operator in (FilterOperator.TEXT_MATCH, FilterOperator.TEXT_MATCH_INSENSITIVE):
        if not isinstance(value, str):
            raise InvalidFilterError(f"{operator.name} on {item.key!r} needs a string value.")
        value = f"%{_escape_like(value)}%"
    return Condition(item.key, _OPERATORS[operator], value)


def _escape_like(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _query_text(query: VectorStoreQuery) -> str:
    if not query.query_str:
        raise InputError(f"Query mode {VectorStoreQueryMode(query.mode).name} needs query_str.")
    return query.query_str


def _query_embedding(query: VectorStoreQuery) -> list[float]:
    if query.query_embedding is None:
        raise InputError(
            f"Query mode {VectorStoreQueryMode(query.mode).name} needs query_embedding."
        )
    return query.query_embedding


def _to_node(record: Record) -> BaseNode:
    """Rebuild the stored node; rows written by other tools become plain text nodes."""
    if "_node_content" in record.metadata:
        return metadata_dict_to_node(dict(record.metadata), text=record.text)
    return TextNode(id_=record.id, text=record.text, metadata=dict(record.metadata))


def _to_result(hits: list[ScoredRecord]) -> VectorStoreQueryResult:
    return VectorStoreQueryResult(
        nodes=[_to_node(hit.record) for hit in hits],
        similarities=[hit.score for hit in hits],
        ids=[hit.record.id for hit in hits],
    )
