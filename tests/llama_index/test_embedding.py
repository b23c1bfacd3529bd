"""Mamba3Embedding (LlamaIndex) alone and end to end with Mamba3LLM: Settings, ingestion,
VectorStoreIndex, query and chat engines."""

from __future__ import annotations

import pytest
from llama_index.core import Document, VectorStoreIndex
from llama_index.core.ingestion import IngestionPipeline
from llama_index.core.node_parser import SentenceSplitter

from mamba3_integrations.errors import CheckpointError, InputError
from mamba3_integrations.llama_index.embedding import Mamba3Embedding
from mamba3_integrations.llama_index.llm import Mamba3LLM
from tests.fixtures import CORPUS

pytestmark = pytest.mark.usefixtures("torch_single_thread")


@pytest.fixture
def embed_model(tiny_encoder) -> Mamba3Embedding:
    return Mamba3Embedding(encoder=tiny_encoder, embed_batch_size=4)


@pytest.fixture
def settings(embed_model, tiny_lm, isolated_settings):
    """Our embedding model and LLM as the global Settings, restored afterwards."""
    isolated_settings.embed_model = embed_model
    isolated_settings.llm = Mamba3LLM(lm=tiny_lm, max_new_tokens=8)
    return isolated_settings


def test_query_and_text_embeddings(embed_model, tiny_encoder):
    query = embed_model.get_query_embedding("what is pgvector")
    assert query == tiny_encoder.embed_queries(["what is pgvector"])[0]
    assert len(query) == 32 and isinstance(query[0], float)
    texts = CORPUS[:5]
    batch = embed_model.get_text_embedding_batch(texts)
    assert batch == tiny_encoder.embed_documents(texts)
    assert embed_model.get_text_embedding(texts[1]) == pytest.approx(batch[1], abs=1e-6)
    assert query != embed_model.get_text_embedding("what is pgvector")  # different prefixes


async def test_async_forms_match_sync(embed_model):
    texts = CORPUS[:3]
    assert await embed_model.aget_query_embedding("q") == embed_model.get_query_embedding("q")
    assert await embed_model.aget_text_embedding(texts[0]) == embed_model.get_text_embedding(
        texts[0])
    assert await embed_model.aget_text_embedding_batch(texts) == (
        embed_model.get_text_embedding_batch(texts))


def test_loading_from_a_folder(tiny_encoder_dir):
    model = Mamba3Embedding(model_path=str(tiny_encoder_dir), embed_batch_size=3)
    assert model.model_name == tiny_encoder_dir.name
    assert model.encoder.batch_size == 3
    assert len(model.get_query_embedding("hello")) == model.encoder.dimension


def test_ingestion_pipeline(embed_model):
    pipeline = IngestionPipeline(transformations=[SentenceSplitter(chunk_size=32,
                                                                   chunk_overlap=0),
                                                  embed_model])
    nodes = pipeline.run(documents=[Document(text=t) for t in CORPUS])
    assert len(nodes) >= len(CORPUS)
    assert all(len(n.embedding) == 32 for n in nodes)


def test_index_query_and_chat_engines(settings):
    index = VectorStoreIndex.from_documents([Document(text=t) for t in CORPUS])
    response = index.as_query_engine(similarity_top_k=2).query("What does pgvector add?")
    assert isinstance(response.response, str) and response.response
    assert len(response.source_nodes) == 2
    streaming = index.as_query_engine(similarity_top_k=2, streaming=True).query(
        "What does pgvector add?")
    tokens = list(streaming.response_gen)
    assert len(tokens) >= 2 and "".join(tokens) == response.response
    chat = index.as_chat_engine(chat_mode="context", similarity_top_k=1)
    assert chat.chat("Tell me about Mamba-3.").response


async def test_async_query_engine(settings):
    index = VectorStoreIndex.from_documents([Document(text=t) for t in CORPUS[:3]])
    response = await index.as_query_engine(similarity_top_k=1).aquery("What is Mamba-3?")
    assert response.response


def test_bad_input(embed_model, tiny_lm_dir):
    with pytest.raises(InputError, match="empty or only whitespace"):
        embed_model.get_text_embedding(" \n ")
    with pytest.raises(InputError, match="empty or only whitespace"):
        embed_model.get_query_embedding("")
    with pytest.raises(InputError, match="not valid Unicode"):
        embed_model.get_text_embedding(b"\xc3(".decode("utf-8", "surrogateescape"))
    with pytest.raises(InputError, match="is bytes"):
        embed_model.get_text_embedding_batch(["ok", b"bytes"])
    with pytest.raises(CheckpointError, match="is not an embedding model"):
        Mamba3Embedding(model_path=str(tiny_lm_dir))
