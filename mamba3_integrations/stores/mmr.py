"""Maximal marginal relevance: pick results that are relevant and unlike each other."""

from __future__ import annotations

import numpy as np

from mamba3_integrations.errors import InputError


def maximal_marginal_relevance(
    query: np.ndarray, candidates: np.ndarray, k: int, lambda_mult: float = 0.5
) -> list[int]:
    """Indices of ``k`` rows of ``candidates`` chosen greedily, best first.

    Each step takes the candidate maximising ``lambda_mult * sim(query, c) - (1 - lambda_mult)
    * max sim(c, already chosen)`` with cosine similarity: 1 favours relevance only, 0 diversity.
    """
    if not 0.0 <= lambda_mult <= 1.0:
        raise InputError(f"lambda_mult must be between 0 and 1, got {lambda_mult}.")
    count = min(k, len(candidates))
    if count <= 0:
        return []
    unit = _normalise(np.asarray(candidates, dtype=np.float64))
    relevance = unit @ _normalise(np.asarray(query, dtype=np.float64)[None, :])[0]
    redundancy = np.full(len(unit), -np.inf)
    available = np.ones(len(unit), dtype=bool)
    chosen: list[int] = []
    for _ in range(count):
        penalty = np.where(np.isfinite(redundancy), redundancy, 0.0)
        score = lambda_mult * relevance - (1.0 - lambda_mult) * penalty
        score[~available] = -np.inf
        best = int(np.argmax(score))
        chosen.append(best)
        available[best] = False
        redundancy = np.maximum(redundancy, unit @ unit[best])
    return chosen


def _normalise(rows: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    return rows / np.where(norms == 0, 1.0, norms)
