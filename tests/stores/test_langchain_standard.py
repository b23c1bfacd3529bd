"""LangChain's standard vector store integration suite, sync and async, on the real server."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from langchain_tests.integration_tests.vectorstores import VectorStoreIntegrationTests

from mamba3_integrations.langchain import PGVector


class TestPGVectorStandard(VectorStoreIntegrationTests):
    @pytest.fixture
    async def vectorstore(self, postgres, collection_name) -> AsyncIterator[PGVector]:
        """An empty store on a fresh collection, dropped afterwards."""
        store = PGVector(
            self.get_embeddings(), collection_name=collection_name, connection=postgres.dsn
        )
        try:
            yield store
        finally:
            store.delete_collection()
            store.close()
            await store.aclose()
