"""Triton kernels of the Mamba-3 MIMO chunked scan: fused forward and two backward sweeps.

One program owns one head of one sequence and walks its chunks in order, keeping the
(P, N) state in registers. A chunk of ``CT`` tokens holds ``CT * RP`` rows
``i = t * RP + r`` (RP: the rank rounded up to a power of two; rows with ``r >= R`` are
masked), so the R ranks of a token are R rows of a masked "attention"
(``mamba3_mimo_reference.mimo_chunked_core``).

Rotary pairs ``(n, n + N/2)``: q, k and the state are kept as a low and a high half,
each padded to ``BH`` columns, so any even ``N`` works.
"""

from __future__ import annotations

import triton
import triton.language as tl

PI = tl.constexpr(3.141592653589793)
TWO_PI = tl.constexpr(6.283185307179586)


@triton.jit
def _tanh(x):
    return 2 * tl.sigmoid(2 * x) - 1


@triton.jit
def _sequence(CU, pid_seq, seqlen, IS_VARLEN: tl.constexpr):
    """(batch row, first token, length) of the sequence a program works on."""
    if IS_VARLEN:
        bos = tl.load(CU + pid_seq)
        return 0, bos, tl.load(CU + pid_seq + 1) - bos
    return pid_seq, 0, seqlen


@triton.jit
def _row_scalars(ADT, DT, TRAP, base, tok, length, valid, stride_l):
    """Per-row decay ``adt``, own weight ``gamma = lam*dt`` and trapezoid weight
    ``w = gamma + (1 - lam_next) * dt_next`` (the next token's beta part)."""
    adt = tl.load(ADT + base + tok * stride_l, mask=valid, other=0.0).to(tl.float32)
    dt = tl.load(DT + base + tok * stride_l, mask=valid, other=0.0).to(tl.float32)
    trap = tl.load(TRAP + base + tok * stride_l, mask=valid, other=0.0).to(tl.float32)
    has_next = valid & (tok + 1 < length)
    dt_next = tl.load(DT + base + (tok + 1) * stride_l, mask=has_next, other=0.0).to(tl.float32)
    trap_next = tl.load(TRAP + base + (tok + 1) * stride_l, mask=has_next,
                        other=0.0).to(tl.float32)
    gamma = tl.sigmoid(trap) * dt
    w = gamma + tl.where(has_next, (1 - tl.sigmoid(trap_next)) * dt_next, 0.0)
    return adt, dt, gamma, w


@triton.jit
def _chunk_weights(t, first, adt, w, gamma, valid):
    """In-chunk cumulative decay ``acum`` (per row), the chunk's total decay, and the
    (rows x rows) weights: ``w_s exp(acum_t - acum_s)`` for s < t, ``gamma_t`` for s = t.

    Only the first rank of a token carries its decay, so a cumulative sum over rows is
    the cumulative sum over tokens."""
    adt_first = tl.where(first, adt, 0.0)
    acum = tl.cumsum(adt_first, 0)
    total = tl.sum(adt_first, 0)
    before = (t[None, :] < t[:, None]) & valid[None, :]
    same = (t[None, :] == t[:, None]) & valid[None, :]
    decay = tl.exp(tl.where(before, acum[:, None] - acum[None, :], 0.0))
    weights = tl.where(before, decay * w[None, :], tl.where(same, gamma[:, None], 0.0))
    return acum, total, weights, before, same


@triton.jit
def _mimo_fwd_kernel(
    Q, K, V, Z, ANG, ADT, DT, TRAP, QB, KB, MV, MZ, MO, DSKIP, NW, START, ANGLE0, CU,
    OUT, FIN_ANGLE, FIN_SSM, FIN_K,
    seqlen, rank, heads_per_group, headdim, half, n_angles, eps,
    sq_b, sq_l, sq_r, sq_g, sq_n,
    sv_b, sv_l, sv_h, sv_p,
    sz_b, sz_l, sz_h, sz_p,
    sa_b, sa_l, sa_h, sa_n,
    so_b, so_l, so_r, so_h, so_p,
    nheads,
    CT: tl.constexpr, RP: tl.constexpr, BH: tl.constexpr, BP: tl.constexpr,
    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_NORM: tl.constexpr,
    REDUCE_O: tl.constexpr, HAS_START: tl.constexpr, RETURN_STATE: tl.constexpr,
    IS_VARLEN: tl.constexpr, PRECISION: tl.constexpr,
):
    """Forward of one (head, sequence): output and, optionally, the final state.

    Scalars ADT/DT/TRAP are contiguous (b, H, l); QB, KB (H, R, N), MV/MZ/MO, NW
    (H, R, P) / (H, P) contiguous; START (nseq, H, P, N) float32; ANGLE0 (nseq, H, A)."""
    ROWS: tl.constexpr = CT * RP
    h = tl.program_id(0)
    pid_seq = tl.program_id(1)
    g = h // heads_per_group
    row_b, bos, length = _sequence(CU, pid_seq, seqlen, IS_VARLEN)

    i = tl.arange(0, ROWS)
    t = i // RP
    r = i % RP
    rank_ok = r < rank
    n = tl.arange(0, BH)
    n_ok = n < half
    p = tl.arange(0, BP)
    p_ok = p < headdim
    dtype = Q.dtype.element_ty

    # Per-head constants, gathered per row.
    bias_at = h * rank * 2 * half + r[:, None] * 2 * half + n[None, :]
    bias_mask = rank_ok[:, None] & n_ok[None, :]
    qb_lo = tl.load(QB + bias_at, mask=bias_mask, other=0.0).to(tl.float32)
    qb_hi = tl.load(QB + bias_at + half, mask=bias_mask, other=0.0).to(tl.float32)
    kb_lo = tl.load(KB + bias_at, mask=bias_mask, other=0.0).to(tl.float32)
    kb_hi = tl.load(KB + bias_at + half, mask=bias_mask, other=0.0).to(tl.float32)
    proj_at = h * rank * headdim + r[:, None] * headdim + p[None, :]
    proj_mask = rank_ok[:, None] & p_ok[None, :]
    mimo_v = tl.load(MV + proj_at, mask=proj_mask, other=0.0).to(tl.float32)
    if HAS_Z:
        mimo_z = tl.load(MZ + proj_at, mask=proj_mask, other=0.0).to(tl.float32)
    if REDUCE_O:
        mimo_o = tl.load(MO + proj_at, mask=proj_mask, other=0.0).to(tl.float32)
    if HAS_D:
        d_skip = tl.load(DSKIP + h).to(tl.float32)
    if HAS_NORM:
        norm_w = tl.load(NW + h * headdim + p, mask=p_ok, other=0.0).to(tl.float32)

    # State (P, N) kept transposed as two (N/2, P) halves; running angle.
    state_at = ((pid_seq * nheads + h) * headdim + p[None, :]) * 2 * half + n[:, None]
    state_mask = n_ok[:, None] & p_ok[None, :]
    if HAS_START:
        st_lo = tl.load(START + state_at, mask=state_mask, other=0.0)
        st_hi = tl.load(START + state_at + half, mask=state_mask, other=0.0)
    else:
        st_lo = tl.zeros((BH, BP), dtype=tl.float32)
        st_hi = tl.zeros((BH, BP), dtype=tl.float32)
    angle_ok = n < n_angles
    angle_at = (pid_seq * nheads + h) * n_angles + n
    theta_run = tl.load(ANGLE0 + angle_at, mask=angle_ok, other=0.0)

    scalar_base = (row_b * nheads + h) * seqlen + bos
    for c in range(0, tl.cdiv(length, CT)):
        tok = c * CT + t
        valid = (tok < length) & rank_ok
        first = valid & (r == 0)
        adt, dt, gamma, w = _row_scalars(ADT, DT, TRAP, scalar_base, tok, length, valid, 1)
        acum, total, weights, _, _ = _chunk_weights(t, first, adt, w, gamma, valid)

        # Angles: cumulative per token (first-rank rows carry the increments).
        ang = tl.load(ANG + row_b * sa_b + (bos + tok[:, None]) * sa_l + h * sa_h
                      + n[None, :] * sa_n, mask=first[:, None] & angle_ok[None, :], other=0.0)
        inc = _tanh(ang.to(tl.float32)) * dt[:, None] * PI
        theta = theta_run[None, :] + tl.cumsum(inc, 0)
        theta_run += tl.sum(inc, 0)
        theta_run = theta_run - TWO_PI * tl.floor(theta_run / TWO_PI)
        cos = tl.cos(theta)
        sin = tl.sin(theta)

        qk_mask = valid[:, None] & n_ok[None, :]
        qk_at = row_b * sq_b + (bos + tok[:, None]) * sq_l + r[:, None] * sq_r + g * sq_g
        q_lo = tl.load(Q + qk_at + n[None, :] * sq_n, mask=qk_mask, other=0.0) + qb_lo
        q_hi = tl.load(Q + qk_at + (half + n[None, :]) * sq_n, mask=qk_mask, other=0.0) + qb_hi
        k_lo = tl.load(K + qk_at + n[None, :] * sq_n, mask=qk_mask, other=0.0) + kb_lo
        k_hi = tl.load(K + qk_at + (half + n[None, :]) * sq_n, mask=qk_mask, other=0.0) + kb_hi
        qr_lo = tl.where(qk_mask, q_lo * cos - q_hi * sin, 0.0).to(dtype)
        qr_hi = tl.where(qk_mask, q_lo * sin + q_hi * cos, 0.0).to(dtype)
        kr_lo = tl.where(qk_mask, k_lo * cos - k_hi * sin, 0.0)
        kr_hi = tl.where(qk_mask, k_lo * sin + k_hi * cos, 0.0)

        v_mask = valid[:, None] & p_ok[None, :]
        v = tl.load(V + row_b * sv_b + (bos + tok[:, None]) * sv_l + h * sv_h + p[None, :] * sv_p,
                    mask=v_mask, other=0.0).to(tl.float32) * mimo_v
        v_op = v.to(dtype)

        scores = tl.dot(qr_lo, tl.trans(kr_lo.to(dtype)), input_precision=PRECISION)
        scores = tl.dot(qr_hi, tl.trans(kr_hi.to(dtype)), scores, input_precision=PRECISION)
        y = tl.dot((scores * weights).to(dtype), v_op, input_precision=PRECISION)
        inter = tl.dot(qr_lo, st_lo.to(dtype), input_precision=PRECISION)
        inter = tl.dot(qr_hi, st_hi.to(dtype), inter, input_precision=PRECISION)
        y += tl.exp(acum)[:, None] * inter

        to_end = tl.where(valid, tl.exp(total - acum) * w, 0.0)
        st_lo = st_lo * tl.exp(total) + tl.dot(tl.trans((kr_lo * to_end[:, None]).to(dtype)),
                                               v_op, input_precision=PRECISION)
        st_hi = st_hi * tl.exp(total) + tl.dot(tl.trans((kr_hi * to_end[:, None]).to(dtype)),
                                               v_op, input_precision=PRECISION)

        if HAS_D:
            y += d_skip * v
        if HAS_NORM:
            y = y * tl.rsqrt(tl.sum(y * y, 1) / headdim + eps)[:, None] * norm_w[None, :]
        if HAS_Z:
            zr = tl.load(Z + row_b * sz_b + (bos + tok[:, None]) * sz_l + h * sz_h
                         + p[None, :] * sz_p, mask=v_mask, other=0.0).to(tl.float32) * mimo_z
            y = y * zr * tl.sigmoid(zr)
        if REDUCE_O:
            o = tl.sum(tl.reshape(y * mimo_o, (CT, RP, BP)), 1)
            tt = c * CT + tl.arange(0, CT)
            tl.store(OUT + row_b * so_b + (bos + tt[:, None]) * so_l + h * so_h
                     + p[None, :] * so_p, o.to(OUT.dtype.element_ty),
                     mask=(tt < length)[:, None] & p_ok[None, :])
        else:
            tl.store(OUT + row_b * so_b + (bos + tok[:, None]) * so_l + r[:, None] * so_r
                     + h * so_h + p[None, :] * so_p, y.to(OUT.dtype.element_ty), mask=v_mask)
        if RETURN_STATE:  # the last token's k
            last = qk_mask & (tok == length - 1)[:, None]
            k_at = ((pid_seq * rank + r[:, None]) * nheads + h) * 2 * half + n[None, :]
            tl.store(FIN_K + k_at, kr_lo.to(FIN_K.dtype.element_ty), mask=last)
            tl.store(FIN_K + k_at + half, kr_hi.to(FIN_K.dtype.element_ty), mask=last)

    if RETURN_STATE:
        tl.store(FIN_SSM + state_at, st_lo, mask=state_mask)
        tl.store(FIN_SSM + state_at + half, st_hi, mask=state_mask)
        tl.store(FIN_ANGLE + angle_at, theta_run, mask=angle_ok)


@triton.jit
def _load_rows(q_ptr, k_ptr, v_ptr, dy_ptr, row_at, n, p, d_state, headdim, valid):
    """Materialised rows of one chunk (float32 (rows, N) and (rows, P) tiles)."""
    qk_mask = valid[:, None] & (n < d_state)[None, :]
    vp_mask = valid[:, None] & (p < headdim)[None, :]
    q = tl.load(q_ptr + row_at[:, None] * d_state + n[None, :], mask=qk_mask, other=0.0)
    k = tl.load(k_ptr + row_at[:, None] * d_state + n[None, :], mask=qk_mask, other=0.0)
    v = tl.load(v_ptr + row_at[:, None] * headdim + p[None, :], mask=vp_mask, other=0.0)
    dy = tl.load(dy_ptr + row_at[:, None] * headdim + p[None, :], mask=vp_mask, other=0.0)
    return q, k, v, dy, qk_mask, vp_mask


@triton.jit
def _mimo_bwd_dq_kernel(
    Qm, Km, Vm, DY, ADT, W, GAMMA, START, CU, DQ, GL,
    seqlen, rank, nheads, d_state, headdim,
    CT: tl.constexpr, RP: tl.constexpr, BN: tl.constexpr, BP: tl.constexpr,
    HAS_START: tl.constexpr, IS_VARLEN: tl.constexpr, PRECISION: tl.constexpr,
):
    """Forward sweep of the backward: ``dq`` and, per row, ``q . dq_decayed`` (the part of
    the decay gradient where the row's token is the later end).

    Qm, Km (b, l, R, H, N), Vm, DY (b, l, R, H, P), ADT/W/GAMMA (b, l, H): contiguous
    float32; rows are (token, rank) with the rank padded to RP in the kernel only."""
    ROWS: tl.constexpr = CT * RP
    h = tl.program_id(0)
    pid_seq = tl.program_id(1)
    row_b, bos, length = _sequence(CU, pid_seq, seqlen, IS_VARLEN)
    i = tl.arange(0, ROWS)
    t = i // RP
    r = i % RP
    n = tl.arange(0, BN)
    p = tl.arange(0, BP)
    state_at = ((pid_seq * nheads + h) * headdim + p[:, None]) * d_state + n[None, :]
    state_mask = (p < headdim)[:, None] & (n < d_state)[None, :]
    if HAS_START:
        state = tl.load(START + state_at, mask=state_mask, other=0.0)
    else:
        state = tl.zeros((BP, BN), dtype=tl.float32)
    for c in range(0, tl.cdiv(length, CT)):
        tok = c * CT + t
        valid = (tok < length) & (r < rank)
        gtok = row_b * seqlen + bos + tok
        row_at = (gtok * rank + r) * nheads + h
        q, k, v, dy, qk_mask, _ = _load_rows(Qm, Km, Vm, DY, row_at, n, p, d_state, headdim,
                                             valid)
        scal_at = gtok * nheads + h
        adt = tl.load(ADT + scal_at, mask=valid, other=0.0)
        w = tl.load(W + scal_at, mask=valid, other=0.0)
        gamma = tl.load(GAMMA + scal_at, mask=valid, other=0.0)
        acum, total, weights, _, same = _chunk_weights(t, valid & (r == 0), adt, w, gamma, valid)
        dyv = tl.dot(dy, tl.trans(v), input_precision=PRECISION)
        decayed = tl.where(same, 0.0, weights)
        dq_dec = tl.dot(dyv * decayed, k, input_precision=PRECISION)
        dq_dec += tl.exp(acum)[:, None] * tl.dot(dy, state, input_precision=PRECISION)
        dq = dq_dec + tl.dot(tl.where(same, dyv * weights, 0.0), k, input_precision=PRECISION)
        tl.store(DQ + row_at[:, None] * d_state + n[None, :], dq, mask=qk_mask)
        tl.store(GL + row_at, tl.sum(q * dq_dec, 1), mask=valid)
        to_end = tl.where(valid, tl.exp(total - acum) * w, 0.0)
        state = state * tl.exp(total) + tl.dot(tl.trans(v * to_end[:, None]), k,
                                               input_precision=PRECISION)


@triton.jit
def _mimo_bwd_dkv_kernel(
    Qm, Km, Vm, DY, ADT, W, GAMMA, CU, DK, DV, DWP, DGP, DSTART,
    seqlen, rank, nheads, d_state, headdim,
    CT: tl.constexpr, RP: tl.constexpr, BN: tl.constexpr, BP: tl.constexpr,
    IS_VARLEN: tl.constexpr, PRECISION: tl.constexpr,
):
    """Reverse sweep of the backward: ``dk``, ``dv``, per row ``v . dv/dw`` and
    ``v . dv/dgamma`` (for the trapezoid weights), and the gradient of the start state."""
    ROWS: tl.constexpr = CT * RP
    h = tl.program_id(0)
    pid_seq = tl.program_id(1)
    row_b, bos, length = _sequence(CU, pid_seq, seqlen, IS_VARLEN)
    i = tl.arange(0, ROWS)
    t = i // RP
    r = i % RP
    n = tl.arange(0, BN)
    p = tl.arange(0, BP)
    d_state_grad = tl.zeros((BP, BN), dtype=tl.float32)  # gradient of the chunk's end state
    n_chunks = tl.cdiv(length, CT)
    for c_rev in range(0, n_chunks):
        c = n_chunks - 1 - c_rev
        tok = c * CT + t
        valid = (tok < length) & (r < rank)
        gtok = row_b * seqlen + bos + tok
        row_at = (gtok * rank + r) * nheads + h
        q, k, v, dy, qk_mask, vp_mask = _load_rows(Qm, Km, Vm, DY, row_at, n, p, d_state,
                                                   headdim, valid)
        scal_at = gtok * nheads + h
        adt = tl.load(ADT + scal_at, mask=valid, other=0.0)
        w = tl.load(W + scal_at, mask=valid, other=0.0)
        gamma = tl.load(GAMMA + scal_at, mask=valid, other=0.0)
        acum, total, _, before, same = _chunk_weights(t, valid & (r == 0), adt, w, gamma, valid)
        decay = tl.where(before, tl.exp(tl.where(before, acum[:, None] - acum[None, :], 0.0)),
                         0.0)
        to_end = tl.where(valid, tl.exp(total - acum), 0.0)
        qk = tl.dot(q, tl.trans(k), input_precision=PRECISION)
        dyv = tl.dot(dy, tl.trans(v), input_precision=PRECISION)
        same_f = tl.where(same, 1.0, 0.0)
        dv_w = tl.dot(tl.trans(decay * qk), dy, input_precision=PRECISION)
        dv_w += to_end[:, None] * tl.dot(k, tl.trans(d_state_grad), input_precision=PRECISION)
        dv_g = tl.dot(tl.trans(same_f * qk), dy, input_precision=PRECISION)
        dk_w = tl.dot(tl.trans(decay * dyv), q, input_precision=PRECISION)
        dk_w += to_end[:, None] * tl.dot(v, d_state_grad, input_precision=PRECISION)
        dk_g = tl.dot(tl.trans(same_f * dyv), q, input_precision=PRECISION)
        dv = w[:, None] * dv_w + gamma[:, None] * dv_g
        dk = w[:, None] * dk_w + gamma[:, None] * dk_g
        tl.store(DV + row_at[:, None] * headdim + p[None, :], dv, mask=vp_mask)
        tl.store(DK + row_at[:, None] * d_state + n[None, :], dk, mask=qk_mask)
        tl.store(DWP + row_at, tl.sum(v * dv_w, 1), mask=valid)
        tl.store(DGP + row_at, tl.sum(v * dv_g, 1), mask=valid)
        d_state_grad = d_state_grad * tl.exp(total) + tl.dot(
            tl.trans(dy * tl.exp(acum)[:, None]), q, input_precision=PRECISION)
    state_at = ((pid_seq * nheads + h) * headdim + p[:, None]) * d_state + n[None, :]
    state_mask = (p < headdim)[:, None] & (n < d_state)[None, :]
    tl.store(DSTART + state_at, d_state_grad, mask=state_mask)


def kernel_blocks(rank: int, d_state: int, rows: int = 64) -> tuple[int, int, int]:
    """(chunk tokens CT, padded rank RP, half-state block BH) for ``CT * RP = rows``."""
    rp = triton.next_power_of_2(rank)
    return max(1, rows // rp), rp, max(16, triton.next_power_of_2(d_state // 2))
