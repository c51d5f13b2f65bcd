"""Tests of shapedsde.analysis.metrics against hand-computed values and explicit loops."""

import re

import jax.numpy as jnp
import numpy as np
import pytest

from shapedsde.analysis.metrics import (
    correlation,
    effective_rank,
    offdiag_mean,
    offdiag_pairs,
    pair_correlations,
    stable_rank,
)


def wishart(rng: np.random.Generator, shape: tuple[int, ...], m: int, n: int) -> np.ndarray:
    """Draws of V = X X^T / n with X an m x n standard Gaussian matrix, shape (*shape, m, m)."""
    X = rng.standard_normal((*shape, m, n))
    return X @ np.swapaxes(X, -1, -2) / n


def test_correlation_of_known_matrix():
    V = np.array([[4.0, 2.0, -3.0], [2.0, 9.0, 0.0], [-3.0, 0.0, 1.0]])
    rho = correlation(V)
    expected = np.array([[1.0, 1 / 3, -1.5], [1 / 3, 1.0, 0.0], [-1.5, 0.0, 1.0]])
    expected = np.clip(expected, -1, 1)  # V is not PSD: rho[0,2] = -1.5 is clipped
    np.testing.assert_allclose(rho, expected, rtol=1e-15)


def test_correlation_zero_variance_gives_zero_not_nan():
    V = np.array([[1.0, 0.0], [0.0, 0.0]])
    rho = correlation(V)
    assert not np.isnan(rho).any()
    np.testing.assert_array_equal(rho, np.eye(2))


def test_correlation_diagonal_exactly_one_and_in_range():
    V = wishart(np.random.default_rng(0), (50,), m=4, n=3)  # rank-deficient draws
    rho = correlation(V)
    np.testing.assert_array_equal(np.diagonal(rho, axis1=-2, axis2=-1), 1.0)
    assert np.all(np.abs(rho) <= 1.0)
    np.testing.assert_allclose(rho, np.swapaxes(rho, -1, -2))


def test_pair_correlations_are_the_upper_entries_of_correlation():
    V = wishart(np.random.default_rng(2), (6, 3), m=4, n=3)
    V[0, 0, 1, 1] = 0.0  # zero variance: 0, as in correlation
    V[1, 2, 0, 3] = V[1, 2, 3, 0] = 5.0  # not PSD: clipped, as in correlation
    a, b = np.triu_indices(4, k=1)
    pairs = pair_correlations(V)
    assert pairs.shape == (6, 3, 6)
    np.testing.assert_array_equal(pairs, correlation(V)[..., a, b])
    with pytest.raises(ValueError, match="square"):
        pair_correlations(np.ones((3, 4)))


@pytest.mark.parametrize("fn", [correlation, stable_rank, effective_rank])
def test_batching_equals_loop(fn):
    V = wishart(np.random.default_rng(1), (3, 4), m=5, n=7)
    batched = fn(V)
    looped = np.array([[fn(V[i, j]) for j in range(4)] for i in range(3)])
    assert batched.shape == looped.shape == (3, 4, *np.shape(fn(V[0, 0])))
    np.testing.assert_allclose(batched, looped, rtol=1e-12)


@pytest.mark.parametrize("fn", [correlation, stable_rank, effective_rank, offdiag_mean])
def test_accepts_jax_and_returns_numpy(fn):
    V = wishart(np.random.default_rng(2), (2,), m=3, n=10)
    out = fn(jnp.asarray(V, dtype=jnp.float32))
    assert isinstance(out, np.ndarray)
    np.testing.assert_allclose(out, fn(V), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("m", [1, 2, 5])
def test_ranks_of_identity_and_rank_one(m):
    u = np.arange(1.0, m + 1)
    assert stable_rank(3.0 * np.eye(m)) == pytest.approx(m)
    assert effective_rank(3.0 * np.eye(m)) == pytest.approx(m)
    assert stable_rank(np.outer(u, u)) == pytest.approx(1.0)
    assert effective_rank(np.outer(u, u)) == pytest.approx(1.0)


def test_ranks_of_known_spectra():
    V = np.diag([3.0, 1.0, 0.0, 0.0])
    assert stable_rank(V) == pytest.approx(4.0 / 3.0)
    p = np.array([0.75, 0.25])
    assert effective_rank(V) == pytest.approx(np.exp(-(p * np.log(p)).sum()))
    assert effective_rank(np.diag([1.0, 1.0, 0.0])) == pytest.approx(2.0)
    # a tiny negative eigenvalue from rounding is clipped, not propagated as NaN
    assert effective_rank(np.diag([1.0, 1.0, -1e-12])) == pytest.approx(2.0)
    # rotation invariance: the ranks depend on the spectrum only
    Q, _ = np.linalg.qr(np.random.default_rng(3).standard_normal((4, 4)))
    assert stable_rank(Q @ V @ Q.T) == pytest.approx(4.0 / 3.0)


def test_ranks_of_zero_matrix_are_zero():
    assert stable_rank(np.zeros((3, 3))) == 0.0
    assert effective_rank(np.zeros((3, 3))) == 0.0


def test_ranks_lie_between_one_and_m():
    V = wishart(np.random.default_rng(4), (100,), m=6, n=8)
    for r in (stable_rank(V), effective_rank(V)):
        assert r.shape == (100,)
        assert np.all((r >= 1 - 1e-12) & (r <= 6 + 1e-12))
    # stable rank = exp(min-entropy of p) <= exp(Shannon entropy of p) = effective rank
    assert np.all(stable_rank(V) <= effective_rank(V) + 1e-12)


def test_offdiag_pairs_and_mean():
    assert offdiag_pairs(1) == []
    assert offdiag_pairs(3) == [(0, 1), (0, 2), (1, 2)]
    assert len(offdiag_pairs(7)) == 21
    rho = np.array([[1.0, 0.2, 0.4], [0.2, 1.0, -0.3], [0.4, -0.3, 1.0]])
    assert offdiag_mean(rho) == pytest.approx(0.1)
    np.testing.assert_allclose(offdiag_mean(np.stack([rho, np.eye(3)])), [0.1, 0.0])
    assert offdiag_mean(np.ones((1, 1))) == 0.0


@pytest.mark.parametrize("fn", [correlation, stable_rank, effective_rank])
@pytest.mark.parametrize("shape", [(3,), (2, 3), (4, 2, 3)])
def test_non_square_input_rejected(fn, shape):
    with pytest.raises(ValueError, match=r"V must have shape .*" + re.escape(str(shape))):
        fn(np.zeros(shape))
