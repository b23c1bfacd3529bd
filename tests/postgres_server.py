"""The session's embedded PostgreSQL + pgvector server, shared by every test folder."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from mamba3_integrations.stores import ConnectionOptions, RetryPolicy

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
