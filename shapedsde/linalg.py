"""Small linear-algebra helpers shared by every block (all pure JAX, batched by ``vmap``)."""

from __future__ import annotations

import jax.numpy as jnp
from jax import Array


def sym(V: Array) -> Array:
    """Symmetric part (V + V^T) / 2 of the last two axes."""
    return 0.5 * (V + jnp.swapaxes(V, -1, -2))


def centring(m: int, dtype=jnp.float32) -> Array:
    """H = I - 1 1^T / m, the projector orthogonal to the all-ones vector."""
    return jnp.eye(m, dtype=dtype) - jnp.full((m, m), 1.0 / m, dtype=dtype)


def lin(V: Array) -> Array:
    """Sym-Kronecker tensor Lin(V)_{ab,cd} = V_ac V_bd + V_ad V_bc, shape (m, m, m, m)."""
    return jnp.einsum("ac,bd->abcd", V, V) + jnp.einsum("ad,bc->abcd", V, V)


def psd_sqrt(V: Array) -> tuple[Array, Array]:
    """Symmetric square root of the PSD part of a symmetric V, and its smallest eigenvalue.

    ``L = Q diag(sqrt(max(lambda, 0))) Q^T`` so that ``L L^T`` is the projection of V onto the
    PSD cone (equal to V when V is PSD). Negative eigenvalues (V left the cone, e.g. after an
    Euler step) are clipped instead of producing NaN; the returned smallest eigenvalue lets the
    caller count such events.
    """
    lam, Q = jnp.linalg.eigh(sym(V))
    L = (Q * jnp.sqrt(jnp.clip(lam, 0.0))[..., None, :]) @ jnp.swapaxes(Q, -1, -2)
    return L, lam[..., 0]


def psd_project(V: Array) -> Array:
    """Nearest PSD matrix in Frobenius norm (eigenvalues clipped at zero)."""
    L, _ = psd_sqrt(V)
    return L @ L
