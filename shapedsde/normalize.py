r"""RMS normalisation and the Ito-transformed ("normalised") SDE, by JAX autodiff.

If every block is followed by the map f(V) = D^{-1/2} V D^{-1/2} (D = diag V), the covariance
lives on correlation matrices and, by Ito's formula at a correlation matrix rho,

    b_norm(rho)     = Df(rho)[b(rho)] + 1/2 sum_{ij,kl} d^2 f / dV_ij dV_kl  Sigma(rho)_{ijkl},
    Sigma_norm(rho) = Df(rho) Sigma(rho) Df(rho)^T,
    noise_norm      = Df(rho)[noise].

Df and D^2f come from ``jax.jvp``, so any block that provides ``drift`` and ``diffusion_cov``
gets its normalised SDE for free (SPEC section 3). ``f`` may be replaced by any smooth map.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
from jax import Array

MatrixMap = Callable[[Array], Array]


def rms(V: Array) -> Array:
    """f(V) = D^{-1/2} V D^{-1/2}: the covariance after RMS-normalising every token."""
    s = jax.lax.rsqrt(jnp.diagonal(V, axis1=-2, axis2=-1))
    return V * s[..., :, None] * s[..., None, :]


def _basis(m: int, dtype) -> Array:
    """The m^2 unit matrices E_kl, shape (m^2, m, m)."""
    return jnp.eye(m * m, dtype=dtype).reshape(m * m, m, m)


def ito_drift(f: MatrixMap, b: Array, Sigma: Array, V: Array) -> Array:
    """Drift of f(V_t) at V: Df(V)[b] + 1/2 <D^2 f(V), Sigma>, cost O(m^2) jvp-of-jvp."""
    m = V.shape[0]
    first = jax.jvp(f, (V,), (b,))[1]

    def second(E: Array, S: Array) -> Array:  # sum_ij d/dV_ij (df/dV_kl) S_ij for E = E_kl
        return jax.jvp(lambda W: jax.jvp(f, (W,), (E,))[1], (V,), (S,))[1]

    Sig_cols = jnp.moveaxis(Sigma.reshape(m, m, m * m), -1, 0)  # [kl] -> Sigma[:, :, k, l]
    return first + 0.5 * jnp.sum(jax.vmap(second)(_basis(m, V.dtype), Sig_cols), axis=0)


def ito_diffusion_cov(f: MatrixMap, Sigma: Array, V: Array) -> Array:
    """Covariance of Df(V)[dV] when Cov(dV) = Sigma: Df Sigma Df^T, shape (m, m, m, m)."""
    m = V.shape[0]

    def push(T: Array) -> Array:  # apply Df to each of the m^2 matrices T[k] (k flattened)
        return jax.vmap(lambda X: jax.jvp(f, (V,), (X,))[1])(T)

    left = push(jnp.moveaxis(Sigma.reshape(m, m, m * m), -1, 0))  # [kl, a, b]
    left = jnp.moveaxis(left, 0, -1).reshape(m * m, m, m)  # [ab, k, l]
    return push(left).reshape(m, m, m, m)


def ito_noise(f: MatrixMap, V: Array, dV_noise: Array) -> Array:
    """Noise of f(V_t): Df(V)[dV_noise]."""
    return jax.jvp(f, (V,), (dV_noise,))[1]
