"""Shared fixtures: small real checkpoints built once per test session."""

from __future__ import annotations

from pathlib import Path

import pytest

GOLDEN = Path(__file__).resolve().parents[1].parent / "shared" / "golden"


@pytest.fixture(scope="session")
def golden_dir() -> Path:
    """The official goldens (``../shared/golden`` beside the checkout)."""
    if not GOLDEN.is_dir():
        pytest.skip(f"goldens not found at {GOLDEN}")
    return GOLDEN


@pytest.fixture(scope="session")
def tiny_lm_dir(tmp_path_factory) -> Path:
    """A random-weight hybrid LM folder (Mamba-3, global and sliding-window attention)
    with a byte-level BPE tokenizer and chat template."""
    from tests.fixtures import save_tiny_lm

    return save_tiny_lm(tmp_path_factory.mktemp("tiny_lm"))
