r"""Standard ReLU MLP residual sub-block (He scaling): a network-only baseline, no SDE limit.

Finite layer, hidden width n (= the width), phi(x) = sqrt(2) max(x, 0):

    X' = lambda X + gamma phi(X W_1 / sqrt n) W_2 / sqrt n,   lambda^2 + gamma^2 = 1.

Infinite width at fixed depth (SPEC section 8): the hidden features of tokens a, b are, per
column, jointly Gaussian with covariance V, so V' = lambda^2 V + gamma^2 K(V) with the
arc-cosine kernel of degree 1 (Cho and Saul 2009), cos theta_ab = rho_ab,

    K(V)_ab = 2 E[max(u_a, 0) max(u_b, 0)]
            = (1 / pi) sqrt(V_aa V_bb) (sin theta_ab + (pi - theta_ab) cos theta_ab),

so K_aa = V_aa (He scaling keeps the norms) while every correlation grows (K increases rho
towards 1): unlike the shaped MLP, the standard one changes V by O(1) at every layer and has
no covariance-SDE limit.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import Array

from ..validation import check_real
from ._reduced import Scalar, State, residual_state, token_factors
from .base import NoSDELimitError, WithoutSDE, residual_output


def arccos_kernel(V: Array) -> Array:
    """K(V)_ab = (1/pi) sqrt(V_aa V_bb) (sin theta + (pi - theta) cos theta), cos theta =
    rho_ab: the covariance 2 E[max(u, 0) max(u, 0)^T] of u ~ N(0, V)."""
    d = jnp.sqrt(jnp.diagonal(V))
    scale = jnp.outer(d, d)
    rho = jnp.clip(V / scale, -1.0, 1.0)
    theta = jnp.arccos(rho)
    return scale * (jnp.sqrt(jnp.clip(1.0 - rho * rho, 0.0)) + (math.pi - theta) * rho) / math.pi


class StandardMLP(WithoutSDE):
    """Standard ReLU MLP residual sub-block with He scaling, phi(x) = sqrt(2) max(x, 0); hidden
    width equals the width. Finite network and infinite width only (no SDE limit)."""

    gamma: Scalar  # a leaf, not static: see Block and traced_parameters

    has_reduced = True
    has_nngp = True

    def __init__(self, gamma: float = 0.5):
        self.gamma = check_real("gamma", gamma, low=0.0, high=1.0)

    @staticmethod
    def activation(Y: Array) -> Array:
        """phi(Y) = sqrt(2) max(Y, 0) (He scaling: E[phi(u)^2] = E[u^2])."""
        return math.sqrt(2.0) * jnp.maximum(Y, 0.0)

    # -- finite layer --------------------------------------------------------------------
    def layer_with_control(self, key: Array, X: Array) -> tuple[Array, Array]:
        """The finite layer; its branch control variate gamma^2 (F F^T / n - K(V)) has
        conditional mean exactly zero (E[F F^T / n | X] = K(V))."""
        n = X.shape[1]
        k1, k2 = jax.random.split(key)
        F = self.activation(X @ jax.random.normal(k1, (n, n), X.dtype) / math.sqrt(n))
        branch_cv = self.gamma**2 * (F @ F.T / n - arccos_kernel(X @ X.T / n))
        W2 = jax.random.normal(k2, (n, n), X.dtype)
        return residual_output(X, F, W2, self.gamma, branch_cv)

    def reduced_layer(self, key: Array, V: State, width: int) -> State:
        # X W_1 / sqrt(n) = L Z_1 in law (Z_1 iid m x n): O(m^2 n), as for the shaped MLP
        k1, k2 = jax.random.split(key)
        L, L_P = token_factors(V)  # (root(V), None), or rows of the joint root
        F = self.activation(L @ jax.random.normal(k1, (L.shape[1], width), L.dtype))
        return residual_state(k2, V, L, L_P, F / math.sqrt(width), self.gamma, width)

    # -- infinite width at fixed depth ---------------------------------------------------
    def nngp_layer(self, V: Array) -> Array:
        """V' = lambda^2 V + gamma^2 K(V), K the arc-cosine kernel (closed form, exact)."""
        return V + self.gamma**2 * (arccos_kernel(V) - V)

    # -- no SDE limit --------------------------------------------------------------------
    def no_sde_error(self) -> NoSDELimitError:
        return NoSDELimitError(
            "StandardMLP has no covariance-SDE limit (its ReLU is not shaped towards the "
            "identity, so every layer moves V by O(1)): simulate it with simulate_network or "
            "nngp_kernel, or use ShapedMLP")

