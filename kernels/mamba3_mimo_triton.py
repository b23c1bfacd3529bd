"""Mamba-3 MIMO chunked scan on CUDA through Triton (forward, backward, states, varlen).

``mamba3_mimo_scan_triton`` computes what ``mamba3_mimo_scan_reference`` computes (the
oracle). The forward is chunk-parallel (``mamba3_mimo_triton_fwd``: chunk states, state
passing, chunk scan) from the raw inputs (bias, rotary, rank values, D, headwise norm,
gate and ``MIMO_O`` fused). The backward recomputes the cheap
per-token preprocessing with autograd (``mimo_inputs``), runs two Triton sweeps over
the chunks for the scan itself and lets autograd finish the chain rule.
Final states are not differentiable (as in the official kernels); the initial state is.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import triton
from torch import Tensor
from triton.runtime.errors import OutOfResources

from mamba3_integrations.kernels import mamba3_siso_triton_fwd as siso_fwd
from mamba3_integrations.kernels.mamba3_mimo_reference import (
    biased_rotated,
    mimo_epilogue,
    mimo_inputs,
    sequence_args,
    sequence_segments,
)
from mamba3_integrations.kernels.mamba3_mimo_triton_bwd import (
    _mimo_bwd_dkv_kernel,
    _mimo_bwd_dq_kernel,
)
from mamba3_integrations.kernels.mamba3_mimo_triton_fwd import (
    _mimo_chunk_scan_kernel,
    _mimo_chunk_state_kernel,
    dot_precision,
    kernel_blocks,
)
from mamba3_integrations.kernels.mamba3_siso_reference import Mamba3State
from mamba3_integrations.kernels.mamba3_siso_triton import (
    STATE_BLOCK,
    _first_last,
    _layout,
    _super_layout,
)

NORM_EPS = 1e-5


def _launch(kernel: Callable[[int], None], rows: int) -> None:
    """Launch with ``rows`` rows per chunk, halving them (to 16) while the tiles do not fit
    the GPU's shared memory (large ``d_state``/``headdim``)."""
    while True:
        try:
            return kernel(rows)
        except OutOfResources:
            if rows <= 16:
                raise
            rows //= 2


def _seq_count(batch: int, seqlen: int, cu_seqlens: Tensor | None) -> int:
    if cu_seqlens is None:
        return batch
    n = cu_seqlens.numel() - 1
    if n < 1 or int(cu_seqlens[0]) != 0 or int(cu_seqlens[-1]) != seqlen:
        raise ValueError(f"cu_seqlens must run from 0 to seqlen={seqlen}; got "
                         f"{cu_seqlens.tolist()}")
    return n


def _start_state(V: Tensor, DT: Tensor, Trap: Tensor, MIMO_V: Tensor,
                 initial_state: Mamba3State | None, cu: Tensor | None) -> Tensor | None:
    """The state before each sequence's first token, with that token's beta term added."""
    if initial_state is None:
        return None
    _, ssm0, k0, v0 = initial_state
    if cu is None:
        dt, trap = DT[:, :, 0], Trap[:, :, 0]
    else:
        first = cu[:-1].long().clamp(max=DT.shape[-1] - 1)
        dt, trap = DT[0][:, first].T, Trap[0][:, first].T
        dt = dt * (cu[1:] > cu[:-1])[:, None]  # an empty sequence adds nothing
    dt, lam = dt.float(), torch.sigmoid(trap.float())
    prev = torch.einsum("bhp,hrp,brhn->bhpn", v0.float(), MIMO_V.float(), k0.float())
    return (ssm0.float() + ((1 - lam) * dt)[..., None, None] * prev).contiguous()


@dataclass(frozen=True)
class FwdConfig:
    """Tiles of the forward: ``rows`` (tokens x padded rank) per chunk, ``chunk`` tokens
    per program (a super-chunk of whole chunks), and the warps and pipelining stages of
    the output kernel and of the chunk-state kernel. A program takes a whole sequence
    when it fits in ``chunk`` tokens or when there are at least ``whole_seq_programs``
    (sequence, head) pairs to fill the GPU."""

    rows: int = 64
    chunk: int = 512
    num_warps: int = 4
    state_warps: int = 4
    stages: int = 1
    state_stages: int = 2
    # From this many (sequence, head) pairs on, a program takes a whole sequence.
    whole_seq_programs: int = 512


DEFAULT_CONFIG = FwdConfig()
# The compiled kernels of the latest forward launch by name (their ``n_regs``, ``n_spills``
# and ``metadata.shared`` on CUDA), for the benchmark's resource report.
LAST_KERNELS: dict[str, object] = {}


def _final_k_v(K: Tensor, V: Tensor, K_bias: Tensor, angle: Tensor, lay,
               initial_state: Mamba3State | None) -> tuple[Tensor, Tensor]:
    """The last token's biased k rotated by the final angle, for every rank (nseq, R, H, N),
    and its raw v (nseq, H, P); an empty packed sequence keeps its initial k and v."""
    last = lay.last_tok
    if isinstance(last, Tensor):
        last = last.clamp(min=0)
    k = biased_rotated(_first_last(K, last, 1), K_bias, V.shape[2], angle.cos(), angle.sin(),
                       torch.float32).to(K.dtype)
    v = _first_last(V, last, 1).clone()
    if isinstance(lay.last_tok, int):
        return k, v
    empty = lay.seq_tok[1:] == lay.seq_tok[:-1]
    k0, v0 = ((initial_state[2], initial_state[3]) if initial_state is not None
              else (torch.zeros_like(k), torch.zeros_like(v)))
    return (torch.where(empty[:, None, None, None], k0.to(k.dtype), k),
            torch.where(empty[:, None, None], v0.to(v.dtype), v))


def _forward(Q: Tensor, K: Tensor, V: Tensor, ADT: Tensor, DT: Tensor, Trap: Tensor,
             Q_bias: Tensor, K_bias: Tensor, Angles: Tensor, MIMO_V: Tensor,
             MIMO_O: Tensor | None, D: Tensor | None, Z: Tensor | None,
             MIMO_Z: Tensor | None, Norm_Weight: Tensor | None,
             initial_state: Mamba3State | None, return_state: bool, cu: Tensor | None,
             out_dtype: torch.dtype, config: FwdConfig | None = None,
             ) -> tuple[Tensor, Mamba3State | None]:
    """Launch the forward (rotary pass, chunk states, state passing, chunk scan); returns
    ``(out, final_state or None)`` (``config`` default ``DEFAULT_CONFIG``)."""
    config = config or DEFAULT_CONFIG
    batch, seqlen, rank, ngroups, d_state = Q.shape
    nheads, headdim = V.shape[2], V.shape[3]
    n_angles, half = Angles.shape[3], d_state // 2
    _seq_count(batch, seqlen, cu)
    if K.stride() != Q.stride():  # the kernels address Q and K with one set of strides
        Q, K = Q.contiguous(), K.contiguous()
    dev = V.device
    f32 = {"device": dev, "dtype": torch.float32}
    dummy = torch.empty(1, **f32)
    # The per-rank parameters in the activations' dtype when that is 16-bit (as the
    # official kernels keep them): half the registers of their tiles.
    pdt = V.dtype if V.dtype in (torch.float16, torch.bfloat16) else torch.float32
    qb, kb, mv = (t.to(pdt).contiguous() for t in (Q_bias, K_bias, MIMO_V))
    mz, mo = (t.to(pdt).contiguous() if t is not None else dummy for t in (MIMO_Z, MIMO_O))
    opt = [mz, mo] + [t.contiguous() if t is not None else dummy for t in (D, Norm_Weight)]
    start = _start_state(V, DT, Trap, MIMO_V, initial_state, cu)
    angle0 = initial_state[0].float() if initial_state is not None else None
    reduce_o = MIMO_O is not None
    out = torch.empty(*(Q.shape[:2]), *(() if reduce_o else (rank,)), nheads, headdim,
                      device=dev, dtype=out_dtype)
    so = list(out.stride())
    if reduce_o:
        so.insert(2, 0)
    z = Z if Z is not None else V
    ieee = V.dtype == torch.float32
    bp = max(16, triton.next_power_of_2(headdim))
    gates = (ADT, *ADT.stride(), DT, *DT.stride(), Trap, *Trap.stride())

    def kernel(chunk_rows: int):
        LAST_KERNELS.clear()  # the report names only this launch's kernels
        c, rp, bh = kernel_blocks(rank, d_state, chunk_rows)
        lay = _layout(batch, seqlen, c, cu, dev, allow_empty=True)
        cpp = max(1, min(config.chunk // c, lay.nchunks))
        if cu is None and batch * nheads >= config.whole_seq_programs:
            cpp = max(1, lay.chunks_per_seq)
        # One super-chunk per sequence: no chunk states to pass, the scan writes the final.
        single = cu is None and cpp >= lay.chunks_per_seq
        sup = _super_layout(lay, cpp)
        grid = (sup.count, nheads)
        varlen = lay.chunks is not None
        dims = (seqlen, lay.chunks_per_seq, sup.per_seq, nheads)
        cos = torch.empty(batch, nheads, seqlen, n_angles, device=dev, dtype=V.dtype)
        sin = torch.empty_like(cos)
        chunk_ang = torch.empty(sup.count, nheads, n_angles, **f32)
        fin_ssm = torch.empty(lay.nseq, nheads, headdim, d_state, **f32)
        fin_angle = torch.empty(lay.nseq, nheads, n_angles, **f32)
        if sup.count:
            siso_fwd._rotary_kernel[grid](
                Angles, *Angles.stride(), DT, *DT.stride(), cos, sin, chunk_ang, None,
                lay.chunks, sup.table, *dims, n_angles,
                AB=max(2, triton.next_power_of_2(n_angles)), FAST=V.is_cuda and not ieee,
                SAVE=False, C=c, CPP=cpp, IS_VARLEN=varlen, num_warps=4)
        dims = (*dims, nheads // ngroups, rank, half, n_angles, headdim)
        blocks = dict(C=c, RP=rp, BH=bh, PB=bp, CPP=cpp, IS_VARLEN=varlen, IEEE=ieee)
        if single:  # the scan starts from the initial state and angle
            states = start if start is not None else torch.zeros_like(fin_ssm)
            offsets = (angle0.contiguous() if angle0 is not None
                       else torch.zeros_like(fin_angle))
        else:
            states = torch.empty(sup.count, nheads, headdim, d_state, **f32)
            atot = torch.empty(sup.count, nheads, **f32)
            offsets = torch.empty_like(chunk_ang)
            if sup.count:
                LAST_KERNELS["chunk_state"] = _mimo_chunk_state_kernel[grid](
                    K, *K.stride(), kb, V, *V.stride(), mv, *gates, cos, sin, states, atot,
                    lay.chunks, sup.table, *dims, **blocks, num_warps=config.state_warps,
                    num_stages=config.state_stages)
            rb = max(1, min(triton.next_power_of_2(headdim), STATE_BLOCK // (2 * bh)))
            LAST_KERNELS["state_pass"] = siso_fwd._state_passing_kernel[
                (lay.nseq, nheads, triton.cdiv(headdim, rb))](
                states, atot, chunk_ang, offsets, start, angle0,
                *((angle0.stride(0), angle0.stride(1)) if angle0 is not None else (0, 0)),
                fin_ssm, fin_angle, sup.seq_first, sup.per_seq, nheads, half, n_angles,
                headdim, RB=rb, NH=bh, IS_VARLEN=varlen, HAS_START=start is not None,
                HAS_ANGLE0=angle0 is not None, num_warps=4)
        if sup.count:
            LAST_KERNELS["chunk_scan"] = _mimo_chunk_scan_kernel[grid](
                Q, K, *Q.stride(), qb, kb, V, *V.stride(), mv, z, *z.stride(), *opt, out, *so,
                *gates, cos, sin, offsets, states, lay.chunks, sup.table, chunk_ang, fin_ssm,
                fin_angle, *dims, NORM_EPS, HAS_D=D is not None, HAS_Z=Z is not None,
                HAS_NORM=Norm_Weight is not None, REDUCE_O=reduce_o, STORE_FINAL=single,
                FAST=V.is_cuda and not ieee, **blocks, num_warps=config.num_warps,
                num_stages=config.stages)
        return lay, fin_ssm, fin_angle

    lay, fin_ssm, fin_angle = _launch(kernel, config.rows)
    if not return_state:
        return out, None
    fin_k, fin_v = _final_k_v(K, V, K_bias, fin_angle, lay, initial_state)
    return out, (fin_angle, fin_ssm, fin_k, fin_v)


def _prepare(args: dict, initial_state: Mamba3State | None, cu: Tensor | None):
    """``mimo_inputs`` per sequence (differentiable), concatenated along the tokens."""
    parts = []
    for i, (lo, hi) in enumerate(sequence_segments(args["V"].shape[1], cu)):
        state = initial_state
        if cu is not None and state is not None:
            state = tuple(s[i : i + 1] for s in state)
        parts.append(mimo_inputs(**sequence_args(args, lo, hi), initial_state=state))
    cat = {name: torch.cat([getattr(x, name) for x in parts], dim=1)
           for name in ("q", "k", "v", "adt", "w", "gamma")}
    cat["start"] = torch.cat([x.start for x in parts], dim=0)
    return cat


def _reverse_cumsum(x: Tensor, seqlen: int, cu: Tensor | None) -> Tensor:
    """Suffix sums along the token axis (1), restarting at every sequence boundary."""
    pieces = [x[:, lo:hi].flip(1).cumsum(1).flip(1) for lo, hi in sequence_segments(seqlen, cu)]
    return torch.cat(pieces, dim=1)


def _scan_backward(dy: Tensor, rows: dict, has_start: bool, cu: Tensor | None,
                   precision: str) -> dict[str, Tensor]:
    """Gradients of the per-row scan inputs from the gradient of its per-rank output."""
    q, k, v = (rows[n].detach().float().contiguous() for n in ("q", "k", "v"))
    adt, w, gamma = (rows[n].detach().float().contiguous() for n in ("adt", "w", "gamma"))
    start = rows["start"].detach().float().contiguous()
    batch, seqlen, rank, nheads, d_state = q.shape
    headdim = v.shape[-1]
    nseq = start.shape[0]
    bn = max(16, triton.next_power_of_2(d_state))
    bp = max(16, triton.next_power_of_2(headdim))
    dy = dy.float().contiguous()
    dq, dk = torch.empty_like(q), torch.empty_like(k)
    dv = torch.empty_like(v)
    gl, dwp, dgp = (torch.empty(q.shape[:4], device=q.device) for _ in range(3))
    dstart = torch.empty_like(start)
    cu_arg = cu if cu is not None else start

    def common(chunk_rows: int) -> dict:
        ct, rp, _ = kernel_blocks(rank, d_state, chunk_rows)
        return dict(CT=ct, RP=rp, BN=bn, BP=bp, IS_VARLEN=cu is not None,
                    PRECISION=precision, num_warps=8)

    _launch(lambda rows: _mimo_bwd_dq_kernel[(nheads, nseq)](
        q, k, v, dy, adt, w, gamma, start, cu_arg, dq, gl, seqlen, rank, nheads, d_state,
        headdim, HAS_START=has_start, **common(rows)), 64)
    _launch(lambda rows: _mimo_bwd_dkv_kernel[(nheads, nseq)](
        q, k, v, dy, adt, w, gamma, cu_arg, dk, dv, dwp, dgp, dstart, seqlen, rank, nheads,
        d_state, headdim, **common(rows)), 64)
    dw = dwp.sum(2)
    d_later = gl.sum(2) - w * dw  # decay gradient per token, before the suffix sum
    return {"q": dq, "k": dk, "v": dv, "adt": _reverse_cumsum(d_later, seqlen, cu),
            "w": dw, "gamma": dgp.sum(2), "start": dstart}


INPUT_NAMES = ("Q", "K", "V", "ADT", "DT", "Trap", "Q_bias", "K_bias", "Angles", "MIMO_V",
               "MIMO_O", "D", "Z", "MIMO_Z", "Norm_Weight")
PRE_NAMES = INPUT_NAMES[:10]
POST_NAMES = ("D", "Z", "MIMO_Z", "MIMO_O", "Norm_Weight")


class _MimoScan(torch.autograd.Function):
    @staticmethod
    def forward(ctx, cu, return_state, n_state, *tensors):
        args = dict(zip(INPUT_NAMES, tensors[: len(INPUT_NAMES)], strict=True))
        state = tuple(tensors[len(INPUT_NAMES):]) if n_state else None
        out, final = _forward(**args, initial_state=state, return_state=return_state, cu=cu,
                              out_dtype=args["V"].dtype)
        ctx.save_for_backward(*tensors)
        ctx.cu, ctx.n_state = cu, n_state
        if final is None:
            return out
        ctx.mark_non_differentiable(*final)
        return (out, *final)

    @staticmethod
    def backward(ctx, dout, *_):
        saved = ctx.saved_tensors
        needs = ctx.needs_input_grad[3:]
        leaves = [t.detach().requires_grad_(need) if t is not None else None
                  for t, need in zip(saved, needs, strict=True)]
        args = dict(zip(INPUT_NAMES, leaves, strict=False))
        state = tuple(leaves[len(INPUT_NAMES):]) or None
        with torch.enable_grad():
            rows = _prepare({k: args[k] for k in PRE_NAMES}, state, ctx.cu)
            core_args = {**args, "MIMO_O": None, "D": None, "Z": None, "Norm_Weight": None}
            y_core, _ = _forward(**{k: v.detach() if v is not None else None
                                    for k, v in core_args.items()},
                                 initial_state=state and tuple(s.detach() for s in state),
                                 return_state=False, cu=ctx.cu, out_dtype=torch.float32)
            y_core.requires_grad_()
            v_rows = rows["v"].detach().requires_grad_()
            out = mimo_epilogue(y_core, v_rows, *(args[k] for k in POST_NAMES), NORM_EPS)
            post = [y_core, v_rows] + [args[k] for k in POST_NAMES
                                       if args[k] is not None and args[k].requires_grad]
            post_grads = dict(zip(map(id, post), torch.autograd.grad(
                out, post, dout.to(out.dtype)), strict=True))
            grads = _scan_backward(post_grads[id(y_core)], rows, state is not None, ctx.cu,
                                   dot_precision(saved[2].dtype))
            grads["v"] = grads["v"] + post_grads[id(v_rows)]
            outputs = [(rows[n], grads[n]) for n in grads if rows[n].requires_grad]
            inputs = [x for x in [args[k] for k in PRE_NAMES] + list(state or ())
                      if x is not None and x.requires_grad]
            pre_grads = dict(zip(map(id, inputs), torch.autograd.grad(
                [o for o, _ in outputs], inputs, [g.to(o.dtype) for o, g in outputs],
                allow_unused=True), strict=True)) if outputs and inputs else {}
        result = [post_grads.get(id(x), pre_grads.get(id(x))) if x is not None else None
                  for x in leaves]
        return (None, None, None, *result)


def mamba3_mimo_scan_triton(
    Q: Tensor, K: Tensor, V: Tensor, ADT: Tensor, DT: Tensor, Trap: Tensor,
    Q_bias: Tensor, K_bias: Tensor, Angles: Tensor, MIMO_V: Tensor, MIMO_O: Tensor | None,
    D: Tensor | None = None, Z: Tensor | None = None, MIMO_Z: Tensor | None = None,
    Norm_Weight: Tensor | None = None, initial_state: Mamba3State | None = None,
    return_final_state: bool = False, cu_seqlens: Tensor | None = None,
) -> Tensor | tuple[Tensor, Mamba3State]:
    """The MIMO scan on CUDA; same arguments and results as ``mamba3_mimo_scan``."""
    if Q.shape[-1] % 2:
        raise ValueError(f"d_state must be even for the rotary pairs (i, i+N/2), got "
                         f"{Q.shape[-1]}")
    if Z is not None and MIMO_Z is None:
        raise ValueError("Z needs MIMO_Z (nheads, rank, headdim)")
    cu = cu_seqlens.to(device=V.device, dtype=torch.int32) if cu_seqlens is not None else None
    tensors = (Q, K, V, ADT, DT, Trap, Q_bias, K_bias, Angles, MIMO_V, MIMO_O, D, Z, MIMO_Z,
               Norm_Weight)
    state = tuple(initial_state) if initial_state is not None else ()
    result = _MimoScan.apply(cu, return_final_state, len(state), *tensors, *state)
    if not return_final_state:
        return result
    out, *final = result
    return out, tuple(final)
