"""Pure ranking helpers: reciprocal-rank fusion and maximal marginal relevance."""

from __future__ import annotations

import numpy as np
import pytest

from mamba3_integrations.errors import InputError
from mamba3_integrations.stores import maximal_marginal_relevance, reciprocal_rank_fusion


def test_rrf_sums_reciprocal_ranks():
    fused = reciprocal_rank_fusion([["a", "b", "c"], ["c", "a"]], k=60)
    assert [id_ for id_, _ in fused] == ["a", "c", "b"]
    assert dict(fused)["a"] == pytest.approx(1 / 61 + 1 / 62)
    assert dict(fused)["c"] == pytest.approx(1 / 63 + 1 / 61)
    assert dict(fused)["b"] == pytest.approx(1 / 62)


def test_rrf_weights_and_ties():
    weighted = reciprocal_rank_fusion([["a"], ["b"]], weights=[0.2, 0.8])
    assert [id_ for id_, _ in weighted] == ["b", "a"]
    tied = reciprocal_rank_fusion([["x"], ["y"]])
    assert [id_ for id_, _ in tied] == ["x", "y"]
    assert reciprocal_rank_fusion([[], []]) == []
    with pytest.raises(InputError):
        reciprocal_rank_fusion([["a"]], weights=[1.0, 2.0])


def test_mmr_trades_relevance_for_diversity():
    query = np.array([1.0, 0.0, 0.0])
    candidates = np.array([[1.0, 0.0, 0.0], [0.99, 0.1, 0.0], [0.6, 0.0, 0.8]])
    assert maximal_marginal_relevance(query, candidates, 2, lambda_mult=1.0) == [0, 1]
    assert maximal_marginal_relevance(query, candidates, 2, lambda_mult=0.3) == [0, 2]
    assert sorted(maximal_marginal_relevance(query, candidates, 5)) == [0, 1, 2]
    assert maximal_marginal_relevance(query, candidates, 0) == []
    with pytest.raises(InputError):
        maximal_marginal_relevance(query, candidates, 2, lambda_mult=1.5)


def test_mmr_handles_zero_vectors():
    candidates = np.array([[0.0, 0.0], [1.0, 0.0]])
    assert maximal_marginal_relevance(np.array([1.0, 0.0]), candidates, 1) == [1]
