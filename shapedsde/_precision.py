"""float32 by default, float64 on request."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .validation import check_dtype


def resolve_dtype(dtype: str) -> jnp.dtype:
    """JAX dtype for "float32" or "float64"; the latter switches on ``jax_enable_x64``
    (a process-wide JAX setting) if it is not on yet."""
    check_dtype(dtype)
    if dtype == "float64" and not jax.config.jax_enable_x64:
        jax.config.update("jax_enable_x64", True)
    return jnp.dtype(dtype)
