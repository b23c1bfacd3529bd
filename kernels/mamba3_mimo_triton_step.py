"""Fused Mamba-3 MIMO decode step on CUDA through Triton: one launch per layer and token.

One program per (head, batch row, block of headdim rows) reads its state rows once (two
tiles, the low and high halves of d_state, so a rotary pair (n, n + N/2) sits at the same
place of both) and does the rank work on tensor cores: the update
``S = alpha S + A B`` is one product per half, A (rows, KR) holding the row factors
``beta x' mimo_x[r]`` and ``gamma x mimo_x[r]`` and B (KR, N/2) the previous and the
new rotated k of every rank (ranks zero-padded to KR = max(16, 2R)); the outputs of all
ranks ``Y = S Q^T`` are one more product per half, and the epilogue (D, headwise norm,
gate, ``mimo_o`` contraction) works on the (rows, KR) tile. The new state is written
(optionally in place; a per-head arrival counter lets the last program of a head write
the shared new k and angle after all have read the old ones). Products take float32
inputs exactly (``ieee``) and 16-bit ones in tf32 (the state stays float32). Computes
what ``mamba3_mimo_step_reference`` computes, with the pairing (n, n + N/2) for every N.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from mamba3_integrations.kernels.mamba3_mimo_triton_fwd import dot_precision
from mamba3_integrations.kernels.mamba3_siso_reference import Mamba3State
from mamba3_integrations.kernels.mamba3_siso_triton_fwd import PI, _cos_sin, _tanh, _wrap
from mamba3_integrations.kernels.mamba3_siso_triton_step import _last_arrival, arrival_counters

NORM_EPS = 1e-5
# State rows per program and warps: (pblk, num_warps) for a batch of more than
# ``large_batch`` rows, and for small batches; ``maxnreg`` a register cap for the
# large-batch launch (None: the compiler's choice). Measured on an H100 (docs/mimo.md):
# whole heads (p64, 4 warps) are fastest at B=1 (5.6 us; p16 7.3, p32 6.2) and B=128
# (the cap of 128 registers 215.7 us, uncapped 221.8).
STEP_CONFIG = {"pblk": 64, "num_warps": 4, "small_pblk": 64, "small_warps": 4,
               "large_batch": 16, "maxnreg": 128}

LAST_KERNELS: dict[str, object] = {}  # the latest compiled step kernel (resource report)


@triton.jit
def _rotated(X, x_at, XB, bias_at, half, mask, cos, sin):
    """``rot(X + bias)`` (float32) as its two halves ``(lo, hi)`` of the same shape as the
    offsets: entry ``i`` of the low half pairs with entry ``i`` of the high one
    (n, n + N/2), so no partner gather; masked entries are zero."""
    lo = tl.load(X + x_at, mask=mask, other=0.0).to(tl.float32)
    lo += tl.load(XB + bias_at, mask=mask, other=0.0).to(tl.float32)
    hi = tl.load(X + x_at + half, mask=mask, other=0.0).to(tl.float32)
    hi += tl.load(XB + bias_at + half, mask=mask, other=0.0).to(tl.float32)
    return lo * cos - hi * sin, hi * cos + lo * sin


@triton.jit
def _gate(y, zr, FAST: tl.constexpr):
    """``y * silu(zr)``; FAST takes the sigmoid from the hardware tanh (error ~5e-4, below
    the 16-bit outputs' rounding) instead of an exponential and a division."""
    if FAST:
        t = tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=f,f", [0.5 * zr],
                                      dtype=tl.float32, is_pure=True, pack=1)
        return y * zr * (0.5 + 0.5 * t)
    return y * zr * tl.sigmoid(zr)


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
    R: tl.constexpr, KR: tl.constexpr, BH: tl.constexpr,
    PBLK: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_NORM: tl.constexpr,
    SYNC: tl.constexpr, FAST: tl.constexpr, EVEN: tl.constexpr, PRECISION: tl.constexpr,
):
    """Grid (H, batch, cdiv(P, PBLK)): rows ``[pb*PBLK, (pb+1)*PBLK)`` of the state of one
    (row, head). ADT/DT/TRAP (b, H) and the (H, R, X) parameters contiguous; Q and K share
    strides; states by strides (the output state tensors may be the input ones). The
    state rows are two tiles, the low and high halves of d_state. The ranks are the inner
    axis of products (``PRECISION``): the update ``S = alpha S + A B`` with A (PBLK, KR)
    the columns ``beta x' mimo_x[r]``, ``gamma x mimo_x[r]`` and B (KR, BH) the rows
    ``k'_r`` (stored), ``k_r`` (new), zero padded; the outputs ``Y = S_lo Q_lo^T + S_hi
    Q_hi^T`` (PBLK, KR), column r < R for rank r. q and the new k come from one rotated
    (KR, BH) tile (q in rows < R, k in rows R..2R-1: one set of loads and rotations). The
    new k and angle, read by every program of the head, are written by one: with
    ``SYNC`` (in place, several programs) the last to arrive, otherwise the first."""
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

    # A (PBLK, KR): column c < R is beta x' mimo_x[c], R <= c < 2R is gamma x mimo_x[c-R].
    c = tl.arange(0, KR)
    mv = tl.load(MV + (h * R + c[None, :] % R) * headdim + p[:, None],
                 mask=p_ok[:, None] & (c < 2 * R)[None, :], other=0.0).to(tl.float32)
    a = mv * tl.where(c[None, :] < R, (x_prev * beta)[:, None], (x * gamma)[:, None])
    # One tile (KR, BH) per half of the biased rotated vectors: row c < R is q of rank c,
    # R <= c < 2R the new k of rank c-R (same angles), zero beyond.
    r = c[:, None] % R
    is_q = c[:, None] < R
    qk_ok = (c < 2 * R)[:, None] & i_ok[None, :]
    qk = tl.where(is_q, Q, K) + b * sq_b + r * sq_r + g * sq_g + i[None, :]
    qk_b = tl.where(is_q, QB, KB) + (h * R + r) * d_state + i[None, :]
    qk_lo, qk_hi = _rotated(qk, 0, qk_b, 0, half, qk_ok, cos[None, :], sin[None, :])
    # B (KR, BH): the stored k of every rank in rows c < R, the new k in rows R..2R-1.
    kst_at = b * sk_b + r * sk_r + h * sk_h + i[None, :]
    prev_ok = is_q & i_ok[None, :]
    b_lo = tl.where(is_q, tl.load(KST + kst_at, mask=prev_ok, other=0.0).to(tl.float32), qk_lo)
    b_hi = tl.where(is_q, tl.load(KST + kst_at + half, mask=prev_ok, other=0.0).to(tl.float32),
                    qk_hi)
    s_lo = tl.dot(a, b_lo, s_lo * alpha, input_precision=PRECISION)
    s_hi = tl.dot(a, b_hi, s_hi * alpha, input_precision=PRECISION)
    tl.debug_barrier()  # every thread has read the old state before it is overwritten
    if EVEN:
        tl.store(SSM_OUT + lo_at, s_lo.to(SSM_OUT.dtype.element_ty))
        tl.store(SSM_OUT + lo_at + half, s_hi.to(SSM_OUT.dtype.element_ty))
    else:
        tl.store(SSM_OUT + lo_at, s_lo.to(SSM_OUT.dtype.element_ty), mask=state_mask)
        tl.store(SSM_OUT + lo_at + half, s_hi.to(SSM_OUT.dtype.element_ty), mask=state_mask)

    # Y (PBLK, KR): column r < R is S q_r (the tile's q rows; the other rows are zeroed, so
    # their columns are zero and the epilogue drops them).
    y = tl.dot(s_lo, tl.trans(tl.where(is_q, qk_lo, 0.0)), input_precision=PRECISION)
    y = tl.dot(s_hi, tl.trans(tl.where(is_q, qk_hi, 0.0)), y, input_precision=PRECISION)

    # Epilogue per rank column: + D v_r, headwise norm, gate, contraction with MIMO_O.
    proj_at = (h * R + c[None, :]) * headdim + p[:, None]
    proj_ok = p_ok[:, None] & (c < R)[None, :]
    if HAS_D:
        mx = tl.load(MV + proj_at, mask=proj_ok, other=0.0).to(tl.float32)
        y += tl.load(DSKIP + h).to(tl.float32) * x[:, None] * mx
    if HAS_NORM:
        norm_w = _ld(NW + h * headdim + p, p_ok, EVEN)
        y = y * tl.rsqrt(tl.sum(y * y, 0) / headdim + eps)[None, :] * norm_w[:, None]
    if HAS_Z:
        z = _ld(Z + b * sz_b + h * sz_h + p, p_ok, EVEN)
        zr = z[:, None] * tl.load(MZ + proj_at, mask=proj_ok, other=0.0).to(tl.float32)
        y = _gate(y, zr, FAST)
    out = tl.sum(y * tl.load(MO + proj_at, mask=proj_ok, other=0.0).to(tl.float32), 1)
    tl.store(OUT + b * so_b + h * so_h + p, out.to(OUT.dtype.element_ty), mask=p_ok)

    tl.debug_barrier()  # every thread has read the old x (and k, angle) before they change
    tl.store(VST_OUT + b * sx_b + h * sx_h + p, x.to(VST_OUT.dtype.element_ty), mask=p_ok)
    writer = _last_arrival(COUNTER, b * nheads + h, nsplit) if SYNC else pb == 0
    if writer:  # the new k of every rank (the tile's rows R..2R-1), the new angle
        new_ok = qk_ok & ~is_q
        tl.store(KST_OUT + kst_at, qk_lo.to(KST_OUT.dtype.element_ty), mask=new_ok)
        tl.store(KST_OUT + kst_at + half, qk_hi.to(KST_OUT.dtype.element_ty), mask=new_ok)
        tl.store(ANGLE_OUT + b * st_b + h * st_h + i, theta, mask=rotated)


def mamba3_mimo_step_triton(
    Q: Tensor, K: Tensor, V: Tensor, ADT: Tensor, DT: Tensor, Trap: Tensor,
    Q_bias: Tensor, K_bias: Tensor, Angles: Tensor, MIMO_V: Tensor, MIMO_O: Tensor,
    state: Mamba3State, D: Tensor | None = None, Z: Tensor | None = None,
    MIMO_Z: Tensor | None = None, Norm_Weight: Tensor | None = None, inplace: bool = False,
    num_warps: int | None = None, pblk: int | None = None, maxnreg: int | None = None,
) -> tuple[Tensor, Mamba3State]:
    """One fused decode step; arguments and results as ``mamba3_mimo_step``. ``pblk``
    state rows per program (the whole headdim with ``Norm_Weight``, whose RMS spans it),
    ``maxnreg`` a register cap (0: none); settings not given come from ``STEP_CONFIG``."""
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
    if Q.dtype != K.dtype or Q_bias.dtype != K_bias.dtype:
        raise ValueError("Q and K (and Q_bias and K_bias) must share a dtype")
    if Q.stride() != K.stride():  # the kernel reads both through Q's strides
        Q, K = Q.contiguous(), K.contiguous()
    z = Z if Z is not None else V
    for t in (Q, K, V, z, Angles):
        if t.stride(-1) != 1:
            raise ValueError("Q, K, V, Z and Angles must be contiguous in their last axis")
    bp = max(16, triton.next_power_of_2(headdim))
    small = batch <= STEP_CONFIG["large_batch"]
    pblk = pblk or STEP_CONFIG["small_pblk" if small else "pblk"]
    num_warps = num_warps or STEP_CONFIG["small_warps" if small else "num_warps"]
    if maxnreg is None:
        maxnreg = None if small else STEP_CONFIG["maxnreg"]
    cap = {"maxnreg": maxnreg} if maxnreg else {}
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
        R=rank, KR=max(16, triton.next_power_of_2(2 * rank)), BH=bh, PBLK=pb,
        HAS_D=D is not None, HAS_Z=Z is not None, HAS_NORM=Norm_Weight is not None, SYNC=sync,
        FAST=V.is_cuda and V.dtype in (torch.float16, torch.bfloat16),
        EVEN=headdim % pb == 0 and half == bh, PRECISION=dot_precision(V.dtype),
        num_warps=num_warps, num_stages=1, **cap,
    )
    return out, tuple(new)
