"""Triton kernel of the Mamba-3 SISO decode step: one launch per layer and token.

One program per (sequence, head) does the angle update, the rotary of q and k, the state
update ``h = alpha h + beta v_prev k_prev^T + gamma v k^T``, ``y = h q + D v`` and the
``silu(z)`` gate. The state is read and written once, in its own dtype (float32 or
bfloat16), computed in float32. The new state may overwrite the old one in place: each
program reads its slice before writing it.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from mamba3_integrations.kernels.mamba3_siso_reference import Mamba3State
from mamba3_integrations.kernels.mamba3_siso_triton_fwd import PI, _sigmoid, _tanh, _wrap

STEP_WARPS = 4  # num_warps of the decode step


@triton.jit
def _rotated(X, BIAS, offs_n, mask_n, cos, sin):
    """x + bias rotated in natural order: pair (2i, 2i+1) by the angle i."""
    x = tl.load(X + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    x += tl.load(BIAS + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    partner = offs_n ^ 1
    xp = tl.load(X + partner, mask=mask_n, other=0.0).to(tl.float32)
    xp += tl.load(BIAS + partner, mask=mask_n, other=0.0).to(tl.float32)
    sign = tl.where((offs_n % 2) == 0, -1.0, 1.0)
    return x * cos + sign * xp * sin


@triton.jit
def _step_kernel(
    Q, s_qb, s_qg, K, s_kb, s_kg, V, s_vb, s_vh, Z, s_zb, s_zh,
    ADT, s_adb, s_adh, DT, s_dtb, s_dth, TRAP, s_tb, s_th,
    QB, s_qbh, KB, s_kbh, ANG, s_ab, s_ah, D,
    ANGLE, SSM, KPREV, VPREV,
    ANGLE_OUT, SSM_OUT, K_OUT, V_OUT, Y,
    nheads, heads_per_group, d_state, headdim, n_angles,
    NB: tl.constexpr, PB: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
):
    """Grid (batch, H). Q, K (b, G, N); V, Z (b, H, P); gates (b, H); Angles (b, H, A);
    biases (H, N); the last axis of each has stride 1. States are contiguous: angle
    (b, H, A), ssm (b, H, P, N), k (b, H, N), v (b, H, P).
    """
    b = tl.program_id(0)
    h = tl.program_id(1)
    bh = b.to(tl.int64) * nheads + h
    offs_n = tl.arange(0, NB)
    mask_n = offs_n < d_state
    offs_p = tl.arange(0, PB)
    mask_p = offs_p < headdim

    dt = tl.load(DT + b * s_dtb + h * s_dth).to(tl.float32)
    adt = tl.load(ADT + b * s_adb + h * s_adh).to(tl.float32)
    lam = _sigmoid(tl.load(TRAP + b * s_tb + h * s_th).to(tl.float32))
    # Angle of pair i = n // 2 (zero beyond n_angles, i.e. no rotation).
    pair = offs_n // 2
    mask_a = mask_n & (pair < n_angles)
    ang = tl.load(ANG + b * s_ab + h * s_ah + pair, mask=mask_a, other=0.0).to(tl.float32)
    theta = _wrap(tl.load(ANGLE + bh * n_angles + pair, mask=mask_a, other=0.0)
                  + _tanh(ang) * PI * dt)
    tl.store(ANGLE_OUT + bh * n_angles + pair, theta, mask=mask_a & (offs_n % 2 == 0))
    cos = tl.cos(theta)
    sin = tl.sin(theta)
    grp = (h // heads_per_group).to(tl.int64)
    q = _rotated(Q + b * s_qb + grp * s_qg, QB + h * s_qbh, offs_n, mask_n, cos, sin)
    k = _rotated(K + b * s_kb + grp * s_kg, KB + h * s_kbh, offs_n, mask_n, cos, sin)

    k_prev = tl.load(KPREV + bh * d_state + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    v_prev = tl.load(VPREV + bh * headdim + offs_p, mask=mask_p, other=0.0).to(tl.float32)
    v_raw = tl.load(V + b * s_vb + h * s_vh + offs_p, mask=mask_p, other=0.0)
    v = v_raw.to(tl.float32)
    m2 = mask_p[:, None] & mask_n[None, :]
    ssm_ptr = bh * headdim * d_state + offs_p[:, None] * d_state + offs_n[None, :]
    ssm = tl.load(SSM + ssm_ptr, mask=m2, other=0.0).to(tl.float32)

    alpha = tl.exp(adt)
    beta = (1.0 - lam) * dt * alpha
    gamma = lam * dt
    ssm = (alpha * ssm + (beta * v_prev)[:, None] * k_prev[None, :]
           + (gamma * v)[:, None] * k[None, :])
    y = tl.sum(ssm * q[None, :], 1)
    if HAS_D:
        y += tl.load(D + h).to(tl.float32) * v
    if HAS_Z:
        z = tl.load(Z + b * s_zb + h * s_zh + offs_p, mask=mask_p, other=0.0).to(tl.float32)
        y = y * z * _sigmoid(z)

    tl.store(SSM_OUT + ssm_ptr, ssm.to(SSM_OUT.dtype.element_ty), mask=m2)
    tl.store(K_OUT + bh * d_state + offs_n, k.to(K_OUT.dtype.element_ty), mask=mask_n)
    tl.store(V_OUT + bh * headdim + offs_p, v_raw.to(V_OUT.dtype.element_ty), mask=mask_p)
    tl.store(Y + bh * headdim + offs_p, y.to(Y.dtype.element_ty), mask=mask_p)


def launch_step(Q, K, V, ADT, DT, Trap, Q_bias, K_bias, Angles, D, Z, state, out_state, y,
                num_warps: int = 4) -> None:
    """Run the step kernel; ``state`` and ``out_state`` (may alias) are contiguous tuples."""
    batch, nheads, headdim = V.shape
    ngroups, d_state = Q.shape[1], Q.shape[2]
    n_angles = Angles.shape[2]
    zs = (Z.stride(0), Z.stride(1)) if Z is not None else (0, 0)
    _step_kernel[(batch, nheads)](
        Q, *Q.stride()[:2], K, *K.stride()[:2], V, *V.stride()[:2], Z, *zs,
        ADT, *ADT.stride(), DT, *DT.stride(), Trap, *Trap.stride(),
        Q_bias, Q_bias.stride(0), K_bias, K_bias.stride(0), Angles, *Angles.stride()[:2], D,
        *state, *out_state, y,
        nheads, nheads // ngroups, d_state, headdim, n_angles,
        NB=triton.next_power_of_2(d_state), PB=triton.next_power_of_2(headdim),
        HAS_D=D is not None, HAS_Z=Z is not None, num_warps=num_warps,
    )


def _unit_last(x: Tensor | None) -> Tensor | None:
    return x if x is None or x.stride(-1) == 1 else x.contiguous()


def mamba3_step_triton(
    Q: Tensor, K: Tensor, V: Tensor, ADT: Tensor, DT: Tensor, Trap: Tensor, Q_bias: Tensor,
    K_bias: Tensor, Angles: Tensor, state: Mamba3State, D: Tensor | None = None,
    Z: Tensor | None = None, inplace: bool = False,
) -> tuple[Tensor, Mamba3State]:
    """One fused decode step; arguments as ``mamba3_step``. With ``inplace`` the kernel
    writes the new state over ``state`` (each program reads its slice before writing)."""
    if inplace and not all(s.is_contiguous() for s in state):
        raise ValueError("an in-place decode step needs contiguous state tensors")
    state = tuple(s.contiguous() for s in state)
    out_state = state if inplace else tuple(torch.empty_like(s) for s in state)
    Q, K, V, Z, Angles, Q_bias, K_bias = map(_unit_last, (Q, K, V, Z, Angles, Q_bias, K_bias))
    y = torch.empty(V.shape, device=V.device, dtype=V.dtype)
    launch_step(Q, K, V, ADT, DT, Trap, Q_bias, K_bias, Angles, D, Z, state, out_state, y,
                     num_warps=STEP_WARPS)
    return y, out_state
