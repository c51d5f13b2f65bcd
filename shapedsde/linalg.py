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


def psd_parts(V: Array) -> tuple[Array, Array, Array]:
    """Projection of a symmetric V onto the PSD cone, its symmetric square root, and V's
    eigenvalues (ascending, unclipped), from one ``eigh``.

    Negative eigenvalues (V left the cone, e.g. after an Euler step) are clipped to zero instead
    of producing NaN; the returned eigenvalues let the caller detect and count such events.
    """
    lam, Q = jnp.linalg.eigh(sym(V))
    lam_c = jnp.clip(lam, 0.0)[..., None, :]
    Qt = jnp.swapaxes(Q, -1, -2)
    return (Q * lam_c) @ Qt, (Q * jnp.sqrt(lam_c)) @ Qt, lam


def psd_sqrt(V: Array) -> tuple[Array, Array]:
    """Symmetric square root L of the PSD part of V (L L^T = V when V is PSD) and V's smallest
    eigenvalue."""
    _, L, lam = psd_parts(V)
    return L, lam[..., 0]
