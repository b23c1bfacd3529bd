"""Reciprocal-rank fusion of several rankings into one."""

from __future__ import annotations

from collections.abc import Sequence

from mamba3_integrations.errors import InputError

DEFAULT_RRF_K = 60
"""The constant of Cormack et al. (2009); larger values flatten the influence of top ranks."""


def reciprocal_rank_fusion(
    rankings: Sequence[Sequence[str]],
    weights: Sequence[float] | None = None,
    k: int = DEFAULT_RRF_K,
) -> list[tuple[str, float]]:
    """Fuse rankings of ids (best first) into ``(id, score)`` pairs, best first.

    An id at 1-based rank ``r`` in ranking ``i`` scores ``weights[i] / (k + r)``; scores add up
    across rankings. Ties keep the order in which ids were first met.
    """
    if weights is None:
        weights = [1.0] * len(rankings)
    if len(weights) != len(rankings):
        raise InputError(f"Got {len(weights)} weights for {len(rankings)} rankings.")
    scores: dict[str, float] = {}
    for ranking, weight in zip(rankings, weights, strict=True):
        for rank, id_ in enumerate(ranking, start=1):
            scores[id_] = scores.get(id_, 0.0) + weight / (k + rank)
    return sorted(scores.items(), key=lambda item: -item[1])
