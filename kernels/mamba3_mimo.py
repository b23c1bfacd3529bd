"""Public Mamba-3 MIMO scan and decode step: Triton on CUDA, the PyTorch reference otherwise.

Shapes and states as in ``mamba3_mimo_reference`` (and ``shared/golden/README.md``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from mamba3_integrations.kernels.mamba3_mimo_reference import (
    mamba3_mimo_scan_reference,
    mamba3_mimo_step_reference,
    sequence_args,
    sequence_segments,
)
from mamba3_integrations.kernels.mamba3_siso_reference import Mamba3State


def _use_triton(x: Tensor, d_state: int) -> bool:
    """Triton for CUDA tensors of 16/32-bit floats and an even d_state; float64 always
    runs the reference."""
    return (x.is_cuda and x.dtype in (torch.float16, torch.bfloat16, torch.float32)
            and d_state % 2 == 0)


def _check_scan_shapes(Q: Tensor, K: Tensor, V: Tensor, ADT: Tensor, Q_bias: Tensor,
                       MIMO_V: Tensor, Angles: Tensor) -> None:
    if Q.dim() != 5 or K.shape != Q.shape:
        raise ValueError(f"Q and K must both be (batch, seqlen, rank, ngroups, d_state); got "
                         f"{tuple(Q.shape)} and {tuple(K.shape)}")
    if V.dim() != 4 or V.shape[:2] != Q.shape[:2]:
        raise ValueError(f"V must be (batch, seqlen, nheads, headdim) matching Q's first two "
                         f"axes {tuple(Q.shape[:2])}; got {tuple(V.shape)}")
    b, seqlen, rank, ngroups, d_state = Q.shape
    nheads, headdim = V.shape[2], V.shape[3]
    if seqlen == 0:
        raise ValueError("the scan needs at least one token (seqlen is 0)")
    if nheads % ngroups:
        raise ValueError(f"nheads ({nheads}) must be a multiple of ngroups ({ngroups})")
    if ADT.shape != (b, nheads, seqlen):
        raise ValueError(f"ADT, DT and Trap must be (batch, nheads, seqlen) = "
                         f"{(b, nheads, seqlen)}; got {tuple(ADT.shape)}")
    if Q_bias.shape != (nheads, rank, d_state):
        raise ValueError(f"Q_bias and K_bias must be (nheads, rank, d_state) = "
                         f"{(nheads, rank, d_state)}; got {tuple(Q_bias.shape)}")
    if MIMO_V.shape != (nheads, rank, headdim):
        raise ValueError(f"MIMO_V, MIMO_Z and MIMO_O must be (nheads, rank, headdim) = "
                         f"{(nheads, rank, headdim)}; got {tuple(MIMO_V.shape)}")
    if Angles.shape[:3] != (b, seqlen, nheads) or Angles.shape[3] > d_state // 2:
        raise ValueError(f"Angles must be (batch, seqlen, nheads, n_angles) with "
                         f"n_angles <= d_state/2; got {tuple(Angles.shape)}")


def _select(state: Mamba3State | None, i: int) -> Mamba3State | None:
    return None if state is None else tuple(s[i : i + 1] for s in state)


def _scan_reference_varlen(args: dict, cu_seqlens: Tensor, initial_state: Mamba3State | None,
                           return_final_state: bool, chunk_size: int):
    """Packed sequences (batch 1) on the reference: one call per sequence."""
    outs, finals = [], []
    for i, (lo, hi) in enumerate(sequence_segments(args["V"].shape[1], cu_seqlens)):
        result = mamba3_mimo_scan_reference(
            **sequence_args(args, lo, hi), initial_state=_select(initial_state, i),
            return_final_state=return_final_state, chunk_size=chunk_size)
        out, final = result if return_final_state else (result, None)
        outs.append(out)
        finals.append(final)
    out = torch.cat(outs, dim=1)
    if not return_final_state:
        return out
    return out, tuple(torch.cat(parts, dim=0) for parts in zip(*finals, strict=True))


def mamba3_mimo_scan(
    Q: Tensor,
    K: Tensor,
    V: Tensor,
    ADT: Tensor,
    DT: Tensor,
    Trap: Tensor,
    Q_bias: Tensor,
    K_bias: Tensor,
    Angles: Tensor,
    MIMO_V: Tensor,
    MIMO_O: Tensor | None,
    D: Tensor | None = None,
    Z: Tensor | None = None,
    MIMO_Z: Tensor | None = None,
    Norm_Weight: Tensor | None = None,
    initial_state: Mamba3State | None = None,
    return_final_state: bool = False,
    chunk_size: int | None = None,
    cu_seqlens: Tensor | None = None,
) -> Tensor | tuple[Tensor, Mamba3State]:
    """Mamba-3 MIMO scan over whole sequences (prefill); differentiable.

    Returns ``out`` (b, l, H, P) (``MIMO_O=None``: per-rank (b, l, R, H, P)), or
    ``(out, (angle, ssm, k, v))`` with ``return_final_state``. ``Norm_Weight`` (H, P)
    applies the headwise RMSNorm of ``is_outproj_norm`` before the gate. With
    ``cu_seqlens`` (n+1,) the batch axis is 1 and holds n packed sequences; states are
    then per sequence. ``chunk_size`` (default 64/R) does not change the result; the
    Triton kernels choose their own tiles.
    """
    _check_scan_shapes(Q, K, V, ADT, Q_bias, MIMO_V, Angles)
    rank = Q.shape[2]
    if cu_seqlens is not None and Q.shape[0] != 1:
        raise ValueError(f"packed sequences (cu_seqlens) need batch 1, got {Q.shape[0]}")
    args = dict(Q=Q, K=K, V=V, ADT=ADT, DT=DT, Trap=Trap, Q_bias=Q_bias, K_bias=K_bias,
                Angles=Angles, MIMO_V=MIMO_V, MIMO_O=MIMO_O, D=D, Z=Z, MIMO_Z=MIMO_Z,
                Norm_Weight=Norm_Weight)
    if _use_triton(V, Q.shape[-1]):
        from mamba3_integrations.kernels.mamba3_mimo_triton import mamba3_mimo_scan_triton

        return mamba3_mimo_scan_triton(**args, initial_state=initial_state,
                                       return_final_state=return_final_state,
                                       cu_seqlens=cu_seqlens)
    chunk_size = chunk_size or max(1, 64 // rank)
    if cu_seqlens is not None:
        return _scan_reference_varlen(args, cu_seqlens, initial_state, return_final_state,
                                      chunk_size)
    return mamba3_mimo_scan_reference(**args, initial_state=initial_state,
                                      return_final_state=return_final_state,
                                      chunk_size=chunk_size)


def mamba3_mimo_step(
    Q: Tensor,
    K: Tensor,
    V: Tensor,
    ADT: Tensor,
    DT: Tensor,
    Trap: Tensor,
    Q_bias: Tensor,
    K_bias: Tensor,
    Angles: Tensor,
    MIMO_V: Tensor,
    MIMO_O: Tensor | None,
    state: Mamba3State,
    D: Tensor | None = None,
    Z: Tensor | None = None,
    MIMO_Z: Tensor | None = None,
    Norm_Weight: Tensor | None = None,
    inplace: bool = False,
) -> tuple[Tensor, Mamba3State]:
    """One decode step: Q, K (b, R, G, N), V, Z (b, H, P), ADT, DT, Trap (b, H), Angles
    (b, H, A). Returns ``(y (b, H, P), new_state)``; with ``inplace`` the state tensors
    are updated in place and returned (one fused kernel launch on CUDA)."""
    args = dict(Q=Q, K=K, V=V, ADT=ADT, DT=DT, Trap=Trap, Q_bias=Q_bias, K_bias=K_bias,
                Angles=Angles, MIMO_V=MIMO_V, MIMO_O=MIMO_O, D=D, Z=Z, MIMO_Z=MIMO_Z,
                Norm_Weight=Norm_Weight)
    if _use_triton(V, Q.shape[-1]) and MIMO_O is not None:
        from mamba3_integrations.kernels.mamba3_mimo_triton_step import mamba3_mimo_step_triton

        return mamba3_mimo_step_triton(**args, state=state, inplace=inplace)
    y, new_state = mamba3_mimo_step_reference(**args, state=state)
    if not inplace:
        return y, new_state
    for old, new in zip(state, new_state, strict=True):
        old.copy_(new)
    return y, state
