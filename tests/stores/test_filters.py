"""The filter tree: SQL compilation, injection safety, typed semantics, MongoDB-style dicts."""

from __future__ import annotations

import psycopg
import pytest

from mamba3_integrations.stores import (
    And,
    Condition,
    InvalidFilterError,
    Not,
    Op,
    Or,
    Record,
    parse_filter_dict,
)
from mamba3_integrations.stores.filters import DocumentIdIn, IdIn, compile_filter

ROWS = {
    "a": {"n": 1, "s": "apple", "tags": ["red", "fruit"], "nested": {"x": 10}, "flag": True},
    "b": {"n": 2.5, "s": "Banana", "tags": ["yellow", "fruit"], "nested": {"x": 20}},
    "c": {"n": 10, "s": "cherry's", "tags": [], "flag": False, "empty": ""},
    "d": {"n": "10", "s": "100%_pure", "tags": ["red"], "nested": {"x": "10"}, "empty": None},
    "e": {"s": 'say "hi"; DROP TABLE x; --', "tags": ["red", 3]},
}


@pytest.fixture
def filled(core):
    core.upsert(
        Record(id=key, embedding=[float(i + 1)] + [0.0] * 7, metadata=metadata)
        for i, (key, metadata) in enumerate(ROWS.items())
    )
    return core


def matching(core, tree) -> list[str]:
    return sorted(record.id for record in core.get(where=tree))


@pytest.mark.parametrize(
    ("tree", "expected"),
    [
        (Condition("n", Op.EQ, 1), ["a"]),
        (Condition("n", Op.EQ, 1.0), ["a"]),
        (Condition("n", Op.EQ, 10), ["c"]),
        (Condition("n", Op.EQ, "10"), ["d"]),
        (Condition("flag", Op.EQ, True), ["a"]),
        (Condition("empty", Op.EQ, None), ["d"]),
        (Condition("n", Op.NE, 1), ["b", "c", "d", "e"]),
        (Condition("n", Op.GT, 2), ["b", "c"]),
        (Condition("n", Op.GTE, 2.5), ["b", "c"]),
        (Condition("n", Op.LT, 10), ["a", "b"]),
        (Condition("n", Op.LTE, 10), ["a", "b", "c"]),
        (Condition("s", Op.GT, "c"), ["c", "e"]),
        (And((IdIn(("a", "c", "d")), Condition("s", Op.LT, "b"))), ["a", "d"]),
        (Condition("n", Op.IN, [1, "10"]), ["a", "d"]),
        (Condition("n", Op.IN, []), []),
        (Condition("n", Op.NIN, [1, 10]), ["b", "d", "e"]),
        (Condition("tags", Op.CONTAINS, "red"), ["a", "d", "e"]),
        (Condition("tags", Op.CONTAINS, 3), ["e"]),
        (Condition("tags", Op.CONTAINS_ANY, ["yellow", "red"]), ["a", "b", "d", "e"]),
        (Condition("tags", Op.CONTAINS_ALL, ["red", "fruit"]), ["a"]),
        (Condition("s", Op.LIKE, "%an%"), ["b"]),
        (Condition("s", Op.ILIKE, "b%"), ["b"]),
        (Condition("s", Op.LIKE, "100\\%\\_%"), ["d"]),
        (Condition("tags", Op.IS_EMPTY), ["c"]),
        (Condition("empty", Op.IS_EMPTY), ["a", "b", "c", "d", "e"]),
        (Condition("flag", Op.EXISTS, True), ["a", "c"]),
        (Condition("flag", Op.EXISTS, False), ["b", "d", "e"]),
        (Condition("nested.x", Op.GTE, 10), ["a", "b"]),
        (Condition("nested.x", Op.EQ, "10"), ["d"]),
        (Condition("s", Op.EQ, "cherry's"), ["c"]),
        (Condition("s", Op.EQ, 'say "hi"; DROP TABLE x; --'), ["e"]),
        (Condition("s", Op.EQ, "' OR '1'='1"), []),
        (And((Condition("n", Op.GT, 1), Condition("tags", Op.CONTAINS, "fruit"))), ["b"]),
        (Or((Condition("n", Op.EQ, 1), Condition("s", Op.ILIKE, "%pure"))), ["a", "d"]),
        (Not(Condition("tags", Op.CONTAINS, "red")), ["b", "c"]),
        (Not(Or((Condition("n", Op.EQ, 1), Condition("n", Op.EQ, 10)))), ["b", "d", "e"]),
        (And(()), ["a", "b", "c", "d", "e"]),
        (Or(()), []),
        (IdIn(("a", "e", "zz")), ["a", "e"]),
        (And((IdIn(("a", "b")), Condition("n", Op.GT, 2))), ["b"]),
    ],
)
def test_filters_select_the_right_rows(filled, tree, expected):
    assert matching(filled, tree) == expected


def test_document_ids_filter(core):
    core.upsert(Record(id=str(i), embedding=[1.0] * 8, document_id=f"d{i % 3}") for i in range(6))
    assert matching(core, DocumentIdIn(("d1",))) == ["1", "4"]


@pytest.mark.parametrize(
    "key",
    [
        "a'); DROP TABLE x; --",
        "a' OR '1'='1",
        "metadata->>'a'",
        "a b",
        "",
        ".a",
        "a.",
        "a..b",
        'a"b',
        "a;b",
        "k" * 129,
    ],
)
def test_unsafe_keys_raise_before_any_sql_runs(filled, key):
    with pytest.raises(InvalidFilterError, match="Invalid metadata key"):
        filled.get(where=Condition(key, Op.EQ, 1))
    assert filled.count() == len(ROWS)


@pytest.mark.parametrize("key", ["file_name", "page-label", "_node_type", "author.name", "2024"])
def test_reasonable_keys_are_accepted(key):
    compile_filter(Condition(key, Op.EQ, 1))


def test_compiled_sql_carries_keys_and_values_only_as_parameters():
    hostile = "x'); DROP TABLE t; --"
    tree = Or(
        (
            Condition("a.b", Op.EQ, hostile),
            Condition("c", Op.IN, [hostile, 1]),
            Condition("d", Op.LIKE, hostile),
            Not(IdIn((hostile,))),
        )
    )
    query, params = compile_filter(tree)
    text = query.as_string(None)
    assert hostile not in text and "DROP" not in text
    assert "'a'" not in text and '"a"' not in text
    assert hostile in repr(params)


@pytest.mark.parametrize(
    "tree",
    [
        Condition("n", Op.EQ, [1, 2]),
        Condition("n", Op.EQ, {"a": 1}),
        Condition("n", Op.EQ, float("nan")),
        Condition("n", Op.GT, True),
        Condition("n", Op.GT, None),
        Condition("n", Op.IN, "abc"),
        Condition("n", Op.IN, [[1]]),
        Condition("n", Op.CONTAINS, [1]),
        Condition("n", Op.LIKE, 3),
        Condition("n", Op.EXISTS, "yes"),
        Condition("n", "between", 3),
        IdIn("abc"),
        "n = 1",
    ],
)
def test_badly_typed_filters_raise_invalid_filter_error(tree):
    with pytest.raises(InvalidFilterError):
        compile_filter(tree)


def test_filter_errors_are_both_input_and_store_errors():
    from mamba3_integrations.errors import InputError, StoreError

    assert issubclass(InvalidFilterError, InputError)
    assert issubclass(InvalidFilterError, StoreError)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"n": 1}, ["a"]),
        ({"n": {"$eq": 2.5}}, ["b"]),
        ({"n": {"$ne": 1}}, ["b", "c", "d", "e"]),
        ({"n": {"$gt": 1, "$lt": 10}}, ["b"]),
        ({"n": {"$gte": 2.5}}, ["b", "c"]),
        ({"n": {"$lte": 2.5}}, ["a", "b"]),
        ({"n": {"$in": [1, 10]}}, ["a", "c"]),
        ({"n": {"$nin": [1, 10]}}, ["b", "d", "e"]),
        ({"s": {"$like": "%an%"}}, ["b"]),
        ({"s": {"$ilike": "%AN%"}}, ["b"]),
        ({"n": {"$between": [2, 10]}}, ["b", "c"]),
        ({"flag": {"$exists": True}}, ["a", "c"]),
        ({"$and": [{"n": {"$gt": 1}}, {"tags": {"$exists": True}}]}, ["b", "c"]),
        ({"$or": [{"n": 1}, {"s": "Banana"}]}, ["a", "b"]),
        ({"$not": {"n": {"$lt": 10}}}, ["c", "d", "e"]),
        ({"nested.x": 20}, ["b"]),
        ({"s": "cherry's", "n": 10}, ["c"]),
        ({}, ["a", "b", "c", "d", "e"]),
    ],
)
def test_dict_filters_select_the_right_rows(filled, spec, expected):
    assert matching(filled, parse_filter_dict(spec)) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"n": {"$regex": "a"}}, "Unknown operator '\\$regex'"),
        ({"$nor": [{"n": 1}]}, "Unknown logical operator"),
        ({"$and": {"n": 1}}, "non-empty list"),
        ({"$or": []}, "non-empty list"),
        ({"$and": [{}]}, "empty filter dict"),
        ({"n": {}}, "Empty operator dict"),
        ({"n": [1, 2]}, "\\$in"),
        ({"n": {"$between": [1]}}, "\\[low, high\\]"),
        ({"$not": {}}, "non-empty"),
        ("n = 1", "must be a dict"),
    ],
)
def test_malformed_dict_filters_are_explained(spec, message):
    with pytest.raises(InvalidFilterError, match=message):
        parse_filter_dict(spec)


def test_dict_filter_keys_are_validated_too(filled):
    with pytest.raises(InvalidFilterError, match="Invalid metadata key"):
        filled.get(where=parse_filter_dict({"a'); DROP TABLE x; --": 1}))


def test_injection_attempts_leave_the_database_intact(filled, postgres):
    hostile_values = ["'; DROP TABLE mamba3_collections; --", "\\'; SELECT pg_sleep(5); --"]
    for value in hostile_values:
        assert matching(filled, Condition("s", Op.EQ, value)) == []
        assert matching(filled, Condition("s", Op.LIKE, value)) == []
        assert matching(filled, Condition("tags", Op.CONTAINS_ANY, [value])) == []
    with psycopg.connect(postgres.dsn) as conn:
        assert conn.execute("SELECT to_regclass('mamba3_collections')").fetchone()[0]
    assert filled.count() == len(ROWS)
