"""Benchmark the pgvector store against llama-index-vector-stores-postgres and langchain-postgres.

Every contender gets the same clustered random vectors (unit length, cosine distance), the same
embedded PostgreSQL + pgvector server and the same HNSW settings (m=16, ef_construction=64,
ef_search=40), and uses its own public API:

- ``mamba3 LlamaIndex``: ``PGVectorStore.add(all_nodes)`` (loads with binary COPY, builds HNSW
  after the load);
- ``mamba3 LangChain``: ``PGVector.add_embeddings(...)``, same engine;
- ``llama-index-postgres``: ``PGVectorStore.add(all_nodes)`` on a store without index, then a
  store with ``hnsw_kwargs`` creates the index (faster than its default of inserting into an
  existing index);
- ``langchain-postgres``: ``PGVectorStore.add_embeddings(...)`` then
  ``apply_vector_index(HNSWIndex(...))``.

Ingest time runs from the call until the HNSW index exists (stores ingest one after the other).
Queries ask for the 10 nearest neighbours one at a time, each query visiting every store in a
random order so that background load affects all alike; recall@10 is measured against exact
brute force in numpy.

Run: ``python benchmarks/bench_pgvector.py --count 100000`` (needs ``llama-index-vector-stores-
postgres``, ``langchain-postgres`` and ``matplotlib``). Writes ``benchmarks/results/
pgvector.json`` and ``pgvector.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import psycopg

RESULTS = Path(__file__).resolve().parent / "results"
HNSW = {"m": 16, "ef_construction": 64, "ef_search": 40}
K = 10
WORDS = ["alpha", "beta", "gamma", "delta", "river", "mountain", "cloud", "stone", "ember"]


@dataclass
class Dataset:
    """Rows to ingest, queries, and the exact top-``K`` row indices of every query."""

    ids: list[str]
    texts: list[str]
    metadatas: list[dict[str, Any]]
    vectors: np.ndarray
    queries: np.ndarray
    truth: np.ndarray


def make_dataset(count: int, dimension: int, queries: int, clusters: int, seed: int) -> Dataset:
    """Gaussian clusters on the unit sphere, so nearest neighbours are meaningful."""
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(clusters, dimension))
    labels = rng.integers(0, clusters, size=count + queries)
    points = centers[labels] + rng.normal(scale=0.6, size=(count + queries, dimension))
    points /= np.linalg.norm(points, axis=1, keepdims=True)
    points = points.astype(np.float32)
    vectors, query_vectors = points[:count], points[count:]
    words = rng.integers(0, len(WORDS), size=(count, 6))
    return Dataset(
        ids=[str(uuid.UUID(int=i + 1)) for i in range(count)],
        texts=[f"item {i} " + " ".join(WORDS[w] for w in row) for i, row in enumerate(words)],
        metadatas=[{"cluster": int(labels[i]), "item": i} for i in range(count)],
        vectors=vectors,
        queries=query_vectors,
        truth=exact_top_k(vectors, query_vectors, K),
    )


def exact_top_k(vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` highest cosine similarities (vectors are unit length)."""
    scores = queries @ vectors.T
    top = np.argpartition(-scores, k, axis=1)[:, :k]
    order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1)
    return np.take_along_axis(top, order, axis=1)


def as_nodes(data: Dataset) -> list[Any]:
    """LlamaIndex text nodes carrying the dataset's embeddings."""
    from llama_index.core.schema import TextNode

    return [
        TextNode(id_=id_, text=text, metadata=metadata, embedding=vector)
        for id_, text, metadata, vector in zip(
            data.ids, data.texts, data.metadatas, data.vectors.tolist(), strict=True
        )
    ]


def as_embeddings(data: Dataset) -> dict[str, Any]:
    """Keyword arguments of LangChain's ``add_embeddings`` for the dataset."""
    return {
        "texts": data.texts,
        "embeddings": data.vectors.tolist(),
        "metadatas": data.metadatas,
        "ids": data.ids,
    }


@dataclass
class Contender:
    """A store under test, driven through its public API.

    ``prepare`` builds its input objects (not timed); ``load`` ingests them; ``build_index``,
    for stores that index in a separate call, creates the HNSW index; ``search`` returns the ids
    of the ``K`` nearest rows. ``index_seconds`` collects index builds timed inside ``load``.
    """

    name: str
    prepare: Callable[[Dataset], Any]
    load: Callable[[Any], Any]
    search: Callable[[np.ndarray], list[str]]
    close: Callable[[], None]
    build_index: Callable[[], Any] | None = None
    index_seconds: list[float] = field(default_factory=list)


def timing_index_builds(core: Any, into: list[float]) -> None:
    """Record how long the core's in-load index builds take (wraps that one bound method)."""
    build = core.rebuild_index

    def timed(*args: Any, **kwargs: Any) -> None:
        started = time.perf_counter()
        build(*args, **kwargs)
        into.append(time.perf_counter() - started)

    core.rebuild_index = timed


def mamba3_llama_index(dsn: str, dimension: int) -> Contender:
    from llama_index.core.vector_stores.types import VectorStoreQuery

    from mamba3_integrations.llama_index import PGVectorStore
    from mamba3_integrations.stores import HnswIndex

    store = PGVectorStore(
        table_name="bench_mamba3_llama",
        embed_dim=dimension,
        connection_string=dsn,
        index=HnswIndex(**HNSW),
    )

    def search(vector: np.ndarray) -> list[str]:
        result = store.query(VectorStoreQuery(query_embedding=vector.tolist(), similarity_top_k=K))
        return list(result.ids)

    def close() -> None:
        store.client.drop()
        store.close()

    contender = Contender("mamba3 LlamaIndex", as_nodes, store.add, search, close)
    timing_index_builds(store.client, contender.index_seconds)
    return contender


def mamba3_langchain(dsn: str, dimension: int) -> Contender:
    from langchain_core.embeddings import FakeEmbeddings

    from mamba3_integrations.langchain import PGVector
    from mamba3_integrations.stores import HnswIndex

    store = PGVector(
        FakeEmbeddings(size=dimension),
        collection_name="bench_mamba3_langchain",
        connection=dsn,
        embedding_length=dimension,
        index=HnswIndex(**HNSW),
    )

    def search(vector: np.ndarray) -> list[str]:
        return [doc.id for doc in store.similarity_search_by_vector(vector.tolist(), k=K)]

    def close() -> None:
        store.delete_collection()
        store.close()

    contender = Contender(
        "mamba3 LangChain",
        as_embeddings,
        lambda inputs: store.add_embeddings(**inputs),
        search,
        close,
    )
    timing_index_builds(store.core, contender.index_seconds)
    return contender


def llama_index_postgres(dsn: str, dimension: int) -> Contender:
    from llama_index.core.vector_stores.types import VectorStoreQuery
    from llama_index.vector_stores.postgres import PGVectorStore

    socket = psycopg.conninfo.conninfo_to_dict(dsn)["host"]
    settings = {
        "connection_string": f"postgresql+psycopg2://postgres@/postgres?host={socket}",
        "async_connection_string": f"postgresql+asyncpg://postgres@/postgres?host={socket}",
        "table_name": "bench_llama_index_pg",
        "embed_dim": dimension,
        "use_jsonb": True,
    }
    loader = PGVectorStore.from_params(**settings)
    hnsw = {
        "hnsw_m": HNSW["m"],
        "hnsw_ef_construction": HNSW["ef_construction"],
        "hnsw_ef_search": HNSW["ef_search"],
        "hnsw_dist_method": "vector_cosine_ops",
    }
    indexed = PGVectorStore.from_params(**settings, hnsw_kwargs=hnsw)

    def search(vector: np.ndarray) -> list[str]:
        query = VectorStoreQuery(query_embedding=vector.tolist(), similarity_top_k=K)
        return list(indexed.query(query).ids)

    def close() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS public.data_bench_llama_index_pg")
        for store in (loader, indexed):
            if store.client is not None:
                store.client.dispose()

    return Contender(
        "llama-index-postgres",
        as_nodes,
        loader.add,
        search,
        close,
        build_index=lambda: indexed.add([]),
    )


def langchain_postgres(dsn: str, dimension: int) -> Contender:
    from langchain_core.embeddings import FakeEmbeddings
    from langchain_postgres import PGEngine, PGVectorStore
    from langchain_postgres.v2.indexes import HNSWIndex, HNSWQueryOptions

    socket = psycopg.conninfo.conninfo_to_dict(dsn)["host"]
    engine = PGEngine.from_connection_string(
        f"postgresql+psycopg://postgres@/postgres?host={socket}"
    )
    table = "bench_langchain_pg"
    engine.init_vectorstore_table(table, dimension, overwrite_existing=True)
    store = PGVectorStore.create_sync(
        engine,
        FakeEmbeddings(size=dimension),
        table,
        index_query_options=HNSWQueryOptions(ef_search=HNSW["ef_search"]),
    )
    index = HNSWIndex(m=HNSW["m"], ef_construction=HNSW["ef_construction"])

    def search(vector: np.ndarray) -> list[str]:
        return [doc.id for doc in store.similarity_search_by_vector(vector.tolist(), k=K)]

    def close() -> None:
        engine.drop_table(table)
        engine._run_as_sync(engine.close())

    return Contender(
        "langchain-postgres",
        as_embeddings,
        lambda inputs: store.add_embeddings(**inputs),
        search,
        close,
        build_index=lambda: store.apply_vector_index(index),
    )


CONTENDERS = {
    "mamba3-llama-index": mamba3_llama_index,
    "mamba3-langchain": mamba3_langchain,
    "llama-index-postgres": llama_index_postgres,
    "langchain-postgres": langchain_postgres,
}


def ingest(contender: Contender, data: Dataset) -> dict[str, Any]:
    """Load and index the dataset; returns the timings."""
    inputs = contender.prepare(data)
    started = time.perf_counter()
    contender.load(inputs)
    loaded = time.perf_counter()
    if contender.build_index is not None:
        contender.build_index()
    finished = time.perf_counter()
    total = finished - started
    index_seconds = sum(contender.index_seconds) + (finished - loaded)
    return {
        "name": contender.name,
        "load_seconds": round(total - index_seconds, 2),
        "index_seconds": round(index_seconds, 2),
        "ingest_seconds": round(total, 2),
        "ingest_rows_per_second": round(len(data.ids) / total),
    }


def query_all(contenders: list[Contender], data: Dataset, warmup: int, seed: int) -> list[dict]:
    """Latency and recall per contender; every query visits all contenders in a random order,
    so background load on the machine affects them alike."""
    position = {id_: i for i, id_ in enumerate(data.ids)}
    for contender in contenders:
        for vector in data.queries[:warmup]:
            contender.search(vector)
    rng = np.random.default_rng(seed)
    latencies: list[list[float]] = [[] for _ in contenders]
    recalls: list[list[float]] = [[] for _ in contenders]
    for vector, truth in zip(data.queries, data.truth, strict=True):
        for i in rng.permutation(len(contenders)):
            began = time.perf_counter()
            found = contenders[i].search(vector)
            latencies[i].append((time.perf_counter() - began) * 1000)
            recalls[i].append(len({position[id_] for id_ in found} & set(truth.tolist())) / K)
    results = []
    for times, hits in zip(latencies, recalls, strict=True):
        quantiles = statistics.quantiles(times, n=100)
        results.append(
            {
                "query_p50_ms": round(quantiles[49], 2),
                "query_p95_ms": round(quantiles[94], 2),
                "recall_at_10": round(float(np.mean(hits)), 4),
            }
        )
    return results


def describe_machine(dsn: str) -> dict[str, Any]:
    """CPU, memory and server versions, for the results file."""
    cpu = platform.processor() or platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    memory_gib = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    with psycopg.connect(dsn) as conn:
        server = conn.execute("SHOW server_version").fetchone()[0]
        pgvector = conn.execute(
            "SELECT default_version FROM pg_available_extensions WHERE name = 'vector'"
        ).fetchone()[0]
        settings = dict(
            conn.execute(
                "SELECT name, setting || coalesce(unit, '') FROM pg_settings WHERE name IN "
                "('shared_buffers', 'maintenance_work_mem', 'max_parallel_maintenance_workers')"
            ).fetchall()
        )
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(memory_gib, 1),
        "python": platform.python_version(),
        "postgresql": server,
        "pgvector": pgvector,
        "server_settings": settings,
    }


def print_table(results: list[dict[str, Any]]) -> None:
    header = (
        f"{'store':<22}{'ingest rows/s':>14}{'ingest s':>10}{'load s':>9}{'index s':>9}"
        f"{'p50 ms':>9}{'p95 ms':>9}{'recall@10':>11}"
    )
    print(header)
    print("-" * len(header))
    for row in results:
        print(
            f"{row['name']:<22}{row['ingest_rows_per_second']:>14,}{row['ingest_seconds']:>10.1f}"
            f"{row['load_seconds']:>9.1f}{row['index_seconds']:>9.1f}{row['query_p50_ms']:>9.2f}"
            f"{row['query_p95_ms']:>9.2f}{row['recall_at_10']:>11.3f}"
        )


def plot(results: list[dict[str, Any]], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [row["name"] for row in results]
    colors = ["#1f77b4" if name.startswith("mamba3") else "#999999" for name in names]
    figure, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    axes[0].barh(names, [row["ingest_rows_per_second"] for row in results], color=colors)
    axes[0].set_title("Ingest incl. HNSW build (rows/s, higher is better)")
    positions = np.arange(len(names))
    p50 = [row["query_p50_ms"] for row in results]
    p95 = [row["query_p95_ms"] for row in results]
    axes[1].barh(positions - 0.2, p50, 0.4, label="p50", color=colors)
    axes[1].barh(positions + 0.2, p95, 0.4, label="p95", color=colors, alpha=0.5)
    axes[1].set_yticks(positions, names)
    axes[1].set_title("Query latency, k=10 (ms, lower is better)")
    axes[1].legend()
    recalls = [row["recall_at_10"] for row in results]
    axes[2].barh(names, recalls, color=colors)
    axes[2].set_xlim(max(0.0, min(recalls) - 0.1), 1.02)
    axes[2].set_title("Recall@10 vs exact search")
    for ax, label_format in zip(axes, ["{:,.0f}", "{:.2f}", "{:.3f}"], strict=True):
        ax.margins(x=0.15)
        for bars in ax.containers:
            ax.bar_label(bars, fmt=label_format, padding=2, fontsize=8)
    for ax in axes[1:]:
        ax.set_yticklabels([])
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=100_000, help="rows to ingest")
    parser.add_argument("--dimension", type=int, default=384)
    parser.add_argument("--queries", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20, help="untimed queries first")
    parser.add_argument("--clusters", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--dsn", help="use this server instead of a fresh embedded one")
    parser.add_argument(
        "--only", nargs="+", choices=sorted(CONTENDERS), help="run only these contenders"
    )
    parser.add_argument("--output-dir", type=Path, default=RESULTS)
    args = parser.parse_args()

    data = make_dataset(args.count, args.dimension, args.queries, args.clusters, args.seed)
    scratch = None
    if args.dsn:
        dsn = args.dsn
    else:
        from mamba3_integrations.stores import start_embedded_server

        scratch = Path(tempfile.mkdtemp(prefix="mamba3-bench-"))
        dsn = start_embedded_server(scratch / "pgdata")
    contenders: list[Contender] = []
    try:
        machine = describe_machine(dsn)
        ingested = []
        for key in args.only or CONTENDERS:
            print(f"ingesting with {key}...", flush=True)
            contenders.append(CONTENDERS[key](dsn, args.dimension))
            ingested.append(ingest(contenders[-1], data))
            print(json.dumps(ingested[-1]), flush=True)
        print("querying...", flush=True)
        queried = query_all(contenders, data, args.warmup, args.seed)
        results = [{**a, **b} for a, b in zip(ingested, queried, strict=True)]
    finally:
        for contender in contenders:
            contender.close()
        if scratch is not None:
            import pgserver

            pgserver.get_server(scratch / "pgdata").cleanup()
            shutil.rmtree(scratch, ignore_errors=True)
    print()
    print_table(results)
    args.output_dir.mkdir(parents=True, exist_ok=True)
    report = {
        "rows": args.count,
        "dimension": args.dimension,
        "queries": args.queries,
        "k": K,
        "hnsw": HNSW,
        "distance": "cosine",
        "machine": machine,
        "results": results,
    }
    (args.output_dir / "pgvector.json").write_text(json.dumps(report, indent=2) + "\n")
    title = (
        f"{args.count:,} x {args.dimension}-d vectors, HNSW m=16 ef_construction=64 "
        f"ef_search=40; {machine['cores']}-core CPU, PostgreSQL {machine['postgresql']} + "
        f"pgvector {machine['pgvector']}"
    )
    plot(results, title, args.output_dir / "pgvector.png")


if __name__ == "__main__":
    main()
