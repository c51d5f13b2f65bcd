r"""One-layer Monte Carlo moments of a block's finite layer (SPEC section 7, first check).

From X0 = sqrt(n) [L, 0] (Gram V) one layer with fresh weights gives dV = V' - V. Then

    n E[dV] -> b(V)   and   n Cov[dV] -> Sigma(V)   as n -> infinity.

The plain estimate of n E[dV] has O(sqrt n) fluctuations; every block returns with its layer a
control variate CV (the terms of V' - V that are first order in the weights and have mean
exactly zero, ``Block.layer_with_control``), and n (dV - CV) has the same mean with O(1)
fluctuations. Standard errors come with every estimate, so a check can be made at k SE.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from .._precision import full_precision
from ..blocks import Block, normalized
from ..blocks.normalization import rms
from ..validation import check_covariance, check_int, check_normalize, check_width
from .simulate import gram, initial_features


def one_layer_increments(block: Block, V: object, *, width: int, n_samples: int, key: Array,
                         normalize: str | None = None,
                         batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """(dV, CV) of shape (n_samples, m, m) in float64, sample i from ``fold_in(key, i)``."""
    V = check_covariance(V, "V")
    width = check_width(width, V.shape[0])
    block.check_tokens(V.shape[0])
    block.check_width(width)
    n_samples = check_int("n_samples", n_samples, low=2)
    if check_normalize(normalize) == "rms":
        block = normalized(block)
    if block.is_normalized:
        V = np.asarray(rms(jnp.asarray(V)), np.float64)
    X0 = jnp.asarray(initial_features(V, width), jnp.float32)
    keys = jax.vmap(jax.random.fold_in, (None, 0))(key, jnp.arange(n_samples))
    dV, cv = _increments(block, X0, keys, batch_size)
    return np.asarray(dV, np.float64), np.asarray(cv, np.float64)


@eqx.filter_jit
@full_precision
def _increments(block: Block, X0: Array, keys: Array, batch_size: int) -> tuple[Array, Array]:
    """Compiled once per (block, shapes): repeated calls reuse it."""
    V0 = gram(X0)

    def one(k: Array) -> tuple[Array, Array]:
        X1, cv = block.layer_with_control(k, X0)
        return gram(X1) - V0, cv

    return jax.lax.map(one, keys, batch_size=batch_size)


@dataclass(frozen=True)
class Estimate:
    """A Monte Carlo estimate with its standard error and per-sample contributions."""

    mean: np.ndarray
    se: np.ndarray
    samples: np.ndarray

    def projection(self, target: np.ndarray) -> tuple[float, float]:
        """s = <mean, target> / <target, target> (1 if the estimate equals the target) and its
        standard error, from the per-sample values (entries are correlated)."""
        denom = float(np.sum(target * target))
        per = np.tensordot(self.samples, target, axes=target.ndim) / denom
        return float(per.mean()), float(per.std(ddof=1) / math.sqrt(len(per)))

    def max_z(self, target: np.ndarray, atol_rel: float = 1e-3) -> float:
        """Largest |mean - target| / SE over the entries, after forgiving an absolute error of
        ``atol_rel * max|target|``: entries that the control variate or the normalisation fix
        exactly have SE ~ 0 and differ only by float32 rounding (~1e-5)."""
        excess = np.clip(np.abs(self.mean - target) - atol_rel * np.max(np.abs(target)), 0, None)
        z = np.divide(excess, self.se, out=np.where(excess > 0, np.inf, 0.0), where=self.se > 0)
        return float(np.max(z))


def drift_estimate(dV: np.ndarray, cv: np.ndarray, width: int) -> Estimate:
    """n E[dV] from n (dV - CV)."""
    r = width * (dV - cv)
    return Estimate(r.mean(0), r.std(0, ddof=1) / math.sqrt(len(r)), r)


def diffusion_estimate(dV: np.ndarray, width: int) -> Estimate:
    """n Cov[dV]: the mean of xi (x) xi, xi = sqrt(n) (dV - mean dV), shape (m, m, m, m)."""
    xi = math.sqrt(width) * (dV - dV.mean(0))
    prod = np.einsum("sab,scd->sabcd", xi, xi) * len(xi) / (len(xi) - 1)
    return Estimate(prod.mean(0), prod.std(0, ddof=1) / math.sqrt(len(xi)), prod)


def one_layer_moments(block: Block, V: object, *, width: int, n_samples: int, key: Array,
                      normalize: str | None = None) -> tuple[Estimate, Estimate]:
    """Monte Carlo estimates of (b(V), Sigma(V)) from the real finite layer at this width.

    Example::

        b_hat, S_hat = one_layer_moments(ShapedAttention(), V, width=256, n_samples=4000,
                                         key=jax.random.key(0))
        s, se = b_hat.projection(np.asarray(drift(ShapedAttention(), V)))  # s ~ 1 +- se
    """
    dV, cv = one_layer_increments(block, V, width=width, n_samples=n_samples, key=key,
                                  normalize=normalize)
    return drift_estimate(dV, cv, width), diffusion_estimate(dV, width)
