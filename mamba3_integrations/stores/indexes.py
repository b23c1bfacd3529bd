"""Approximate nearest-neighbour index settings: HNSW and IVFFlat."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from mamba3_integrations.errors import InputError


def _check_range(name: str, value: int, low: int, high: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InputError(f"{name} must be an integer from {low} to {high}, got {value!r}.")


@dataclass(frozen=True, slots=True)
class HnswIndex:
    """HNSW graph index: ``m`` links per node and ``ef_construction`` candidates at build time;
    ``ef_search`` candidates per query (raised to ``k`` when a query asks for more)."""

    m: int = 16
    ef_construction: int = 64
    ef_search: int = 40

    method = "hnsw"

    def __post_init__(self) -> None:
        _check_range("HnswIndex.m", self.m, 2, 100)
        _check_range("HnswIndex.ef_construction", self.ef_construction, 2 * self.m, 1000)
        _check_range("HnswIndex.ef_search", self.ef_search, 1, 1000)

    def build_options(self) -> dict[str, int]:
        """The ``WITH (...)`` storage parameters of ``CREATE INDEX``."""
        return {"m": self.m, "ef_construction": self.ef_construction}

    def search_settings(self, k: int, filtered: bool) -> dict[str, str]:
        """Transaction-local settings for one query returning ``k`` rows."""
        settings = {"hnsw.ef_search": str(min(1000, max(self.ef_search, k)))}
        if filtered:
            settings["hnsw.iterative_scan"] = "strict_order"
        return settings


@dataclass(frozen=True, slots=True)
class IvfflatIndex:
    """IVFFlat index: ``lists`` clusters built from the rows present at build time (rebuild it
    after loading most of the data); ``probes`` clusters searched per query."""

    lists: int = 100
    probes: int = 10

    method = "ivfflat"

    def __post_init__(self) -> None:
        _check_range("IvfflatIndex.lists", self.lists, 1, 32768)
        _check_range("IvfflatIndex.probes", self.probes, 1, self.lists)

    def build_options(self) -> dict[str, int]:
        """The ``WITH (...)`` storage parameters of ``CREATE INDEX``."""
        return {"lists": self.lists}

    def search_settings(self, k: int, filtered: bool) -> dict[str, str]:
        """Transaction-local settings for one query returning ``k`` rows."""
        settings = {"ivfflat.probes": str(self.probes)}
        if filtered:
            settings["ivfflat.iterative_scan"] = "relaxed_order"
        return settings


VectorIndex = HnswIndex | IvfflatIndex


def describe_index(index: VectorIndex | None) -> dict[str, Any]:
    """A JSON-able description of what the index looks like on disk (query settings excluded)."""
    if index is None:
        return {"method": "exact"}
    return {"method": index.method, **index.build_options()}


MIN_BUILD_MEMORY_MB = 64


def build_memory_mb(index: VectorIndex | None, dimension: int, rows: int, cap_mb: int) -> int:
    """``maintenance_work_mem`` (MB) for building ``index`` over ``rows`` vectors.

    HNSW keeps each vector and about ``2 * m`` neighbour links per row in memory; IVFFlat holds
    a sample of up to ``50 * lists`` vectors for k-means. Estimates get a 25% margin, at least
    64 MB and at most ``cap_mb``. Sizing to the need (not a fixed large value) matters because
    parallel builds reserve that much shared memory up front.
    """
    vector_bytes = 4 * dimension + 16
    if isinstance(index, HnswIndex):
        needed = rows * (vector_bytes + 64 * index.m + 256)
    elif isinstance(index, IvfflatIndex):
        needed = (min(rows, 50 * index.lists) + index.lists) * vector_bytes
    else:
        needed = 0
    estimate = int(needed * 1.25 / 2**20) + 1
    return max(MIN_BUILD_MEMORY_MB, min(cap_mb, estimate))
