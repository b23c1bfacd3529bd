"""Triton kernel of the Mamba-3 SISO decode step: one launch per layer and token.

The grid is (sequence, head, headdim block): each program updates ``PBLK`` rows of one
head's state ``h = alpha h + beta v_prev k_prev^T + gamma v k^T`` and computes those rows
of ``y = h q + D v`` with the ``silu(z)`` gate. Every program recomputes the (cheap)
angle update and the rotary of q and k; small tiles keep few registers per thread and
many programs (bytes) in flight, which is what a memory-bound step needs. The state is
read and written once, in its own dtype (float32 or bfloat16), computed in float32.

In place, the new angle and k overwrite the old ones that the head's other programs
still read: a per-head arrival counter lets the last program of a head write them (and
reset the counter), after every program of the head has read the old values.

The state goes through per-thread pointer loads and stores by default. As an option
(``STEP_CONFIG["tma"]`` or ``tma=True`` on Hopper, see ``step_tma``) the state tile moves
by bulk tensor copies: the (B, H, P, N) state is viewed as (B*H*P, N) through a host
``TensorDescriptor`` with block (PBLK, NB), loaded with ``desc.load`` and stored with
``desc.store``. The tile is read before the new one is stored, so in place stays correct;
the descriptor holds the state's address, which a CUDA graph keeps as the states of a
graph stay put. On an H100 (Triton 3.6, B=128, float32 state, copy bound 182.13 us) the
pointer path took 199.13 us per step (1.093x the bound) in a graph of 100 in-place steps
and 196.94 us in a graph of 20 ping-pong steps, TMA 206.26 / 204.59 us; the pointer path
was faster at every batch and state dtype measured (bf16 B=128: 111.14 against 125.22 us;
B=1: 3.22 / 3.94 us bf16 / fp32 against 3.67 / 4.81). A persistent, software-pipelined
variant (programs looping over heads, TMA copies issued stages ahead) measured 200-248 us
at B=128 fp32 and was removed for that reason.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from mamba3_integrations.kernels.fused_decode import hopper_or_newer
from mamba3_integrations.kernels.mamba3_siso_reference import Mamba3State
from mamba3_integrations.kernels.mamba3_siso_triton_fwd import PI, _sigmoid, _tanh, _wrap

try:
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:  # Triton without host tensor descriptors: the pointer path only
    TensorDescriptor = None

# Launch settings of the step kernel: headdim rows per program, warps per program, the
# state tile loaded first thing (its latency overlaps the q/k work), streaming cache
# hints on the state (evict first: it is touched once per step) and the state tile by
# TMA bulk copies on Hopper from ``tma_min_batch`` sequences on (``step_tma``). TMA is
# off: on an H100 (Triton 3.6) the pointer path was faster at every batch and state dtype
# in the same run (B=128 fp32: 199.13 against 206.26 us in a graph of 100 in-place steps,
# bound 182.13 us; bf16: 111.14 against 125.22 us; B=1: 3.22 / 3.94 us bf16 / fp32
# against 3.67 / 4.81; benchmarks/results/siso_step_variants.log).
STEP_CONFIG = {"pblk": 64, "num_warps": 4, "early_load": True, "evict": False,
               "tma": False, "tma_min_batch": 16}


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
def _last_arrival(COUNTER, bh, nsplit):
    """True in the last of a head's ``nsplit`` programs to get here (then resets the
    counter); the barrier orders this program's earlier loads before the atomic."""
    tl.debug_barrier()
    arrived = tl.atomic_add(COUNTER + bh, 1)
    last = arrived == nsplit - 1
    tl.atomic_xchg(COUNTER + bh, 0, mask=last)
    return last


@triton.jit
def _load_rows(SSM, ssm_off, offs_p, mask_p, offs_n, mask_n, d_state, tile_row,
               EVICT: tl.constexpr, TMA: tl.constexpr):
    """State rows ``offs_p`` of one head (in the state's dtype). With ``TMA``, ``SSM`` is
    a (rows, N) descriptor whose block (``tile_row`` on) holds those rows."""
    if TMA:
        ssm = SSM.load([tile_row, 0])
    else:
        m2 = mask_p[:, None] & mask_n[None, :]
        ptr = SSM + ssm_off + offs_p[:, None] * d_state + offs_n[None, :]
        if EVICT:
            ssm = tl.load(ptr, mask=m2, other=0.0, eviction_policy="evict_first")
        else:
            ssm = tl.load(ptr, mask=m2, other=0.0)
    return ssm


@triton.jit
def _advance_rows(ssm, SSM_OUT, ssm_off, offs_p, mask_p, offs_n, mask_n, d_state, tile_row,
                  alpha, beta_v_prev, gamma_v, k_prev, k, q, EVICT: tl.constexpr,
                  TMA: tl.constexpr):
    """The new state rows from the loaded ``ssm`` (stored) and their ``h q`` (returned);
    ``TMA``: ``SSM_OUT`` is a descriptor as in ``_load_rows``."""
    ssm = (alpha * ssm.to(tl.float32) + beta_v_prev[:, None] * k_prev[None, :]
           + gamma_v[:, None] * k[None, :])
    if TMA:
        SSM_OUT.store([tile_row, 0], ssm.to(SSM_OUT.dtype))
    else:
        m2 = mask_p[:, None] & mask_n[None, :]
        ptr = SSM_OUT + ssm_off + offs_p[:, None] * d_state + offs_n[None, :]
        if EVICT:
            tl.store(ptr, ssm.to(SSM_OUT.dtype.element_ty), mask=m2,
                     eviction_policy="evict_first")
        else:
            tl.store(ptr, ssm.to(SSM_OUT.dtype.element_ty), mask=m2)
    return tl.sum(ssm * q[None, :], 1)


@triton.jit
def _step_kernel(
    Q, s_qb, s_qg, K, s_kb, s_kg, V, s_vb, s_vh, Z, s_zb, s_zh,
    ADT, s_adb, s_adh, DT, s_dtb, s_dth, TRAP, s_tb, s_th,
    QB, s_qbh, KB, s_kbh, ANG, s_ab, s_ah, D,
    ANGLE, SSM, KPREV, VPREV,
    ANGLE_OUT, SSM_OUT, K_OUT, V_OUT, Y, COUNTER,
    nheads, heads_per_group, d_state, headdim, n_angles, nsplit,
    NB: tl.constexpr, PBLK: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
    SYNC: tl.constexpr, EARLY: tl.constexpr, EVICT: tl.constexpr, TMA: tl.constexpr,
):
    """Grid (batch, H, cdiv(P, PBLK)). Q, K (b, G, N); V, Z (b, H, P); gates (b, H);
    Angles (b, H, A); biases (H, N); the last axis of each has stride 1. States are
    contiguous: angle (b, H, A), ssm (b, H, P, N), k (b, H, N), v (b, H, P). ``SYNC``
    (in place with several programs per head): the last program writes angle and k;
    ``EARLY``: the state tile is loaded first; ``EVICT``: streaming hints on the state;
    ``TMA``: SSM and SSM_OUT are (b*H*P, N) descriptors with block (PBLK, NB).
    """
    b = tl.program_id(0)
    h = tl.program_id(1)
    pb = tl.program_id(2)
    bh = b.to(tl.int64) * nheads + h
    offs_n = tl.arange(0, NB)
    mask_n = offs_n < d_state
    offs_p = pb * PBLK + tl.arange(0, PBLK)
    mask_p = offs_p < headdim
    ssm_off = bh * headdim * d_state
    tile_row = (bh * headdim + pb * PBLK).to(tl.int32)
    if EARLY:
        ssm = _load_rows(SSM, ssm_off, offs_p, mask_p, offs_n, mask_n, d_state, tile_row,
                         EVICT, TMA)

    dt = tl.load(DT + b * s_dtb + h * s_dth).to(tl.float32)
    adt = tl.load(ADT + b * s_adb + h * s_adh).to(tl.float32)
    lam = _sigmoid(tl.load(TRAP + b * s_tb + h * s_th).to(tl.float32))
    # Angle of pair i = n // 2 (zero beyond n_angles, i.e. no rotation).
    pair = offs_n // 2
    mask_a = mask_n & (pair < n_angles)
    ang = tl.load(ANG + b * s_ab + h * s_ah + pair, mask=mask_a, other=0.0).to(tl.float32)
    theta = _wrap(tl.load(ANGLE + bh * n_angles + pair, mask=mask_a, other=0.0)
                  + _tanh(ang) * PI * dt)
    cos = tl.cos(theta)
    sin = tl.sin(theta)
    grp = (h // heads_per_group).to(tl.int64)
    q = _rotated(Q + b * s_qb + grp * s_qg, QB + h * s_qbh, offs_n, mask_n, cos, sin)
    k = _rotated(K + b * s_kb + grp * s_kg, KB + h * s_kbh, offs_n, mask_n, cos, sin)
    k_prev = tl.load(KPREV + bh * d_state + offs_n, mask=mask_n, other=0.0).to(tl.float32)
    v_prev = tl.load(VPREV + bh * headdim + offs_p, mask=mask_p, other=0.0).to(tl.float32)
    v_raw = tl.load(V + b * s_vb + h * s_vh + offs_p, mask=mask_p, other=0.0)
    v = v_raw.to(tl.float32)

    alpha = tl.exp(adt)
    beta = (1.0 - lam) * dt * alpha
    if not EARLY:
        ssm = _load_rows(SSM, ssm_off, offs_p, mask_p, offs_n, mask_n, d_state, tile_row,
                         EVICT, TMA)
    y = _advance_rows(ssm, SSM_OUT, ssm_off, offs_p, mask_p, offs_n, mask_n, d_state,
                      tile_row, alpha, beta * v_prev, lam * dt * v, k_prev, k, q, EVICT, TMA)
    if HAS_D:
        y += tl.load(D + h).to(tl.float32) * v
    if HAS_Z:
        z = tl.load(Z + b * s_zb + h * s_zh + offs_p, mask=mask_p, other=0.0).to(tl.float32)
        y = y * z * _sigmoid(z)
    tl.store(V_OUT + bh * headdim + offs_p, v_raw.to(V_OUT.dtype.element_ty), mask=mask_p)
    tl.store(Y + bh * headdim + offs_p, y.to(Y.dtype.element_ty), mask=mask_p)

    # In place with several programs per head, the last one to arrive writes.
    writer = _last_arrival(COUNTER, bh, nsplit) if SYNC else pb == 0
    writer = writer.to(tl.int32)
    writer = (tl.zeros_like(offs_n) + writer) != 0
    tl.store(ANGLE_OUT + bh * n_angles + pair, theta, mask=mask_a & (offs_n % 2 == 0) & writer)
    tl.store(K_OUT + bh * d_state + offs_n, k.to(K_OUT.dtype.element_ty), mask=mask_n & writer)


_COUNTERS: dict[torch.device, Tensor] = {}


def arrival_counters(device: torch.device, n: int) -> Tensor:
    """Zeroed int32 counters (at least ``n``) shared by the step kernels of a device; the
    kernels leave them at zero. Allocate before capturing a CUDA graph (warm-up)."""
    counters = _COUNTERS.get(device)
    if counters is None or counters.numel() < n:
        counters = torch.zeros(max(n, 4096), dtype=torch.int32, device=device)
        _COUNTERS[device] = counters
    return counters


def step_split(headdim: int, pblk: int | None = None) -> tuple[int, int]:
    """(PBLK, number of programs per head) for ``headdim``."""
    pb = min(pblk or STEP_CONFIG["pblk"], triton.next_power_of_2(headdim))
    return pb, triton.cdiv(headdim, pb)


def tma_capable(x: Tensor) -> bool:
    """Whether bulk tensor copies can run on ``x``'s device: Triton with host descriptors
    and ``hopper_or_newer``."""
    return TensorDescriptor is not None and hopper_or_newer(x)


def step_tma(ssms: tuple[Tensor, ...], headdim: int, pblk: int, batch: int,
             tma: bool | None = None) -> bool:
    """Whether the step moves the state tiles of ``ssms`` (input and output state, (b, H,
    P, N)) by TMA. ``tma=None``: ``STEP_CONFIG["tma"]``, at least ``tma_min_batch``
    sequences and a capable device (``tma_capable``); ``True`` asks for it wherever the
    layout allows (the interpreter included, for tests). The layout: contiguous states
    with 16-byte aligned base and rows (N * element size), PBLK dividing P, N <= 256."""
    if TensorDescriptor is None:
        return False
    if tma is None:
        if not STEP_CONFIG["tma"] or batch < STEP_CONFIG["tma_min_batch"]:
            return False
        if not tma_capable(ssms[0]):
            return False
    elif not tma or (ssms[0].is_cuda and not tma_capable(ssms[0])):
        return False
    return (headdim % pblk == 0 and triton.next_power_of_2(ssms[0].shape[-1]) <= 256
            and ssms[0].numel() // ssms[0].shape[-1] < 2**31
            and all(s.is_contiguous() and s.data_ptr() % 16 == 0
                    and s.shape[-1] * s.element_size() % 16 == 0 for s in ssms))


def state_descriptor(ssm: Tensor, pblk: int):
    """The (b*H*P, N) view of a contiguous (b, H, P, N) state, block (pblk, NB)."""
    n = ssm.shape[-1]
    return TensorDescriptor(ssm, [ssm.numel() // n, n], [n, 1],
                            [pblk, triton.next_power_of_2(n)])


def launch_step(Q, K, V, ADT, DT, Trap, Q_bias, K_bias, Angles, D, Z, state, out_state, y,
                pblk: int | None = None, num_warps: int | None = None,
                early_load: bool | None = None, evict: bool | None = None,
                tma: bool | None = None) -> None:
    """Run the step kernel; ``state`` and ``out_state`` (may alias) are contiguous tuples.
    Settings not given come from ``STEP_CONFIG`` (``tma``: see ``step_tma``)."""
    batch, nheads, headdim = V.shape
    ngroups, d_state = Q.shape[1], Q.shape[2]
    n_angles = Angles.shape[2]
    pb, nsplit = step_split(headdim, pblk)
    sync = nsplit > 1 and any(a.data_ptr() == o.data_ptr()
                              for a, o in zip(state, out_state, strict=True))
    counters = arrival_counters(V.device, batch * nheads) if sync else y
    use_tma = step_tma((state[1], out_state[1]), headdim, pb, batch, tma)
    if use_tma:
        state = (state[0], state_descriptor(state[1], pb), *state[2:])
        out_state = (out_state[0], state_descriptor(out_state[1], pb), *out_state[2:])
    zs = (Z.stride(0), Z.stride(1)) if Z is not None else (0, 0)
    _step_kernel[(batch, nheads, nsplit)](
        Q, *Q.stride()[:2], K, *K.stride()[:2], V, *V.stride()[:2], Z, *zs,
        ADT, *ADT.stride(), DT, *DT.stride(), Trap, *Trap.stride(),
        Q_bias, Q_bias.stride(0), K_bias, K_bias.stride(0), Angles, *Angles.stride()[:2], D,
        *state, *out_state, y, counters,
        nheads, nheads // ngroups, d_state, headdim, n_angles, nsplit,
        NB=triton.next_power_of_2(d_state), PBLK=pb,
        HAS_D=D is not None, HAS_Z=Z is not None, SYNC=sync,
        EARLY=STEP_CONFIG["early_load"] if early_load is None else early_load,
        EVICT=STEP_CONFIG["evict"] if evict is None else evict, TMA=use_tma,
        num_warps=num_warps or STEP_CONFIG["num_warps"],
    )


def _unit_last(x: Tensor | None) -> Tensor | None:
    return x if x is None or x.stride(-1) == 1 else x.contiguous()


def mamba3_step_triton(
    Q: Tensor, K: Tensor, V: Tensor, ADT: Tensor, DT: Tensor, Trap: Tensor, Q_bias: Tensor,
    K_bias: Tensor, Angles: Tensor, state: Mamba3State, D: Tensor | None = None,
    Z: Tensor | None = None, inplace: bool = False, pblk: int | None = None,
    tma: bool | None = None,
) -> tuple[Tensor, Mamba3State]:
    """One fused decode step; arguments as ``mamba3_step``. With ``inplace`` the kernel
    writes the new state over ``state`` (see the module docstring for how); ``pblk`` and
    ``tma`` as ``launch_step``."""
    if inplace and not all(s.is_contiguous() for s in state):
        raise ValueError("an in-place decode step needs contiguous state tensors")
    state = tuple(s.contiguous() for s in state)
    out_state = state if inplace else tuple(torch.empty_like(s) for s in state)
    Q, K, V, Z, Angles, Q_bias, K_bias = map(_unit_last, (Q, K, V, Z, Angles, Q_bias, K_bias))
    y = torch.empty(V.shape, device=V.device, dtype=V.dtype)
    launch_step(Q, K, V, ADT, DT, Trap, Q_bias, K_bias, Angles, D, Z, state, out_state, y,
                pblk=pblk, tma=tma)
    return y, out_state
