"""The sync core against a real PostgreSQL: ingest, reads, deletes, searches, indexes."""

from __future__ import annotations

import numpy as np
import psycopg
import pytest

from mamba3_integrations.errors import InputError
from mamba3_integrations.stores import (
    Condition,
    Distance,
    HnswIndex,
    IvfflatIndex,
    Op,
    Record,
)
from tests.stores.embeddings import hash_embed


def random_records(count: int, dimension: int = 8, seed: int = 0, prefix: str = "r") -> list:
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(count, dimension)).astype(np.float32)
    return [
        Record(
            id=f"{prefix}{i}",
            embedding=vectors[i],
            text=f"row {i}",
            metadata={"i": i, "parity": "even" if i % 2 == 0 else "odd"},
            document_id=f"doc{i % 5}",
        )
        for i in range(count)
    ]


def brute_force(records: list, query: np.ndarray, k: int, distance: Distance) -> list[str]:
    matrix = np.stack([r.embedding for r in records]).astype(np.float64)
    if distance is Distance.COSINE:
        unit = matrix / np.linalg.norm(matrix, axis=1, keepdims=True)
        order = np.argsort(-(unit @ (query / np.linalg.norm(query))))
    elif distance is Distance.L2:
        order = np.argsort(np.linalg.norm(matrix - query, axis=1))
    else:
        order = np.argsort(-(matrix @ query))
    return [records[i].id for i in order[:k]]


def table_columns(dsn: str, table: str) -> dict[str, str]:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute(
            "SELECT attname, format_type(atttypid, atttypmod) FROM pg_attribute "
            "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
            (table,),
        ).fetchall()
    return dict(rows)


def test_upsert_then_get_round_trips_every_field(core):
    records = random_records(20)
    assert core.upsert(records) == 20
    got = core.get(["r3", "r0", "missing", "r7"], with_embeddings=True)
    assert [r.id for r in got] == ["r3", "r0", "r7"]
    assert got[0].text == "row 3"
    assert got[0].metadata == {"i": 3, "parity": "odd"}
    assert got[0].document_id == "doc3"
    np.testing.assert_array_equal(got[0].embedding, records[3].embedding)
    assert core.count() == 20


def test_table_layout_is_the_documented_one(core, postgres):
    core.count()
    assert table_columns(postgres.dsn, core.config.name) == {
        "id": "text",
        "document_id": "text",
        "text": "text",
        "metadata": "jsonb",
        "embedding": "vector(8)",
        "text_search": "tsvector",
    }


def test_upsert_replaces_rows_with_the_same_id(core):
    core.upsert(random_records(10))
    replacement = Record(id="r4", embedding=[1.0] * 8, text="new", metadata={"v": 2})
    assert core.upsert([replacement]) == 1
    assert core.count() == 10
    (row,) = core.get(["r4"], with_embeddings=True)
    assert (row.text, row.metadata, row.document_id) == ("new", {"v": 2}, None)
    np.testing.assert_array_equal(row.embedding, np.ones(8, dtype=np.float32))


def test_repeated_id_within_one_batch_keeps_the_last_record(core):
    first = Record(id="same", embedding=[0.0] * 7 + [1.0], text="first")
    last = Record(id="same", embedding=[1.0] + [0.0] * 7, text="last")
    assert core.upsert([first, last]) == 1
    assert [r.text for r in core.get(["same"])] == ["last"]


def test_batches_split_a_large_upsert(core):
    assert core.upsert(random_records(1050), batch_size=100) == 1050
    assert core.count() == 1050


def test_empty_upsert_and_empty_id_lists_are_no_ops(core):
    assert core.upsert([]) == 0
    assert core.upsert(iter(())) == 0
    core.upsert(random_records(3))
    assert core.get([]) == []
    assert core.delete([]) == 0
    assert core.delete(document_ids=[]) == 0
    assert core.count() == 3


@pytest.mark.parametrize(
    "embedding",
    [[1.0] * 7, [1.0] * 9, [[1.0] * 8], None, ["a"] * 8, [float("nan")] + [0.0] * 7],
)
def test_bad_embeddings_are_rejected_before_any_write(core, embedding):
    good = Record(id="good", embedding=[1.0] * 8)
    with pytest.raises(InputError) as caught:
        core.upsert([good, Record(id="bad", embedding=embedding)])
    assert "'bad'" in str(caught.value)
    assert core.count() == 0


def test_wrong_dimension_message_says_what_to_do(core):
    with pytest.raises(InputError, match="has 3 values but the collection stores vectors of "):
        core.search([1.0, 2.0, 3.0])


@pytest.mark.parametrize(
    "record",
    [
        Record(id="", embedding=[1.0] * 8),
        Record(id=None, embedding=[1.0] * 8),  # type: ignore[arg-type]
        Record(id="x", embedding=[1.0] * 8, text="nul\x00byte"),
        Record(id="x", embedding=[1.0] * 8, metadata={"k": "nul\x00"}),
        Record(id="x", embedding=[1.0] * 8, metadata={"k": object()}),
        Record(id="x", embedding=[1.0] * 8, metadata={"k": float("inf")}),
        Record(id="x", embedding=[1.0] * 8, metadata=["not", "a", "dict"]),  # type: ignore[arg-type]
    ],
)
def test_invalid_records_raise_input_error(core, record):
    with pytest.raises(InputError):
        core.upsert([record])


def test_unicode_and_a_megabyte_of_metadata_round_trip(core):
    text = "Zürich 東京 🚀 naïve café — ∑ Ω"
    big = {"blob": "ß" * 500_000, "nested": {"emoji": "🙂", "list": list(range(1000))}}
    core.upsert([Record(id="ünï-🚀", embedding=[0.5] * 8, text=text, metadata=big)])
    (row,) = core.get(["ünï-🚀"])
    assert row.text == text
    assert row.metadata == big
    assert len(row.metadata["blob"].encode()) == 1_000_000
    hits = core.text_search("Zürich", 1, match="websearch")
    assert [hit.record.id for hit in hits] == ["ünï-🚀"]


def test_delete_by_ids_document_ids_and_filter(core):
    core.upsert(random_records(20))
    assert core.delete(["r0", "r1", "nope"]) == 2
    assert core.delete(document_ids=["doc2"]) == 4
    assert core.delete(where=Condition("parity", Op.EQ, "odd")) == 7
    remaining = sorted(r.id for r in core.get())
    assert remaining == ["r10", "r14", "r16", "r18", "r4", "r6", "r8"]
    assert core.delete(["r4"], where=Condition("parity", Op.EQ, "odd")) == 0


def test_delete_without_criteria_refuses_instead_of_emptying(core):
    core.upsert(random_records(3))
    with pytest.raises(InputError, match="clear"):
        core.delete()
    with pytest.raises(InputError, match="list of strings"):
        core.delete("r1")
    assert core.count() == 3


def test_clear_keeps_the_collection_and_drop_removes_it(core, postgres):
    core.upsert(random_records(5))
    core.clear()
    assert core.count() == 0
    core.upsert(random_records(2))
    core.drop()
    with psycopg.connect(postgres.dsn) as conn:
        exists = conn.execute("SELECT to_regclass(%s)", (core.config.name,)).fetchone()[0]
        registered = conn.execute(
            "SELECT count(*) FROM mamba3_collections WHERE name = %s", (core.config.name,)
        ).fetchone()[0]
    assert exists is None and registered == 0
    assert core.count() == 0


def test_get_with_filter_and_limit(core):
    core.upsert(random_records(10))
    evens = core.get(where=Condition("parity", Op.EQ, "even"), limit=3)
    assert [r.id for r in evens] == ["r0", "r2", "r4"]


@pytest.mark.parametrize("distance", list(Distance))
def test_exact_search_matches_numpy_for_every_distance(make_core, distance):
    core = make_core(16, distance=distance, index=None)
    records = random_records(300, dimension=16, seed=1)
    core.upsert(records)
    query = np.random.default_rng(2).normal(size=16)
    hits = core.search(query, 10)
    assert [hit.record.id for hit in hits] == brute_force(records, query, 10, distance)
    scores = [hit.score for hit in hits]
    assert scores == sorted(scores, reverse=True)
    best = np.asarray(records[int(hits[0].record.id[1:])].embedding, dtype=np.float64)
    if distance is Distance.COSINE:
        expected = best @ query / (np.linalg.norm(best) * np.linalg.norm(query))
    elif distance is Distance.L2:
        expected = 1 / (1 + np.linalg.norm(best - query))
    else:
        expected = best @ query
    assert scores[0] == pytest.approx(expected, rel=1e-4)


@pytest.mark.parametrize("distance", list(Distance))
@pytest.mark.parametrize("index", [HnswIndex(ef_search=100), IvfflatIndex(lists=4, probes=4)])
def test_ann_indexes_find_the_true_neighbours(make_core, postgres, distance, index):
    core = make_core(16, distance=distance, index=index)
    records = random_records(400, dimension=16, seed=3)
    core.upsert(records)
    core.rebuild_index()
    with psycopg.connect(postgres.dsn) as conn:
        definition = conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE indexname = %s",
            (f"{core.config.name}_embedding_idx",),
        ).fetchone()[0]
    assert f"USING {index.method}" in definition
    operator_class = distance.operator_class.as_string(None)
    default_class_omitted = distance is Distance.L2 and "(embedding)" in definition
    assert operator_class in definition or default_class_omitted
    query = np.random.default_rng(4).normal(size=16)
    found = [hit.record.id for hit in core.search(query, 10)]
    assert len(set(found) & set(brute_force(records, query, 10, distance))) >= 9


def test_query_plan_uses_the_hnsw_index(make_core, postgres):
    core = make_core(8)
    core.upsert(random_records(2000, seed=5))
    with psycopg.connect(postgres.dsn) as conn:
        conn.execute("SET enable_seqscan = off")
        plan = conn.execute(
            f'EXPLAIN SELECT id FROM "{core.config.name}" '
            "ORDER BY embedding <=> %s::vector LIMIT 5",
            ("[1,2,3,4,5,6,7,8]",),
        ).fetchall()
    assert "embedding_idx" in " ".join(row[0] for row in plan)


def test_filtered_hnsw_search_still_returns_k_rows(make_core):
    # The planner guesses that "not common" keeps most rows and walks the HNSW index; only 30
    # rows match, so without pgvector's iterative scan the 10 candidates would mostly be dropped.
    core = make_core(8, index=HnswIndex(ef_search=10))
    vectors = np.random.default_rng(6).normal(size=(3000, 8))
    core.upsert(
        Record(
            id=str(i), embedding=vector, metadata={"group": "rare" if i % 100 == 0 else "common"}
        )
        for i, vector in enumerate(vectors)
    )
    hits = core.search(np.ones(8), 10, where=Condition("group", Op.NE, "common"))
    assert len(hits) == 10
    assert all(hit.record.metadata["group"] == "rare" for hit in hits)


def test_k_larger_than_ef_search_returns_k_rows(make_core):
    core = make_core(8, index=HnswIndex(ef_search=5))
    core.upsert(random_records(200))
    assert len(core.search(np.ones(8), 50)) == 50
    assert core.search(np.ones(8), 0) == []


def embedding_index_oid(dsn: str, table: str) -> int | None:
    with psycopg.connect(dsn) as conn:
        return conn.execute(
            "SELECT to_regclass(%s)::oid", (f'"{table}_embedding_idx"',)
        ).fetchone()[0]


def test_bulk_load_into_an_empty_collection_builds_the_index_afterwards(make_core, postgres):
    core = make_core(8, bulk_load_min_rows=500)
    core.count()
    created = embedding_index_oid(postgres.dsn, core.config.name)
    core.upsert(random_records(400), batch_size=200)
    assert embedding_index_oid(postgres.dsn, core.config.name) == created
    core.clear()
    core.upsert(random_records(1200), batch_size=200)
    rebuilt = embedding_index_oid(postgres.dsn, core.config.name)
    assert rebuilt is not None and rebuilt != created
    core.upsert(random_records(1200, prefix="more"), batch_size=200)
    assert embedding_index_oid(postgres.dsn, core.config.name) == rebuilt
    assert core.count() == 2400


def test_a_failed_bulk_load_still_leaves_the_index(make_core, postgres):
    core = make_core(8, bulk_load_min_rows=100)
    records = random_records(300)
    broken = [*records[:250], Record(id="bad", embedding=[1.0] * 7), *records[250:]]
    with pytest.raises(InputError):
        core.upsert(broken, batch_size=100)
    assert embedding_index_oid(postgres.dsn, core.config.name) is not None
    assert core.count() == 200


def test_rebuild_index_can_switch_settings_and_records_them(make_core, postgres):
    core = make_core(8)
    core.upsert(random_records(50))
    core.rebuild_index(HnswIndex(m=8, ef_construction=32))
    with psycopg.connect(postgres.dsn) as conn:
        stored = conn.execute(
            "SELECT index FROM mamba3_collections WHERE name = %s", (core.config.name,)
        ).fetchone()[0]
        definition = conn.execute(
            "SELECT indexdef FROM pg_indexes WHERE indexname = %s",
            (f"{core.config.name}_embedding_idx",),
        ).fetchone()[0]
    assert stored == {"method": "hnsw", "m": 8, "ef_construction": 32}
    assert "m='8'" in definition and "ef_construction='32'" in definition


def text_records() -> list[Record]:
    texts = {
        "cats": "Cats purr and chase mice around the old barn",
        "dogs": "Dogs bark loudly at the mail carrier",
        "stocks": "Stock markets fell sharply as interest rates rose",
        "bonds": "Bond yields rose with interest rates",
        "kittens": "A kitten purrs while the cat sleeps",
    }
    return [
        Record(id=key, embedding=hash_embed(text, 8), text=text, metadata={"topic": key})
        for key, text in texts.items()
    ]


def test_text_search_ranks_by_full_text_match(core):
    core.upsert(text_records())
    hits = core.text_search("interest rates", 5)
    assert {hit.record.id for hit in hits} == {"stocks", "bonds"}
    assert all(hit.score > 0 for hit in hits)
    stemmed = core.text_search("purring cats", 5)
    assert {hit.record.id for hit in stemmed} == {"cats", "kittens"}
    assert [hit.record.id for hit in core.text_search('"mail carrier" -cats', 5, match="websearch")]
    assert core.text_search("interest rates dogs", 5, match="websearch") == []
    assert core.text_search("the of and", 5) == []


def test_text_search_respects_filters(core):
    core.upsert(text_records())
    hits = core.text_search("rates", 5, where=Condition("topic", Op.EQ, "bonds"))
    assert [hit.record.id for hit in hits] == ["bonds"]


def test_hybrid_search_is_reciprocal_rank_fusion_of_both_rankings(core):
    core.upsert(text_records())
    query = hash_embed("kitten", 8)
    by_vector = [hit.record.id for hit in core.search(query, 5)]
    by_text = [hit.record.id for hit in core.text_search("interest rates", 5)]
    expected: dict[str, float] = {}
    for ranking in (by_vector, by_text):
        for rank, id_ in enumerate(ranking, start=1):
            expected[id_] = expected.get(id_, 0.0) + 1 / (60 + rank)
    best = sorted(expected.items(), key=lambda item: -item[1])[:4]
    hybrid = core.hybrid_search(query, "interest rates", 4)
    assert [hit.record.id for hit in hybrid] == [id_ for id_, _ in best]
    assert [hit.score for hit in hybrid] == pytest.approx([score for _, score in best])
    text_first = core.hybrid_search(query, "interest rates", 2, vector_weight=0.0)
    assert [hit.record.id for hit in text_first] == by_text[:2]


def test_mmr_prefers_diverse_results(core):
    base = np.zeros(8, dtype=np.float32)
    base[0] = 1.0
    near_duplicates = [
        Record(id=f"dup{i}", embedding=base + np.float32(0.001 * i) * np.eye(8)[1])
        for i in range(5)
    ]
    other = np.zeros(8, dtype=np.float32)
    other[0], other[2] = 0.7, 0.7
    core.upsert([*near_duplicates, Record(id="other", embedding=other)])
    plain = [hit.record.id for hit in core.search(base, 2)]
    diverse = core.mmr_search(base, 2, fetch_k=6, lambda_mult=0.3)
    assert plain[1].startswith("dup")
    assert [hit.record.id for hit in diverse] == ["dup0", "other"]
    assert diverse[0].record.embedding is None
    assert core.mmr_search(base, 2, fetch_k=6, lambda_mult=1.0)[1].record.id.startswith("dup")


@pytest.mark.parametrize(
    "call",
    [
        lambda core: core.search([1.0] * 8, -1),
        lambda core: core.search([1.0] * 8, True),
        lambda core: core.text_search("x", 3, match="fuzzy"),
        lambda core: core.mmr_search([1.0] * 8, 3, lambda_mult=2),
        lambda core: core.hybrid_search([1.0] * 8, "x", 3, text_k=-2),
        lambda core: core.upsert([Record(id="a", embedding=[1.0] * 8)], batch_size=0),
    ],
)
def test_bad_arguments_raise_input_error(core, call):
    with pytest.raises(InputError):
        call(core)
