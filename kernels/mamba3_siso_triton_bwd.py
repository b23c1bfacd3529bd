"""Triton kernels of the Mamba-3 SISO chunked scan, backward pass.

With ``dy`` the gradient of the output before the gate (after the D skip is removed
from consideration), ``S_in[c]`` the state entering chunk c and ``G[c]`` the gradient of
the state leaving it:

1. ``_chunk_dstate_kernel``: each chunk's own contribution to the state gradient,
   ``sum_t exp(A_t) dy_t q_t^T``.
2. ``_state_passing_bwd_kernel``: ``G[c-1] = exp(A_tot[c]) G[c] + local[c]`` backwards over
   the chunks, in place; also ``dA_tot[c] = exp(A_tot[c]) <G[c], S_in[c]>`` per block.
3. ``_chunk_scan_bwd_kernel``: per chunk, the gradients of q, k (taken back through the
   rotation, giving theta's gradient too), v, the trapezoid weights and the decays.
4. ``_angle_cumsum_bwd_kernel``: theta's gradient back through its running sum.
"""

from __future__ import annotations

import triton
import triton.language as tl

from mamba3_integrations.kernels.mamba3_siso_triton_fwd import (
    PI,
    _chunk_bounds,
    _chunk_theta,
    _dot,
    _load_gates,
    _load_rotated,
    _tanh,
)


@triton.jit
def _chunk_dstate_kernel(
    Q, s_qb, s_qt, s_qg, s_qn,
    DY, s_yb, s_yt, s_yh, s_yp,
    ADT, s_ab, s_ah, s_at,
    QB, s_bh, s_bn,
    ANG, s_gb, s_gt, s_gh, s_ga, DT, s_db, s_dh, s_dt, OFFSET,
    DSTATES, CHUNKS,
    seqlen, chunks_per_seq, nheads, heads_per_group, n_half, n_angles, headdim,
    C: tl.constexpr, NH: tl.constexpr, PB: tl.constexpr,
    IS_VARLEN: tl.constexpr, IEEE: tl.constexpr,
):
    """sum_t exp(A_t) dy_t q_t^T of one chunk and head, (P, [even | odd]); grid (chunks, H)."""
    pid_c = tl.program_id(0)
    h = tl.program_id(1)
    row, start, end, seq_end = _chunk_bounds(pid_c, CHUNKS, seqlen, chunks_per_seq, C,
                                             IS_VARLEN)
    offs_t = start + tl.arange(0, C)
    mask_t = offs_t < end
    row64 = row.to(tl.int64)
    adt = tl.load(ADT + row64 * s_ab + h * s_ah + offs_t * s_at, mask=mask_t,
                  other=0.0).to(tl.float32)
    decay = tl.exp(tl.cumsum(adt, 0))
    theta, _ = _chunk_theta(ANG + row64 * s_gb + h * s_gh, s_gt, s_ga,
                            DT + row64 * s_db + h * s_dh, s_dt,
                            OFFSET + (pid_c * nheads + h) * n_angles, offs_t, mask_t, n_angles,
                            NH, True)
    q_e, q_o = _load_rotated(Q + row64 * s_qb + (h // heads_per_group) * s_qg, s_qt, s_qn,
                             QB + h * s_bh, s_bn, tl.cos(theta), tl.sin(theta), offs_t, mask_t,
                             n_half, NH, 0)
    offs_p = tl.arange(0, PB)
    mask_p = offs_p < headdim
    dy = tl.load(DY + row64 * s_yb + h * s_yh + offs_t[:, None] * s_yt + offs_p[None, :] * s_yp,
                 mask=mask_t[:, None] & mask_p[None, :], other=0.0).to(tl.float32)
    dty = DY.dtype.element_ty
    dys = tl.trans((dy * decay[:, None]).to(dty))
    g_e = _dot(dys, q_e.to(dty), IEEE)
    g_o = _dot(dys, q_o.to(dty), IEEE)
    offs_i = tl.arange(0, NH)
    base = DSTATES + (pid_c.to(tl.int64) * nheads + h) * headdim * 2 * n_half
    ptr = base + offs_p[:, None] * (2 * n_half) + offs_i[None, :]
    m = mask_p[:, None] & (offs_i < n_half)[None, :]
    tl.store(ptr, g_e, mask=m)
    tl.store(ptr + n_half, g_o, mask=m)


@triton.jit
def _state_passing_bwd_kernel(
    DSTATES, STATES, ATOT, DFINAL, DSTART, DATOT, SEQ_CHUNK,
    chunks_per_seq, nheads, size, nblocks,
    BLOCK: tl.constexpr, IS_VARLEN: tl.constexpr, HAS_DFINAL: tl.constexpr,
):
    """Replace each chunk's local gradient by G (gradient of the state leaving the chunk);
    grid (nseq, H, blocks)."""
    seq = tl.program_id(0)
    h = tl.program_id(1)
    blk = tl.program_id(2)
    offs = blk * BLOCK + tl.arange(0, BLOCK)
    mask = offs < size
    seq_off = (seq * nheads + h).to(tl.int64) * size
    if HAS_DFINAL:
        g = tl.load(DFINAL + seq_off + offs, mask=mask, other=0.0)
    else:
        g = tl.zeros([BLOCK], dtype=tl.float32)
    if IS_VARLEN:
        c0 = tl.load(SEQ_CHUNK + seq)
        c1 = tl.load(SEQ_CHUNK + seq + 1)
    else:
        c0 = seq * chunks_per_seq
        c1 = c0 + chunks_per_seq
    for i in range(0, c1 - c0):
        c = c1 - 1 - i
        off = (c * nheads + h).to(tl.int64) * size + offs
        local = tl.load(DSTATES + off, mask=mask, other=0.0)
        tl.store(DSTATES + off, g, mask=mask)
        decay = tl.exp(tl.load(ATOT + c * nheads + h))
        s_in = tl.load(STATES + off, mask=mask, other=0.0)
        tl.store(DATOT + (c * nheads + h) * nblocks + blk, decay * tl.sum(g * s_in, 0))
        g = g * decay + local
    tl.store(DSTART + seq_off + offs, g, mask=mask)


@triton.jit
def _chunk_scan_bwd_kernel(
    Q, s_qb, s_qt, s_qg, s_qn,
    K, s_kb, s_kt, s_kg, s_kn,
    V, s_vb, s_vt, s_vh, s_vp,
    DY, s_yb, s_yt, s_yh, s_yp,
    ADT, s_ab, s_ah, s_at, DT, s_db, s_dh, s_dt, TRAP, s_tb, s_th, s_tt,
    QB, KB, s_bh, s_bn,
    ANG, s_gb, s_gt, s_gh, s_ga, OFFSET,
    STATES, DSTATES, DATOT, CHUNKS,
    DQ, DK, DV, DTHETA, DADT, DW, DGAMMA,
    seqlen, chunks_per_seq, nheads, heads_per_group, n_half, n_angles, headdim,
    C: tl.constexpr, NH: tl.constexpr, PB: tl.constexpr,
    IS_VARLEN: tl.constexpr, IEEE: tl.constexpr,
):
    """Gradients of one chunk and head; grid (chunks, H).

    Writes per head (float32, contiguous): DQ, DK (b, l, H, N) before rotation and bias
    sums, DV (b, l, H, P), DTHETA (b, l, H, A), DADT, DW, DGAMMA (b, H, l).
    """
    pid_c = tl.program_id(0)
    h = tl.program_id(1)
    row, start, end, seq_end = _chunk_bounds(pid_c, CHUNKS, seqlen, chunks_per_seq, C,
                                             IS_VARLEN)
    offs_t = start + tl.arange(0, C)
    mask_t = offs_t < end
    row64 = row.to(tl.int64)
    dt_ptr = DT + row64 * s_db + h * s_dh
    adt, dt, lam, gamma, w = _load_gates(
        ADT + row64 * s_ab + h * s_ah, s_at, dt_ptr, s_dt,
        TRAP + row64 * s_tb + h * s_th, s_tt, offs_t, mask_t, offs_t + 1 < seq_end)
    a_cum = tl.cumsum(adt, 0)
    a_end = tl.sum(adt, 0)
    decay_in = tl.exp(a_cum)
    coef_end = tl.exp(a_end - a_cum)
    coef = coef_end * w
    grp = h // heads_per_group
    theta, _ = _chunk_theta(ANG + row64 * s_gb + h * s_gh, s_gt, s_ga, dt_ptr, s_dt,
                            OFFSET + (pid_c * nheads + h) * n_angles, offs_t, mask_t, n_angles,
                            NH, True)
    cos = tl.cos(theta)
    sin = tl.sin(theta)
    q_e, q_o = _load_rotated(Q + row64 * s_qb + grp * s_qg, s_qt, s_qn, QB + h * s_bh, s_bn,
                             cos, sin, offs_t, mask_t, n_half, NH, 0)
    k_e, k_o = _load_rotated(K + row64 * s_kb + grp * s_kg, s_kt, s_kn, KB + h * s_bh, s_bn,
                             cos, sin, offs_t, mask_t, n_half, NH, 0)
    offs_p = tl.arange(0, PB)
    mask_p = offs_p < headdim
    mask_tp = mask_t[:, None] & mask_p[None, :]
    v = tl.load(V + row64 * s_vb + h * s_vh + offs_t[:, None] * s_vt + offs_p[None, :] * s_vp,
                mask=mask_tp, other=0.0)
    dty = v.dtype
    dy = tl.load(DY + row64 * s_yb + h * s_yh + offs_t[:, None] * s_yt + offs_p[None, :] * s_yp,
                 mask=mask_tp, other=0.0).to(tl.float32)
    vf = v.to(tl.float32)
    dyd = dy.to(dty)
    qe_d, qo_d, ke_d, ko_d = q_e.to(dty), q_o.to(dty), k_e.to(dty), k_o.to(dty)

    offs_i = tl.arange(0, NH)
    st_off = (pid_c.to(tl.int64) * nheads + h) * headdim * 2 * n_half
    st_ptr = offs_p[:, None] * (2 * n_half) + offs_i[None, :]
    m_st = mask_p[:, None] & (offs_i < n_half)[None, :]
    s_e = tl.load(STATES + st_off + st_ptr, mask=m_st, other=0.0).to(dty)
    s_o = tl.load(STATES + st_off + st_ptr + n_half, mask=m_st, other=0.0).to(dty)
    g_e = tl.load(DSTATES + st_off + st_ptr, mask=m_st, other=0.0).to(dty)
    g_o = tl.load(DSTATES + st_off + st_ptr + n_half, mask=m_st, other=0.0).to(dty)

    idx = tl.arange(0, C)
    lower = idx[:, None] > idx[None, :]
    diag = idx[:, None] == idx[None, :]
    decay = tl.exp(tl.minimum(a_cum[:, None] - a_cum[None, :], 0.0))
    weight = tl.where(lower, decay * w[None, :], tl.where(diag, gamma[:, None], 0.0))
    qk = _dot(qe_d, tl.trans(ke_d), IEEE) + _dot(qo_d, tl.trans(ko_d), IEEE)
    dp = _dot(dyd, tl.trans(v), IEEE)
    dpm = (dp * weight).to(dty)
    qkm = (qk * weight).to(dty)

    # q: within the chunk and from the entering state.
    dq_e = _dot(dpm, ke_d, IEEE) + decay_in[:, None] * _dot(dyd, s_e, IEEE)
    dq_o = _dot(dpm, ko_d, IEEE) + decay_in[:, None] * _dot(dyd, s_o, IEEE)
    # k and v: within the chunk and through the state leaving it.
    dk_e = _dot(tl.trans(dpm), qe_d, IEEE) + coef[:, None] * _dot(v, g_e, IEEE)
    dk_o = _dot(tl.trans(dpm), qo_d, IEEE) + coef[:, None] * _dot(v, g_o, IEEE)
    kg = _dot(ke_d, tl.trans(g_e), IEEE) + _dot(ko_d, tl.trans(g_o), IEEE)
    dv = _dot(tl.trans(qkm), dyd, IEEE) + coef[:, None] * kg

    # Trapezoid weights and decays.
    r = qk * dp
    x_end = tl.sum(vf * kg, 1)
    dw = tl.sum(tl.where(lower, decay * r, 0.0), 0) + coef_end * x_end
    dgamma = tl.sum(tl.where(diag, r, 0.0), 1)
    t_off = tl.where(lower, decay * r * w[None, :], 0.0)
    ys = _dot(qe_d, tl.trans(s_e), IEEE) + _dot(qo_d, tl.trans(s_o), IEEE)
    da = (tl.sum(t_off, 1) - tl.sum(t_off, 0) + decay_in * tl.sum(dy * ys, 1)
          - coef * x_end)
    da = tl.where(mask_t, da, 0.0)
    da_end = tl.sum(coef * x_end, 0) + tl.load(DATOT + pid_c * nheads + h)
    dadt = tl.cumsum(da, 0, reverse=True) + da_end

    # Back through the rotation: gradients before rotation, and of theta.
    dqe_pre = dq_e * cos + dq_o * sin
    dqo_pre = dq_o * cos - dq_e * sin
    dke_pre = dk_e * cos + dk_o * sin
    dko_pre = dk_o * cos - dk_e * sin
    dtheta = dq_o * q_e - dq_e * q_o + dk_o * k_e - dk_e * k_o

    tok = (row64 * seqlen + offs_t) * nheads + h
    m_i = mask_t[:, None] & (offs_i < n_half)[None, :]
    n_ptr = tok[:, None] * (2 * n_half) + 2 * offs_i[None, :]
    tl.store(DQ + n_ptr, dqe_pre, mask=m_i)
    tl.store(DQ + n_ptr + 1, dqo_pre, mask=m_i)
    tl.store(DK + n_ptr, dke_pre, mask=m_i)
    tl.store(DK + n_ptr + 1, dko_pre, mask=m_i)
    tl.store(DTHETA + tok[:, None] * n_angles + offs_i[None, :], dtheta,
             mask=mask_t[:, None] & (offs_i < n_angles)[None, :])
    tl.store(DV + tok[:, None] * headdim + offs_p[None, :], dv, mask=mask_tp)
    g_ptr = (row64 * nheads + h) * seqlen + offs_t
    tl.store(DADT + g_ptr, dadt, mask=mask_t)
    tl.store(DW + g_ptr, dw, mask=mask_t)
    tl.store(DGAMMA + g_ptr, dgamma, mask=mask_t)


@triton.jit
def _angle_cumsum_bwd_kernel(
    ANG, s_ab, s_at, s_ah, s_aa,
    DT, s_db, s_dh, s_dt,
    DTHETA, DFINAL, DANG, DDT, DINIT,
    SEQ_TOK, seqlen, nheads, n_angles,
    T: tl.constexpr, AB: tl.constexpr, IS_VARLEN: tl.constexpr, HAS_DFINAL: tl.constexpr,
):
    """Gradients of the raw angles (b, l, H, A), of dt through the angles (b, H, l) and of
    the initial angle (nseq, H, A) from theta's gradient; grid (nseq, H)."""
    seq = tl.program_id(0)
    h = tl.program_id(1)
    if IS_VARLEN:
        row = seq * 0
        t0 = tl.load(SEQ_TOK + seq)
        t1 = tl.load(SEQ_TOK + seq + 1)
    else:
        row = seq
        t0 = seq * 0
        t1 = t0 + seqlen
    offs_a = tl.arange(0, AB)
    mask_a = offs_a < n_angles
    if HAS_DFINAL:
        carry = tl.load(DFINAL + (seq * nheads + h) * n_angles + offs_a, mask=mask_a, other=0.0)
    else:
        carry = tl.zeros([AB], dtype=tl.float32)
    row64 = row.to(tl.int64)
    ANG += row64 * s_ab + h * s_ah
    DT += row64 * s_db + h * s_dh
    tok_base = (row64 * seqlen) * nheads + h
    n = tl.cdiv(t1 - t0, T)
    for j in range(0, n):
        start = t0 + (n - 1 - j) * T
        offs_t = start + tl.arange(0, T)
        mask_t = offs_t < t1
        m = mask_t[:, None] & mask_a[None, :]
        tok = tok_base + offs_t * nheads
        dth = tl.load(DTHETA + tok[:, None] * n_angles + offs_a[None, :], mask=m, other=0.0)
        dinc = carry[None, :] + tl.cumsum(dth, 0, reverse=True)
        carry = carry + tl.sum(dth, 0)
        ang = tl.load(ANG + offs_t[:, None] * s_at + offs_a[None, :] * s_aa, mask=m,
                      other=0.0).to(tl.float32)
        dt = tl.load(DT + offs_t * s_dt, mask=mask_t, other=0.0).to(tl.float32)
        th = _tanh(ang)
        tl.store(DANG + tok[:, None] * n_angles + offs_a[None, :],
                 dinc * PI * dt[:, None] * (1.0 - th * th), mask=m)
        tl.store(DDT + (row64 * nheads + h) * seqlen + offs_t,
                 tl.sum(tl.where(m, dinc * th * PI, 0.0), 1), mask=mask_t)
    tl.store(DINIT + (seq * nheads + h) * n_angles + offs_a, carry, mask=mask_a)


def launch_angle_cumsum_bwd(Angles, DT, dtheta, dfinal, dang, ddt, dinit, seq_tok,
                            seqlen: int, nseq: int, chunk: int = 64) -> None:
    """Fill dang (b, l, H, A), ddt (b, H, l) and dinit (nseq, H, A), all float32."""
    nheads, n_angles = Angles.shape[2], Angles.shape[3]
    _angle_cumsum_bwd_kernel[(nseq, nheads)](
        Angles, *Angles.stride(), DT, *DT.stride(), dtheta, dfinal, dang, ddt, dinit,
        seq_tok, seqlen, nheads, n_angles,
        T=chunk, AB=max(triton.next_power_of_2(n_angles), 2), IS_VARLEN=seq_tok is not None,
        HAS_DFINAL=dfinal is not None, num_warps=2,
    )
