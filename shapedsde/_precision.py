"""float32 by default, float64 on request, and every matrix product at the precision asked for.

On a GPU, JAX's default precision for float32 matrix products is TF32 (a 10-bit mantissa):
measured on an H200 (``benchmarks/backend_agreement.py``, same key on the GPU and the CPU),
paths at 8 tokens then differed by 3e-3 of their scale, and at 32 tokens the path means by up
to 1.6 standard errors of 256 paths: a bias that more paths would resolve. At full precision
the same paths agreed to 2.5e-5 and the means to 0.23 SE. So every compiled function of the
package is traced under ``full_precision``; on a CPU, float32 products are full precision
anyway (the golden set is unchanged).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

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


_P = ParamSpec("_P")
_R = TypeVar("_R")


def full_precision(fn: Callable[_P, _R]) -> Callable[_P, _R]:
    """``fn`` traced with its matrix products at the full precision of their dtype (JAX's
    "highest"), whatever the backend's default; apply it under ``jit``."""

    @functools.wraps(fn)
    def traced(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with jax.default_matmul_precision("highest"):
            return fn(*args, **kwargs)

    return traced
