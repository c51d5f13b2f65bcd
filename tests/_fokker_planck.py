"""Reference law of rho_12 for two tokens under "rms": the Fokker-Planck equation of the
one-dimensional SDE d rho = mu(rho) dt + sigma(rho) dB on [-1, 1], solved by finite volumes
(Crank-Nicolson, zero flux at +-1). Independent of the SDE solvers: only the Ito-transformed
coefficients of ``shapedsde.blocks.normalization`` at [[1, r], [r, 1]] enter."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from scipy.sparse import diags, identity
from scipy.sparse.linalg import splu

from shapedsde.blocks.normalization import ito_diffusion_cov, ito_drift, rms


def rho_law(block, T: float, cells: int = 4000, steps: int = 4000,
            t_start: float = 5e-4, rho0: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Cell edges and the CDF of rho_12(T) from rho_12(0) = rho0 (a Gaussian at t_start)."""
    def coefficients(r):
        V = jnp.array([[1.0, r], [r, 1.0]], jnp.float32)
        b = ito_drift(rms, block.drift(V), block.diffusion_cov(V), V)
        return b[0, 1], ito_diffusion_cov(rms, block.diffusion_cov(V), V)[0, 1, 0, 1]

    edges = np.linspace(-1.0, 1.0, cells + 1)
    h = edges[1] - edges[0]
    centres = 0.5 * (edges[1:] + edges[:-1])
    mu = np.asarray(jax.vmap(coefficients)(jnp.asarray(edges))[0], np.float64)
    s2 = np.asarray(jax.vmap(coefficients)(jnp.asarray(centres))[1], np.float64)
    # flux through inner edge e: mu_e (p_{e-1} + p_e) / 2 - (s2_e p_e - s2_{e-1} p_{e-1}) / 2h
    left = mu[1:-1] / 2 + s2[:-1] / (2 * h)
    right = mu[1:-1] / 2 - s2[1:] / (2 * h)
    main = np.zeros(cells)
    main[:-1] -= left / h
    main[1:] += right / h
    A = diags([left / h, main, -right / h], [-1, 0, 1], format="csc")
    mu0, s20 = (float(x) for x in coefficients(rho0))
    p = np.exp(-0.5 * (centres - rho0 - mu0 * t_start) ** 2 / (s20 * t_start))
    p /= p.sum() * h
    k = (T - t_start) / steps
    eye = identity(cells, format="csc")
    solve, explicit = splu((eye - 0.5 * k * A).tocsc()).solve, eye + 0.5 * k * A
    for _ in range(steps):
        p = solve(explicit @ p)
    return edges, np.concatenate([[0.0], np.cumsum(p) * h])


def reference_statistics(block, T: float, rho0: float = 0.0) -> np.ndarray:
    """(mean, q05, q50, q95) of rho_12(T) from rho_12(0) = rho0."""
    edges, cdf = rho_law(block, T, rho0=rho0)
    cdf /= cdf[-1]
    mean = float(np.sum(0.5 * (edges[1:] + edges[:-1]) * np.diff(cdf)))
    return np.array([mean, *np.interp([0.05, 0.5, 0.95], cdf, edges)])
