"""Residual add and RMSNorm in one pass (the blocks' ``add -> norm`` in decode).

``residual = hidden + residual`` (``hidden`` alone for the first block), kept in float32
when ``residual_in_fp32``; then ``rmsnorm(residual in the weight's dtype) * weight`` in
the weight's dtype, roundings as in ``modeling.block.Block``. One Triton program per row
on CUDA; ``add_rms_norm_reference`` (PyTorch) elsewhere and as the oracle.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mamba3_integrations.kernels.fused_decode import (
    decode_pdl,
    gdc_launch_dependents,
    gdc_wait,
    pdl_launch,
)

try:
    import triton
    import triton.language as tl
except ImportError:  # Triton is an optional extra
    triton = None


def add_rms_norm_reference(hidden: Tensor, residual: Tensor | None, weight: Tensor,
                           eps: float, residual_in_fp32: bool) -> tuple[Tensor, Tensor]:
    """Returns ``(normed, residual)`` for hidden (..., d)."""
    residual = hidden + residual if residual is not None else hidden
    x = residual.to(weight.dtype)
    xf = x if x.dtype == torch.float64 else x.float()
    normed = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
              * weight.to(xf.dtype)).to(x.dtype)
    if residual_in_fp32:
        residual = residual.to(torch.float32)
    return normed, residual


if triton is not None:

    @triton.jit
    def _add_rms_norm_kernel(X, R, W, OUT, R_OUT, d, eps,
                             BLOCK: tl.constexpr, HAS_R: tl.constexpr, PDL: tl.constexpr):
        """One row of contiguous (rows, d) tensors; the sum is rounded to R_OUT's dtype,
        then to W's dtype before the norm (as the unfused blocks do). ``PDL``: the
        weight is loaded before waiting for the previous kernel (``fused_decode``)."""
        row = tl.program_id(0).to(tl.int64) * d
        offs = tl.arange(0, BLOCK)
        mask = offs < d
        w = tl.load(W + offs, mask=mask, other=0.0).to(tl.float32)
        if PDL:
            gdc_wait()
            gdc_launch_dependents()
        s = tl.load(X + row + offs, mask=mask, other=0.0).to(tl.float32)
        if HAS_R:
            s += tl.load(R + row + offs, mask=mask, other=0.0).to(tl.float32)
        s = s.to(R_OUT.dtype.element_ty)
        tl.store(R_OUT + row + offs, s, mask=mask)
        x = s.to(W.dtype.element_ty).to(tl.float32)
        rstd = 1.0 / tl.sqrt(tl.sum(x * x, 0) / d + eps)
        tl.store(OUT + row + offs, (x * rstd * w).to(OUT.dtype.element_ty), mask=mask)


def add_rms_norm_triton(hidden: Tensor, residual: Tensor | None, weight: Tensor, eps: float,
                        residual_in_fp32: bool, pdl: bool | None = None) -> tuple[Tensor, Tensor]:
    """The Triton kernel; arguments and results as the reference. ``pdl``: programmatic
    dependent launch (default ``decode_pdl``)."""
    d = hidden.shape[-1]
    hidden = hidden.contiguous()
    if residual is not None:
        residual = residual.contiguous()
        r_dtype = torch.promote_types(hidden.dtype, residual.dtype)
    else:
        r_dtype = hidden.dtype
    if residual_in_fp32:
        r_dtype = torch.float32
    out = torch.empty(hidden.shape, device=hidden.device, dtype=weight.dtype)
    r_out = torch.empty(hidden.shape, device=hidden.device, dtype=r_dtype)
    rows = hidden.numel() // d if d else 0
    if pdl is None:
        pdl = decode_pdl(hidden)
    if rows:
        _add_rms_norm_kernel[(rows,)](
            hidden, residual if residual is not None else hidden, weight, out, r_out, d, eps,
            BLOCK=triton.next_power_of_2(d), HAS_R=residual is not None,
            PDL=pdl, **pdl_launch(pdl),
            num_warps=4 if d <= 4096 else 8,
        )
    return out, r_out


def add_rms_norm(hidden: Tensor, residual: Tensor | None, weight: Tensor, eps: float,
                 residual_in_fp32: bool, fused: bool = True) -> tuple[Tensor, Tensor]:
    """``(rmsnorm(hidden + residual) * weight, hidden + residual)``; the Triton kernel
    when ``fused`` (and Triton imports and the dtypes are 16/32-bit), else PyTorch."""
    dtypes = (torch.bfloat16, torch.float16, torch.float32)
    if (fused and triton is not None and hidden.dtype in dtypes and weight.dtype in dtypes
            and (residual is None or residual.dtype in dtypes)):
        return add_rms_norm_triton(hidden, residual, weight, eps, residual_in_fp32)
    return add_rms_norm_reference(hidden, residual, weight, eps, residual_in_fp32)
