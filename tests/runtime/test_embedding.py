"""Mamba3Encoder: pooling, normalisation, batching, segments, prefixes and bad input."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace

import pytest
import torch

from mamba3_integrations.errors import CheckpointError, ConfigError, InputError
from mamba3_integrations.runtime.embedding import EmbeddingSettings, Mamba3Encoder
from tests.fixtures import CORPUS, TINY_EMBEDDING, save_tiny_encoder

pytestmark = pytest.mark.usefixtures("torch_single_thread")

TEXTS = ["hello", CORPUS[0], "PostgreSQL stores rows.", CORPUS[4], "a b c"]


def variant(encoder: Mamba3Encoder, **changes) -> Mamba3Encoder:
    """The same model with other settings."""
    return Mamba3Encoder(encoder.model, replace(encoder.settings, **changes))


def token_ids(encoder: Mamba3Encoder, text: str) -> torch.Tensor:
    return torch.tensor([encoder.tokenizer(text)["input_ids"]])


def test_shapes_normalisation_and_list_output(tiny_encoder):
    vectors = tiny_encoder.embed(TEXTS)
    assert tiny_encoder.dimension == tiny_encoder.model.config.d_model == 32
    assert len(vectors) == len(TEXTS)
    assert all(len(v) == 32 and all(isinstance(x, float) for x in v) for v in vectors)
    tensor = tiny_encoder.embed(TEXTS, as_tensor=True)
    assert tensor.dtype == torch.float32 and tensor.shape == (len(TEXTS), 32)
    torch.testing.assert_close(tensor, torch.tensor(vectors))
    torch.testing.assert_close(tensor.norm(dim=-1), torch.ones(len(TEXTS)))
    assert tiny_encoder.embed([]) == []


def test_mean_and_last_pooling_match_the_hidden_states(tiny_encoder, tiny_encoder_dir):
    text = CORPUS[2][:12]  # fits in one segment
    hidden = tiny_encoder.model.hidden_states(token_ids(tiny_encoder, text))[0]
    mean = variant(tiny_encoder, normalize=False).embed([text], as_tensor=True)[0]
    last = variant(tiny_encoder, normalize=False, pooling="last").embed([text], as_tensor=True)
    torch.testing.assert_close(mean, hidden.mean(0))
    torch.testing.assert_close(last[0], hidden[-1])
    normalised = tiny_encoder.embed([text], as_tensor=True)[0]
    torch.testing.assert_close(normalised, hidden.mean(0) / hidden.mean(0).norm())
    unnormalised = Mamba3Encoder.from_pretrained(tiny_encoder_dir, normalize=False)
    torch.testing.assert_close(unnormalised.embed([text], as_tensor=True)[0], mean)


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_batching_by_length_equals_one_by_one(tiny_encoder, pooling):
    encoder = variant(tiny_encoder, pooling=pooling)
    encoder.batch_size = 2
    texts = [TEXTS[i] for i in (2, 0, 4, 1, 3)]  # mixed lengths, some longer than a segment
    together = encoder.embed(texts, as_tensor=True)
    alone = torch.cat([encoder.embed([t], as_tensor=True) for t in texts])
    torch.testing.assert_close(together, alone, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("global_attention", [False, True])
@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_long_text_in_segments_equals_one_shot(tiny_encoder, tmp_path, global_attention,
                                               pooling):
    encoder = tiny_encoder
    if global_attention:
        encoder = Mamba3Encoder.from_pretrained(save_tiny_encoder(tmp_path, global_attention=True))
    text = " ".join(CORPUS)
    assert len(encoder.tokenizer(text)["input_ids"]) > 10 * encoder.settings.max_segment_tokens
    segmented = variant(encoder, pooling=pooling).embed([text], as_tensor=True)
    whole = variant(encoder, pooling=pooling, max_segment_tokens=10**6).embed([text],
                                                                              as_tensor=True)
    torch.testing.assert_close(segmented, whole, atol=1e-4, rtol=1e-4)


def record_calls(encoder: Mamba3Encoder, monkeypatch) -> list[tuple[int, dict[str, int] | None]]:
    """Spy on the model: (tokens per call, cache bytes after the call) for every call."""
    calls = []
    original = encoder.model.hidden_states

    def spy(input_ids, attention_mask=None, cache=None):
        out = original(input_ids, attention_mask, cache)
        calls.append((input_ids.shape[1], None if cache is None else cache.nbytes()))
        return out

    monkeypatch.setattr(encoder.model, "hidden_states", spy)
    return calls


def test_memory_does_not_grow_with_the_text(tiny_encoder, monkeypatch):
    calls = record_calls(tiny_encoder, monkeypatch)
    size = tiny_encoder.settings.max_segment_tokens
    shorter, longer = " ".join(CORPUS[:2]), " ".join(CORPUS * 3)
    tiny_encoder.embed([shorter])
    n_short = len(calls)
    tiny_encoder.embed([longer])
    assert n_short >= 3 and len(calls) - n_short > 3 * n_short
    assert max(tokens for tokens, _ in calls) == size
    cache_sizes = {json.dumps(nbytes, sort_keys=True) for _, nbytes in calls}
    assert len(cache_sizes) == 1  # the same bytes after every segment of both texts
    assert json.loads(cache_sizes.pop())["kv"] == 0


def test_prefixes(tiny_encoder):
    text = ["what is a state space model"]
    plain = tiny_encoder.embed(text, as_tensor=True)
    query = tiny_encoder.embed_queries(text, as_tensor=True)
    document = tiny_encoder.embed_documents(text, as_tensor=True)
    torch.testing.assert_close(query, tiny_encoder.embed(text, "query: ", as_tensor=True))
    torch.testing.assert_close(document, tiny_encoder.embed(text, "passage: ", as_tensor=True))
    assert not torch.allclose(query, plain) and not torch.allclose(document, query)


def test_deterministic(tiny_encoder):
    assert tiny_encoder.embed(TEXTS) == tiny_encoder.embed(TEXTS)


@pytest.mark.parametrize(
    ("texts", "message"),
    [
        (["ok", ""], "text 1 is empty or only whitespace"),
        ([" \n\t "], "text 0 is empty or only whitespace"),
        (["ok", 3], "text 1 has type int, expected str"),
        ([None], "text 0 has type NoneType"),
        ([b"caf\xc3\xa9"], "text 0 is bytes; decode it first"),
        ([b"\xff\xfe".decode("utf-8", "surrogateescape")], "text 0 is not valid Unicode"),
        ("a single string", "texts must be a list of strings"),
    ],
)
def test_bad_input(tiny_encoder, texts, message):
    with pytest.raises(InputError, match=message):
        tiny_encoder.embed(texts)


def test_folder_that_is_not_an_embedding_model(tiny_lm_dir):
    with pytest.raises(CheckpointError, match="is not an embedding model.*'embedding' section"):
        Mamba3Encoder.from_pretrained(tiny_lm_dir)


def test_embedding_settings_are_validated(tiny_encoder_dir, tmp_path):
    folder = shutil.copytree(tiny_encoder_dir, tmp_path / "model")
    config = json.loads((folder / "config.json").read_text())
    config["embedding"] = {**TINY_EMBEDDING, "poolin": "mean"}
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['poolin'\] in embedding"):
        Mamba3Encoder.from_pretrained(folder)
    with pytest.raises(ConfigError, match="embedding.pooling must be one of"):
        EmbeddingSettings(pooling="max")
    with pytest.raises(ConfigError, match="max_segment_tokens must be a positive integer"):
        EmbeddingSettings(max_segment_tokens=0)
    with pytest.raises(ConfigError, match="normalize must be true or false"):
        EmbeddingSettings.from_dict({"normalize": "yes"})
    with pytest.raises(InputError, match="batch_size"):
        Mamba3Encoder.from_pretrained(tiny_encoder_dir, batch_size=0)
