"""Public Mamba-3 SISO scan and decode step: dispatch between Triton and the reference.

CUDA tensors of dtype bfloat16, float16 or float32 go to the Triton kernels
(``mamba3_siso_triton``) when Triton imports and the shapes suit them; everything else
(CPU, float64, odd shapes) goes to the PyTorch reference. ``MAMBA3_DISABLE_TRITON=1``
forces the reference.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from mamba3_integrations.kernels.mamba3_siso_reference import (
    Mamba3State,
    mamba3_scan_reference,
    mamba3_step_reference,
)

try:
    from mamba3_integrations.kernels import mamba3_siso_triton as _triton
except ImportError:  # Triton is an optional extra
    _triton = None

TRITON_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


def triton_supported(V: Tensor, d_state: int, chunk_size: int = 64) -> bool:
    """Whether the Triton kernels take these inputs (else the reference runs)."""
    return (
        _triton is not None
        and V.is_cuda
        and V.dtype in TRITON_DTYPES
        and os.environ.get("MAMBA3_DISABLE_TRITON", "0") in ("", "0")
        and d_state % 2 == 0
        and d_state <= 256
        and V.shape[-1] <= 256
        and chunk_size >= 16
    )


def _check_scan_shapes(Q: Tensor, K: Tensor, V: Tensor, ADT: Tensor, Angles: Tensor) -> None:
    if Q.dim() != 4 or K.shape != Q.shape:
        raise ValueError(f"Q and K must both be (batch, seqlen, ngroups, d_state); got "
                         f"{tuple(Q.shape)} and {tuple(K.shape)}")
    if V.dim() != 4 or V.shape[:2] != Q.shape[:2]:
        raise ValueError(f"V must be (batch, seqlen, nheads, headdim) matching Q's first two "
                         f"axes {tuple(Q.shape[:2])}; got {tuple(V.shape)}")
    b, seqlen, nheads = V.shape[0], V.shape[1], V.shape[2]
    if seqlen == 0:
        raise ValueError("the scan needs at least one token (seqlen is 0)")
    if ADT.shape != (b, nheads, seqlen):
        raise ValueError(f"ADT, DT and Trap must be (batch, nheads, seqlen) = "
                         f"{(b, nheads, seqlen)}; got {tuple(ADT.shape)}")
    if Angles.shape[:3] != (b, seqlen, nheads) or 2 * Angles.shape[3] > Q.shape[3]:
        raise ValueError(f"Angles must be (batch, seqlen, nheads, n_angles) with "
                         f"2*n_angles <= d_state; got {tuple(Angles.shape)}")


def mamba3_scan(
    Q: Tensor,
    K: Tensor,
    V: Tensor,
    ADT: Tensor,
    DT: Tensor,
    Trap: Tensor,
    Q_bias: Tensor,
    K_bias: Tensor,
    Angles: Tensor,
    D: Tensor | None = None,
    Z: Tensor | None = None,
    initial_state: Mamba3State | None = None,
    return_final_state: bool = False,
    chunk_size: int = 64,
    cu_seqlens: Tensor | None = None,
) -> Tensor | tuple[Tensor, Mamba3State]:
    """Mamba-3 SISO scan over a whole sequence (prefill). Differentiable.

    Shapes as in ``shared/golden/README.md``; states are ``(angle, ssm, k, v)``.
    ``cu_seqlens`` (nseq + 1,) packs several sequences into batch row 0: each starts
    from its own initial state (states then have nseq rows) and returns its own final
    state. Returns ``out`` (b, l, H, P), or ``(out, final_state)`` with
    ``return_final_state``.
    """
    _check_scan_shapes(Q, K, V, ADT, Angles)
    args = (Q, K, V, ADT, DT, Trap, Q_bias, K_bias, Angles)
    if triton_supported(V, Q.shape[-1], chunk_size):
        return _triton.mamba3_scan_triton(
            *args, D=D, Z=Z, initial_state=initial_state,
            return_final_state=return_final_state, chunk_size=chunk_size,
            cu_seqlens=cu_seqlens,
        )
    if cu_seqlens is None:
        return mamba3_scan_reference(
            *args, D=D, Z=Z, initial_state=initial_state,
            return_final_state=return_final_state, chunk_size=chunk_size,
        )
    return _scan_packed_reference(args, D, Z, initial_state, return_final_state, chunk_size,
                                  cu_seqlens)


def _scan_packed_reference(
    args: tuple[Tensor, ...], D: Tensor | None, Z: Tensor | None,
    initial_state: Mamba3State | None, return_final_state: bool, chunk_size: int,
    cu_seqlens: Tensor,
) -> Tensor | tuple[Tensor, Mamba3State]:
    """The reference, one packed sequence at a time."""
    bounds = [int(x) for x in cu_seqlens]
    seqlen = args[0].shape[1]
    if args[0].shape[0] != 1 or bounds[0] != 0 or bounds[-1] != seqlen or any(
            a >= b for a, b in zip(bounds[:-1], bounds[1:], strict=True)):
        raise ValueError(f"cu_seqlens must rise strictly from 0 to seqlen={seqlen} with "
                         f"batch 1; got {bounds} for batch {args[0].shape[0]}")
    time_axis = (1, 1, 1, 2, 2, 2, None, None, 1)
    outs, finals = [], []
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        part = [x if ax is None else x.narrow(ax, a, b - a)
                for x, ax in zip(args, time_axis, strict=True)]
        init = None if initial_state is None else tuple(s[i:i + 1] for s in initial_state)
        out, final = mamba3_scan_reference(
            *part, D=D, Z=None if Z is None else Z[:, a:b], initial_state=init,
            return_final_state=True, chunk_size=chunk_size)
        outs.append(out)
        finals.append(final)
    out = torch.cat(outs, dim=1)
    if not return_final_state:
        return out
    return out, tuple(torch.cat(parts) for parts in zip(*finals, strict=True))


def mamba3_step(
    Q: Tensor,
    K: Tensor,
    V: Tensor,
    ADT: Tensor,
    DT: Tensor,
    Trap: Tensor,
    Q_bias: Tensor,
    K_bias: Tensor,
    Angles: Tensor,
    state: Mamba3State,
    D: Tensor | None = None,
    Z: Tensor | None = None,
    inplace: bool = False,
) -> tuple[Tensor, Mamba3State]:
    """One recurrent decode step (inputs without the seqlen axis); returns ``(y, new_state)``.

    On CUDA this is one fused Triton launch. With ``inplace`` the new state overwrites
    ``state`` (no copy; the tensors are returned), else the input state is left alone.
    """
    if triton_supported(V, Q.shape[-1]):
        return _triton.mamba3_step_triton(Q, K, V, ADT, DT, Trap, Q_bias, K_bias, Angles, state,
                                          D=D, Z=Z, inplace=inplace)
    y, new = mamba3_step_reference(Q, K, V, ADT, DT, Trap, Q_bias, K_bias, Angles, state, D=D,
                                   Z=Z)
    if not inplace:
        return y, new
    for dst, src in zip(state, new, strict=True):
        dst.copy_(src)
    return y, state
