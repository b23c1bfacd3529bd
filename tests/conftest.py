"""Shared fixtures: small real checkpoints built once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from tests.postgres_server import postgres  # noqa: F401  (one embedded server per session)

# Without a GPU the Triton kernels run (and are tested) in Triton's interpreter; the flag must
# be set before Triton is first imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

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


# ----------------------------------------------- LLM and embedding components
@pytest.fixture(scope="session")
def tiny_encoder_dir(tmp_path_factory) -> Path:
    """A random-weight embedding model folder (``fixtures.TINY_EMBEDDING`` settings,
    segments of 16 tokens, sliding-window attention only)."""
    from tests.fixtures import save_tiny_encoder

    return save_tiny_encoder(tmp_path_factory.mktemp("tiny_encoder"))


@pytest.fixture(scope="session")
def tiny_lm(tiny_lm_dir):
    """The ``tiny_lm_dir`` model, loaded once (components share it through ``lm=``)."""
    from mamba3_integrations import Mamba3ForCausalLM

    return Mamba3ForCausalLM.from_pretrained(tiny_lm_dir)


@pytest.fixture(scope="session")
def tiny_encoder(tiny_encoder_dir):
    """The ``tiny_encoder_dir`` model, loaded once as a ``Mamba3Encoder``."""
    from mamba3_integrations.runtime.embedding import Mamba3Encoder

    return Mamba3Encoder.from_pretrained(tiny_encoder_dir)


@pytest.fixture(scope="module")
def torch_single_thread():
    """Run the module's tiny models on one CPU thread (restored afterwards): their ops are
    too small to gain from threads, and on a busy machine threads make them far slower."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def isolated_settings(monkeypatch):
    """LlamaIndex's global ``Settings`` restored after every test, every attribute included
    (also what LlamaIndex builds lazily, such as the default transformations): examples and
    framework tests set them."""
    try:
        from llama_index.core import Settings
    except ImportError:
        return None
    for name, value in vars(Settings).items():
        monkeypatch.setattr(Settings, name, value)
    return Settings
