"""Deterministic helpers shared by the tests: coefficients, and a toy block."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

import shapedsde as sd
from shapedsde.blocks import Block
from shapedsde.linalg import psd_sqrt


class ToyBlock(Block):
    """Identity-like coefficients and layer, for tests of the Block contract and of input
    checks; it declares no capabilities (a subclass declares them, or fails to on purpose)."""

    n_noise = 1

    def drift(self, V):
        return V

    def diffusion_cov(self, V):
        return V

    def noise_from(self, V, N):
        return N[0]

    def layer_with_control(self, key, X):
        return X, X


def noise_covariance(block: sd.Block, V: jax.Array, solver_root: bool = False) -> jax.Array:
    """sum_i u_i (x) u_i over the unit Brownian directions u_i = noise(V, L, e_i). With
    ``solver_root`` L is the Cholesky factor and L^T is passed stored, as ``solve_sde`` does;
    otherwise L is the symmetric root."""
    m = V.shape[0]
    if solver_root:
        L = jnp.linalg.cholesky(V)
        LT = jnp.asarray(np.asarray(L).T)
    else:
        L, LT = psd_sqrt(V)[0], None
    basis = jnp.eye(block.n_noise * m * m).reshape(-1, block.n_noise, m, m)
    u = jax.vmap(lambda e: block.noise(V, L, e, LT))(basis)
    return jnp.einsum("iab,icd->abcd", u, u)


def fd_ito(block, V64: np.ndarray, h: float = 1e-4) -> tuple[np.ndarray, np.ndarray]:
    """Ito coefficients of f(V) = D^-1/2 V D^-1/2 with Df, D^2f from central differences in
    float64 over the m^2 entries (no autodiff), Sigma from diffusion_cov."""
    m = V64.shape[0]

    def f(W):
        d = np.sqrt(np.diag(W))
        return W / np.outer(d, d)

    E = np.eye(m * m).reshape(m * m, m, m)
    J = np.stack([(f(V64 + h * e) - f(V64 - h * e)) / (2 * h) for e in E])  # [ij, a, b]
    Hs = np.empty((m * m, m * m, m, m))
    for p, ep in enumerate(E):
        for q, eq in enumerate(E):
            Hs[p, q] = (f(V64 + h * (ep + eq)) - f(V64 + h * (ep - eq))
                        - f(V64 - h * (ep - eq)) + f(V64 - h * (ep + eq))) / (4 * h * h)
    b = np.asarray(block.drift(jnp.asarray(V64, jnp.float32)), np.float64).reshape(m * m)
    S = np.asarray(block.diffusion_cov(jnp.asarray(V64, jnp.float32)), np.float64)
    S = S.reshape(m * m, m * m)
    drift = np.einsum("pab,p->ab", J, b) + 0.5 * np.einsum("pqab,pq->ab", Hs, S)
    diff = np.einsum("pab,pq,qcd->abcd", J, S, J)
    return drift, diff


FAMILY_LEVEL = 0.01


def assert_ks_family(final: sd.Comparison, kind: str) -> None:
    """Every informative KS test of ``kind`` ("rho" or "V") has p >= FAMILY_LEVEL / (number of
    tests): Bonferroni, so two samples of one law fail with probability <= FAMILY_LEVEL whatever
    the seed (the plain p >= 0.01 on the smallest of 6-10 correlated p-values fails falsely up
    to 6-10% of the time)."""
    rows = [r for r in final.select(kind=kind) if not r.degenerate]
    assert rows, f"no informative {kind} comparison"
    p = min(r.pvalue for r in rows)
    assert p >= FAMILY_LEVEL / len(rows), f"min p = {p:.3g} < {FAMILY_LEVEL} / {len(rows)}"
