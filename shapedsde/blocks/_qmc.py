r"""A fixed quasi-Monte Carlo rule for Gaussian expectations (the NNGP kernel of attention).

``nngp_layer`` of standard attention needs E_S[A V A^T], an integral over the m x m logits S of
one head. In token space S = L P L^T (L L^T = V), where P is

* P = Z, iid m x m standard normal, in the Gaussian limit (key_dim=None): then
  Cov(S_ab, S_cd) = V_ac V_bd;
* P = Z_q Z_k^T / sqrt(k) with Z_q, Z_k iid m x k for a finite key width k, sampled as
  G T^T / sqrt(k) with G iid m x m and T the Bartlett factor of a Wishart_m(I, k)
  (``reduced.gaussian_product``; for k < m, Z_q and Z_k themselves).

``logit_points`` returns N = 2^16 points P_i from one scrambled Sobol sequence (seed 0) pushed
through the inverse normal and chi CDFs, so the rule is deterministic and E[f(P)] is
approximated by the plain average of f(P_i). The points are cached (one array per (m, key_dim)).
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import stats
from scipy.stats import qmc

N_POINTS = 2**16
"""Number of quasi-Monte Carlo points of the rule (a power of two, as Sobol needs)."""
SEED = 0
"""Seed of the Owen scrambling of the Sobol sequence: the rule is one fixed set of points."""


def _sobol_uniforms(n_points: int, dim: int) -> np.ndarray:
    """(n_points, dim) scrambled Sobol points in (0, 1)."""
    u = qmc.Sobol(dim, scramble=True, seed=SEED).random_base2(int(np.log2(n_points)))
    return np.clip(u, 1e-12, 1.0 - 1e-12)  # a scrambled point is never exactly 0; be safe


@functools.lru_cache(maxsize=8)
def logit_points(m: int, key_dim: int | None, n_points: int = N_POINTS) -> np.ndarray:
    """The points P_i, shape (n_points, m, m), float64 and read-only: S = L P_i L^T are the
    logits of one head at the quadrature nodes (see the module docstring)."""
    if key_dim is None:
        P = stats.norm.ppf(_sobol_uniforms(n_points, m * m)).reshape(n_points, m, m)
    elif key_dim < m:
        Z = stats.norm.ppf(_sobol_uniforms(n_points, 2 * m * key_dim))
        Z = Z.reshape(n_points, 2, m, key_dim)
        P = Z[:, 0] @ np.swapaxes(Z[:, 1], -1, -2) / np.sqrt(key_dim)
    else:
        n_low = m * (m - 1) // 2
        u = _sobol_uniforms(n_points, m * m + n_low + m)
        G = stats.norm.ppf(u[:, : m * m]).reshape(n_points, m, m)
        T = np.zeros((n_points, m, m))
        rows, cols = np.tril_indices(m, -1)
        T[:, rows, cols] = stats.norm.ppf(u[:, m * m: m * m + n_low])
        dof = key_dim - np.arange(m)  # Bartlett: T_ii^2 ~ chi^2(k - i)
        T[:, np.arange(m), np.arange(m)] = np.sqrt(stats.chi2.ppf(u[:, m * m + n_low:], dof))
        P = G @ np.swapaxes(T, -1, -2) / np.sqrt(key_dim)
    P.setflags(write=False)
    return P
