"""Capture-safe decode (positions on the device) and the CUDA-graph decoder equal eager
decoding: KV caches, sliding-window rings past their wrap-around, left padding."""

from __future__ import annotations

import pytest
import torch

from mamba3_integrations.modeling import Mamba3LMHeadModel
from mamba3_integrations.modeling.cache import KVCache, SlidingWindowCache
from tests.fixtures import hybrid_config

VOCAB = 97


def make_model(dtype: torch.dtype, device: str = "cpu", **overrides) -> Mamba3LMHeadModel:
    torch.manual_seed(0)
    model = Mamba3LMHeadModel(hybrid_config(VOCAB, window=5, **overrides), device=device,
                              dtype=dtype)
    model.init_weights()
    with torch.no_grad():
        model.backbone.embedding.weight.normal_(0, 1.0)
    return model.eval()


@pytest.mark.parametrize("prefill", [1, 4, 9])
def test_device_position_decode_matches_eager(prefill):
    """The path a CUDA graph captures, run eagerly on the CPU."""
    model = make_model(torch.float64)
    ids = torch.randint(0, VOCAB, (2, 20), generator=torch.Generator().manual_seed(prefill))
    mask = torch.ones(2, prefill, dtype=torch.long)
    mask[1, : min(3, prefill - 1)] = 0
    eager, graph_safe = (model.allocate_cache(2, capacity=32) for _ in range(2))
    for cache in (eager, graph_safe):
        model(ids[:, :prefill], attention_mask=mask, cache=cache)
    position = torch.tensor(prefill)
    for c in graph_safe.layers:
        if isinstance(c, KVCache | SlidingWindowCache):
            c.device_length = position
    for t in range(prefill, ids.shape[1]):
        want = model.step(ids[:, t], eager)
        got = model.step(ids[:, t], graph_safe)
        position += 1
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-10)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("batch", [2, 1])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_graph_decoder_matches_eager(dtype, batch):
    """Batch 1 takes the one-row kernels (GEMV, add + RMSNorm + GEMV) in both."""
    from mamba3_integrations.runtime.cuda_graph import CudaGraphDecoder

    ssm = {"layer": "Mamba3", "d_state": 32, "headdim": 16, "chunk_size": 16}
    model = make_model(dtype, "cuda", ssm_cfg=ssm)
    ids = torch.randint(0, VOCAB, (batch, 30), device="cuda")
    mask = torch.ones(batch, 7, dtype=torch.long, device="cuda")
    mask[0, :2] = 0
    cache = model.allocate_cache(batch, capacity=30)
    model(ids[:, :7], attention_mask=mask, cache=cache)
    eager = cache.clone()
    decoder = CudaGraphDecoder(model, cache)
    tol = 1e-5 if dtype == torch.float32 else 2e-2  # attention reduces in another order
    for t in range(7, 30):
        want = model.step(ids[:, t], eager).float()
        got = decoder.step(ids[:, t]).float()
        assert ((got - want).norm() / want.norm()).item() < tol
    assert cache.seqlen == 30 and cache.layers[1].length == 30
    with pytest.raises(Exception, match="full"):
        decoder.step(ids[:, 0])
    decoder.close()
    assert cache.layers[1].device_length is None
