r"""Exact reduced sampling of one residual sub-block on m x m matrices (SPEC section 4).

Every weight matrix is fresh iid Gaussian, hence invariant under rotations of feature space, so
the law of V' given X depends on X only through V = L L^T. Rotating X to sqrt(n) [L, 0]:

* X W / sqrt(n) = L Z with Z iid (m x n_out): projections of X are Gaussian "in token space";
* a product of two such projections Z_q Z_k^T (m x n_k times n_k x m) equals in law G R with G
  iid m x m and R R^T ~ Wishart_m(I, n_k) (R from the Bartlett decomposition), because
  Z_k^T = Q R (QR) and Z_q Q is iid and independent of R;
* a residual branch gamma * L_M Z_out (L_M: m x p token-space factor of the branch's features,
  Z_out iid p x n) gives, splitting Z_out = [G_a, Z_b] at column m,
      n V' = (sqrt(n) lambda L + gamma L_M G_a)(...)^T + gamma^2 L_M (Z_b Z_b^T) L_M^T,
  with Z_b Z_b^T ~ Wishart_p(I, n - m) (Bartlett when n - m >= p, else sampled directly).

With a positional embedding P in the attention's queries and keys (``blocks.positions``) the
law of a layer depends on the joint Gram of [X; P], so the state is ``JointGram`` (V, the cross
Gram C = X P^T / n and Pi): the frame then has q = 2m coordinates, L is (m, q), and the cross
Gram follows from the head of X' alone (``residual_state``).

The cost is O(m^3 + p^3) per sub-block, independent of the width n. When no shape depends on
n (Bartlett factors, n_k >= m), the width may be a traced JAX scalar instead of a Python int, so
one compilation serves every width (``simulate_network`` does this where the block allows it,
see ``Block.reduced_width_traceable``).
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from ..linalg import psd_sqrt

Scalar = float | int | Array
"""A block parameter or a width: a Python number (static under jit) or a traced JAX scalar."""


def is_static(x: Scalar) -> bool:
    """Whether x is a plain Python (or NumPy) number, known when the code is traced."""
    return isinstance(x, (int, float, np.integer, np.floating))


def scalar_sqrt(x: Scalar) -> Scalar:
    """sqrt of a Python number in double precision (as ``math.sqrt``: the compiled code is the
    same as before parameters could be traced), or of a traced JAX scalar with ``jnp.sqrt``."""
    return math.sqrt(x) if is_static(x) else jnp.sqrt(x)


def wishart_factor(key: Array, p: int, dof: Scalar, dtype) -> Array:
    """A (p, q) matrix T with T T^T ~ Wishart_p(I, dof) (q = min(p, dof); zero if dof = 0).

    dof >= p: lower-triangular Bartlett factor, T_ii = sqrt(chi^2_{dof - i}) (i = 0..p-1),
    T_ij ~ N(0, 1) below the diagonal: O(p^2) draws instead of O(p dof).
    dof < p: T = Z with Z iid p x dof (the Wishart is singular; direct sampling is cheaper).
    A traced ``dof`` must be >= p (the caller guarantees it): only Bartlett has static shapes.
    """
    if is_static(dof) and dof <= 0:
        return jnp.zeros((p, 1), dtype)
    if is_static(dof) and dof < p:
        return jax.random.normal(key, (p, dof), dtype)
    k_diag, k_low = jax.random.split(key)
    chi2 = 2.0 * jax.random.gamma(k_diag, (dof - jnp.arange(p)) / 2.0, dtype=dtype)
    low = jnp.tril(jax.random.normal(k_low, (p, p), dtype), -1)
    return low + jnp.diag(jnp.sqrt(chi2))


def gaussian_product(key: Array, m: int, n_k: Scalar, dtype) -> Array:
    """A sample of Z_q Z_k^T for Z_q, Z_k iid m x n_k, shape (m, m), at cost O(m^3) (a traced
    ``n_k`` must be >= m)."""
    k_g, k_w = jax.random.split(key)
    if is_static(n_k) and n_k < m:
        Z = jax.random.normal(k_g, (2, m, n_k), dtype)
        return Z[0] @ Z[1].T
    G = jax.random.normal(k_g, (m, m), dtype)
    return G @ wishart_factor(k_w, m, n_k, dtype).T


def _head_tail(key: Array, L: Array, L_M: Array, gamma: Scalar,
               width: Scalar) -> tuple[Array, Array]:
    """(head, tail) of X' = lambda X + gamma * (branch with token factor L_M) Z_out / sqrt(n) in
    the rotated frame: X = sqrt(n) L [I_q, 0] O with L of shape (m, q) (q = m, or 2m when the
    frame also holds a positional embedding), head = sqrt(n) lambda L + gamma L_M G_a holds the
    first q coordinates of sqrt(n) X', and tail tail^T = gamma^2 L_M W L_M^T the Gram of the
    other n - q (W ~ Wishart(I, n - q))."""
    if L_M.shape[1] > L_M.shape[0]:
        L_M = root(L_M @ L_M.T)
    q = L.shape[1]
    p = L_M.shape[1]
    k_a, k_b = jax.random.split(key)
    lam = scalar_sqrt(1.0 - gamma**2)
    G_a = jax.random.normal(k_a, (p, q), L.dtype)
    head = scalar_sqrt(width) * lam * L + gamma * L_M @ G_a
    tail = gamma * L_M @ wishart_factor(k_b, p, width - q, L.dtype)
    return head, tail


def residual_gram(key: Array, L: Array, L_M: Array, gamma: Scalar, width: Scalar) -> Array:
    """V' of X' = lambda X + gamma * (branch with token factor L_M) Z_out / sqrt(n), exactly in
    law, where X X^T / n = L L^T and Z_out is the fresh iid output projection. The law depends
    on L_M only through L_M L_M^T, so a wide L_M (p > m, e.g. several heads) is first replaced
    by an m x m square root of it. A traced ``width`` must be >= 2 m (Bartlett tail)."""
    head, tail = _head_tail(key, L, L_M, gamma, width)
    return (head @ head.T + tail @ tail.T) / width


class JointGram(eqx.Module):
    """Reduced state of a network with a fixed positional embedding P (``blocks.positions``):
    V = X X^T / n, the cross Gram C = X P^T / n and Pi = P P^T / n. The law of the next layer
    depends on X and P only through this joint Gram of [X; P], so it is the exact reduced state
    (V alone is not: the logits see X + P, whose Gram is V + C + C^T + Pi)."""

    V: Array
    C: Array
    Pi: Array

    @classmethod
    def start(cls, V: Array, Pi: Array) -> JointGram:
        """The state with C = 0: P independent of the input (the simulators' convention)."""
        return cls(V=V, C=jnp.zeros_like(V), Pi=jnp.asarray(Pi, V.dtype))

    def matrix(self) -> Array:
        """The (2m, 2m) Gram of [X; P]."""
        return jnp.block([[self.V, self.C], [self.C.T, self.Pi]])


State = Array | JointGram
"""What a reduced layer maps: V, or the joint Gram where the network has positions."""


def token_factors(Z: State) -> tuple[Array, Array | None]:
    """(L, L_P): rows of one square root of the state's Gram. For V: (root(V), None), L of
    shape (m, m). For a ``JointGram``: the first m and last m rows of a root of the (2m, 2m)
    joint Gram, L L^T = V, L L_P^T = C, L_P L_P^T = Pi."""
    if isinstance(Z, JointGram):
        m = Z.V.shape[0]
        L_J = root(Z.matrix())
        return L_J[:m], L_J[m:]
    return root(Z), None


def residual_state(key: Array, Z: State, L: Array, L_P: Array | None, L_M: Array,
                   gamma: Scalar, width: Scalar) -> State:
    """The next state after a residual branch with token factor L_M (``residual_gram``), with
    (L, L_P) from ``token_factors(Z)``. For a joint state also C' = X' P^T / n =
    head L_P^T / sqrt(n): P keeps its coordinates, so only the head of X' meets it. A joint
    state needs width >= 2 m, and a traced width >= 3 m."""
    if L_P is None:
        return residual_gram(key, L, L_M, gamma, width)
    head, tail = _head_tail(key, L, L_M, gamma, width)
    V = (head @ head.T + tail @ tail.T) / width
    return JointGram(V=V, C=head @ L_P.T / scalar_sqrt(width), Pi=Z.Pi)


def state_covariance(Z: State) -> Array:
    """V of a reduced state."""
    return Z.V if isinstance(Z, JointGram) else Z


def root(V: Array) -> Array:
    """Square root used by the reduced layers (tolerates singular V)."""
    return psd_sqrt(V)[0]
