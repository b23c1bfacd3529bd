"""One embedded PostgreSQL + pgvector server for the whole session, and per-test collections."""

from __future__ import annotations

import shutil
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mamba3_integrations.stores import (
    CollectionConfig,
    ConnectionOptions,
    PgVectorCore,
    RetryPolicy,
)
from mamba3_integrations.stores.base import DEFAULT_BULK_LOAD_MIN_ROWS

FAST_RETRY = RetryPolicy(attempts=8, first_delay=0.1, max_delay=1.0)


@dataclass
class EmbeddedPostgres:
    """The session's server, with the stop/start controls the resilience tests need."""

    dsn: str
    data_dir: Path
    socket_dir: Path
    system_user: str | None

    def stop(self) -> None:
        """Fast shutdown: open connections are terminated."""
        from pgserver import pg_ctl

        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.data_dir, user=self.system_user)

    def start(self) -> None:
        """Start again on the same data directory and socket."""
        from pgserver import pg_ctl

        pg_ctl(
            ["-w", "-o", '-h ""', "-o", f"-k {self.socket_dir}"]
            + ["-l", str(self.data_dir / "log"), "start"],
            pgdata=self.data_dir,
            user=self.system_user,
        )

    def options(self, **overrides: object) -> ConnectionOptions:
        """Connection options for this server with quick retries."""
        settings = {"dsn": self.dsn, "retry": FAST_RETRY, "connect_timeout": 5.0, **overrides}
        return ConnectionOptions(**settings)


@pytest.fixture(scope="session")
def postgres() -> Iterator[EmbeddedPostgres]:
    """Start one server in a fresh temporary directory; delete both at the end of the session.

    The directory is not under pytest's ``tmp_path``: that tree is private to its owner, and
    when running as root the server runs as another user that must be able to reach it.
    """
    pgserver = pytest.importorskip("pgserver")
    parent = Path(tempfile.mkdtemp(prefix="mamba3-pgvector-tests-"))
    data_dir = parent / "data"
    server = pgserver.get_server(data_dir, cleanup_mode="delete")
    info = server.get_postmaster_info()
    try:
        yield EmbeddedPostgres(server.get_uri(), data_dir, info.socket_dir, server.system_user)
    finally:
        server.cleanup()
        shutil.rmtree(parent, ignore_errors=True)


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
