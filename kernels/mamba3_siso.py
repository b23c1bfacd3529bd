"""Public Mamba-3 SISO scan and decode step: dispatch between Triton and the reference."""

from __future__ import annotations

from torch import Tensor

from mamba3_integrations.kernels.mamba3_siso_reference import (
    Mamba3State,
    mamba3_scan_reference,
    mamba3_step_reference,
)


def _check_scan_shapes(Q: Tensor, K: Tensor, V: Tensor, ADT: Tensor, Angles: Tensor) -> None:
    if Q.dim() != 4 or K.shape != Q.shape:
        raise ValueError(f"Q and K must both be (batch, seqlen, ngroups, d_state); got "
                         f"{tuple(Q.shape)} and {tuple(K.shape)}")
    if V.dim() != 4 or V.shape[:2] != Q.shape[:2]:
        raise ValueError(f"V must be (batch, seqlen, nheads, headdim) matching Q's first two "
                         f"axes {tuple(Q.shape[:2])}; got {tuple(V.shape)}")
    b, seqlen, nheads = V.shape[0], V.shape[1], V.shape[2]
    if seqlen == 0:
        raise ValueError("the scan needs at least one token (seqlen is 0)")
    if ADT.shape != (b, nheads, seqlen):
        raise ValueError(f"ADT, DT and Trap must be (batch, nheads, seqlen) = "
                         f"{(b, nheads, seqlen)}; got {tuple(ADT.shape)}")
    if Angles.shape[:3] != (b, seqlen, nheads) or 2 * Angles.shape[3] > Q.shape[3]:
        raise ValueError(f"Angles must be (batch, seqlen, nheads, n_angles) with "
                         f"2*n_angles <= d_state; got {tuple(Angles.shape)}")


def mamba3_scan(
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
    """Mamba-3 SISO scan over a whole sequence (prefill).

    Shapes as in ``shared/golden/README.md``; states are ``(angle, ssm, k, v)``.
    Returns ``out`` (b, l, H, P), or ``(out, final_state)`` with ``return_final_state``.
    """
    _check_scan_shapes(Q, K, V, ADT, Angles)
    return mamba3_scan_reference(
        Q, K, V, ADT, DT, Trap, Q_bias, K_bias, Angles, D=D, Z=Z,
        initial_state=initial_state, return_final_state=return_final_state,
        chunk_size=chunk_size,
    )


def mamba3_step(
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
    """One recurrent decode step (inputs without the seqlen axis); returns ``(y, new_state)``."""
    return mamba3_step_reference(Q, K, V, ADT, DT, Trap, Q_bias, K_bias, Angles, state, D=D, Z=Z)
