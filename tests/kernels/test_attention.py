"""GPU attention paths (SDPA, FlexAttention block masks, cache decode) against the reference.

FlexAttention's block lists are checked on the CPU by expanding them to a dense mask
(eager FlexAttention ignores block sparsity, so only this shows a wrong block list); the
``gpu`` tests run the compiled CUDA paths.
"""

from __future__ import annotations

import importlib

import pytest
import torch

attn = importlib.import_module("mamba3_integrations.kernels.attention")

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")

# (lq, lk, causal, window, left padding of row 1)
CASES = [
    (300, 300, True, None, 0),
    (300, 300, True, 100, 0),
    (260, 300, True, 70, 37),
    (129, 129, True, 129, 0),
    (200, 333, True, None, 0),
    (50, 50, False, None, 5),
    (1000, 1000, True, 128, 0),
]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).norm() / b.double().norm()).item()


def padding_mask(b: int, lk: int, pad: int, device="cpu") -> torch.Tensor | None:
    if not pad:
        return None
    lengths = torch.tensor([0, pad] + [0] * (b - 2), device=device)[:b]
    return torch.arange(lk, device=device)[None, :] >= lengths[:, None]


def dense_from_blocks(block_mask, b: int, lq: int, lk: int) -> torch.Tensor:
    """The (b, lq, lk) mask that a BlockMask really applies."""
    bs = attn.FLEX_BLOCK
    q_idx = torch.arange(lq)[:, None]
    kv_idx = torch.arange(lk)[None, :]
    mask_mod = block_mask.mask_mod(torch.arange(b)[:, None, None], 0, q_idx, kv_idx)
    q_block, kv_block = q_idx // bs, kv_idx // bs

    def listed(counts, indices):
        counts, indices = counts[0, 0].cpu(), indices[0, 0].cpu()
        table = torch.zeros(counts.numel(), indices.shape[-1], dtype=torch.bool)
        for i, n in enumerate(counts.tolist()):
            table[i, indices[i, :n].long()] = True
        return table[q_block, kv_block]

    partial = listed(block_mask.kv_num_blocks, block_mask.kv_indices)
    full = listed(block_mask.full_kv_num_blocks, block_mask.full_kv_indices)
    assert not (partial & full).any()
    return (full | (partial & mask_mod)).expand(b, lq, lk)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_block_mask_is_exactly_the_reference_mask(case):
    lq, lk, causal, window, pad = case
    valid = padding_mask(2, lk, pad)
    block_mask = attn._block_mask(lq, lk, causal, window, valid, torch.device("cpu"))
    q_pos, k_pos = torch.arange(lk - lq, lk), torch.arange(lk)
    want = attn.attention_mask(q_pos, k_pos, causal, window, valid).expand(2, lq, lk)
    assert torch.equal(dense_from_blocks(block_mask, 2, lq, lk), want)
    if window is not None:  # linear cost: a bounded number of key blocks per query block
        bs = attn.FLEX_BLOCK
        visited = block_mask.kv_num_blocks + block_mask.full_kv_num_blocks
        assert int(visited.max()) <= -(-(bs + window - 1) // bs) + 1


@pytest.mark.parametrize("case", CASES[:3], ids=str)
def test_flex_path_matches_reference(case):
    lq, lk, causal, window, pad = case
    g = torch.Generator().manual_seed(0)
    q = torch.randn(2, lq, 4, 16, generator=g)
    k, v = (torch.randn(2, lk, 2, 16, generator=g) for _ in range(2))
    valid = padding_mask(2, lk, pad)
    ref = attn.attention_reference(q, k, v, causal, window, valid)
    assert rel_err(attn._flex_attention(q, k, v, causal, window, valid, None), ref) < 1e-5


@pytest.mark.parametrize("window", [None, 10])
def test_single_query_and_decode_over_a_shuffled_buffer(window):
    g = torch.Generator().manual_seed(1)
    q = torch.randn(2, 1, 4, 16, generator=g)
    k, v = (torch.randn(2, 40, 2, 16, generator=g) for _ in range(2))
    valid = padding_mask(2, 40, 5)
    ref = attn.attention_reference(q, k, v, True, window, valid)
    assert rel_err(attn._single_query(q, k, v, window, valid, None), ref) < 1e-5
    keep = valid.clone()
    if window is not None:
        keep[:, : 40 - window] = False
    perm = torch.randperm(40, generator=g)
    out = attn.attention_decode(q, k[:, perm], v[:, perm], keep[:, perm])
    assert rel_err(out, ref) < 1e-5


@pytest.mark.gpu
@needs_cuda
@pytest.mark.parametrize("case", CASES + [(1, 700, True, 256, 3), (1, 700, True, None, 0)],
                         ids=str)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_gpu_attention_matches_reference(case, dtype):
    lq, lk, causal, window, pad = case
    g = torch.Generator().manual_seed(2)
    q = torch.randn(2, lq, 8, 64, generator=g)
    k, v = (torch.randn(2, lk, 2, 64, generator=g) for _ in range(2))
    valid = padding_mask(2, lk, pad)
    ref = attn.attention_reference(q.double(), k.double(), v.double(), causal, window, valid)
    out = attn.attention(*(x.to("cuda", dtype) for x in (q, k, v)), causal=causal,
                         window=window, softmax_scale=None,
                         key_padding_mask=None if valid is None else valid.cuda())
    assert out.dtype == dtype
    assert rel_err(out.cpu(), ref) < (2e-2 if dtype == torch.bfloat16 else 2e-3)
