"""One embedded PostgreSQL + pgvector server for the whole session, and per-test collections."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from mamba3_integrations.stores import (
    CollectionConfig,
    PgVectorCore,
)
from mamba3_integrations.stores.base import DEFAULT_BULK_LOAD_MIN_ROWS
from tests.postgres_server import EmbeddedPostgres


@pytest.fixture
def collection_name() -> str:
    """A table name no other test uses."""
    return f"t_{uuid.uuid4().hex[:16]}"


@pytest.fixture
def make_core(postgres: EmbeddedPostgres, collection_name: str) -> Iterator[object]:
    """Factory of sync cores on this test's collection; drops the collection afterwards."""
    cores: list[PgVectorCore] = []

    def make(
        dimension: int = 8,
        *,
        name: str | None = None,
        bulk_load_min_rows: int = DEFAULT_BULK_LOAD_MIN_ROWS,
        **config: object,
    ) -> PgVectorCore:
        settings = CollectionConfig(name or collection_name, dimension, **config)
        core = PgVectorCore(settings, postgres.options(), bulk_load_min_rows=bulk_load_min_rows)
        cores.append(core)
        return core

    yield make
    for core in cores:
        core.drop()
        core.close()


@pytest.fixture
def core(make_core) -> PgVectorCore:
    """A sync core on an empty 8-dimensional cosine collection with an HNSW index."""
    return make_core()
