"""Summary statistics of token covariance matrices V = X X^T / n.

Every function works on NumPy (or JAX) arrays of shape (..., m, m), is batched over the leading
axes, computes in float64 and returns NumPy arrays.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike, NDArray

__all__ = [
    "correlation",
    "distance_band",
    "distance_profile",
    "effective_rank",
    "offdiag_mean",
    "offdiag_pairs",
    "stable_rank",
]


def _as_square_batch(V: ArrayLike, name: str = "V") -> NDArray[np.float64]:
    """Convert ``V`` to a float64 array and check that its last two axes are square."""
    arr = np.asarray(V, dtype=np.float64)
    if arr.ndim < 2 or arr.shape[-1] != arr.shape[-2]:
        raise ValueError(
            f"{name} must have shape (..., m, m) with square last two axes, got {arr.shape}"
        )
    return arr


def _eigvalsh(V: NDArray[np.float64]) -> NDArray[np.float64]:
    """Eigenvalues of the symmetric part (V + V^T)/2, ascending, shape (..., m)."""
    return np.linalg.eigvalsh(0.5 * (V + np.swapaxes(V, -1, -2)))


def _ratio(V_ab: NDArray[np.float64], d_a: NDArray[np.float64],
           d_b: NDArray[np.float64]) -> NDArray[np.float64]:
    """V_ab / sqrt(d_a d_b), 0 where d_a d_b <= 0, clipped to [-1, 1] (elementwise)."""
    prod = d_a * d_b
    ok = prod > 0
    rho = np.divide(V_ab, np.sqrt(np.where(ok, prod, 1.0)), where=ok, out=np.zeros_like(prod))
    return np.clip(rho, -1.0, 1.0)


def correlation(V: ArrayLike) -> NDArray[np.float64]:
    """Correlation matrix rho_ab = V_ab / sqrt(V_aa V_bb), shape (..., m, m).

    The diagonal is exactly 1. Where V_aa V_bb <= 0 (a token with zero or negative variance)
    the correlation is undefined; it is set to 0 so the output never contains NaN. Entries are
    clipped to [-1, 1] to remove rounding excursions (and non-PSD inputs).
    """
    V = _as_square_batch(V)
    d = np.diagonal(V, axis1=-2, axis2=-1)
    rho = _ratio(V, d[..., :, None], d[..., None, :])
    m = V.shape[-1]
    rho[..., np.arange(m), np.arange(m)] = 1.0
    return rho


def pair_correlations(V: ArrayLike) -> NDArray[np.float64]:
    """The entries rho_ab, a < b, of ``correlation`` (row by row), shape (..., m (m - 1) / 2):
    only those are computed."""
    V = _as_square_batch(V)
    a, b = np.triu_indices(V.shape[-1], k=1)
    d = np.diagonal(V, axis1=-2, axis2=-1)
    return _ratio(V[..., a, b], d[..., a], d[..., b])


def stable_rank(V: ArrayLike) -> NDArray[np.float64]:
    """Stable rank tr(V) / ||V||_2, shape (...).

    For PSD V the spectral norm is the largest eigenvalue, so the stable rank lies in [1, m]:
    it is m for V proportional to I and 1 for rank-one V. The zero matrix gives 0.
    """
    V = _as_square_batch(V)
    top = np.max(np.abs(_eigvalsh(V)), axis=-1)
    tr = np.trace(V, axis1=-2, axis2=-1)
    return np.divide(tr, top, where=top > 0, out=np.zeros_like(tr))


def effective_rank(V: ArrayLike) -> NDArray[np.float64]:
    """Effective rank exp(H(p)) with p = lambda / sum(lambda) (Roy & Vetterli, 2007), shape (...).

    H(p) = -sum_i p_i log p_i is the Shannon entropy of the normalised spectrum, with
    eigenvalues clipped at 0 and 0 log 0 = 0. It equals m for V proportional to I and 1 for
    rank-one V. The zero matrix gives 0.
    """
    V = _as_square_batch(V)
    lam = np.clip(_eigvalsh(V), 0.0, None)
    total = lam.sum(axis=-1, keepdims=True)
    p = np.divide(lam, total, where=total > 0, out=np.zeros_like(lam))
    plogp = np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0)
    erank = np.exp(-plogp.sum(axis=-1))
    return np.where(total[..., 0] > 0, erank, 0.0)


def offdiag_pairs(m: int) -> list[tuple[int, int]]:
    """Index pairs (a, b) with 0 <= a < b < m, in row-major order."""
    if m < 0:
        raise ValueError(f"m must be non-negative, got {m}")
    return [(a, b) for a in range(m) for b in range(a + 1, m)]


def distance_band(d: int) -> tuple[int, int]:
    """The dyadic band (low, high) of token distances that holds d >= 1: (1, 1), (2, 2),
    (3, 4), (5, 8), ...: how tables and plots summarise many tokens (8 bands at m = 128)."""
    if d < 1:
        raise ValueError(f"a token distance is >= 1, got {d}")
    high = 1 << (d - 1).bit_length()
    return (high // 2 + 1 if high > 1 else 1), high


def distance_profile(rho: ArrayLike) -> NDArray[np.float64]:
    """Mean of rho[a, a + d] over a, for d = 1, ..., m - 1: shape (..., m - 1). Under a
    causal mask (or any structure by position) correlations depend on the token distance."""
    rho = _as_square_batch(rho, name="rho")
    m = rho.shape[-1]
    return np.stack([np.diagonal(rho, d, axis1=-2, axis2=-1).mean(-1) for d in range(1, m)],
                    axis=-1) if m > 1 else np.zeros((*rho.shape[:-2], 0))


def offdiag_mean(rho: ArrayLike) -> NDArray[np.float64]:
    """Mean of the off-diagonal entries (a != b) of rho, shape (...).

    For m = 1 there are no off-diagonal entries and the result is 0 (not NaN).
    """
    rho = _as_square_batch(rho, name="rho")
    m = rho.shape[-1]
    if m < 2:
        return np.zeros(rho.shape[:-2])
    total = rho.sum(axis=(-2, -1)) - np.trace(rho, axis1=-2, axis2=-1)
    return total / (m * (m - 1))
