"""The official langchain-tests standard suites for Mamba3Embeddings."""

from __future__ import annotations

import pytest
from langchain_tests.integration_tests import EmbeddingsIntegrationTests
from langchain_tests.unit_tests import EmbeddingsUnitTests

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
