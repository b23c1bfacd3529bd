"""PyTorch reference of the Mamba-3 MIMO scan: chunked prefill and single-token step.

The CPU path and the oracle for the Triton kernels (``shared/spec/MAMBA3.md`` section 2).
Tensor conventions follow ``shared/golden/README.md``:

- ``Q``, ``K``: (batch, seqlen, R, G, N), C and B after their RMSNorm, before bias
  and rotary. Head ``h`` uses group ``h // (H / G)``.
- ``V``, ``Z``: (batch, seqlen, H, P); ``ADT``, ``DT``, ``Trap``: (batch, H, seqlen),
  ``Trap`` raw (pre-sigmoid); ``Angles``: (batch, seqlen, H, n_angles), raw (pre-tanh).
- ``Q_bias``, ``K_bias``: (H, R, N); ``MIMO_V``, ``MIMO_Z``, ``MIMO_O``: (H, R, P);
  ``D``: (H,); ``Norm_Weight``: (H, P).
- States ``(angle, ssm, k, v)``: (b, H, n_angles), (b, H, P, N) float32, (b, R, H, N)
  biased rotated k of the last token for every rank, (b, H, P) the raw ``V`` of the
  last token (not multiplied by ``MIMO_V``).

A token contributes R rows ``(t, r)``: ``q_{t,r}``, ``k_{t,r}`` and ``v_{t,r} =
V_t * MIMO_V[r]``. Rotary pairs entry ``i`` with ``i + N/2`` (not SISO's adjacent pairs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from mamba3_integrations.kernels.mamba3_siso_reference import (
    TWO_PI,
    Mamba3State,
    compute_dtype,
    expand_groups,
    final_ssm_state,
    segsum,
    trapezoid_weights,
    wrap_angle,
)

# The token axis of each scan argument that has one.
SEQ_AXIS = {"Q": 1, "K": 1, "V": 1, "Z": 1, "Angles": 1, "ADT": 2, "DT": 2, "Trap": 2}


def sequence_segments(seqlen: int, cu_seqlens: Tensor | None) -> list[tuple[int, int]]:
    """Token ranges ``[lo, hi)`` of the packed sequences (one range without packing)."""
    if cu_seqlens is None:
        return [(0, seqlen)]
    bounds = cu_seqlens.tolist()
    return list(zip(bounds[:-1], bounds[1:], strict=True))


def sequence_args(args: dict, lo: int, hi: int) -> dict:
    """Scan arguments cut to the tokens ``[lo, hi)``."""
    return {k: v.narrow(SEQ_AXIS[k], lo, hi - lo) if k in SEQ_AXIS and v is not None else v
            for k, v in args.items()}


def rotate_half_pairs(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate pairs ``(i, i + N/2)`` of the last axis by angle ``i`` for ``i < n_angles``."""
    n_angles, half = cos.shape[-1], x.shape[-1] // 2
    x0, x1 = x[..., :n_angles], x[..., half : half + n_angles]
    return torch.cat((x0 * cos - x1 * sin, x[..., n_angles:half],
                      x0 * sin + x1 * cos, x[..., half + n_angles :]), dim=-1)


def mimo_angle_increments(angles: Tensor, dt: Tensor) -> Tensor:
    """``tanh(angles) * dt * pi`` in float32, in this order (the official MIMO reference).

    ``angles`` (..., H, A) raw; ``dt`` (..., H)."""
    return torch.tanh(angles.float()) * dt.float().unsqueeze(-1) * math.pi


def heads_first(param: Tensor) -> Tensor:
    """(H, R, X) parameters as (R, H, X), the rank-major layout of the activations."""
    return param.transpose(0, 1)


def biased_rotated(x: Tensor, bias: Tensor, nheads: int, cos: Tensor, sin: Tensor,
                   cdt: torch.dtype) -> Tensor:
    """(..., R, G, N) -> (..., R, H, N): expand groups, add the (H, R, N) bias, rotate.

    ``cos``/``sin`` are (..., H, n_angles) and shared by all ranks."""
    x = expand_groups(x, nheads, x.dim() - 2).to(cdt) + heads_first(bias).to(cdt)
    return rotate_half_pairs(x, cos.unsqueeze(-3), sin.unsqueeze(-3))


def rank_values(V: Tensor, MIMO_V: Tensor, cdt: torch.dtype) -> Tensor:
    """(..., H, P) x (H, R, P) -> (..., R, H, P): ``v_r = V * MIMO_V[:, r]``."""
    return V.to(cdt).unsqueeze(-3) * heads_first(MIMO_V).to(cdt)


@dataclass
class MimoInputs:
    """Everything the scan needs per row, computed from the raw inputs (differentiable).

    ``q``, ``k`` (b, l, R, H, N); ``v`` (b, l, R, H, P); ``adt``, ``dt``, ``w``, ``gamma``
    (b, l, H) (``w`` the trapezoid weight of a token, ``gamma = lam*dt`` its own part);
    ``start`` (b, H, P, N) the state before the first token with the first token's
    beta term already added; ``theta`` (b, l, H, n_angles) float32 unreduced.
    """

    q: Tensor
    k: Tensor
    v: Tensor
    adt: Tensor
    w: Tensor
    gamma: Tensor
    start: Tensor
    theta: Tensor


def mimo_inputs(
    Q: Tensor, K: Tensor, V: Tensor, ADT: Tensor, DT: Tensor, Trap: Tensor,
    Q_bias: Tensor, K_bias: Tensor, Angles: Tensor, MIMO_V: Tensor,
    initial_state: Mamba3State | None = None,
) -> MimoInputs:
    """Biases, rotary, rank values and trapezoid weights of one sequence per batch row."""
    batch, _, _, _, d_state = Q.shape
    nheads, headdim = V.shape[2], V.shape[3]
    cdt = compute_dtype(V)
    # Angles in float32 as the official code computes them; the rest in ``cdt``.
    adt = ADT.to(cdt).transpose(1, 2)
    dt = DT.to(cdt).transpose(1, 2)
    lam = torch.sigmoid(Trap.to(cdt)).transpose(1, 2)
    theta = mimo_angle_increments(Angles, DT.transpose(1, 2)).cumsum(dim=1)
    if initial_state is not None:
        theta = theta + initial_state[0].unsqueeze(1)
    cos, sin = theta.to(cdt).cos(), theta.to(cdt).sin()
    q = biased_rotated(Q, Q_bias, nheads, cos, sin, cdt)
    k = biased_rotated(K, K_bias, nheads, cos, sin, cdt)
    v = rank_values(V, MIMO_V, cdt)
    w, _ = trapezoid_weights(dt, lam)
    gamma = lam * dt
    if initial_state is None:
        start = torch.zeros(batch, nheads, headdim, d_state, dtype=cdt, device=V.device)
    else:
        _, ssm0, k0, v0 = initial_state
        prev = torch.einsum("brhp,brhn->bhpn", rank_values(v0, MIMO_V, cdt), k0.to(cdt))
        start = ssm0.to(cdt) + ((1 - lam[:, 0]) * dt[:, 0])[..., None, None] * prev
    return MimoInputs(q, k, v, adt, w, gamma, start, theta)


def mimo_chunked_core(x: MimoInputs, chunk_size: int) -> Tensor:
    """Per-rank output ``h_t q_{t,r}`` (b, l, R, H, P), without the D term.

    Within a chunk, row (t, r) sees column (s, r') with weight ``w_s exp(sum a)`` for
    s < t and ``gamma_t`` for s = t; earlier chunks enter through their states.
    """
    q, k, v = x.q, x.k, x.v
    batch, seqlen, _, nheads, _ = q.shape
    cdt = q.dtype
    n_chunks = -(-seqlen // chunk_size)
    pad = n_chunks * chunk_size - seqlen

    def chunked(t: Tensor) -> Tensor:
        t = F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad))
        return t.unflatten(1, (n_chunks, chunk_size))

    qc, kc, vc = chunked(q), chunked(k), chunked(v)  # (b, c, T, R, H, .)
    adt_c = chunked(x.adt).permute(0, 3, 1, 2)  # (b, H, c, T)
    w_c = chunked(x.w).permute(0, 3, 1, 2)
    gamma_c = chunked(x.gamma).permute(0, 3, 1, 2)
    acum = adt_c.cumsum(dim=-1)

    decay = torch.exp(segsum(adt_c)).to(cdt) * w_c.unsqueeze(-2)  # (b, H, c, t, s)
    diagonal = torch.eye(chunk_size, dtype=torch.bool, device=q.device)
    weights = torch.where(diagonal, gamma_c.unsqueeze(-1).to(cdt), decay)
    scores = torch.einsum("bctrhn,bcsqhn->bhctrsq", qc, kc) * weights[:, :, :, :, None, :, None]
    y = torch.einsum("bhctrsq,bcsqhp->bctrhp", scores, vc)

    to_end = torch.exp(acum[..., -1:] - acum).to(cdt) * w_c
    chunk_states = torch.einsum("bhcs,bcsrhn,bcsrhp->bchpn", to_end, kc, vc)
    states = torch.cat((x.start.to(cdt).unsqueeze(1), chunk_states), dim=1)
    chunk_decay = torch.exp(segsum(F.pad(acum[..., -1], (1, 0)))).to(cdt)
    states_in = torch.einsum("bhzc,bchpn->bzhpn", chunk_decay[..., :-1, :], states)
    y = y + torch.einsum("bctrhn,bchpn,bhct->bctrhp", qc, states_in, torch.exp(acum).to(cdt))
    return y.flatten(1, 2)[:, :seqlen]


def mimo_final_ssm(x: MimoInputs) -> Tensor:
    """State after the last token (b, H, P, N), float32 or float64.

    The R rows of a token are laid out as R consecutive positions of which only the
    first carries the decay, so SISO's ``final_ssm_state`` sums ranks and tokens alike.
    """
    batch, seqlen, rank, nheads, _ = x.k.shape
    adt = F.pad(x.adt.unsqueeze(2), (0, 0, 0, rank - 1)).flatten(1, 2)
    w = x.w.unsqueeze(2).expand(-1, -1, rank, -1).flatten(1, 2)
    ssm = final_ssm_state(x.start, adt, w, x.k.flatten(1, 2), x.v.flatten(1, 2))
    return ssm.to(torch.promote_types(ssm.dtype, torch.float32))


def mimo_epilogue(
    y: Tensor, v: Tensor, D: Tensor | None, Z: Tensor | None, MIMO_Z: Tensor | None,
    MIMO_O: Tensor | None, Norm_Weight: Tensor | None, eps: float = 1e-5,
) -> Tensor:
    """Per-rank y (..., R, H, P) -> output: D skip, optional headwise RMSNorm (over P, per
    rank), gate ``silu(Z * MIMO_Z[r])``, then the ``MIMO_O`` contraction over ranks
    (``MIMO_O=None`` keeps the rank axis)."""
    if D is not None:
        y = y + D.to(y.dtype)[:, None] * v
    if Norm_Weight is not None:
        y = y * torch.rsqrt(y.pow(2).mean(-1, keepdim=True) + eps) * Norm_Weight.to(y.dtype)
    if Z is not None:
        if MIMO_Z is None:
            raise ValueError("Z needs MIMO_Z (nheads, rank, headdim)")
        y = y * F.silu(rank_values(Z, MIMO_Z, y.dtype))
    if MIMO_O is None:
        return y
    return torch.einsum("...rhp,hrp->...hp", y, MIMO_O.to(y.dtype))


def mamba3_mimo_scan_reference(
    Q: Tensor,
    K: Tensor,
    V: Tensor,
    ADT: Tensor,
    DT: Tensor,
    Trap: Tensor,
    Q_bias: Tensor,
    K_bias: Tensor,
    Angles: Tensor,
    MIMO_V: Tensor,
    MIMO_O: Tensor | None,
    D: Tensor | None = None,
    Z: Tensor | None = None,
    MIMO_Z: Tensor | None = None,
    Norm_Weight: Tensor | None = None,
    initial_state: Mamba3State | None = None,
    return_final_state: bool = False,
    chunk_size: int = 16,
) -> Tensor | tuple[Tensor, Mamba3State]:
    """Chunked MIMO scan, vectorised over tokens, ranks, chunks, heads and batch."""
    x = mimo_inputs(Q, K, V, ADT, DT, Trap, Q_bias, K_bias, Angles, MIMO_V, initial_state)
    y = mimo_chunked_core(x, chunk_size)
    out = mimo_epilogue(y, x.v, D, Z, MIMO_Z, MIMO_O, Norm_Weight).to(V.dtype)
    if not return_final_state:
        return out
    k_last = x.k[:, -1].to(Q.dtype)
    return out, (torch.remainder(x.theta[:, -1], TWO_PI), mimo_final_ssm(x), k_last, V[:, -1])


def mamba3_mimo_step_reference(
    Q: Tensor,
    K: Tensor,
    V: Tensor,
    ADT: Tensor,
    DT: Tensor,
    Trap: Tensor,
    Q_bias: Tensor,
    K_bias: Tensor,
    Angles: Tensor,
    MIMO_V: Tensor,
    MIMO_O: Tensor | None,
    state: Mamba3State,
    D: Tensor | None = None,
    Z: Tensor | None = None,
    MIMO_Z: Tensor | None = None,
    Norm_Weight: Tensor | None = None,
) -> tuple[Tensor, Mamba3State]:
    """One decoding step. Inputs drop the seqlen axis: Q, K (b, R, G, N), V, Z (b, H, P),
    ADT, DT, Trap (b, H), Angles (b, H, A). Returns ``(y, new_state)``; the input state
    is not modified. The new angle is reduced mod 2*pi (the same rotation)."""
    nheads = V.shape[1]
    angle, ssm, k_prev, v_prev = state
    cdt = compute_dtype(V)
    theta = wrap_angle(angle + mimo_angle_increments(Angles, DT).to(angle.dtype))
    cos, sin = theta.to(cdt).cos(), theta.to(cdt).sin()
    q = biased_rotated(Q, Q_bias, nheads, cos, sin, cdt)
    k = biased_rotated(K, K_bias, nheads, cos, sin, cdt)
    v = rank_values(V, MIMO_V, cdt)
    dt = DT.to(cdt)
    lam = torch.sigmoid(Trap.to(cdt))
    alpha = torch.exp(ADT.to(cdt))
    beta = ((1 - lam) * dt * alpha)[..., None, None]
    gamma = (lam * dt)[..., None, None]
    outer_prev = torch.einsum("brhp,brhn->bhpn", rank_values(v_prev, MIMO_V, cdt), k_prev.to(cdt))
    outer_now = torch.einsum("brhp,brhn->bhpn", v, k)
    new_ssm = alpha[..., None, None] * ssm.to(cdt) + beta * outer_prev + gamma * outer_now
    y = torch.einsum("bhpn,brhn->brhp", new_ssm, q)
    out = mimo_epilogue(y, v, D, Z, MIMO_Z, MIMO_O, Norm_Weight).to(V.dtype)
    return out, (theta, new_ssm.to(ssm.dtype), k.to(k_prev.dtype), V.to(v_prev.dtype))
