r"""Shaped MLP residual sub-block (shaped ReLU of Li, Nica and Roy, 2022).

Finite layer, hidden width n (= the width), s_pm = 1 + c_pm / sqrt(n):

    phi(x) = s_+ max(x, 0) + s_- min(x, 0),   c = sqrt(2 / (s_+^2 + s_-^2)),
    X'     = lambda X + gamma c phi(X W_1 / sqrt n) W_2 / sqrt n.

SDE limit (SPEC section 3), with rho_ab = V_ab / sqrt(V_aa V_bb):

    b(V)_ab  = gamma^2 nu(rho_ab) sqrt(V_aa V_bb),
    nu(rho)  = (c_+ - c_-)^2 / (2 pi) (sqrt(1 - rho^2) - rho arccos rho),
    Sigma(V) = 2 gamma^2 Lin(V),      cheap noise: gamma (N + N^T), N = L dW L^T.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jax import Array

from ..linalg import lin
from ..validation import check_real
from ._reduced import Scalar, State, residual_state, scalar_sqrt, token_factors
from .base import Block, residual_output


def nu(rho: Array, c_plus: Scalar, c_minus: Scalar) -> Array:
    """nu(rho) = (c_+ - c_-)^2 / (2 pi) (sqrt(1 - rho^2) - rho arccos rho); nu(1) = 0."""
    rho = jnp.clip(rho, -1.0, 1.0)
    return (c_plus - c_minus) ** 2 / (2 * math.pi) * (
        jnp.sqrt(jnp.clip(1.0 - rho * rho, 0.0)) - rho * jnp.arccos(rho))


class ShapedMLP(Block):
    """Shaped-ReLU MLP residual sub-block; hidden width equals the width."""

    # leaves, not static: see Block and traced_parameters
    gamma: Scalar
    c_plus: Scalar
    c_minus: Scalar

    has_sde = True
    has_reduced = True
    has_nngp = True

    def __init__(self, gamma: float = 0.5, c_plus: float = 0.0, c_minus: float = -1.0):
        self.gamma = check_real("gamma", gamma, low=0.0, high=1.0)
        self.c_plus = check_real("c_plus", c_plus)
        self.c_minus = check_real("c_minus", c_minus)

    def slopes(self, width: int) -> tuple[float, float]:
        """(a, d) with phi(y) = a y + d |y|: the mean and half-difference of s_+ and s_-."""
        s_plus = 1.0 + self.c_plus / math.sqrt(width)
        s_minus = 1.0 + self.c_minus / math.sqrt(width)
        return (s_plus + s_minus) / 2, (s_plus - s_minus) / 2

    def drift_factor(self, width: int) -> float:
        """n E[V' - V | V] of one finite layer equals drift_factor(n) * b(V) exactly:
        c^2 = 1 / (a^2 + d^2) = 1 - (c_+ + c_-) / sqrt(n) + O(1/n), so the finite MLP approaches
        its SDE drift only at rate n^{-1/2} (n d^2 = (c_+ - c_-)^2 / 4 holds at every n)."""
        a, d = self.slopes(width)
        return 1.0 / (a * a + d * d)

    def activation(self, Y: Array, width: int) -> Array:
        """c phi(Y) at hidden width n."""
        s_plus = 1.0 + self.c_plus / math.sqrt(width)
        s_minus = 1.0 + self.c_minus / math.sqrt(width)
        c = scalar_sqrt(2.0 / (s_plus**2 + s_minus**2))
        return c * (s_plus * jnp.maximum(Y, 0.0) + s_minus * jnp.minimum(Y, 0.0))

    # -- finite layer --------------------------------------------------------------------
    def layer_with_control(self, key: Array, X: Array) -> tuple[Array, Array]:
        n = X.shape[1]
        k1, k2 = jax.random.split(key)
        Y = X @ jax.random.normal(k1, (n, n), X.dtype) / math.sqrt(n)
        # c phi(y) = c (a y + d |y|) with a, d the mean and half-difference of the slopes, and
        # c^2 = 1 / (a^2 + d^2). Of gamma^2 (F F^T / n - V), the parts gamma^2 (Y Y^T / n - V)
        # and gamma^2 c^2 a d (Y |Y|^T + |Y| Y^T) / n have mean zero (E[y_a |y_b|] = 0); what
        # remains, gamma^2 c^2 d^2 (|Y| |Y|^T - Y Y^T) / n, carries the drift.
        a, d = self.slopes(n)
        YA = Y @ jnp.abs(Y).T
        branch_cv = self.gamma**2 * (Y @ Y.T - X @ X.T + a * d / (a * a + d * d) * (YA + YA.T)) / n
        W2 = jax.random.normal(k2, (n, n), X.dtype)
        return residual_output(X, self.activation(Y, n), W2, self.gamma, branch_cv)

    def reduced_layer(self, key: Array, V: State, width: int) -> State:
        # X W_1 / sqrt(n) = L Z_1 in law; residual_gram reduces F / sqrt(n) to an m x m root
        k1, k2 = jax.random.split(key)
        L, L_P = token_factors(V)  # (root(V), None), or rows of the joint root
        F = self.activation(L @ jax.random.normal(k1, (L.shape[1], width), L.dtype), width)
        return residual_state(k2, V, L, L_P, F / math.sqrt(width), self.gamma, width)

    def nngp_layer(self, V: Array) -> Array:
        """The identity: the slopes 1 + c_pm / sqrt(n) -> 1 make phi linear, so
        c^2 E[phi(u) phi(v)] -> E[u v] and V' = V at n = infinity. Nothing happens at fixed
        depth; the dynamics live at depth of order n (the SDE)."""
        return V

    # -- SDE coefficients ----------------------------------------------------------------
    @property
    def n_noise(self) -> int:
        return 1

    @property
    def has_noise_factor(self) -> bool:
        return True

    def drift(self, V: Array) -> Array:
        d = jnp.sqrt(jnp.diagonal(V))
        scale = jnp.outer(d, d)
        return self.gamma**2 * nu(V / scale, self.c_plus, self.c_minus) * scale

    def diffusion_cov(self, V: Array) -> Array:
        return 2.0 * self.gamma**2 * lin(V)

    def noise_from(self, V: Array, N: Array) -> Array:
        return self.gamma * (N[0] + N[0].T)

    def noise_factor(self, V: Array, L: Array, dW: Array) -> tuple[Array, Array]:
        """G = gamma dW_1, kappa = gamma^2 m."""
        return self.gamma * dW[0], self.gamma**2 * V.shape[0]
