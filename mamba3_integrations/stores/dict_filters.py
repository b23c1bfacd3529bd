"""Parse MongoDB-style filter dicts, the syntax LangChain vector stores accept, into a filter tree.

``{"genre": "drama", "year": {"$gte": 2000, "$lt": 2010}}`` means genre equals "drama" AND
2000 <= year < 2010. A field maps to a value (equality) or to ``{"$operator": value, ...}``
(all must hold); ``$and`` / ``$or`` take lists of such dicts and ``$not`` takes one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mamba3_integrations.stores.errors import InvalidFilterError
from mamba3_integrations.stores.filters import And, Condition, Filter, Not, Op, Or

FIELD_OPERATORS = {
    "$eq": Op.EQ,
    "$ne": Op.NE,
    "$lt": Op.LT,
    "$lte": Op.LTE,
    "$gt": Op.GT,
    "$gte": Op.GTE,
    "$in": Op.IN,
    "$nin": Op.NIN,
    "$like": Op.LIKE,
    "$ilike": Op.ILIKE,
    "$exists": Op.EXISTS,
}
"""Operators applied to one field, besides ``$between`` (``[low, high]``, both inclusive)."""

LOGICAL_OPERATORS = ("$and", "$or", "$not")


def parse_filter_dict(spec: Mapping[str, Any] | None) -> Filter | None:
    """Filter tree for a MongoDB-style dict; ``None`` or ``{}`` means no filter."""
    if spec is None:
        return None
    if not isinstance(spec, Mapping):
        raise InvalidFilterError(f"A filter must be a dict, got {type(spec).__name__}: {spec!r}.")
    if not spec:
        return None
    parts = [_parse_entry(key, value) for key, value in spec.items()]
    return parts[0] if len(parts) == 1 else And(tuple(parts))


def _parse_entry(key: str, value: Any) -> Filter:
    if isinstance(key, str) and key.startswith("$"):
        return _parse_logical(key, value)
    if isinstance(value, Mapping):
        if not value:
            raise InvalidFilterError(f"Empty operator dict for field {key!r}.")
        parts = [_parse_operator(key, op, operand) for op, operand in value.items()]
        return parts[0] if len(parts) == 1 else And(tuple(parts))
    if isinstance(value, (list, tuple)):
        raise InvalidFilterError(
            f"Field {key!r} maps to a list; write {{{key!r}: {{'$in': [...]}}}} to match any "
            "of several values."
        )
    return Condition(key, Op.EQ, value)


def _parse_logical(key: str, value: Any) -> Filter:
    if key == "$not":
        inner = parse_filter_dict(value)
        if inner is None:
            raise InvalidFilterError("'$not' needs a non-empty filter dict.")
        return Not(inner)
    if key not in ("$and", "$or"):
        raise InvalidFilterError(
            f"Unknown logical operator {key!r}; use one of {', '.join(LOGICAL_OPERATORS)}."
        )
    if isinstance(value, (str, Mapping)) or not isinstance(value, Sequence) or not value:
        raise InvalidFilterError(f"{key!r} needs a non-empty list of filter dicts, got {value!r}.")
    parts = []
    for item in value:
        parsed = parse_filter_dict(item)
        if parsed is None:
            raise InvalidFilterError(f"{key!r} contains an empty filter dict.")
        parts.append(parsed)
    return And(tuple(parts)) if key == "$and" else Or(tuple(parts))


def _parse_operator(key: str, op: str, operand: Any) -> Filter:
    if op == "$between":
        is_pair = isinstance(operand, (list, tuple)) and len(operand) == 2
        if not is_pair:
            raise InvalidFilterError(f"'$between' on {key!r} needs [low, high], got {operand!r}.")
        low, high = operand
        return And((Condition(key, Op.GTE, low), Condition(key, Op.LTE, high)))
    if op not in FIELD_OPERATORS:
        known = ", ".join([*FIELD_OPERATORS, "$between"])
        raise InvalidFilterError(f"Unknown operator {op!r} on field {key!r}; use one of {known}.")
    return Condition(key, FIELD_OPERATORS[op], operand)
