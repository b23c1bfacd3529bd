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

On Hopper (``TMA``, see ``step_tma``) the state tile moves by bulk tensor copies: the
(B, H, P, N) state is viewed as (B*H*P, N) through a host ``TensorDescriptor`` with block
(PBLK, NB), loaded with ``desc.load`` and stored with ``desc.store`` (the copy engine moves
whole 128-byte lines; no per-thread addresses). The tile is read before the new one is
stored (the store needs its data), so in place stays correct; the descriptor holds the
state's address, which a CUDA graph keeps as the states of a graph stay put. Otherwise
(other GPUs, the interpreter unless asked, PBLK not dividing P, small batches) the state
goes through per-thread pointer loads and stores.

For large batches a persistent kernel (``STEP_CONFIG["persistent"]``, ``plan_step``) runs
a few programs per SM, each looping over many heads (a head's row blocks in turn, so its
last block writes angle and k: no arrival counter), the loop software-pipelined by Triton
(``tl.range(num_stages=...)``): the state tiles of the next iterations are already on their
way as async TMA copies into shared buffers while the current one is computed and stored,
so loads stay in flight between tiles. It needs the TMA layout; elsewhere the one-tile
kernel runs.
"""

from __future__ import annotations

import os
from typing import NamedTuple

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
# TMA bulk copies on Hopper from ``tma_min_batch`` sequences on (``step_tma``; measured
# on an H100 at B=128 with a float32 state: 201.7 us against 212.7 us for the pointer
# path in the same run, docs/benchmarks.md). The persistent kernel (``plan_step``; off
# until timed on an H100: ``bench_siso_kernels --step-variants``) from
# ``persistent_min_batch`` sequences on: rows per block (None: ``pblk``), warps (None:
# ``num_warps``), pipeline stages, programs per SM (capped at what fits one), and the state
# tile's shared-memory read placed after the q/k work (fewer live registers).
STEP_CONFIG = {"pblk": 64, "num_warps": 4, "early_load": True, "evict": False,
               "tma": True, "tma_min_batch": 16,
               "persistent": False, "persistent_min_batch": 64, "programs_per_sm": 4,
               "persistent_pblk": 32, "persistent_warps": None, "persistent_stages": 3,
               "persistent_early_load": False}


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
def _step_tile(
    b, h, pb, writer_pb,
    Q, s_qb, s_qg, K, s_kb, s_kg, V, s_vb, s_vh, Z, s_zb, s_zh,
    ADT, s_adb, s_adh, DT, s_dtb, s_dth, TRAP, s_tb, s_th,
    QB, s_qbh, KB, s_kbh, ANG, s_ab, s_ah, D,
    ANGLE, SSM, KPREV, VPREV,
    ANGLE_OUT, SSM_OUT, K_OUT, V_OUT, Y, COUNTER,
    nheads, heads_per_group, d_state, headdim, n_angles, nsplit,
    NB: tl.constexpr, PBLK: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
    SYNC: tl.constexpr, EARLY: tl.constexpr, EVICT: tl.constexpr, TMA: tl.constexpr,
):
    """Rows ``pb * PBLK`` on of head ``h`` of sequence ``b``: the whole step for them;
    block ``writer_pb`` writes the head's angle and k (unless ``SYNC``).
    Q, K (b, G, N); V, Z (b, H, P); gates (b, H); Angles (b, H, A); biases (H, N); the
    last axis of each has stride 1. States are contiguous: angle (b, H, A), ssm (b, H, P,
    N), k (b, H, N), v (b, H, P). ``SYNC`` (in place with several programs per head): the
    last program writes angle and k; ``EARLY``: the state tile is loaded first; ``EVICT``:
    streaming hints on the state; ``TMA``: SSM and SSM_OUT are (b*H*P, N) descriptors with
    block (PBLK, NB).
    """
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
    writer = _last_arrival(COUNTER, bh, nsplit) if SYNC else pb == writer_pb
    writer = writer.to(tl.int32)
    writer = (tl.zeros_like(offs_n) + writer) != 0
    tl.store(ANGLE_OUT + bh * n_angles + pair, theta, mask=mask_a & (offs_n % 2 == 0) & writer)
    tl.store(K_OUT + bh * d_state + offs_n, k.to(K_OUT.dtype.element_ty), mask=mask_n & writer)


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
    """Grid (batch, H, cdiv(P, PBLK)): one tile (``_step_tile``) per program."""
    _step_tile(
        tl.program_id(0), tl.program_id(1), tl.program_id(2), 0,
        Q, s_qb, s_qg, K, s_kb, s_kg, V, s_vb, s_vh, Z, s_zb, s_zh,
        ADT, s_adb, s_adh, DT, s_dtb, s_dth, TRAP, s_tb, s_th,
        QB, s_qbh, KB, s_kbh, ANG, s_ab, s_ah, D,
        ANGLE, SSM, KPREV, VPREV,
        ANGLE_OUT, SSM_OUT, K_OUT, V_OUT, Y, COUNTER,
        nheads, heads_per_group, d_state, headdim, n_angles, nsplit,
        NB, PBLK, HAS_D, HAS_Z, SYNC, EARLY, EVICT, TMA,
    )


@triton.jit
def _step_persistent_kernel(
    Q, s_qb, s_qg, K, s_kb, s_kg, V, s_vb, s_vh, Z, s_zb, s_zh,
    ADT, s_adb, s_adh, DT, s_dtb, s_dth, TRAP, s_tb, s_th,
    QB, s_qbh, KB, s_kbh, ANG, s_ab, s_ah, D,
    ANGLE, SSM, KPREV, VPREV,
    ANGLE_OUT, SSM_OUT, K_OUT, V_OUT, Y, COUNTER,
    nheads, heads_per_group, d_state, headdim, n_angles, nsplit,
    nunits,
    NB: tl.constexpr, PBLK: tl.constexpr, HAS_D: tl.constexpr, HAS_Z: tl.constexpr,
    EARLY: tl.constexpr, STAGES: tl.constexpr,
):
    """Grid (programs,): program ``pid`` takes the heads ``pid, pid + programs, ...`` of the
    ``nunits`` (sequence, head) pairs, each as ``nsplit`` row blocks in turn, in one loop
    software-pipelined over ``STAGES``: the state tiles (SSM, SSM_OUT: descriptors as in
    ``_step_tile`` with ``TMA``) and inputs of the next ``STAGES - 1`` iterations load by
    async copies into shared buffers while this one is computed and stored. A head's
    blocks run in one program, in order, so its last block writes angle and k after the
    others read them: no arrival counter, in place or not. Arguments as ``_step_tile``."""
    pid = tl.program_id(0)
    nprog = tl.num_programs(0)
    my_units = tl.cdiv(nunits - pid, nprog)
    for it in tl.range(0, my_units * nsplit, num_stages=STAGES):
        bh = pid + (it // nsplit) * nprog
        _step_tile(
            bh // nheads, bh % nheads, it % nsplit, nsplit - 1,
            Q, s_qb, s_qg, K, s_kb, s_kg, V, s_vb, s_vh, Z, s_zb, s_zh,
            ADT, s_adb, s_adh, DT, s_dtb, s_dth, TRAP, s_tb, s_th,
            QB, s_qbh, KB, s_kbh, ANG, s_ab, s_ah, D,
            ANGLE, SSM, KPREV, VPREV,
            ANGLE_OUT, SSM_OUT, K_OUT, V_OUT, Y, COUNTER,
            nheads, heads_per_group, d_state, headdim, n_angles, nsplit,
            NB, PBLK, HAS_D, HAS_Z, False, EARLY, False, True,
        )


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


class StepPlan(NamedTuple):
    """How a step launches: rows per block, blocks per head, state tile by TMA, warps, and
    for the persistent kernel its program count (0: the one-tile kernel) and stages."""

    pblk: int
    nsplit: int
    tma: bool
    num_warps: int
    programs: int = 0
    stages: int = 0


_SM_COUNTS: dict[int, int] = {}
# Programs of the persistent kernel that fit on one SM at a time, by compiled variant
# (registers and shared memory of the kernel as compiled; filled at its first launch),
# and those figures themselves (for benchmarks).
_RESIDENT: dict[tuple, int] = {}
PERSISTENT_KERNELS: dict[tuple, dict] = {}


def sm_count(x: Tensor) -> int:
    """Streaming multiprocessors of ``x``'s CUDA device (cached); 4 elsewhere (the
    interpreter: a few programs, each with several tiles)."""
    if not x.is_cuda:
        return 4
    index = x.device.index if x.device.index is not None else torch.cuda.current_device()
    if index not in _SM_COUNTS:
        _SM_COUNTS[index] = torch.cuda.get_device_properties(index).multi_processor_count
    return _SM_COUNTS[index]


def resident_programs(kernel, device: torch.device) -> dict | None:
    """Registers, spills, shared memory of a compiled ``kernel`` and how many of its
    programs one SM holds at once ("resident"); None where Triton does not say."""
    try:
        kernel._init_handles()
        regs, shared = int(kernel.n_regs), int(kernel.metadata.shared)
        warps, spills = int(kernel.metadata.num_warps), int(kernel.n_spills)
    except Exception:  # noqa: BLE001 (Triton internals differ between versions)
        return None
    props = torch.cuda.get_device_properties(device)
    regs_per_sm = getattr(props, "regs_per_multiprocessor", 65536)
    smem_per_sm = getattr(props, "shared_memory_per_multiprocessor", 233472)
    warps_per_sm = getattr(props, "max_threads_per_multi_processor", 2048) // 32
    warp_regs = triton.cdiv(max(regs, 1), 8) * 8 * 32
    by_regs = (regs_per_sm // warp_regs) // warps
    by_smem = smem_per_sm // (shared + 1024)  # 1 KiB per block reserved by CUDA
    return {"regs": regs, "spills": spills, "shared": shared, "warps": warps,
            "resident": max(1, min(by_regs, by_smem, warps_per_sm // warps, 32))}


def step_persistent(batch: int, x: Tensor, persistent: bool | None = None) -> bool:
    """Whether the step asks for the persistent kernel: ``persistent=None`` follows
    ``STEP_CONFIG["persistent"]`` from ``persistent_min_batch`` sequences on, compiled on
    a GPU (in the interpreter only when asked)."""
    if persistent is not None:
        return persistent
    interpreted = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
    return (bool(STEP_CONFIG["persistent"]) and batch >= STEP_CONFIG["persistent_min_batch"]
            and x.is_cuda and not interpreted)


def _variant_key(x: Tensor, plan: StepPlan) -> tuple:
    """The persistent kernel's compiled variant (as far as its size goes) for state ``x``."""
    return (x.device, x.dtype, plan.pblk, plan.num_warps, plan.stages)


def plan_step(ssms: tuple[Tensor, ...], batch: int, nheads: int, headdim: int,
              pblk: int | None = None, num_warps: int | None = None,
              tma: bool | None = None, persistent: bool | None = None,
              programs: int | None = None, stages: int | None = None) -> StepPlan:
    """The launch of a step over the states ``ssms`` ((b, H, P, N) input and output).
    Settings not given come from ``STEP_CONFIG``. The persistent kernel
    (``step_persistent``) moves the state by TMA only: where ``step_tma`` refuses (no
    Hopper, the block not dividing P, an unaligned state, ``tma=False``) the one-tile
    kernel runs. It takes its own ``persistent_pblk``, ``persistent_warps`` and
    ``persistent_stages`` where set, and ``programs_per_sm`` programs per SM, no more than
    fit at once (``resident_programs``, known after its first launch), then evened out: as
    few programs as give every one the same number of heads, give or take one
    (``programs``: the total, as asked)."""
    if step_persistent(batch, ssms[0], persistent):
        pb, nsplit = step_split(headdim, pblk or STEP_CONFIG["persistent_pblk"])
        if step_tma(ssms, headdim, pb, batch, tma):
            warps = num_warps or STEP_CONFIG["persistent_warps"] or STEP_CONFIG["num_warps"]
            plan = StepPlan(pb, nsplit, True, warps, 1,
                            stages or STEP_CONFIG["persistent_stages"])
            units = batch * nheads
            if not programs:
                per_sm = STEP_CONFIG["programs_per_sm"]
                fits = _RESIDENT.get(_variant_key(ssms[0], plan))
                programs = sm_count(ssms[0]) * (min(per_sm, fits) if fits else per_sm)
            programs = min(units, programs)
            return plan._replace(programs=triton.cdiv(units, triton.cdiv(units, programs)))
    pb, nsplit = step_split(headdim, pblk)
    return StepPlan(pb, nsplit, step_tma(ssms, headdim, pb, batch, tma),
                    num_warps or STEP_CONFIG["num_warps"])


def launch_step(Q, K, V, ADT, DT, Trap, Q_bias, K_bias, Angles, D, Z, state, out_state, y,
                pblk: int | None = None, num_warps: int | None = None,
                early_load: bool | None = None, evict: bool | None = None,
                tma: bool | None = None, persistent: bool | None = None,
                programs: int | None = None, stages: int | None = None) -> StepPlan:
    """Run the step kernel; ``state`` and ``out_state`` (may alias) are contiguous tuples.
    Settings not given come from ``STEP_CONFIG`` (``tma``: see ``step_tma``; ``persistent``,
    ``programs``, ``stages``: see ``plan_step``). Returns the plan it ran."""
    batch, nheads, headdim = V.shape
    ngroups, d_state = Q.shape[1], Q.shape[2]
    n_angles = Angles.shape[2]
    plan = plan_step((state[1], out_state[1]), batch, nheads, headdim, pblk, num_warps, tma,
                     persistent, programs, stages)
    sync = plan.nsplit > 1 and not plan.programs and any(
        a.data_ptr() == o.data_ptr() for a, o in zip(state, out_state, strict=True))
    counters = arrival_counters(V.device, batch * nheads) if sync else y
    ssm = state[1]
    if plan.tma:
        state = (state[0], state_descriptor(state[1], plan.pblk), *state[2:])
        out_state = (out_state[0], state_descriptor(out_state[1], plan.pblk), *out_state[2:])
    zs = (Z.stride(0), Z.stride(1)) if Z is not None else (0, 0)
    args = (
        Q, *Q.stride()[:2], K, *K.stride()[:2], V, *V.stride()[:2], Z, *zs,
        ADT, *ADT.stride(), DT, *DT.stride(), Trap, *Trap.stride(),
        Q_bias, Q_bias.stride(0), K_bias, K_bias.stride(0), Angles, *Angles.stride()[:2], D,
        *state, *out_state, y, counters,
        nheads, nheads // ngroups, d_state, headdim, n_angles, plan.nsplit,
    )
    consts = dict(NB=triton.next_power_of_2(d_state), PBLK=plan.pblk, HAS_D=D is not None,
                  HAS_Z=Z is not None, num_warps=plan.num_warps)
    if not plan.programs:
        _step_kernel[(batch, nheads, plan.nsplit)](
            *args, SYNC=sync, EARLY=STEP_CONFIG["early_load"] if early_load is None
            else early_load, EVICT=STEP_CONFIG["evict"] if evict is None else evict,
            TMA=plan.tma, **consts)
        return plan
    kernel = _step_persistent_kernel[(plan.programs,)](
        *args, batch * nheads, STAGES=plan.stages, **consts,
        EARLY=STEP_CONFIG["persistent_early_load"] if early_load is None else early_load)
    key = _variant_key(ssm, plan)
    if ssm.is_cuda and key not in _RESIDENT:
        stats = resident_programs(kernel, ssm.device)
        _RESIDENT[key] = stats["resident"] if stats else 0
        PERSISTENT_KERNELS[key] = stats or {}
    return plan


def _unit_last(x: Tensor | None) -> Tensor | None:
    return x if x is None or x.stride(-1) == 1 else x.contiguous()


def mamba3_step_triton(
    Q: Tensor, K: Tensor, V: Tensor, ADT: Tensor, DT: Tensor, Trap: Tensor, Q_bias: Tensor,
    K_bias: Tensor, Angles: Tensor, state: Mamba3State, D: Tensor | None = None,
    Z: Tensor | None = None, inplace: bool = False, pblk: int | None = None,
    tma: bool | None = None, persistent: bool | None = None,
) -> tuple[Tensor, Mamba3State]:
    """One fused decode step; arguments as ``mamba3_step``. With ``inplace`` the kernel
    writes the new state over ``state`` (see the module docstring for how); ``pblk``,
    ``tma`` and ``persistent`` as ``launch_step``."""
    if inplace and not all(s.is_contiguous() for s in state):
        raise ValueError("an in-place decode step needs contiguous state tensors")
    state = tuple(s.contiguous() for s in state)
    out_state = state if inplace else tuple(torch.empty_like(s) for s in state)
    Q, K, V, Z, Angles, Q_bias, K_bias = map(_unit_last, (Q, K, V, Z, Angles, Q_bias, K_bias))
    y = torch.empty(V.shape, device=V.device, dtype=V.dtype)
    launch_step(Q, K, V, ADT, DT, Trap, Q_bias, K_bias, Angles, D, Z, state, out_state, y,
                pblk=pblk, tma=tma, persistent=persistent)
    return y, out_state
