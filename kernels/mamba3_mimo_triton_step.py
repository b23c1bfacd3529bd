"""Fused Mamba-3 MIMO decode step on CUDA through Triton: one launch per layer and token.

One program per (head, batch row, block of headdim rows) reads its state rows once, as
one (rows, N) tile, and does the rank work on tensor cores: the update ``S = alpha S +
A B`` is one product whose contraction runs over 2R (A (rows, KR) holds the row factors
``beta x' mimo_x[r]`` and ``gamma x mimo_x[r]``, B (KR, N) the previous and the new
rotated k of every rank, zero-padded to KR = max(16, 2R)), the outputs of all ranks
``Y = S Q^T`` one more. q and the new k are one (KR, N) tile rotated with the pairs
(n, n + N/2) (each entry loads its partner; the angles are computed once per program).
The epilogue needs Y alone: the D skip, the headwise norm and a row sum whose weights
``mimo_o silu(z mimo_z)`` (times the norm weight) come from loads only.

Latency at small batch (a program per head, nothing else on its SM): with ``EARLY`` every
global load (state, q/k and their biases, the stored k, x, gates, angles, the MIMO_V/O/Z
rows, z, D) is issued at the top, so the program waits for memory once and the output
weights are ready before the state is; the new state, x, k and angle are written right
after the update (one barrier: every old value has gone into the product), before the
output product. At large batch (programs enough per SM to hide latency, registers set
the occupancy) the q/k tile and the epilogue's parameters are loaded where they are used.
With ``TMA`` (Hopper) the state tile moves by bulk tensor copies through a host
``TensorDescriptor`` over the (B*H*P, N) state. Float32 inputs (exact products, not on
tensor cores) take ``FMA``: one outer product per column of A and one row sum per rank
(an FMA ``tl.dot`` would hold whole operand rows in registers).

In place, a per-head arrival counter lets the last program of a head write the shared new
k and angle after all have read the old ones. With 16-bit inputs both products take
16-bit operands and accumulate in float32, as the official prefill's products do: the
update in the inputs' dtype, the outputs in bfloat16 (the float32 state rounded to it: its
range). Against tf32 operands this saves the shuffles that turn a tf32 accumulator into
an operand and the transposed staging of a tf32 B tile (H100, B=1: 5.28 -> 4.51 us). The
state stays float32. Computes what ``mamba3_mimo_step_reference`` computes, with the
pairing (n, n + N/2) for every N.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from mamba3_integrations.kernels.fused_decode import hopper_or_newer, triton_interpreter
from mamba3_integrations.kernels.mamba3_siso_reference import Mamba3State
from mamba3_integrations.kernels.mamba3_siso_triton_fwd import PI, _cos_sin, _tanh, _wrap
from mamba3_integrations.kernels.mamba3_siso_triton_step import _last_arrival, arrival_counters

try:
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # Triton without host tensor descriptors: the pointer path only
    TensorDescriptor = None

NORM_EPS = 1e-5
# Launch settings: state rows per program and warps for a batch of more than
# ``large_batch`` rows, and for small batches (``small_*``); ``maxnreg`` a register cap
# for the large-batch launch of the tensor-core form (0: none, the compiler's choice);
# ``early`` every load at the top for small batches (large batches load the q/k tile and
# the epilogue's parameters where they are used); ``tma`` the state tile by tensor
# descriptors on Hopper from ``tma_min_batch`` rows. Measured on an H100 (Triton 3.6,
# bf16, CUDA graphs of 20 steps; benchmarks/results/mimo_step.log): whole heads with 4
# warps, every load first, 4.51 us at B=1 (loads where used 5.22, TMA 4.89); uncapped
# 214.8 us at B=128 (TMA 223.7; with tf32 products a cap of 128 registers took 241.1,
# 8 warps 405.9, 32 rows per program 409.1).
STEP_CONFIG = {"pblk": 64, "num_warps": 4, "small_pblk": 64, "small_warps": 4,
               "large_batch": 16, "maxnreg": 0, "early": True, "tma": False,
               "tma_min_batch": 16}

LAST_KERNELS: dict[str, object] = {}  # the latest compiled step kernel (resource report)


@triton.jit
def _biased_pairs(X, XB, x_at, bias_at, partner, mask):
    """``u = X + bias`` (float32) at ``x_at`` and at its rotary partners
    ``x_at + partner`` (column n pairs with n + N/2 in the low half and n - N/2 in the
    high half); masked entries are zero."""
    u = tl.load(X + x_at, mask=mask, other=0.0).to(tl.float32)
    u += tl.load(XB + bias_at, mask=mask, other=0.0).to(tl.float32)
    v = tl.load(X + x_at + partner, mask=mask, other=0.0).to(tl.float32)
    v += tl.load(XB + bias_at + partner, mask=mask, other=0.0).to(tl.float32)
    return u, v


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
def _operand(x, dtype: tl.constexpr, ROUND_ONLY: tl.constexpr):
    """``x`` rounded to the product operand type ``dtype``; ``ROUND_ONLY`` (Triton's
    interpreter, whose products cannot take bfloat16) keeps the rounded values in
    float32, so the product sums the same terms."""
    if ROUND_ONLY:
        return x.to(dtype).to(tl.float32)
    return x.to(dtype)


@triton.jit
def _update(s, a, b_rows, c, R: tl.constexpr, FMA: tl.constexpr, OPERAND: tl.constexpr,
            ROUND_ONLY: tl.constexpr):
    """``s + A B`` for A (rows, KR) and B (KR, NB) with 2R used columns / rows: one
    product on ``OPERAND`` inputs (float32 accumulation), or with ``FMA`` one outer
    product per column (float32 inputs: an FMA product would hold whole operand rows in
    registers)."""
    if FMA:
        for col in tl.static_range(2 * R):
            a_col = tl.sum(tl.where(c[None, :] == col, a, 0.0), 1)
            b_row = tl.sum(tl.where(c[:, None] == col, b_rows, 0.0), 0)
            s += a_col[:, None] * b_row[None, :]
        return s
    return tl.dot(_operand(a, OPERAND, ROUND_ONLY), _operand(b_rows, OPERAND, ROUND_ONLY), s)


@triton.jit
def _rank_outputs(s, qk, c, R: tl.constexpr, FMA: tl.constexpr, ROUND_ONLY: tl.constexpr):
    """Y = S Q^T (rows, KR): column r < R is ``S q_r`` for the q rows r < R of the (KR, NB)
    tile ``qk``, zero beyond; one product on bfloat16 inputs (the state's range; float32
    accumulation), or with ``FMA`` one row sum per rank."""
    if FMA:
        y = tl.zeros((s.shape[0], c.shape[0]), dtype=tl.float32)
        for rank in tl.static_range(R):
            q_r = tl.sum(tl.where(c[:, None] == rank, qk, 0.0), 0)
            y = tl.where(c[None, :] == rank, tl.sum(s * q_r[None, :], 1)[:, None], y)
        return y
    q_cols = _operand(tl.trans(tl.where(c[:, None] < R, qk, 0.0)), tl.bfloat16, ROUND_ONLY)
    return tl.dot(_operand(s, tl.bfloat16, ROUND_ONLY), q_cols)


@triton.jit
def _as_mask(flag, like):
    """The scalar condition ``flag`` as a boolean tensor shaped like the integer tensor
    ``like`` (a mask made with a scalar fails in Triton's interpreter)."""
    return (tl.zeros_like(like) + flag.to(tl.int32)) != 0


@triton.jit
def _output_weights(MO, MZ, MV, Z, NW, DSKIP, h, proj_at, rank_ok, z_at, norm_at, p_ok,
                    HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_NORM: tl.constexpr,
                    FAST: tl.constexpr, EVEN: tl.constexpr):
    """Two (rows, KR) tiles from parameters and z alone, zero beyond the ranks: the D skip
    factor ``D mimo_x`` (times x it is the skip term of y) and the weights of the rank
    outputs in the output row sum, ``mimo_o`` times ``silu(z mimo_z)`` with Z, times the
    norm weight with it."""
    w = tl.load(MO + proj_at, mask=rank_ok, other=0.0).to(tl.float32)
    if HAS_Z:
        zr = tl.load(MZ + proj_at, mask=rank_ok, other=0.0).to(tl.float32)
        w = _gate(w, _ld(Z + z_at, p_ok, EVEN)[:, None] * zr, FAST)
    if HAS_NORM:
        w = w * _ld(NW + norm_at, p_ok, EVEN)[:, None]
    skip = tl.zeros_like(w)
    if HAS_D:
        skip = tl.load(DSKIP + h).to(tl.float32) * tl.load(MV + proj_at, mask=rank_ok,
                                                            other=0.0).to(tl.float32)
    return skip, w


@triton.jit
def _mimo_step_kernel(
    Q, K, V, Z, ANG, ADT, DT, TRAP, QB, KB, MV, MZ, MO, DSKIP, NW,
    ANGLE, SSM, KST, VST, ANGLE_OUT, SSM_OUT, KST_OUT, VST_OUT, OUT, COUNTER,
    nheads, heads_per_group, headdim, d_state, half, n_angles, eps, nsplit,
    sq_b, sq_r, sq_g, sv_b, sv_h, sz_b, sz_h, sa_b, sa_h,
    sk_b, sk_r, sk_h, sx_b, sx_h, st_b, st_h, so_b, so_h,
    R: tl.constexpr, KR: tl.constexpr, NB: tl.constexpr,
    PBLK: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr, HAS_NORM: tl.constexpr,
    SYNC: tl.constexpr, FAST: tl.constexpr, EVEN: tl.constexpr,
    EARLY: tl.constexpr, TMA: tl.constexpr, FMA: tl.constexpr, ROUND_ONLY: tl.constexpr,
):
    """Grid (H, batch, cdiv(P, PBLK)): rows ``[pb*PBLK, (pb+1)*PBLK)`` of the state of one
    (row, head), as one (PBLK, NB) tile. ADT/DT/TRAP (b, H) and the (H, R, X) parameters
    contiguous; Q and K share strides; contiguous states (the output state tensors may be
    the input ones; with ``TMA`` SSM and SSM_OUT are (b*H*P, N) descriptors with block
    (PBLK, NB)). The ranks are the inner axis of products (16-bit operands, see
    ``_update`` and ``_rank_outputs``): the update
    ``S = alpha S + A B`` with A (PBLK, KR) the columns ``beta x' mimo_x[r]``,
    ``gamma x mimo_x[r]`` and B (KR, NB) the rows ``k'_r`` (stored), ``k_r`` (new), zero
    padded; the outputs ``Y = S Q^T`` (PBLK, KR), column r < R for rank r. q and the new k
    come from one rotated (KR, NB) tile (q in rows < R, k in rows R..2R-1: one set of
    loads and rotations). ``EARLY``: every load first (see the module docstring). The new
    k and angle, read by every program of the head, are written by one: with ``SYNC`` (in
    place, several programs) the last to arrive, otherwise the first."""
    h = tl.program_id(0)
    b = tl.program_id(1)
    pb = tl.program_id(2)
    g = h // heads_per_group
    n = tl.arange(0, NB)
    n_ok = n < d_state
    low = n < half
    pair = tl.where(low, n, n - half)  # the rotary pair (angle index) of column n
    rotated = n_ok & (pair < n_angles)
    p = pb * PBLK + tl.arange(0, PBLK)
    p_ok = p < headdim
    c = tl.arange(0, KR)
    r = c[:, None] % R
    is_q = c[:, None] < R
    state_ok = p_ok[:, None] & n_ok[None, :]
    # The tile's first row of the contiguous (b*H*P, N) state; with EVEN every offset
    # within the tile is a compile-time constant.
    row = (b * nheads + h).to(tl.int64) * headdim + pb * PBLK
    if EVEN:
        state_at = row * d_state + (tl.arange(0, PBLK)[:, None] * NB + n[None, :])
    else:
        state_at = row * d_state + (tl.arange(0, PBLK)[:, None] * d_state + n[None, :])
    # The state first: the longest latency, independent of everything else.
    if not TMA:
        s = _ld(SSM + state_at, state_ok, EVEN)

    adt = tl.load(ADT + b * nheads + h).to(tl.float32)
    dt = tl.load(DT + b * nheads + h).to(tl.float32)
    trap = tl.load(TRAP + b * nheads + h).to(tl.float32)
    theta = tl.load(ANGLE + b * st_b + h * st_h + pair, mask=rotated, other=0.0)
    ang = tl.load(ANG + b * sa_b + h * sa_h + pair, mask=rotated, other=0.0).to(tl.float32)
    x = _ld(V + b * sv_b + h * sv_h + p, p_ok, EVEN)
    x_prev = _ld(VST + b * sx_b + h * sx_h + p, p_ok, EVEN)
    # MIMO_V for the 2R columns of A (rank c % R).
    proj_at = (h * R + c[None, :] % R) * headdim + p[:, None]
    rank_ok = p_ok[:, None] & (c < R)[None, :]
    mv = tl.load(MV + proj_at, mask=p_ok[:, None] & (c < 2 * R)[None, :], other=0.0)
    # The (KR, NB) tile: row c < R is q of rank c, R <= c < 2R the new k of rank c-R
    # (biased, rotated below with the same angles), zero beyond; the stored k of every
    # rank in rows c < R.
    qk_ok = (c < 2 * R)[:, None] & n_ok[None, :]
    qk_at = b * sq_b + r * sq_r + g * sq_g + n[None, :]
    bias_at = (h * R + r) * d_state + n[None, :]
    partner = tl.where(low, half, -half)[None, :]
    kst_at = b * sk_b + r * sk_r + h * sk_h + n[None, :]
    z_at = b * sz_b + h * sz_h + p
    norm_at = h * headdim + p
    if EARLY:
        qk, qk_partner = _biased_pairs(tl.where(is_q, Q, K), tl.where(is_q, QB, KB), qk_at,
                                       bias_at, partner, qk_ok)
        k_prev = _ld(KST + kst_at, n_ok[None, :], EVEN)  # rows >= R: dropped below
        skip, w = _output_weights(MO, MZ, MV, Z, NW, DSKIP, h, proj_at, rank_ok, z_at,
                                  norm_at, p_ok, HAS_D, HAS_Z, HAS_NORM, FAST, EVEN)

    if TMA:  # the bulk copy waits where it is issued: after the pointer loads' issue
        s = SSM.load([row.to(tl.int32), 0]).to(tl.float32)

    lam = tl.sigmoid(trap)
    alpha = tl.exp(adt)
    beta = (1 - lam) * dt * alpha
    gamma = lam * dt
    theta = _wrap(theta + _tanh(ang) * dt * PI)
    cos, sin = _cos_sin(theta, FAST)
    cos = tl.where(rotated, cos, 1.0)[None, :]
    sin = tl.where(rotated, tl.where(low, -sin, sin), 0.0)[None, :]
    if not EARLY:  # loaded where used: fewer registers live at once
        qk, qk_partner = _biased_pairs(tl.where(is_q, Q, K), tl.where(is_q, QB, KB), qk_at,
                                       bias_at, partner, qk_ok)
        k_prev = _ld(KST + kst_at, n_ok[None, :], EVEN)  # rows >= R: dropped below
    qk = qk * cos + qk_partner * sin  # rot: (u_n, u_{n+N/2}) -> (u c - u' s, u' c + u s)

    # A (PBLK, KR): column c < R is beta x' mimo_x[c], R <= c < 2R is gamma x mimo_x[c-R];
    # B (KR, NB): the stored k of every rank in rows c < R, the new k in rows R..2R-1.
    a = mv.to(tl.float32) * tl.where(c[None, :] < R, (x_prev * beta)[:, None],
                                     (x * gamma)[:, None])
    s = _update(s * alpha, a, tl.where(is_q, k_prev, qk), c, R, FMA, V.dtype.element_ty,
                ROUND_ONLY)
    # Every old value (state, x, k, angle) has gone into the product: write the new ones
    # now (the state's registers are then free for the output product).
    tl.debug_barrier()  # every thread has read the old values before they are overwritten
    if TMA:
        SSM_OUT.store([row.to(tl.int32), 0], s.to(SSM_OUT.dtype))
    elif EVEN:
        tl.store(SSM_OUT + state_at, s.to(SSM_OUT.dtype.element_ty))
    else:
        tl.store(SSM_OUT + state_at, s.to(SSM_OUT.dtype.element_ty), mask=state_ok)
    tl.store(VST_OUT + b * sx_b + h * sx_h + p, x.to(VST_OUT.dtype.element_ty), mask=p_ok)
    # The new k of every rank (the tile's rows R..2R-1) and the new angle, by one program
    # (masked stores, no branch).
    writer = _last_arrival(COUNTER, b * nheads + h, nsplit) if SYNC else pb == 0
    k_new_ok = qk_ok & ~is_q & _as_mask(writer, kst_at)
    tl.store(KST_OUT + kst_at, qk.to(KST_OUT.dtype.element_ty), mask=k_new_ok)
    tl.store(ANGLE_OUT + b * st_b + h * st_h + n, theta, mask=low & rotated & _as_mask(writer, n))

    # Y (PBLK, KR): column r < R is S q_r (the tile's q rows; the other rows are zeroed, so
    # their columns are zero and the weights drop them).
    y = _rank_outputs(s, qk, c, R, FMA, ROUND_ONLY)
    # Epilogue per rank column: + D v_r, headwise norm, then the weighted sum over ranks.
    if not EARLY:
        skip, w = _output_weights(MO, MZ, MV, Z, NW, DSKIP, h, proj_at, rank_ok, z_at,
                                  norm_at, p_ok, HAS_D, HAS_Z, HAS_NORM, FAST, EVEN)
    if HAS_D:
        y += x[:, None] * skip
    if HAS_NORM:
        y = y * tl.rsqrt(tl.sum(y * y, 0) / headdim + eps)[None, :]
    out = tl.sum(y * w, 1)
    tl.store(OUT + b * so_b + h * so_h + p, out.to(OUT.dtype.element_ty), mask=p_ok)


def step_tma(ssms: tuple[Tensor, ...], headdim: int, pblk: int, batch: int,
             tma: bool | None = None) -> bool:
    """Whether the step moves the state tiles of ``ssms`` (input and output state, (b, H,
    P, N)) by tensor descriptors. ``tma=None``: ``STEP_CONFIG["tma"]``, at least
    ``tma_min_batch`` rows and Hopper or newer; ``True`` asks for it wherever the layout
    allows (the interpreter included, for tests). The layout: contiguous states of one
    dtype, 16-byte aligned base and rows (N * element size), ``pblk`` <= 256 dividing P,
    N <= 256 (a tile wider than N is clipped by the descriptor)."""
    if TensorDescriptor is None:
        return False
    if tma is None:
        tma = (STEP_CONFIG["tma"] and batch >= STEP_CONFIG["tma_min_batch"]
               and hopper_or_newer(ssms[0]))
    elif tma and ssms[0].is_cuda and not hopper_or_newer(ssms[0]):
        return False
    d_state = ssms[0].shape[-1]
    return bool(tma and headdim % pblk == 0 and pblk <= 256
                and triton.next_power_of_2(d_state) <= 256
                and ssms[0].numel() // d_state < 2**31
                and all(s.dtype == ssms[0].dtype and s.is_contiguous() and s.data_ptr() % 16 == 0
                        and d_state * s.element_size() % 16 == 0 for s in ssms))


def mamba3_mimo_step_triton(
    Q: Tensor, K: Tensor, V: Tensor, ADT: Tensor, DT: Tensor, Trap: Tensor,
    Q_bias: Tensor, K_bias: Tensor, Angles: Tensor, MIMO_V: Tensor, MIMO_O: Tensor,
    state: Mamba3State, D: Tensor | None = None, Z: Tensor | None = None,
    MIMO_Z: Tensor | None = None, Norm_Weight: Tensor | None = None, inplace: bool = False,
    num_warps: int | None = None, pblk: int | None = None, maxnreg: int | None = None,
    early: bool | None = None, tma: bool | None = None, fma: bool | None = None,
) -> tuple[Tensor, Mamba3State]:
    """One fused decode step; arguments and results as ``mamba3_mimo_step``. ``pblk``
    state rows per program (the whole headdim with ``Norm_Weight``, whose RMS spans it),
    ``maxnreg`` a register cap (0: none), ``early`` every load first, ``tma`` the state by
    tensor descriptors (see ``step_tma``); settings not given come from ``STEP_CONFIG``.
    ``fma``: the rank products as outer products and row sums instead of ``tl.dot``
    (default: for float32 inputs, whose exact products do not run on tensor cores)."""
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
    if fma is None:
        fma = V.dtype == torch.float32
    if maxnreg is None:  # the cap is for the tensor-core products' registers
        maxnreg = None if small or fma else STEP_CONFIG["maxnreg"]
    cap = {"maxnreg": maxnreg} if maxnreg else {}
    if early is None:
        early = small and STEP_CONFIG["early"]
    pb = bp if Norm_Weight is not None else min(bp, pblk)
    nsplit = triton.cdiv(headdim, pb)
    sync = inplace and nsplit > 1
    counters = arrival_counters(V.device, batch * nheads) if sync else out
    nb = max(16, triton.next_power_of_2(d_state))
    states_in, states_out = list(state), list(new)
    use_tma = step_tma((ssm, new[1]), headdim, pb, batch, tma)
    if use_tma:
        states_in[1], states_out[1] = (
            TensorDescriptor(s, [s.numel() // d_state, d_state], [d_state, 1], [pb, nb])
            for s in (ssm, new[1]))
    LAST_KERNELS["step"] = _mimo_step_kernel[(nheads, batch, nsplit)](
        Q, K, V, z, Angles, *scalars, *params, *opt, *states_in, *states_out, out, counters,
        nheads, nheads // ngroups, headdim, d_state, d_state // 2, Angles.shape[-1], NORM_EPS,
        nsplit, Q.stride(0), Q.stride(1), Q.stride(2), V.stride(0), V.stride(1), z.stride(0),
        z.stride(1), Angles.stride(0), Angles.stride(1), k_state.stride(0),
        k_state.stride(1), k_state.stride(2), v_state.stride(0), v_state.stride(1),
        angle.stride(0), angle.stride(1), out.stride(0), out.stride(1),
        R=rank, KR=max(16, triton.next_power_of_2(2 * rank)), NB=nb, PBLK=pb,
        HAS_D=D is not None, HAS_Z=Z is not None, HAS_NORM=Norm_Weight is not None, SYNC=sync,
        FAST=V.is_cuda and V.dtype in (torch.float16, torch.bfloat16),
        EVEN=headdim % pb == 0 and d_state == nb, EARLY=early,
        TMA=use_tma, FMA=fma, ROUND_ONLY=triton_interpreter(), num_warps=num_warps,
        num_stages=1, **cap,
    )
    return out, tuple(new)
