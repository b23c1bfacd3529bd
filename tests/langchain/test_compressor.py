import logging

import pytest
from langchain_core.documents import Document
from langchain_core.runnables import RunnableLambda
from langchain_core.vectorstores import InMemoryVectorStore

from mamba3_integrations.errors import InputError
from mamba3_integrations.langchain import Mamba3SemanticTextSplitter, OrderPreservingCompressor
from tests.text.topics import langchain_topic_embeddings, topic_document


def doc(text: str, **metadata) -> Document:
    return Document(page_content=text, metadata=metadata)


def contents(documents) -> list[str]:
    return [d.page_content for d in documents]


def test_documents_follow_best_score_then_position():
    documents = [
        doc("b-late", source="b", start_index=50, relevance_score=0.9),
        doc("a-late", source="a", start_index=40, relevance_score=0.8),
        doc("a-early", source="a", start_index=0, relevance_score=0.3),
        doc("b-early", source="b", start_index=10, relevance_score=0.2),
    ]
    result = OrderPreservingCompressor().compress_documents(documents, "query")
    assert contents(result) == ["b-early", "b-late", "a-early", "a-late"]
    assert result[0] is documents[3]


def test_configurable_keys():
    documents = [
        doc("two", file="x", part=2, rating=0.5),
        doc("one", file="x", part=1, rating=0.4),
        doc("other", file="y", part=0, rating=0.9),
    ]
    custom = OrderPreservingCompressor(
        score_keys=("rating",), doc_id_keys=("file",), position_keys=("part",)
    )
    assert contents(custom.compress_documents(documents, "q")) == ["other", "one", "two"]
    # With the default keys nothing is found: retrieval rank scores, each document alone.
    default = OrderPreservingCompressor().compress_documents(documents, "q")
    assert contents(default) == ["two", "one", "other"]


def test_missing_scores_fall_back_to_retrieval_rank(caplog):
    documents = [doc("first", source="s", start_index=9), doc("second", source="t")]
    budgeted = OrderPreservingCompressor(min_score=0.75)
    assert contents(budgeted.compress_documents(documents, "q")) == ["first"]
    mixed = [doc("scored", relevance_score=0.1), doc("unscored")]
    with caplog.at_level(logging.WARNING):
        result = OrderPreservingCompressor().compress_documents(mixed, "q")
    assert contents(result) == ["scored", "unscored"]
    assert "1 of 2 chunks have no relevance score" in caplog.text


def test_token_budget_min_score_and_merging():
    text = "Alpha one. Alpha two. Alpha three."
    documents = [
        doc(text[11:22], source="d", start_index=11, relevance_score=0.9),
        doc(text[0:11], source="d", start_index=0, relevance_score=0.6),
        doc(text[22:], source="d", start_index=22, relevance_score=0.2),
    ]
    budget = OrderPreservingCompressor(token_budget=6)
    assert contents(budget.compress_documents(documents, "q")) == [text[0:11], text[11:22]]
    merging = OrderPreservingCompressor(merge_adjacent=True, min_score=0.5)
    merged = merging.compress_documents(documents, "q")
    assert contents(merged) == [text[0:22]]
    assert merged[0].metadata == {"source": "d", "start_index": 0, "relevance_score": 0.6}


def test_render_rewrites_page_content_with_markers():
    documents = [doc("Body text.", source="guide", start_index=3, relevance_score=0.5)]
    rendered = OrderPreservingCompressor(render=True).compress_documents(documents, "q")
    assert rendered[0].page_content == (
        '<document id="guide" rank="1">\n<chunk index="3" score="0.500">\nBody text.\n</chunk>\n'
        "</document>"
    )
    assert documents[0].page_content == "Body text."


def test_bad_scores_and_options_are_reported():
    with pytest.raises(InputError, match="non-numeric relevance score 'high'"):
        OrderPreservingCompressor().compress_documents([doc("x", relevance_score="high")], "q")
    with pytest.raises(ValueError, match="token_budget must be >= 0"):
        OrderPreservingCompressor(token_budget=-1)
    with pytest.raises(ValueError, match="KeyError"):
        OrderPreservingCompressor(chunk_template="{nope}")


@pytest.fixture
def store():
    embeddings = langchain_topic_embeddings()
    texts = [
        topic_document(["space", "cooking", "space", "cooking"], 3, seed=1)[0],
        topic_document(["finance", "cooking", "music"], 3, seed=2)[0],
    ]
    splitter = Mamba3SemanticTextSplitter(
        embeddings, add_start_index=True, breakpoint="threshold", buffer_size=0
    )
    chunks = splitter.create_documents(texts, [{"source": "alpha"}, {"source": "beta"}])
    return InMemoryVectorStore.from_documents(chunks, embeddings)


def format_docs(documents: list[Document]) -> str:
    return "\n\n".join(f"[{d.metadata['source']}@{d.metadata['start_index']}]" for d in documents)


def reading_order(documents: list[Document]) -> list[Document]:
    first_seen = {}
    for number, document in enumerate(documents):
        first_seen.setdefault(document.metadata["source"], number)
    return sorted(
        documents, key=lambda d: (first_seen[d.metadata["source"]], d.metadata["start_index"])
    )


def test_contextual_compression_retriever_in_an_lcel_chain(store):
    retrievers = pytest.importorskip("langchain_classic.retrievers")
    base = store.as_retriever(search_kwargs={"k": 5})
    query = "oven flour dough"
    retrieved = base.invoke(query)
    retriever = retrievers.ContextualCompressionRetriever(
        base_compressor=OrderPreservingCompressor(), base_retriever=base
    )
    chain = retriever | RunnableLambda(format_docs)
    assert format_docs(retrieved) != format_docs(reading_order(retrieved))
    assert chain.invoke(query) == format_docs(reading_order(retrieved))


def test_compression_with_scores_from_the_store_and_a_budget(store):
    retrievers = pytest.importorskip("langchain_classic.retrievers")

    def retrieve_with_scores(query: str) -> list[Document]:
        return [
            Document(page_content=d.page_content, metadata={**d.metadata, "relevance_score": s})
            for d, s in store.similarity_search_with_score(query, k=6)
        ]

    compressor = OrderPreservingCompressor(token_budget=90, min_score=0.2)
    retriever = retrievers.ContextualCompressionRetriever(
        base_compressor=compressor, base_retriever=RunnableLambda(retrieve_with_scores)
    )
    result = (retriever | RunnableLambda(format_docs)).invoke("music guitar")
    kept = compressor.compress_documents(retrieve_with_scores("music guitar"), "music guitar")
    assert result == format_docs(kept)
    assert sum(len(d.page_content.split()) for d in kept) <= 90
    assert all(d.metadata["relevance_score"] >= 0.2 for d in kept)
    assert kept[0].metadata["source"] == "beta"
