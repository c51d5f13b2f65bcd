r"""RMS normalisation, as a block that wraps another: ``Normalized(block)`` is the block followed
by rescaling every token to norm sqrt(n) (an RMSNorm without gain, SPEC section 2).

On covariances the normalisation is the map f(V) = D^{-1/2} V D^{-1/2} (D = diag V) onto
correlation matrices, so every side of the wrapped block gets its normalised form here:

* finite layer: X' = rms_rows(block(X)); the block's control variate CV (mean zero) is pushed
  through Df(V), still of mean zero;
* reduced layer, infinite-width maps: V' = f(block's V') (with a positional embedding the
  reduced state is the joint Gram of [X; P], whose cross Gram C is rescaled by D^{-1/2});
* SDE (Ito's formula at a correlation matrix rho, SPEC section 3):

      b_norm(rho)     = Df(rho)[b(rho)] + 1/2 sum_{ij,kl} d^2 f / dV_ij dV_kl  Sigma(rho)_{ijkl},
      Sigma_norm(rho) = Df(rho) Sigma(rho) Df(rho)^T,    noise_norm = Df(rho)[noise],

  with Df and D^2f from ``jax.jvp``: any block that gives ``drift`` and ``diffusion_cov`` gets
  its normalised SDE for free.

``normalized(block)`` normalises after every sub-block of a ``Serial`` composition, as the
finite network does (for the SDE this is the same as normalising once per block: the Ito
corrections of independent sub-blocks add).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import Array

from ._reduced import JointGram, State
from .base import Block, NoNNGPLimitError, NoSDELimitError

MatrixMap = Callable[[Array], Array]


def rms(V: Array) -> Array:
    """f(V) = D^{-1/2} V D^{-1/2}: the covariance after RMS-normalising every token."""
    s = jax.lax.rsqrt(jnp.diagonal(V, axis1=-2, axis2=-1))
    return V * s[..., :, None] * s[..., None, :]


def rms_reduced(Z: State) -> State:
    """f on a reduced state: V -> f(V); for a joint Gram of [X; P] also C -> D^{-1/2} C (the
    rows of X are rescaled, P is not)."""
    if not isinstance(Z, JointGram):
        return rms(Z)
    s = jax.lax.rsqrt(jnp.diagonal(Z.V))
    return JointGram(V=Z.V * s[:, None] * s[None, :], C=Z.C * s[:, None], Pi=Z.Pi)


def rms_rows(X: Array) -> Array:
    """RMS normalisation without gain: rescale every row (token) of X to norm sqrt(width)."""
    return X * jax.lax.rsqrt(jnp.mean(X * X, axis=-1, keepdims=True))


def rms_state(V: Array, L: Array) -> tuple[Array, Array]:
    """f on a batch V (B, m, m) with a square root L (L L^T = V): f(V) with its diagonal set to
    exactly 1, and the matching root D^{-1/2} L (the SDE solver's state after a step)."""
    s = jax.lax.rsqrt(jnp.clip(jnp.diagonal(V, axis1=1, axis2=2), jnp.finfo(V.dtype).tiny))
    V = V * s[:, :, None] * s[:, None, :]
    V = jnp.where(jnp.eye(V.shape[1], dtype=bool), jnp.ones((), V.dtype), V)
    return V, s[:, :, None] * L


def _basis(m: int, dtype: Any) -> Array:
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


class Normalized(Block):
    """``block`` followed by RMS normalisation of every token (module docstring). Its SDE
    coefficients are the Ito-transformed ones, at a correlation matrix."""

    block: Block

    def __init__(self, block: Block):
        if not isinstance(block, Block):
            raise TypeError(f"block must be a shapedsde Block, got {type(block).__name__}")
        if isinstance(block, Normalized):
            raise TypeError("block is already normalised")
        self.block = block

    # -- capabilities: those of the wrapped block, except the congruence factors (the Ito
    # form has none; the solver steps the wrapped block and projects instead)
    @property
    def has_sde(self) -> bool:
        return self.block.has_sde

    @property
    def has_reduced(self) -> bool:
        return self.block.has_reduced

    @property
    def has_nngp(self) -> bool:
        return self.block.has_nngp

    @property
    def max_heads(self) -> int:
        return self.block.max_heads

    @property
    def is_normalized(self) -> bool:
        return True

    @property
    def noise_is_congruence(self) -> bool:
        return self.block.noise_is_congruence

    @property
    def position_embedding(self) -> Any:
        return self.block.position_embedding

    def check_tokens(self, m: int) -> None:
        self.block.check_tokens(m)

    def unnormalized(self) -> Block:
        return self.block

    def no_sde_error(self) -> NoSDELimitError:
        return self.block.no_sde_error()

    def no_nngp_error(self) -> NoNNGPLimitError:
        return self.block.no_nngp_error()

    def check_width(self, width: int) -> None:
        self.block.check_width(width)

    def reduced_width_traceable(self, width: int, m: int) -> bool:
        return self.block.reduced_width_traceable(width, m)

    # -- finite layers -------------------------------------------------------------------
    def layer_with_control(self, key: Array, X: Array) -> tuple[Array, Array]:
        X1, cv = self.block.layer_with_control(key, X)
        return rms_rows(X1), jax.jvp(rms, (X @ X.T / X.shape[-1],), (cv,))[1]

    def reduced_layer(self, key: Array, V: State, width: Any) -> State:
        return rms_reduced(self.block.reduced_layer(key, V, width))

    def nngp_layer(self, V: Array) -> Array:
        return rms(self.block.nngp_layer(V))

    def infinite_width_layer(self, key: Array, V: Array) -> Array:
        return rms(self.block.infinite_width_layer(key, V))

    # -- SDE: Ito's formula ----------------------------------------------------------------
    @property
    def n_noise(self) -> int:
        return self.block.n_noise

    def drift(self, V: Array) -> Array:
        return ito_drift(rms, self.block.drift(V), self.block.diffusion_cov(V), V)

    def diffusion_cov(self, V: Array) -> Array:
        return ito_diffusion_cov(rms, self.block.diffusion_cov(V), V)

    def noise(self, V: Array, L: Array, dW: Array, LT: Array | None = None) -> Array:
        return ito_noise(rms, V, self.block.noise(V, L, dW, LT))

    def noise_from(self, V: Array, N: Array) -> Array:
        return ito_noise(rms, V, self.block.noise_from(V, N))

    def config(self) -> dict[str, Any]:
        return {"kind": "Normalized", "block": self.block.config()}


def normalized(block: Block) -> Block:
    """``block`` with RMS normalisation after each of its sub-blocks (as the finite network
    normalises): ``Normalized(block)``, or for a ``Serial`` composition the composition of its
    normalised layers. Blocks already normalised are returned as they are."""
    from .serial import Serial

    if block.is_normalized:
        return block
    if isinstance(block, Serial):
        return Serial(*(normalized(layer) for layer in block.layers))
    return Normalized(block)
