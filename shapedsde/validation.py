"""Input checks with error messages that name the parameter and its allowed range."""

from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np

NORMALIZATIONS = (None, "rms")


def check_real(name: str, value: object, *, low: float | None = None, high: float | None = None,
               low_open: bool = True, high_open: bool = False, allow_inf: bool = False) -> float:
    """Return ``float(value)`` after checking it is a finite real in the stated interval."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    v = float(value)
    if math.isnan(v) or (math.isinf(v) and not allow_inf):
        raise ValueError(f"{name} must be finite, got {v}")
    lo_bad = low is not None and (v <= low if low_open else v < low)
    hi_bad = high is not None and (v >= high if high_open else v > high)
    if lo_bad or hi_bad:
        lb = "(" if low_open or low is None else "["
        hb = ")" if high_open or high is None else "]"
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        raise ValueError(f"{name} must lie in {lb}{lo}, {hi}{hb}, got {v:g}")
    return v


def check_int(name: str, value: object, *, low: int) -> int:
    """Return ``int(value)`` after checking it is an integer >= low."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if int(value) < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {int(value)}")
    return int(value)


def check_normalize(normalize: object) -> str | None:
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be None or 'rms', got {normalize!r}")
    return normalize  # type: ignore[return-value]


def check_covariance(V0: object, name: str = "V0") -> np.ndarray:
    """Return V0 as a float64 (m, m) array after checking it is a valid token covariance.

    Valid means: finite, square with m >= 2, symmetric, positive semi-definite and with a
    strictly positive diagonal (every token has non-zero norm, so correlations exist).
    Tolerances are relative to the largest diagonal entry.
    """
    try:
        V = np.asarray(V0, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be an (m, m) array of reals: {err}") from None
    if V.ndim != 2 or V.shape[0] != V.shape[1]:
        raise ValueError(f"{name} must be a square (m, m) matrix, got shape {V.shape}")
    if V.shape[0] < 2:
        raise ValueError(f"{name} must have at least m = 2 tokens, got m = {V.shape[0]}")
    if not np.all(np.isfinite(V)):
        raise ValueError(f"{name} contains NaN or inf")
    scale = float(np.max(np.abs(V)))
    if scale == 0.0 or np.min(np.diag(V)) <= 0.0:
        raise ValueError(f"{name} must have a strictly positive diagonal (non-zero tokens)")
    tol = 1e-7 * scale
    asym = float(np.max(np.abs(V - V.T)))
    if asym > tol:
        raise ValueError(f"{name} must be symmetric, max |V - V^T| = {asym:.3g}")
    lam_min = float(np.linalg.eigvalsh(0.5 * (V + V.T))[0])
    if lam_min < -1e-6 * scale:
        raise ValueError(f"{name} must be positive semi-definite, smallest eigenvalue "
                         f"{lam_min:.3g}")
    return 0.5 * (V + V.T)


def check_width(width: object, m: int) -> int:
    """The width n must be an integer with n >= m (the tokens must fit in feature space)."""
    n = check_int("width", width, low=1)
    if n < m:
        raise ValueError(f"width must be >= number of tokens m = {m}, got {n}")
    return n


def check_dtype(dtype: object) -> str:
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    return dtype  # type: ignore[return-value]
