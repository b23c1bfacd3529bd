"""The LlamaIndex face through VectorStoreIndex: ingest, query modes, filters, deletes."""

from __future__ import annotations

import random

import pytest
from llama_index.core import Document, StorageContext, VectorStoreIndex
from llama_index.core.base.embeddings.base import BaseEmbedding
from llama_index.core.schema import NodeRelationship, RelatedNodeInfo, TextNode
from llama_index.core.vector_stores.types import (
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
    VectorStoreQuery,
    VectorStoreQueryMode,
)
from llama_index.core.vector_stores.utils import build_metadata_filter_fn

from mamba3_integrations.errors import InputError
from mamba3_integrations.llama_index import PGVectorStore
from mamba3_integrations.stores import InvalidFilterError
from tests.stores.embeddings import DIMENSION, hash_embed

DOCUMENTS = {
    "pets": "Cats purr on the warm mat. A kitten chases a ball of yarn.",
    "finance": "Interest rates rose again. Central banks fight inflation with rate hikes.",
    "travel": "Hiking trails in the Alps are busy in summer; huts serve warm soup.",
    "cooking": "Slow-cooked soup needs patience, onions and a warm kitchen.",
}


class HashingEmbedding(BaseEmbedding):
    """Deterministic bag-of-words embeddings (see ``tests/stores/embeddings.py``)."""

    def _get_query_embedding(self, query: str) -> list[float]:
        return hash_embed(query)

    def _get_text_embedding(self, text: str) -> list[float]:
        return hash_embed(text)

    async def _aget_query_embedding(self, query: str) -> list[float]:
        return hash_embed(query)


@pytest.fixture
def store(postgres, collection_name):
    store = PGVectorStore(
        table_name=collection_name, embed_dim=DIMENSION, connection_string=postgres.dsn
    )
    yield store
    store.client.drop()
    store.close()


@pytest.fixture
def index(store):
    documents = [
        Document(text=text, doc_id=key, metadata={"topic": key, "rank": i})
        for i, (key, text) in enumerate(DOCUMENTS.items())
    ]
    storage = StorageContext.from_defaults(vector_store=store)
    return VectorStoreIndex.from_documents(
        documents, storage_context=storage, embed_model=HashingEmbedding()
    )


def topics(nodes) -> list[str]:
    return [node.node.metadata["topic"] for node in nodes]


def test_index_retrieves_the_matching_document(index):
    hits = index.as_retriever(similarity_top_k=2).retrieve("kitten purr cats")
    assert topics(hits)[0] == "pets"
    assert hits[0].score > hits[1].score
    assert hits[0].node.get_content() == DOCUMENTS["pets"]


def test_from_vector_store_reads_what_an_earlier_index_wrote(index, store):
    reopened = VectorStoreIndex.from_vector_store(store, embed_model=HashingEmbedding())
    assert topics(reopened.as_retriever(similarity_top_k=1).retrieve("interest rates")) == [
        "finance"
    ]


def test_nodes_round_trip_with_relationships_and_metadata(store):
    node = TextNode(
        id_="node-1",
        text="Zürich 🚀 text",
        metadata={"title": "T", "pages": [1, 2], "nested": {"a": 1}},
        excluded_embed_metadata_keys=["pages"],
        relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id="source-doc")},
        embedding=hash_embed("Zürich text"),
    )
    assert store.add([node]) == ["node-1"]
    (loaded,) = store.get_nodes(["node-1"])
    assert loaded.node_id == "node-1"
    assert loaded.get_content() == node.get_content()
    assert loaded.metadata == node.metadata
    assert loaded.ref_doc_id == "source-doc"
    assert loaded.excluded_embed_metadata_keys == ["pages"]
    assert loaded.embedding is None


def test_delete_ref_doc_removes_all_its_nodes(index, store):
    index.delete_ref_doc("finance")
    remaining = {node.metadata["topic"] for node in store.get_nodes()}
    assert remaining == {"pets", "travel", "cooking"}


def test_delete_nodes_by_ids_and_filters(index, store):
    pets = store.get_nodes(
        filters=MetadataFilters(filters=[MetadataFilter(key="topic", value="pets")])
    )
    store.delete_nodes([pets[0].node_id])
    assert {n.metadata["topic"] for n in store.get_nodes()} == {"finance", "travel", "cooking"}
    store.delete_nodes(
        filters=MetadataFilters(
            filters=[MetadataFilter(key="rank", value=2, operator=FilterOperator.GTE)]
        )
    )
    assert {n.metadata["topic"] for n in store.get_nodes()} == {"finance"}
    with pytest.raises(InputError):
        store.delete_nodes()
    store.clear()
    assert store.get_nodes() == []


def test_retriever_filters(index):
    filters = MetadataFilters(
        filters=[
            MetadataFilter(key="topic", value=["travel", "cooking"], operator=FilterOperator.IN),
            MetadataFilters(
                filters=[MetadataFilter(key="rank", value=2, operator=FilterOperator.EQ)],
                condition=FilterCondition.NOT,
            ),
        ]
    )
    hits = index.as_retriever(similarity_top_k=4, filters=filters).retrieve("warm soup")
    assert topics(hits) == ["cooking"]


def test_query_by_doc_ids_and_node_ids(index, store):
    embedding = hash_embed("warm")
    by_doc = store.query(
        VectorStoreQuery(query_embedding=embedding, similarity_top_k=4, doc_ids=["travel"])
    )
    assert {node.metadata["topic"] for node in by_doc.nodes} == {"travel"}
    node_id = by_doc.ids[0]
    by_node = store.query(
        VectorStoreQuery(query_embedding=embedding, similarity_top_k=4, node_ids=[node_id])
    )
    assert by_node.ids == [node_id]
    assert len(by_node.similarities) == 1


def test_text_search_mode_needs_no_embedding(index, store):
    retriever = index.as_retriever(vector_store_query_mode="text_search", similarity_top_k=2)
    assert topics(retriever.retrieve("inflation")) == ["finance"]
    sparse = store.query(
        VectorStoreQuery(query_str="warm", mode=VectorStoreQueryMode.SPARSE, sparse_top_k=5)
    )
    assert {node.metadata["topic"] for node in sparse.nodes} == {"pets", "travel", "cooking"}


def test_hybrid_mode_fuses_vector_and_text(index, store):
    query = VectorStoreQuery(
        query_embedding=hash_embed("kitten yarn"),
        query_str="inflation",
        similarity_top_k=1,
        sparse_top_k=1,
        hybrid_top_k=2,
        mode=VectorStoreQueryMode.HYBRID,
    )
    result = store.query(query)
    assert {node.metadata["topic"] for node in result.nodes} == {"pets", "finance"}
    assert result.similarities == pytest.approx([1 / 61 * 0.5, 1 / 61 * 0.5])
    retriever = index.as_retriever(
        vector_store_query_mode="hybrid", similarity_top_k=2, sparse_top_k=2, alpha=0.9
    )
    assert topics(retriever.retrieve("kitten yarn inflation"))[0] == "pets"


def test_mmr_mode(index, store):
    query = VectorStoreQuery(
        query_embedding=hash_embed("warm soup"),
        similarity_top_k=2,
        mode=VectorStoreQueryMode.MMR,
        mmr_threshold=0.2,
    )
    result = store.query(query, mmr_prefetch_k=4)
    assert len(result.nodes) == 2
    retriever = index.as_retriever(
        vector_store_query_mode="mmr",
        similarity_top_k=2,
        vector_store_kwargs={"mmr_threshold": 1.0},
    )
    plain = index.as_retriever(similarity_top_k=2)
    assert topics(retriever.retrieve("warm soup")) == topics(plain.retrieve("warm soup"))


def test_unsupported_mode_and_missing_inputs_are_explained(store):
    with pytest.raises(InputError, match="SVM is not supported"):
        store.query(VectorStoreQuery(query_embedding=[0.0] * DIMENSION, mode="svm"))
    with pytest.raises(InputError, match="needs query_embedding"):
        store.query(VectorStoreQuery(query_str="x"))
    with pytest.raises(InputError, match="needs query_str"):
        store.query(VectorStoreQuery(mode=VectorStoreQueryMode.TEXT_SEARCH))
    with pytest.raises(InputError, match="embedding"):
        store.add([TextNode(id_="no-embedding", text="x")])


def test_unsafe_filter_keys_raise(index):
    filters = MetadataFilters(filters=[MetadataFilter(key="a'); DROP TABLE x; --", value=1)])
    with pytest.raises(InvalidFilterError):
        index.as_retriever(filters=filters).retrieve("cats")


async def test_async_methods(index, store):
    hits = await index.as_retriever(similarity_top_k=1).aretrieve("interest rates")
    assert topics(hits) == ["finance"]
    node = TextNode(id_="async-node", text="async text", embedding=hash_embed("async text"))
    assert await store.async_add([node]) == ["async-node"]
    assert [n.node_id for n in await store.aget_nodes(["async-node"])] == ["async-node"]
    await store.adelete_nodes(["async-node"])
    await store.adelete("pets")
    assert {n.metadata["topic"] for n in await store.aget_nodes()} == {
        "finance",
        "travel",
        "cooking",
    }
    result = await store.aquery(
        VectorStoreQuery(
            query_str="soup", mode=VectorStoreQueryMode.TEXT_SEARCH, similarity_top_k=5
        )
    )
    assert {node.metadata["topic"] for node in result.nodes} == {"travel", "cooking"}
    await store.aclear()
    assert await store.aget_nodes() == []
    await store.aclose()


def random_filter(rng: random.Random, depth: int = 0) -> MetadataFilter | MetadataFilters:
    if depth < 2 and rng.random() < 0.3:
        return MetadataFilters(
            filters=[random_filter(rng, depth + 1) for _ in range(rng.randint(1, 3))],
            condition=rng.choice(list(FilterCondition)),
        )
    numbers = [0, 1, 2.5, 3, 7, 9]
    words = ["alpha", "beta", "gamma", "Alpha"]
    operator = rng.choice(list(FilterOperator))
    if operator in (FilterOperator.GT, FilterOperator.GTE, FilterOperator.LT, FilterOperator.LTE):
        return MetadataFilter(
            key=rng.choice(["n", "x"]), value=rng.choice(numbers), operator=operator
        )
    if operator in (FilterOperator.EQ, FilterOperator.NE):
        key = rng.choice(["n", "s", "x"])
        value = rng.choice(words if key == "s" else numbers)
        return MetadataFilter(key=key, value=value, operator=operator)
    if operator in (FilterOperator.IN, FilterOperator.NIN):
        if rng.random() < 0.5:
            return MetadataFilter(key="s", value=rng.sample(words, 2), operator=operator)
        return MetadataFilter(key="n", value=rng.sample([0, 1, 3, 7, 9], 2), operator=operator)
    if operator in (FilterOperator.ANY, FilterOperator.ALL):
        return MetadataFilter(key="tags", value=rng.sample(words, 2), operator=operator)
    if operator is FilterOperator.CONTAINS:
        return MetadataFilter(key="tags", value=rng.choice(words), operator=operator)
    if operator in (FilterOperator.TEXT_MATCH, FilterOperator.TEXT_MATCH_INSENSITIVE):
        return MetadataFilter(
            key="s", value=rng.choice(["al", "ph", "AL", "a_", "%"]), operator=operator
        )
    return MetadataFilter(key=rng.choice(["tags", "x", "s"]), value=None, operator=operator)


def reference_match(filters: MetadataFilter | MetadataFilters, metadata: dict) -> bool:
    """LlamaIndex's in-memory semantics: its own function for each leaf, combined as it does
    (AND: all, OR: any, NOT: none), recursively since it does not nest groups itself."""
    if isinstance(filters, MetadataFilter):
        leaf = build_metadata_filter_fn(lambda _: metadata, MetadataFilters(filters=[filters]))
        return leaf("row")
    results = [reference_match(item, metadata) for item in filters.filters]
    if filters.condition is FilterCondition.AND:
        return all(results)
    if filters.condition is FilterCondition.OR:
        return any(results)
    return not any(results)


def test_filters_agree_with_llama_index_in_memory_semantics(store):
    rng = random.Random(7)
    metadata = {}
    for i in range(60):
        entry: dict = {"n": rng.choice([0, 1, 2.5, 3, 7, 9])}
        if rng.random() < 0.8:
            entry["s"] = rng.choice(["alpha", "beta", "gamma", "Alpha", "al_pha", "100%"])
        if rng.random() < 0.7:
            entry["tags"] = rng.sample(["alpha", "beta", "gamma", "Alpha"], rng.randint(0, 3))
        if rng.random() < 0.5:
            entry["x"] = rng.choice([1, 5, 9])
        metadata[f"n{i}"] = entry
    store.add(
        [
            TextNode(id_=key, text=key, metadata=value, embedding=hash_embed(key))
            for key, value in metadata.items()
        ]
    )
    for _ in range(150):
        filters = random_filter(rng, depth=1)
        if isinstance(filters, MetadataFilter):
            filters = MetadataFilters(
                filters=[filters], condition=rng.choice(list(FilterCondition))
            )
        wanted = sorted(key for key, value in metadata.items() if reference_match(filters, value))
        found = sorted(node.node_id for node in store.get_nodes(filters=filters))
        assert found == wanted, filters
