"""Metadata filter tree, shared by both frameworks, and its compilation to parameterised SQL.

Keys name a value in the ``metadata`` jsonb column; a dotted key (``"author.name"``) walks into
nested objects. Keys must match :data:`KEY_PATTERN`, and both the path and every value are sent as
bound parameters, so no filter can change the SQL text.

Values compare only with stored values of the same JSON type: numbers numerically, strings as
text. ``NE`` and ``NIN`` are the exact negations of ``EQ`` and ``IN``, so they also match rows
where the key is missing.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from enum import Enum
from typing import Any

from psycopg import sql
from psycopg.types.json import Jsonb

from mamba3_integrations.stores.errors import InvalidFilterError

KEY_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_\-]{0,127}(\.[A-Za-z0-9_][A-Za-z0-9_\-]{0,127})*")
"""Allowed metadata keys: word characters and dashes, segments joined by dots."""


class Op(str, Enum):
    """Comparison operators of the filter tree."""

    EQ = "eq"
    NE = "ne"
    GT = "gt"
    GTE = "gte"
    LT = "lt"
    LTE = "lte"
    IN = "in"
    NIN = "nin"
    CONTAINS = "contains"
    """The stored array contains the value."""
    CONTAINS_ANY = "contains_any"
    """The stored array contains at least one of the values."""
    CONTAINS_ALL = "contains_all"
    """The stored array contains every one of the values."""
    LIKE = "like"
    """SQL ``LIKE`` pattern on a stored string (``%`` any run, ``_`` one character)."""
    ILIKE = "ilike"
    """Case-insensitive :attr:`LIKE`."""
    IS_EMPTY = "is_empty"
    """The key is missing, null, an empty string or an empty array (the value is ignored)."""
    EXISTS = "exists"
    """The key is present (value ``True``) or missing (value ``False``)."""


@dataclass(frozen=True, slots=True)
class Condition:
    """``metadata[key] <op> value``."""

    key: str
    op: Op
    value: Any = None


@dataclass(frozen=True, slots=True)
class And:
    """All of the filters hold (true when empty)."""

    filters: tuple[Filter, ...]


@dataclass(frozen=True, slots=True)
class Or:
    """At least one of the filters holds (false when empty)."""

    filters: tuple[Filter, ...]


@dataclass(frozen=True, slots=True)
class Not:
    """The filter does not hold."""

    filter: Filter


@dataclass(frozen=True, slots=True)
class IdIn:
    """The row id is one of ``ids``."""

    ids: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class DocumentIdIn:
    """The row's document id is one of ``document_ids``."""

    document_ids: tuple[str, ...]


Filter = Condition | And | Or | Not | IdIn | DocumentIdIn

_SCALARS = (str, int, float, bool)
_ORDERED = {Op.GT: ">", Op.GTE: ">=", Op.LT: "<", Op.LTE: "<="}
_LIKE = {Op.LIKE: "LIKE", Op.ILIKE: "ILIKE"}


def all_of(*filters: Filter | None) -> Filter | None:
    """AND the given filters, skipping ``None``; ``None`` when nothing is left."""
    present = tuple(f for f in filters if f is not None)
    if not present:
        return None
    return present[0] if len(present) == 1 else And(present)


def compile_filter(tree: Filter | None) -> tuple[sql.Composable, dict[str, Any]]:
    """SQL boolean expression for ``tree`` and its named parameters (``TRUE`` for ``None``)."""
    if tree is None:
        return sql.SQL("TRUE"), {}
    compiler = _Compiler()
    return compiler.compile(tree), compiler.params


def split_key(key: str) -> list[str]:
    """Validate a metadata key and return its path elements."""
    if not isinstance(key, str) or not KEY_PATTERN.fullmatch(key):
        raise InvalidFilterError(
            f"Invalid metadata key {key!r}: keys may hold letters, digits, '_' and '-', with '.' "
            "between nested keys (for example 'author.name')."
        )
    return key.split(".")


class _Compiler:
    """Walks a filter tree, collecting bound parameters under unique names."""

    def __init__(self) -> None:
        self.params: dict[str, Any] = {}
        self._names: Iterator[int] = itertools.count()

    def bind(self, value: Any) -> sql.Placeholder:
        name = f"filter_{next(self._names)}"
        self.params[name] = value
        return sql.Placeholder(name)

    def compile(self, tree: Filter) -> sql.Composable:
        if isinstance(tree, And):
            return self._join(tree.filters, " AND ", "TRUE")
        if isinstance(tree, Or):
            return self._join(tree.filters, " OR ", "FALSE")
        if isinstance(tree, Not):
            return sql.SQL("(NOT coalesce({}, FALSE))").format(self.compile(tree.filter))
        if isinstance(tree, IdIn):
            return sql.SQL("(id = ANY({}))").format(self.bind(_strings(tree.ids, "ids")))
        if isinstance(tree, DocumentIdIn):
            ids = _strings(tree.document_ids, "document ids")
            return sql.SQL("(document_id = ANY({}))").format(self.bind(ids))
        if isinstance(tree, Condition):
            return self._condition(tree)
        raise InvalidFilterError(f"Not a filter: {tree!r}.")

    def _join(self, filters: Sequence[Filter], glue: str, empty: str) -> sql.Composable:
        if not filters:
            return sql.SQL(empty)
        parts = [self.compile(f) for f in filters]
        return sql.SQL("({})").format(sql.SQL(glue).join(parts))

    def _condition(self, cond: Condition) -> sql.Composable:
        try:
            op = Op(cond.op)
        except ValueError:
            known = ", ".join(member.value for member in Op)
            raise InvalidFilterError(
                f"Unknown filter operator {cond.op!r}; use one of {known}."
            ) from None
        value = sql.SQL("(metadata #> {})").format(self.bind(split_key(cond.key)))
        if op is Op.EQ:
            return sql.SQL("({} = {})").format(value, self._jsonb(_scalar(cond)))
        if op is Op.NE:
            return sql.SQL("({} IS DISTINCT FROM {})").format(value, self._jsonb(_scalar(cond)))
        if op in _ORDERED:
            operand = _ordered(cond)
            kind = "string" if isinstance(operand, str) else "number"
            return sql.SQL("(jsonb_typeof({v}) = {kind} AND {v} {op} {operand})").format(
                v=value,
                kind=sql.Literal(kind),
                op=sql.SQL(_ORDERED[op]),
                operand=self._jsonb(operand),
            )
        if op is Op.IN:
            return sql.SQL("({} = ANY({}))").format(value, self._jsonb_list(cond))
        if op is Op.NIN:
            listed = self._jsonb_list(cond)
            return sql.SQL("(NOT coalesce({} = ANY({}), FALSE))").format(value, listed)
        if op is Op.CONTAINS:
            element = Jsonb([_scalar(cond)])
            return sql.SQL("({} @> {})").format(value, self.bind(element))
        if op is Op.CONTAINS_ANY:
            singletons = [Jsonb([item]) for item in _scalar_list(cond)]
            return sql.SQL("({} @> ANY({}::jsonb[]))").format(value, self.bind(singletons))
        if op is Op.CONTAINS_ALL:
            every = Jsonb(_scalar_list(cond))
            return sql.SQL("(jsonb_typeof({v}) = 'array' AND {v} @> {every})").format(
                v=value, every=self.bind(every)
            )
        if op in _LIKE:
            if not isinstance(cond.value, str):
                raise _bad_value(cond, "a string pattern")
            text = sql.SQL("(metadata #>> {})").format(self.bind(split_key(cond.key)))
            return sql.SQL("(jsonb_typeof({v}) = 'string' AND {text} {like} {pattern})").format(
                v=value, text=text, like=sql.SQL(_LIKE[op]), pattern=self.bind(cond.value)
            )
        if op is Op.IS_EMPTY:
            return sql.SQL(
                "({v} IS NULL OR {v} = 'null'::jsonb OR {v} = '\"\"'::jsonb OR {v} = '[]'::jsonb)"
            ).format(v=value)
        # Op.EXISTS is the only operator left.
        if not isinstance(cond.value, bool):
            raise _bad_value(cond, "True or False")
        test = "IS NOT NULL" if cond.value else "IS NULL"
        return sql.SQL("({} {})").format(value, sql.SQL(test))

    def _jsonb(self, value: Any) -> sql.Composable:
        return sql.SQL("{}::jsonb").format(self.bind(Jsonb(value)))

    def _jsonb_list(self, cond: Condition) -> sql.Composable:
        items = [Jsonb(item) for item in _scalar_list(cond)]
        return sql.SQL("{}::jsonb[]").format(self.bind(items))


def _bad_value(cond: Condition, expected: str) -> InvalidFilterError:
    return InvalidFilterError(
        f"Filter on {cond.key!r} with operator {Op(cond.op).name} needs {expected}, "
        f"got {cond.value!r}."
    )


def _is_scalar(value: Any) -> bool:
    if isinstance(value, float):
        return math.isfinite(value)
    return isinstance(value, _SCALARS)


def _scalar(cond: Condition) -> Any:
    if cond.value is not None and not _is_scalar(cond.value):
        raise _bad_value(cond, "a string, a finite number, a boolean or None")
    return cond.value


def _ordered(cond: Condition) -> Any:
    if isinstance(cond.value, bool) or not _is_scalar(cond.value):
        raise _bad_value(cond, "a finite number or a string")
    return cond.value


def _scalar_list(cond: Condition) -> list[Any]:
    values = cond.value
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence):
        raise _bad_value(cond, "a list of strings or numbers")
    if not all(_is_scalar(item) for item in values):
        raise _bad_value(cond, "a list of strings or numbers")
    return list(values)


def _strings(values: Sequence[str], what: str) -> list[str]:
    if isinstance(values, str) or not all(isinstance(v, str) for v in values):
        raise InvalidFilterError(f"The {what} to match must be a list of strings, got {values!r}.")
    return list(values)
