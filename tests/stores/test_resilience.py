"""Failures: atomic batches, concurrent writers, dropped connections, server restarts,
unreachable servers. Connection drops are injected mid-transaction by wrapping the real upsert
plan with one extra real statement (terminating the backend, or stopping the server)."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator

import numpy as np
import psycopg
import pytest
from psycopg import sql

from mamba3_integrations.errors import StoreError
from mamba3_integrations.stores import (
    CollectionConfig,
    ConnectionOptions,
    PgVectorCore,
    Record,
    RetryPolicy,
    StoreConnectionError,
    operations,
)
from mamba3_integrations.stores.plans import CopyIn, Execute


def numbered(start: int, stop: int, text: str = "ok") -> Iterator[Record]:
    rng = np.random.default_rng(start)
    for i in range(start, stop):
        yield Record(id=f"id{i:05d}", embedding=rng.normal(size=8), text=text, metadata={"i": i})


def all_ids(core: PgVectorCore) -> list[str]:
    return [record.id for record in core.get()]


def test_a_failing_batch_leaves_none_of_its_rows(core, postgres):
    core.count()
    with psycopg.connect(postgres.dsn) as conn:
        conn.execute(
            sql.SQL("ALTER TABLE {} ADD CONSTRAINT no_poison CHECK (text <> 'poison')").format(
                core.config.table
            )
        )
    poisoned = [
        *numbered(0, 100),
        *numbered(100, 150),
        Record(id="bad", embedding=[1.0] * 8, text="poison"),
        *numbered(150, 200),
    ]
    with pytest.raises(StoreError, match="no_poison") as caught:
        core.upsert(poisoned, batch_size=100)
    assert "upsert of 100 records" in str(caught.value)
    assert all_ids(core) == [f"id{i:05d}" for i in range(100)]


def test_concurrent_writers_with_overlapping_ids_leave_exactly_one_row_per_id(make_core):
    shared = make_core(8)
    shared.count()
    errors: list[Exception] = []

    def writer(seed: int) -> None:
        rng = random.Random(seed)
        core = PgVectorCore(shared.config, shared.options)
        try:
            for _ in range(5):
                start = rng.randrange(0, 600)
                records = list(numbered(start, start + 400, text=f"writer {seed}"))
                rng.shuffle(records)
                core.upsert(records, batch_size=150)
        except Exception as error:
            errors.append(error)
        finally:
            core.close()

    threads = [threading.Thread(target=writer, args=(seed,)) for seed in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    ids = all_ids(shared)
    assert len(ids) == len(set(ids)) == shared.count()
    assert set(ids) <= {f"id{i:05d}" for i in range(1000)}
    assert len(ids) >= 400


def test_threads_sharing_one_core_and_its_pool(core):
    def write(part: int) -> None:
        core.upsert(numbered(part * 100, part * 100 + 300), batch_size=50)

    threads = [threading.Thread(target=write, args=(part,)) for part in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all_ids(core) == [f"id{i:05d}" for i in range(800)]


def interrupt_batches(monkeypatch, at_batch: int, interrupt) -> list[int]:
    """Make the ``at_batch``-th upsert run ``interrupt(step)`` after its COPY, mid-transaction;
    returns the list of attempts seen (one entry per batch attempt)."""
    attempts: list[int] = []
    real = operations.upsert_batch

    def upsert_batch(config, payload):
        attempts.append(len(attempts) + 1)
        plan = real(config, payload)
        result = None
        while True:
            try:
                step = plan.send(result)
            except StopIteration as finished:
                return finished.value
            result = yield step
            if isinstance(step, CopyIn) and len(attempts) == at_batch:
                result = yield from interrupt()

    monkeypatch.setattr(operations, "upsert_batch", upsert_batch)
    return attempts


def test_a_connection_killed_mid_batch_is_retried_exactly_once(core, monkeypatch, caplog):
    def kill_own_backend():
        return (yield Execute(sql.SQL("SELECT pg_terminate_backend(pg_backend_pid())")))

    attempts = interrupt_batches(monkeypatch, 3, kill_own_backend)
    assert core.upsert(numbered(0, 500), batch_size=100) == 500
    assert len(attempts) == 6
    assert "retrying" in caplog.text
    assert all_ids(core) == [f"id{i:05d}" for i in range(500)]


def test_server_restart_during_ingest_loses_and_duplicates_nothing(core, postgres, monkeypatch):
    core.count()
    restarted = threading.Event()

    def restart_server():
        postgres.stop()
        threading.Timer(1.5, lambda: (postgres.start(), restarted.set())).start()
        return (yield Execute(sql.SQL("SELECT 1")))

    attempts = interrupt_batches(monkeypatch, 5, restart_server)
    assert core.upsert(numbered(0, 1000), batch_size=100) == 1000
    assert restarted.wait(30)
    assert len(attempts) >= 11
    assert all_ids(core) == [f"id{i:05d}" for i in range(1000)]
    with psycopg.connect(postgres.dsn) as conn:
        rows = conn.execute(sql.SQL("SELECT count(*) FROM {}").format(core.config.table))
        assert rows.fetchone()[0] == 1000


def test_a_server_down_too_long_is_reported_then_recovered_from(postgres, collection_name):
    impatient = ConnectionOptions(
        dsn=postgres.dsn, connect_timeout=1.0, retry=RetryPolicy(attempts=2, first_delay=0.1)
    )
    core = PgVectorCore(CollectionConfig(collection_name, 8), impatient)
    core.upsert(numbered(0, 10))
    postgres.stop()
    try:
        started = time.monotonic()
        with pytest.raises(StoreConnectionError) as caught:
            core.upsert(numbered(10, 20))
        assert time.monotonic() - started < 15
        message = str(caught.value)
        assert "after 2 attempt(s)" in message and "MAMBA3_PG_DSN" in message
    finally:
        postgres.start()
    assert all_ids(core) == [f"id{i:05d}" for i in range(10)]
    core.upsert(numbered(10, 20))
    assert core.count() == 20
    core.drop()
    core.close()


def test_an_unreachable_server_fails_fast_with_the_reason(tmp_path, collection_name):
    nowhere = f"postgresql://postgres@/postgres?host={tmp_path}"
    core = PgVectorCore(
        CollectionConfig(collection_name, 8), ConnectionOptions(dsn=nowhere, connect_timeout=2)
    )
    started = time.monotonic()
    with pytest.raises(StoreConnectionError) as caught:
        core.count()
    assert time.monotonic() - started < 10
    message = str(caught.value)
    assert "Cannot connect to PostgreSQL" in message and str(tmp_path) in message
    assert "MAMBA3_PG_DSN" in message


def test_connection_errors_hide_the_password(tmp_path, collection_name):
    secret = f"postgresql://postgres:hunter2@/postgres?host={tmp_path}"
    core = PgVectorCore(
        CollectionConfig(collection_name, 8), ConnectionOptions(dsn=secret, connect_timeout=1)
    )
    with pytest.raises(StoreConnectionError) as caught:
        core.count()
    assert "hunter2" not in str(caught.value)


def test_pooled_connections_broken_by_a_restart_are_replaced(make_core, postgres, caplog):
    core = make_core(8)
    core.upsert(numbered(0, 10))
    postgres.stop()
    postgres.start()
    assert core.count() == 10
    assert "retrying" in caplog.text
