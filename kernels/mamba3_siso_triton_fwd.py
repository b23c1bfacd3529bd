"""Triton kernels of the Mamba-3 SISO chunked scan, forward pass.

Four launches, each parallel over (chunk or sequence, head):

1. ``_angle_cumsum_kernel``: theta_t = theta_0 + sum pi*tanh(angles)*dt, per sequence,
   reduced mod 2*pi after every chunk (float32).
2. ``_chunk_state_kernel``: the state each chunk adds on its own,
   ``S_c = sum_s exp(A_end - A_s) w_s v_s k_s^T``, and the chunk's total decay.
3. ``_state_passing_kernel``: ``S_in[c+1] = exp(A_tot[c]) S_in[c] + S_c`` over the chunks
   of a sequence, in place, for blocks of the (P, N) state; returns the final state.
4. ``_chunk_scan_kernel``: the output of each chunk, the masked "attention" inside
   the chunk plus ``exp(A_t) S_in q_t``, with the D skip and the silu(z) gate.

Rotary pairs (2i, 2i+1) are handled de-interleaved: q and k are loaded as their even and
odd entries, ``q.k = q_e.k_e + q_o.k_o``, and chunk states live in a (P, [even | odd])
layout. ``shared/spec/MAMBA3.md`` gives the math.
"""

from __future__ import annotations

import triton
import triton.language as tl

PI = 3.141592653589793
TWO_PI = 6.283185307179586


@triton.jit
def _tanh(x):
    t = tl.exp(-2.0 * tl.abs(x))
    y = (1.0 - t) / (1.0 + t)
    return tl.where(x < 0, -y, y)


@triton.jit
def _sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def _wrap(x):
    return x - TWO_PI * tl.floor(x / TWO_PI)


@triton.jit
def _dot(a, b, IEEE: tl.constexpr):
    if IEEE:
        return tl.dot(a, b, input_precision="ieee")
    else:
        return tl.dot(a, b)


@triton.jit
def _chunk_bounds(pid_c, CHUNKS, seqlen, chunks_per_seq, C: tl.constexpr,
                  IS_VARLEN: tl.constexpr):
    """(row, start, end, seq_end) of chunk ``pid_c``; an unused varlen slot is empty."""
    if IS_VARLEN:
        row = pid_c * 0
        start = tl.load(CHUNKS + 3 * pid_c)
        end = tl.load(CHUNKS + 3 * pid_c + 1)
        seq_end = tl.load(CHUNKS + 3 * pid_c + 2)
    else:
        row = pid_c // chunks_per_seq
        start = (pid_c % chunks_per_seq) * C
        end = tl.minimum(start + C, seqlen)
        seq_end = seqlen
    return row, start, end, seq_end


@triton.jit
def _load_gates(ADT, s_at, DT, s_dt, TRAP, s_tt, offs_t, mask_t, mask_next):
    """Per-token a (float32), dt, lam, gamma = lam*dt and w = gamma + (1-lam_next)*dt_next.

    The pointers already point at the row and head; ``s_*t`` are the token strides.
    """
    adt = tl.load(ADT + offs_t * s_at, mask=mask_t, other=0.0).to(tl.float32)
    dt = tl.load(DT + offs_t * s_dt, mask=mask_t, other=0.0).to(tl.float32)
    lam = _sigmoid(tl.load(TRAP + offs_t * s_tt, mask=mask_t, other=0.0).to(tl.float32))
    dt_next = tl.load(DT + (offs_t + 1) * s_dt, mask=mask_next, other=0.0).to(tl.float32)
    lam_next = _sigmoid(tl.load(TRAP + (offs_t + 1) * s_tt, mask=mask_next,
                                other=0.0).to(tl.float32))
    gamma = lam * dt
    return adt, dt, lam, gamma, gamma + (1.0 - lam_next) * dt_next


@triton.jit
def _load_rotated(X, s_t, s_n, BIAS, s_bn, THETA, s_tht, offs_t, mask_t, n_half, n_angles,
                  NH: tl.constexpr):
    """Load x + bias for the tokens ``offs_t`` as even/odd halves (T, NH), rotated by theta.

    Returns (x_e, x_o, cos, sin), all float32; rows outside ``mask_t`` are zero.
    """
    offs_i = tl.arange(0, NH)
    mask_i = offs_i < n_half
    m = mask_t[:, None] & mask_i[None, :]
    ptr = X + offs_t[:, None] * s_t + (2 * offs_i)[None, :] * s_n
    x_e = tl.load(ptr, mask=m, other=0.0).to(tl.float32)
    x_o = tl.load(ptr + s_n, mask=m, other=0.0).to(tl.float32)
    b_e = tl.load(BIAS + 2 * offs_i * s_bn, mask=mask_i, other=0.0).to(tl.float32)
    b_o = tl.load(BIAS + (2 * offs_i + 1) * s_bn, mask=mask_i, other=0.0).to(tl.float32)
    x_e = tl.where(m, x_e + b_e[None, :], 0.0)
    x_o = tl.where(m, x_o + b_o[None, :], 0.0)
    th = tl.load(THETA + offs_t[:, None] * s_tht + offs_i[None, :],
                 mask=mask_t[:, None] & (offs_i < n_angles)[None, :], other=0.0)
    c = tl.cos(th)
    s = tl.sin(th)
    return x_e * c - x_o * s, x_e * s + x_o * c, c, s


@triton.jit
def _angle_cumsum_kernel(
    ANG, s_ab, s_at, s_ah, s_aa,
    DT, s_db, s_dh, s_dt,
    INIT, s_ib, s_ih,
    THETA, FINAL,
    SEQ_TOK, seqlen, nheads, n_angles,
    T: tl.constexpr, AB: tl.constexpr, IS_VARLEN: tl.constexpr, HAS_INIT: tl.constexpr,
):
    """theta (b, l, H, A) float32 and the final angle (nseq, H, A); grid (nseq, H)."""
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
    if HAS_INIT:
        carry = tl.load(INIT + seq * s_ib + h * s_ih + offs_a, mask=mask_a, other=0.0)
        carry = carry.to(tl.float32)
    else:
        carry = tl.zeros([AB], dtype=tl.float32)
    ANG += row.to(tl.int64) * s_ab + h * s_ah
    DT += row.to(tl.int64) * s_db + h * s_dh
    THETA += (row.to(tl.int64) * seqlen * nheads + h) * n_angles
    for start in range(t0, t1, T):
        offs_t = start + tl.arange(0, T)
        mask_t = offs_t < t1
        m = mask_t[:, None] & mask_a[None, :]
        ang = tl.load(ANG + offs_t[:, None] * s_at + offs_a[None, :] * s_aa, mask=m, other=0.0)
        dt = tl.load(DT + offs_t * s_dt, mask=mask_t, other=0.0).to(tl.float32)
        inc = _tanh(ang.to(tl.float32)) * PI * dt[:, None]
        theta = _wrap(carry[None, :] + tl.cumsum(inc, 0))
        tl.store(THETA + offs_t[:, None] * (nheads * n_angles) + offs_a[None, :], theta, mask=m)
        carry = _wrap(carry + tl.sum(inc, 0))
    tl.store(FINAL + (seq * nheads + h) * n_angles + offs_a, carry, mask=mask_a)


@triton.jit
def _chunk_state_kernel(
    K, s_kb, s_kt, s_kg, s_kn,
    V, s_vb, s_vt, s_vh, s_vp,
    ADT, s_ab, s_ah, s_at, DT, s_db, s_dh, s_dt, TRAP, s_tb, s_th, s_tt,
    KB, s_bh, s_bn,
    THETA, STATES, ATOT, CHUNKS,
    seqlen, chunks_per_seq, nheads, heads_per_group, n_half, n_angles, headdim,
    C: tl.constexpr, NH: tl.constexpr, PB: tl.constexpr,
    IS_VARLEN: tl.constexpr, IEEE: tl.constexpr,
):
    """S_c (P, [even | odd]) and A_tot of one chunk and head; grid (chunks, H)."""
    pid_c = tl.program_id(0)
    h = tl.program_id(1)
    row, start, end, seq_end = _chunk_bounds(pid_c, CHUNKS, seqlen, chunks_per_seq, C,
                                             IS_VARLEN)
    offs_t = start + tl.arange(0, C)
    mask_t = offs_t < end
    row64 = row.to(tl.int64)
    adt, dt, lam, gamma, w = _load_gates(
        ADT + row64 * s_ab + h * s_ah, s_at, DT + row64 * s_db + h * s_dh, s_dt,
        TRAP + row64 * s_tb + h * s_th, s_tt, offs_t, mask_t, offs_t + 1 < seq_end)
    a_cum = tl.cumsum(adt, 0)
    a_end = tl.sum(adt, 0)
    coef = tl.exp(a_end - a_cum) * w
    k_e, k_o, _, _ = _load_rotated(
        K + row64 * s_kb + (h // heads_per_group) * s_kg, s_kt, s_kn, KB + h * s_bh, s_bn,
        THETA + (row64 * seqlen * nheads + h) * n_angles, nheads * n_angles, offs_t, mask_t,
        n_half, n_angles, NH)
    offs_p = tl.arange(0, PB)
    mask_p = offs_p < headdim
    v = tl.load(V + row64 * s_vb + h * s_vh + offs_t[:, None] * s_vt + offs_p[None, :] * s_vp,
                mask=mask_t[:, None] & mask_p[None, :], other=0.0)
    vs = tl.trans((v.to(tl.float32) * coef[:, None]).to(v.dtype))
    s_e = _dot(vs, k_e.to(v.dtype), IEEE)
    s_o = _dot(vs, k_o.to(v.dtype), IEEE)
    offs_i = tl.arange(0, NH)
    base = STATES + (pid_c.to(tl.int64) * nheads + h) * headdim * 2 * n_half
    ptr = base + offs_p[:, None] * (2 * n_half) + offs_i[None, :]
    m = mask_p[:, None] & (offs_i < n_half)[None, :]
    tl.store(ptr, s_e, mask=m)
    tl.store(ptr + n_half, s_o, mask=m)
    tl.store(ATOT + pid_c * nheads + h, a_end)


@triton.jit
def _state_passing_kernel(
    STATES, ATOT, START, FINAL, SEQ_CHUNK,
    chunks_per_seq, nheads, size,
    BLOCK: tl.constexpr, IS_VARLEN: tl.constexpr, HAS_START: tl.constexpr,
):
    """Replace each chunk's own state by the state entering it; grid (nseq, H, blocks)."""
    seq = tl.program_id(0)
    h = tl.program_id(1)
    offs = tl.program_id(2) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < size
    seq_off = (seq * nheads + h).to(tl.int64) * size
    if HAS_START:
        s = tl.load(START + seq_off + offs, mask=mask, other=0.0)
    else:
        s = tl.zeros([BLOCK], dtype=tl.float32)
    if IS_VARLEN:
        c0 = tl.load(SEQ_CHUNK + seq)
        c1 = tl.load(SEQ_CHUNK + seq + 1)
    else:
        c0 = seq * chunks_per_seq
        c1 = c0 + chunks_per_seq
    for c in range(c0, c1):
        ptr = STATES + (c * nheads + h).to(tl.int64) * size + offs
        local = tl.load(ptr, mask=mask, other=0.0)
        tl.store(ptr, s, mask=mask)
        s = s * tl.exp(tl.load(ATOT + c * nheads + h)) + local
    tl.store(FINAL + seq_off + offs, s, mask=mask)


@triton.jit
def _chunk_scan_kernel(
    Q, s_qb, s_qt, s_qg, s_qn,
    K, s_kb, s_kt, s_kg, s_kn,
    V, s_vb, s_vt, s_vh, s_vp,
    Z, s_zb, s_zt, s_zh, s_zp,
    OUT, s_ob, s_ot, s_oh, s_op,
    YPRE,
    ADT, s_ab, s_ah, s_at, DT, s_db, s_dh, s_dt, TRAP, s_tb, s_th, s_tt,
    QB, KB, s_bh, s_bn,
    D, THETA, STATES, CHUNKS,
    seqlen, chunks_per_seq, nheads, heads_per_group, n_half, n_angles, headdim,
    C: tl.constexpr, NH: tl.constexpr, PB: tl.constexpr,
    IS_VARLEN: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
    STORE_YPRE: tl.constexpr, IEEE: tl.constexpr,
):
    """Output of one chunk and head; grid (chunks, H)."""
    pid_c = tl.program_id(0)
    h = tl.program_id(1)
    row, start, end, seq_end = _chunk_bounds(pid_c, CHUNKS, seqlen, chunks_per_seq, C,
                                             IS_VARLEN)
    offs_t = start + tl.arange(0, C)
    mask_t = offs_t < end
    row64 = row.to(tl.int64)
    adt, dt, lam, gamma, w = _load_gates(
        ADT + row64 * s_ab + h * s_ah, s_at, DT + row64 * s_db + h * s_dh, s_dt,
        TRAP + row64 * s_tb + h * s_th, s_tt, offs_t, mask_t, offs_t + 1 < seq_end)
    a_cum = tl.cumsum(adt, 0)
    grp = h // heads_per_group
    theta = THETA + (row64 * seqlen * nheads + h) * n_angles
    q_e, q_o, _, _ = _load_rotated(Q + row64 * s_qb + grp * s_qg, s_qt, s_qn, QB + h * s_bh,
                                   s_bn, theta, nheads * n_angles, offs_t, mask_t, n_half,
                                   n_angles, NH)
    k_e, k_o, _, _ = _load_rotated(K + row64 * s_kb + grp * s_kg, s_kt, s_kn, KB + h * s_bh,
                                   s_bn, theta,
                                   nheads * n_angles, offs_t, mask_t, n_half, n_angles, NH)
    offs_p = tl.arange(0, PB)
    mask_p = offs_p < headdim
    mask_tp = mask_t[:, None] & mask_p[None, :]
    v = tl.load(V + row64 * s_vb + h * s_vh + offs_t[:, None] * s_vt + offs_p[None, :] * s_vp,
                mask=mask_tp, other=0.0)
    dty = v.dtype
    q_e = q_e.to(dty)
    q_o = q_o.to(dty)
    scores = _dot(q_e, tl.trans(k_e.to(dty)), IEEE) + _dot(q_o, tl.trans(k_o.to(dty)), IEEE)
    idx = tl.arange(0, C)
    diff = tl.minimum(a_cum[:, None] - a_cum[None, :], 0.0)
    weight = tl.where(idx[:, None] > idx[None, :], tl.exp(diff) * w[None, :],
                      tl.where(idx[:, None] == idx[None, :], gamma[:, None], 0.0))
    y = _dot((scores * weight).to(dty), v, IEEE)

    offs_i = tl.arange(0, NH)
    base = STATES + (pid_c.to(tl.int64) * nheads + h) * headdim * 2 * n_half
    ptr = base + offs_p[:, None] * (2 * n_half) + offs_i[None, :]
    m = mask_p[:, None] & (offs_i < n_half)[None, :]
    st_e = tl.load(ptr, mask=m, other=0.0).to(dty)
    st_o = tl.load(ptr + n_half, mask=m, other=0.0).to(dty)
    y_state = _dot(q_e, tl.trans(st_e), IEEE) + _dot(q_o, tl.trans(st_o), IEEE)
    y += y_state * tl.exp(a_cum)[:, None]
    vf = v.to(tl.float32)
    if HAS_D:
        y += tl.load(D + h).to(tl.float32) * vf
    tok = offs_t[:, None] * s_ot + offs_p[None, :] * s_op
    o_off = row64 * s_ob + h * s_oh
    if STORE_YPRE:
        tl.store(YPRE + o_off + tok, y.to(dty), mask=mask_tp)
    if HAS_Z:
        z = tl.load(Z + row64 * s_zb + h * s_zh + offs_t[:, None] * s_zt + offs_p[None, :] * s_zp,
                    mask=mask_tp, other=0.0).to(tl.float32)
        y = y * z * _sigmoid(z)
    tl.store(OUT + o_off + tok, y.to(OUT.dtype.element_ty), mask=mask_tp)


def launch_angle_cumsum(Angles, DT, init, theta, final, seq_tok, seqlen: int, nseq: int,
                        chunk: int = 64) -> None:
    """theta and final angle; ``seq_tok`` (nseq + 1) token offsets when varlen, else None."""
    nheads, n_angles = Angles.shape[2], Angles.shape[3]
    _angle_cumsum_kernel[(nseq, nheads)](
        Angles, *Angles.stride(), DT, *DT.stride(),
        init, *((init.stride(0), init.stride(1)) if init is not None else (0, 0)),
        theta, final, seq_tok, seqlen, nheads, n_angles,
        T=chunk, AB=max(triton.next_power_of_2(n_angles), 2), IS_VARLEN=seq_tok is not None,
        HAS_INIT=init is not None, num_warps=2,
    )
