"""Mamba-3 SISO scan and decode step on CUDA through Triton.

``mamba3_scan_triton`` is the chunked prefill (forward and backward, states in and out,
``ngroups``, packed variable-length sequences); ``mamba3_step_triton`` is the fused decode
step. Both compute what ``mamba3_siso_reference`` computes; the reference is the oracle.
Kernels: ``mamba3_siso_triton_fwd``, ``mamba3_siso_triton_bwd``, ``mamba3_siso_triton_step``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
from torch import Tensor

from mamba3_integrations.kernels import mamba3_siso_triton_bwd as bwd
from mamba3_integrations.kernels import mamba3_siso_triton_fwd as fwd
from mamba3_integrations.kernels.mamba3_siso_reference import Mamba3State, rotate_adjacent_pairs
from mamba3_integrations.kernels.mamba3_siso_triton_step import mamba3_step_triton  # noqa: F401

STATE_BLOCK = 512  # elements of the (P, N) state per state-passing program (about)
CHUNK_WARPS = {16: 4, 32: 4, 64: 4, 128: 8}  # num_warps of the chunk kernels
# Forward kernels (measured on an H100, docs/benchmarks.md): the chunk length (at most the
# caller's chunk_size: the result does not depend on it), chunks per super-chunk (one
# program each), pipelining stages, a register cap per thread, and the chunk-state
# kernel's own warps and stages (None: the output kernel's settings).
TUNING: dict[str, int | None] = {"chunk": 32, "chunks_per_program": 32, "stages": 3,
                                 "maxnreg": None, "state_warps": 2, "state_stages": 2}


@dataclass
class _Layout:
    """How the tokens split into chunks (chunks never straddle two sequences)."""

    nseq: int
    nchunks: int  # chunk slots (an upper bound for packed sequences)
    chunks_per_seq: int  # batched mode only
    chunks: Tensor | None  # (nchunks, 3) int32: start, end, sequence end; packed mode
    seq_chunk: Tensor | None  # (nseq + 1,) int32 first chunk slot of each sequence
    seq_tok: Tensor | None  # (nseq + 1,) int32 cu_seqlens
    first_tok: Tensor | int  # each sequence's first token in its row (an int when batched)
    last_tok: Tensor | int  # and its last


def _layout(batch: int, seqlen: int, chunk: int, cu_seqlens: Tensor | None,
            device: torch.device, allow_empty: bool = False) -> _Layout:
    """The chunks of the batch rows or packed sequences; ``allow_empty``: packed sequences
    may be empty (they get no chunk)."""
    if cu_seqlens is None:
        cps = triton.cdiv(seqlen, chunk)
        return _Layout(batch, batch * cps, cps, None, None, None, 0, seqlen - 1)
    if batch != 1:
        raise ValueError(f"packed sequences (cu_seqlens) need batch 1, got batch {batch}")
    cu = cu_seqlens.to(device=device, dtype=torch.int64)
    nseq = cu.numel() - 1
    lens = cu[1:] - cu[:-1]
    rising = (lens >= 0) if allow_empty else (lens > 0)
    ok = (nseq >= 1) and bool((rising.all() & (cu[0] == 0) & (cu[-1] == seqlen)).item())
    if not ok:
        how = "" if allow_empty else " strictly"
        raise ValueError(f"cu_seqlens must rise{how} from 0 to seqlen={seqlen}; got "
                         f"{cu_seqlens.tolist()}")
    nch = (lens + chunk - 1) // chunk
    cum = nch.cumsum(0)
    first_chunk = cum - nch
    nmax = nseq + seqlen // chunk
    slot = torch.arange(nmax, device=device)
    seq = torch.searchsorted(cum, slot, right=True)
    valid = seq < nseq
    seq = seq.clamp(max=nseq - 1)
    start = cu[seq] + (slot - first_chunk[seq]) * chunk
    seq_end = cu[seq + 1]
    end = torch.minimum(start + chunk, seq_end)
    table = torch.stack((start, end, seq_end), dim=1) * valid[:, None]
    seq_chunk = torch.cat((cum.new_zeros(1), cum))
    return _Layout(nseq, nmax, 0, table.to(torch.int32).contiguous(),
                   seq_chunk.to(torch.int32), cu.to(torch.int32), cu[:-1], cu[1:] - 1)


@dataclass
class _Supers:
    """Super-chunks: runs of up to ``cpp`` consecutive chunks of one sequence."""

    count: int  # super-chunk slots (an upper bound for packed sequences)
    per_seq: int  # batched mode only
    table: Tensor | None  # (count, 2) int32: first chunk slot, number of chunks; packed
    seq_first: Tensor | None  # (nseq + 1,) int32 first super-chunk slot of each sequence


def _super_layout(lay: _Layout, cpp: int) -> _Supers:
    if lay.chunks is None:
        per_seq = triton.cdiv(lay.chunks_per_seq, cpp)
        return _Supers(lay.nseq * per_seq, per_seq, None, None)
    first_chunk = lay.seq_chunk.long()
    nch = first_chunk[1:] - first_chunk[:-1]
    nsup = (nch + cpp - 1) // cpp
    cum = nsup.cumsum(0)
    count = lay.nseq + lay.nchunks // cpp + 1
    slot = torch.arange(count, device=cum.device)
    seq = torch.searchsorted(cum, slot, right=True)
    valid = seq < lay.nseq
    seq = seq.clamp(max=lay.nseq - 1)
    k = slot - (cum - nsup)[seq]
    n = (nch[seq] - k * cpp).clamp(0, cpp) * valid
    table = torch.stack((first_chunk[seq] + k * cpp, n), dim=1) * valid[:, None]
    seq_first = torch.cat((cum.new_zeros(1), cum))
    return _Supers(count, 0, table.to(torch.int32).contiguous(), seq_first.to(torch.int32))


def _deinterleave(x: Tensor) -> Tensor:
    """(..., N) natural order -> (..., [even | odd]) contiguous."""
    return x.unflatten(-1, (-1, 2)).transpose(-1, -2).flatten(-2).contiguous()


def _interleave(x: Tensor) -> Tensor:
    """(..., [even | odd]) -> (..., N) natural order."""
    return x.unflatten(-1, (2, -1)).transpose(-1, -2).flatten(-2)


def _rotate(x: Tensor, theta: Tensor) -> Tensor:
    """Rotate pairs (2i, 2i+1) of x (..., N) by theta (..., A), float32."""
    return rotate_adjacent_pairs(x.float(), theta.cos(), theta.sin())


def _first_last(x: Tensor, index: Tensor | int, time_dim: int) -> Tensor:
    """x at token ``index`` of each sequence: (nseq, ...) without the time axis.

    ``index`` is an int for batched sequences, a (nseq,) tensor for packed ones (batch 1).
    """
    if isinstance(index, int):
        return x.select(time_dim, index)
    return x[0].index_select(time_dim - 1, index).movedim(time_dim - 1, 0)


def _gates_at(DT: Tensor, Trap: Tensor, index: Tensor | int) -> tuple[Tensor, Tensor]:
    """dt and lam (nseq, H) at token ``index`` of each sequence."""
    dt = _first_last(DT, index, 2).float()
    lam = torch.sigmoid(_first_last(Trap, index, 2).float())
    return dt, lam


def _block_sizes(n: int, p: int) -> tuple[int, int]:
    return max(16, triton.next_power_of_2(n // 2)), max(16, triton.next_power_of_2(p))


@dataclass
class _Saved:
    """What the forward pass keeps for the backward pass."""

    offsets: Tensor  # (nchunks, H, A) angle entering each chunk
    final_angle: Tensor  # (nseq, H, A)
    states: Tensor  # (nchunks, H, P, N) state entering each chunk, de-interleaved
    atot: Tensor  # (nchunks, H)
    ypre: Tensor | None  # output before the gate (with Z)
    lay: _Layout


def scan_forward(
    Q: Tensor, K: Tensor, V: Tensor, ADT: Tensor, DT: Tensor, Trap: Tensor, Q_bias: Tensor,
    K_bias: Tensor, Angles: Tensor, D: Tensor | None, Z: Tensor | None,
    initial_state: Mamba3State | None, cu_seqlens: Tensor | None, chunk_size: int,
    save: bool,
) -> tuple[Tensor, Mamba3State, _Saved | None]:
    """Run the four forward kernels; returns (out, final_state, saved)."""
    batch, seqlen, ngroups, d_state = Q.shape
    nheads, headdim = V.shape[2], V.shape[3]
    n_angles = Angles.shape[3]
    dev = V.device
    lay = _layout(batch, seqlen, chunk_size, cu_seqlens, dev)
    NH, PB = _block_sizes(d_state, headdim)
    ieee = V.dtype == torch.float32
    Q_bias, K_bias = Q_bias.contiguous(), K_bias.contiguous()
    f32 = {"device": dev, "dtype": torch.float32}

    cpp = max(1, min(TUNING["chunks_per_program"], lay.nchunks))
    sup = _super_layout(lay, cpp)
    states = torch.empty(sup.count, nheads, headdim, d_state, **f32)
    atot = torch.empty(sup.count, nheads, **f32)
    chunk_ang = torch.empty(sup.count, nheads, n_angles, **f32)
    # Per chunk, for the backward pass (the rotary pass fills in the local angles).
    saved_offsets = torch.empty(lay.nchunks, nheads, n_angles, **f32) if save else None
    grid = (sup.count, nheads)
    varlen = lay.chunks is not None
    meta = {"C": chunk_size, "CPP": cpp, "IS_VARLEN": varlen}
    dims = (seqlen, lay.chunks_per_seq, sup.per_seq, nheads)
    cos = torch.empty(batch, nheads, seqlen, n_angles, device=dev, dtype=V.dtype)
    sin = torch.empty_like(cos)
    fwd._rotary_kernel[grid](
        Angles, *Angles.stride(), DT, *DT.stride(), cos, sin, chunk_ang, saved_offsets,
        lay.chunks, sup.table, *dims, n_angles, AB=max(2, triton.next_power_of_2(n_angles)),
        FAST=V.is_cuda and not ieee, SAVE=save, num_warps=4, **meta)

    dims = (*dims, nheads // ngroups, d_state, n_angles, headdim)
    meta.update(NH=NH, PB=PB, IEEE=ieee, num_warps=CHUNK_WARPS.get(chunk_size, 4),
                num_stages=TUNING["stages"])
    if TUNING.get("maxnreg"):
        meta["maxnreg"] = TUNING["maxnreg"]
    gates = (ADT, *ADT.stride(), DT, *DT.stride(), Trap, *Trap.stride())
    fwd._chunk_state_kernel[grid](
        K, *K.stride(), K_bias, *K_bias.stride(), V, *V.stride(), *gates, cos, sin, states,
        atot, lay.chunks, sup.table, *dims,
        **{**meta, "num_warps": TUNING["state_warps"] or meta["num_warps"],
           "num_stages": TUNING["state_stages"] or meta["num_stages"]})

    start, angle0 = None, None
    if initial_state is not None:
        angle0, ssm0, k0, v0 = initial_state
        dt0, lam0 = _gates_at(DT, Trap, lay.first_tok)
        beta0 = ((1 - lam0) * dt0)[..., None, None]
        outer = v0.float()[..., None] * k0.float()[..., None, :]
        start = _deinterleave(ssm0.float() + beta0 * outer)
    offsets = torch.empty(sup.count, nheads, n_angles, **f32)
    final_ssm = torch.empty(lay.nseq, nheads, headdim, d_state, **f32)
    final_angle = torch.empty(lay.nseq, nheads, n_angles, **f32)
    rows = max(1, min(triton.next_power_of_2(headdim), STATE_BLOCK // (2 * NH)))
    fwd._state_passing_kernel[(lay.nseq, nheads, triton.cdiv(headdim, rows))](
        states, atot, chunk_ang, offsets, start, angle0,
        *((angle0.stride(0), angle0.stride(1)) if angle0 is not None else (0, 0)),
        final_ssm, final_angle, sup.seq_first, sup.per_seq, nheads, d_state // 2,
        n_angles, headdim, RB=rows, NH=NH, IS_VARLEN=varlen,
        HAS_START=start is not None, HAS_ANGLE0=angle0 is not None, num_warps=4)

    out = torch.empty(batch, seqlen, nheads, headdim, device=dev, dtype=V.dtype)
    ypre = torch.empty_like(out) if save and Z is not None else None
    if save:
        saved_states = torch.empty(lay.nchunks, nheads, headdim, d_state, **f32)
        saved_atot = torch.empty(lay.nchunks, nheads, **f32)
    else:
        saved_states = saved_atot = None
    zs = Z.stride() if Z is not None else (0, 0, 0, 0)
    fwd._chunk_scan_kernel[grid](
        Q, *Q.stride(), K, *K.stride(), Q_bias, K_bias, *K_bias.stride(), V, *V.stride(),
        Z, *zs, out, *out.stride(), ypre, *gates, cos, sin, D, offsets,
        states, lay.chunks, sup.table, saved_states, saved_offsets, saved_atot, *dims,
        HAS_D=D is not None, HAS_Z=Z is not None, STORE_YPRE=ypre is not None, SAVE=save,
        **meta)

    k_last = _first_last(K, lay.last_tok, 1)
    k_last = k_last.repeat_interleave(nheads // ngroups, dim=1) + K_bias
    final = (final_angle, _interleave(final_ssm),
             _rotate(k_last, final_angle).to(Q.dtype), _first_last(V, lay.last_tok, 1).clone())
    # A copy: the output itself would tie the autograd graph into a reference cycle (ctx ->
    # saved -> output -> grad_fn -> ctx) that frees the saved chunk states only on a gc pass.
    saved = (_Saved(saved_offsets, final_angle.clone(), saved_states, saved_atot, ypre, lay)
             if save else None)
    return out, final, saved


def scan_backward(
    dout: Tensor, dfinal: tuple[Tensor | None, ...], Q: Tensor, K: Tensor, V: Tensor,
    ADT: Tensor, DT: Tensor, Trap: Tensor, Q_bias: Tensor, K_bias: Tensor, Angles: Tensor,
    D: Tensor | None, Z: Tensor | None, initial_state: Mamba3State | None, saved: _Saved,
    chunk_size: int,
) -> tuple[Tensor | None, ...]:
    """Gradients of (Q, K, V, ADT, DT, Trap, Q_bias, K_bias, Angles, D, Z, *initial_state)."""
    batch, seqlen, ngroups, d_state = Q.shape
    nheads, headdim = V.shape[2], V.shape[3]
    n_angles = Angles.shape[3]
    lay, dev = saved.lay, V.device
    NH, PB = _block_sizes(d_state, headdim)
    Q_bias, K_bias = Q_bias.contiguous(), K_bias.contiguous()
    f32 = {"device": dev, "dtype": torch.float32}
    dangle_f, dssm_f, dk_f, dv_f = dfinal

    dout = dout.float()
    if Z is not None:
        zf = Z.float()
        sig = torch.sigmoid(zf)
        ypre = saved.ypre.float()
        dZ = (dout * ypre * sig * (1 + zf * (1 - sig))).to(Z.dtype)
        dy = dout * zf * sig
    else:
        dZ, dy = None, dout
    vf = V.float()
    dD = (dy * vf).sum((0, 1, 3)).to(D.dtype) if D is not None else None
    dy_k = dy.to(V.dtype).contiguous()

    common = (seqlen, lay.chunks_per_seq, nheads, nheads // ngroups, d_state // 2, n_angles,
              headdim)
    meta = {"C": chunk_size, "NH": NH, "PB": PB, "IS_VARLEN": lay.chunks is not None,
            "IEEE": V.dtype == torch.float32, "num_warps": CHUNK_WARPS.get(chunk_size, 4)}
    dstates = torch.empty_like(saved.states)
    angles = (Angles, *Angles.stride(), DT, *DT.stride(), saved.offsets)
    bwd._chunk_dstate_kernel[(lay.nchunks, nheads)](
        Q, *Q.stride(), dy_k, *dy_k.stride(), ADT, *ADT.stride(), Q_bias, *Q_bias.stride(),
        *angles, dstates, lay.chunks, *common, **meta)

    size = headdim * d_state
    nblocks = triton.cdiv(size, STATE_BLOCK)
    dfinal_ssm = None if dssm_f is None else _deinterleave(dssm_f.float())
    dstart = torch.empty(lay.nseq, nheads, headdim, d_state, **f32)
    datot = torch.empty(lay.nchunks, nheads, nblocks, **f32)
    bwd._state_passing_bwd_kernel[(lay.nseq, nheads, nblocks)](
        dstates, saved.states, saved.atot, dfinal_ssm, dstart, datot, lay.seq_chunk,
        lay.chunks_per_seq, nheads, size, nblocks, BLOCK=STATE_BLOCK,
        IS_VARLEN=lay.chunks is not None, HAS_DFINAL=dfinal_ssm is not None, num_warps=4)

    dq = torch.empty(batch, seqlen, nheads, d_state, **f32)
    dk = torch.empty_like(dq)
    dv = torch.empty(batch, seqlen, nheads, headdim, **f32)
    dtheta = torch.empty(batch, seqlen, nheads, n_angles, **f32)
    dadt, dw, dgamma = (torch.empty(batch, nheads, seqlen, **f32) for _ in range(3))
    gates = (ADT, *ADT.stride(), DT, *DT.stride(), Trap, *Trap.stride())
    bwd._chunk_scan_bwd_kernel[(lay.nchunks, nheads)](
        Q, *Q.stride(), K, *K.stride(), V, *V.stride(), dy_k, *dy_k.stride(), *gates,
        Q_bias, K_bias, *K_bias.stride(), *angles[:5], saved.offsets, saved.states, dstates,
        datot.sum(-1), lay.chunks, dq, dk, dv, dtheta, dadt, dw, dgamma, *common, **meta)

    last = lay.last_tok
    if dk_f is not None:  # final k = rotate(K_last + K_bias, theta_last)
        with torch.enable_grad():
            k_pre = (_first_last(K, last, 1).float().repeat_interleave(nheads // ngroups, 1)
                     + K_bias.float()).requires_grad_()
            th = saved.final_angle.clone().requires_grad_()
            dk_pre, dth = torch.autograd.grad(_rotate(k_pre, th), (k_pre, th), dk_f.float())
        _add_at(dk, last, dk_pre)
        _add_at(dtheta, last, dth)
    if dv_f is not None:
        _add_at(dv, last, dv_f.float())
    if D is not None:
        dv += D.float()[:, None] * dy

    dang = torch.empty(batch, seqlen, nheads, n_angles, **f32)
    ddt_angle = torch.empty(batch, nheads, seqlen, **f32)
    dangle0 = torch.empty(lay.nseq, nheads, n_angles, **f32)
    bwd.launch_angle_cumsum_bwd(Angles, DT, dtheta, None if dangle_f is None
                                else dangle_f.float().contiguous(), dang, ddt_angle, dangle0,
                                lay.seq_tok, seqlen, lay.nseq)

    # Trapezoid weights: w_t = gamma_t + beta_{t+1}, beta = (1 - lam) dt, gamma = lam dt.
    dgamma = dgamma + dw
    dbeta = torch.nn.functional.pad(dw[..., :-1], (1, 0))
    if lay.seq_tok is not None:
        dbeta[0, :, lay.first_tok] = 0
    dstate0 = None
    if initial_state is not None:
        _, _, k0, v0 = initial_state
        dstart = _interleave(dstart)
        dt0, lam0 = _gates_at(DT, Trap, lay.first_tok)
        beta0 = ((1 - lam0) * dt0)[..., None]
        k0f, v0f = k0.float(), v0.float()
        dsk = torch.einsum("shpn,shn->shp", dstart, k0f)
        dbeta0 = (dsk * v0f).sum(-1)
        if isinstance(lay.first_tok, int):
            dbeta[..., 0] += dbeta0
        else:
            dbeta[0, :, lay.first_tok] += dbeta0.t()
        dstate0 = (dangle0, dstart.to(initial_state[1].dtype),
                   (beta0 * torch.einsum("shpn,shp->shn", dstart, v0f)).to(k0.dtype),
                   (beta0 * dsk).to(v0.dtype))
    dtf = DT.float()
    lam = torch.sigmoid(Trap.float())
    dDT = lam * dgamma + (1 - lam) * dbeta + ddt_angle
    dTrap = dtf * (dgamma - dbeta) * lam * (1 - lam)

    dQ = dq.unflatten(2, (ngroups, -1)).sum(3).to(Q.dtype)
    dK = dk.unflatten(2, (ngroups, -1)).sum(3).to(K.dtype)
    return (dQ, dK, dv.to(V.dtype), dadt.to(ADT.dtype), dDT.to(DT.dtype), dTrap.to(Trap.dtype),
            dq.sum((0, 1)).to(Q_bias.dtype), dk.sum((0, 1)).to(K_bias.dtype),
            dang.to(Angles.dtype), dD, dZ, *(dstate0 or (None,) * 4))


def _add_at(x: Tensor, index: Tensor | int, value: Tensor) -> None:
    """x[row, index[seq]] += value[seq] for (b, l, ...) x; batched: x[:, index] += value."""
    if isinstance(index, int):
        x[:, index] += value
    else:
        x[0].index_add_(0, index, value)


class _ScanFunction(torch.autograd.Function):
    """Autograd wrapper: forward and backward through the Triton kernels."""

    @staticmethod
    def forward(ctx, Q, K, V, ADT, DT, Trap, Q_bias, K_bias, Angles, D, Z, angle0, ssm0, k0,
                v0, cu_seqlens, chunk_size):
        init = None if ssm0 is None else (angle0, ssm0, k0, v0)
        save = any(ctx.needs_input_grad)
        out, final, saved = scan_forward(Q, K, V, ADT, DT, Trap, Q_bias, K_bias, Angles, D, Z,
                                         init, cu_seqlens, chunk_size, save)
        if save:
            ctx.save_for_backward(Q, K, V, ADT, DT, Trap, Q_bias, K_bias, Angles, D, Z,
                                  angle0, ssm0, k0, v0)
            ctx.saved, ctx.chunk_size = saved, chunk_size
        return (out, *final)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, dout, dangle, dssm, dk, dv):
        Q, K, V, ADT, DT, Trap, Q_bias, K_bias, Angles, D, Z, angle0, ssm0, k0, v0 = (
            ctx.saved_tensors)
        init = None if ssm0 is None else (angle0, ssm0, k0, v0)
        grads = scan_backward(dout, (dangle, dssm, dk, dv), Q, K, V, ADT, DT, Trap, Q_bias,
                              K_bias, Angles, D, Z, init, ctx.saved, ctx.chunk_size)
        return (*grads, None, None)


def mamba3_scan_triton(
    Q: Tensor, K: Tensor, V: Tensor, ADT: Tensor, DT: Tensor, Trap: Tensor, Q_bias: Tensor,
    K_bias: Tensor, Angles: Tensor, D: Tensor | None = None, Z: Tensor | None = None,
    initial_state: Mamba3State | None = None, return_final_state: bool = False,
    chunk_size: int = 64, cu_seqlens: Tensor | None = None,
) -> Tensor | tuple[Tensor, Mamba3State]:
    """The chunked scan through Triton; arguments as ``mamba3_scan``. Differentiable."""
    init = initial_state if initial_state is not None else (None,) * 4
    chunk = max(16, min(1 << (chunk_size.bit_length() - 1), TUNING["chunk"] or chunk_size))
    out, *final = _ScanFunction.apply(Q, K, V, ADT, DT, Trap, Q_bias, K_bias, Angles, D, Z,
                                      *init, cu_seqlens, chunk)
    return (out, tuple(final)) if return_final_state else out
