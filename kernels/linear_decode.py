"""One-row linear layers of the decode step (GEMV): ``y = x @ W.T (+ bias)``, optionally
with the blocks' residual add and RMSNorm before it computed on the way.

At batch 1 a projection only streams its weight, and cuBLAS' GEMM kernels reach 60-80%
of the bandwidth on these shapes (plus a split-K reduction kernel for ``out_proj``). The
Triton kernel gives each program ``BLOCK_N`` output rows: it walks ``K`` in
``BLOCK_K``-wide tiles of 16-byte loads, multiplies in float32 elementwise into a
``(BLOCK_N, BLOCK_K)`` accumulator and reduces it once at the end; the output is in the
input's dtype (as ``F.linear``, which also accumulates in float32, so both agree up to
the order of the float32 sums). No split-K: ``N / BLOCK_N`` programs fill the GPU on
the model's shapes. One launch, no workspace, so it can be captured in a CUDA graph.

Add + RMSNorm + GEMV (``norm_linear_decode_triton``, one kernel instead of
``add_rms_norm`` and the GEMV): ``residual = hidden + residual`` and
``y = (rmsnorm(residual) * norm_weight) @ W.T (+ bias)``. Every program reads the
hidden, residual and norm-weight rows (from L2: all programs read the same), first the
sum of squares over the row (``rstd``), then the GEMV with ``x`` made tile by tile;
program 0 of each row writes the new residual. Roundings are those of ``add_rms_norm``
followed by the GEMV: the sum rounded to the residual's dtype (float32 with
``residual_in_fp32``), that to the norm weight's dtype before the norm, and
``x = sum * rstd * norm_weight`` rounded to the activation dtype per element before it
meets W, so the result equals the two-kernel path up to the order of the float32 sums.
With the whole row in one tile (the default up to 4096 features) the rows are read once,
else twice (L1/L2).

``decode_linear`` takes the kernel for one row on CUDA (where the fused decode is on,
see ``fused_decode``) and ``F.linear`` otherwise; ``norm_linear_decode_supported`` says
where the fused norm applies (also off with ``MAMBA3_DECODE_NORM_LINEAR=0``, read at
launch, so at graph capture).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor

from mamba3_integrations.kernels.add_rms_norm import add_rms_norm_reference
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
# Add + RMSNorm + GEMV (``norm_linear_decode_triton``): 4 output rows per program, 4 warps,
# the whole row in one tile up to 4096 features (the hidden, residual and norm-weight rows
# read once). Measured on an H100 in the 1.3B model's CUDA-graph decode (PDL on): 1.369
# ms/token at 4K against 1.402 with 8 rows (1.374 with 8 rows and 8 warps, 1.544 with 2),
# docs/benchmarks.md. Per (out_features, in_features) overrides (tuning).
NORM_GEMV_CONFIG = {"block_n": 4, "block_k": 4096, "num_warps": 4, "num_stages": 1}
NORM_GEMV_SHAPES: dict[tuple[int, int], dict[str, int]] = {}


def gemv_config(n_out: int, k_in: int) -> dict[str, int]:
    """The launch settings for a weight of shape (n_out, k_in)."""
    base = GEMV_LONG_ROWS if k_in >= GEMV_LONG_ROWS["block_k"] else GEMV_CONFIG
    return {**base, **GEMV_SHAPES.get((n_out, k_in), {})}


def norm_gemv_config(n_out: int, k_in: int) -> dict[str, int]:
    """The launch settings of the add + RMSNorm + GEMV kernel for a weight (n_out, k_in)."""
    return {**NORM_GEMV_CONFIG, **NORM_GEMV_SHAPES.get((n_out, k_in), {})}


if triton is not None:

    @triton.jit
    def _residual_tile(X, R, R_OUT, NW, row, offs, k_in, n_store, STORE: tl.constexpr,
                       HAS_R: tl.constexpr, EVEN_K: tl.constexpr):
        """Elements ``offs`` of the row at ``row`` of X + R (X alone without ``HAS_R``),
        rounded to R_OUT's dtype (``STORE``: stored there below ``n_store``), then to NW's
        dtype; returned in float32 (the roundings of ``add_rms_norm``)."""
        mask = offs < k_in
        if EVEN_K:
            s = tl.load(X + row + offs).to(tl.float32)
            if HAS_R:
                s += tl.load(R + row + offs).to(tl.float32)
        else:
            s = tl.load(X + row + offs, mask=mask, other=0.0).to(tl.float32)
            if HAS_R:
                s += tl.load(R + row + offs, mask=mask, other=0.0).to(tl.float32)
        s = s.to(R_OUT.dtype.element_ty)
        if STORE:
            tl.store(R_OUT + row + offs, s, mask=offs < n_store)
        return s.to(NW.dtype.element_ty).to(tl.float32)

    @triton.jit
    def _load_tile(ptr, offs, k_in, EVEN_K: tl.constexpr):
        """A row tile at ``offs`` (zeros past ``k_in``), in float32."""
        if EVEN_K:
            return tl.load(ptr + offs).to(tl.float32)
        return tl.load(ptr + offs, mask=offs < k_in, other=0.0).to(tl.float32)

    @triton.jit
    def _gemv_kernel(X, W, BIAS, Y, n_out, k_in, s_xm, s_wn, s_ym, PF, n_pf, n_pf_write,
                     R, NW, R_OUT, eps,
                     BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, EVEN_K: tl.constexpr,
                     HAS_BIAS: tl.constexpr, PF_BLOCK: tl.constexpr, PDL: tl.constexpr,
                     NORM: tl.constexpr, HAS_R: tl.constexpr):
        """Grid (rows, cdiv(n_out, BLOCK_N)): rows of one weight block run side by side
        (the block is read once from memory). X (rows, K), W (N, K), Y (rows, N), each
        with unit last stride. ``PF_BLOCK`` > 0: each program of row 0 also pulls
        ``PF_BLOCK`` elements of the ``n_pf``-element tensor ``PF`` into L2 (the next
        kernel's state, which then finds it there); ``n_pf_write`` is 0 (a store masked
        by it keeps the load alive; were it taken it would write the same values).
        ``NORM``: the row is ``rmsnorm(X + R) * NW`` (X alone without ``HAS_R``; R and
        R_OUT share X's row stride; NW in the activation dtype): a first pass over it
        takes the sum of squares and program 0 writes ``X + R`` to R_OUT, then each tile
        is normalised and rounded to NW's dtype before it meets W (module docstring).
        ``PDL``: the first weight tile (and the prefetch, and the norm weight's first
        tile) is loaded before waiting for the previous kernel (which writes X), see
        ``fused_decode``."""
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
        if NORM:
            nw = _load_tile(NW, offs_k, k_in, EVEN_K)
        if PDL:
            gdc_wait()
            gdc_launch_dependents()
        if NORM:
            row = m * s_xm
            n_store = tl.where(tl.program_id(1) == 0, k_in, 0)  # program 0 writes R_OUT
            s = _residual_tile(X, R, R_OUT, NW, row, offs_k, k_in, n_store, True, HAS_R,
                               EVEN_K)
            squares = s * s
            for k0 in range(BLOCK_K, k_in, BLOCK_K):
                t = _residual_tile(X, R, R_OUT, NW, row, k0 + offs_k, k_in, n_store, True,
                                   HAS_R, EVEN_K)
                squares += t * t
            rstd = 1.0 / tl.sqrt(tl.sum(squares, 0) / k_in + eps)
            x = (s * rstd * nw).to(NW.dtype.element_ty)
        else:
            x = tl.load(x_ptr) if EVEN_K else tl.load(x_ptr, mask=offs_k < k_in, other=0.0)
        acc = w.to(tl.float32) * x.to(tl.float32)[None, :]
        for k0 in range(BLOCK_K, k_in, BLOCK_K):
            w_ptr += BLOCK_K
            if EVEN_K:
                w = tl.load(w_ptr, eviction_policy="evict_first")
            else:
                w = tl.load(w_ptr, mask=((k0 + offs_k) < k_in)[None, :], other=0.0,
                            eviction_policy="evict_first")
            if NORM:  # the tile again (from L1/L2), normalised
                offs = k0 + offs_k
                t = _residual_tile(X, R, R_OUT, NW, row, offs, k_in, 0, False, HAS_R,
                                   EVEN_K)
                x = (t * rstd * _load_tile(NW, offs, k_in, EVEN_K)).to(NW.dtype.element_ty)
            else:
                x_ptr += BLOCK_K
                x = tl.load(x_ptr) if EVEN_K else tl.load(x_ptr, mask=(k0 + offs_k) < k_in,
                                                          other=0.0)
            acc += w.to(tl.float32) * x.to(tl.float32)[None, :]
        y = tl.sum(acc, 1)
        if HAS_BIAS:
            y += tl.load(BIAS + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        tl.store(Y + m * s_ym + offs_n, y.to(Y.dtype.element_ty), mask=mask_n)
        if PF_BLOCK > 0:
            tl.store(PF + offs_pf, pf, mask=pos_pf < n_pf_write)


def _launch_gemv(x2: Tensor, weight: Tensor, bias: Tensor | None, y: Tensor,
                 cfg: dict[str, int], prefetch: Tensor | None, pdl: bool | None,
                 norm: tuple | None = None) -> None:
    """``_gemv_kernel`` over the rows of x2 (rows, K) into y (rows, N) with the launch
    settings ``cfg``; ``norm``: (residual or None, norm weight, residual out, eps)."""
    n_out, k_in = weight.shape
    rows = x2.shape[0]
    bn = cfg["block_n"]
    bk = min(cfg["block_k"], triton.next_power_of_2(max(k_in, 16)))
    nblocks = triton.cdiv(n_out, bn)
    pf_block, n_pf = 0, 0
    if prefetch is not None and prefetch.is_contiguous() and prefetch.numel():
        n_pf = prefetch.numel()
        pf_block = max(16, triton.next_power_of_2(triton.cdiv(n_pf, nblocks)))
        if pf_block > 4096:  # more than 4096 elements a program: only the first part
            pf_block = 4096
    if pdl is None:
        pdl = decode_pdl(x2)
    residual, norm_weight, r_out, eps = norm if norm is not None else (None, y, y, 0.0)
    if rows and n_out:
        _gemv_kernel[(rows, nblocks)](
            x2, weight, bias if bias is not None else weight, y, n_out, k_in,
            x2.stride(0), weight.stride(0), y.stride(0),
            prefetch if pf_block else y, n_pf, 0,
            residual if residual is not None else x2, norm_weight, r_out, eps,
            BLOCK_N=bn, BLOCK_K=bk, EVEN_K=k_in % bk == 0, HAS_BIAS=bias is not None,
            PF_BLOCK=pf_block, PDL=pdl, NORM=norm is not None, HAS_R=residual is not None,
            **pdl_launch(pdl), num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
        )


def _settings(cfg: dict[str, int], **given: int | None) -> dict[str, int]:
    """``cfg`` with the settings given (not None) in place of its own."""
    return {**cfg, **{k: v for k, v in given.items() if v is not None}}


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
    y = torch.empty(x2.shape[0], n_out, device=x.device, dtype=x.dtype)
    cfg = _settings(gemv_config(n_out, k_in), block_n=block_n, block_k=block_k,
                    num_warps=num_warps, num_stages=num_stages)
    _launch_gemv(x2, weight, bias, y, cfg, prefetch, pdl)
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


# ------------------------------------------------------- add + RMSNorm + GEMV
def norm_linear_decode_reference(hidden: Tensor, residual: Tensor | None, norm_weight: Tensor,
                                 eps: float, weight: Tensor, bias: Tensor | None = None,
                                 residual_in_fp32: bool = False) -> tuple[Tensor, Tensor]:
    """The oracle: ``add_rms_norm_reference`` then ``F.linear``; ``(y, residual)``."""
    normed, residual = add_rms_norm_reference(hidden, residual, norm_weight, eps,
                                              residual_in_fp32)
    return F.linear(normed, weight, bias), residual


def norm_linear_decode_triton(hidden: Tensor, residual: Tensor | None, norm_weight: Tensor,
                              eps: float, weight: Tensor, bias: Tensor | None = None,
                              residual_in_fp32: bool = False, block_n: int | None = None,
                              block_k: int | None = None, num_warps: int | None = None,
                              num_stages: int | None = None, prefetch: Tensor | None = None,
                              pdl: bool | None = None) -> tuple[Tensor, Tensor]:
    """One kernel for ``add_rms_norm`` and the GEMV after it: hidden (..., K) and residual
    (as hidden, or None: the first block), the RMSNorm's weight (K,) and eps, weight
    (N, K), bias (N,) in the norm weight's dtype. Returns ``(y (..., N), hidden +
    residual)``, the latter in float32 when ``residual_in_fp32`` (as ``add_rms_norm``).
    Launch settings default to ``norm_gemv_config``; ``prefetch`` and ``pdl`` as
    ``linear_decode_triton``."""
    n_out, k_in = weight.shape
    if hidden.shape[-1] != k_in or norm_weight.shape != (k_in,):
        raise ValueError(f"hidden has {hidden.shape[-1]} features and the norm "
                         f"{tuple(norm_weight.shape)}, the weight takes {k_in}")
    if residual is not None and residual.shape != hidden.shape:
        raise ValueError(f"residual {tuple(residual.shape)} differs from hidden "
                         f"{tuple(hidden.shape)}")
    if weight.stride(-1) != 1:
        weight = weight.contiguous()
    lead = hidden.shape[:-1]
    h2 = hidden.reshape(-1, k_in).contiguous()
    r2 = None if residual is None else residual.reshape(-1, k_in).contiguous()
    r_dtype = hidden.dtype if residual is None else torch.promote_types(hidden.dtype,
                                                                       residual.dtype)
    r_out = torch.empty(h2.shape, device=hidden.device,
                        dtype=torch.float32 if residual_in_fp32 else r_dtype)
    y = torch.empty(h2.shape[0], n_out, device=hidden.device, dtype=norm_weight.dtype)
    cfg = _settings(norm_gemv_config(n_out, k_in), block_n=block_n, block_k=block_k,
                    num_warps=num_warps, num_stages=num_stages)
    _launch_gemv(h2, weight, bias, y, cfg, prefetch, pdl,
                 norm=(r2, norm_weight.contiguous(), r_out, eps))
    return y.view(*lead, n_out), r_out.view(hidden.shape)


def norm_linear_decode_supported(hidden: Tensor, residual: Tensor | None, norm_weight: Tensor,
                                 weight: Tensor, bias: Tensor | None = None) -> bool:
    """Whether the decode step takes ``norm_linear_decode_triton`` for an RMSNorm and the
    projection after it: where ``decode_linear`` takes the GEMV kernel for hidden, the
    norm weight in the weight's dtype, a 16/32-bit residual of hidden's shape (or none),
    no autograd, and ``MAMBA3_DECODE_NORM_LINEAR`` not ``0``."""
    dtypes = (torch.bfloat16, torch.float16, torch.float32)
    return (
        os.environ.get("MAMBA3_DECODE_NORM_LINEAR", "1") != "0"
        and norm_weight.dtype == weight.dtype
        and norm_weight.shape == (hidden.shape[-1],)
        and (residual is None or (residual.dtype in dtypes and residual.shape == hidden.shape))
        and not (torch.is_grad_enabled() and (norm_weight.requires_grad or (
            residual is not None and residual.requires_grad)))
        and linear_decode_supported(hidden, weight, bias)
    )
