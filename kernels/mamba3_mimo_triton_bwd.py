"""Triton kernels of the Mamba-3 MIMO chunked scan, backward pass: two sweeps.

One program owns one head of one sequence and walks its chunks, keeping a (P, N) state in
registers: a forward sweep for ``dq`` and a reverse sweep for ``dk``, ``dv``, the
trapezoid weights and the start state. Rows are ``(token, rank)`` as in the forward
(``mamba3_mimo_triton_fwd``); the inputs are the materialised rows of ``mimo_inputs``.
"""

from __future__ import annotations

import triton
import triton.language as tl


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
def _sequence(CU, pid_seq, seqlen, IS_VARLEN: tl.constexpr):
    """(batch row, first token, length) of the sequence a program works on."""
    if IS_VARLEN:
        bos = tl.load(CU + pid_seq)
        return 0, bos, tl.load(CU + pid_seq + 1) - bos
    return pid_seq, 0, seqlen


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

