"""What the sync and async cores share: settings, argument checks and the plan behind each call.

Each public operation is described once here as a :class:`Call` (which plan to run and how to
shape its result); :class:`PgVectorCore` and :class:`AsyncPgVectorCore` only run calls.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Generic, TypeVar

import numpy as np

from mamba3_integrations.errors import InputError
from mamba3_integrations.stores import operations, schema
from mamba3_integrations.stores.connection import ConnectionOptions
from mamba3_integrations.stores.filters import DocumentIdIn, Filter, IdIn, all_of
from mamba3_integrations.stores.hybrid import reciprocal_rank_fusion
from mamba3_integrations.stores.indexes import VectorIndex
from mamba3_integrations.stores.mmr import maximal_marginal_relevance
from mamba3_integrations.stores.operations import TextMatch
from mamba3_integrations.stores.plans import Plan
from mamba3_integrations.stores.records import Record, ScoredRecord
from mamba3_integrations.stores.schema import CollectionConfig
from mamba3_integrations.stores.vectors import as_vector

T = TypeVar("T")

logger = logging.getLogger("mamba3_integrations.stores")

DEFAULT_BATCH_SIZE = 5000
"""Rows per ingest transaction."""

DEFAULT_BULK_LOAD_MIN_ROWS = 1000
"""Upserts of at least this many rows into an empty collection build the ANN index afterwards."""


def _unchanged(value: Any) -> Any:
    return value


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One operation: run ``make_plan()`` (retried as a whole) and pass its value to ``finish``.

    When ``make_plan`` is ``None`` the operation needs no database round trip and returns
    ``empty``.
    """

    action: str
    make_plan: Callable[[], Plan[Any]] | None
    finish: Callable[[Any], T] = _unchanged
    empty: Any = None


class CoreBase:
    """Settings and call descriptions of :class:`PgVectorCore` and :class:`AsyncPgVectorCore`.

    ``bulk_load_min_rows``: an upsert of at least this many rows into an empty collection drops
    the ANN index, loads, then builds the index in one pass (much faster than growing it row by
    row); ``0`` disables this. Index builds size ``maintenance_work_mem`` to the graph (an HNSW
    build is about twice as fast when the graph fits in memory), up to
    ``index_build_memory_mb``.
    """

    def __init__(
        self,
        config: CollectionConfig,
        options: ConnectionOptions | None = None,
        *,
        bulk_load_min_rows: int = DEFAULT_BULK_LOAD_MIN_ROWS,
        index_build_memory_mb: int = 1024,
    ) -> None:
        if not isinstance(config, CollectionConfig):
            raise InputError(f"Expected a CollectionConfig, got {type(config).__name__}.")
        if bulk_load_min_rows < 0:
            raise InputError("bulk_load_min_rows must be 0 (disabled) or positive.")
        if index_build_memory_mb < 1:
            raise InputError("index_build_memory_mb must be positive.")
        self.config = config
        self.options = options or ConnectionOptions()
        self.bulk_load_min_rows = bulk_load_min_rows
        self.index_build_memory_mb = index_build_memory_mb
        self._lock = threading.Lock()
        self._dsn = ""
        self._ready = False

    def _action(self, verb: str) -> str:
        return f"{verb} on collection {self.config.name!r}"

    def _opening(self) -> Call[None]:
        config = self.config
        return Call(self._action("open"), lambda: schema.ensure_collection(config))

    def _defers_index(self) -> bool:
        return self.config.index is not None and self.bulk_load_min_rows > 0

    def _emptiness(self) -> Call[bool]:
        config = self.config
        return Call(self._action("check emptiness"), lambda: operations.is_empty(config))

    def _index_removal(self) -> Call[None]:
        config = self.config
        return Call(self._action("drop index"), lambda: schema.remove_vector_index(config))

    def _batch_upsert(self, payload: bytes, rows: int) -> Call[int]:
        config = self.config
        return Call(
            self._action(f"upsert of {rows} records"),
            lambda: operations.upsert_batch(config, payload),
        )

    def _index_build(self, index: VectorIndex | None) -> Call[None]:
        """The index (re)build; switches the collection to ``index`` when one is given."""
        if index is not None:
            self.config = replace(self.config, index=index)
        config, memory = self.config, self.index_build_memory_mb
        return Call(self._action("index build"), lambda: schema.build_vector_index(config, memory))

    def _dropping(self) -> Call[None]:
        config = self.config
        return Call(self._action("drop"), lambda: schema.drop_collection(config))

    def _clearing(self) -> Call[None]:
        config = self.config
        return Call(self._action("clear"), lambda: operations.truncate(config))

    def _counting(self, where: Filter | None) -> Call[int]:
        config = self.config
        return Call(self._action("count"), lambda: operations.count(config, where))

    def _getting(
        self,
        ids: Sequence[str] | None,
        where: Filter | None,
        with_embeddings: bool,
        limit: int | None,
    ) -> Call[list[Record]]:
        action = self._action("get")
        if ids is not None and not ids:
            return Call(action, None, empty=[])
        config, selection = self.config, _selection(ids, None, where)
        return Call(
            action,
            lambda: operations.fetch(config, selection, with_embeddings, limit),
            finish=lambda found: _in_requested_order(found, ids),
        )

    def _deleting(
        self,
        ids: Sequence[str] | None,
        document_ids: Sequence[str] | None,
        where: Filter | None,
    ) -> Call[int]:
        action = self._action("delete")
        if ids is None and document_ids is None and where is None:
            raise InputError(
                "Give ids, document_ids or a filter to delete; to delete everything, use clear()."
            )
        if (ids is not None and not ids) or (document_ids is not None and not document_ids):
            return Call(action, None, empty=0)
        config, selection = self.config, _selection(ids, document_ids, where)
        return Call(action, lambda: operations.delete(config, selection))

    def _searching(
        self,
        embedding: Sequence[float] | np.ndarray,
        k: int,
        where: Filter | None,
        with_embeddings: bool,
    ) -> Call[list[ScoredRecord]]:
        query = self._query_vector(embedding)
        action = self._action("vector search")
        if _checked_k(k) == 0:
            return Call(action, None, empty=[])
        config = self.config
        return Call(action, lambda: operations.nearest(config, query, k, where, with_embeddings))

    def _text_searching(
        self, query: str, k: int, where: Filter | None, match: TextMatch
    ) -> Call[list[ScoredRecord]]:
        _check_match(match)
        action = self._action("text search")
        if not isinstance(query, str):
            raise InputError(f"The text query must be a string, got {type(query).__name__}.")
        if _checked_k(k) == 0:
            return Call(action, None, empty=[])
        config = self.config
        return Call(action, lambda: operations.text_search(config, query, k, where, match))

    def _hybrid_searching(
        self,
        embedding: Sequence[float] | np.ndarray,
        query: str,
        k: int,
        where: Filter | None,
        depths: tuple[int | None, int | None],
        weights: tuple[float, float],
        rrf_k: int,
        match: TextMatch,
    ) -> Call[list[ScoredRecord]]:
        vector = self._query_vector(embedding)
        vector_k = _checked_k(k if depths[0] is None else depths[0], "vector_k")
        text_k = _checked_k(k if depths[1] is None else depths[1], "text_k")
        _check_match(match)
        action = self._action("hybrid search")
        if _checked_k(k) == 0:
            return Call(action, None, empty=[])
        config = self.config
        return Call(
            action,
            lambda: operations.hybrid_candidates(
                config, vector, query, vector_k, text_k, where, match
            ),
            finish=lambda rankings: _fuse(*rankings, k, weights, rrf_k),
        )

    def _mmr_searching(
        self,
        embedding: Sequence[float] | np.ndarray,
        k: int,
        fetch_k: int,
        lambda_mult: float,
        where: Filter | None,
    ) -> Call[list[ScoredRecord]]:
        query = self._query_vector(embedding)
        depth = max(_checked_k(k), _checked_k(fetch_k, "fetch_k"))
        if not 0.0 <= lambda_mult <= 1.0:
            raise InputError(f"lambda_mult must be between 0 and 1, got {lambda_mult!r}.")
        action = self._action("MMR search")
        if k == 0:
            return Call(action, None, empty=[])
        config = self.config
        return Call(
            action,
            lambda: operations.nearest(config, query, depth, where, True),
            finish=lambda candidates: _pick_diverse(query, candidates, k, lambda_mult),
        )

    def _query_vector(self, embedding: Sequence[float] | np.ndarray) -> np.ndarray:
        return as_vector(embedding, self.config.dimension, "query embedding")


def _checked_k(k: int, name: str = "k") -> int:
    if isinstance(k, bool) or not isinstance(k, int) or k < 0:
        raise InputError(f"{name} must be a non-negative integer, got {k!r}.")
    return k


def _check_match(match: TextMatch) -> None:
    if match not in ("any", "websearch"):
        raise InputError(f"Unknown text match {match!r}; use 'any' or 'websearch'.")


def _selection(
    ids: Sequence[str] | None, document_ids: Sequence[str] | None, where: Filter | None
) -> Filter | None:
    for name, values in (("ids", ids), ("document_ids", document_ids)):
        if isinstance(values, str):
            raise InputError(f"{name} must be a list of strings, not the string {values!r}.")
    return all_of(
        IdIn(tuple(ids)) if ids is not None else None,
        DocumentIdIn(tuple(document_ids)) if document_ids is not None else None,
        where,
    )


def _in_requested_order(records: list[Record], ids: Sequence[str] | None) -> list[Record]:
    if ids is None:
        return records
    position = {id_: i for i, id_ in reversed(list(enumerate(ids)))}
    return sorted(records, key=lambda record: position[record.id])


def _fuse(
    by_vector: list[ScoredRecord],
    by_text: list[ScoredRecord],
    k: int,
    weights: tuple[float, float],
    rrf_k: int,
) -> list[ScoredRecord]:
    records = {hit.record.id: hit.record for hit in [*by_text, *by_vector]}
    fused = reciprocal_rank_fusion(
        [[hit.record.id for hit in by_vector], [hit.record.id for hit in by_text]],
        weights=weights,
        k=rrf_k,
    )
    return [ScoredRecord(records[id_], score) for id_, score in fused[:k]]


def _pick_diverse(
    query: np.ndarray, candidates: list[ScoredRecord], k: int, lambda_mult: float
) -> list[ScoredRecord]:
    if not candidates:
        return []
    matrix = np.stack([np.asarray(hit.record.embedding) for hit in candidates])
    chosen = maximal_marginal_relevance(query, matrix, k, lambda_mult)
    return [
        ScoredRecord(replace(candidates[i].record, embedding=None), candidates[i].score)
        for i in chosen
    ]
