"""Triton kernels of the Mamba-3 MIMO chunked prefill, forward pass (chunk-parallel).

A token contributes R rows ``(t, r)``; a sub-chunk of ``CT`` tokens holds ``CT * RP``
rows ``i = t * RP + r`` (RP: the rank rounded up to a power of two, rows with ``r >= R``
masked), so the ranks of a token are rows of a masked "attention"
(``mamba3_mimo_reference.mimo_chunked_core``). States are passed between chunks of
``CHUNK`` tokens (a few sub-chunks). Three launches:

1. ``_mimo_chunk_state_kernel`` (grid chunks x heads): the state a chunk adds on its own,
   in its local rotary frame (angles summed from the chunk's start), its total decay and
   its total angle increment;
2. ``_mimo_state_pass_kernel`` (grid sequences x heads x row blocks): over the chunks of a
   sequence, the state and angle entering every chunk (the chunk's own state rotated into
   the global frame), and the final state and angle;
3. ``_mimo_chunk_scan_kernel`` (grid chunks x heads): the output of every sub-chunk from
   the state entering it (carried in registers across the chunk's sub-chunks) and the
   in-sub-chunk part, with bias, rotary, rank values, D, the headwise norm, the gate and
   the ``MIMO_O`` contraction fused; the last token's k.

Rotary pairs ``(n, n + N/2)``: q, k and the states are handled as a low and a high half,
each padded to ``BH`` columns, so any even ``N`` works.
"""

from __future__ import annotations

import triton
import triton.language as tl

from mamba3_integrations.kernels.mamba3_siso_triton_fwd import PI, _cos_sin, _wrap


@triton.jit
def _tanh(x):
    return 2 * tl.sigmoid(2 * x) - 1


@triton.jit
def _to_rows(x, CT: tl.constexpr, RP: tl.constexpr, BH: tl.constexpr):
    """(CT, BH) per token -> (CT * RP, BH) per row (the token's value on each rank row)."""
    return tl.reshape(tl.broadcast_to(x[:, None, :], (CT, RP, BH)), (CT * RP, BH))


@triton.jit
def _token_rotary(ANG, ang_base, sa_l, DT, dt_base, tt, tok_ok, n, angle_ok, theta_run,
                  CT: tl.constexpr, RP: tl.constexpr, BH: tl.constexpr, FAST: tl.constexpr):
    """cos and sin (rows x BH) of the angles of the tokens ``tt`` (the running sum of
    ``pi*tanh(angle)*dt`` after ``theta_run``), computed once per token (not per rank row),
    and the running angle after them. Pairs past ``n_angles`` get cos 1, sin 0."""
    m = tok_ok[:, None] & angle_ok[None, :]
    ang = tl.load(ANG + ang_base + tt[:, None] * sa_l + n[None, :], mask=m, other=0.0)
    dt = tl.load(DT + dt_base + tt, mask=tok_ok, other=0.0).to(tl.float32)
    inc = _tanh(ang.to(tl.float32)) * dt[:, None] * PI
    theta = _wrap(theta_run[None, :] + tl.cumsum(inc, 0))
    c, s = _cos_sin(theta, FAST)
    return _to_rows(c, CT, RP, BH), _to_rows(s, CT, RP, BH), theta_run + tl.sum(inc, 0)


@triton.jit
def _chunk_bounds(pid, CHUNKS, seqlen, chunks_per_seq, CHUNK: tl.constexpr,
                  IS_VARLEN: tl.constexpr):
    """(batch row, sequence, first token, end token, sequence end) of chunk ``pid``.

    Varlen: ``CHUNKS`` (n, 4) int32 rows ``(sequence, start, end, sequence end)`` of
    tokens in the single batch row."""
    if IS_VARLEN:
        seq = tl.load(CHUNKS + 4 * pid)
        start = tl.load(CHUNKS + 4 * pid + 1)
        end = tl.load(CHUNKS + 4 * pid + 2)
        seq_end = tl.load(CHUNKS + 4 * pid + 3)
        return seq * 0, seq, start, end, seq_end
    seq = pid // chunks_per_seq
    start = (pid % chunks_per_seq) * CHUNK
    return seq, seq, start, tl.minimum(start + CHUNK, seqlen), seqlen


@triton.jit
def _row_scalars(ADT, DT, TRAP, base, tok, seq_end, valid):
    """Per-row decay ``adt``, ``dt``, own weight ``gamma = lam*dt`` and trapezoid weight
    ``w = gamma + (1 - lam_next) * dt_next`` (the next token's beta part, zero at the end
    of the sequence). ``base`` points at the (row, head) of contiguous (b, H, l) tensors."""
    adt = tl.load(ADT + base + tok, mask=valid, other=0.0).to(tl.float32)
    dt = tl.load(DT + base + tok, mask=valid, other=0.0).to(tl.float32)
    trap = tl.load(TRAP + base + tok, mask=valid, other=0.0).to(tl.float32)
    has_next = valid & (tok + 1 < seq_end)
    dt_next = tl.load(DT + base + tok + 1, mask=has_next, other=0.0).to(tl.float32)
    trap_next = tl.load(TRAP + base + tok + 1, mask=has_next, other=0.0).to(tl.float32)
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
def _rotated_rows(X, x_at, XB, bias_at, n, sn, half, mask, cos, sin):
    """Low and high halves (rows x BH, float32, zero outside ``mask``) of
    ``rot(X + bias)``; ``x_at`` (rows, 1) and ``bias_at`` (rows, 1) point at the rows."""
    lo = tl.load(X + x_at + n[None, :] * sn, mask=mask, other=0.0).to(tl.float32)
    hi = tl.load(X + x_at + (half + n[None, :]) * sn, mask=mask, other=0.0).to(tl.float32)
    lo += tl.load(XB + bias_at + n[None, :], mask=mask, other=0.0).to(tl.float32)
    hi += tl.load(XB + bias_at + half + n[None, :], mask=mask, other=0.0).to(tl.float32)
    return (tl.where(mask, lo * cos - hi * sin, 0.0), tl.where(mask, lo * sin + hi * cos, 0.0))


@triton.jit
def _mimo_chunk_state_kernel(
    K, V, ANG, ADT, DT, TRAP, KB, MV, CHUNKS, STATES, ATOT, AINC,
    seqlen, chunks_per_seq, rank, nheads, heads_per_group, headdim, half, n_angles,
    sk_b, sk_l, sk_r, sk_g, sk_n,
    sv_b, sv_l, sv_h, sv_p,
    sa_b, sa_l, sa_h,
    CHUNK: tl.constexpr, CT: tl.constexpr, RP: tl.constexpr, BH: tl.constexpr,
    BP: tl.constexpr, IS_VARLEN: tl.constexpr, PRECISION: tl.constexpr, FAST: tl.constexpr,
):
    """Chunk ``pid`` of head ``h``: ``S'_c = sum_s exp(A_end - A_s) w_s v_s k'_s^T`` (P, N)
    float32 in the chunk's local rotary frame, its total decay and angle increment.

    ADT/DT/TRAP contiguous (b, H, l); KB (H, R, N) float32 and MV (H, R, P) contiguous."""
    ROWS: tl.constexpr = CT * RP
    pid = tl.program_id(0)
    h = tl.program_id(1)
    g = h // heads_per_group
    row, seq, start, end, seq_end = _chunk_bounds(pid, CHUNKS, seqlen, chunks_per_seq, CHUNK,
                                                  IS_VARLEN)
    row64 = row.to(tl.int64)
    dtype = K.dtype.element_ty
    i = tl.arange(0, ROWS)
    t = i // RP
    r = i % RP
    rank_ok = r < rank
    n = tl.arange(0, BH)
    n_ok = n < half
    angle_ok = n < n_angles
    p = tl.arange(0, BP)
    p_ok = p < headdim

    s_lo = tl.zeros((BH, BP), dtype=tl.float32)
    s_hi = tl.zeros((BH, BP), dtype=tl.float32)
    theta_run = tl.zeros((BH,), dtype=tl.float32)
    a_run = tl.sum(theta_run, 0)  # a float32 zero
    scalar_base = (row64 * nheads + h) * seqlen
    ang_base = row64 * sa_b + h * sa_h
    k_base = row64 * sk_b + r[:, None] * sk_r + g * sk_g
    bias_at = (h * rank + r[:, None]) * 2 * half
    for sub in range(0, tl.cdiv(end - start, CT)):
        tok0 = start + sub * CT
        tok = tok0 + t
        valid = (tok < end) & rank_ok
        first = valid & (r == 0)
        adt, dt, gamma, w = _row_scalars(ADT, DT, TRAP, scalar_base, tok, seq_end, valid)
        adt_first = tl.where(first, adt, 0.0)
        total = tl.sum(adt_first, 0)
        acum = tl.cumsum(adt_first, 0)
        tt = tok0 + tl.arange(0, CT)
        cos, sin, theta_run = _token_rotary(ANG, ang_base, sa_l, DT, scalar_base, tt, tt < end,
                                            n, angle_ok, theta_run, CT, RP, BH, FAST)
        mask = valid[:, None] & n_ok[None, :]
        k_lo, k_hi = _rotated_rows(K, k_base + tok[:, None] * sk_l, KB, bias_at, n, sk_n, half,
                                   mask, cos, sin)
        v_mask = valid[:, None] & p_ok[None, :]
        v = tl.load(V + row64 * sv_b + tok[:, None] * sv_l + h * sv_h + p[None, :] * sv_p,
                    mask=v_mask, other=0.0).to(tl.float32)
        coef = tl.where(valid, tl.exp(total - acum) * w, 0.0)
        v *= tl.load(MV + (h * rank + r[:, None]) * headdim + p[None, :], mask=v_mask,
                     other=0.0).to(tl.float32) * coef[:, None]
        v_op = v.to(dtype)
        decay = tl.exp(total)
        s_lo = tl.dot(tl.trans(k_lo.to(dtype)), v_op, s_lo * decay, input_precision=PRECISION)
        s_hi = tl.dot(tl.trans(k_hi.to(dtype)), v_op, s_hi * decay, input_precision=PRECISION)
        a_run += total

    ch = pid.to(tl.int64) * nheads + h
    at = (ch * headdim + p[None, :]) * 2 * half + n[:, None]
    m = n_ok[:, None] & p_ok[None, :]
    tl.store(STATES + at, s_lo, mask=m)
    tl.store(STATES + at + half, s_hi, mask=m)
    tl.store(ATOT + ch, a_run)
    tl.store(AINC + ch * n_angles + n, theta_run, mask=angle_ok)


@triton.jit
def _mimo_state_pass_kernel(
    STATES, ATOT, AINC, START, ANGLE0, SEQ_CHUNK, SIN, THETA, FIN_SSM, FIN_ANGLE,
    chunks_per_seq, nheads, headdim, half, n_angles,
    RB: tl.constexpr, BH: tl.constexpr, HAS_START: tl.constexpr,
    RETURN_STATE: tl.constexpr, IS_VARLEN: tl.constexpr,
):
    """Rows ``[blk*RB, (blk+1)*RB)`` of the states of one (sequence, head): for every chunk
    the entering state ``S_in`` (SIN, in its dtype) and angle (THETA, row block 0), with
    ``S_in[c+1] = exp(A_tot[c]) S_in[c] + S'_c R(theta_c)^T``; the final state and angle.

    States (.., P, N) float32 contiguous; START (nseq, H, P, N) float32, ANGLE0
    (nseq, H, A) float32. The next chunk's loads are issued before the current stores."""
    seq = tl.program_id(0)
    h = tl.program_id(1)
    blk = tl.program_id(2)
    rows = blk * RB + tl.arange(0, RB)
    n = tl.arange(0, BH)
    m = (rows < headdim)[:, None] & (n < half)[None, :]
    size = headdim * 2 * half
    idx = rows[:, None] * (2 * half) + n[None, :]
    angle_ok = n < n_angles
    angle_first = n < tl.where(blk == 0, n_angles, 0)
    seq_h = seq.to(tl.int64) * nheads + h
    if HAS_START:
        s_lo = tl.load(START + seq_h * size + idx, mask=m, other=0.0)
        s_hi = tl.load(START + seq_h * size + idx + half, mask=m, other=0.0)
    else:
        s_lo = tl.zeros((RB, BH), dtype=tl.float32)
        s_hi = tl.zeros((RB, BH), dtype=tl.float32)
    theta = tl.load(ANGLE0 + seq_h * n_angles + n, mask=angle_ok, other=0.0)
    if IS_VARLEN:
        c0 = tl.load(SEQ_CHUNK + seq)
        c1 = tl.load(SEQ_CHUNK + seq + 1)
    else:
        c0 = seq * chunks_per_seq
        c1 = c0 + chunks_per_seq
    # (an empty packed sequence loads a valid chunk that it does not use)
    ch = tl.maximum(tl.minimum(c0, c1 - 1), 0).to(tl.int64) * nheads + h
    l_lo = tl.load(STATES + ch * size + idx, mask=m, other=0.0)
    l_hi = tl.load(STATES + ch * size + idx + half, mask=m, other=0.0)
    a_tot = tl.load(ATOT + ch)
    inc = tl.load(AINC + ch * n_angles + n, mask=angle_ok, other=0.0)
    for c in range(c0, c1):
        nxt = (tl.minimum(c + 1, c1 - 1) * nheads + h).to(tl.int64)  # prefetch (last: repeat)
        n_lo = tl.load(STATES + nxt * size + idx, mask=m, other=0.0)
        n_hi = tl.load(STATES + nxt * size + idx + half, mask=m, other=0.0)
        n_tot = tl.load(ATOT + nxt)
        n_inc = tl.load(AINC + nxt * n_angles + n, mask=angle_ok, other=0.0)
        ch = (c * nheads + h).to(tl.int64)
        tl.store(SIN + ch * size + idx, s_lo.to(SIN.dtype.element_ty), mask=m)
        tl.store(SIN + ch * size + idx + half, s_hi.to(SIN.dtype.element_ty), mask=m)
        tl.store(THETA + ch * n_angles + n, theta, mask=angle_first)
        cos = tl.cos(theta)[None, :]
        sin = tl.sin(theta)[None, :]
        decay = tl.exp(a_tot)
        s_lo, s_hi = (s_lo * decay + (l_lo * cos - l_hi * sin),
                      s_hi * decay + (l_lo * sin + l_hi * cos))
        theta = _wrap(theta + inc)
        l_lo, l_hi, a_tot, inc = n_lo, n_hi, n_tot, n_inc
    if RETURN_STATE:
        tl.store(FIN_SSM + seq_h * size + idx, s_lo, mask=m)
        tl.store(FIN_SSM + seq_h * size + idx + half, s_hi, mask=m)
        tl.store(FIN_ANGLE + seq_h * n_angles + n, theta, mask=angle_first)


@triton.jit
def _mimo_chunk_scan_kernel(
    Q, K, V, Z, ANG, ADT, DT, TRAP, QB, KB, MV, MZ, MO, DSKIP, NW, SIN, THETA, CHUNKS,
    OUT, FIN_K,
    seqlen, chunks_per_seq, rank, nheads, heads_per_group, headdim, half, n_angles, eps,
    sq_b, sq_l, sq_r, sq_g, sq_n,
    sv_b, sv_l, sv_h, sv_p,
    sz_b, sz_l, sz_h, sz_p,
    sa_b, sa_l, sa_h,
    so_b, so_l, so_r, so_h, so_p,
    CHUNK: tl.constexpr, CT: tl.constexpr, RP: tl.constexpr, BH: tl.constexpr,
    BP: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_NORM: tl.constexpr,
    REDUCE_O: tl.constexpr, RETURN_STATE: tl.constexpr, IS_VARLEN: tl.constexpr,
    PRECISION: tl.constexpr, FAST: tl.constexpr,
):
    """Output of chunk ``pid`` of head ``h`` (and the last token's k when the sequence
    ends in it). Q and K share strides; SIN (.., P, N) and THETA (.., A) from the state
    pass. Per-head parameters are reloaded per sub-chunk (cached), not kept in registers."""
    ROWS: tl.constexpr = CT * RP
    pid = tl.program_id(0)
    h = tl.program_id(1)
    g = h // heads_per_group
    row, seq, start, end, seq_end = _chunk_bounds(pid, CHUNKS, seqlen, chunks_per_seq, CHUNK,
                                                  IS_VARLEN)
    row64 = row.to(tl.int64)
    dtype = Q.dtype.element_ty
    i = tl.arange(0, ROWS)
    t = i // RP
    r = i % RP
    rank_ok = r < rank
    n = tl.arange(0, BH)
    n_ok = n < half
    angle_ok = n < n_angles
    p = tl.arange(0, BP)
    p_ok = p < headdim

    # The entering state (P, N) kept transposed as two (N/2, P) halves; entering angle.
    ch = pid.to(tl.int64) * nheads + h
    state_at = (ch * headdim + p[None, :]) * 2 * half + n[:, None]
    state_mask = n_ok[:, None] & p_ok[None, :]
    st_lo = tl.load(SIN + state_at, mask=state_mask, other=0.0).to(tl.float32)
    st_hi = tl.load(SIN + state_at + half, mask=state_mask, other=0.0).to(tl.float32)
    theta_run = tl.load(THETA + ch * n_angles + n, mask=angle_ok, other=0.0)
    if HAS_D:
        d_skip = tl.load(DSKIP + h).to(tl.float32)

    scalar_base = (row64 * nheads + h) * seqlen
    ang_base = row64 * sa_b + h * sa_h
    qk_base = row64 * sq_b + r[:, None] * sq_r + g * sq_g
    bias_at = (h * rank + r[:, None]) * 2 * half
    proj_at = (h * rank + r[:, None]) * headdim + p[None, :]
    n_sub = tl.cdiv(end - start, CT)
    for sub in range(0, n_sub):
        tok0 = start + sub * CT
        tok = tok0 + t
        valid = (tok < end) & rank_ok
        first = valid & (r == 0)
        adt, dt, gamma, w = _row_scalars(ADT, DT, TRAP, scalar_base, tok, seq_end, valid)
        acum, total, weights, _, _ = _chunk_weights(t, first, adt, w, gamma, valid)
        tt = tok0 + tl.arange(0, CT)
        cos, sin, theta_run = _token_rotary(ANG, ang_base, sa_l, DT, scalar_base, tt, tt < end,
                                            n, angle_ok, theta_run, CT, RP, BH, FAST)

        qk_mask = valid[:, None] & n_ok[None, :]
        qk_at = qk_base + tok[:, None] * sq_l
        q_lo, q_hi = _rotated_rows(Q, qk_at, QB, bias_at, n, sq_n, half, qk_mask, cos, sin)
        q_lo = q_lo.to(dtype)
        q_hi = q_hi.to(dtype)
        k_lo, k_hi = _rotated_rows(K, qk_at, KB, bias_at, n, sq_n, half, qk_mask, cos, sin)
        if RETURN_STATE:  # the last token's k
            last = qk_mask & (tok == seq_end - 1)[:, None]
            k_at = ((seq * rank + r[:, None]) * nheads + h) * 2 * half + n[None, :]
            tl.store(FIN_K + k_at, k_lo.to(FIN_K.dtype.element_ty), mask=last)
            tl.store(FIN_K + k_at + half, k_hi.to(FIN_K.dtype.element_ty), mask=last)
        k_lo = k_lo.to(dtype)
        k_hi = k_hi.to(dtype)

        v_mask = valid[:, None] & p_ok[None, :]
        v = tl.load(V + row64 * sv_b + tok[:, None] * sv_l + h * sv_h + p[None, :] * sv_p,
                    mask=v_mask, other=0.0).to(tl.float32)
        v *= tl.load(MV + proj_at, mask=v_mask, other=0.0).to(tl.float32)

        scores = tl.dot(q_lo, tl.trans(k_lo), input_precision=PRECISION)
        scores = tl.dot(q_hi, tl.trans(k_hi), scores, input_precision=PRECISION)
        y = tl.dot((scores * weights).to(dtype), v.to(dtype), input_precision=PRECISION)
        inter = tl.dot(q_lo, st_lo.to(dtype), input_precision=PRECISION)
        inter = tl.dot(q_hi, st_hi.to(dtype), inter, input_precision=PRECISION)
        y += tl.exp(acum)[:, None] * inter

        if sub + 1 < n_sub:  # the state entering the next sub-chunk
            coef = tl.where(valid, tl.exp(total - acum) * w, 0.0)
            vs = (v * coef[:, None]).to(dtype)
            decay = tl.exp(total)
            st_lo = tl.dot(tl.trans(k_lo), vs, st_lo * decay, input_precision=PRECISION)
            st_hi = tl.dot(tl.trans(k_hi), vs, st_hi * decay, input_precision=PRECISION)

        if HAS_D:
            y += d_skip * v
        if HAS_NORM:
            norm_w = tl.load(NW + h * headdim + p, mask=p_ok, other=0.0).to(tl.float32)
            y = y * tl.rsqrt(tl.sum(y * y, 1) / headdim + eps)[:, None] * norm_w[None, :]
        if HAS_Z:
            zr = tl.load(Z + row64 * sz_b + tok[:, None] * sz_l + h * sz_h + p[None, :] * sz_p,
                         mask=v_mask, other=0.0).to(tl.float32)
            zr *= tl.load(MZ + proj_at, mask=v_mask, other=0.0).to(tl.float32)
            y = y * zr * tl.sigmoid(zr)
        if REDUCE_O:
            y *= tl.load(MO + proj_at, mask=v_mask, other=0.0).to(tl.float32)
            o = tl.sum(tl.reshape(y, (CT, RP, BP)), 1)
            tt = start + sub * CT + tl.arange(0, CT)
            tl.store(OUT + row64 * so_b + tt[:, None] * so_l + h * so_h + p[None, :] * so_p,
                     o.to(OUT.dtype.element_ty), mask=(tt < end)[:, None] & p_ok[None, :])
        else:
            tl.store(OUT + row64 * so_b + tok[:, None] * so_l + r[:, None] * so_r + h * so_h
                     + p[None, :] * so_p, y.to(OUT.dtype.element_ty), mask=v_mask)


def kernel_blocks(rank: int, d_state: int, rows: int = 64) -> tuple[int, int, int]:
    """(sub-chunk tokens CT, padded rank RP, half-state block BH) for ``CT * RP = rows``."""
    rp = triton.next_power_of_2(rank)
    return max(1, rows // rp), rp, max(16, triton.next_power_of_2(d_state // 2))
