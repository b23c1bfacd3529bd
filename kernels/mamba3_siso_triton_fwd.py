"""Triton kernels of the Mamba-3 SISO chunked scan, forward pass.

Four launches:

1. ``_rotate_kernel`` (grid chunk groups x heads): q' and k' (biased, then rotated by the
   angle summed from their chunk's start only: the chunk's local rotary frame) as
   contiguous (b, H, l, [even | odd]) tiles, and each chunk's total angle increment.
2. ``_chunk_state_kernel``: the state each chunk adds on its own,
   ``S'_c = sum_s exp(A_end - A_s) w_s v_s k'_s^T`` (local frame) and its total decay.
3. ``_state_passing_kernel`` (grid sequences x heads x row blocks): over the chunks of a
   sequence, the angle entering each chunk (theta_c, reduced mod 2*pi per chunk) and the
   state entering it, ``S_in[c+1] = exp(A_tot[c]) S_in[c] + S'_c R(theta_c)^T``, in place;
   the final state and angle.
4. ``_chunk_scan_kernel``: the output, the masked "attention" inside the chunk (q'.k' is
   q.k: both carry the same extra rotation) plus ``exp(A_t) q' R(-theta_c) S_in``, with the
   D skip and the silu(z) gate.

Chunk kernels loop over a few consecutive chunks per program so that loads overlap
compute. Rotary pairs (2i, 2i+1) are handled de-interleaved: ``q.k = q_e.k_e + q_o.k_o``,
and states live in a (P, [even | odd]) layout. ``shared/spec/MAMBA3.md`` gives the math.
"""

from __future__ import annotations

import triton
import triton.language as tl

PI = tl.constexpr(3.141592653589793)
TWO_PI = tl.constexpr(6.283185307179586)


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
def _cos_sin(x, FAST: tl.constexpr):
    """cos and sin; FAST uses the hardware approximations (absolute error ~1e-6)."""
    if FAST:
        c = tl.inline_asm_elementwise("cos.approx.f32 $0, $1;", "=f,f", [x],
                                      dtype=tl.float32, is_pure=True, pack=1)
        s = tl.inline_asm_elementwise("sin.approx.f32 $0, $1;", "=f,f", [x],
                                      dtype=tl.float32, is_pure=True, pack=1)
    else:
        c = tl.cos(x)
        s = tl.sin(x)
    return c, s


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
def _chunk_theta(ANG, s_at, s_aa, DT, s_dt, OFFSET, offs_t, mask_t, n_angles,
                 NH: tl.constexpr, HAS_OFFSET: tl.constexpr):
    """Angles (T, NH) of the tokens ``offs_t`` of one chunk: the running sum of
    pi*tanh(angle)*dt from the chunk's start, plus the entering angle ``OFFSET`` (A,)
    when given (then reduced mod 2*pi). Also returns the chunk's total increment (NH,)."""
    offs_i = tl.arange(0, NH)
    mask_i = offs_i < n_angles
    m = mask_t[:, None] & mask_i[None, :]
    ang = tl.load(ANG + offs_t[:, None] * s_at + offs_i[None, :] * s_aa, mask=m, other=0.0)
    dt = tl.load(DT + offs_t * s_dt, mask=mask_t, other=0.0).to(tl.float32)
    inc = _tanh(ang.to(tl.float32)) * PI * dt[:, None]
    theta = tl.cumsum(inc, 0)
    if HAS_OFFSET:
        theta = _wrap(tl.load(OFFSET + offs_i, mask=mask_i, other=0.0)[None, :] + theta)
    return theta, tl.sum(inc, 0)


@triton.jit
def _load_rotated(X, s_t, s_n, BIAS, s_bn, cos, sin, offs_t, mask_t, n_half,
                  NH: tl.constexpr, I0: tl.constexpr):
    """Load x + bias for the tokens ``offs_t`` as even/odd halves (T, NH) of the pairs
    ``[I0, I0 + NH)``, rotated by the angles whose cos, sin (T, NH) are given; float32,
    rows outside ``mask_t`` are zero."""
    offs_i = I0 + tl.arange(0, NH)
    mask_i = offs_i < n_half
    m = mask_t[:, None] & mask_i[None, :]
    ptr = X + offs_t[:, None] * s_t + (2 * offs_i)[None, :] * s_n
    x_e = tl.load(ptr, mask=m, other=0.0).to(tl.float32)
    x_o = tl.load(ptr + s_n, mask=m, other=0.0).to(tl.float32)
    b_e = tl.load(BIAS + 2 * offs_i * s_bn, mask=mask_i, other=0.0).to(tl.float32)
    b_o = tl.load(BIAS + (2 * offs_i + 1) * s_bn, mask=mask_i, other=0.0).to(tl.float32)
    x_e = tl.where(m, x_e + b_e[None, :], 0.0)
    x_o = tl.where(m, x_o + b_o[None, :], 0.0)
    return x_e * cos - x_o * sin, x_e * sin + x_o * cos


@triton.jit
def _store_pairs(X, ptr, m, x_e, x_o, n_half):
    tl.store(X + ptr, x_e.to(X.dtype.element_ty), mask=m)
    tl.store(X + ptr + n_half, x_o.to(X.dtype.element_ty), mask=m)


@triton.jit
def _rotate_kernel(
    Q, s_qb, s_qt, s_qg, s_qn,
    K, s_kb, s_kt, s_kg, s_kn,
    DT, s_db, s_dh, s_dt,
    QB, KB, s_bh, s_bn,
    ANG, s_gb, s_gt, s_gh, s_ga,
    QR, KR, CHUNK_ANG, CHUNKS,
    seqlen, nchunks, chunks_per_seq, nheads, heads_per_group, n_half, n_angles,
    C: tl.constexpr, NH: tl.constexpr, CPP: tl.constexpr,
    IS_VARLEN: tl.constexpr, FAST: tl.constexpr,
    AB: tl.constexpr, RB: tl.constexpr,
):
    """q', k' of CPP consecutive chunks of one head, in their chunks' local rotary frames;
    grid (chunks / CPP, H). Angles are computed for the first AB pairs only (AB >= A);
    with RB > 0 the pairs ``[AB, AB + RB)`` are copied without rotation (AB = NH: none)."""
    h = tl.program_id(1)
    grp = h // heads_per_group
    for j in range(CPP):
        pid_c = tl.minimum(tl.program_id(0) * CPP + j, nchunks - 1)
        row, start, end, seq_end = _chunk_bounds(pid_c, CHUNKS, seqlen, chunks_per_seq, C,
                                                 IS_VARLEN)
        offs_t = start + tl.arange(0, C)
        mask_t = offs_t < end
        row64 = row.to(tl.int64)
        theta, ang_sum = _chunk_theta(ANG + row64 * s_gb + h * s_gh, s_gt, s_ga,
                                      DT + row64 * s_db + h * s_dh, s_dt, ANG, offs_t, mask_t,
                                      n_angles, AB, False)
        cos, sin = _cos_sin(theta, FAST)
        q_ptr = Q + row64 * s_qb + grp * s_qg
        k_ptr = K + row64 * s_kb + grp * s_kg
        row_ptr = (((row64 * nheads + h) * seqlen + offs_t) * (2 * n_half))[:, None]
        offs_a = tl.arange(0, AB)
        m = mask_t[:, None] & (offs_a < n_half)[None, :]
        q_e, q_o = _load_rotated(q_ptr, s_qt, s_qn, QB + h * s_bh, s_bn, cos, sin, offs_t,
                                 mask_t, n_half, AB, 0)
        _store_pairs(QR, row_ptr + offs_a[None, :], m, q_e, q_o, n_half)
        k_e, k_o = _load_rotated(k_ptr, s_kt, s_kn, KB + h * s_bh, s_bn, cos, sin, offs_t,
                                 mask_t, n_half, AB, 0)
        _store_pairs(KR, row_ptr + offs_a[None, :], m, k_e, k_o, n_half)
        if RB > 0:
            offs_r = AB + tl.arange(0, RB)
            m = mask_t[:, None] & (offs_r < n_half)[None, :]
            q_e, q_o = _load_rotated(q_ptr, s_qt, s_qn, QB + h * s_bh, s_bn, 1.0, 0.0, offs_t,
                                     mask_t, n_half, RB, AB)
            _store_pairs(QR, row_ptr + offs_r[None, :], m, q_e, q_o, n_half)
            k_e, k_o = _load_rotated(k_ptr, s_kt, s_kn, KB + h * s_bh, s_bn, 1.0, 0.0, offs_t,
                                     mask_t, n_half, RB, AB)
            _store_pairs(KR, row_ptr + offs_r[None, :], m, k_e, k_o, n_half)
        tl.store(CHUNK_ANG + (pid_c * nheads + h) * n_angles + offs_a, ang_sum,
                 mask=offs_a < n_angles)


@triton.jit
def _load_tile(X, base, offs_t, mask_t, n_half, NH: tl.constexpr):
    """Even and odd halves (T, NH) of rows ``offs_t`` of a (.., l, [even | odd]) buffer."""
    offs_i = tl.arange(0, NH)
    m = mask_t[:, None] & (offs_i < n_half)[None, :]
    ptr = X + base + (offs_t * (2 * n_half))[:, None] + offs_i[None, :]
    return (tl.load(ptr, mask=m, other=0.0), tl.load(ptr + n_half, mask=m, other=0.0))


@triton.jit
def _chunk_state_kernel(
    KR, V, s_vb, s_vt, s_vh, s_vp,
    ADT, s_ab, s_ah, s_at, DT, s_db, s_dh, s_dt, TRAP, s_tb, s_th, s_tt,
    STATES, ATOT, CHUNKS,
    seqlen, nchunks, chunks_per_seq, nheads, n_half, headdim,
    C: tl.constexpr, NH: tl.constexpr, PB: tl.constexpr, CPP: tl.constexpr,
    IS_VARLEN: tl.constexpr, IEEE: tl.constexpr,
):
    """S'_c (P, [even | odd]) in the chunk's rotary frame and A_tot of CPP consecutive
    chunks of one head; grid (chunks / CPP, H)."""
    h = tl.program_id(1)
    offs_p = tl.arange(0, PB)
    mask_p = offs_p < headdim
    offs_i = tl.arange(0, NH)
    m_st = mask_p[:, None] & (offs_i < n_half)[None, :]
    for j in range(CPP):
        pid_c = tl.minimum(tl.program_id(0) * CPP + j, nchunks - 1)
        row, start, end, seq_end = _chunk_bounds(pid_c, CHUNKS, seqlen, chunks_per_seq, C,
                                                 IS_VARLEN)
        offs_t = start + tl.arange(0, C)
        mask_t = offs_t < end
        row64 = row.to(tl.int64)
        adt, dt, lam, gamma, w = _load_gates(
            ADT + row64 * s_ab + h * s_ah, s_at, DT + row64 * s_db + h * s_dh, s_dt,
            TRAP + row64 * s_tb + h * s_th, s_tt, offs_t, mask_t, offs_t + 1 < seq_end)
        a_end = tl.sum(adt, 0)
        coef = tl.exp(a_end - tl.cumsum(adt, 0)) * w
        k_e, k_o = _load_tile(KR, (row64 * nheads + h) * seqlen * (2 * n_half), offs_t, mask_t,
                              n_half, NH)
        v = tl.load(V + row64 * s_vb + h * s_vh + offs_t[:, None] * s_vt
                    + offs_p[None, :] * s_vp, mask=mask_t[:, None] & mask_p[None, :], other=0.0)
        vs = tl.trans((v.to(tl.float32) * coef[:, None]).to(k_e.dtype))
        ptr = (STATES + (pid_c.to(tl.int64) * nheads + h) * headdim * 2 * n_half
               + offs_p[:, None] * (2 * n_half) + offs_i[None, :])
        tl.store(ptr, _dot(vs, k_e, IEEE), mask=m_st)
        tl.store(ptr + n_half, _dot(vs, k_o, IEEE), mask=m_st)
        tl.store(ATOT + pid_c * nheads + h, a_end)


@triton.jit
def _state_passing_kernel(
    STATES, ATOT, CHUNK_ANG, OFFSET, START, ANGLE0, s_0s, s_0h, FINAL, FINAL_ANGLE,
    SEQ_CHUNK, chunks_per_seq, nheads, n_half, n_angles, headdim,
    RB: tl.constexpr, NH: tl.constexpr, IS_VARLEN: tl.constexpr,
    HAS_START: tl.constexpr, HAS_ANGLE0: tl.constexpr,
):
    """Over the chunks of one sequence: store the angle (OFFSET, first row block only)
    and the state entering each chunk in place of its own state; grid (nseq, H, P / RB).
    The next chunk's loads are issued before the current chunk's stores.

    States are (P, [even | odd]) float32; ``START`` is the initial state in that layout.
    """
    seq = tl.program_id(0)
    h = tl.program_id(1)
    blk = tl.program_id(2)
    offs_r = blk * RB + tl.arange(0, RB)
    offs_i = tl.arange(0, NH)
    mask_i = offs_i < n_half
    m = (offs_r < headdim)[:, None] & mask_i[None, :]
    size = headdim * 2 * n_half
    idx = offs_r[:, None] * (2 * n_half) + offs_i[None, :]
    seq_off = (seq * nheads + h).to(tl.int64) * size
    if HAS_START:
        s_e = tl.load(START + seq_off + idx, mask=m, other=0.0)
        s_o = tl.load(START + seq_off + idx + n_half, mask=m, other=0.0)
    else:
        s_e = tl.zeros([RB, NH], dtype=tl.float32)
        s_o = tl.zeros([RB, NH], dtype=tl.float32)
    mask_a = offs_i < n_angles
    mask_first = offs_i < tl.where(blk == 0, n_angles, 0)  # angles: row block 0 writes
    if HAS_ANGLE0:
        theta = tl.load(ANGLE0 + seq * s_0s + h * s_0h + offs_i, mask=mask_a,
                        other=0.0).to(tl.float32)
    else:
        theta = tl.zeros([NH], dtype=tl.float32)
    if IS_VARLEN:
        c0 = tl.load(SEQ_CHUNK + seq)
        c1 = tl.load(SEQ_CHUNK + seq + 1)
    else:
        c0 = seq * chunks_per_seq
        c1 = c0 + chunks_per_seq
    ch = c0 * nheads + h
    ptr = STATES + ch.to(tl.int64) * size + idx
    l_e = tl.load(ptr, mask=m, other=0.0)
    l_o = tl.load(ptr + n_half, mask=m, other=0.0)
    a_tot = tl.load(ATOT + ch)
    inc = tl.load(CHUNK_ANG + ch * n_angles + offs_i, mask=mask_a, other=0.0)
    for c in range(c0, c1):
        # Prefetch chunk c + 1 (a repeat of chunk c at the end, never used).
        nxt = tl.minimum(c + 1, c1 - 1) * nheads + h
        n_ptr = STATES + nxt.to(tl.int64) * size + idx
        n_e = tl.load(n_ptr, mask=m, other=0.0)
        n_o = tl.load(n_ptr + n_half, mask=m, other=0.0)
        n_tot = tl.load(ATOT + nxt)
        n_inc = tl.load(CHUNK_ANG + nxt * n_angles + offs_i, mask=mask_a, other=0.0)
        ch = c * nheads + h
        ptr = STATES + ch.to(tl.int64) * size + idx
        tl.store(ptr, s_e, mask=m)
        tl.store(ptr + n_half, s_o, mask=m)
        tl.store(OFFSET + ch * n_angles + offs_i, theta, mask=mask_first)
        cos = tl.cos(theta)[None, :]
        sin = tl.sin(theta)[None, :]
        decay = tl.exp(a_tot)
        s_e = s_e * decay + (l_e * cos - l_o * sin)
        s_o = s_o * decay + (l_e * sin + l_o * cos)
        theta = _wrap(theta + inc)
        l_e, l_o, a_tot, inc = n_e, n_o, n_tot, n_inc
    tl.store(FINAL + seq_off + idx, s_e, mask=m)
    tl.store(FINAL + seq_off + idx + n_half, s_o, mask=m)
    tl.store(FINAL_ANGLE + (seq * nheads + h) * n_angles + offs_i, theta, mask=mask_first)


@triton.jit
def _chunk_scan_kernel(
    QR, KR, V, s_vb, s_vt, s_vh, s_vp,
    Z, s_zb, s_zt, s_zh, s_zp,
    OUT, s_ob, s_ot, s_oh, s_op,
    YPRE,
    ADT, s_ab, s_ah, s_at, DT, s_db, s_dh, s_dt, TRAP, s_tb, s_th, s_tt,
    D, OFFSET, STATES, CHUNKS,
    seqlen, nchunks, chunks_per_seq, nheads, n_half, n_angles, headdim,
    C: tl.constexpr, NH: tl.constexpr, PB: tl.constexpr, CPP: tl.constexpr,
    IS_VARLEN: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
    STORE_YPRE: tl.constexpr, IEEE: tl.constexpr,
):
    """Output of CPP consecutive chunks of one head; grid (chunks / CPP, H)."""
    h = tl.program_id(1)
    offs_p = tl.arange(0, PB)
    mask_p = offs_p < headdim
    offs_i = tl.arange(0, NH)
    m_st = mask_p[:, None] & (offs_i < n_half)[None, :]
    idx = tl.arange(0, C)
    if HAS_D:
        d_skip = tl.load(D + h).to(tl.float32)
    for j in range(CPP):
        pid_c = tl.minimum(tl.program_id(0) * CPP + j, nchunks - 1)
        row, start, end, seq_end = _chunk_bounds(pid_c, CHUNKS, seqlen, chunks_per_seq, C,
                                                 IS_VARLEN)
        offs_t = start + tl.arange(0, C)
        mask_t = offs_t < end
        row64 = row.to(tl.int64)
        adt, dt, lam, gamma, w = _load_gates(
            ADT + row64 * s_ab + h * s_ah, s_at, DT + row64 * s_db + h * s_dh, s_dt,
            TRAP + row64 * s_tb + h * s_th, s_tt, offs_t, mask_t, offs_t + 1 < seq_end)
        a_cum = tl.cumsum(adt, 0)
        base = (row64 * nheads + h) * seqlen * (2 * n_half)
        q_e, q_o = _load_tile(QR, base, offs_t, mask_t, n_half, NH)
        k_e, k_o = _load_tile(KR, base, offs_t, mask_t, n_half, NH)
        mask_tp = mask_t[:, None] & mask_p[None, :]
        v = tl.load(V + row64 * s_vb + h * s_vh + offs_t[:, None] * s_vt
                    + offs_p[None, :] * s_vp, mask=mask_tp, other=0.0)
        dty = q_e.dtype
        scores = _dot(q_e, tl.trans(k_e), IEEE) + _dot(q_o, tl.trans(k_o), IEEE)
        diff = tl.minimum(a_cum[:, None] - a_cum[None, :], 0.0)
        weight = tl.where(idx[:, None] > idx[None, :], tl.exp(diff) * w[None, :],
                          tl.where(idx[:, None] == idx[None, :], gamma[:, None], 0.0))
        y = _dot((scores * weight).to(dty), v.to(dty), IEEE)

        # The entering state, turned into the chunk's local frame: R(-theta_c) per pair.
        ch = pid_c * nheads + h
        ptr = (STATES + ch.to(tl.int64) * headdim * 2 * n_half + offs_p[:, None] * (2 * n_half)
               + offs_i[None, :])
        st_e = tl.load(ptr, mask=m_st, other=0.0)
        st_o = tl.load(ptr + n_half, mask=m_st, other=0.0)
        theta = tl.load(OFFSET + ch * n_angles + offs_i, mask=offs_i < n_angles, other=0.0)
        cos = tl.cos(theta)[None, :]
        sin = tl.sin(theta)[None, :]
        loc_e = (st_e * cos + st_o * sin).to(dty)
        loc_o = (st_o * cos - st_e * sin).to(dty)
        y_state = _dot(q_e, tl.trans(loc_e), IEEE) + _dot(q_o, tl.trans(loc_o), IEEE)
        y += y_state * tl.exp(a_cum)[:, None]
        if HAS_D:
            y += d_skip * v.to(tl.float32)
        tok = offs_t[:, None] * s_ot + offs_p[None, :] * s_op
        o_off = row64 * s_ob + h * s_oh
        if STORE_YPRE:
            tl.store(YPRE + o_off + tok, y.to(YPRE.dtype.element_ty), mask=mask_tp)
        if HAS_Z:
            z = tl.load(Z + row64 * s_zb + h * s_zh + offs_t[:, None] * s_zt
                        + offs_p[None, :] * s_zp, mask=mask_tp, other=0.0).to(tl.float32)
            y = y * z * _sigmoid(z)
        tl.store(OUT + o_off + tok, y.to(OUT.dtype.element_ty), mask=mask_tp)
