"""LlamaIndex fixtures of the LLM and embedding tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def isolated_settings(monkeypatch):
    """LlamaIndex's global ``Settings``, with every attribute (including what LlamaIndex
    builds lazily, such as the default transformations and prompt helper) restored after
    the test."""
    from llama_index.core import Settings

    for name, value in vars(Settings).items():
        monkeypatch.setattr(Settings, name, value)
    return Settings
