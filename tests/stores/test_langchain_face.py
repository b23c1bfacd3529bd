"""The LangChain face beyond the standard suite: filters, MMR, scores, retrievers, errors."""

from __future__ import annotations

import pytest
from langchain_core.documents import Document
from langchain_core.embeddings import Embeddings

from mamba3_integrations.errors import InputError
from mamba3_integrations.langchain import PGVector
from mamba3_integrations.stores import InvalidFilterError, SchemaMismatchError
from tests.stores.embeddings import DIMENSION, hash_embed

TEXTS = [
    "The cat sat on the warm mat",
    "A cat and a kitten sleep on the mat",
    "Interest rates rose again this quarter",
    "Central banks raise interest rates",
    "Hiking trails in the Alps in summer",
]
METADATAS = [
    {"topic": "pets", "year": 2019, "tags": ["cat"], "author": {"name": "Ann"}},
    {"topic": "pets", "year": 2021, "tags": ["cat", "kitten"]},
    {"topic": "finance", "year": 2022, "source": "news"},
    {"topic": "finance", "year": 2023, "source": "report"},
    {"topic": "travel", "year": 2020, "source": "blog"},
]


class HashingEmbeddings(Embeddings):
    """Deterministic bag-of-words embeddings (see ``tests/stores/embeddings.py``)."""

    def __init__(self) -> None:
        self.query_calls = 0

    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        return [hash_embed(text) for text in texts]

    def embed_query(self, text: str) -> list[float]:
        self.query_calls += 1
        return hash_embed(text)


@pytest.fixture
def store(postgres, collection_name):
    store = PGVector.from_texts(
        TEXTS,
        HashingEmbeddings(),
        metadatas=METADATAS,
        ids=[f"t{i}" for i in range(len(TEXTS))],
        collection_name=collection_name,
        connection=postgres.dsn,
        embedding_length=DIMENSION,
    )
    yield store
    store.delete_collection()
    store.close()


def ids_of(documents: list[Document]) -> list[str]:
    return [document.id for document in documents]


def test_similarity_search_returns_documents_with_similarities(store):
    pairs = store.similarity_search_with_score("cat on the mat", k=2)
    assert ids_of([doc for doc, _ in pairs]) == ["t0", "t1"]
    assert pairs[0][0] == Document(id="t0", page_content=TEXTS[0], metadata=METADATAS[0])
    assert 0 < pairs[1][1] < pairs[0][1] <= 1
    by_vector = store.similarity_search_by_vector(hash_embed("cat on the mat"), k=2)
    assert ids_of(by_vector) == ["t0", "t1"]


def test_relevance_scores_equal_similarities(store):
    scored = store.similarity_search_with_score("interest rates", k=3)
    relevant = store.similarity_search_with_relevance_scores("interest rates", k=3)
    assert [score for _, score in relevant] == pytest.approx([score for _, score in scored])


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"topic": "finance"}, ["t2", "t3"]),
        ({"year": {"$gte": 2021}}, ["t1", "t2", "t3"]),
        ({"year": {"$between": [2020, 2022]}}, ["t1", "t2", "t4"]),
        ({"topic": {"$in": ["travel", "pets"]}, "year": {"$lt": 2020}}, ["t0"]),
        ({"topic": {"$nin": ["pets"]}}, ["t2", "t3", "t4"]),
        ({"topic": {"$ne": "pets"}}, ["t2", "t3", "t4"]),
        ({"source": {"$exists": False}}, ["t0", "t1"]),
        ({"source": {"$like": "%o%"}}, ["t3", "t4"]),
        ({"source": {"$ilike": "NEWS"}}, ["t2"]),
        ({"$or": [{"year": 2019}, {"source": "blog"}]}, ["t0", "t4"]),
        ({"$and": [{"topic": "pets"}, {"year": {"$gt": 2020}}]}, ["t1"]),
        ({"author.name": "Ann"}, ["t0"]),
    ],
)
def test_dict_filters(store, spec, expected):
    found = store.similarity_search("anything at all", k=5, filter=spec)
    assert sorted(ids_of(found)) == expected


def test_filters_reject_injection_and_unknown_operators(store):
    with pytest.raises(InvalidFilterError):
        store.similarity_search("x", filter={"topic') OR 1=1; --": "pets"})
    with pytest.raises(InvalidFilterError, match=r"\$regex"):
        store.similarity_search("x", filter={"topic": {"$regex": ".*"}})
    quoted = store.similarity_search("x", filter={"topic": "pets' OR '1'='1"})
    assert quoted == []


def test_max_marginal_relevance_search_diversifies(store):
    plain = ids_of(store.similarity_search("cat mat interest", k=2))
    diverse = ids_of(
        store.max_marginal_relevance_search("cat mat interest", k=2, fetch_k=5, lambda_mult=0.1)
    )
    assert plain == ["t0", "t1"]
    assert diverse[0] == "t0" and diverse[1] != "t1"
    by_vector = store.max_marginal_relevance_search_by_vector(
        hash_embed("cat mat interest"), k=2, fetch_k=5, lambda_mult=0.1
    )
    assert ids_of(by_vector) == diverse


async def test_async_methods_mirror_sync_ones(store):
    assert ids_of(await store.asimilarity_search("cat on the mat", k=2)) == ["t0", "t1"]
    pairs = await store.asimilarity_search_with_score("interest rates", k=1)
    assert pairs[0][0].id == "t3"
    diverse = await store.amax_marginal_relevance_search(
        "cat mat interest", k=2, fetch_k=5, lambda_mult=0.1
    )
    assert ids_of(diverse) == ids_of(
        store.max_marginal_relevance_search("cat mat interest", k=2, fetch_k=5, lambda_mult=0.1)
    )
    filtered = await store.asimilarity_search_by_vector(
        hash_embed("rates"), k=5, filter={"source": "news"}
    )
    assert ids_of(filtered) == ["t2"]
    await store.adelete(["t2"])
    assert await store.aget_by_ids(["t2", "t3"]) == [
        Document(id="t3", page_content=TEXTS[3], metadata=METADATAS[3])
    ]
    await store.aclose()


def test_retrievers(store):
    similarity = store.as_retriever(search_kwargs={"k": 1, "filter": {"topic": "travel"}})
    assert ids_of(similarity.invoke("cat")) == ["t4"]
    mmr = store.as_retriever(search_type="mmr", search_kwargs={"k": 2, "lambda_mult": 0.1})
    assert len(mmr.invoke("cat mat interest")) == 2
    threshold = store.as_retriever(
        search_type="similarity_score_threshold",
        search_kwargs={"score_threshold": 0.5, "k": 5},
    )
    assert ids_of(threshold.invoke("interest rates")) == ["t3", "t2"]


def test_add_texts_upserts_by_id_and_generates_missing_ids(store):
    ids = store.add_texts(["new text", "another"], [{"n": 1}, {"n": 2}], ids=["t0", None])
    assert ids[0] == "t0" and len(ids[1]) == 36
    assert store.get_by_ids(["t0"])[0].page_content == "new text"
    assert store.core.count() == 6


def test_delete_by_ids_and_by_filter_and_refuse_delete_all(store):
    assert store.delete(["t0", "missing"]) is True
    assert store.delete(filter={"topic": "finance"}) is True
    assert sorted(ids_of(store.get_by_ids([f"t{i}" for i in range(5)]))) == ["t1", "t4"]
    with pytest.raises(InputError, match="clear"):
        store.delete()


def test_mismatched_inputs_are_rejected(store):
    with pytest.raises(InputError, match="2 metadatas for 1 texts"):
        store.add_texts(["one"], [{}, {}])
    with pytest.raises(InputError, match="dimension 64"):
        store.add_embeddings(["x"], [[1.0, 2.0]])
    with pytest.raises(InputError, match="dimension 64"):
        store.similarity_search_by_vector([0.5] * 3)


def test_dimension_is_probed_when_not_given(postgres, collection_name):
    embeddings = HashingEmbeddings()
    store = PGVector(embeddings, collection_name=collection_name, connection=postgres.dsn)
    assert store.core.config.dimension == DIMENSION
    assert embeddings.query_calls == 1
    store.add_texts(["hello"])
    with pytest.raises(SchemaMismatchError, match="distance is 'cosine', not 'l2'"):
        PGVector(
            embeddings,
            collection_name=collection_name,
            connection=postgres.dsn,
            distance_strategy="euclidean",
        ).similarity_search("hello")
    store.delete_collection()
    store.close()


@pytest.mark.parametrize("strategy", ["cosine", "euclidean", "max_inner_product"])
def test_every_distance_strategy_ranks_the_exact_text_first(postgres, collection_name, strategy):
    store = PGVector.from_texts(
        TEXTS,
        HashingEmbeddings(),
        collection_name=collection_name,
        connection=postgres.dsn,
        distance_strategy=strategy,
    )
    (best, score), *_ = store.similarity_search_with_score(TEXTS[2], k=2)
    assert best.page_content == TEXTS[2]
    assert score == pytest.approx(1.0, abs=1e-6)
    store.delete_collection()
    store.close()


async def test_afrom_texts_builds_a_store(postgres, collection_name):
    store = await PGVector.afrom_texts(
        TEXTS[:2], HashingEmbeddings(), collection_name=collection_name, connection=postgres.dsn
    )
    assert len(await store.aget_by_ids(await store.aadd_texts(["third"]))) == 1
    assert store.core.count() == 3
    store.delete_collection()
    store.close()
    await store.aclose()
