"""Fused Mamba-3 MIMO decode step on CUDA through Triton: one launch per layer and token.

One program per (head, batch row, block of headdim rows) reads its state rows once (one
tile, natural order), adds the previous and the new token's outer products rank by rank,
produces the gated, rank-contracted output of its rows (one row reduction per rank) and
writes the new state (optionally in place; a per-head arrival counter lets the last
program of a head write the shared new k and angle after all have read the old ones). Computes what
``mamba3_mimo_step_reference`` computes, with the pairing (n, n + N/2) for every N.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from mamba3_integrations.kernels.mamba3_mimo_triton_fwd import _tanh
from mamba3_integrations.kernels.mamba3_siso_reference import Mamba3State
from mamba3_integrations.kernels.mamba3_siso_triton_fwd import PI, _cos_sin, _wrap
from mamba3_integrations.kernels.mamba3_siso_triton_step import _last_arrival, arrival_counters

NORM_EPS = 1e-5
# State rows per program and warps: (pblk, num_warps) for a batch of more than
# ``large_batch`` rows (many programs: whole heads, each thread 8 rows of the state), and
# for small batches (a few rows per thread, more programs in flight, the rank loops
# unrolled so their loads issue early; at large batch unrolling costs registers).
STEP_CONFIG = {"pblk": 64, "num_warps": 4, "small_pblk": 16, "small_warps": 4,
               "large_batch": 16}

LAST_KERNELS: dict[str, object] = {}  # the latest compiled step kernel (resource report)


@triton.jit
def _rotated(X, x_at, XB, bias_at, i, half, i_ok, cos, sin, EVEN: tl.constexpr):
    """``rot(X + bias)`` (float32) as its two halves ``(lo, hi)``: entry ``i`` of the low
    half pairs with entry ``i`` of the high one (n, n + N/2), so no partner gather."""
    lo = _ld(X + x_at + i, i_ok, EVEN)
    lo += _ld(XB + bias_at + i, i_ok, EVEN)
    hi = _ld(X + x_at + half + i, i_ok, EVEN)
    hi += _ld(XB + bias_at + half + i, i_ok, EVEN)
    return lo * cos - hi * sin, hi * cos + lo * sin


@triton.jit
def _ld(ptr, mask, EVEN: tl.constexpr):
    """float32 load, unmasked when the shapes fill the tiles (no predicates, no zero fill)."""
    if EVEN:
        return tl.load(ptr).to(tl.float32)
    return tl.load(ptr, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def _mimo_step_kernel(
    Q, K, V, Z, ANG, ADT, DT, TRAP, QB, KB, MV, MZ, MO, DSKIP, NW,
    ANGLE, SSM, KST, VST, ANGLE_OUT, SSM_OUT, KST_OUT, VST_OUT, OUT, COUNTER,
    nheads, heads_per_group, headdim, d_state, half, n_angles, eps, nsplit,
    sq_b, sq_r, sq_g, sv_b, sv_h, sz_b, sz_h, sa_b, sa_h, ss_b, ss_h, ss_p,
    sk_b, sk_r, sk_h, sx_b, sx_h, st_b, st_h, so_b, so_h,
    R: tl.constexpr, BH: tl.constexpr, PBLK: tl.constexpr, HAS_D: tl.constexpr,
    HAS_Z: tl.constexpr, HAS_NORM: tl.constexpr, SYNC: tl.constexpr, FAST: tl.constexpr,
    EVEN: tl.constexpr, UNROLL: tl.constexpr,
):
    """Grid (H, batch, cdiv(P, PBLK)): rows ``[pb*PBLK, (pb+1)*PBLK)`` of the state of one
    (row, head). ADT/DT/TRAP (b, H) and the (H, R, X) parameters contiguous; states by
    strides (the output state tensors may be the input ones). The state rows are two
    tiles, the low and high halves of d_state (the rotary pairs (n, n + N/2) sit in one
    thread, at the same place of both tiles); the per-column work (angle, cos/sin, rotated
    k and q) is done once per thread for all its rows and the per-rank row vectors
    (beta x' mimo_x, gamma x mimo_x) once per row, so the state element only sees the
    decay, 2R rank-1 FMAs and R output FMAs. The new k and angle, read by every program
    of the head, are written by one: with ``SYNC`` (in place, several programs) the last
    to arrive, otherwise the first."""
    h = tl.program_id(0)
    b = tl.program_id(1)
    pb = tl.program_id(2)
    g = h // heads_per_group
    i = tl.arange(0, BH)
    i_ok = i < half
    rotated = i < n_angles
    p = pb * PBLK + tl.arange(0, PBLK)
    p_ok = p < headdim
    state_mask = p_ok[:, None] & i_ok[None, :]
    lo_at = b * ss_b + h * ss_h + p[:, None] * ss_p + i[None, :]
    # The state first: the longest latency, independent of everything else.
    if EVEN:  # no masks: no predicated loads or zero fills per element
        s_lo = tl.load(SSM + lo_at).to(tl.float32)
        s_hi = tl.load(SSM + lo_at + half).to(tl.float32)
    else:
        s_lo = tl.load(SSM + lo_at, mask=state_mask, other=0.0).to(tl.float32)
        s_hi = tl.load(SSM + lo_at + half, mask=state_mask, other=0.0).to(tl.float32)

    adt = tl.load(ADT + b * nheads + h).to(tl.float32)
    dt = tl.load(DT + b * nheads + h).to(tl.float32)
    lam = tl.sigmoid(tl.load(TRAP + b * nheads + h).to(tl.float32))
    alpha = tl.exp(adt)
    beta = (1 - lam) * dt * alpha
    gamma = lam * dt

    theta = tl.load(ANGLE + b * st_b + h * st_h + i, mask=rotated, other=0.0)
    ang = tl.load(ANG + b * sa_b + h * sa_h + i, mask=rotated, other=0.0).to(tl.float32)
    theta += _tanh(ang) * dt * PI
    theta = _wrap(theta)
    cos, sin = _cos_sin(theta, FAST)
    cos = tl.where(rotated, cos, 1.0)
    sin = tl.where(rotated, sin, 0.0)

    x = _ld(V + b * sv_b + h * sv_h + p, p_ok, EVEN)
    x_prev = _ld(VST + b * sx_b + h * sx_h + p, p_ok, EVEN)
    x_prev *= beta
    x_new = x * gamma
    s_lo *= alpha
    s_hi *= alpha

    # State: beta * sum_r v'_r k'_r^T (previous token) + gamma * sum_r v_r k_r^T, with the
    # scaled row vectors (PBLK,) formed before they meet the tile.
    for r in tl.range(0, R, loop_unroll_factor=UNROLL):
        mx = _ld(MV + (h * R + r) * headdim + p, p_ok, EVEN)
        a = x_prev * mx
        c = x_new * mx
        kst_at = b * sk_b + r * sk_r + h * sk_h + i
        kp_lo = _ld(KST + kst_at, i_ok, EVEN)
        kp_hi = _ld(KST + kst_at + half, i_ok, EVEN)
        k_lo, k_hi = _rotated(K, b * sq_b + r * sq_r + g * sq_g, KB, (h * R + r) * d_state, i,
                              half, i_ok, cos, sin, EVEN)
        s_lo += a[:, None] * kp_lo[None, :]  # one FMA each (no sum of products first)
        s_lo += c[:, None] * k_lo[None, :]
        s_hi += a[:, None] * kp_hi[None, :]
        s_hi += c[:, None] * k_hi[None, :]

    # Output: per rank y_r = S q_r + D v_r, norm, gate, contract with MIMO_O.
    if HAS_D:
        d_skip = tl.load(DSKIP + h).to(tl.float32)
    if HAS_Z:
        z = _ld(Z + b * sz_b + h * sz_h + p, p_ok, EVEN)
    if HAS_NORM:
        norm_w = _ld(NW + h * headdim + p, p_ok, EVEN)
    out = tl.zeros((PBLK,), dtype=tl.float32)
    for r in tl.range(0, R, loop_unroll_factor=UNROLL):
        proj_at = (h * R + r) * headdim + p
        q_lo, q_hi = _rotated(Q, b * sq_b + r * sq_r + g * sq_g, QB, (h * R + r) * d_state, i,
                              half, i_ok, cos, sin, EVEN)
        y = tl.sum(s_lo * q_lo[None, :] + s_hi * q_hi[None, :], 1)
        if HAS_D:
            y += d_skip * x * _ld(MV + proj_at, p_ok, EVEN)
        if HAS_NORM:
            y = y * tl.rsqrt(tl.sum(y * y, 0) / headdim + eps) * norm_w
        if HAS_Z:
            zr = z * _ld(MZ + proj_at, p_ok, EVEN)
            y = y * zr * tl.sigmoid(zr)
        out += y * _ld(MO + proj_at, p_ok, EVEN)
    tl.store(OUT + b * so_b + h * so_h + p, out.to(OUT.dtype.element_ty), mask=p_ok)

    tl.debug_barrier()  # every read of the old state is done before it is overwritten
    if EVEN:
        tl.store(SSM_OUT + lo_at, s_lo.to(SSM_OUT.dtype.element_ty))
        tl.store(SSM_OUT + lo_at + half, s_hi.to(SSM_OUT.dtype.element_ty))
    else:
        tl.store(SSM_OUT + lo_at, s_lo.to(SSM_OUT.dtype.element_ty), mask=state_mask)
        tl.store(SSM_OUT + lo_at + half, s_hi.to(SSM_OUT.dtype.element_ty), mask=state_mask)
    tl.store(VST_OUT + b * sx_b + h * sx_h + p, x.to(VST_OUT.dtype.element_ty), mask=p_ok)
    writer = _last_arrival(COUNTER, b * nheads + h, nsplit) if SYNC else pb == 0
    if writer:
        for r in tl.range(0, R, loop_unroll_factor=UNROLL):
            k_lo, k_hi = _rotated(K, b * sq_b + r * sq_r + g * sq_g, KB, (h * R + r) * d_state,
                                  i, half, i_ok, cos, sin, EVEN)
            kst_at = b * sk_b + r * sk_r + h * sk_h + i
            tl.store(KST_OUT + kst_at, k_lo.to(KST_OUT.dtype.element_ty), mask=i_ok)
            tl.store(KST_OUT + kst_at + half, k_hi.to(KST_OUT.dtype.element_ty), mask=i_ok)
        tl.store(ANGLE_OUT + b * st_b + h * st_h + i, theta, mask=rotated)


def mamba3_mimo_step_triton(
    Q: Tensor, K: Tensor, V: Tensor, ADT: Tensor, DT: Tensor, Trap: Tensor,
    Q_bias: Tensor, K_bias: Tensor, Angles: Tensor, MIMO_V: Tensor, MIMO_O: Tensor,
    state: Mamba3State, D: Tensor | None = None, Z: Tensor | None = None,
    MIMO_Z: Tensor | None = None, Norm_Weight: Tensor | None = None, inplace: bool = False,
    num_warps: int | None = None, pblk: int | None = None, unroll: bool | None = None,
) -> tuple[Tensor, Mamba3State]:
    """One fused decode step; arguments and results as ``mamba3_mimo_step``. ``pblk``
    state rows per program (the whole headdim with ``Norm_Weight``, whose RMS spans it)."""
    batch, rank, ngroups, d_state = Q.shape
    nheads, headdim = V.shape[1], V.shape[2]
    if d_state % 2:
        raise ValueError(f"d_state must be even for the rotary pairs (i, i+N/2), got {d_state}")
    if MIMO_O is None:
        raise ValueError("the decode step contracts the ranks: MIMO_O is required")
    if Z is not None and MIMO_Z is None:
        raise ValueError("Z needs MIMO_Z (nheads, rank, headdim)")
    angle, ssm, k_state, v_state = state
    if not all(s.is_contiguous() for s in state):
        raise ValueError("the decode state tensors (angle, ssm, k, v) must be contiguous")
    new = state if inplace else tuple(torch.empty_like(s) for s in state)
    out = torch.empty(batch, nheads, headdim, device=V.device, dtype=V.dtype)
    scalars = [t.contiguous() for t in (ADT, DT, Trap)]
    params = [t.contiguous() for t in (Q_bias, K_bias, MIMO_V)]
    dummy = torch.empty(1, device=V.device)
    opt = [t.contiguous() if t is not None else dummy for t in (MIMO_Z, MIMO_O, D, Norm_Weight)]
    z = Z if Z is not None else V
    for t in (Q, K, V, z, Angles):
        if t.stride(-1) != 1:
            raise ValueError("Q, K, V, Z and Angles must be contiguous in their last axis")
    bp = max(16, triton.next_power_of_2(headdim))
    small = batch <= STEP_CONFIG["large_batch"]
    pblk = pblk or STEP_CONFIG["small_pblk" if small else "pblk"]
    num_warps = num_warps or STEP_CONFIG["small_warps" if small else "num_warps"]
    pb = bp if Norm_Weight is not None else min(bp, pblk)
    nsplit = triton.cdiv(headdim, pb)
    sync = inplace and nsplit > 1
    counters = arrival_counters(V.device, batch * nheads) if sync else out
    half = d_state // 2
    bh = max(16, triton.next_power_of_2(half))
    LAST_KERNELS["step"] = _mimo_step_kernel[(nheads, batch, nsplit)](
        Q, K, V, z, Angles, *scalars, *params, *opt, *state, *new, out, counters,
        nheads, nheads // ngroups, headdim, d_state, half, Angles.shape[-1], NORM_EPS, nsplit,
        Q.stride(0), Q.stride(1), Q.stride(2), V.stride(0), V.stride(1), z.stride(0),
        z.stride(1), Angles.stride(0), Angles.stride(1), ssm.stride(0), ssm.stride(1),
        ssm.stride(2), k_state.stride(0), k_state.stride(1), k_state.stride(2),
        v_state.stride(0), v_state.stride(1), angle.stride(0), angle.stride(1),
        out.stride(0), out.stride(1),
        R=rank, BH=bh, PBLK=pb, HAS_D=D is not None,
        HAS_Z=Z is not None, HAS_NORM=Norm_Weight is not None, SYNC=sync,
        FAST=V.is_cuda and V.dtype in (torch.float16, torch.bfloat16),
        EVEN=headdim % pb == 0 and half == bh,
        UNROLL=rank if (small if unroll is None else unroll) else 1,
        num_warps=num_warps, num_stages=1,
    )
    return out, tuple(new)
