"""The asyncio core: same behaviour as the sync one, concurrent tasks, event-loop changes."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from mamba3_integrations.errors import InputError
from mamba3_integrations.stores import (
    AsyncPgVectorCore,
    CollectionConfig,
    Condition,
    Op,
    PgVectorCore,
    Record,
    SchemaMismatchError,
)
from tests.stores.embeddings import hash_embed


def records(start: int, stop: int) -> list[Record]:
    texts = ["red apples", "green pears", "ripe bananas", "red cherries"]
    return [
        Record(
            id=f"a{i:04d}",
            embedding=hash_embed(texts[i % 4], 8),
            text=texts[i % 4],
            metadata={"i": i},
            document_id=f"doc{i % 3}",
        )
        for i in range(start, stop)
    ]


@pytest.fixture
async def async_core(postgres, collection_name):
    core = AsyncPgVectorCore(CollectionConfig(collection_name, 8), postgres.options())
    yield core
    await core.drop()
    await core.close()


async def test_async_core_round_trip(async_core):
    assert await async_core.upsert(records(0, 40), batch_size=16) == 40
    assert await async_core.count() == 40
    assert [r.id for r in await async_core.get(["a0003", "a0001"])] == ["a0003", "a0001"]
    hits = await async_core.search(hash_embed("red apples", 8), 3, where=Condition("i", Op.LT, 8))
    assert [hit.record.id for hit in hits] == ["a0000", "a0004", "a0003"]
    assert hits[0].score == pytest.approx(1.0)
    text_hits = await async_core.text_search("cherries", 20)
    assert {hit.record.id for hit in text_hits} == {f"a{i:04d}" for i in range(3, 40, 4)}
    fused = await async_core.hybrid_search(hash_embed("green pears", 8), "bananas", 4)
    assert len(fused) == 4
    query = hash_embed("red apples", 8)
    diverse = await async_core.mmr_search(query, 2, fetch_k=20, lambda_mult=0.25)
    assert len({hit.record.text for hit in diverse}) == 2
    assert await async_core.delete(document_ids=["doc0"]) == 14
    await async_core.clear()
    assert await async_core.count() == 0


async def test_async_and_sync_cores_share_one_collection(async_core, postgres):
    await async_core.upsert(records(0, 5))
    sync_core = PgVectorCore(async_core.config, postgres.options())
    assert sync_core.count() == 5
    sync_core.close()


async def test_concurrent_tasks_upserting_overlapping_ids(async_core):
    await asyncio.gather(*(async_core.upsert(records(i * 10, i * 10 + 50)) for i in range(8)))
    assert await async_core.count() == 120


async def test_async_errors_match_the_sync_ones(async_core, postgres):
    with pytest.raises(InputError, match="dimension 8"):
        await async_core.search([1.0, 2.0])
    await async_core.count()
    other = AsyncPgVectorCore(CollectionConfig(async_core.config.name, 9), postgres.options())
    with pytest.raises(SchemaMismatchError):
        await other.count()
    await other.close()


async def test_empty_calls_need_no_database(postgres, collection_name):
    core = AsyncPgVectorCore(CollectionConfig(collection_name, 8), postgres.options())
    assert await core.get([]) == []
    assert await core.search(np.ones(8), 0) == []
    assert core._pool is None
    await core.close()


def test_one_core_used_from_two_event_loops(postgres, collection_name):
    core = AsyncPgVectorCore(CollectionConfig(collection_name, 8), postgres.options())
    asyncio.run(core.upsert(records(0, 3)))
    assert asyncio.run(core.count()) == 3

    async def finish() -> None:
        await core.drop()
        await core.close()

    asyncio.run(finish())
