"""The hand-written products of ``shapedsde.linalg`` against ``@``."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from shapedsde.linalg import cholesky, congruence, fused_matmul, matmul, mirror_lower


@pytest.mark.parametrize("m", [3, 7, 8])
def test_products_match_matmul(m: int) -> None:
    k1, k2 = jax.random.split(jax.random.key(0))
    a = jax.random.normal(k1, (5, m, m))
    b = jax.random.normal(k2, (5, m, m))  # b[3]: a right factor for congruence
    ref = np.asarray(a) @ np.asarray(b)
    np.testing.assert_allclose(fused_matmul(a, b), ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(matmul(a, b), ref, rtol=1e-5, atol=1e-5)
    # N_i = L dW_i L^T for every i (fused below 8, two dot products from 8 on)
    N = congruence(a[0], b[:3])
    np.testing.assert_allclose(N, a[0] @ b[:3] @ a[0].T, rtol=1e-4, atol=1e-4)
    assert N.shape == (3, m, m) and jnp.isfinite(N).all()
    # a stored right factor (the solver passes L^T) is used as given: L dW_i R
    R = b[3]
    np.testing.assert_allclose(congruence(a[0], b[:3], R), a[0] @ b[:3] @ R, rtol=1e-4,
                               atol=1e-4)


@pytest.mark.parametrize("m", [3, 8, 9])  # unrolled Cholesky up to 8, LAPACK beyond
def test_cholesky_and_mirror_read_the_lower_triangle_only(m: int) -> None:
    """The solver's state holds V + dV unsymmetrised: only its lower triangle may matter."""
    A = np.random.default_rng(m).standard_normal((m, m))
    V = A @ A.T + np.eye(m)
    garbage = np.where(np.tri(m, dtype=bool), V, 1e3 * A)
    L, ok = cholesky(jnp.asarray(garbage[None], jnp.float32))
    assert bool(ok[0])
    np.testing.assert_allclose(L[0], np.linalg.cholesky(V), rtol=1e-4, atol=1e-4)
    np.testing.assert_array_equal(mirror_lower(jnp.asarray(garbage)), V.astype(np.float32))


@pytest.mark.parametrize("m", [2, 6, 8])
def test_cholesky_tolerates_rank_deficient_correlation_matrices(m: int) -> None:
    """Collapsed tokens give correlation matrices of rank < m. In float32 a plain factorisation
    divides rounding noise by the root of a tiny pivot: huge or infinite entries, the cause of
    the false blow-ups under "rms". The factor must stay finite with L L^T = V."""
    rng = np.random.default_rng(m)
    u = rng.standard_normal((m, 2))  # rank 2 (rank 1 for m = 2 after the last column is cut)
    u = u[:, : min(2, m - 1)]
    C = u @ u.T
    C = C / np.sqrt(np.outer(np.diag(C), np.diag(C)))
    batch = [C, np.ones((m, m)), C + 1e-7 * rng.standard_normal((m, m))]
    V = jnp.asarray(np.stack(batch), jnp.float32)
    L, ok = cholesky(V)
    assert bool(jnp.all(ok)) and bool(jnp.all(jnp.isfinite(L)))
    np.testing.assert_allclose(L @ jnp.swapaxes(L, 1, 2), mirror_lower(V), atol=2e-5)
    # outside the cone beyond rounding: still refused
    bad = np.ones((m, m)) - 1e-2 * np.eye(m)
    bad[0, 1] = bad[1, 0] = 1.0 + 1e-2
    assert not bool(cholesky(jnp.asarray(bad[None], jnp.float32))[1][0])


@pytest.mark.parametrize("m", [17, 32])
def test_lapack_cholesky_factorises_rank_deficient_matrices_with_a_small_shift(m: int) -> None:
    """From m = 9 on LAPACK factorises; from m = 17 on a nearly singular V (collapsed tokens,
    frequent from m = 16 on) is factorised as V + delta I, delta = SHIFT eps max_a sum_b |V_ab|,
    instead of falling back to an ``eigh`` (issue 26): its factor is finite and within 2 delta
    of V, and a V outside the cone beyond that is still refused."""
    from shapedsde.linalg import SHIFT

    rng = np.random.default_rng(m)
    u = rng.standard_normal((m, 2))
    C = u @ u.T
    C = C / np.sqrt(np.outer(np.diag(C), np.diag(C)))
    V = jnp.asarray(np.stack([C, np.ones((m, m))]), jnp.float32)
    L, ok = cholesky(V)
    assert bool(jnp.all(ok)) and bool(jnp.all(jnp.isfinite(L)))
    delta = SHIFT * np.finfo(np.float32).eps * np.abs(np.asarray(V)).sum(-1).max(-1)
    err = np.abs(np.asarray(L @ jnp.swapaxes(L, 1, 2)) - np.asarray(V)).max(axis=(1, 2))
    assert np.all(err <= 2 * delta), (err, delta)
    bad = np.ones((m, m)) - 1e-2 * np.eye(m)
    bad[0, 1] = bad[1, 0] = 1.0 + 1e-2
    assert not bool(cholesky(jnp.asarray(bad[None], jnp.float32))[1][0])
