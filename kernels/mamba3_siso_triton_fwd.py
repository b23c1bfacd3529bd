"""Triton kernels of the Mamba-3 SISO chunked scan, forward pass.

The tokens of each sequence split into chunks of C tokens, and runs of up to CPP
consecutive chunks form super-chunks (one program each). Four launches:

0. ``_rotary_kernel`` (grid super-chunks x heads): cos and sin of every token's rotary
   angle in its super-chunk's local frame (``pi*tanh(angle)*dt`` summed from the
   super-chunk's first token), and each super-chunk's total angle increment.
1. ``_chunk_state_kernel`` (same grid): the state a super-chunk adds on its own,
   ``S' = sum_s exp(A_end - A_s) w_s v_s k'_s^T`` with k' biased and rotated in the local
   frame, and its total decay; chunks in order, the state carried in registers.
2. ``_state_passing_kernel`` (grid sequences x heads x row blocks): over the super-chunks
   of a sequence, the angle entering each (theta_c, reduced mod 2*pi) and the state
   entering it, ``S_in[c+1] = exp(A_tot[c]) S_in[c] + S'_c R(theta_c)^T``, in place; the
   final state and angle.
3. ``_chunk_scan_kernel`` (grid super-chunks x heads): the output, chunk by chunk with
   the running state in registers: the masked "attention" inside the chunk (q'.k' is
   q.k: both carry the same extra rotation) plus ``exp(A_t) q' S^T``, the D skip and the
   silu(z) gate; then the state moves past the chunk.

Q and K are read as whole rows and rotated in registers (no rotated copy goes through
memory). Rotary pairs (2i, 2i+1) are handled de-interleaved: ``q.k = q_e.k_e + q_o.k_o``,
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
def _dot(a, b, IEEE: tl.constexpr, acc=None):
    if IEEE:
        return tl.dot(a, b, acc, input_precision="ieee")
    else:
        return tl.dot(a, b, acc)


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
def _sub_chunk(g, j, CHUNKS, SUPER, seqlen, chunks_per_seq, supers_per_seq,
               C: tl.constexpr, CPP: tl.constexpr, IS_VARLEN: tl.constexpr):
    """Chunk ``j`` of super-chunk ``g``: (row, start, end, seq_end, chunk slot, valid).

    A super-chunk is up to CPP consecutive chunks of one sequence; past its last chunk
    the tokens are empty (``end == start``) and ``valid`` is false."""
    if IS_VARLEN:
        first = tl.load(SUPER + 2 * g)
        count = tl.load(SUPER + 2 * g + 1)
        valid = j < count
        slot = first + tl.minimum(j, tl.maximum(count - 1, 0))
        row = g * 0
        start = tl.load(CHUNKS + 3 * slot)
        end = tl.where(valid, tl.load(CHUNKS + 3 * slot + 1), start)
        seq_end = tl.load(CHUNKS + 3 * slot + 2)
    else:
        row = g // supers_per_seq
        c = (g % supers_per_seq) * CPP + j
        valid = c < chunks_per_seq
        slot = row * chunks_per_seq + c
        start = c * C
        end = tl.minimum(start + C, seqlen)
        seq_end = seqlen
    return row, start, end, seq_end, slot, valid


@triton.jit
def _sub_chunk_gates(g, j, h, CHUNKS, SUPER, ADT, s_ab, s_ah, s_at, DT, s_db, s_dh, s_dt,
                     TRAP, s_tb, s_th, s_tt, seqlen, chunks_per_seq, supers_per_seq,
                     C: tl.constexpr, CPP: tl.constexpr, IS_VARLEN: tl.constexpr):
    """Chunk ``j`` of super-chunk ``g`` for head ``h``: its row (int64), tokens, token
    mask, chunk slot, validity and gates (``_load_gates``)."""
    row, start, end, seq_end, slot, valid = _sub_chunk(
        g, j, CHUNKS, SUPER, seqlen, chunks_per_seq, supers_per_seq, C, CPP, IS_VARLEN)
    offs_t = start + tl.arange(0, C)
    mask_t = offs_t < end
    row64 = row.to(tl.int64)
    adt, dt, lam, gamma, w = _load_gates(
        ADT + row64 * s_ab + h * s_ah, s_at, DT + row64 * s_db + h * s_dh, s_dt,
        TRAP + row64 * s_tb + h * s_th, s_tt, offs_t, mask_t, offs_t + 1 < seq_end)
    return row64, offs_t, mask_t, slot, valid, adt, dt, lam, gamma, w


@triton.jit
def _rotary_kernel(
    ANG, s_gb, s_gt, s_gh, s_ga, DT, s_db, s_dh, s_dt,
    COS, SIN, CHUNK_ANG, LOCAL_OFFSET, CHUNKS, SUPER,
    seqlen, chunks_per_seq, supers_per_seq, nheads, n_angles,
    C: tl.constexpr, AB: tl.constexpr, CPP: tl.constexpr, IS_VARLEN: tl.constexpr,
    FAST: tl.constexpr, SAVE: tl.constexpr,
):
    """cos and sin (b, H, l, A) of every token's angle in its super-chunk's local frame
    (``pi*tanh(angle)*dt`` summed from the super-chunk's first token, reduced mod 2*pi),
    and each super-chunk's total increment; with SAVE also the local angle entering each
    chunk. Grid (super-chunks, H)."""
    g = tl.program_id(0)
    h = tl.program_id(1)
    offs_a = tl.arange(0, AB)
    mask_a = offs_a < n_angles
    ang = tl.zeros([AB], dtype=tl.float32)
    for j in range(CPP):
        row, start, end, seq_end, slot, valid = _sub_chunk(
            g, j, CHUNKS, SUPER, seqlen, chunks_per_seq, supers_per_seq, C, CPP, IS_VARLEN)
        if SAVE:  # noqa: SIM102 (a constexpr, then a run-time condition)
            if valid:
                tl.store(LOCAL_OFFSET + (slot * nheads + h) * n_angles + offs_a, ang,
                         mask=mask_a)
        offs_t = start + tl.arange(0, C)
        mask_t = offs_t < end
        row64 = row.to(tl.int64)
        theta, inc = _chunk_theta(ANG + row64 * s_gb + h * s_gh, s_gt, s_ga,
                                  DT + row64 * s_db + h * s_dh, s_dt, ANG, offs_t, mask_t,
                                  n_angles, AB, False)
        cos, sin = _cos_sin(_wrap(ang[None, :] + theta), FAST)
        ang = _wrap(ang + inc)
        ptr = ((row64 * nheads + h) * seqlen + offs_t)[:, None] * n_angles + offs_a[None, :]
        m = mask_t[:, None] & mask_a[None, :]
        tl.store(COS + ptr, cos.to(COS.dtype.element_ty), mask=m)
        tl.store(SIN + ptr, sin.to(SIN.dtype.element_ty), mask=m)
    tl.store(CHUNK_ANG + (g * nheads + h) * n_angles + offs_a, ang, mask=mask_a)


@triton.jit
def _load_cos_sin(COS, SIN, base, offs_t, mask_t, n_angles, NH: tl.constexpr):
    """cos and sin (T, NH) float32 of tokens ``offs_t`` (one head's rows start at
    ``base``); pairs >= n_angles get the angle zero."""
    offs_i = tl.arange(0, NH)
    m = mask_t[:, None] & (offs_i < n_angles)[None, :]
    ptr = base + offs_t[:, None] * n_angles + offs_i[None, :]
    cos = tl.load(COS + ptr, mask=m, other=1.0).to(tl.float32)
    sin = tl.load(SIN + ptr, mask=m, other=0.0).to(tl.float32)
    return cos, sin


@triton.jit
def _load_qk(X, s_t, s_n, BIAS, s_bn, offs_t, mask_t, d_state, cos, sin,
             C: tl.constexpr, NH: tl.constexpr):
    """Rows ``offs_t`` of x + bias, read whole and split into even/odd halves (T, NH),
    rotated pairwise by the angles whose cos and sin are given; float32."""
    offs_n = tl.arange(0, 2 * NH)
    mask_n = offs_n < d_state
    m = mask_t[:, None] & mask_n[None, :]
    x = tl.load(X + offs_t[:, None] * s_t + offs_n[None, :] * s_n, mask=m, other=0.0)
    bias = tl.load(BIAS + offs_n * s_bn, mask=mask_n, other=0.0).to(tl.float32)
    x = tl.where(m, x.to(tl.float32) + bias[None, :], 0.0)
    x_e, x_o = tl.split(tl.reshape(x, [C, NH, 2]))
    return x_e * cos - x_o * sin, x_e * sin + x_o * cos


@triton.jit
def _chunk_state_kernel(
    K, s_kb, s_kt, s_kg, s_kn, KB, s_bh, s_bn,
    V, s_vb, s_vt, s_vh, s_vp,
    ADT, s_ab, s_ah, s_at, DT, s_db, s_dh, s_dt, TRAP, s_tb, s_th, s_tt,
    COS, SIN, STATES, ATOT, CHUNKS, SUPER,
    seqlen, chunks_per_seq, supers_per_seq, nheads, heads_per_group, d_state, n_angles,
    headdim,
    C: tl.constexpr, NH: tl.constexpr, PB: tl.constexpr, CPP: tl.constexpr,
    IS_VARLEN: tl.constexpr, IEEE: tl.constexpr,
):
    """The state one super-chunk adds on its own, in its local rotary frame (angles summed
    from its first token), and its total decay; grid (super-chunks, H). States are
    (P, [even | odd]) float32."""
    g = tl.program_id(0)
    h = tl.program_id(1)
    grp = h // heads_per_group
    offs_p = tl.arange(0, PB)
    mask_p = offs_p < headdim
    offs_i = tl.arange(0, NH)
    dty = V.dtype.element_ty
    s_e = tl.zeros([PB, NH], dtype=tl.float32)
    s_o = tl.zeros([PB, NH], dtype=tl.float32)
    a_tot = tl.sum(tl.zeros([C], dtype=tl.float32), 0)
    for j in range(CPP):
        row64, offs_t, mask_t, slot, valid, adt, dt, lam, gamma, w = _sub_chunk_gates(
            g, j, h, CHUNKS, SUPER, ADT, s_ab, s_ah, s_at, DT, s_db, s_dh, s_dt, TRAP, s_tb,
            s_th, s_tt, seqlen, chunks_per_seq, supers_per_seq, C, CPP, IS_VARLEN)
        a_end = tl.sum(adt, 0)
        coef = tl.exp(a_end - tl.cumsum(adt, 0)) * w
        cos, sin = _load_cos_sin(COS, SIN, (row64 * nheads + h) * seqlen * n_angles, offs_t,
                                 mask_t, n_angles, NH)
        k_e, k_o = _load_qk(K + row64 * s_kb + grp * s_kg, s_kt, s_kn, KB + h * s_bh, s_bn,
                            offs_t, mask_t, d_state, cos, sin, C, NH)
        v = tl.load(V + row64 * s_vb + h * s_vh + offs_t[:, None] * s_vt
                    + offs_p[None, :] * s_vp, mask=mask_t[:, None] & mask_p[None, :], other=0.0)
        vs = tl.trans((v.to(tl.float32) * coef[:, None]).to(dty))
        decay = tl.exp(a_end)
        s_e = s_e * decay + _dot(vs, k_e.to(dty), IEEE)
        s_o = s_o * decay + _dot(vs, k_o.to(dty), IEEE)
        a_tot += a_end
    sup = g * nheads + h
    ptr = (STATES + sup.to(tl.int64) * headdim * d_state + offs_p[:, None] * d_state
           + offs_i[None, :])
    m_st = mask_p[:, None] & (offs_i < d_state // 2)[None, :]
    tl.store(ptr, s_e, mask=m_st)
    tl.store(ptr + d_state // 2, s_o, mask=m_st)
    tl.store(ATOT + sup, a_tot)


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
def _turn(s_e, s_o, cos, sin):
    """Rotate the (even, odd) column pairs of a state by the angles with this cos, sin."""
    return s_e * cos - s_o * sin, s_e * sin + s_o * cos


@triton.jit
def _chunk_scan_kernel(
    Q, s_qb, s_qt, s_qg, s_qn, K, s_kb, s_kt, s_kg, s_kn, QB, KB, s_bh, s_bn,
    V, s_vb, s_vt, s_vh, s_vp,
    Z, s_zb, s_zt, s_zh, s_zp,
    OUT, s_ob, s_ot, s_oh, s_op,
    YPRE,
    ADT, s_ab, s_ah, s_at, DT, s_db, s_dh, s_dt, TRAP, s_tb, s_th, s_tt,
    COS, SIN, D, OFFSET, STATES, CHUNKS, SUPER, SAVED_STATES, SAVED_OFFSET, SAVED_ATOT,
    seqlen, chunks_per_seq, supers_per_seq, nheads, heads_per_group, d_state, n_angles,
    headdim,
    C: tl.constexpr, NH: tl.constexpr, PB: tl.constexpr, CPP: tl.constexpr,
    IS_VARLEN: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
    STORE_YPRE: tl.constexpr, SAVE: tl.constexpr, IEEE: tl.constexpr,
):
    """Output of one super-chunk of one head, its chunks in order with the running state
    in registers (in the super-chunk's local rotary frame); grid (super-chunks, H).

    Per chunk: the masked "attention" inside the chunk plus ``exp(A_t) q_t S^T`` from the
    state entering it, the D skip and the silu(z) gate. With SAVE, the state (global
    frame), angle (``SAVED_OFFSET`` holds the local one on entry) and total decay entering
    each chunk are stored for the backward pass.
    """
    g = tl.program_id(0)
    h = tl.program_id(1)
    grp = h // heads_per_group
    offs_p = tl.arange(0, PB)
    mask_p = offs_p < headdim
    offs_i = tl.arange(0, NH)
    mask_i = offs_i < d_state // 2
    m_st = mask_p[:, None] & mask_i[None, :]
    idx = tl.arange(0, C)
    dty = V.dtype.element_ty
    if HAS_D:
        d_skip = tl.load(D + h).to(tl.float32)

    # The entering state, turned into the super-chunk's frame: R(-theta_c) per pair.
    sup = g * nheads + h
    st_ptr = offs_p[:, None] * d_state + offs_i[None, :]
    ptr = STATES + sup.to(tl.int64) * headdim * d_state + st_ptr
    st_e = tl.load(ptr, mask=m_st, other=0.0)
    st_o = tl.load(ptr + d_state // 2, mask=m_st, other=0.0)
    theta_c = tl.load(OFFSET + sup * n_angles + offs_i, mask=offs_i < n_angles, other=0.0)
    cos_c = tl.cos(theta_c)[None, :]
    sin_c = tl.sin(theta_c)[None, :]
    s_e, s_o = _turn(st_e, st_o, cos_c, -sin_c)
    for j in range(CPP):
        row64, offs_t, mask_t, slot, valid, adt, dt, lam, gamma, w = _sub_chunk_gates(
            g, j, h, CHUNKS, SUPER, ADT, s_ab, s_ah, s_at, DT, s_db, s_dh, s_dt, TRAP, s_tb,
            s_th, s_tt, seqlen, chunks_per_seq, supers_per_seq, C, CPP, IS_VARLEN)
        a_cum = tl.cumsum(adt, 0)
        a_end = tl.sum(adt, 0)
        if SAVE:  # noqa: SIM102 (a constexpr, then a run-time condition)
            if valid:
                ch = slot * nheads + h
                g_e, g_o = _turn(s_e, s_o, cos_c, sin_c)
                ptr = SAVED_STATES + ch.to(tl.int64) * headdim * d_state + st_ptr
                tl.store(ptr, g_e, mask=m_st)
                tl.store(ptr + d_state // 2, g_o, mask=m_st)
                mask_a = offs_i < n_angles
                local = tl.load(SAVED_OFFSET + ch * n_angles + offs_i, mask=mask_a)
                tl.store(SAVED_OFFSET + ch * n_angles + offs_i, _wrap(theta_c + local),
                         mask=mask_a)
                tl.store(SAVED_ATOT + ch, a_end)
        cos, sin = _load_cos_sin(COS, SIN, (row64 * nheads + h) * seqlen * n_angles, offs_t,
                                 mask_t, n_angles, NH)
        q_e, q_o = _load_qk(Q + row64 * s_qb + grp * s_qg, s_qt, s_qn, QB + h * s_bh, s_bn,
                            offs_t, mask_t, d_state, cos, sin, C, NH)
        k_e, k_o = _load_qk(K + row64 * s_kb + grp * s_kg, s_kt, s_kn, KB + h * s_bh, s_bn,
                            offs_t, mask_t, d_state, cos, sin, C, NH)
        q_e, q_o, k_e, k_o = q_e.to(dty), q_o.to(dty), k_e.to(dty), k_o.to(dty)
        mask_tp = mask_t[:, None] & mask_p[None, :]
        v = tl.load(V + row64 * s_vb + h * s_vh + offs_t[:, None] * s_vt
                    + offs_p[None, :] * s_vp, mask=mask_tp, other=0.0)
        scores = _dot(q_e, tl.trans(k_e), IEEE) + _dot(q_o, tl.trans(k_o), IEEE)
        diff = tl.minimum(a_cum[:, None] - a_cum[None, :], 0.0)
        weight = tl.where(idx[:, None] > idx[None, :], tl.exp(diff) * w[None, :],
                          tl.where(idx[:, None] == idx[None, :], gamma[:, None], 0.0))
        y = _dot((scores * weight).to(dty), v.to(dty), IEEE)
        y_state = (_dot(q_e, tl.trans(s_e.to(dty)), IEEE)
                   + _dot(q_o, tl.trans(s_o.to(dty)), IEEE))
        y += y_state * tl.exp(a_cum)[:, None]
        vf = v.to(tl.float32)
        if HAS_D:
            y += d_skip * vf
        tok = offs_t[:, None] * s_ot + offs_p[None, :] * s_op
        o_off = row64 * s_ob + h * s_oh
        if STORE_YPRE:
            tl.store(YPRE + o_off + tok, y.to(YPRE.dtype.element_ty), mask=mask_tp)
        if HAS_Z:
            z = tl.load(Z + row64 * s_zb + h * s_zh + offs_t[:, None] * s_zt
                        + offs_p[None, :] * s_zp, mask=mask_tp, other=0.0).to(tl.float32)
            y = y * z * _sigmoid(z)
        tl.store(OUT + o_off + tok, y.to(OUT.dtype.element_ty), mask=mask_tp)

        # The state entering the next chunk.
        coef = tl.exp(a_end - a_cum) * w
        vs = tl.trans((vf * coef[:, None]).to(dty))
        decay = tl.exp(a_end)
        s_e = s_e * decay + _dot(vs, k_e, IEEE)
        s_o = s_o * decay + _dot(vs, k_o, IEEE)
