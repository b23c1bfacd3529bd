"""Plans for reading and writing a collection's rows (see :mod:`plans` for how they run)."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
from psycopg import sql

from mamba3_integrations.errors import InputError
from mamba3_integrations.stores.copy_format import COLUMNS
from mamba3_integrations.stores.filters import Filter, compile_filter
from mamba3_integrations.stores.plans import CopyIn, Execute, Plan
from mamba3_integrations.stores.records import Record, ScoredRecord
from mamba3_integrations.stores.schema import CollectionConfig
from mamba3_integrations.stores.vectors import to_pgvector_text

TextMatch = Literal["any", "websearch"]
"""How a text query matches: ``"any"`` of its words (stemmed, ranked like BM25 systems), or
``"websearch"`` syntax (all words, ``"quoted phrases"``, ``or``, ``-excluded``)."""

_STAGING = sql.Identifier("mamba3_staging")
_ROW_COLUMNS = sql.SQL("id, document_id, text, metadata")


def upsert_batch(config: CollectionConfig, payload: bytes) -> Plan[int]:
    """Insert or replace one encoded batch: COPY into a temporary table, then upsert by id."""
    columns = sql.SQL(", ").join(map(sql.Identifier, COLUMNS))
    yield Execute(
        sql.SQL(
            "CREATE TEMPORARY TABLE {staging} (id text, document_id text, text text, "
            "metadata jsonb, embedding vector({dimension})) ON COMMIT DROP"
        ).format(staging=_STAGING, dimension=sql.Literal(config.dimension))
    )
    yield CopyIn(
        sql.SQL("COPY {staging} ({columns}) FROM STDIN WITH (FORMAT BINARY)").format(
            staging=_STAGING, columns=columns
        ),
        payload,
    )
    written = yield Execute(
        sql.SQL(
            "INSERT INTO {table} ({columns}) SELECT {columns} FROM {staging} ORDER BY id "
            "ON CONFLICT (id) DO UPDATE SET document_id = EXCLUDED.document_id, "
            "text = EXCLUDED.text, metadata = EXCLUDED.metadata, embedding = EXCLUDED.embedding"
        ).format(table=config.table, columns=columns, staging=_STAGING)
    )
    return written.rowcount


def fetch(
    config: CollectionConfig, where: Filter | None, with_embeddings: bool, limit: int | None
) -> Plan[list[Record]]:
    """Rows matching ``where``, ordered by id."""
    condition, params = compile_filter(where)
    result = yield Execute(
        sql.SQL("SELECT {columns} FROM {table} WHERE {condition} ORDER BY id {limit}").format(
            columns=_select_columns(with_embeddings),
            table=config.table,
            condition=condition,
            limit=sql.SQL("LIMIT %(limit)s") if limit is not None else sql.SQL(""),
        ),
        {**params, "limit": limit},
    )
    return [_record(row, with_embeddings) for row in result.rows]


def delete(config: CollectionConfig, where: Filter) -> Plan[int]:
    """Delete rows matching ``where``; returns how many."""
    condition, params = compile_filter(where)
    result = yield Execute(
        sql.SQL("DELETE FROM {table} WHERE {condition}").format(
            table=config.table, condition=condition
        ),
        params,
    )
    return result.rowcount


def count(config: CollectionConfig, where: Filter | None) -> Plan[int]:
    """Number of rows matching ``where``."""
    condition, params = compile_filter(where)
    result = yield Execute(
        sql.SQL("SELECT count(*) FROM {table} WHERE {condition}").format(
            table=config.table, condition=condition
        ),
        params,
    )
    return int(result.rows[0][0])


def is_empty(config: CollectionConfig) -> Plan[bool]:
    """Whether the collection has no rows."""
    result = yield Execute(
        sql.SQL("SELECT NOT EXISTS (SELECT FROM {table})").format(table=config.table)
    )
    return bool(result.rows[0][0])


def truncate(config: CollectionConfig) -> Plan[None]:
    """Delete every row."""
    yield Execute(sql.SQL("TRUNCATE {table}").format(table=config.table))


def nearest(
    config: CollectionConfig,
    query: np.ndarray,
    k: int,
    where: Filter | None,
    with_embeddings: bool = False,
) -> Plan[list[ScoredRecord]]:
    """The ``k`` rows closest to ``query``, scored by similarity, best first.

    Index settings (``ef_search``, ``probes``, iterative scans when filtered) are set with
    ``set_config(..., is_local => true)`` so they last for this transaction only.
    """
    condition, params = compile_filter(where)
    if config.index is not None:
        settings = config.index.search_settings(k, filtered=where is not None)
        yield from _apply_settings(settings)
    result = yield Execute(
        sql.SQL(
            "WITH candidates AS MATERIALIZED ("
            "SELECT {columns}, embedding {operator} %(query)s::vector AS distance "
            "FROM {table} WHERE {condition} ORDER BY distance LIMIT %(k)s) "
            "SELECT * FROM candidates ORDER BY distance, id"
        ).format(
            columns=_select_columns(with_embeddings),
            operator=config.distance.operator,
            table=config.table,
            condition=condition,
        ),
        {**params, "query": to_pgvector_text(query), "k": k},
    )
    similarity = config.distance.similarity
    return [
        ScoredRecord(_record(row, with_embeddings), similarity(float(row[-1])))
        for row in result.rows
    ]


def text_search(
    config: CollectionConfig, query: str, k: int, where: Filter | None, match: TextMatch
) -> Plan[list[ScoredRecord]]:
    """The ``k`` rows whose text best matches ``query``, scored by ``ts_rank``."""
    condition, params = compile_filter(where)
    result = yield Execute(
        sql.SQL(
            "SELECT {columns}, ts_rank(text_search, q.query) AS rank "
            "FROM {table}, (SELECT {tsquery} AS query) AS q "
            "WHERE text_search @@ q.query AND {condition} ORDER BY rank DESC, id LIMIT %(k)s"
        ).format(
            columns=_select_columns(False),
            table=config.table,
            tsquery=_tsquery(match),
            condition=condition,
        ),
        {**params, "text": query, "config": config.text_search_config, "k": k},
    )
    return [ScoredRecord(_record(row, False), float(row[-1])) for row in result.rows]


def hybrid_candidates(
    config: CollectionConfig,
    query_vector: np.ndarray,
    query_text: str,
    vector_k: int,
    text_k: int,
    where: Filter | None,
    match: TextMatch,
) -> Plan[tuple[list[ScoredRecord], list[ScoredRecord]]]:
    """Both rankings of a hybrid search, read in one transaction (one snapshot)."""
    by_vector = yield from nearest(config, query_vector, vector_k, where)
    by_text = yield from text_search(config, query_text, text_k, where, match)
    return by_vector, by_text


def _apply_settings(settings: dict[str, str]) -> Plan[None]:
    calls = sql.SQL(", ").join(
        sql.SQL("set_config({}, {}, true)").format(
            sql.Placeholder(f"name_{i}"), sql.Placeholder(f"value_{i}")
        )
        for i in range(len(settings))
    )
    params: dict[str, Any] = {}
    for i, (name, value) in enumerate(settings.items()):
        params[f"name_{i}"] = name
        params[f"value_{i}"] = value
    yield Execute(sql.SQL("SELECT {}").format(calls), params)


def _tsquery(match: TextMatch) -> sql.Composable:
    if match == "websearch":
        return sql.SQL("websearch_to_tsquery(%(config)s::regconfig, %(text)s)")
    if match == "any":
        # OR of the query's normalised lexemes, each quoted so no character acts as an operator.
        return sql.SQL(
            "(SELECT string_agg(quote_literal(lexeme), ' | ') "
            "FROM unnest(tsvector_to_array(to_tsvector(%(config)s::regconfig, %(text)s))) "
            "AS lexeme)::tsquery"
        )
    raise InputError(f"Unknown text match {match!r}; use 'any' or 'websearch'.")


def _select_columns(with_embeddings: bool) -> sql.Composable:
    if with_embeddings:
        return sql.SQL("{}, embedding::real[]").format(_ROW_COLUMNS)
    return _ROW_COLUMNS


def _record(row: tuple[Any, ...], with_embeddings: bool) -> Record:
    embedding = np.asarray(row[4], dtype=np.float32) if with_embeddings else None
    id_, document_id, text, metadata = row[:4]
    return Record(
        id=id_, document_id=document_id, text=text, metadata=metadata, embedding=embedding
    )
