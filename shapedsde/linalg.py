"""Small linear-algebra helpers shared by every block (all pure JAX, batched by ``vmap``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from jax import Array


def sym(V: Array) -> Array:
    """Symmetric part (V + V^T) / 2 of the last two axes."""
    return 0.5 * (V + jnp.swapaxes(V, -1, -2))


def mirror_lower(V: Array) -> Array:
    """The symmetric matrix with the lower triangle of V (last two axes): the upper triangle of
    V is not read. ``cholesky`` reads the same triangle."""
    m = V.shape[-1]
    return jnp.where(jnp.tri(m, dtype=bool), V, jnp.swapaxes(V, -1, -2))


def total(x: Array) -> Array:
    """Sum of all entries of x, written as a product with a ones vector: under ``vmap`` this is
    one matrix-vector product, which XLA on CPU runs several times faster than a batch of small
    reductions (``jnp.sum``) or of small dot products (``jnp.vdot``)."""
    return x.reshape(-1) @ jnp.ones(x.size, x.dtype)


def row_sq_norms(X: Array) -> Array:
    """Squared norms of the rows of X (..., m, n) -> (..., m), as a product with a ones vector
    (see ``total``): diag(X X^T) without forming X X^T."""
    return (X * X) @ jnp.ones(X.shape[-1], X.dtype)


_UNROLLED_PRODUCT_MAX = 7


def matmul(a: Array, b: Array) -> Array:
    """a @ b over the last two axes. For inner size <= 7 it is written as broadcast multiply-adds,
    which XLA fuses with their neighbours: on CPU a batch of such tiny products as ``dot`` calls
    is 5-10 times slower (measured in ``benchmarks/README.md``)."""
    return a @ b if a.shape[-1] > _UNROLLED_PRODUCT_MAX else fused_matmul(a, b)


def fused_matmul(a: Array, b: Array) -> Array:
    """a @ b over the last two axes as sum_j a[..., :, j] b[..., j, :] (broadcast multiply-adds
    that XLA fuses; no ``dot``)."""
    return sum(a[..., :, j, None] * b[..., None, j, :] for j in range(a.shape[-1]))


def congruence(L: Array, dW: Array, LT: Array | None = None) -> Array:
    """N_i = L dW_i L^T for the n matrices of dW (n, m, m), as two products for all n at once
    (two larger products run faster than 2n small ones). ``LT``: L^T, if the caller keeps it in
    memory (on CPU a batch of ``dot`` with a transposed operand runs about 2x slower at m = 8).

    The products work on dW laid out as (m, n, m), rows of all dW_i side by side: a caller that
    draws iid noise can draw it in that layout and pass ``jnp.moveaxis(z, 1, 0)``, and the two
    transposes cancel."""
    n, m, _ = dW.shape
    LT = L.T if LT is None else LT
    if m <= _UNROLLED_PRODUCT_MAX:
        return matmul(matmul(L, dW), LT)
    LW = L @ jnp.moveaxis(dW, 0, 1).reshape(m, n * m)  # [L dW_1, ..., L dW_n]
    N = LW.reshape(m * n, m) @ LT  # row (a, i) holds (L dW_i L^T)_a
    return jnp.moveaxis(N.reshape(m, n, m), 1, 0)


def lin(V: Array) -> Array:
    """Sym-Kronecker tensor Lin(V)_{ab,cd} = V_ac V_bd + V_ad V_bc, shape (m, m, m, m)."""
    return jnp.einsum("ac,bd->abcd", V, V) + jnp.einsum("ad,bc->abcd", V, V)


def psd_parts(V: Array) -> tuple[Array, Array, Array]:
    """Projection of a symmetric V onto the PSD cone, its symmetric square root, and V's
    eigenvalues (ascending, unclipped), from one ``eigh``.

    Negative eigenvalues (V left the cone, e.g. after an Euler step) are clipped to zero instead
    of producing NaN; the returned eigenvalues let the caller detect and count such events.
    """
    lam, Q = jnp.linalg.eigh(sym(V))
    lam_c = jnp.clip(lam, 0.0)[..., None, :]
    Qt = jnp.swapaxes(Q, -1, -2)
    return (Q * lam_c) @ Qt, (Q * jnp.sqrt(lam_c)) @ Qt, lam


def psd_sqrt(V: Array) -> tuple[Array, Array]:
    """Symmetric square root L of the PSD part of V (L L^T = V when V is PSD) and V's smallest
    eigenvalue."""
    _, L, lam = psd_parts(V)
    return L, lam[..., 0]


_UNROLLED_CHOLESKY_MAX = 8


def cholesky(V: Array) -> tuple[Array, Array]:
    """``semidefinite_cholesky`` without the rank-deficiency flag."""
    L, ok, _ = semidefinite_cholesky(V)
    return L, ok


def semidefinite_cholesky(V: Array) -> tuple[Array, Array, Array]:
    """Lower Cholesky factor of the last two axes of a positive *semi*-definite V, whether it
    is trustworthy (``ok``) and whether a singular direction was dropped (``deficient``), both
    of shape ``V.shape[:-2]``. Only the lower triangle of V is read.

    Rank deficiency is tolerated: a pivot below the rounding level of its column,
    ``tol_j = 2 m eps V_jj``, is an exactly singular direction, and its column of L is set to zero
    (for PSD V the rest of that column is then below rounding level too, |A_ij|^2 <= A_jj A_ii).
    So L L^T = V up to O(m eps) relative to the diagonal, also for the nearly rank-deficient
    correlation matrices of collapsed tokens, where a plain factorisation divides rounding
    noise by the root of a tiny pivot and returns huge or infinite entries (the cause of false
    blow-ups under "rms" in float32). ``ok`` is False where V is outside the PSD cone beyond
    rounding (a pivot below -tol_j, or a dropped column whose entries are too large to be
    rounding) or not finite; there L must not be used.

    For m <= 8 the elimination is unrolled over columns in plain ``jnp``: batch-vectorised, it
    runs 2-5 times faster on CPU than a LAPACK call per matrix (m = 4, 8); from m = 10 on, LAPACK
    is faster (measured 1.5x at m = 10, 3x at m = 16) and is used (``_lapack_semidefinite``).
    """
    m = V.shape[-1]
    eps = jnp.finfo(V.dtype).eps
    diag = jnp.diagonal(V, axis1=-2, axis2=-1)
    if m > _UNROLLED_CHOLESKY_MAX:
        return _lapack_semidefinite(V, diag, m * eps)
    A, cols = V, []
    ok = jnp.all(jnp.isfinite(diag), axis=-1)
    deficient = jnp.zeros_like(ok)
    for j in range(m):  # A is the trailing (m - j) x (m - j) Schur complement
        pivot, column = A[..., 0, 0], A[..., :, 0]
        tol = 2 * m * eps * diag[..., j]
        singular = pivot <= tol
        rounding = column[..., 1:] ** 2 <= tol[..., None] * jnp.abs(jnp.diagonal(
            A[..., 1:, 1:], axis1=-2, axis2=-1)) + tol[..., None] ** 2
        ok = ok & (pivot >= -tol) & (pivot < jnp.inf) & (~singular | jnp.all(rounding, -1))
        deficient = deficient | singular
        c = jnp.where(singular[..., None], 0.0,
                      column * jax.lax.rsqrt(jnp.where(singular, 1.0, pivot))[..., None])
        cols.append(jnp.concatenate([jnp.zeros(c.shape[:-1] + (j,), c.dtype), c], -1))
        A = A[..., 1:, 1:] - c[..., 1:, None] * c[..., None, 1:]
    return jnp.stack(cols, -1), ok, deficient


def _lapack_factor(V: Array, diag: Array, shift: Array | None,
                   rounding: Array) -> tuple[Array, Array]:
    """LAPACK's factor of V + shift I (``shift``: one per matrix, or None) and whether its rows
    agree with that diagonal to ``rounding`` (a nearly singular V fails: a tiny pivot, or
    none)."""
    if shift is not None:
        diag = diag + shift[..., None]
        V = V + shift[..., None, None] * jnp.eye(V.shape[-1], dtype=V.dtype)
    L = jnp.linalg.cholesky(V, symmetrize_input=False)
    d = jnp.diagonal(L, axis1=-2, axis2=-1)
    rows = jnp.sum(L * L, axis=-1)
    consistent = jnp.abs(rows - diag) <= 2 * rounding * diag
    return L, jnp.all((d > 0) & (d < jnp.inf) & consistent, axis=-1)


_UNSHIFTED_MAX = 16
"""Largest m at which a nearly singular V is left to the solvers' ``eigh`` (not shifted).
Measured on a loaded 2-core machine (``benchmarks/README.md``): at m = 16 the shift made no
consistent difference; at m = 32 the driver ran at 0.66 (raw) and 1.14 ("rms") times the
plain scan with it against 0.39 and 0.87 without (an A/B of 2 rounds at 128 paths was
inconclusive); at m = 64 it was 2.9 times faster ("rms", 32 paths)."""
SHIFT = 100
"""The shift of a nearly singular V, in units of eps times (a bound on) its largest eigenvalue:
the tolerance below which the solvers' ``eigh`` does not count an eigenvalue as negative."""


def _lapack_semidefinite(V: Array, diag: Array, rounding: Array) -> tuple[Array, Array, Array]:
    """``semidefinite_cholesky`` from m = 9 on: LAPACK's factor of V where it is consistent,
    else (V nearly singular: collapsed tokens), from m = 17 on, the factor of V + delta I,
    delta = SHIFT eps max_a sum_b |V_ab| (Gershgorin's bound on the largest eigenvalue): a
    change of V of the order of the negative eigenvalues that the ``eigh`` fallback of the solvers
    (``_solvers.on_state_space``) clips without counting a repair. Such V are frequent from
    m = 16 on (a quarter of the paths of a step at m = 32 from V0_ab = 0.8^|a-b|), and at
    m = 64 an ``eigh`` costs 100-200 Cholesky factorisations (``benchmarks/README.md``). The
    shifted factor is flagged ``deficient``; ``ok`` is False only where V + delta I is not
    positive definite either (outside the PSD cone beyond that tolerance, or not finite)."""
    L, ok = _lapack_factor(V, diag, None, rounding)
    if V.shape[-1] <= _UNSHIFTED_MAX:
        return L, ok, jnp.zeros_like(ok)

    def shifted() -> tuple[Array, Array, Array]:
        eps = jnp.finfo(V.dtype).eps
        bound = jnp.max(jnp.sum(jnp.abs(mirror_lower(V)), axis=-1), axis=-1)
        Ls, oks = _lapack_factor(V, diag, SHIFT * eps * bound, rounding)
        return jnp.where(ok[..., None, None], L, Ls), ok | oks, ~ok & oks

    return jax.lax.cond(jnp.all(ok), lambda: (L, ok, jnp.zeros_like(ok)), shifted)
