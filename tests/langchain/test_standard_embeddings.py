"""The official langchain-tests standard suites for Mamba3Embeddings."""

from __future__ import annotations

import pytest
from langchain_tests.integration_tests import EmbeddingsIntegrationTests
from langchain_tests.unit_tests import EmbeddingsUnitTests

from mamba3_integrations.errors import CheckpointError, InputError
from mamba3_integrations.langchain.embeddings import Mamba3Embeddings

pytestmark = pytest.mark.usefixtures("torch_single_thread")


class Mamba3EmbeddingsSuite:
    """The model is the session's tiny random-weight embedding model folder."""

    model_path = None

    @pytest.fixture(autouse=True)
    def _tiny_encoder_dir(self, tiny_encoder_dir):
        self.model_path = str(tiny_encoder_dir)

    @property
    def embeddings_class(self) -> type[Mamba3Embeddings]:
        return Mamba3Embeddings

    @property
    def embedding_model_params(self) -> dict:
        return {"model_path": self.model_path}


class TestMamba3EmbeddingsUnit(Mamba3EmbeddingsSuite, EmbeddingsUnitTests):
    pass


class TestMamba3EmbeddingsIntegration(Mamba3EmbeddingsSuite, EmbeddingsIntegrationTests):
    pass


def test_prefixes_and_batching(tiny_encoder):
    embeddings = Mamba3Embeddings(encoder=tiny_encoder)
    texts = ["short", "a somewhat longer text about state space models", "mid length"]
    assert embeddings.embed_documents(texts) == tiny_encoder.embed_documents(texts)
    assert embeddings.embed_query("what is pgvector") == (
        tiny_encoder.embed_queries(["what is pgvector"])[0])
    assert embeddings.embed_query("x") != embeddings.embed_documents(["x"])[0]
    assert embeddings.embed_documents([]) == []


async def test_async_forms_match_sync(tiny_encoder):
    embeddings = Mamba3Embeddings(encoder=tiny_encoder)
    assert await embeddings.aembed_query("q") == embeddings.embed_query("q")
    assert await embeddings.aembed_documents(["a", "b"]) == embeddings.embed_documents(["a", "b"])


def test_bad_input(tiny_encoder, tiny_lm_dir):
    embeddings = Mamba3Embeddings(encoder=tiny_encoder)
    with pytest.raises(InputError, match="text 1 is empty or only whitespace"):
        embeddings.embed_documents(["ok", "   "])
    with pytest.raises(InputError, match="not valid Unicode"):
        embeddings.embed_query(b"\x80abc".decode("utf-8", "surrogateescape"))
    with pytest.raises(InputError, match="text 0 has type int"):
        embeddings.embed_documents([1])
    with pytest.raises(CheckpointError, match="is not an embedding model"):
        Mamba3Embeddings(model_path=str(tiny_lm_dir))
    with pytest.raises(ValueError, match="Extra inputs are not permitted"):
        Mamba3Embeddings(encoder=tiny_encoder, normalise=True)
