"""Database work written once as generators of statements, run by a sync or an async driver.

A plan is a generator that yields :class:`Execute` or :class:`CopyIn` steps, receives each step's
:class:`StepResult` back and returns its value. The drivers run all steps on one connection
inside one transaction, so a plan either commits entirely or leaves nothing behind.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

import psycopg
from psycopg import sql

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Execute:
    """Run one statement with named parameters."""

    query: sql.Composable
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class CopyIn:
    """Stream ``payload`` into a ``COPY ... FROM STDIN`` statement."""

    query: sql.Composable
    payload: bytes


@dataclass(frozen=True, slots=True)
class StepResult:
    """Rows returned by a step (empty when it returns none) and the rows it affected."""

    rows: list[tuple[Any, ...]]
    rowcount: int


Step = Execute | CopyIn
Plan = Generator[Step, StepResult, T]


def run_plan(conn: psycopg.Connection[Any], plan: Plan[T]) -> T:
    """Run every step of ``plan`` in one transaction on ``conn`` and return the plan's value."""
    with conn.transaction(), conn.cursor() as cursor:
        try:
            step = next(plan)
            while True:
                if isinstance(step, CopyIn):
                    with cursor.copy(step.query) as copy:
                        copy.write(step.payload)
                else:
                    cursor.execute(step.query, step.params or None)
                rows = cursor.fetchall() if cursor.description is not None else []
                step = plan.send(StepResult(rows, cursor.rowcount))
        except StopIteration as finished:
            return finished.value


async def run_plan_async(conn: psycopg.AsyncConnection[Any], plan: Plan[T]) -> T:
    """Async twin of :func:`run_plan`."""
    async with conn.transaction(), conn.cursor() as cursor:
        try:
            step = next(plan)
            while True:
                if isinstance(step, CopyIn):
                    async with cursor.copy(step.query) as copy:
                        await copy.write(step.payload)
                else:
                    await cursor.execute(step.query, step.params or None)
                rows = await cursor.fetchall() if cursor.description is not None else []
                step = plan.send(StepResult(rows, cursor.rowcount))
        except StopIteration as finished:
            return finished.value
