import random

import pytest
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.llms import MockLLM
from llama_index.core.schema import MetadataMode, NodeRelationship, NodeWithScore, TextNode

from mamba3_integrations.llama_index import Mamba3SemanticNodeParser, OrderPreservingPostprocessor
from mamba3_integrations.text import count_word_tokens
from tests.text.topics import llama_index_topic_embedding, topic_document


@pytest.fixture(scope="module")
def embed_model():
    return llama_index_topic_embedding()


@pytest.fixture(scope="module")
def documents():
    return [
        Document(text=topic_document(["space", "cooking"] * 3, 3, seed=1)[0], id_="alpha"),
        Document(text=topic_document(["cooking", "finance"] * 2, 3, seed=2)[0], id_="beta"),
        Document(text=topic_document(["music", "space"] * 2, 3, seed=3)[0], id_="gamma"),
    ]


@pytest.fixture(scope="module")
def index(embed_model, documents):
    parser = Mamba3SemanticNodeParser(embed_model=embed_model, buffer_size=0, max_tokens=60)
    return VectorStoreIndex.from_documents(
        documents, embed_model=embed_model, transformations=[parser]
    )


def reading_order_of(results: list[NodeWithScore]) -> list[tuple[str, int]]:
    """Documents by their best score (ties: id), then nodes by offset: the expected order."""
    best: dict[str, float] = {}
    for result in results:
        best[result.node.ref_doc_id] = max(best.get(result.node.ref_doc_id, -1.0), result.score)
    return sorted(
        ((r.node.ref_doc_id, r.node.start_char_idx) for r in results),
        key=lambda key: (-best[key[0]], key[0], key[1]),
    )


def positions(results: list[NodeWithScore]) -> list[tuple[str, int]]:
    return [(r.node.ref_doc_id, r.node.start_char_idx) for r in results]


def test_retrieved_nodes_come_back_in_reading_order(index):
    retrieved = index.as_retriever(similarity_top_k=8).retrieve("oven flour recipe")
    assert positions(retrieved) != reading_order_of(retrieved)
    ordered = OrderPreservingPostprocessor().postprocess_nodes(retrieved, query_str="unused")
    assert positions(ordered) == reading_order_of(retrieved)
    assert {id(r) for r in ordered} == {id(r) for r in retrieved}


def test_order_does_not_depend_on_the_input_order(index):
    retrieved = index.as_retriever(similarity_top_k=8).retrieve("stock market oven")
    postprocessor = OrderPreservingPostprocessor(token_budget=120)
    expected = postprocessor.postprocess_nodes(retrieved)
    for seed in range(5):
        shuffled = retrieved[:]
        random.Random(seed).shuffle(shuffled)
        assert positions(postprocessor.postprocess_nodes(shuffled)) == positions(expected)


def test_token_budget_and_min_score(index):
    retrieved = index.as_retriever(similarity_top_k=10).retrieve("guitar melody rocket")
    budget = 100
    kept = OrderPreservingPostprocessor(token_budget=budget).postprocess_nodes(retrieved)
    used = sum(count_word_tokens(r.node.get_content(MetadataMode.LLM)) for r in kept)
    assert (
        0
        < used
        <= budget
        < sum(count_word_tokens(r.node.get_content(MetadataMode.LLM)) for r in retrieved)
    )
    best = max(retrieved, key=lambda r: r.score)
    assert best in kept
    threshold = sorted(r.score for r in retrieved)[5]
    above = OrderPreservingPostprocessor(min_score=threshold).postprocess_nodes(retrieved)
    assert {id(r) for r in above} == {id(r) for r in retrieved if r.score >= threshold}


def test_query_engine_prompt_holds_the_context_in_reading_order(index):
    postprocessor = OrderPreservingPostprocessor(token_budget=150, render=True)
    engine = index.as_query_engine(
        llm=MockLLM(), similarity_top_k=8, node_postprocessors=[postprocessor]
    )
    response = engine.query("oven flour recipe")
    retrieved = index.as_retriever(similarity_top_k=8).retrieve("oven flour recipe")
    kept = OrderPreservingPostprocessor(token_budget=150).postprocess_nodes(retrieved)
    prompt = response.response  # MockLLM answers with the prompt it was given
    starts = [prompt.index(f'<chunk index="{r.node.start_char_idx}"') for r in kept]
    assert starts == sorted(starts)
    assert prompt.count("<document ") == len({r.node.ref_doc_id for r in kept})
    for result in kept:
        assert result.node.text.strip() in prompt
    assert [s.node.text for s in response.source_nodes][0].startswith('<document id="')


def merged_fixture_nodes() -> list[NodeWithScore]:
    text = "Alpha one. Alpha two. Alpha three. Alpha four."
    source = Document(text=text, id_="doc").as_related_node_info()
    spans = [(0, 11), (11, 22), (22, 35), (35, 47)]
    nodes = [
        TextNode(
            text=text[start:end],
            id_=f"n{number}",
            start_char_idx=start,
            end_char_idx=end,
            metadata={"part": number},
            relationships={NodeRelationship.SOURCE: source},
        )
        for number, (start, end) in enumerate(spans)
    ]
    return [
        NodeWithScore(node=nodes[0], score=0.4),
        NodeWithScore(node=nodes[1], score=0.9),
        NodeWithScore(node=nodes[3], score=0.5),
    ]


def test_merge_adjacent_joins_neighbouring_nodes_of_a_document():
    results = OrderPreservingPostprocessor(merge_adjacent=True).postprocess_nodes(
        merged_fixture_nodes()
    )
    assert [(r.node.text, r.score) for r in results] == [
        ("Alpha one. Alpha two. ", 0.9),
        ("Alpha four.", 0.5),
    ]
    merged = results[0].node
    assert (merged.start_char_idx, merged.end_char_idx, merged.metadata) == (0, 22, {"part": 0})
    assert merged.ref_doc_id == "doc" and merged.node_id not in {"n0", "n1"}


def test_nodes_without_scores_or_offsets_use_retrieval_rank_and_metadata_position():
    nodes = [
        TextNode(text="late", id_="x", metadata={"chunk_index": 7}),
        TextNode(text="early", id_="y", metadata={"chunk_index": 2}),
    ]
    source = Document(text="late early", id_="doc").as_related_node_info()
    for node in nodes:
        node.relationships[NodeRelationship.SOURCE] = source
    unscored = [NodeWithScore(node=node) for node in nodes]
    by_rank = OrderPreservingPostprocessor().postprocess_nodes(unscored)
    assert [r.node.text for r in by_rank] == ["late", "early"]
    by_metadata = OrderPreservingPostprocessor(position_metadata_key="chunk_index")
    assert [r.node.text for r in by_metadata.postprocess_nodes(unscored)] == ["early", "late"]
    assert [r.score for r in by_metadata.postprocess_nodes(unscored)] == [None, None]


def test_nodes_without_positions_never_collide_with_real_offsets():
    source = Document(text="at zero, and more", id_="doc").as_related_node_info()
    relationships = {NodeRelationship.SOURCE: source}
    placed = TextNode(
        text="at zero", id_="a", start_char_idx=0, end_char_idx=7, relationships=relationships
    )
    unplaced = TextNode(text="unknown", id_="b", relationships=relationships)
    results = OrderPreservingPostprocessor().postprocess_nodes(
        [NodeWithScore(node=unplaced, score=0.9), NodeWithScore(node=placed, score=0.8)]
    )
    assert [r.node.text for r in results] == ["unknown", "at zero"]


async def test_async_postprocessing_matches_sync():
    postprocessor = OrderPreservingPostprocessor(token_budget=6)
    nodes = merged_fixture_nodes()
    assert positions(await postprocessor.apostprocess_nodes(nodes)) == positions(
        postprocessor.postprocess_nodes(nodes)
    )


def test_invalid_options_fail_at_construction():
    with pytest.raises(ValueError, match="exactly once"):
        OrderPreservingPostprocessor(document_template="no placeholder")
    with pytest.raises(ValueError, match="token_budget must be >= 0"):
        OrderPreservingPostprocessor(token_budget=-5)
