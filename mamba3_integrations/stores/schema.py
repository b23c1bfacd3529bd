"""Collection layout: table DDL, the ``mamba3_collections`` registry, versioning and validation.

Each collection is one table::

    id          text PRIMARY KEY
    document_id text                    -- groups the chunks of one source document
    text        text NOT NULL
    metadata    jsonb NOT NULL
    embedding   vector(<dimension>) NOT NULL
    text_search tsvector GENERATED ALWAYS AS (to_tsvector(<config>, text)) STORED

plus a B-tree index on ``document_id``, a GIN index on ``text_search`` and the ANN index. The
registry table records, per collection, the settings the table was built with and the layout
version, so that reopening a collection with other settings fails loudly instead of corrupting it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from psycopg import sql
from psycopg.types.json import Jsonb

from mamba3_integrations.errors import InputError
from mamba3_integrations.stores.distances import Distance
from mamba3_integrations.stores.errors import SchemaMismatchError
from mamba3_integrations.stores.indexes import (
    HnswIndex,
    VectorIndex,
    build_memory_mb,
    describe_index,
)
from mamba3_integrations.stores.plans import Execute, Plan

SCHEMA_VERSION = 1
"""Layout version written by this library; bump it (with a migration) when the DDL changes."""

REGISTRY_TABLE = "mamba3_collections"
NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,47}")
MAX_INDEXED_DIMENSION = 2000
"""pgvector indexes ``vector`` columns of at most 2,000 dimensions."""

_REGISTRY = sql.Identifier(REGISTRY_TABLE)
_REGISTRY_LOCK = 0x6D616D62613301
"""Advisory lock key serialising collection DDL across processes."""


@dataclass(frozen=True, slots=True)
class CollectionConfig:
    """What a collection is: table name, vector size, distance, ANN index, text-search config.

    ``distance`` accepts a :class:`Distance` or its name (stored as a :class:`Distance`).
    ``index=None`` means exact (sequential) search. ``text_search_config`` is a PostgreSQL text
    search configuration such as ``"english"`` or ``"simple"`` (no stemming, any language).
    """

    name: str
    dimension: int
    distance: Distance | str = Distance.COSINE
    index: VectorIndex | None = field(default_factory=HnswIndex)
    text_search_config: str = "english"

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not NAME_PATTERN.fullmatch(self.name):
            raise InputError(
                f"Invalid collection name {self.name!r}: use 1 to 48 letters, digits or '_', "
                "not starting with a digit."
            )
        dimension = self.dimension
        if isinstance(dimension, bool) or not isinstance(dimension, int) or dimension < 1:
            raise InputError(f"The dimension must be a positive integer, got {dimension!r}.")
        if self.index is not None and dimension > MAX_INDEXED_DIMENSION:
            raise InputError(
                f"pgvector cannot index vectors of dimension {dimension} (at most "
                f"{MAX_INDEXED_DIMENSION}); use index=None for exact search."
            )
        if self.index is not None and not isinstance(self.index, VectorIndex):
            raise InputError(f"index must be HnswIndex, IvfflatIndex or None, got {self.index!r}.")
        if not isinstance(self.text_search_config, str) or not NAME_PATTERN.fullmatch(
            self.text_search_config
        ):
            raise InputError(f"Invalid text search configuration {self.text_search_config!r}.")
        object.__setattr__(self, "distance", Distance.parse(self.distance))

    @property
    def table(self) -> sql.Identifier:
        """The collection's table."""
        return sql.Identifier(self.name)

    def index_name(self, purpose: str) -> sql.Identifier:
        """Name of one of the collection's indexes (``embedding``, ``text_search``...)."""
        return sql.Identifier(f"{self.name}_{purpose}_idx")

    def expected_columns(self) -> dict[str, str]:
        """Column name to ``format_type`` output, as the table must have them."""
        return {
            "id": "text",
            "document_id": "text",
            "text": "text",
            "metadata": "jsonb",
            "embedding": f"vector({self.dimension})",
            "text_search": "tsvector",
        }

    def registry_entry(self) -> dict[str, Any]:
        """The settings recorded in (and compared with) the registry."""
        return {
            "dimension": self.dimension,
            "distance": self.distance.value,
            "text_search_config": self.text_search_config,
            "index": describe_index(self.index),
        }


def ensure_collection(config: CollectionConfig) -> Plan[None]:
    """Create the extension, registry, table and indexes as needed; fail on any mismatch."""
    yield _lock_registry()
    yield Execute(sql.SQL("CREATE EXTENSION IF NOT EXISTS vector"))
    yield Execute(
        sql.SQL(
            """CREATE TABLE IF NOT EXISTS {registry} (
                name text PRIMARY KEY,
                dimension integer NOT NULL,
                distance text NOT NULL,
                text_search_config text NOT NULL,
                index jsonb NOT NULL,
                schema_version integer NOT NULL,
                created_at timestamptz NOT NULL DEFAULT now())"""
        ).format(registry=_REGISTRY)
    )
    registered = yield Execute(
        sql.SQL(
            "SELECT dimension, distance, text_search_config, index, schema_version "
            "FROM {registry} WHERE name = %(name)s"
        ).format(registry=_REGISTRY),
        {"name": config.name},
    )
    columns = yield Execute(
        sql.SQL(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = to_regclass(quote_ident(%(name)s)) AND attnum > 0 "
            "AND NOT attisdropped"
        ),
        {"name": config.name},
    )
    if registered.rows:
        _check_registered(config, registered.rows[0])
    if columns.rows:
        _check_columns(config, dict(columns.rows))
    else:
        yield Execute(_create_table(config))
    yield Execute(
        sql.SQL("CREATE INDEX IF NOT EXISTS {name} ON {table} (document_id)").format(
            name=config.index_name("document_id"), table=config.table
        )
    )
    yield Execute(
        sql.SQL("CREATE INDEX IF NOT EXISTS {name} ON {table} USING gin (text_search)").format(
            name=config.index_name("text_search"), table=config.table
        )
    )
    if config.index is not None:
        yield Execute(create_vector_index(config))
    if not registered.rows:
        entry = config.registry_entry()
        yield Execute(
            sql.SQL(
                "INSERT INTO {registry} (name, dimension, distance, text_search_config, index, "
                "schema_version) VALUES (%(name)s, %(dimension)s, %(distance)s, "
                "%(text_search_config)s, %(index)s, %(version)s)"
            ).format(registry=_REGISTRY),
            {
                **entry,
                "index": Jsonb(entry["index"]),
                "name": config.name,
                "version": SCHEMA_VERSION,
            },
        )


def drop_collection(config: CollectionConfig) -> Plan[None]:
    """Drop the table and forget the collection in the registry (nothing to do if absent)."""
    yield _lock_registry()
    yield Execute(sql.SQL("DROP TABLE IF EXISTS {}").format(config.table))
    registry = yield Execute(sql.SQL("SELECT to_regclass(%(name)s)"), {"name": REGISTRY_TABLE})
    if registry.rows[0][0] is None:
        return
    yield Execute(
        sql.SQL("DELETE FROM {registry} WHERE name = %(name)s").format(registry=_REGISTRY),
        {"name": config.name},
    )


def create_vector_index(config: CollectionConfig) -> sql.Composed:
    """``CREATE INDEX IF NOT EXISTS`` for the collection's ANN index."""
    assert config.index is not None
    options = sql.SQL(", ").join(
        sql.SQL("{} = {}").format(sql.SQL(key), sql.Literal(value))
        for key, value in config.index.build_options().items()
    )
    return sql.SQL(
        "CREATE INDEX IF NOT EXISTS {name} ON {table} USING {method} (embedding {opclass}) "
        "WITH ({options})"
    ).format(
        name=config.index_name("embedding"),
        table=config.table,
        method=sql.SQL(config.index.method),
        opclass=config.distance.operator_class,
        options=options,
    )


def drop_vector_index(config: CollectionConfig) -> sql.Composed:
    """``DROP INDEX IF EXISTS`` for the collection's ANN index."""
    return sql.SQL("DROP INDEX IF EXISTS {}").format(config.index_name("embedding"))


def remove_vector_index(config: CollectionConfig) -> Plan[None]:
    """Drop the ANN index, to rebuild it in one pass after a bulk load."""
    yield _lock_registry()
    yield Execute(drop_vector_index(config))


def build_vector_index(config: CollectionConfig, max_memory_mb: int) -> Plan[None]:
    """(Re)create the ANN index, with ``maintenance_work_mem`` sized for it, and record it."""
    yield _lock_registry()
    rows = yield Execute(sql.SQL("SELECT count(*) FROM {}").format(config.table))
    memory_mb = build_memory_mb(config.index, config.dimension, rows.rows[0][0], max_memory_mb)
    yield Execute(
        sql.SQL("SELECT set_config('maintenance_work_mem', %(memory)s, true)"),
        {"memory": f"{memory_mb}MB"},
    )
    yield Execute(drop_vector_index(config))
    if config.index is not None:
        yield Execute(create_vector_index(config))
    yield Execute(
        sql.SQL("UPDATE {registry} SET index = %(index)s WHERE name = %(name)s").format(
            registry=_REGISTRY
        ),
        {"index": Jsonb(describe_index(config.index)), "name": config.name},
    )


def _lock_registry() -> Execute:
    return Execute(sql.SQL("SELECT pg_advisory_xact_lock(%(key)s)"), {"key": _REGISTRY_LOCK})


def _create_table(config: CollectionConfig) -> sql.Composed:
    return sql.SQL(
        """CREATE TABLE {table} (
            id text PRIMARY KEY,
            document_id text,
            text text NOT NULL DEFAULT '',
            metadata jsonb NOT NULL DEFAULT '{{}}',
            embedding vector({dimension}) NOT NULL,
            text_search tsvector GENERATED ALWAYS AS (to_tsvector({config}::regconfig, text))
                STORED)"""
    ).format(
        table=config.table,
        dimension=sql.Literal(config.dimension),
        config=sql.Literal(config.text_search_config),
    )


def _check_registered(config: CollectionConfig, row: tuple[Any, ...]) -> None:
    dimension, distance, text_search_config, index, version = row
    if version != SCHEMA_VERSION:
        newer = version > SCHEMA_VERSION
        raise SchemaMismatchError(
            f"Collection {config.name!r} has layout version {version}, but this library writes "
            f"version {SCHEMA_VERSION}. "
            + (
                "Upgrade mamba3-integrations to open it."
                if newer
                else "Re-ingest it into a new collection."
            )
        )
    stored = {
        "dimension": dimension,
        "distance": distance,
        "text_search_config": text_search_config,
        "index": index,
    }
    wanted = config.registry_entry()
    differences = [
        f"{key} is {stored[key]!r}, not {value!r}"
        for key, value in wanted.items()
        if stored[key] != value
    ]
    if differences:
        raise SchemaMismatchError(
            f"Collection {config.name!r} already exists with other settings: "
            + "; ".join(differences)
            + ". Open it with its stored settings, pick another collection name, or drop it "
            "(drop() deletes its rows); to change only the index, open it with the stored "
            "index and call rebuild_index(new_index)."
        )


def _check_columns(config: CollectionConfig, columns: dict[str, str]) -> None:
    problems = []
    for name, expected in config.expected_columns().items():
        actual = columns.get(name)
        if actual is None:
            problems.append(f"column {name} is missing")
        elif actual != expected:
            problems.append(f"column {name} is {actual}, expected {expected}")
    if problems:
        raise SchemaMismatchError(
            f"Table {config.name!r} exists but does not have the layout of a collection of "
            f"dimension {config.dimension}: " + "; ".join(problems) + ". Pick another collection "
            "name, or drop or rename that table."
        )
