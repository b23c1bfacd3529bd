"""Turn records into validated, de-duplicated batches ready for binary ``COPY``."""

from __future__ import annotations

import asyncio
import itertools
import json
import re
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from mamba3_integrations.errors import InputError
from mamba3_integrations.stores.copy_format import encode_rows
from mamba3_integrations.stores.records import Record
from mamba3_integrations.stores.vectors import as_matrix

_ESCAPED_NUL = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")
"""``\\u0000`` escaped in JSON text (preceded by an even number of backslashes)."""


@dataclass(frozen=True, slots=True)
class PreparedBatch:
    """The ids of one batch (each once) and its binary COPY stream."""

    ids: list[str]
    payload: bytes


def prepare_batches(
    records: Iterable[Record], dimension: int, batch_size: int
) -> Iterator[PreparedBatch]:
    """Validate and encode ``records`` lazily, ``batch_size`` at a time."""
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InputError(f"batch_size must be a positive integer, got {batch_size!r}.")
    iterator = iter(records)
    while chunk := list(itertools.islice(iterator, batch_size)):
        yield prepare_batch(chunk, dimension)


def prepare_batch(records: list[Record], dimension: int) -> PreparedBatch:
    """Validate one batch; when an id repeats, its last record wins."""
    latest: dict[str, Record] = {}
    for record in records:
        if not isinstance(record, Record):
            raise InputError(f"Expected a Record, got {type(record).__name__}.")
        _check_record(record)
        latest[record.id] = record
    ids = list(latest)
    rows = list(latest.values())
    embeddings = as_matrix([r.embedding for r in rows], dimension, ids)
    payload = encode_rows(
        ids,
        [r.document_id for r in rows],
        [r.text for r in rows],
        [_metadata_json(r) for r in rows],
        embeddings,
    )
    return PreparedBatch(ids, payload)


def take_rows(
    batches: Iterator[PreparedBatch], min_rows: int
) -> tuple[list[PreparedBatch], int, Iterator[PreparedBatch]]:
    """Read batches until ``min_rows`` rows are seen: those batches, their row count, the rest."""
    head: list[PreparedBatch] = []
    rows = 0
    for batch in batches:
        head.append(batch)
        rows += len(batch.ids)
        if rows >= min_rows:
            break
    return head, rows, batches


def prefetched(batches: Iterator[PreparedBatch]) -> Iterator[PreparedBatch]:
    """Yield ``batches`` while a worker thread already prepares the next one, so that Python
    encoding overlaps with the database writing the current batch."""
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="mamba3-ingest") as worker:
        upcoming = worker.submit(next, batches, None)
        while (batch := upcoming.result()) is not None:
            upcoming = worker.submit(next, batches, None)
            yield batch


async def prefetched_async(batches: Iterator[PreparedBatch]) -> AsyncIterator[PreparedBatch]:
    """Async twin of :func:`prefetched`: the next batch is prepared in a worker thread."""
    upcoming = asyncio.ensure_future(asyncio.to_thread(next, batches, None))
    try:
        while (batch := await upcoming) is not None:
            upcoming = asyncio.ensure_future(asyncio.to_thread(next, batches, None))
            yield batch
    finally:
        upcoming.cancel()


def _check_record(record: Record) -> None:
    if not isinstance(record.id, str) or not record.id:
        raise InputError(f"Every record needs a non-empty string id, got {record.id!r}.")
    if not isinstance(record.text, str):
        raise InputError(f"The text of record {record.id!r} must be a string.")
    if "\x00" in record.text or "\x00" in record.id:
        raise InputError(
            f"Record {record.id!r} contains a NUL character, which PostgreSQL text cannot store."
        )
    if record.document_id is not None and not isinstance(record.document_id, str):
        raise InputError(f"The document_id of record {record.id!r} must be a string or None.")


def _metadata_json(record: Record) -> str:
    if not isinstance(record.metadata, Mapping):
        raise InputError(f"The metadata of record {record.id!r} must be a dict.")
    try:
        text = json.dumps(dict(record.metadata), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise InputError(
            f"The metadata of record {record.id!r} cannot be stored as JSON: {error}."
        ) from None
    if _ESCAPED_NUL.search(text):
        raise InputError(
            f"The metadata of record {record.id!r} contains a NUL character, which jsonb cannot "
            "store."
        )
    return text
