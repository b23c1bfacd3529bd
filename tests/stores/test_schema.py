"""Collection creation, the registry, versioning and mismatch detection."""

from __future__ import annotations

import psycopg
import pytest
from psycopg import sql

from mamba3_integrations.errors import InputError
from mamba3_integrations.stores import (
    SCHEMA_VERSION,
    CollectionConfig,
    Distance,
    HnswIndex,
    IvfflatIndex,
    PgVectorCore,
    Record,
    SchemaMismatchError,
)


def registry_row(dsn: str, name: str) -> tuple | None:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT dimension, distance, text_search_config, index, schema_version "
            "FROM mamba3_collections WHERE name = %s",
            (name,),
        ).fetchone()


def test_first_use_registers_the_collection(core, postgres):
    core.count()
    assert registry_row(postgres.dsn, core.config.name) == (
        8,
        "cosine",
        "english",
        {"method": "hnsw", "m": 16, "ef_construction": 64},
        SCHEMA_VERSION,
    )


def test_reopening_with_the_same_settings_keeps_the_rows(make_core):
    first = make_core(8)
    first.upsert([Record(id="a", embedding=[1.0] * 8)])
    again = make_core(8)
    assert again.get(["a"])[0].id == "a"


@pytest.mark.parametrize(
    ("settings", "mentioned"),
    [
        ({"dimension": 16}, "dimension is 8, not 16"),
        ({"distance": Distance.L2}, "distance is 'cosine', not 'l2'"),
        ({"index": HnswIndex(m=32)}, "index is"),
        ({"index": IvfflatIndex()}, "'ivfflat'"),
        ({"index": None}, "'exact'"),
        ({"text_search_config": "simple"}, "text_search_config is 'english'"),
    ],
)
def test_reopening_with_other_settings_fails_clearly(make_core, settings, mentioned):
    make_core(8).count()
    dimension = settings.pop("dimension", 8)
    with pytest.raises(SchemaMismatchError) as caught:
        make_core(dimension, **settings).count()
    assert mentioned in str(caught.value)
    assert "pick another collection name" in str(caught.value)


def test_a_newer_layout_version_is_refused(core, postgres):
    core.count()
    with psycopg.connect(postgres.dsn) as conn:
        conn.execute(
            "UPDATE mamba3_collections SET schema_version = %s WHERE name = %s",
            (SCHEMA_VERSION + 1, core.config.name),
        )
    core.close()
    with pytest.raises(SchemaMismatchError, match="Upgrade mamba3-integrations"):
        core.count()


def test_a_foreign_table_with_another_layout_is_refused(make_core, postgres, collection_name):
    with psycopg.connect(postgres.dsn) as conn:
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        conn.execute(
            sql.SQL("CREATE TABLE {} (id bigint PRIMARY KEY, embedding vector(4))").format(
                sql.Identifier(collection_name)
            )
        )
    with pytest.raises(SchemaMismatchError) as caught:
        make_core(8).count()
    message = str(caught.value)
    assert "column id is bigint, expected text" in message
    assert "column embedding is vector(4), expected vector(8)" in message
    assert "column metadata is missing" in message
    assert registry_row(postgres.dsn, collection_name) is None


def test_a_compatible_unregistered_table_is_adopted(make_core, postgres, collection_name):
    make_core(8).upsert([Record(id="kept", embedding=[1.0] * 8)])
    with psycopg.connect(postgres.dsn) as conn:
        conn.execute("DELETE FROM mamba3_collections WHERE name = %s", (collection_name,))
    adopted = make_core(8)
    assert [r.id for r in adopted.get()] == ["kept"]
    assert registry_row(postgres.dsn, collection_name)[0] == 8


def test_a_missing_ann_index_is_recreated_on_open(core, postgres):
    core.upsert([Record(id="a", embedding=[1.0] * 8)])
    index_name = f"{core.config.name}_embedding_idx"
    with psycopg.connect(postgres.dsn) as conn:
        conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(index_name)))
    core.close()
    core.count()
    with psycopg.connect(postgres.dsn) as conn:
        found = conn.execute("SELECT to_regclass(%s)", (index_name,)).fetchone()[0]
    assert found == index_name


def test_concurrent_first_opens_create_one_collection(postgres, collection_name):
    import threading

    cores = [
        PgVectorCore(CollectionConfig(collection_name, 8), postgres.options()) for _ in range(4)
    ]
    errors: list[Exception] = []

    def open_collection(core: PgVectorCore) -> None:
        try:
            core.count()
        except Exception as error:
            errors.append(error)

    threads = [threading.Thread(target=open_collection, args=(core,)) for core in cores]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    cores[0].drop()
    for core in cores:
        core.close()


@pytest.mark.parametrize(
    "settings",
    [
        {"name": "bad-name"},
        {"name": "x; DROP TABLE y"},
        {"name": "1starts_with_digit"},
        {"name": "n" * 49},
        {"dimension": 0},
        {"dimension": 2001},
        {"dimension": True},
        {"distance": "hamming"},
        {"index": "hnsw"},
        {"text_search_config": "english'); --"},
    ],
)
def test_invalid_collection_settings_raise_input_error(settings):
    values = {"name": "ok", "dimension": 8, **settings}
    with pytest.raises(InputError):
        CollectionConfig(**values)


def test_exact_search_allows_large_dimensions():
    assert CollectionConfig("wide", 4096, index=None).dimension == 4096


@pytest.mark.parametrize(
    "build",
    [
        lambda: HnswIndex(m=1),
        lambda: HnswIndex(m=16, ef_construction=20),
        lambda: HnswIndex(ef_search=0),
        lambda: IvfflatIndex(lists=0),
        lambda: IvfflatIndex(lists=10, probes=11),
    ],
)
def test_invalid_index_settings_raise_input_error(build):
    with pytest.raises(InputError):
        build()


def test_distance_names_and_aliases_parse():
    assert Distance.parse("euclidean") is Distance.L2
    assert Distance.parse("MAX_INNER_PRODUCT") is Distance.INNER_PRODUCT
    assert Distance.parse(Distance.COSINE) is Distance.COSINE
    with pytest.raises(InputError, match="Unknown distance"):
        Distance.parse("jaccard")


def test_index_build_memory_follows_the_graph_size():
    from mamba3_integrations.stores.indexes import build_memory_mb

    small = build_memory_mb(HnswIndex(), 384, 1_000, 1024)
    medium = build_memory_mb(HnswIndex(), 384, 100_000, 1024)
    assert small == 64
    assert 250 < medium < 400
    assert build_memory_mb(HnswIndex(), 384, 10_000_000, 1024) == 1024
    assert build_memory_mb(IvfflatIndex(lists=1000), 1536, 10**6, 4096) > 300
    assert build_memory_mb(None, 8, 10, 1024) == 64


def test_drop_on_a_database_without_any_collection_is_a_no_op(postgres):
    from psycopg.conninfo import make_conninfo

    with psycopg.connect(postgres.dsn, autocommit=True) as conn:
        conn.execute("DROP DATABASE IF EXISTS untouched")
        conn.execute("CREATE DATABASE untouched")
    options = postgres.options(dsn=make_conninfo(postgres.dsn, dbname="untouched"))
    core = PgVectorCore(CollectionConfig("never_opened", 4), options)
    core.drop()
    core.close()
    with psycopg.connect(options.dsn) as conn:
        assert conn.execute("SELECT to_regclass('mamba3_collections')").fetchone()[0] is None
