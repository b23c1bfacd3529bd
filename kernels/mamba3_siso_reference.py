"""PyTorch reference of the Mamba-3 SISO scan: chunked prefill and single-token step.

This is the CPU path and the oracle for the Triton kernels. Tensor conventions
follow the official ``mamba_ssm`` scan (see ``shared/golden/README.md``):

- ``Q``, ``K``: (batch, seqlen, ngroups, d_state), the C and B projections after
  their RMSNorm, before bias and rotary. Head ``h`` uses group ``h // (H / G)``.
- ``V``: (batch, seqlen, nheads, headdim); ``Z`` likewise (optional gate).
- ``ADT``, ``DT``, ``Trap``: (batch, nheads, seqlen); ``Trap`` is raw (pre-sigmoid).
- ``Q_bias``, ``K_bias``: (nheads, d_state).
- ``Angles``: (batch, seqlen, nheads, n_angles), raw (pre-tanh).
- States ``(angle, ssm, k, v)``: (b, H, n_angles), (b, H, P, N) float32,
  (b, H, N) rotated biased k of the last token, (b, H, P) its v.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

Mamba3State = tuple[Tensor, Tensor, Tensor, Tensor]

TWO_PI = 2 * math.pi


def compute_dtype(t: Tensor) -> torch.dtype:
    """float64 stays float64; every other dtype computes in float32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def expand_groups(x: Tensor, nheads: int, dim: int) -> Tensor:
    """Repeat B/C groups so that head ``h`` sees group ``h // (nheads / ngroups)``."""
    ngroups = x.shape[dim]
    if nheads % ngroups:
        raise ValueError(f"nheads ({nheads}) must be a multiple of ngroups ({ngroups})")
    return x if ngroups == nheads else x.repeat_interleave(nheads // ngroups, dim=dim)


def rotate_adjacent_pairs(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate pairs (2i, 2i+1) of the last axis by angle i for i < n_angles; keep the rest."""
    n_angles = cos.shape[-1]
    head, tail = x[..., : 2 * n_angles], x[..., 2 * n_angles :]
    pairs = head.unflatten(-1, (n_angles, 2))
    x0, x1 = pairs[..., 0], pairs[..., 1]
    rotated = torch.stack((x0 * cos - x1 * sin, x0 * sin + x1 * cos), dim=-1).flatten(-2)
    return torch.cat((rotated, tail), dim=-1)


def angle_increments(angles: Tensor, dt: Tensor) -> Tensor:
    """``pi * tanh(angles) * dt`` in float32, as the official kernels compute it.

    ``angles`` (..., H, A) raw; ``dt`` (..., H).
    """
    return (torch.tanh(angles) * math.pi).float() * dt.float().unsqueeze(-1)


def wrap_angle(theta: Tensor) -> Tensor:
    """Reduce angles to [0, 2*pi)."""
    return theta - TWO_PI * torch.floor(theta / TWO_PI)


def segsum(x: Tensor) -> Tensor:
    """``out[..., i, j] = sum(x[..., j+1 : i+1])`` for j <= i, ``-inf`` above the diagonal.

    Built by a masked cumulative sum rather than a difference of cumulative sums,
    so that long sums of large decays keep their precision.
    """
    T = x.shape[-1]
    x = x.unsqueeze(-1).expand(*x.shape, T)
    strictly_lower = torch.ones(T, T, dtype=torch.bool, device=x.device).tril(-1)
    sums = x.masked_fill(~strictly_lower, 0).cumsum(dim=-2)
    lower = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
    return sums.masked_fill(~lower, -torch.inf)


def trapezoid_weights(dt: Tensor, lam: Tensor) -> tuple[Tensor, Tensor]:
    """Per-token weights of the chunked form, both (b, l, H).

    ``w_s = lam_s dt_s + (1 - lam_{s+1}) dt_{s+1}`` and the part that belongs to the
    next token, ``shifted_s = (1 - lam_{s+1}) dt_{s+1}`` (zero for the last token).
    """
    beta_next = F.pad(((1 - lam) * dt)[:, 1:], (0, 0, 0, 1))
    return lam * dt + beta_next, beta_next


def mamba3_scan_reference(
    Q: Tensor,
    K: Tensor,
    V: Tensor,
    ADT: Tensor,
    DT: Tensor,
    Trap: Tensor,
    Q_bias: Tensor,
    K_bias: Tensor,
    Angles: Tensor,
    D: Tensor | None = None,
    Z: Tensor | None = None,
    initial_state: Mamba3State | None = None,
    return_final_state: bool = False,
    chunk_size: int = 64,
) -> Tensor | tuple[Tensor, Mamba3State]:
    """Chunked Mamba-3 SISO scan; vectorised over tokens, chunks, heads and batch."""
    batch, seqlen, _, d_state = Q.shape
    nheads, headdim = V.shape[2], V.shape[3]
    cdt = compute_dtype(V)

    q = expand_groups(Q, nheads, 2).to(cdt) + Q_bias.to(cdt)
    k = expand_groups(K, nheads, 2).to(cdt) + K_bias.to(cdt)
    v = V.to(cdt)
    # Decays and step sizes are float32, as in the official kernels (and goldens).
    adt = ADT.float().transpose(1, 2)  # (b, l, H)
    dt = DT.float().transpose(1, 2)
    lam = torch.sigmoid(Trap.to(cdt)).transpose(1, 2)

    theta = angle_increments(Angles, DT.transpose(1, 2)).cumsum(dim=1)
    if initial_state is not None:
        theta = theta + initial_state[0].unsqueeze(1)
    theta = wrap_angle(theta)
    cos, sin = theta.cos().to(cdt), theta.sin().to(cdt)
    q = rotate_adjacent_pairs(q, cos, sin)
    k = rotate_adjacent_pairs(k, cos, sin)

    w, beta_next = trapezoid_weights(dt, lam)

    # Chunk the sequence; padding tokens have zero decay and zero weight.
    n_chunks = -(-seqlen // chunk_size)
    pad = n_chunks * chunk_size - seqlen

    def chunked(x: Tensor) -> Tensor:
        x = F.pad(x, (0, 0) * (x.dim() - 2) + (0, pad))
        return x.unflatten(1, (n_chunks, chunk_size))

    qc, kc, vc = chunked(q), chunked(k), chunked(v)  # (b, c, C, H, .)
    adt_c = chunked(adt).permute(0, 3, 1, 2)  # (b, H, c, C)
    w_c = chunked(w).permute(0, 3, 1, 2)
    acum = adt_c.cumsum(dim=-1)

    # Intra-chunk "attention": q_t.k_s * w_s * exp(sum_{r=s+1..t} a_r).
    decay = torch.exp(segsum(adt_c)).to(cdt)  # (b, H, c, t, s)
    scores = torch.einsum("bcthn,bcshn->bhcts", qc, kc) * decay * w_c.unsqueeze(-2)
    y = torch.einsum("bhcts,bcshp->bcthp", scores, vc)

    # State of each chunk alone, then passed across chunks.
    to_end = torch.exp(acum[..., -1:] - acum).to(cdt) * w_c
    chunk_states = torch.einsum("bhcs,bcshn,bcshp->bchpn", to_end, kc, vc)
    if initial_state is None:
        start = torch.zeros(batch, nheads, headdim, d_state, dtype=cdt, device=V.device)
    else:
        _, ssm0, k0, v0 = initial_state
        beta0 = ((1 - lam[:, 0]) * dt[:, 0])[..., None, None]
        start = ssm0.to(cdt) + beta0 * v0.to(cdt).unsqueeze(-1) * k0.to(cdt).unsqueeze(-2)
    states = torch.cat((start.unsqueeze(1), chunk_states), dim=1)
    chunk_decay = torch.exp(segsum(F.pad(acum[..., -1], (1, 0)))).to(cdt)  # (b, H, c+1, c+1)
    states_in = torch.einsum("bhzc,bchpn->bzhpn", chunk_decay[..., :-1, :], states)
    y = y + torch.einsum("bcthn,bchpn,bhct->bcthp", qc, states_in, torch.exp(acum).to(cdt))
    y = y.flatten(1, 2)[:, :seqlen]

    # The beta term of token t belongs to token t+1: take it back out of y_t.
    y = y - (beta_next * (q * k).sum(-1)).unsqueeze(-1) * v
    if D is not None:
        y = y + D.to(cdt)[:, None] * v
    if Z is not None:
        y = y * F.silu(Z.to(cdt))
    out = y.to(V.dtype)
    if not return_final_state:
        return out
    ssm = final_ssm_state(start, adt, w, k, v).to(torch.promote_types(cdt, torch.float32))
    return out, (theta[:, -1], ssm, k[:, -1].to(Q.dtype), V[:, -1])


def final_ssm_state(start: Tensor, adt: Tensor, w: Tensor, k: Tensor, v: Tensor) -> Tensor:
    """State after the last token, with decays ``exp(total - cumsum)`` from float32 sums
    exactly as the official reference forms them (the goldens carry its rounding).

    ``start`` (b, H, P, N); ``adt``, ``w`` (b, l, H); ``k`` (b, l, H, N); ``v`` (b, l, H, P).
    """
    total = adt.sum(dim=1)
    to_end = torch.exp(total.unsqueeze(1) - adt.cumsum(dim=1)).to(v.dtype) * w.to(v.dtype)
    contributions = torch.einsum("blh,blhn,blhp->bhpn", to_end, k, v)
    return start * torch.exp(total).to(start.dtype)[..., None, None] + contributions


def mamba3_step_reference(
    Q: Tensor,
    K: Tensor,
    V: Tensor,
    ADT: Tensor,
    DT: Tensor,
    Trap: Tensor,
    Q_bias: Tensor,
    K_bias: Tensor,
    Angles: Tensor,
    state: Mamba3State,
    D: Tensor | None = None,
    Z: Tensor | None = None,
) -> tuple[Tensor, Mamba3State]:
    """One decoding step. Inputs drop the seqlen axis: Q, K (b, G, N), V, Z (b, H, P),
    ADT, DT, Trap (b, H), Angles (b, H, A). Returns ``(y, new_state)``; the input
    state is not modified."""
    nheads = V.shape[1]
    angle, ssm, k_prev, v_prev = state
    cdt = compute_dtype(V)
    sdt = ssm.dtype

    theta = wrap_angle(angle + angle_increments(Angles, DT).to(angle.dtype))
    cos, sin = theta.cos().to(cdt), theta.sin().to(cdt)
    q = rotate_adjacent_pairs(expand_groups(Q, nheads, 1).to(cdt) + Q_bias.to(cdt), cos, sin)
    k = rotate_adjacent_pairs(expand_groups(K, nheads, 1).to(cdt) + K_bias.to(cdt), cos, sin)
    v = V.to(cdt)
    dt = DT.to(cdt)
    lam = torch.sigmoid(Trap.to(cdt))
    alpha = torch.exp(ADT.to(cdt))
    beta = (1 - lam) * dt * alpha
    gamma = lam * dt

    outer_prev = v_prev.to(cdt).unsqueeze(-1) * k_prev.to(cdt).unsqueeze(-2)
    outer_now = v.unsqueeze(-1) * k.unsqueeze(-2)
    new_ssm = (alpha[..., None, None] * ssm.to(cdt) + beta[..., None, None] * outer_prev
               + gamma[..., None, None] * outer_now)
    y = torch.einsum("bhpn,bhn->bhp", new_ssm, q)
    if D is not None:
        y = y + D.to(cdt)[:, None] * v
    if Z is not None:
        y = y * F.silu(Z.to(cdt))
    new_state = (theta, new_ssm.to(sdt), k.to(k_prev.dtype), V.to(v_prev.dtype))
    return y.to(V.dtype), new_state
