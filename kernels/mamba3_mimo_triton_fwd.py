"""Triton kernels of the Mamba-3 MIMO chunked prefill, forward pass.

A token contributes R rows ``(t, r)``; a chunk of ``C`` tokens holds ``C * RP`` rows
``i = t * RP + r`` (RP: the rank rounded up to a power of two, rows with ``r >= R``
masked), so the ranks of a token are rows of a masked "attention"
(``mamba3_mimo_reference.mimo_chunked_core``). Runs of up to CPP consecutive chunks of
one sequence form super-chunks, one program each, which carry the state in registers
from chunk to chunk. The launches follow the SISO forward (``mamba3_siso_triton_fwd``),
whose rotary pass and state passing the MIMO forward reuses unchanged: the angles and
states are the same, only the rotary pairs differ ((n, n + N/2) here, stored as the low
and high halves of N, which is the layout of the SISO kernels' [even | odd] halves).

0. SISO ``_rotary_kernel``: cos and sin of every token's angles in its super-chunk's
   local frame, and each super-chunk's total angle increment;
1. ``_mimo_chunk_state_kernel`` (grid super-chunks x heads): the state a super-chunk
   adds on its own (local frame) and its total decay;
2. SISO ``_state_passing_kernel``: the state and angle entering every super-chunk, the
   final state and angle;
3. ``_mimo_chunk_scan_kernel`` (grid super-chunks x heads): the output, chunk by chunk:
   in-chunk part plus ``exp(A_t) q' S^T``, with bias, rotary, rank values, D, the
   headwise norm, the gate and the ``MIMO_O`` contraction fused.

Work that depends on the token only runs per token: the gates, cos/sin, V and Z are
loaded as (C, columns) tiles, the decay weights are a (C, C) tile spread over the rank
pairs (``_spread_square``), and per-(token, rank) values are (C, RP, columns) products
of a token tile and a per-rank table (biases, ``MIMO_V/Z/O``, loaded in the loop: as
loop invariants the compiler would keep copies of them in registers in every layout),
reshaped to rows for the products (``_rows``). Every load of a chunk is issued before
its products so that the latencies overlap.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from mamba3_integrations.kernels.mamba3_siso_triton_fwd import (
    _dot,
    _load_gates,
    _sub_chunk,
    _wrap,
)


@triton.jit
def _token_weights(adt, w, gamma):
    """Per token of a chunk (C,): the cumulative decay, the chunk's total decay, and the
    (C, C) weights ``w_s exp(acum_t - acum_s)`` for s < t, ``gamma_t`` for s = t. They
    hold for every rank pair of the tokens (``_spread_square``)."""
    C: tl.constexpr = adt.shape[0]
    acum = tl.cumsum(adt, 0)
    tt = tl.arange(0, C)
    before = tt[None, :] < tt[:, None]
    decay = tl.exp(tl.where(before, acum[:, None] - acum[None, :], 0.0))
    weights = tl.where(before, decay * w[None, :],
                       tl.where(tt[None, :] == tt[:, None], gamma[:, None], 0.0))
    return acum, tl.sum(adt, 0), weights


@triton.jit
def _spread_rows(x, RP: tl.constexpr):
    """(C,) per token -> (C * RP,): row ``t * RP + r`` holds token t's entry."""
    C: tl.constexpr = x.shape[0]
    return tl.reshape(tl.broadcast_to(x[:, None], (C, RP)), (C * RP,))


@triton.jit
def _spread_square(x, RP: tl.constexpr):
    """(C, C) per token pair -> (C * RP, C * RP) per row pair."""
    C: tl.constexpr = x.shape[0]
    return tl.reshape(tl.broadcast_to(x[:, None, :, None], (C, RP, C, RP)), (C * RP, C * RP))


@triton.jit
def _chunk_tokens(g, j, h, CHUNKS, SUPER, ADT, s_ab, s_ah, s_at, DT, s_db, s_dh, s_dt,
                  TRAP, s_tb, s_th, s_tt, seqlen, chunks_per_seq, supers_per_seq,
                  C: tl.constexpr, CPP: tl.constexpr, IS_VARLEN: tl.constexpr):
    """Chunk ``j`` of super-chunk ``g`` for head ``h``: the batch row (int64), its tokens
    ``tt`` (C,), their end, and the gates ``adt, gamma, w`` per token (``_load_gates``;
    zero past the end)."""
    row, start, end, seq_end, _, _ = _sub_chunk(
        g, j, CHUNKS, SUPER, seqlen, chunks_per_seq, supers_per_seq, C, CPP, IS_VARLEN)
    row64 = row.to(tl.int64)
    tt = start + tl.arange(0, C)
    adt, _, _, gamma, w = _load_gates(
        ADT + row64 * s_ab + h * s_ah, s_at, DT + row64 * s_db + h * s_dh, s_dt,
        TRAP + row64 * s_tb + h * s_th, s_tt, tt, tt < end, tt + 1 < seq_end)
    return row64, tt, end, adt, gamma, w


@triton.jit
def _token_cos_sin(COS, SIN, cs_at, tt, end, n, n_angles):
    """cos and sin (C, BH) of the tokens ``tt`` (in COS's dtype); COS/SIN point at one
    head's (l, A) rows at ``cs_at``; pairs past ``n_angles`` (and tokens past ``end``)
    get cos 1, sin 0."""
    m = (tt < end)[:, None] & (n < n_angles)[None, :]
    at = cs_at + tt[:, None] * n_angles + n[None, :]
    return tl.load(COS + at, mask=m, other=1.0), tl.load(SIN + at, mask=m, other=0.0)


@triton.jit
def _rank_table(X, rank, row_stride, cols, col_ok, RP: tl.constexpr):
    """A head's per-rank parameters as an (RP, W) tile (padded ranks zero); X points at
    the head's rank 0, ``cols`` are the W columns. Loaded once per program; the chunk
    loop combines it with per-token tiles as (C, RP, W) products, so no (rows x W)
    copy of it lives through the loop."""
    rr = tl.arange(0, RP)
    return tl.load(X + rr[:, None] * row_stride + cols[None, :],
                   mask=(rr < rank)[:, None] & col_ok[None, :], other=0.0)


@triton.jit
def _rows(x):
    """(C, RP, W) -> (C * RP, W): row ``t * RP + r``."""
    return tl.reshape(x, (x.shape[0] * x.shape[1], x.shape[2]))


@triton.jit
def _rotated_ranks(X, s_xt, s_xr, s_xn, b_lo, b_hi, cos, sin, tt, end, rank, n, half):
    """Low and high halves (C * RP rows, BH) of ``rot(X + bias)`` for the tokens ``tt``
    and every rank; X points at the batch row and group, ``b_lo``/``b_hi`` are the bias
    halves (RP, BH), cos/sin (C, BH). Tokens past ``end`` hold the rotated bias (their
    weights and coefficients are zero); padded ranks are zero. The arithmetic runs in
    the activations' dtype (X, bias and cos/sin all hold it): 16-bit tiles take half
    the registers of float32 ones, and the result is rounded to it for the products."""
    rr = tl.arange(0, b_lo.shape[0])
    m = (tt < end)[:, None, None] & (rr < rank)[None, :, None] & (n < half)[None, None, :]
    at = X + tt[:, None, None] * s_xt + rr[None, :, None] * s_xr + n[None, None, :] * s_xn
    lo = tl.load(at, mask=m, other=0.0) + b_lo[None, :, :]
    hi = tl.load(at + half * s_xn, mask=m, other=0.0) + b_hi[None, :, :]
    c = cos[:, None, :]
    s = sin[:, None, :]
    return _rows(lo * c - hi * s), _rows(lo * s + hi * c)


@triton.jit
def _token_rows(V, s_vt, s_vp, tt, end, p, headdim):
    """The (C, PB) rows of V for the tokens ``tt`` (zero past ``end``); V points at the
    batch row and head."""
    m = (tt < end)[:, None] & (p < headdim)[None, :]
    return tl.load(V + tt[:, None] * s_vt + p[None, :] * s_vp, mask=m, other=0.0)


@triton.jit
def _rank_values(v, mx):
    """``V_t * MIMO_X[r]`` (C, RP, PB) float32 from the tokens' rows ``v`` (C, PB) and the
    parameters ``mx`` (RP, PB) (padded ranks zero)."""
    return v.to(tl.float32)[:, None, :] * mx.to(tl.float32)[None, :, :]


@triton.jit
def _silu(x, FAST: tl.constexpr):
    """``x * sigmoid(x)``; FAST through the hardware tanh (relative error ~5e-4, below the
    16-bit output's rounding): ``sigmoid(x) = (1 + tanh(x / 2)) / 2``."""
    if FAST:
        t = tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=f,f", [0.5 * x],
                                      dtype=tl.float32, is_pure=True, pack=1)
        return x * (0.5 * t + 0.5)
    else:
        return x * tl.sigmoid(x)


@triton.jit
def _mimo_chunk_state_kernel(
    K, s_kb, s_kt, s_kr, s_kg, s_kn, KB, V, s_vb, s_vt, s_vh, s_vp, MV,
    ADT, s_ab, s_ah, s_at, DT, s_db, s_dh, s_dt, TRAP, s_tb, s_th, s_tt,
    COS, SIN, STATES, ATOT, CHUNKS, SUPER,
    seqlen, chunks_per_seq, supers_per_seq, nheads, heads_per_group, rank, half, n_angles,
    headdim,
    C: tl.constexpr, RP: tl.constexpr, BH: tl.constexpr, PB: tl.constexpr,
    CPP: tl.constexpr, IS_VARLEN: tl.constexpr, IEEE: tl.constexpr,
):
    """The state one super-chunk adds on its own, ``sum_s exp(A_end - A_s) w_s v_s k'_s^T``
    in its local rotary frame (P, [low | high]) float32, and its total decay; grid
    (super-chunks, H). KB (H, R, N) and MV (H, R, P) contiguous."""
    g = tl.program_id(0)
    h = tl.program_id(1)
    grp = h // heads_per_group
    n = tl.arange(0, BH)
    p = tl.arange(0, PB)
    dty = V.dtype.element_ty
    s_lo = tl.zeros([PB, BH], dtype=tl.float32)
    s_hi = tl.zeros([PB, BH], dtype=tl.float32)
    a_tot = tl.sum(tl.zeros([BH], dtype=tl.float32), 0)
    kb = KB + h * rank * 2 * half
    kb_lo = _rank_table(kb, rank, 2 * half, n, n < half, RP)
    kb_hi = _rank_table(kb + half, rank, 2 * half, n, n < half, RP)
    mv = _rank_table(MV + h * rank * headdim, rank, headdim, p, p < headdim, RP)
    for j in range(CPP):
        row64, tt, end, adt, gamma, w = _chunk_tokens(
            g, j, h, CHUNKS, SUPER, ADT, s_ab, s_ah, s_at, DT, s_db, s_dh, s_dt, TRAP, s_tb,
            s_th, s_tt, seqlen, chunks_per_seq, supers_per_seq, C, CPP, IS_VARLEN)
        a_end = tl.sum(adt, 0)
        coef = tl.exp(a_end - tl.cumsum(adt, 0)) * w
        cos, sin = _token_cos_sin(COS, SIN, (row64 * nheads + h) * seqlen * n_angles, tt, end,
                                  n, n_angles)
        k_lo, k_hi = _rotated_ranks(K + row64 * s_kb + grp * s_kg, s_kt, s_kr, s_kn, kb_lo,
                                    kb_hi, cos, sin, tt, end, rank, n, half)
        v = _token_rows(V + row64 * s_vb + h * s_vh, s_vt, s_vp, tt, end, p, headdim)
        v = _rows(_rank_values(v, mv) * coef[:, None, None])
        vs = tl.trans(v.to(dty))
        decay = tl.exp(a_end)
        s_lo = _dot(vs, k_lo.to(dty), IEEE, s_lo * decay)
        s_hi = _dot(vs, k_hi.to(dty), IEEE, s_hi * decay)
        a_tot += a_end
    sup = g * nheads + h
    at = STATES + sup.to(tl.int64) * headdim * 2 * half + p[:, None] * 2 * half + n[None, :]
    m = (p < headdim)[:, None] & (n < half)[None, :]
    tl.store(at, s_lo, mask=m)
    tl.store(at + half, s_hi, mask=m)
    tl.store(ATOT + sup, a_tot)


@triton.jit
def _mimo_chunk_scan_kernel(
    Q, K, s_qb, s_qt, s_qr, s_qg, s_qn, QB, KB, V, s_vb, s_vt, s_vh, s_vp, MV,
    Z, s_zb, s_zt, s_zh, s_zp, MZ, MO, DSKIP, NW,
    OUT, s_ob, s_ot, s_or, s_oh, s_op,
    ADT, s_ab, s_ah, s_at, DT, s_db, s_dh, s_dt, TRAP, s_tb, s_th, s_tt,
    COS, SIN, OFFSET, STATES, CHUNKS, SUPER, CHUNK_ANG, FIN_SSM, FIN_ANGLE,
    seqlen, chunks_per_seq, supers_per_seq, nheads, heads_per_group, rank, half, n_angles,
    headdim, eps,
    C: tl.constexpr, RP: tl.constexpr, BH: tl.constexpr, PB: tl.constexpr,
    CPP: tl.constexpr, IS_VARLEN: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
    HAS_NORM: tl.constexpr, REDUCE_O: tl.constexpr, STORE_FINAL: tl.constexpr,
    IEEE: tl.constexpr, FAST: tl.constexpr,
):
    """Output of one super-chunk of one head, its chunks in order with the running state
    in registers (local rotary frame); grid (super-chunks, H). Q and K share strides;
    STATES/OFFSET hold the state and angle entering each super-chunk (state passing).
    Without REDUCE_O the per-rank output (b, l, R, H, P) is written.
    STORE_FINAL (each super-chunk a whole sequence, ``g`` the sequence): the state and
    angle after it (global frame) go to FIN_SSM and FIN_ANGLE (CHUNK_ANG: its increment)."""
    g = tl.program_id(0)
    h = tl.program_id(1)
    grp = h // heads_per_group
    n = tl.arange(0, BH)
    p = tl.arange(0, PB)
    p_ok = p < headdim
    dty = V.dtype.element_ty
    if HAS_D:
        d_skip = tl.load(DSKIP + h).to(tl.float32)

    # The entering state (P, [low | high]), turned into the super-chunk's frame.
    sup = g * nheads + h
    st_off = sup.to(tl.int64) * headdim * 2 * half + p[:, None] * 2 * half + n[None, :]
    st_mask = p_ok[:, None] & (n < half)[None, :]
    st_lo = tl.load(STATES + st_off, mask=st_mask, other=0.0)
    st_hi = tl.load(STATES + st_off + half, mask=st_mask, other=0.0)
    theta = tl.load(OFFSET + sup * n_angles + n, mask=n < n_angles, other=0.0)
    cos_c = tl.cos(theta)[None, :]
    sin_c = tl.sin(theta)[None, :]
    s_lo = st_lo * cos_c + st_hi * sin_c
    s_hi = st_hi * cos_c - st_lo * sin_c

    qb = QB + h * rank * 2 * half
    kb = KB + h * rank * 2 * half
    for j in range(CPP):
        qb_lo = _rank_table(qb, rank, 2 * half, n, n < half, RP)
        qb_hi = _rank_table(qb + half, rank, 2 * half, n, n < half, RP)
        kb_lo = _rank_table(kb, rank, 2 * half, n, n < half, RP)
        kb_hi = _rank_table(kb + half, rank, 2 * half, n, n < half, RP)
        mv = _rank_table(MV + h * rank * headdim, rank, headdim, p, p_ok, RP)
        if HAS_Z:
            mz = _rank_table(MZ + h * rank * headdim, rank, headdim, p, p_ok, RP)
        if REDUCE_O:
            mo = _rank_table(MO + h * rank * headdim, rank, headdim, p, p_ok, RP)
        row64, tt, end, adt, gamma, w = _chunk_tokens(
            g, j, h, CHUNKS, SUPER, ADT, s_ab, s_ah, s_at, DT, s_db, s_dh, s_dt, TRAP, s_tb,
            s_th, s_tt, seqlen, chunks_per_seq, supers_per_seq, C, CPP, IS_VARLEN)
        cos, sin = _token_cos_sin(COS, SIN, (row64 * nheads + h) * seqlen * n_angles, tt, end,
                                  n, n_angles)
        # Every load of the chunk first, so their latencies overlap.
        v_tok = _token_rows(V + row64 * s_vb + h * s_vh, s_vt, s_vp, tt, end, p, headdim)
        if HAS_Z:
            z_tok = _token_rows(Z + row64 * s_zb + h * s_zh, s_zt, s_zp, tt, end, p, headdim)
        x_at = row64 * s_qb + grp * s_qg
        q_lo, q_hi = _rotated_ranks(Q + x_at, s_qt, s_qr, s_qn, qb_lo, qb_hi, cos, sin, tt,
                                    end, rank, n, half)
        k_lo, k_hi = _rotated_ranks(K + x_at, s_qt, s_qr, s_qn, kb_lo, kb_hi, cos, sin, tt,
                                    end, rank, n, half)
        q_lo, q_hi, k_lo, k_hi = q_lo.to(dty), q_hi.to(dty), k_lo.to(dty), k_hi.to(dty)
        # The entering state's part first, while q is live anyway.
        y = _dot(q_lo, tl.trans(s_lo.to(dty)), IEEE)
        y = _dot(q_hi, tl.trans(s_hi.to(dty)), IEEE, y)
        acum, a_end, weights = _token_weights(adt, w, gamma)
        y *= _spread_rows(tl.exp(acum), RP)[:, None]
        scores = _dot(q_lo, tl.trans(k_lo), IEEE)
        scores = _dot(q_hi, tl.trans(k_hi), IEEE, scores)
        v = _rank_values(v_tok, mv)
        y = _dot((scores * _spread_square(weights, RP)).to(dty), _rows(v).to(dty), IEEE, y)

        # The state entering the next chunk (w is zero past the chunk's end).
        coef = tl.exp(a_end - acum) * w
        vs = tl.trans(_rows(v * coef[:, None, None]).to(dty))
        decay = tl.exp(a_end)
        s_lo = _dot(vs, k_lo, IEEE, s_lo * decay)
        s_hi = _dot(vs, k_hi, IEEE, s_hi * decay)

        if HAS_D:
            y += d_skip * _rows(v)
        y = tl.reshape(y, (C, RP, PB))
        if HAS_NORM:
            norm_w = tl.load(NW + h * headdim + p, mask=p_ok, other=0.0).to(tl.float32)
            y = y * tl.rsqrt(tl.sum(y * y, 2) / headdim + eps)[:, :, None] * norm_w[None, None, :]
        if HAS_Z:
            zr = _rank_values(z_tok, mz)
            y = y * _silu(zr, FAST)
        o_at = OUT + row64 * s_ob + h * s_oh
        if REDUCE_O:
            o = tl.sum(y * mo.to(tl.float32)[None, :, :], 1)
            tl.store(o_at + tt[:, None] * s_ot + p[None, :] * s_op, o.to(OUT.dtype.element_ty),
                     mask=(tt < end)[:, None] & p_ok[None, :])
        else:
            rr = tl.arange(0, RP)
            tl.store(o_at + tt[:, None, None] * s_ot + rr[None, :, None] * s_or
                     + p[None, None, :] * s_op, y.to(OUT.dtype.element_ty),
                     mask=(tt < end)[:, None, None] & (rr < rank)[None, :, None]
                     & p_ok[None, None, :])
    if STORE_FINAL:  # back to the global frame: R(theta) per pair
        fin_at = FIN_SSM + st_off
        tl.store(fin_at, s_lo * cos_c - s_hi * sin_c, mask=st_mask)
        tl.store(fin_at + half, s_lo * sin_c + s_hi * cos_c, mask=st_mask)
        inc = tl.load(CHUNK_ANG + sup * n_angles + n, mask=n < n_angles, other=0.0)
        tl.store(FIN_ANGLE + sup * n_angles + n, _wrap(theta + inc), mask=n < n_angles)


def kernel_blocks(rank: int, d_state: int, rows: int = 64) -> tuple[int, int, int]:
    """(chunk tokens C, padded rank RP, half-state block BH) for ``C * RP = rows``."""
    rp = triton.next_power_of_2(rank)
    return max(1, rows // rp), rp, max(16, triton.next_power_of_2(d_state // 2))


def dot_precision(dtype: torch.dtype) -> str:
    """``input_precision`` of the MIMO kernels' products: float32 inputs multiply in true
    float32, 16-bit inputs on tf32 tensor cores."""
    return "ieee" if dtype == torch.float32 else "tf32"
