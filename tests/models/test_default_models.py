"""The default models shipped inside the package (docs/default_models.md): they load from
their folders, have the promised architecture, generate, and the embedder ranks a
held-out dictionary definition above unrelated ones."""

from __future__ import annotations

import json

import pytest
import torch

from mamba3_integrations import CheckpointError, Mamba3ForCausalLM
from mamba3_integrations import models as default_models
from mamba3_integrations.models import default_embedding_path, default_lm_path

MAX_SHARD_BYTES = 15_000_000
MAX_TOTAL_BYTES = 80_000_000

# WordNet 3.0 entries of the HELD-OUT split (never trained on), with their first sense.
HELD_OUT = [
    ("glacier", "n 1: a slowly moving mass of ice"),
    ("pencil", "n 1: a thin cylindrical pointed writing implement; a rod of marking "
               "substance encased in wood"),
    ("friday", "n 1: the sixth day of the week; the fifth working day"),
    ("tuxedo", "n 1: semiformal evening dress for men"),
    ("chateau", "n 1: an impressive country house (or castle) in France"),
    ("retractor", "n 1: surgical instrument that holds back the edges of a surgical incision"),
]


def _shipped() -> bool:
    try:
        default_lm_path()
        default_embedding_path()
    except CheckpointError:
        return False
    return True


shipped = pytest.mark.skipif(not _shipped(), reason="the default model weights are not in "
                             "this checkout (docs/default_models.md says how to train them)")


def test_missing_model_folder_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setattr(default_models, "MODELS_DIR", tmp_path)
    with pytest.raises(CheckpointError, match="mamba3-hybrid-mini.*not installed"):
        default_lm_path()
    with pytest.raises(CheckpointError, match="mamba3-embed-mini.*not installed"):
        default_embedding_path()


@shipped
@pytest.mark.parametrize("path", [default_lm_path, default_embedding_path])
def test_weights_are_sharded_bf16_within_limits(path):
    folder = path()
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    shards = sorted(folder.glob("model-*-of-*.safetensors"))
    assert {s.name for s in shards} == set(index["weight_map"].values())
    assert all(s.stat().st_size <= MAX_SHARD_BYTES for s in shards)
    total = sum(s.stat().st_size for f in (default_lm_path(), default_embedding_path())
                for s in f.glob("model-*.safetensors"))
    assert total <= MAX_TOTAL_BYTES
    from safetensors import safe_open

    with safe_open(str(shards[0]), framework="pt") as f:
        dtypes = {f.get_slice(k).get_dtype() for k in f.keys()}  # noqa: SIM118
    assert "BF16" in dtypes


@pytest.fixture(scope="module")
def lm() -> Mamba3ForCausalLM:
    return Mamba3ForCausalLM.from_pretrained(default_lm_path())


@shipped
def test_lm_is_a_hybrid_with_global_and_window_attention(lm):
    config = lm.config
    windowed = set(config.attn_window)
    global_layers = set(config.attn_layer_idx) - windowed
    assert windowed and global_layers
    assert config.attn_cfg["causal"] is True
    assert config.n_layer - len(config.attn_layer_idx) >= config.n_layer // 2  # mostly Mamba-3
    assert 10e6 <= sum(p.numel() for p in lm.parameters()) <= 60e6
    assert lm.tokenizer is not None and lm.tokenizer.eos_token_id is not None


@shipped
def test_lm_generates_greedily(lm):
    ids = torch.tensor([lm.tokenizer("PostgreSQL is a")["input_ids"]])
    out = lm.generate(ids, max_new_tokens=8)
    assert ids.shape[1] < out.shape[1] <= ids.shape[1] + 8
    assert torch.equal(out[:, :ids.shape[1]], ids)
    text = lm.generate_text("PostgreSQL is a", max_new_tokens=8)
    assert isinstance(text, str)
    assert lm.generate_text("PostgreSQL is a", max_new_tokens=8) == text


@pytest.fixture(scope="module")
def encoder():
    from mamba3_integrations.runtime.embedding import Mamba3Encoder

    return Mamba3Encoder.from_pretrained(default_embedding_path())


@shipped
def test_embedder_is_a_384_dim_normalised_mamba3_encoder(encoder):
    assert encoder.dimension == 384
    assert encoder.settings.pooling == "mean" and encoder.settings.normalize
    assert Mamba3ForCausalLM.from_pretrained(default_embedding_path()).config.d_model == 384
    vectors = encoder.embed(["a short text", "another one, a little longer than the first"],
                            as_tensor=True)
    assert vectors.shape == (2, 384)
    assert torch.allclose(vectors.norm(dim=-1), torch.ones(2), atol=1e-4)


@shipped
def test_embedder_ranks_the_definition_of_a_held_out_word_first(encoder):
    queries = encoder.embed_queries([word for word, _ in HELD_OUT], as_tensor=True)
    docs = encoder.embed_documents([definition for _, definition in HELD_OUT], as_tensor=True)
    scores = queries @ docs.T
    own = scores.diag()
    others = scores.masked_fill(torch.eye(len(HELD_OUT), dtype=torch.bool), float("nan"))
    assert (own > others.nanmean(dim=1)).all()
    assert (scores.argmax(dim=1) == torch.arange(len(HELD_OUT))).sum() >= len(HELD_OUT) - 1
