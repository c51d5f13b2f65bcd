r"""Attention residual sub-blocks: shaped (with an SDE limit) and standard (the baseline).

Finite layer (SPEC section 2), X of shape (m, n), H heads of key width n_k:

    S_h = (X W^Q_h / sqrt n)(X W^K_h / sqrt n)^T / sqrt(n_k)
    X'  = lambda X + gamma / sqrt(H) * sum_h A_h X W^V_h / sqrt(n),   lambda^2 + gamma^2 = 1

shaped:   A_h = I + softmax_row(S_h / (tau0 sqrt n)) - U     (U = 1 1^T / m, or causal average)
standard: A_h = softmax_row(S_h)

SDE limit of the shaped block (SPEC section 3). With per-row centring C_a = diag(M_a) -
M_a M_a^T / k_a (M the mask, k_a = sum_b M_ab; C_a = I - 1 1^T/m without mask):

    b(V)     = gamma^2 / tau0^2 [ E[P2] V + V E[P2]^T + F ],
    E[P2]_ab = M_ab V_aa ((C_a V C_a)_bb - tr(C_a V C_a) / k_a) / (2 k_a),
    F_ac     = V_ac tr(V C_a V C_c) / (k_a k_c),
    Sigma(V) = gamma^2 (2 - gamma^2) Lin(V) + gamma^4 / (tau0^2 H) * sym[V_ac (V C_a V C_c V)_bd
               / (k_a k_c)].

Cheap noise with N_i = L dW_i L^T (``noise_from``):  sqrt(gamma^2 (2 - gamma^2) / 2) (N_1 + N_1^T)
    + gamma^2 / (tau0 sqrt H) (Y + Y^T),  Y_ab = sum_e (N_2)_ae (C_a V)_eb / k_a.
Without a mask C_a V / k_a = H V / m for every row, and with K = L^T H L the whole noise is one
congruence, L (G + G^T) L^T with G = c_1 dW_1 + c_2 dW_2 K / m (``ShapedAttention.noise``).
"""

from __future__ import annotations

import abc
import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import Array

from ..linalg import fused_matmul, lin, matmul, total
from ..validation import check_int, check_real
from ._qmc import logit_points
from ._reduced import Scalar, gaussian_product, residual_gram, root, scalar_sqrt
from .base import Block, WithoutSDE, residual_output


def _check_heads(heads: object) -> float | int:
    if heads == math.inf:
        return math.inf
    return check_int("heads", heads, low=1)


def _centre_columns(X: Array) -> Array:
    """H X with H = I - 1 1^T / m: every column minus its mean. The mean is a product with a
    1/m vector, which runs faster under ``vmap`` than a reduction (see ``linalg.total``)."""
    m = X.shape[0]
    return X - jnp.full((m,), 1.0 / m, X.dtype) @ X


def _mask(m: int, causal: bool) -> Array:
    return jnp.tril(jnp.ones((m, m), bool)) if causal else jnp.ones((m, m), bool)


class AbstractAttention(Block):
    """Shared finite layer of both attention kinds; subclasses define the attention matrix."""

    has_reduced = True
    has_nngp = True

    gamma: Scalar  # a leaf, not static: see Block and traced_parameters
    heads: float | int = eqx.field(static=True)
    key_dim: int | None = eqx.field(static=True)
    causal: bool = eqx.field(static=True)

    @abc.abstractmethod
    def attention_matrix(self, S: Array, mask: Array, width: int) -> Array:
        """Row-stochastic-like mixing matrix A from the logits S (m, m) of one head."""

    @property
    def max_heads(self) -> int:
        return 1 if self.heads == math.inf else int(self.heads)

    def head_key_dim(self, width: Scalar) -> Scalar:
        return self.key_dim if self.key_dim is not None else width // int(self.heads)

    def reduced_width_traceable(self, width: int, m: int) -> bool:
        """The reduced layer's shapes do not depend on the width when the logits' Wishart and
        the output's Wishart both take the Bartlett form: n_k >= m and n - m >= m."""
        return self.heads != math.inf and self.head_key_dim(width) >= m and width >= 2 * m

    def check_width(self, width: int) -> None:
        if self.heads == math.inf:
            raise ValueError("heads=math.inf exists only in the SDE limit; the finite network "
                             "needs an integer number of heads")
        if self.head_key_dim(width) < 1:
            raise ValueError(f"key_dim = width // heads = {width} // {self.heads} is 0; "
                             "use width >= heads or set key_dim")

    def logits(self, key: Array, X: Array) -> Array:
        """S_h = (X W^Q_h / sqrt n)(X W^K_h / sqrt n)^T / sqrt(n_k), shape (H, m, m)."""
        m, n = X.shape
        H, nk = int(self.heads), self.head_key_dim(n)
        kq, kk = jax.random.split(key)
        Q = X @ jax.random.normal(kq, (H, n, nk), X.dtype) / math.sqrt(n)
        K = X @ jax.random.normal(kk, (H, n, nk), X.dtype) / math.sqrt(n)
        return Q @ jnp.swapaxes(K, -1, -2) / math.sqrt(nk)

    def layer_with_control(self, key: Array, X: Array) -> tuple[Array, Array]:
        m, n = X.shape
        H = int(self.heads)
        k_s, k_v = jax.random.split(key)
        S = self.logits(k_s, X)
        A = jax.vmap(self.attention_matrix, (0, None, None))(S, _mask(m, self.causal), n)
        F = jnp.transpose(A @ X, (1, 0, 2)).reshape(m, H * n) / math.sqrt(H)  # heads' A_h X
        W = jax.random.normal(k_v, (H * n, n), X.dtype)  # the stacked W^V_h
        return residual_output(X, F, W, self.gamma, self.branch_cv(S, X))

    def branch_cv(self, S: Array, X: Array) -> Array:
        """Zero-mean first-order part of gamma^2 (F F^T / n - V) = gamma^2 (mean_h A_h V A_h^T
        - V). The standard softmax has no small-logit expansion: zero (a valid, weak choice)."""
        return jnp.zeros((X.shape[0], X.shape[0]), X.dtype)

    def _set_common(self, gamma: float, heads: object, key_dim: int | None,
                    causal: bool) -> None:
        self.gamma = check_real("gamma", gamma, low=0.0, high=1.0)
        self.heads = _check_heads(heads)
        self.key_dim = None if key_dim is None else check_int("key_dim", key_dim, low=1)
        if not isinstance(causal, bool):
            raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
        self.causal = causal

    def reduced_layer(self, key: Array, V: Array, width: Scalar) -> Array:
        m = V.shape[0]
        H, nk = int(self.heads), self.head_key_dim(width)
        k_s, k_out = jax.random.split(key)
        L = root(V)
        prods = jax.vmap(lambda k: gaussian_product(k, m, nk, V.dtype))(
            jax.random.split(k_s, H))
        S = L @ prods @ L.T / scalar_sqrt(nk)  # (H, m, m), the logits of every head
        A = jax.vmap(self.attention_matrix, (0, None, None))(S, _mask(m, self.causal), width)
        L_M = jnp.transpose(A @ L, (1, 0, 2)).reshape(m, H * m) / math.sqrt(H)  # (m, H m)
        return residual_gram(k_out, L, L_M, self.gamma, width)


class ShapedAttention(AbstractAttention):
    """Shaped attention residual sub-block: softmax centred at the identity, logits cooled by
    tau = tau0 sqrt(width). ``heads`` may be ``math.inf`` in the SDE (no attention noise)."""

    tau0: Scalar  # a leaf, not static: see Block and traced_parameters

    has_sde = True

    def __init__(self, tau0: float = 1.0, gamma: float = 0.5, heads: float | int = 1,
                 key_dim: int | None = None, causal: bool = False):
        self.tau0 = check_real("tau0", tau0, low=0.0)
        self._set_common(gamma, heads, key_dim, causal)

    def branch_cv(self, S: Array, X: Array) -> Array:
        """gamma^2 / (tau0 sqrt n) mean_h (P1_h V + V P1_h^T), P1_h the first-order term of the
        shaped softmax (row a: S_{a.} C_a / k_a), linear in S_h and so of mean zero."""
        n = X.shape[1]
        V = X @ X.T / n
        C, k, _ = self._row_ops(V)
        P1 = jnp.einsum("hab,abc->hac", S, C) / k[:, None]  # softmax = U + eps P1 + O(eps^2)
        P1V = jnp.mean(P1 @ V, axis=0)
        return self.gamma**2 / (self.tau0 * math.sqrt(n)) * (P1V + P1V.T)

    def attention_matrix(self, S: Array, mask: Array, width: Scalar) -> Array:
        logits = jnp.where(mask, S / (self.tau0 * scalar_sqrt(width)), -jnp.inf)
        U = (mask / jnp.sum(mask, axis=1, keepdims=True)).astype(S.dtype)
        return jnp.eye(S.shape[0], dtype=S.dtype) + jax.nn.softmax(logits, axis=1) - U

    def nngp_layer(self, V: Array) -> Array:
        """The identity: the logits carry 1 / (tau0 sqrt n) -> 0, so A -> I and V' = V at
        n = infinity, for any number of heads. Nothing happens at fixed depth; the dynamics
        live at depth of order n (the SDE)."""
        return V

    @property
    def n_noise(self) -> int:
        return 1 if self.heads == math.inf else 2

    @property
    def has_noise_factor(self) -> bool:
        """The congruence form of the noise exists without a mask (``noise_factor``)."""
        return not self.causal

    # -- SDE coefficients ---------------------------------------------------------------
    def _row_ops(self, V: Array) -> tuple[Array, Array, Array]:
        """Per-row centring C_a (m, m, m), counts k_a (m,) and mask M of the softmax."""
        m = V.shape[0]
        M = _mask(m, self.causal).astype(V.dtype)
        k = jnp.sum(M, axis=1)
        C = jax.vmap(jnp.diag)(M) - M[:, :, None] * M[:, None, :] / k[:, None, None]
        return C, k, M

    def _full_drift_parts(self, V: Array) -> tuple[Array, Array, Array]:
        """(a, beta, s) of the unmasked drift b = gamma^2 / tau0^2 [(a (V beta)^T + (V beta) a^T)
        / (2m) + s V]: a = diag V, beta = diag(H V H) - tr(H V H) / m, s = ||H V H||_F^2 / m^2.
        O(m^2); sums are written as products (XLA on CPU runs small reductions slowly) and
        diag(H V H) comes from the means c."""
        m = V.shape[0]
        c = V @ jnp.full((m,), 1.0 / m, V.dtype)  # row means = column means (V symmetric)
        Vt = V - c[:, None] - c[None, :] + total(c) / m  # H V H
        a = jnp.diagonal(V)
        d = a - 2.0 * c  # diag(H V H) - mean(c)
        return a, d - total(d) / m, total(Vt * Vt) / m**2

    def drift(self, V: Array) -> Array:
        if self.causal:
            return self.drift_masked(V)
        m = V.shape[0]
        a, beta, s = self._full_drift_parts(V)
        Vb = V @ beta
        first = (jnp.outer(a, Vb) + jnp.outer(Vb, a)) / (2 * m)
        return self.gamma**2 / self.tau0**2 * (first + s * V)

    def drift_split(self, V: Array) -> tuple[Array, Array | None]:
        """Without a mask the whole drift is a congruence direction: a (V beta)^T = (a beta^T) V,
        so B = gamma^2 / tau0^2 (a beta^T / (2m) + s I / 2) and R = 0."""
        if self.causal:
            return super().drift_split(V)
        m = V.shape[0]
        a, beta, s = self._full_drift_parts(V)
        B = jnp.outer(a, beta) / (2 * m) + 0.5 * s * jnp.eye(m, dtype=V.dtype)
        return self.gamma**2 / self.tau0**2 * B, None

    def drift_masked(self, V: Array) -> Array:
        """The drift from the general per-row (masked) formula, O(m^4)."""
        C, k, M = self._row_ops(V)
        CVC = jnp.einsum("aij,jk,akl->ail", C, V, C)
        diagCVC = jnp.diagonal(CVC, axis1=1, axis2=2)
        P2 = M * jnp.diag(V)[:, None] * (diagCVC - jnp.sum(diagCVC, 1, keepdims=True)
                                         / k[:, None]) / (2 * k[:, None])
        R = self._attention_rows(V)
        F = V * jnp.einsum("aij,cji->ac", R, R)
        return self.gamma**2 / self.tau0**2 * (P2 @ V + V @ P2.T + F)

    def _attention_rows(self, V: Array) -> Array:
        """R_a = C_a V / k_a, shape (m, m, m) (R_a = H V / m for every a without mask)."""
        C, k, _ = self._row_ops(V)
        return jnp.einsum("aij,jk->aik", C, V) / k[:, None, None]

    def diffusion_cov(self, V: Array) -> Array:
        out = self.gamma**2 * (2.0 - self.gamma**2) * lin(V)
        if self.heads == math.inf:
            return out
        R = self._attention_rows(V)
        G = jnp.einsum("aib,ij,cjd->acbd", R, V, R)  # (V C_a V C_c V)_bd / (k_a k_c)
        T = V[:, None, :, None] * jnp.transpose(G, (0, 2, 1, 3))  # T_abcd = V_ac G_acbd
        sym = T + jnp.transpose(T, (1, 0, 2, 3)) + jnp.transpose(T, (0, 1, 3, 2)) \
            + jnp.transpose(T, (1, 0, 3, 2))
        return out + self.gamma**4 / (self.tau0**2 * self.heads) * sym

    def noise(self, V: Array, L: Array, dW: Array, LT: Array | None = None) -> Array:
        """Without a mask both terms are congruences by L: with K = L^T H L = (H L)^T (H L),
        Y = L dW_2 L^T H V / m = L dW_2 K L^T / m, so the noise is L (G + G^T) L^T with
        G = c_1 dW_1 + c_2 dW_2 K / m (``noise_factor``): three m x m products instead of five."""
        if self.causal:
            return super().noise(V, L, dW, LT)
        G = self.noise_factor(V, L, dW)[0]
        return matmul(matmul(L, G + G.T), L.T if LT is None else LT)

    def noise_factor(self, V: Array, L: Array, dW: Array) -> tuple[Array, Array]:
        """G = c_1 dW_1 + c_2 dW_2 K / m (see ``noise``) and kappa = c_1^2 m + c_2^2 ||K||_F^2 /
        m^2 (E[dW_i A A^T dW_i^T] = tr(A A^T) dt I); not with a causal mask."""
        if self.causal:
            return super().noise_factor(V, L, dW)
        m = V.shape[0]
        G = self._lin_scale * dW[0]
        kappa = self._lin_scale**2 * m
        if self.heads != math.inf:
            HL = _centre_columns(L)
            K = fused_matmul(HL.T, HL)  # m rank-one updates, no transposed product
            G = G + self._attention_scale / m * matmul(dW[1], K)
            kappa = kappa + (self._attention_scale / m) ** 2 * total(K * K)
        return G, kappa

    @property
    def _lin_scale(self) -> Scalar:
        return scalar_sqrt(self.gamma**2 * (2.0 - self.gamma**2) / 2.0)

    @property
    def _attention_scale(self) -> Scalar:
        return self.gamma**2 / (self.tau0 * math.sqrt(self.heads))

    def noise_from(self, V: Array, N: Array) -> Array:
        out = self._lin_scale * (N[0] + N[0].T)
        if self.heads == math.inf:
            return out
        if self.causal:
            Y = jnp.einsum("ae,aeb->ab", N[1], self._attention_rows(V))
        else:  # every row operator is C_a V / k_a = H V / m (the mean as a product: see total)
            m = V.shape[0]
            Y = matmul(N[1], _centre_columns(V)) / m
        return out + self._attention_scale * (Y + Y.T)


class StandardAttention(WithoutSDE, AbstractAttention):
    """Standard (unshaped) attention residual sub-block, A = softmax_row(S). Finite network
    only: its logits are not cooled with the width, so it has no covariance-SDE limit and
    collapses in rank with depth."""

    def __init__(self, gamma: float = 0.5, heads: int = 1, key_dim: int | None = None,
                 causal: bool = False):
        self._set_common(gamma, check_int("heads", heads, low=1), key_dim, causal)

    def attention_matrix(self, S: Array, mask: Array, width: int) -> Array:
        return jax.nn.softmax(jnp.where(mask, S, -jnp.inf), axis=1)

    # -- infinite width at fixed depth (SPEC section 8) -----------------------------------
    def infinite_width_layer(self, key: Array, V: Array) -> Array:
        """At n = infinity, with the block's H heads: V' = lambda^2 V + gamma^2 (1/H)
        sum_h A_h V A_h^T, A_h = softmax(S_h), S_h = L P_h L^T (L L^T = V) with P_h iid m x m
        standard normal (key_dim=None: Cov(S_ab, S_cd) = V_ac V_bd) or Z_q Z_k^T / sqrt(k)
        (key_dim=k). Random: a single head is not Gaussian."""
        m = V.shape[0]
        keys = jax.random.split(key, int(self.heads))
        if self.key_dim is None:
            P = jax.vmap(lambda k: jax.random.normal(k, (m, m), V.dtype))(keys)
        else:
            P = jax.vmap(lambda k: gaussian_product(k, m, self.key_dim, V.dtype))(keys)
            P = P / math.sqrt(self.key_dim)
        return self._mixing_map(V, P)

    def nngp_layer(self, V: Array) -> Array:
        """The NNGP kernel map (H = infinity): V' = lambda^2 V + gamma^2 E_S[A V A^T], the
        expectation over one head's logits S = L P L^T by the fixed quasi-Monte Carlo rule of
        ``blocks._qmc`` (2^16 scrambled Sobol points). Measured accuracy (float64, against
        10^7-sample Monte Carlo, V_ab = 0.5^|a-b|): max entry error of E[A V A^T] 4e-5 at m = 3
        and 1.3e-4 at m = 8, 5-7 times below plain Monte Carlo with as many points."""
        P = jnp.asarray(logit_points(V.shape[0], self.key_dim), V.dtype)
        return self._mixing_map(V, P)

    def _mixing_map(self, V: Array, P: Array) -> Array:
        """lambda^2 V + gamma^2 mean_i A_i V A_i^T over the logit factors P (N, m, m), where
        A_i = softmax(L P_i L^T) over the allowed entries. Large N is averaged in chunks of at
        most 4096 (bounded memory, and a two-level float32 sum)."""
        m, N = V.shape[0], P.shape[0]
        L = root(V)
        mask = _mask(m, self.causal)

        def mean_mixing(P: Array) -> Array:
            A = jax.vmap(self.attention_matrix, (0, None, None))(L @ P @ L.T, mask, 0)
            return jnp.mean(A @ V @ jnp.swapaxes(A, -1, -2), axis=0)

        chunk = math.gcd(N, 4096)
        M = jnp.mean(jax.lax.map(mean_mixing, P.reshape(N // chunk, chunk, m, m)), axis=0)
        return V + self.gamma**2 * ((M + M.T) / 2 - V)

