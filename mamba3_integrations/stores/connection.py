"""Connection pools, retry policy and translation of driver errors into store errors.

Every store operation is idempotent (reads, upserts by id, deletes, whole transactional ingest
batches), so an operation that fails because the connection dropped, the server restarted or a
deadlock was detected is retried from scratch with exponential back-off. When the retries run
out, :class:`StoreConnectionError` says so; any other database error becomes a
:class:`StoreError` carrying the server's message.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg_pool import AsyncConnectionPool, ConnectionPool, PoolTimeout

from mamba3_integrations.errors import InputError, Mamba3IntegrationsError, StoreError
from mamba3_integrations.stores.errors import StoreConnectionError
from mamba3_integrations.stores.server import DSN_ENVIRONMENT_VARIABLE, redact_dsn

_TRANSIENT_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "40001", "40P01"})
"""Admin/crash shutdown, server starting up, serialization failure, deadlock."""


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Up to ``attempts`` tries, waiting ``first_delay`` then doubling up to ``max_delay``."""

    attempts: int = 6
    first_delay: float = 0.25
    max_delay: float = 4.0

    def __post_init__(self) -> None:
        if self.attempts < 1 or self.first_delay < 0 or self.max_delay < self.first_delay:
            raise InputError(f"Invalid retry policy {self!r}.")

    def delays(self) -> Iterator[float]:
        """The waits between consecutive attempts."""
        delay = self.first_delay
        for _ in range(self.attempts - 1):
            yield delay
            delay = min(delay * 2, self.max_delay)


@dataclass(frozen=True, slots=True)
class ConnectionOptions:
    """How to reach the server: see :func:`server.resolve_dsn` for ``dsn`` and ``data_dir``.

    ``connect_timeout`` bounds both a new connection and the wait for a free pooled one.
    """

    dsn: str | None = None
    data_dir: str | Path | None = None
    pool_size: int = 4
    connect_timeout: float = 10.0
    retry: RetryPolicy = RetryPolicy()

    def __post_init__(self) -> None:
        if self.pool_size < 1 or self.connect_timeout <= 0:
            raise InputError("pool_size must be at least 1 and connect_timeout positive.")


def is_transient(error: BaseException) -> bool:
    """Whether retrying the whole operation on a fresh connection may succeed."""
    if isinstance(error, PoolTimeout):
        return True
    if not isinstance(error, psycopg.OperationalError):
        return False
    state = error.sqlstate
    return state is None or state.startswith("08") or state in _TRANSIENT_SQLSTATES


def as_store_error(error: Exception, action: str) -> Exception:
    """The exception to raise for ``error``: this package's own errors pass through unchanged."""
    if isinstance(error, Mamba3IntegrationsError) or not isinstance(error, psycopg.Error):
        return error
    diag = error.diag
    message = diag.message_primary or str(error).strip()
    hint = f" Hint: {diag.message_hint}" if diag.message_hint else ""
    return StoreError(f"{action} failed: PostgreSQL said: {message}.{hint}")


def gave_up(error: BaseException, action: str, dsn: str, attempts: int) -> StoreConnectionError:
    """The error for a transient failure that outlived every retry."""
    detail = str(error).strip() or type(error).__name__
    return StoreConnectionError(
        f"{action} failed after {attempts} attempt(s): lost or could not get a connection to "
        f"PostgreSQL at {redact_dsn(dsn)} ({detail}). Check that the server is running and "
        f"reachable, or point the store at another one (connection string argument or "
        f"{DSN_ENVIRONMENT_VARIABLE})."
    )


def unreachable(error: BaseException, dsn: str) -> StoreConnectionError:
    """The error for a server that refuses the very first connection."""
    return StoreConnectionError(
        f"Cannot connect to PostgreSQL at {redact_dsn(dsn)}: {str(error).strip()}. Start the "
        f"server or fix the connection string (argument or {DSN_ENVIRONMENT_VARIABLE}); with "
        "neither, an embedded server is started."
    )


def connect_probe(dsn: str, options: ConnectionOptions) -> None:
    """Open and close one connection, so a wrong address fails at once with the real reason."""
    try:
        psycopg.connect(dsn, connect_timeout=max(1, round(options.connect_timeout))).close()
    except psycopg.Error as error:
        raise unreachable(error, dsn) from error


async def connect_probe_async(dsn: str, options: ConnectionOptions) -> None:
    """Async twin of :func:`connect_probe`."""
    try:
        conn = await psycopg.AsyncConnection.connect(
            dsn, connect_timeout=max(1, round(options.connect_timeout))
        )
        await conn.close()
    except psycopg.Error as error:
        raise unreachable(error, dsn) from error


def new_pool(dsn: str, options: ConnectionOptions) -> ConnectionPool:
    """An unopened pool of autocommit connections.

    Connections are not tested on every checkout (that costs a round trip per operation);
    instead, after a transient failure the cores call ``pool.check()``, which drops every
    broken idle connection before the retry.
    """
    return ConnectionPool(
        dsn,
        min_size=1,
        max_size=options.pool_size,
        kwargs={"autocommit": True},
        timeout=options.connect_timeout,
        open=False,
        name="mamba3-pgvector",
    )


def new_async_pool(dsn: str, options: ConnectionOptions) -> AsyncConnectionPool:
    """Async twin of :func:`new_pool`."""
    return AsyncConnectionPool(
        dsn,
        min_size=1,
        max_size=options.pool_size,
        kwargs={"autocommit": True},
        timeout=options.connect_timeout,
        open=False,
        name="mamba3-pgvector-async",
    )
