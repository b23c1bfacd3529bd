"""Framework-free pgvector store: PostgreSQL + pgvector through psycopg 3.

``PgVectorCore`` (sync) and ``AsyncPgVectorCore`` (asyncio) hold one collection described by a
``CollectionConfig``; the LlamaIndex and LangChain vector stores are thin faces over them.
Names are imported lazily: importing one does not import the others.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "AsyncPgVectorCore": "async_store",
    "PgVectorCore": "store",
    "CollectionConfig": "schema",
    "SCHEMA_VERSION": "schema",
    "ConnectionOptions": "connection",
    "RetryPolicy": "connection",
    "Distance": "distances",
    "HnswIndex": "indexes",
    "IvfflatIndex": "indexes",
    "Record": "records",
    "ScoredRecord": "records",
    "And": "filters",
    "Or": "filters",
    "Not": "filters",
    "Condition": "filters",
    "IdIn": "filters",
    "DocumentIdIn": "filters",
    "Op": "filters",
    "parse_filter_dict": "dict_filters",
    "reciprocal_rank_fusion": "hybrid",
    "maximal_marginal_relevance": "mmr",
    "resolve_dsn": "server",
    "start_embedded_server": "server",
    "DSN_ENVIRONMENT_VARIABLE": "server",
    "StoreConnectionError": "errors",
    "SchemaMismatchError": "errors",
    "InvalidFilterError": "errors",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
    return getattr(module, name)
