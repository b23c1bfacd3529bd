"""The synchronous pgvector collection, on a ``psycopg_pool.ConnectionPool``."""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterable, Sequence
from typing import TypeVar

import numpy as np
from psycopg_pool import ConnectionPool, PoolTimeout

from mamba3_integrations.stores.base import DEFAULT_BATCH_SIZE, Call, CoreBase, logger
from mamba3_integrations.stores.connection import (
    as_store_error,
    connect_probe,
    gave_up,
    is_transient,
    new_pool,
    unreachable,
)
from mamba3_integrations.stores.filters import Filter
from mamba3_integrations.stores.hybrid import DEFAULT_RRF_K
from mamba3_integrations.stores.indexes import VectorIndex
from mamba3_integrations.stores.ingest import (
    PreparedBatch,
    prefetched,
    prepare_batches,
    take_rows,
)
from mamba3_integrations.stores.operations import TextMatch
from mamba3_integrations.stores.plans import run_plan
from mamba3_integrations.stores.records import Record, ScoredRecord
from mamba3_integrations.stores.server import resolve_dsn

T = TypeVar("T")


class PgVectorCore(CoreBase):
    """One collection in PostgreSQL + pgvector, used from synchronous code.

    ``PgVectorCore(CollectionConfig("docs", 384), ConnectionOptions(dsn=...))``. Nothing touches
    the database until the first call, which finds the server (see :mod:`server`), opens the
    pool and creates or validates the collection. Safe to share between threads; close it with
    :meth:`close` or a ``with`` block.
    """

    _pool: ConnectionPool | None = None

    def __enter__(self) -> PgVectorCore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the pool; a later call opens a new one."""
        with self._lock:
            if self._pool is not None:
                self._pool.close()
            self._pool = None
            self._ready = False

    def upsert(self, records: Iterable[Record], *, batch_size: int = DEFAULT_BATCH_SIZE) -> int:
        """Insert or replace records by id, ``batch_size`` per transaction; returns rows written.

        Each batch commits entirely or not at all and is retried as a whole if the connection
        drops. An empty iterable does nothing.
        """
        self._ensure_ready()
        batches = prepare_batches(records, self.config.dimension, batch_size)
        head: list[PreparedBatch] = []
        defer = False
        if self._defers_index():
            head, rows, batches = take_rows(batches, self.bulk_load_min_rows)
            defer = rows >= self.bulk_load_min_rows and self._call(self._emptiness())
        if defer:
            self._call(self._index_removal())
        written = 0
        try:
            for batch in prefetched(itertools.chain(head, batches)):
                written += self._call(self._batch_upsert(batch.payload, len(batch.ids)))
        except BaseException:
            if defer:
                self._restore_index()
            raise
        if defer:
            self.rebuild_index()
        return written

    def get(
        self,
        ids: Sequence[str] | None = None,
        *,
        where: Filter | None = None,
        with_embeddings: bool = False,
        limit: int | None = None,
    ) -> list[Record]:
        """Records by id (in the order asked, missing ids skipped) and/or matching ``where``;
        every record, ordered by id, when both are ``None``."""
        return self._call(self._getting(ids, where, with_embeddings, limit))

    def delete(
        self,
        ids: Sequence[str] | None = None,
        *,
        document_ids: Sequence[str] | None = None,
        where: Filter | None = None,
    ) -> int:
        """Delete the rows matching all the given criteria; returns how many were deleted."""
        return self._call(self._deleting(ids, document_ids, where))

    def count(self, where: Filter | None = None) -> int:
        """Number of rows, or of rows matching ``where``."""
        return self._call(self._counting(where))

    def search(
        self,
        embedding: Sequence[float] | np.ndarray,
        k: int = 4,
        *,
        where: Filter | None = None,
        with_embeddings: bool = False,
    ) -> list[ScoredRecord]:
        """The ``k`` nearest records to ``embedding``, best first, scored by similarity."""
        return self._call(self._searching(embedding, k, where, with_embeddings))

    def text_search(
        self, query: str, k: int = 4, *, where: Filter | None = None, match: TextMatch = "any"
    ) -> list[ScoredRecord]:
        """The ``k`` records whose text best matches ``query`` (full text), scored by ts_rank."""
        return self._call(self._text_searching(query, k, where, match))

    def hybrid_search(
        self,
        embedding: Sequence[float] | np.ndarray,
        query: str,
        k: int = 4,
        *,
        where: Filter | None = None,
        vector_k: int | None = None,
        text_k: int | None = None,
        vector_weight: float = 1.0,
        text_weight: float = 1.0,
        rrf_k: int = DEFAULT_RRF_K,
        match: TextMatch = "any",
    ) -> list[ScoredRecord]:
        """Vector and full-text rankings (``vector_k`` and ``text_k`` deep, default ``k``) fused
        by weighted reciprocal-rank fusion; scores are fused RRF scores."""
        return self._call(
            self._hybrid_searching(
                embedding,
                query,
                k,
                where,
                (vector_k, text_k),
                (vector_weight, text_weight),
                rrf_k,
                match,
            )
        )

    def mmr_search(
        self,
        embedding: Sequence[float] | np.ndarray,
        k: int = 4,
        *,
        fetch_k: int = 20,
        lambda_mult: float = 0.5,
        where: Filter | None = None,
    ) -> list[ScoredRecord]:
        """Maximal-marginal-relevance pick of ``k`` among the ``fetch_k`` nearest records
        (``lambda_mult`` 1: relevance only, 0: diversity only); scores are similarities."""
        return self._call(self._mmr_searching(embedding, k, fetch_k, lambda_mult, where))

    def clear(self) -> None:
        """Delete every row, keeping the collection."""
        self._call(self._clearing())

    def drop(self) -> None:
        """Drop the table and its registry entry; the next call recreates an empty collection."""
        self._execute(self._dropping())
        self._ready = False

    def rebuild_index(self, index: VectorIndex | None = None) -> None:
        """Rebuild the ANN index in one pass, switching to ``index`` when given.

        Run it after bulk-loading into an IVFFlat collection so that its lists fit the data.
        """
        self._ensure_ready()
        self._execute(self._index_build(index))

    def _restore_index(self) -> None:
        try:
            self.rebuild_index()
        except Exception as error:
            logger.warning(
                "Could not rebuild the index of %r after a failed load (%s); it is rebuilt the "
                "next time the collection is opened, or call rebuild_index().",
                self.config.name,
                error,
            )

    def _ensure_ready(self) -> None:
        if not self._ready:
            self._execute(self._opening())
            self._ready = True

    def _call(self, call: Call[T]) -> T:
        if call.make_plan is not None:
            self._ensure_ready()
        return self._execute(call)

    def _execute(self, call: Call[T]) -> T:
        if call.make_plan is None:
            return call.empty
        pool = self._open_pool()
        delays = self.options.retry.delays()
        attempt = 0
        while True:
            attempt += 1
            try:
                with pool.connection() as conn:
                    return call.finish(run_plan(conn, call.make_plan()))
            except Exception as error:
                if not is_transient(error):
                    translated = as_store_error(error, call.action)
                    if translated is error:
                        raise
                    raise translated from error
                delay = next(delays, None)
                if delay is None:
                    raise gave_up(error, call.action, self._dsn, attempt) from error
                logger.warning("%s: %s; retrying in %.2fs", call.action, error, delay)
                time.sleep(delay)
                pool.check()

    def _open_pool(self) -> ConnectionPool:
        with self._lock:
            if self._pool is None:
                dsn = resolve_dsn(self.options.dsn, self.options.data_dir)
                connect_probe(dsn, self.options)
                pool = new_pool(dsn, self.options)
                try:
                    pool.open(wait=True, timeout=self.options.connect_timeout)
                except PoolTimeout as error:
                    pool.close()
                    raise unreachable(error, dsn) from error
                self._pool, self._dsn = pool, dsn
            return self._pool
