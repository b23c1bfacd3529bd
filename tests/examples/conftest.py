"""Fixtures of the example tests: a small docs folder, model folders, the session's server."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Every model here is a local folder; never ask a hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

DEMO_DOCS = Path(__file__).resolve().parents[2] / "mamba3_integrations" / "data" / "demo_docs"


@pytest.fixture(scope="session")
def docs_dir(tmp_path_factory) -> Path:
    """Two short Markdown files from the bundled PostgreSQL docs (one cut after its first
    paragraphs)."""
    folder = tmp_path_factory.mktemp("docs")
    (folder / "mvcc-intro.md").write_text(
        (DEMO_DOCS / "postgresql" / "mvcc-intro.md").read_text(encoding="utf-8"), encoding="utf-8")
    text = (DEMO_DOCS / "postgresql" / "indexes-types.md").read_text(encoding="utf-8")
    (folder / "indexes-types.md").write_text(text[:text.rindex("\n\n", 0, 2000) + 1],
                                             encoding="utf-8")
    return folder


@pytest.fixture(scope="session")
def our_model_args() -> list[str]:
    """The model options of our examples: none, so they run on the shipped default models."""
    return []


@pytest.fixture(scope="session")
def hf_llm_dir(tmp_path_factory) -> Path:
    """A random-weight two-layer ``LlamaForCausalLM`` with the fixtures' BPE tokenizer and its
    chat template, for the "before" scripts."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    from tests.fixtures import make_tokenizer

    folder = tmp_path_factory.mktemp("hf_llm")
    tokenizer = make_tokenizer()
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=8192, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
