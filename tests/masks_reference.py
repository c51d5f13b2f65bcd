"""A plain NumPy (float64, explicit loops) evaluation of the shaped attention's SDE coefficients
for any mask and positional Gram, written from the formulas of ``docs/masks_and_positions.md``
entry by entry: the reference of the deterministic tests, and the targets (and wrong-coefficient
controls) of the one-layer Monte Carlo tests, at no JAX compilation."""

from __future__ import annotations

import numpy as np


def centrings(allowed: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    """Per-row centring C_a = diag(M_a) - M_a M_a^T / k_a and the counts k_a."""
    M = np.asarray(allowed, float)
    k = M.sum(axis=1)
    return [np.diag(M[a]) - np.outer(M[a], M[a]) / k[a] for a in range(len(M))], k


def reference_drift(V: np.ndarray, allowed: np.ndarray | None = None,
                    Pi: np.ndarray | None = None, gamma: float = 0.5,
                    tau0: float = 1.0) -> np.ndarray:
    """b = gamma^2 / tau0^2 [E[P2] V + V E[P2]^T + F] with the logits' Gram G = V + Pi:
    E[P2]_ab = M_ab G_aa ((C_a G C_a)_bb - tr(C_a G C_a) / k_a) / (2 k_a) (second order of a
    softmax over the allowed keys), F_ac = G_ac tr(C_a V C_c G) / (k_a k_c)."""
    V = np.asarray(V, float)
    m = len(V)
    M = np.ones((m, m)) if allowed is None else np.asarray(allowed, float)
    G = V if Pi is None else V + np.asarray(Pi, float)
    C, k = centrings(M)
    P2 = np.zeros((m, m))
    F = np.zeros((m, m))
    for a in range(m):
        CGC = C[a] @ G @ C[a]
        for b in range(m):
            P2[a, b] = M[a, b] * G[a, a] * (CGC[b, b] - np.trace(CGC) / k[a]) / (2 * k[a])
        for c in range(m):
            F[a, c] = G[a, c] * np.trace(C[a] @ V @ C[c] @ G) / (k[a] * k[c])
    return gamma**2 / tau0**2 * (P2 @ V + V @ P2.T + F)


def reference_diffusion(V: np.ndarray, allowed: np.ndarray | None = None,
                        Pi: np.ndarray | None = None, gamma: float = 0.5, tau0: float = 1.0,
                        heads: float = 1) -> np.ndarray:
    """Sigma_abcd = gamma^2 (2 - gamma^2) (V_ac V_bd + V_ad V_bc) + gamma^4 / (tau0^2 H) *
    [T_abcd + T_bacd + T_abdc + T_badc], T_abcd = G_ac (V C_a G C_c V)_bd / (k_a k_c): the
    covariance of Y + Y^T with Y = P1 V, P1's row a the centred logits S_a. C_a / k_a."""
    V = np.asarray(V, float)
    m = len(V)
    M = np.ones((m, m)) if allowed is None else np.asarray(allowed, float)
    G = V if Pi is None else V + np.asarray(Pi, float)
    C, k = centrings(M)
    T = np.zeros((m, m, m, m))
    for a in range(m):
        for c in range(m):
            T[a, :, c, :] = G[a, c] * (V @ C[a] @ G @ C[c] @ V) / (k[a] * k[c])
    out = gamma**2 * (2 - gamma**2) * (np.einsum("ac,bd->abcd", V, V)
                                       + np.einsum("ad,bc->abcd", V, V))
    if heads == np.inf:
        return out
    sym = T + T.transpose(1, 0, 2, 3) + T.transpose(0, 1, 3, 2) + T.transpose(1, 0, 3, 2)
    return out + gamma**4 / (tau0**2 * heads) * sym
