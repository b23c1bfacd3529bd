"""One-row linear layers of the decode step (GEMV): ``y = x @ W.T (+ bias)``.

At batch 1 a projection only streams its weight, and cuBLAS' GEMM kernels reach 60-80%
of the bandwidth on these shapes (plus a split-K reduction kernel for ``out_proj``). The
Triton kernel gives each program ``BLOCK_N`` output rows: it walks ``K`` in
``BLOCK_K``-wide tiles of 16-byte loads, multiplies in float32 elementwise into a
``(BLOCK_N, BLOCK_K)`` accumulator and reduces it once at the end; the output is in the
input's dtype (as ``F.linear``, which also accumulates in float32, so both agree up to
the order of the float32 sums). No split-K: ``N / BLOCK_N`` programs fill the GPU on
the model's shapes. One launch, no workspace, so it can be captured in a CUDA graph.

``decode_linear`` takes the kernel for one row on CUDA (where the fused decode is on,
see ``fused_decode``) and ``F.linear`` otherwise.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from mamba3_integrations.kernels.fused_decode import (
    decode_pdl,
    fused_decode_enabled,
    gdc_launch_dependents,
    gdc_wait,
    pdl_launch,
)

try:
    import triton
    import triton.language as tl
except ImportError:  # Triton is an optional extra
    triton = None

# Launch settings: the default, the default for long rows (in_features >= 4096: the whole
# row in flight), and per (out_features, in_features) overrides (tuning). Measured on an
# H100, docs/benchmarks.md.
GEMV_CONFIG = {"block_n": 4, "block_k": 1024, "num_warps": 4, "num_stages": 1}
GEMV_LONG_ROWS = {"block_n": 2, "block_k": 4096, "num_warps": 4, "num_stages": 1}
GEMV_SHAPES: dict[tuple[int, int], dict[str, int]] = {}
# Weight shapes where cuBLAS measured faster (tuning): ``decode_linear`` keeps F.linear.
CUBLAS_SHAPES: set[tuple[int, int]] = set()
# The most rows the kernel takes (each row re-reads the weight, mostly from L2).
MAX_ROWS = 1


def gemv_config(n_out: int, k_in: int) -> dict[str, int]:
    """The launch settings for a weight of shape (n_out, k_in)."""
    base = GEMV_LONG_ROWS if k_in >= GEMV_LONG_ROWS["block_k"] else GEMV_CONFIG
    return {**base, **GEMV_SHAPES.get((n_out, k_in), {})}


if triton is not None:

    @triton.jit
    def _gemv_kernel(X, W, BIAS, Y, n_out, k_in, s_xm, s_wn, s_ym, PF, n_pf, n_pf_write,
                     BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr,
                     HAS_BIAS: tl.constexpr, PF_BLOCK: tl.constexpr, PDL: tl.constexpr):
        """Grid (rows, cdiv(n_out, BLOCK_N)): rows of one weight block run side by side
        (the block is read once from memory). X (rows, K), W (N, K), Y (rows, N), each
        with unit last stride. ``PF_BLOCK`` > 0: each program of row 0 also pulls
        ``PF_BLOCK`` elements of the ``n_pf``-element tensor ``PF`` into L2 (the next
        kernel's state, which then finds it there); ``n_pf_write`` is 0 (a store masked
        by it keeps the load alive; were it taken it would write the same values).
        ``PDL``: the first weight tile (and the prefetch) is loaded before waiting for
        the previous kernel (which writes X), see ``fused_decode``."""
        m = tl.program_id(0).to(tl.int64)
        if PF_BLOCK > 0:
            offs_pf = tl.program_id(1).to(tl.int64) * PF_BLOCK + tl.arange(0, PF_BLOCK)
            pos_pf = offs_pf + m * n_pf  # past the end beyond row 0
            mask_pf = pos_pf < n_pf
            pf = tl.load(PF + offs_pf, mask=mask_pf, other=0.0, eviction_policy="evict_last")
        offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
        mask_n = offs_n < n_out
        rows = tl.minimum(offs_n, n_out - 1).to(tl.int64)  # no row mask on the loads
        offs_k = tl.arange(0, BLOCK_K)
        w_ptr = W + rows[:, None] * s_wn + offs_k[None, :]
        x_ptr = X + m * s_xm + offs_k
        # The first tile outside the loop: its weights are in flight during the wait.
        if EVEN_K:
            w = tl.load(w_ptr, eviction_policy="evict_first")
        else:
            w = tl.load(w_ptr, mask=(offs_k < k_in)[None, :], other=0.0,
                        eviction_policy="evict_first")
        if PDL:
            gdc_wait()
            gdc_launch_dependents()
        x = tl.load(x_ptr) if EVEN_K else tl.load(x_ptr, mask=offs_k < k_in, other=0.0)
        acc = w.to(tl.float32) * x.to(tl.float32)[None, :]
        for k0 in range(BLOCK_K, k_in, BLOCK_K):
            w_ptr += BLOCK_K
            x_ptr += BLOCK_K
            if EVEN_K:
                w = tl.load(w_ptr, eviction_policy="evict_first")
                x = tl.load(x_ptr)
            else:
                mask_k = (k0 + offs_k) < k_in
                w = tl.load(w_ptr, mask=mask_k[None, :], other=0.0,
                            eviction_policy="evict_first")
                x = tl.load(x_ptr, mask=mask_k, other=0.0)
            acc += w.to(tl.float32) * x.to(tl.float32)[None, :]
        y = tl.sum(acc, 1)
        if HAS_BIAS:
            y += tl.load(BIAS + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        tl.store(Y + m * s_ym + offs_n, y.to(Y.dtype.element_ty), mask=mask_n)
        if PF_BLOCK > 0:
            tl.store(PF + offs_pf, pf, mask=pos_pf < n_pf_write)


def linear_decode_reference(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> Tensor:
    """The oracle: ``F.linear``."""
    return F.linear(x, weight, bias)


def linear_decode_triton(x: Tensor, weight: Tensor, bias: Tensor | None = None,
                         block_n: int | None = None, block_k: int | None = None,
                         num_warps: int | None = None, num_stages: int | None = None,
                         prefetch: Tensor | None = None, pdl: bool | None = None) -> Tensor:
    """The GEMV kernel for x (..., K) with few rows, weight (N, K), bias (N,): (..., N).
    ``prefetch`` (contiguous, e.g. the SSM state the next kernel updates): its bytes are
    also read, into L2, spread over the programs (the result does not depend on it).
    ``pdl``: programmatic dependent launch (default ``decode_pdl``)."""
    n_out, k_in = weight.shape
    if x.shape[-1] != k_in:
        raise ValueError(f"x has {x.shape[-1]} features, the weight takes {k_in}")
    if weight.stride(-1) != 1:
        weight = weight.contiguous()
    lead = x.shape[:-1]
    x2 = x.reshape(-1, k_in)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    rows = x2.shape[0]
    y = torch.empty(rows, n_out, device=x.device, dtype=x.dtype)
    cfg = gemv_config(n_out, k_in)
    bn = block_n or cfg["block_n"]
    bk = min(block_k or cfg["block_k"], triton.next_power_of_2(max(k_in, 16)))
    nblocks = triton.cdiv(n_out, bn)
    pf_block, n_pf = 0, 0
    if prefetch is not None and prefetch.is_contiguous() and prefetch.numel():
        n_pf = prefetch.numel()
        pf_block = max(16, triton.next_power_of_2(triton.cdiv(n_pf, nblocks)))
        if pf_block > 4096:  # more than 4096 elements a program: only the first part
            pf_block = 4096
    if pdl is None:
        pdl = decode_pdl(x)
    if rows and n_out:
        _gemv_kernel[(rows, nblocks)](
            x2, weight, bias if bias is not None else weight, y, n_out, k_in,
            x2.stride(0), weight.stride(0), y.stride(0),
            prefetch if pf_block else y, n_pf, 0,
            BLOCK_N=bn, BLOCK_K=bk, EVEN_K=k_in % bk == 0, HAS_BIAS=bias is not None,
            PF_BLOCK=pf_block, PDL=pdl, **pdl_launch(pdl),
            num_warps=num_warps or cfg["num_warps"], num_stages=num_stages or cfg["num_stages"],
        )
    return y.view(*lead, n_out)


def linear_decode_supported(x: Tensor, weight: Tensor, bias: Tensor | None = None) -> bool:
    """Whether ``decode_linear`` takes the kernel: fused decode on (CUDA by default), at
    most ``MAX_ROWS`` rows, one 16/32-bit dtype for x, weight and bias, 2-D weight not in
    ``CUBLAS_SHAPES``, no autograd (the kernel has no backward)."""
    dtypes = (torch.bfloat16, torch.float16, torch.float32)
    return (
        triton is not None
        and weight.dim() == 2
        and x.dtype in dtypes
        and weight.dtype == x.dtype
        and (bias is None or bias.dtype == x.dtype)
        and x.shape[-1] == weight.shape[1]
        and 0 < x.numel() <= MAX_ROWS * weight.shape[1]
        and tuple(weight.shape) not in CUBLAS_SHAPES
        and not (torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad))
        and fused_decode_enabled(x)
    )


def decode_linear(x: Tensor, weight: Tensor, bias: Tensor | None = None,
                  prefetch: Tensor | None = None) -> Tensor:
    """``F.linear(x, weight, bias)`` for the decode step: the GEMV kernel for one row
    (which also pulls ``prefetch`` into L2, see ``linear_decode_triton``)."""
    if linear_decode_supported(x, weight, bias):
        return linear_decode_triton(x, weight, bias, prefetch=prefetch)
    return F.linear(x, weight, bias)
