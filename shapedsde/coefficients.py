"""Public SDE coefficients of a block: ``drift`` and ``diffusion_cov``, raw or normalised."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.core import Tracer

from .blocks.base import Block
from .normalize import ito_diffusion_cov, ito_drift, rms
from .validation import check_covariance, check_normalize


def _prepare(block: Block, V: object, normalize: object) -> Array:
    if not isinstance(block, Block):
        raise TypeError(f"block must be a shapedsde Block, got {type(block).__name__}")
    block.require_sde()
    check_normalize(normalize)
    if isinstance(V, Tracer):  # inside the user's jit: no host-side checks possible
        return V
    Vc = check_covariance(V, "V")
    dtype = np.asarray(V).dtype if np.asarray(V).dtype == np.float64 else np.float32
    return jnp.asarray(Vc, dtype=jax.dtypes.canonicalize_dtype(dtype))


def drift(block: Block, V: Array, normalize: str | None = None) -> Array:
    """Per-unit-time drift b(V) = lim n E[V_{l+1} - V_l | V_l = V], shape (m, m).

    With ``normalize="rms"`` the drift of the normalised process at the correlation matrix of
    V (Ito's formula, ``shapedsde.normalize``): V is first mapped to its correlation matrix.
    """
    V = _prepare(block, V, normalize)
    if normalize is None:
        return block.drift(V)
    rho = rms(V)
    return ito_drift(rms, block.drift(rho), block.diffusion_cov(rho), rho)


def diffusion_cov(block: Block, V: Array, normalize: str | None = None) -> Array:
    """Diffusion Sigma(V)_{abcd} = lim n Cov[dV_ab, dV_cd | V], shape (m, m, m, m).

    With ``normalize="rms"`` the diffusion of the normalised process at the correlation
    matrix of V; its rows and columns for diagonal entries vanish.
    """
    V = _prepare(block, V, normalize)
    if normalize is None:
        return block.diffusion_cov(V)
    rho = rms(V)
    return ito_diffusion_cov(rms, block.diffusion_cov(rho), rho)
