"""Public SDE coefficients of a block: ``drift`` and ``diffusion_cov``, raw or normalised."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.core import Tracer

from ..blocks import Block, normalized
from ..blocks.normalization import rms
from ..validation import check_covariance, check_normalize


def _prepare(block: object, V: object, normalize: object) -> tuple[Block, Array]:
    """The block (normalised for "rms") and V as a JAX array (its correlation matrix where the
    block is normalised)."""
    if not isinstance(block, Block):
        raise TypeError(f"block must be a shapedsde Block, got {type(block).__name__}")
    block.require_sde()
    if check_normalize(normalize) == "rms":
        block = normalized(block)
    if not isinstance(V, Tracer):  # inside the user's jit no host-side check is possible
        Vc = check_covariance(V, "V")
        dtype = np.asarray(V).dtype if np.asarray(V).dtype == np.float64 else np.float32
        V = jnp.asarray(Vc, dtype=jax.dtypes.canonicalize_dtype(dtype))
    return block, rms(V) if block.is_normalized else V


def drift(block: Block, V: Array, normalize: str | None = None) -> Array:
    """Per-unit-time drift b(V) = lim n E[V_{l+1} - V_l | V_l = V], shape (m, m).

    With ``normalize="rms"`` (or a normalised block, ``sd.Normalized``) the drift of the
    normalised process at the correlation matrix of V (Ito's formula,
    ``shapedsde.blocks.normalization``): V is first mapped to its correlation matrix.
    """
    block, V = _prepare(block, V, normalize)
    return block.drift(V)


def diffusion_cov(block: Block, V: Array, normalize: str | None = None) -> Array:
    """Diffusion Sigma(V)_{abcd} = lim n Cov[dV_ab, dV_cd | V], shape (m, m, m, m).

    With ``normalize="rms"`` the diffusion of the normalised process at the correlation
    matrix of V; its rows and columns for diagonal entries vanish.
    """
    block, V = _prepare(block, V, normalize)
    return block.diffusion_cov(V)
