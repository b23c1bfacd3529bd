"""Finding the database: explicit connection string, MAMBA3_PG_DSN, or an embedded server."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import psycopg

from mamba3_integrations.stores import (
    DSN_ENVIRONMENT_VARIABLE,
    CollectionConfig,
    ConnectionOptions,
    PgVectorCore,
    Record,
    resolve_dsn,
    start_embedded_server,
)
from mamba3_integrations.stores.server import default_data_dir, redact_dsn


def test_an_explicit_connection_string_wins(monkeypatch):
    monkeypatch.setenv(DSN_ENVIRONMENT_VARIABLE, "postgresql:///from-environment")
    assert resolve_dsn("postgresql:///explicit") == "postgresql:///explicit"


def test_the_environment_variable_comes_next(monkeypatch, postgres, collection_name):
    monkeypatch.setenv(DSN_ENVIRONMENT_VARIABLE, postgres.dsn)
    assert resolve_dsn(None) == postgres.dsn
    core = PgVectorCore(CollectionConfig(collection_name, 4))
    core.upsert([Record(id="env", embedding=[1.0, 0.0, 0.0, 0.0])])
    with psycopg.connect(postgres.dsn) as conn:
        found = conn.execute(f'SELECT id FROM "{collection_name}"').fetchall()
    assert found == [("env",)]
    core.drop()
    core.close()


def test_the_default_data_directory_follows_xdg_cache_home(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_data_dir() == tmp_path / "mamba3-integrations" / "pgdata"


def test_without_a_connection_string_an_embedded_server_starts_and_is_reused(monkeypatch):
    import pgserver

    monkeypatch.delenv(DSN_ENVIRONMENT_VARIABLE, raising=False)
    parent = Path(tempfile.mkdtemp(prefix="mamba3-pgvector-embedded-"))
    data_dir = parent / "pgdata"
    try:
        core = PgVectorCore(CollectionConfig("embedded", 4), ConnectionOptions(data_dir=data_dir))
        core.upsert([Record(id="a", embedding=[0.0, 1.0, 0.0, 0.0])])
        assert (data_dir / "PG_VERSION").exists()
        assert start_embedded_server(data_dir) == resolve_dsn(None, data_dir)
        with psycopg.connect(resolve_dsn(None, data_dir)) as conn:
            version = conn.execute(
                "SELECT extversion FROM pg_extension WHERE extname = 'vector'"
            ).fetchone()[0]
        assert version.split(".")[0] == "0" and int(version.split(".")[1]) >= 8
        core.close()
    finally:
        pgserver.get_server(data_dir).cleanup()
        shutil.rmtree(parent, ignore_errors=True)


def test_passwords_are_redacted():
    redacted = redact_dsn("postgresql://user:s3cret@db.example:5433/rag?sslmode=require")
    assert "s3cret" not in redacted
    assert "db.example" in redacted and "5433" in redacted
    assert "s3cret" not in redact_dsn("host=db password=s3cret dbname=rag")
    assert redact_dsn("not a = valid = dsn") == "<unparseable connection string>"
