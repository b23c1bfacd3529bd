"""The whole per-token work of a SISO Mamba-3 mixer between its two projections, fused.

``mamba3_fused_step`` reads the row that ``in_proj`` produced, ``[z, x, B, C, dd_dt,
dd_A, trap, angles]``, and does in one launch what the mixer's decode otherwise does in
some forty small operations: ``dt = softplus(dd_dt + dt_bias)``, ``A = -heavy_tail(dd_A)``
capped at ``-A_floor``, the B/C RMSNorm with their weights, the biases, the angle update
and rotary, the state update, the D skip and the output gate (``silu(z)``, or the gated
RMSNorm of ``is_outproj_norm``). The state is updated in place. Intermediate roundings
(normalised B/C and y in the model dtype) follow the unfused path, so both agree to
float32 rounding. ``mamba3_fused_step_reference`` is the same in PyTorch (the oracle and
the CPU path).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from mamba3_integrations.kernels.fused_decode import (
    decode_pdl,
    fused_decode_enabled,
    gdc_launch_dependents,
    gdc_wait,
    pdl_launch,
)
from mamba3_integrations.kernels.mamba3_siso_reference import Mamba3State, mamba3_step_reference

try:
    import triton
    import triton.language as tl

    from mamba3_integrations.kernels.mamba3_siso_triton_fwd import PI, _sigmoid, _tanh, _wrap
    from mamba3_integrations.kernels.mamba3_siso_triton_step import (
        STEP_CONFIG,
        _advance_rows,
        _last_arrival,
        _load_rows,
        arrival_counters,
        state_descriptor,
        step_tma,
    )
except ImportError:  # Triton is an optional extra
    triton = None


@dataclass(frozen=True)
class SisoStepWeights:
    """What the fused step needs from a SISO mixer (float32 parameters as they are)."""

    nheads: int
    headdim: int
    d_state: int
    ngroups: int
    n_angles: int
    A_floor: float
    dt_bias: Tensor  # (H,)
    B_norm: Tensor  # (N,)
    C_norm: Tensor  # (N,)
    B_bias: Tensor  # (H, N)
    C_bias: Tensor  # (H, N)
    D: Tensor  # (H,)
    norm: Tensor | None = None  # (H * P,) gated RMSNorm weight (is_outproj_norm)
    eps: float = 1e-5


def _heavy_tail(x: Tensor) -> Tensor:
    return x.clamp_min(0) + torch.reciprocal(1 - x.clamp_max(0))


def _rms(x: Tensor, weight: Tensor, eps: float) -> Tensor:
    xf = x.float() if x.dtype != torch.float64 else x
    xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)
    return (xf * weight.to(xf.dtype)).to(x.dtype)


def mamba3_fused_step_reference(zxbcdt: Tensor, state: Mamba3State,
                                w: SisoStepWeights) -> Tensor:
    """PyTorch twin of the fused step: zxbcdt (b, d_in_proj) -> y (b, H*P) gated, in the
    dtype of ``zxbcdt``; ``state`` (angle, ssm, k (b, H, N), v) is updated in place."""
    H, P, N, G = w.nheads, w.headdim, w.d_state, w.ngroups
    d_inner = H * P
    z, x, B, C, dd_dt, dd_A, trap, angles = torch.split(
        zxbcdt, [d_inner, d_inner, G * N, G * N, H, H, H, w.n_angles], dim=-1)
    A = (-_heavy_tail(dd_A.float())).clamp(max=-w.A_floor)
    DT = F.softplus(dd_dt + w.dt_bias)
    B = _rms(B.unflatten(-1, (G, N)), w.B_norm, w.eps)
    C = _rms(C.unflatten(-1, (G, N)), w.C_norm, w.eps)
    z = z.unflatten(-1, (H, P))
    angles = angles.float().unsqueeze(-2).expand(-1, H, w.n_angles)
    y, new = mamba3_step_reference(
        C, B, x.unflatten(-1, (H, P)), A * DT, DT, trap, w.C_bias, w.B_bias, angles, state,
        D=w.D, Z=None if w.norm is not None else z)
    for dst, src in zip(state, new, strict=True):
        dst.copy_(src)
    y = y.flatten(-2)
    if w.norm is not None:
        yf = y.float() if y.dtype != torch.float64 else y
        yf = yf.unflatten(-1, (H, P))
        yf = (yf * torch.rsqrt(yf.pow(2).mean(-1, keepdim=True) + w.eps)).flatten(-2)
        yf = yf * w.norm.to(yf.dtype) * F.silu(z.flatten(-2).to(yf.dtype))
        y = yf.to(y.dtype)
    return y


if triton is not None:

    @triton.jit
    def _softplus(x):
        """log(1 + exp(x)) as torch computes it (x itself above 20), with an exact log1p."""
        u = tl.exp(-tl.abs(x))
        w = 1.0 + u
        log1p = tl.where(w == 1.0, u, tl.log(w) * (u / tl.where(w == 1.0, 1.0, w - 1.0)))
        return tl.where(x > 20.0, x, tl.maximum(x, 0.0) + log1p)

    @triton.jit
    def _normed_biased(X, W, BIAS, offs, mask, rstd):
        """RMSNorm entries ``offs`` (rounded to X's dtype as the unfused path) plus bias."""
        x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32)
        w = tl.load(W + offs, mask=mask, other=0.0).to(tl.float32)
        x = (x * rstd * w).to(X.dtype.element_ty).to(tl.float32)
        return x + tl.load(BIAS + offs, mask=mask, other=0.0).to(tl.float32)

    @triton.jit
    def _rotated_normed(X, W, BIAS, offs_n, mask_n, rstd, cos, sin):
        x = _normed_biased(X, W, BIAS, offs_n, mask_n, rstd)
        xp = _normed_biased(X, W, BIAS, offs_n ^ 1, mask_n, rstd)
        sign = tl.where((offs_n % 2) == 0, -1.0, 1.0)
        return x * cos + sign * xp * sin

    @triton.jit
    def _rstd(X, offs_n, mask_n, d_state, eps):
        x = tl.load(X + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        return 1.0 / tl.sqrt(tl.sum(x * x, 0) / d_state + eps)

    @triton.jit
    def _fused_step_kernel(
        ZX, s_zxb, DT_BIAS, BW, CW, BB, CB, D, NORM_W,
        ANGLE, SSM, KPREV, VPREV, Y, COUNTER,
        nheads, heads_per_group, d_state, headdim, n_angles, ngroups, nsplit, A_floor, eps,
        NB: tl.constexpr, PBLK: tl.constexpr, OUT_NORM: tl.constexpr, SYNC: tl.constexpr,
        DT_ROUND: tl.constexpr, EARLY: tl.constexpr, EVICT: tl.constexpr, PDL: tl.constexpr,
        TMA: tl.constexpr,
    ):
        """Grid (batch, H, cdiv(P, PBLK)); OUT_NORM needs PBLK >= P (one program a head).
        ZX (b, d_in_proj) with unit last stride; biases (H, N) contiguous; states
        contiguous and updated in place; Y (b, H*P). ``EARLY``, ``EVICT``: as the step
        kernel (state tile loaded first; streaming hints on the state). ``PDL``: the
        state (the previous token's, see ``fused_decode``) and the parameters are loaded
        before waiting for the kernel that wrote ZX. ``TMA``: SSM is a (b*H*P, N) descriptor
        with block (PBLK, NB), as in the step kernel."""
        b = tl.program_id(0)
        h = tl.program_id(1)
        pb = tl.program_id(2)
        bh = b.to(tl.int64) * nheads + h
        d_inner = nheads * headdim
        row = ZX + b.to(tl.int64) * s_zxb
        o_b = 2 * d_inner
        o_c = o_b + ngroups * d_state
        o_dt = o_c + ngroups * d_state
        offs_n = tl.arange(0, NB)
        mask_n = offs_n < d_state
        offs_p = pb * PBLK + tl.arange(0, PBLK)
        mask_p = offs_p < headdim
        ssm_off = bh * headdim * d_state
        tile_row = (bh * headdim + pb * PBLK).to(tl.int32)
        if EARLY:
            ssm = _load_rows(SSM, ssm_off, offs_p, mask_p, offs_n, mask_n, d_state, tile_row,
                             EVICT, TMA)
        pair = offs_n // 2
        mask_a = mask_n & (pair < n_angles)
        dt_bias = tl.load(DT_BIAS + h).to(tl.float32)
        ang_prev = tl.load(ANGLE + bh * n_angles + pair, mask=mask_a, other=0.0)
        k_prev = tl.load(KPREV + bh * d_state + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        v_prev = tl.load(VPREV + bh * headdim + offs_p, mask=mask_p, other=0.0).to(tl.float32)
        if PDL:
            gdc_wait()
            gdc_launch_dependents()

        dt = tl.load(row + o_dt + h).to(tl.float32) + dt_bias
        if DT_ROUND:  # dd_dt + dt_bias and its softplus in the model dtype, as unfused
            dt = _softplus(dt.to(Y.dtype.element_ty).to(tl.float32))
            dt = dt.to(Y.dtype.element_ty).to(tl.float32)
        else:
            dt = _softplus(dt)
        dd_a = tl.load(row + o_dt + nheads + h).to(tl.float32)
        a = -(tl.maximum(dd_a, 0.0) + 1.0 / (1.0 - tl.minimum(dd_a, 0.0)))
        adt = tl.minimum(a, -A_floor) * dt
        lam = _sigmoid(tl.load(row + o_dt + 2 * nheads + h).to(tl.float32))
        ang = tl.load(row + o_dt + 3 * nheads + pair, mask=mask_a, other=0.0).to(tl.float32)
        theta = _wrap(ang_prev + _tanh(ang) * PI * dt)
        cos = tl.cos(theta)
        sin = tl.sin(theta)
        grp = (h // heads_per_group).to(tl.int64)
        b_ptr = row + o_b + grp * d_state
        c_ptr = row + o_c + grp * d_state
        k = _rotated_normed(b_ptr, BW, BB + h * d_state, offs_n, mask_n,
                            _rstd(b_ptr, offs_n, mask_n, d_state, eps), cos, sin)
        q = _rotated_normed(c_ptr, CW, CB + h * d_state, offs_n, mask_n,
                            _rstd(c_ptr, offs_n, mask_n, d_state, eps), cos, sin)
        v_raw = tl.load(row + d_inner + h * headdim + offs_p, mask=mask_p, other=0.0)
        v = v_raw.to(tl.float32)

        alpha = tl.exp(adt)
        beta = (1.0 - lam) * dt * alpha
        if not EARLY:
            ssm = _load_rows(SSM, ssm_off, offs_p, mask_p, offs_n, mask_n, d_state, tile_row,
                             EVICT, TMA)
        y = _advance_rows(ssm, SSM, ssm_off, offs_p, mask_p, offs_n, mask_n, d_state,
                          tile_row, alpha, beta * v_prev, lam * dt * v, k_prev, k, q, EVICT,
                          TMA)
        y += tl.load(D + h).to(tl.float32) * v
        z = tl.load(row + h * headdim + offs_p, mask=mask_p, other=0.0).to(tl.float32)
        if OUT_NORM:
            y = y.to(Y.dtype.element_ty).to(tl.float32)  # the unfused step's output
            y = y / tl.sqrt(tl.sum(y * y, 0) / headdim + eps)
            y = y * tl.load(NORM_W + h * headdim + offs_p, mask=mask_p, other=0.0).to(tl.float32)
            y = y * (z * _sigmoid(z))
        else:
            y = y * z * _sigmoid(z)
        tl.store(VPREV + bh * headdim + offs_p, v_raw.to(VPREV.dtype.element_ty), mask=mask_p)
        tl.store(Y + b.to(tl.int64) * d_inner + h * headdim + offs_p,
                 y.to(Y.dtype.element_ty), mask=mask_p)

        # In place with several programs per head, the last one to arrive writes.
        writer = _last_arrival(COUNTER, bh, nsplit) if SYNC else pb == 0
        writer = writer.to(tl.int32)
        writer = (tl.zeros_like(offs_n) + writer) != 0
        tl.store(ANGLE + bh * n_angles + pair, theta, mask=mask_a & (offs_n % 2 == 0) & writer)
        tl.store(KPREV + bh * d_state + offs_n, k.to(KPREV.dtype.element_ty),
                 mask=mask_n & writer)


# Launch settings of the fused step. With few sequences the step kernel's rows per
# program leave the GPU mostly idle (batch 1: 64 heads), so the rows per program halve
# (down to ``min_pblk``, with ``small_warps``) until there are ``min_programs`` programs.
# ``prefetch_state``: the mixer's in_proj GEMV pulls the SSM state into L2 for the step
# (off: with programmatic dependent launch the step's own early state load was faster on
# an H100, docs/benchmarks.md).
FUSED_CONFIG = {"min_programs": 512, "min_pblk": 8, "small_warps": 1, "early_load": True,
                "prefetch_state": False}


def fused_split(batch: int, nheads: int, headdim: int, out_norm: bool,
                pblk: int | None = None) -> tuple[int, int, bool]:
    """(rows per program, programs per head, small tiles) for the fused step. The gated
    RMSNorm of ``out_norm`` needs a whole head in one program."""
    whole = triton.next_power_of_2(headdim)
    if out_norm:
        return whole, 1, False
    if pblk:
        pb = min(pblk, whole)
        return pb, triton.cdiv(headdim, pb), False
    pb = min(STEP_CONFIG["pblk"], whole)
    small = False
    while (pb > FUSED_CONFIG["min_pblk"]
           and batch * nheads * triton.cdiv(headdim, pb) < FUSED_CONFIG["min_programs"]):
        pb //= 2
        small = True
    return pb, triton.cdiv(headdim, pb), small


def mamba3_fused_step_triton(zxbcdt: Tensor, state: Mamba3State, w: SisoStepWeights,
                             pblk: int | None = None, num_warps: int | None = None,
                             early_load: bool | None = None, pdl: bool | None = None,
                             tma: bool | None = None) -> Tensor:
    """The fused step on the GPU (or the Triton interpreter); arguments as the reference.
    Launch settings not given come from ``fused_split``/``FUSED_CONFIG``/``STEP_CONFIG``;
    ``pdl``: programmatic dependent launch (default ``decode_pdl``); ``tma``: the state
    tile by bulk tensor copies (default and conditions: ``step_tma``)."""
    H, P, N = w.nheads, w.headdim, w.d_state
    if zxbcdt.stride(-1) != 1:
        zxbcdt = zxbcdt.contiguous()
    if not all(s.is_contiguous() for s in state):
        raise ValueError("the fused decode step updates contiguous state tensors in place")
    batch = zxbcdt.shape[0]
    pb, nsplit, small = fused_split(batch, H, P, w.norm is not None, pblk)
    if num_warps is None:
        num_warps = FUSED_CONFIG["small_warps"] if small else STEP_CONFIG["num_warps"]
    if early_load is None:
        early_load = FUSED_CONFIG["early_load"]
    if pdl is None:
        pdl = decode_pdl(zxbcdt)
    counters = arrival_counters(zxbcdt.device, batch * H) if nsplit > 1 else state[0]
    y = torch.empty(batch, H * P, device=zxbcdt.device, dtype=zxbcdt.dtype)
    norm = w.norm if w.norm is not None else w.D
    use_tma = step_tma((state[1],), P, pb, batch, tma)
    if use_tma:
        state = (state[0], state_descriptor(state[1], pb), *state[2:])
    _fused_step_kernel[(batch, H, nsplit)](
        zxbcdt, zxbcdt.stride(0), w.dt_bias, w.B_norm, w.C_norm, w.B_bias, w.C_bias, w.D, norm,
        *state, y, counters,
        H, H // w.ngroups, N, P, w.n_angles, w.ngroups, nsplit, w.A_floor, w.eps,
        NB=triton.next_power_of_2(N), PBLK=pb, OUT_NORM=w.norm is not None, SYNC=nsplit > 1,
        DT_ROUND=torch.promote_types(zxbcdt.dtype, w.dt_bias.dtype) != torch.float32,
        EARLY=early_load, EVICT=STEP_CONFIG["evict"], PDL=pdl, TMA=use_tma,
        num_warps=num_warps,
        **pdl_launch(pdl),
    )
    return y


def fused_step_supported(zxbcdt: Tensor, w: SisoStepWeights) -> bool:
    """Whether the Triton kernel takes this step: a 16/32-bit dtype, even d_state <= 256,
    headdim <= 256, on CUDA. ``fused_decode_enabled`` says how the environment decides."""
    return (
        triton is not None
        and fused_decode_enabled(zxbcdt)
        and zxbcdt.dtype in (torch.bfloat16, torch.float16, torch.float32)
        and w.d_state % 2 == 0
        and w.d_state <= 256
        and w.headdim <= 256
    )


def mamba3_fused_step(zxbcdt: Tensor, state: Mamba3State, w: SisoStepWeights) -> Tensor:
    """One SISO decode step from the ``in_proj`` output row: (b, d_in_proj) -> gated y
    (b, H*P); the state (angle, ssm, k (b, H, N), v) is advanced in place."""
    if fused_step_supported(zxbcdt, w):
        return mamba3_fused_step_triton(zxbcdt, state, w)
    return mamba3_fused_step_reference(zxbcdt, state, w)
