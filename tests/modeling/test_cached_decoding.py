"""Cached decoding equals full forward passes; sliding windows; batching; padding."""

from __future__ import annotations

import pytest
import torch

from mamba3_integrations.kernels import attention
from mamba3_integrations.modeling import Mamba3LMHeadModel
from tests.fixtures import hybrid_config

VOCAB = 97
# Models run in float64, but the decays, angles and residual stream are float32 as in the
# official code: chunked prefill and the recurrence agree to float32 rounding.
TOL = dict(rtol=1e-5, atol=1e-5)


def make_model(seed: int = 0, **overrides) -> Mamba3LMHeadModel:
    torch.manual_seed(seed)
    model = Mamba3LMHeadModel(hybrid_config(VOCAB, **overrides), dtype=torch.float64)
    model.init_weights()
    with torch.no_grad():
        model.backbone.embedding.weight.normal_(0, 1.0)
    return model.eval()


MODELS = {
    "pure": dict(attn_layer_idx=[], attn_window=None, window=None),
    "hybrid": dict(window=None),
    "sliding_window": dict(window=5),
    "sliding_window_ngroups_rope1": dict(
        window=3, ssm_cfg={"layer": "Mamba3", "d_state": 12, "headdim": 8, "ngroups": 2,
                           "rope_fraction": 1.0, "is_outproj_norm": True, "chunk_size": 4}),
}


def build(kind: str) -> Mamba3LMHeadModel:
    overrides = dict(MODELS[kind])
    window = overrides.pop("window")
    if overrides.get("attn_window", 0) is None:
        overrides["attn_window"] = {}
    return make_model(window=window, **overrides)


@pytest.mark.parametrize("kind", list(MODELS))
@pytest.mark.parametrize("prefill", [1, 4, 13])
def test_decode_matches_full_forward(kind, prefill):
    model = build(kind)
    ids = torch.randint(0, VOCAB, (2, 21))
    full = model(ids).logits
    cache = model.allocate_cache(2, capacity=4)  # small capacity: the KV cache must grow
    logits = [model(ids[:, :prefill], cache=cache).logits]
    logits += [model.step(ids[:, t], cache).unsqueeze(1) for t in range(prefill, ids.shape[1])]
    torch.testing.assert_close(torch.cat(logits, dim=1), full, **TOL)
    assert cache.seqlen == ids.shape[1]


def test_prefill_in_segments_matches_one_pass():
    model = build("sliding_window")
    ids = torch.randint(0, VOCAB, (1, 40))
    cache = model.allocate_cache(1)
    parts = [model(ids[:, a:b], cache=cache).logits for a, b in ((0, 7), (7, 8), (8, 40))]
    torch.testing.assert_close(torch.cat(parts, dim=1), model(ids).logits, **TOL)


def test_decode_state_is_constant_for_mamba_and_window_layers():
    model = build("sliding_window")
    cache = model.allocate_cache(1, capacity=64)
    model(torch.randint(0, VOCAB, (1, 10)), cache=cache)
    before = cache.nbytes()
    for t in range(50):
        model.step(torch.tensor([t % VOCAB]), cache)
    after = cache.nbytes()
    assert after["mamba3"] == before["mamba3"] > 0
    assert after["sliding_window"] == before["sliding_window"] > 0
    assert after["kv"] == before["kv"]  # pre-sized to 64 positions


def test_sliding_window_equals_full_attention_restricted_to_window():
    torch.manual_seed(0)
    q = torch.randn(2, 37, 4, 8, dtype=torch.float64)
    k = torch.randn(2, 37, 2, 8, dtype=torch.float64)
    v = torch.randn(2, 37, 2, 8, dtype=torch.float64)
    window = 5
    out = attention(q, k, v, causal=True, window=window)
    kr, vr = k.repeat_interleave(2, dim=2), v.repeat_interleave(2, dim=2)
    scores = torch.einsum("bqhd,bkhd->bhqk", q, kr) / 8 ** 0.5
    i, j = torch.arange(37)[:, None], torch.arange(37)[None, :]
    scores = scores.masked_fill(~((j <= i) & (i - j < window)), -torch.inf)
    expected = torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), vr)
    torch.testing.assert_close(out, expected)
    # A window at least as long as the sequence is plain causal attention.
    torch.testing.assert_close(attention(q, k, v, causal=True, window=37),
                               attention(q, k, v, causal=True))


@pytest.mark.parametrize("kind", ["hybrid", "sliding_window"])
def test_left_padded_batch_equals_rows_alone(kind):
    model = build(kind)
    lengths = [3, 11, 8]
    rows = [torch.randint(0, VOCAB, (n,)) for n in lengths]
    width = max(lengths)
    ids = torch.zeros(len(rows), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, width - len(r):], mask[i, width - len(r):] = r, 1
    cache = model.allocate_cache(3)
    batched = model(ids, mask, cache=cache).logits
    steps = torch.randint(0, VOCAB, (3, 6))
    batched_steps = [model.step(steps[:, t], cache) for t in range(6)]
    for i, r in enumerate(rows):
        alone_cache = model.allocate_cache(1)
        alone = model(r[None], cache=alone_cache).logits[0]
        torch.testing.assert_close(batched[i, width - len(r):], alone, **TOL)
        for t in range(6):
            torch.testing.assert_close(batched_steps[t][i],
                                       model.step(steps[i:i + 1, t], alone_cache)[0],
                                       **TOL)


def test_cache_select_and_clone():
    model = build("sliding_window")
    ids = torch.randint(0, VOCAB, (3, 9))
    cache = model.allocate_cache(3)
    model(ids, cache=cache)
    snapshot = cache.clone()
    nxt = torch.randint(0, VOCAB, (3,))
    full = model.step(nxt, cache)
    sub = snapshot.select([2, 0])
    torch.testing.assert_close(model.step(nxt[[2, 0]], sub), full[[2, 0]])
    # The clone was not advanced by the step on the original.
    assert snapshot.seqlen == 9 and cache.seqlen == 10
