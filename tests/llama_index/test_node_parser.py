import logging

import pytest
from llama_index.core import Document, Settings, VectorStoreIndex
from llama_index.core.ingestion import IngestionPipeline
from llama_index.core.schema import NodeRelationship, TextNode

from mamba3_integrations.llama_index import Mamba3SemanticNodeParser
from tests.text.topics import llama_index_topic_embedding, topic_document


@pytest.fixture
def embed_model():
    return llama_index_topic_embedding()


@pytest.fixture
def documents():
    guide, guide_shifts = topic_document(["space", "cooking"], sentences=8, seed=1)
    notes, notes_shifts = topic_document(["finance", "music"], sentences=8, seed=2)
    return [
        Document(text=guide, id_="guide", metadata={"title": "Guide"}),
        Document(text=notes, id_="notes", metadata={"title": "Notes"}),
    ], {"guide": guide_shifts, "notes": notes_shifts}


def check_nodes_of(nodes: list[TextNode], document: Document, shifts: list[int]) -> None:
    """Nodes rebuild the document, carry exact offsets, relationships and its metadata."""
    assert "".join(node.text for node in nodes) == document.text
    assert [node.start_char_idx for node in nodes[1:]] == shifts
    position = 0
    for number, node in enumerate(nodes):
        assert node.ref_doc_id == document.id_
        assert node.relationships[NodeRelationship.SOURCE].node_id == document.id_
        assert (node.start_char_idx, node.end_char_idx) == (position, position + len(node.text))
        assert node.metadata == document.metadata
        previous = node.relationships.get(NodeRelationship.PREVIOUS)
        following = node.relationships.get(NodeRelationship.NEXT)
        assert (previous.node_id if previous else None) == (
            nodes[number - 1].node_id if number else None
        )
        assert (following.node_id if following else None) == (
            nodes[number + 1].node_id if number + 1 < len(nodes) else None
        )
        position = node.end_char_idx


def by_document(nodes: list[TextNode]) -> dict[str, list[TextNode]]:
    grouped: dict[str, list[TextNode]] = {}
    for node in nodes:
        grouped.setdefault(node.ref_doc_id, []).append(node)
    return grouped


def test_ingestion_pipeline_builds_ordered_related_nodes(embed_model, documents, caplog):
    docs, shifts = documents
    parser = Mamba3SemanticNodeParser(embed_model=embed_model)
    pipeline = IngestionPipeline(transformations=[parser])
    with caplog.at_level(logging.WARNING):
        nodes = pipeline.run(documents=[*docs, Document(text=" \n ", id_="blank")])
    assert "skipping node blank" in caplog.text
    grouped = by_document(nodes)
    assert list(grouped) == ["guide", "notes"]
    for doc in docs:
        check_nodes_of(grouped[doc.id_], doc, shifts[doc.id_])


async def test_async_pipeline_gives_the_same_split(embed_model, documents):
    docs, shifts = documents
    parser = Mamba3SemanticNodeParser(embed_model=embed_model)
    grouped = by_document(await IngestionPipeline(transformations=[parser]).arun(documents=docs))
    for doc in docs:
        check_nodes_of(grouped[doc.id_], doc, shifts[doc.id_])


def test_offsets_stay_exact_when_chunk_text_repeats(embed_model):
    doc = Document(text="Moon. Moon. Moon. ", id_="echo")
    parser = Mamba3SemanticNodeParser(embed_model=embed_model, max_tokens=4)
    nodes = parser.get_nodes_from_documents([doc])
    assert [(n.text, n.start_char_idx, n.end_char_idx) for n in nodes] == [
        ("Moon. Moon. ", 0, 12),
        ("Moon. ", 12, 18),
    ]


def test_max_tokens_with_a_custom_tokenizer_and_no_prev_next(embed_model, documents):
    docs, _ = documents
    parser = Mamba3SemanticNodeParser(
        embed_model=embed_model, tokenizer=len, max_tokens=120, include_prev_next_rel=False
    )
    nodes = parser.get_nodes_from_documents(docs)
    assert max(len(node.text) for node in nodes) <= 120
    assert all(set(node.relationships) == {NodeRelationship.SOURCE} for node in nodes)


def test_vector_store_index_with_transformations_retrieves_offset_nodes(embed_model, documents):
    docs, shifts = documents
    parser = Mamba3SemanticNodeParser(embed_model=embed_model)
    index = VectorStoreIndex.from_documents(docs, embed_model=embed_model, transformations=[parser])
    results = index.as_retriever(similarity_top_k=3).retrieve("oven flour dough recipe")
    best = results[0].node
    assert best.ref_doc_id == "guide" and best.start_char_idx == shifts["guide"][0]
    for result in results:
        node = result.node
        source = next(doc for doc in docs if doc.id_ == node.ref_doc_id)
        assert source.text[node.start_char_idx : node.end_char_idx] == node.text


def test_settings_provide_the_embed_model_and_the_node_parser(embed_model, documents, monkeypatch):
    docs, shifts = documents
    parser = Mamba3SemanticNodeParser()
    monkeypatch.setattr(Settings, "_embed_model", embed_model)
    monkeypatch.setattr(Settings, "_node_parser", parser)
    index = VectorStoreIndex.from_documents(docs)
    stored = [index.docstore.get_node(node_id) for node_id in index.index_struct.nodes_dict]
    grouped = by_document(sorted(stored, key=lambda node: node.start_char_idx))
    for doc in docs:
        check_nodes_of(grouped[doc.id_], doc, shifts[doc.id_])


def test_invalid_options_fail_at_construction():
    with pytest.raises(ValueError, match="unknown breakpoint"):
        Mamba3SemanticNodeParser(breakpoint="nope")
    with pytest.raises(ValueError, match="min_tokens"):
        Mamba3SemanticNodeParser(max_tokens=8, min_tokens=9)


def test_serializes_without_the_tokenizer(embed_model):
    parser = Mamba3SemanticNodeParser(embed_model=embed_model, tokenizer=len, max_tokens=64)
    data = parser.to_dict()
    assert data["class_name"] == "Mamba3SemanticNodeParser"
    assert data["max_tokens"] == 64 and "tokenizer" not in data
