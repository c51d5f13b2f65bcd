"""One-layer Monte Carlo moments of the real finite shaped-attention layer (SPEC section 7).

For a sample of fresh weights at X0 = sqrt(n) [L, 0] (Gram V), the increment dV = V' - V is
returned together with a control variate CV: the sum of the zero-mean first-order terms

    CV = lambda gamma (X B^T + B X^T) / n + gamma^2 (B B^T / n - V)
         + eps / sqrt(H) sum_h [lambda gamma (X B_h^T P1_h^T + P1_h B_h X^T)
                                + gamma^2 (P1_h B_h B^T + B B_h^T P1_h^T)] / n,

with eps = 1 / (tau0 sqrt n), B_h = X W^V_h / sqrt(n), B = sum_h B_h / sqrt(H) and P1_h the
first-order term of the shaped softmax (linear in S_h and independent of B_h, so every term has
mean zero). n (dV - CV) has the mean of n dV (the drift) but O(1) instead of O(sqrt n)
fluctuations; with "rms" the control variate is pushed through Df.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from shapedsde import ShapedAttention
from shapedsde.network import gram, initial_features
from shapedsde.normalize import rms


def _first_order_softmax(block: ShapedAttention, S: jax.Array) -> jax.Array:
    """P1 with softmax_row(eps S) = U + eps P1 + O(eps^2): P1_{a.} = S_{a.} C_a / k_a."""
    R = block._row_ops(S)  # C (m, m, m), k (m,), M (m, m)
    C, k, _ = R
    return jnp.einsum("ab,abc->ac", S, C) / k[:, None]


def increments(block: ShapedAttention, V: np.ndarray, width: int, n_samples: int, key,
               normalize: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(dV, CV), each (n_samples, m, m), from the real finite layer ``block.layer_parts``."""
    X0 = jnp.asarray(initial_features(V, width), jnp.float32)
    V0 = gram(X0)
    lam, g = math.sqrt(1 - block.gamma**2), block.gamma
    eps = 1.0 / (block.tau0 * math.sqrt(width))

    @jax.jit
    def one(k):
        S, A, B = block.layer_parts(k, X0)
        H = A.shape[0]
        X1 = lam * X0 + g * jnp.sum(A @ B, axis=0) / math.sqrt(H)
        Bs = jnp.sum(B, axis=0) / math.sqrt(H)
        P1 = jax.vmap(lambda s: _first_order_softmax(block, s))(S)
        PB = jnp.sum(P1 @ B, axis=0) / math.sqrt(H)  # first-order part of the branch
        first = lam * g * (X0 @ PB.T) + g**2 * (PB @ Bs.T)
        cv = lam * g * (X0 @ Bs.T + Bs @ X0.T) / width + g**2 * (Bs @ Bs.T / width - V0) \
            + eps * (first + first.T) / width
        V1 = gram(X1)
        if normalize == "rms":
            return rms(V1) - V0, jax.jvp(rms, (V0,), (cv,))[1]
        return V1 - V0, cv

    keys = jax.vmap(jax.random.fold_in, (None, 0))(key, jnp.arange(n_samples))
    dV, cv = jax.lax.map(one, keys, batch_size=256)
    return np.asarray(dV, np.float64), np.asarray(cv, np.float64)


def drift_estimate(dV: np.ndarray, cv: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """n E[dV] from n (dV - CV): mean and standard error, each (m, m)."""
    r = width * (dV - cv)
    return r.mean(0), r.std(0, ddof=1) / math.sqrt(len(r))


def diffusion_estimate(dV: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """n Cov[dV]: sample covariance tensor (m, m, m, m) and its standard error."""
    xi = math.sqrt(width) * (dV - dV.mean(0))
    prod = np.einsum("sab,scd->sabcd", xi, xi)
    n = len(xi)
    return prod.sum(0) / (n - 1), prod.std(0, ddof=1) / math.sqrt(n)


def projection(est: np.ndarray, se: np.ndarray, target: np.ndarray,
               samples: np.ndarray | None = None) -> tuple[float, float]:
    """Scalar s = <est, target> / <target, target> (1 when est = target) and its standard
    error, from the per-sample values when given (they are correlated across entries)."""
    denom = float(np.sum(target * target))
    s = float(np.sum(est * target)) / denom
    if samples is None:
        return s, float(np.sqrt(np.sum((se * target) ** 2))) / denom
    per = np.tensordot(samples, target, axes=target.ndim) / denom
    return s, float(per.std(ddof=1) / math.sqrt(len(per)))
