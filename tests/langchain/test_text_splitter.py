import logging

import pytest
from langchain_core.documents import Document
from langchain_core.vectorstores import InMemoryVectorStore

from mamba3_integrations.errors import ConfigError
from mamba3_integrations.langchain import Mamba3SemanticTextSplitter
from tests.text.topics import langchain_topic_embeddings, topic_document


@pytest.fixture
def embeddings():
    return langchain_topic_embeddings()


def test_split_text_rebuilds_the_text_and_cuts_at_the_topic_shift(embeddings):
    text, shifts = topic_document(["space", "finance"], sentences=8)
    chunks = Mamba3SemanticTextSplitter(embeddings).split_text(text)
    assert "".join(chunks) == text
    assert len(chunks[0]) == shifts[0]


def test_create_documents_with_start_index_and_copied_metadata(embeddings):
    first, _ = topic_document(["music", "cooking"], sentences=8, seed=1)
    second, _ = topic_document(["space"], sentences=4, seed=2)
    metadata = [{"source": "a", "tags": ["x"]}, {"source": "b", "tags": ["y"]}]
    splitter = Mamba3SemanticTextSplitter(embeddings, add_start_index=True, max_tokens=40)
    documents = splitter.create_documents([first, second], metadatas=metadata)
    for source, text in (("a", first), ("b", second)):
        parts = [doc for doc in documents if doc.metadata["source"] == source]
        assert "".join(doc.page_content for doc in parts) == text
        for doc in parts:
            start = doc.metadata["start_index"]
            assert text[start : start + len(doc.page_content)] == doc.page_content
    documents[0].metadata["tags"].append("changed")
    assert documents[1].metadata["tags"] == ["x"] and metadata[0]["tags"] == ["x"]


def test_start_index_is_exact_when_chunk_text_repeats(embeddings):
    splitter = Mamba3SemanticTextSplitter(embeddings, add_start_index=True, max_tokens=4)
    documents = splitter.create_documents(["Moon. Moon. Moon. "])
    assert [(d.page_content, d.metadata["start_index"]) for d in documents] == [
        ("Moon. Moon. ", 0),
        ("Moon. ", 12),
    ]


def test_split_documents_in_a_vector_store_pipeline(embeddings):
    text, shifts = topic_document(["space", "cooking", "finance"], sentences=6, seed=4)
    splitter = Mamba3SemanticTextSplitter(
        embeddings, add_start_index=True, breakpoint="threshold", buffer_size=0
    )
    chunks = splitter.split_documents([Document(page_content=text, metadata={"source": "doc"})])
    assert [doc.metadata["start_index"] for doc in chunks[1:]] == shifts
    store = InMemoryVectorStore.from_documents(chunks, embeddings)
    found = store.as_retriever(search_kwargs={"k": 1}).invoke("stock bond inflation")
    assert found[0].metadata == {"source": "doc", "start_index": shifts[1]}


def test_tokenizer_bounds_every_chunk(embeddings):
    text, _ = topic_document(["music"], sentences=12)
    splitter = Mamba3SemanticTextSplitter(embeddings, tokenizer=len, max_tokens=100)
    chunks = splitter.transform_documents([Document(page_content=text)])
    assert max(len(doc.page_content) for doc in chunks) <= 100
    assert "".join(doc.page_content for doc in chunks) == text


def test_blank_texts_give_no_chunks_and_a_warning(embeddings, caplog):
    splitter = Mamba3SemanticTextSplitter(embeddings)
    with caplog.at_level(logging.WARNING):
        documents = splitter.create_documents(["", "Real text here.", "  \n"])
    assert [doc.page_content for doc in documents] == ["Real text here."]
    assert "skipping 2 empty or whitespace-only texts" in caplog.text
    assert splitter.split_text(" ") == []


def test_invalid_options_and_mismatched_metadata(embeddings):
    with pytest.raises(ConfigError, match="unknown breakpoint"):
        Mamba3SemanticTextSplitter(embeddings, breakpoint="semantic")
    with pytest.raises(ValueError, match="2 texts but 1 metadatas"):
        Mamba3SemanticTextSplitter(embeddings).create_documents(["a.", "b."], [{}])
