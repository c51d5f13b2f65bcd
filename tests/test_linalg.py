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
