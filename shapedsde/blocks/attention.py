r"""Attention residual sub-blocks: shaped (with an SDE limit) and standard (the baseline).

Finite layer (SPEC sections 2 and 10), X of shape (m, n), H heads of key width n_k, an optional
mask M of allowed keys (``blocks.masks``) and an optional positional embedding P added to the
query and key inputs only (Gram Pi = P P^T / n, ``blocks.positions``):

    S_h = ((X + P) W^Q_h / sqrt n)((X + P) W^K_h / sqrt n)^T / sqrt(n_k)
    X'  = lambda X + gamma / sqrt(H) * sum_h A_h X W^V_h / sqrt(n),   lambda^2 + gamma^2 = 1

shaped:   A_h = I + softmax_row(S_h / (tau0 sqrt n)) - U   (softmax and U_ab = M_ab / k_a over
          the allowed keys of each row; U = 1 1^T / m without mask)
standard: A_h = softmax_row(S_h) over the allowed keys.

SDE limit of the shaped block (SPEC sections 3 and 10). With per-row centring C_a = diag(M_a) -
M_a M_a^T / k_a (k_a = sum_b M_ab; C_a = I - 1 1^T/m without mask) and the Gram the logits see,
G = V + Pi (G = V without positions; the cross Gram X P^T / n decays like lambda^l and is 0 in
the SDE), R_a = C_a V / k_a:

    b(V)     = gamma^2 / tau0^2 [ E[P2] V + V E[P2]^T + F ],
    E[P2]_ab = M_ab G_aa ((C_a G C_a)_bb - tr(C_a G C_a) / k_a) / (2 k_a),
    F_ac     = G_ac tr(C_a V C_c G) / (k_a k_c),
    Sigma(V) = gamma^2 (2 - gamma^2) Lin(V) + gamma^4 / (tau0^2 H) * sym[G_ac (R_a^T G R_c)_bd].

The logits' second moments give G, the values' V: E[P2] (the softmax's second order) and the
logit covariance G_ac G_bd see G, the value products V.

Cheap noise: sqrt(gamma^2 (2 - gamma^2) / 2) (N_1 + N_1^T) + gamma^2 / (tau0 sqrt H) (Y + Y^T),
Y_ab = sum_e (N_G)_ae (R_a)_eb, with N_1 = L dW_1 L^T and N_G of covariance G (x) G: N_G = L dW_2
L^T without positions (``noise_from``), and with them N_G = [L, L_Pi] W [L, L_Pi]^T, W the
(2m, 2m) matrix of four more Brownian blocks (``ShapedAttention.noise``; no new square root).
When every row has the same allowed keys (no mask, or padding) C_a = C, R_a = C V / k and, with
K = L^T C L, the whole noise is one congruence, L (G + G^T) L^T with G = c_1 dW_1 + c_2 dW_2 K / k
(``noise_factor``), and the drift is B V + V B^T (``drift_split``).
"""

from __future__ import annotations

import abc
import math
from collections.abc import Callable
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from ..linalg import fused_matmul, lin, matmul, row_sq_norms, total
from ..validation import check_int, check_real
from ._qmc import is_streamed, logit_points, streamed_rule
from ._reduced import (
    JointGram,
    Scalar,
    State,
    gaussian_product,
    residual_state,
    root,
    scalar_sqrt,
    state_covariance,
    token_factors,
)
from .base import Block, WithoutSDE, residual_output
from .masks import Mask, as_mask
from .positions import PositionGram, as_positions


def _check_heads(heads: object) -> float | int:
    if heads == math.inf:
        return math.inf
    return check_int("heads", heads, low=1)


def _centre_columns(X: Array) -> Array:
    """H X with H = I - 1 1^T / m: every column minus its mean. The mean is a product with a
    1/m vector, which runs faster under ``vmap`` than a reduction (see ``linalg.total``)."""
    m = X.shape[0]
    return X - jnp.full((m,), 1.0 / m, X.dtype) @ X


_FUSED_GRAM_MAX = 32


def _gram(X: Array) -> Array:
    """X^T X. Up to m = 32 as m rank-one updates (fused multiply-adds: a batched ``dot`` with a
    transposed left operand runs several times slower there on CPU: in the root congruence
    step, "rms", 256 paths, 10.3 against 6.5 us per path-step at m = 24, 17.0 against 13.8 at
    m = 32); beyond, the unrolled updates cost as much as the ``dot`` or more (38.1 against
    35.9 us at m = 48, 2.5x at m = 64, ``benchmarks/README.md``) and their compilation grows
    with m."""
    return fused_matmul(X.T, X) if X.shape[0] <= _FUSED_GRAM_MAX else X.T @ X


def _mask(m: int, causal: bool) -> Array:
    return jnp.tril(jnp.ones((m, m), bool)) if causal else jnp.ones((m, m), bool)


class AbstractAttention(Block):
    """Shared finite layer of both attention kinds; subclasses define the attention matrix.

    ``mask`` (static: it fixes shapes and the structure of the formulas) and ``positions`` (a
    pytree whose Pi is traced like gamma) both fix the number of tokens m; without them the
    block works for any m. ``causal=True`` is ``mask=causal_mask(m)`` for whatever m it meets."""

    has_reduced = True
    has_nngp = True

    gamma: Scalar  # a leaf, not static: see Block and traced_parameters
    heads: float | int = eqx.field(static=True)
    key_dim: int | None = eqx.field(static=True)
    causal: bool = eqx.field(static=True)
    mask: Mask | None = eqx.field(static=True)
    positions: PositionGram | None

    @abc.abstractmethod
    def attention_matrix(self, S: Array, mask: Array, width: int) -> Array:
        """Row-stochastic-like mixing matrix A from the logits S (m, m) of one head."""

    @property
    def max_heads(self) -> int:
        return 1 if self.heads == math.inf else int(self.heads)

    @property
    def position_embedding(self) -> PositionGram | None:
        return self.positions

    @property
    def tokens(self) -> int | None:
        """The number of tokens m fixed by the mask or the positional Gram (None: any m)."""
        if self.mask is not None:
            return self.mask.m
        return None if self.positions is None else self.positions.m

    def head_key_dim(self, width: Scalar) -> Scalar:
        return self.key_dim if self.key_dim is not None else width // int(self.heads)

    def reduced_width_traceable(self, width: int, m: int) -> bool:
        """The reduced layer's shapes do not depend on the width when the logits' Wishart and
        the output's Wishart both take the Bartlett form: n_k >= q and n - q >= m, where the
        frame has q = m coordinates (q = 2m with a positional embedding)."""
        q = m if self.positions is None else 2 * m
        return self.heads != math.inf and self.head_key_dim(width) >= q and width >= q + m

    def check_width(self, width: int) -> None:
        if self.heads == math.inf:
            raise ValueError("heads=math.inf exists only in the SDE limit; the finite network "
                             "needs an integer number of heads")
        if self.head_key_dim(width) < 1:
            raise ValueError(f"key_dim = width // heads = {width} // {self.heads} is 0; "
                             "use width >= heads or set key_dim")
        if self.positions is not None and width < 2 * self.positions.m:
            raise ValueError(f"width must be >= 2 m = {2 * self.positions.m} with positions "
                             f"(P takes m feature coordinates beside the tokens'), got {width}")

    def check_tokens(self, m: int) -> None:
        if self.mask is not None and self.mask.m != m:
            raise ValueError(f"mask is {self.mask.m} x {self.mask.m} ({self.mask.describe()}) "
                             f"but there are m = {m} tokens")
        if self.positions is not None and self.positions.m != m:
            raise ValueError(f"positions is {self.positions.m} x {self.positions.m} but there "
                             f"are m = {m} tokens")

    def allowed(self, m: int) -> np.ndarray | None:
        """The (m, m) boolean pattern of allowed keys, or None for full attention."""
        self.check_tokens(m)
        if self.mask is not None:
            return self.mask.array
        return np.tri(m, dtype=bool) if self.causal else None

    def _mask_array(self, m: int) -> Array:
        """The allowed keys as a JAX boolean array (all True without mask)."""
        self.check_tokens(m)
        if self.mask is not None:
            return jnp.asarray(self.mask.array)
        return _mask(m, self.causal)

    def _uniform_row(self) -> np.ndarray | None:
        """The common allowed row of a mask whose rows are all equal (padding), else None
        (also None without mask: that case has its own closed forms)."""
        return None if self.mask is None else self.mask.uniform_row

    def position_features(self, m: int, width: int, dtype: Any) -> Array | None:
        """P = sqrt(n) [0_m, L_Pi, 0] (m, n): the embedding on feature coordinates m, ..., 2m - 1,
        orthogonal to the simulators' initial features sqrt(n) [L0, 0] (cross Gram 0 at the
        start). None without positions."""
        if self.positions is None:
            return None
        self.check_tokens(m)
        R = jnp.asarray(self.positions.root, dtype)
        return jnp.zeros((m, width), dtype).at[:, m:2 * m].set(math.sqrt(width) * R)

    def logits(self, key: Array, X: Array, P: Array | None = None) -> Array:
        """S_h = ((X + P) W^Q_h / sqrt n)((X + P) W^K_h / sqrt n)^T / sqrt(n_k), shape (H, m, m);
        P is the block's positional embedding unless given (None: no positions)."""
        m, n = X.shape
        if P is None:
            P = self.position_features(m, n, X.dtype)
        Xq = X if P is None else X + P
        H, nk = int(self.heads), self.head_key_dim(n)
        kq, kk = jax.random.split(key)
        Q = Xq @ jax.random.normal(kq, (H, n, nk), X.dtype) / math.sqrt(n)
        K = Xq @ jax.random.normal(kk, (H, n, nk), X.dtype) / math.sqrt(n)
        return Q @ jnp.swapaxes(K, -1, -2) / math.sqrt(nk)

    def layer_with_control(self, key: Array, X: Array) -> tuple[Array, Array]:
        return self.layer_with_positions(key, X, None)

    def layer_with_positions(self, key: Array, X: Array,
                             P: Array | None) -> tuple[Array, Array]:
        """``layer_with_control`` with an explicit positional embedding P (m, n) in place of
        the block's own (to start from a non-zero cross Gram X P^T / n)."""
        m, n = X.shape
        H = int(self.heads)
        k_s, k_v = jax.random.split(key)
        S = self.logits(k_s, X, P)
        A = jax.vmap(self.attention_matrix, (0, None, None))(S, self._mask_array(m), n)
        F = jnp.transpose(A @ X, (1, 0, 2)).reshape(m, H * n) / math.sqrt(H)  # heads' A_h X
        W = jax.random.normal(k_v, (H * n, n), X.dtype)  # the stacked W^V_h
        return residual_output(X, F, W, self.gamma, self.branch_cv(S, X))

    def branch_cv(self, S: Array, X: Array) -> Array:
        """Zero-mean first-order part of gamma^2 (F F^T / n - V) = gamma^2 (mean_h A_h V A_h^T
        - V). The standard softmax has no small-logit expansion: zero (a valid, weak choice)."""
        return jnp.zeros((X.shape[0], X.shape[0]), X.dtype)

    def _set_common(self, gamma: float, heads: object, key_dim: int | None, causal: bool,
                    mask: object = None, positions: object = None) -> None:
        self.gamma = check_real("gamma", gamma, low=0.0, high=1.0)
        self.heads = _check_heads(heads)
        self.key_dim = None if key_dim is None else check_int("key_dim", key_dim, low=1)
        if not isinstance(causal, bool):
            raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
        mask = None if mask is None else as_mask(mask, "mask")
        if causal and mask is not None:
            raise ValueError("give either causal=True or mask=..., not both (causal=True is "
                             "mask=causal_mask(m); combine patterns into one mask)")
        positions = None if positions is None else as_positions(positions, "positions")
        if mask is not None and positions is not None and mask.m != positions.m:
            raise ValueError(f"positions is {positions.m} x {positions.m} but mask is "
                             f"{mask.m} x {mask.m}: both must be m x m for the same m")
        self.causal = causal
        self.mask = mask
        self.positions = positions

    def config(self) -> dict[str, Any]:
        """As ``Block.config``, with the mask and the positional Gram as their own configs
        (left out when absent, so configs without them are unchanged)."""
        out = super().config()
        out.pop("mask", None)
        out.pop("positions", None)
        if self.mask is not None:
            out["mask"] = self.mask.config()
        if self.positions is not None:
            out["positions"] = self.positions.config()
        return out

    # -- exact reduced layer on m x m (or, with positions, 2m x 2m) Grams ------------------
    def reduced_layer(self, key: Array, V: State, width: Scalar) -> State:
        """Exact in law (``blocks._reduced``). With positions the state is the joint Gram of
        [X; P] (``JointGram``); given a plain V it starts from C = 0 and returns V'."""
        self.check_tokens(state_covariance(V).shape[0])
        if self.positions is not None and not isinstance(V, JointGram):
            start = JointGram.start(V, jnp.asarray(self.positions.gram, V.dtype))
            return self.reduced_layer(key, start, width).V
        L, L_P = token_factors(V)
        m, q = L.shape
        H, nk = int(self.heads), self.head_key_dim(width)
        k_s, k_out = jax.random.split(key)
        Lq = L if self.positions is None else L + L_P  # rows of X + P in the frame
        prods = jax.vmap(lambda k: gaussian_product(k, q, nk, L.dtype))(
            jax.random.split(k_s, H))
        S = Lq @ prods @ Lq.T / scalar_sqrt(nk)  # (H, m, m), the logits of every head
        A = jax.vmap(self.attention_matrix, (0, None, None))(S, self._mask_array(m), width)
        L_M = jnp.transpose(A @ L, (1, 0, 2)).reshape(m, H * q) / math.sqrt(H)  # (m, H q)
        return residual_state(k_out, V, L, L_P, L_M, self.gamma, width)

    def _logit_factor(self, V: Array) -> Array:
        """A square root of the Gram the logits see at infinite width: G = V + Pi with
        positions (cross Gram 0), else V."""
        self.check_tokens(V.shape[0])
        if self.positions is None:
            return root(V)
        return root(V + jnp.asarray(self.positions.gram, V.dtype))

class ShapedAttention(AbstractAttention):
    """Shaped attention residual sub-block: softmax centred at the identity, logits cooled by
    tau = tau0 sqrt(width). ``heads`` may be ``math.inf`` in the SDE (no attention noise).
    ``mask``: allowed keys (``blocks.masks``; ``causal=True`` is the causal mask for any m);
    ``positions``: the Gram Pi of a positional embedding added to queries and keys
    (``blocks.positions``)."""

    tau0: Scalar  # a leaf, not static: see Block and traced_parameters

    has_sde = True

    def __init__(self, tau0: float = 1.0, gamma: float = 0.5, heads: float | int = 1,
                 key_dim: int | None = None, causal: bool = False, mask: object = None,
                 positions: object = None):
        self.tau0 = check_real("tau0", tau0, low=0.0)
        self._set_common(gamma, heads, key_dim, causal, mask, positions)

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
        n = infinity, for any number of heads, mask and positional embedding. Nothing happens
        at fixed depth; the dynamics live at depth of order n (the SDE)."""
        return V

    @property
    def n_noise(self) -> int:
        if self.heads == math.inf:
            return 1
        return 2 if self.positions is None else 5

    @property
    def has_noise_factor(self) -> bool:
        """The congruence form of the noise exists when every row has the same allowed keys
        (no mask, padding) and there are no positions (``noise_factor``)."""
        return self._layout() in ("full", "uniform")

    @property
    def noise_is_congruence(self) -> bool:
        """Without positions the noise is a function of N_i = L dW_i L^T (``noise_from``);
        with them it also needs L_Pi dW L^T (``noise``)."""
        return self.positions is None

    def _layout(self) -> str:
        """Which formulas apply: "full" (no mask, no positions: closed forms in H), "uniform"
        (every row has the same allowed keys, no positions: closed forms in C), "general"
        (per-row centring, positions)."""
        if self.positions is not None:
            return "general"
        if self.mask is None:
            return "general" if self.causal else "full"
        return "uniform" if self.mask.uniform_row is not None else "general"

    # -- SDE coefficients ---------------------------------------------------------------
    def _row_ops(self, V: Array) -> tuple[Array, Array, Array]:
        """Per-row centring C_a (m, m, m), counts k_a (m,) and mask M of the softmax."""
        m = V.shape[0]
        M = self._mask_array(m).astype(V.dtype)
        k = jnp.sum(M, axis=1)
        C = jax.vmap(jnp.diag)(M) - M[:, :, None] * M[:, None, :] / k[:, None, None]
        return C, k, M

    def _logit_gram(self, V: Array) -> Array:
        """G = V + Pi, the Gram of the query and key inputs in the SDE (V without positions)."""
        self.check_tokens(V.shape[0])
        if self.positions is None:
            return V
        return V + jnp.asarray(self.positions.gram, V.dtype)

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

    def _uniform_parts(self, V: Array) -> tuple[Array, Array, Array, Array, float]:
        """(a, beta, s, C, k) of the drift when every row has the same allowed keys M (k of
        them) and centring C = diag(M) - M M^T / k: E[P2] = a beta^T / (2k) with a = diag V,
        beta = M * (diag(C V C) - tr(C V C) / k), and F = s V with s = ||C V C||_F^2 / k^2
        (C is idempotent, so tr(V C V C) = ||C V C||_F^2)."""
        self.check_tokens(V.shape[0])
        row = self._uniform_row()
        k = float(np.sum(row))
        Mv = jnp.asarray(row, V.dtype)
        C = jnp.diag(Mv) - jnp.outer(Mv, Mv) / k
        CVC = C @ V @ C
        d = jnp.diagonal(CVC)
        beta = Mv * (d - total(d) / k)
        return jnp.diagonal(V), beta, total(CVC * CVC) / k**2, C, k

    def drift(self, V: Array) -> Array:
        layout = self._layout()
        if layout == "general":
            return self.drift_masked(V)
        if layout == "uniform":
            B, _ = self.drift_split(V)
            return B @ V + V @ B.T
        m = V.shape[0]
        a, beta, s = self._full_drift_parts(V)
        Vb = V @ beta
        first = (jnp.outer(a, Vb) + jnp.outer(Vb, a)) / (2 * m)
        return self.gamma**2 / self.tau0**2 * (first + s * V)

    def drift_split(self, V: Array) -> tuple[Array, Array | None]:
        """Where every row has the same allowed keys the whole drift is a congruence direction:
        E[P2] V = (a beta^T) V / (2k), so B = gamma^2 / tau0^2 (a beta^T / (2k) + s I / 2) and
        R = 0 (k = m, C = H without mask)."""
        layout = self._layout()
        if layout == "general":
            return super().drift_split(V)
        m = V.shape[0]
        if layout == "uniform":
            a, beta, s, _, k = self._uniform_parts(V)
            B = jnp.outer(a, beta) / (2 * k) + 0.5 * s * jnp.eye(m, dtype=V.dtype)
            return self.gamma**2 / self.tau0**2 * B, None
        a, beta, s = self._full_drift_parts(V)
        B = jnp.outer(a, beta) / (2 * m) + 0.5 * s * jnp.eye(m, dtype=V.dtype)
        return self.gamma**2 / self.tau0**2 * B, None

    def drift_masked(self, V: Array) -> Array:
        """The drift from the general per-row formula (module docstring), O(m^4): any mask,
        and the logit Gram G = V + Pi with positions."""
        C, k, M = self._row_ops(V)
        G = self._logit_gram(V)
        CGC = jnp.einsum("aij,jk,akl->ail", C, G, C)
        diagCGC = jnp.diagonal(CGC, axis1=1, axis2=2)
        P2 = M * jnp.diag(G)[:, None] * (diagCGC - jnp.sum(diagCGC, 1, keepdims=True)
                                         / k[:, None]) / (2 * k[:, None])
        R = self._attention_rows(V)
        RG = R if self.positions is None else self._attention_rows(G)
        F = G * jnp.einsum("aij,cji->ac", R, RG)  # G_ac tr(C_a V C_c G) / (k_a k_c)
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
        Gram = self._logit_gram(V)
        G = jnp.einsum("aib,ij,cjd->acbd", R, Gram, R)  # (R_a^T G R_c)_bd
        T = Gram[:, None, :, None] * jnp.transpose(G, (0, 2, 1, 3))  # T_abcd = G_ac G_acbd
        sym = T + jnp.transpose(T, (1, 0, 2, 3)) + jnp.transpose(T, (0, 1, 3, 2)) \
            + jnp.transpose(T, (1, 0, 3, 2))
        return out + self.gamma**4 / (self.tau0**2 * self.heads) * sym

    def noise(self, V: Array, L: Array, dW: Array, LT: Array | None = None) -> Array:
        """Without a mask both terms are congruences by L: with K = L^T H L = (H L)^T (H L),
        Y = L dW_2 L^T H V / m = L dW_2 K L^T / m, so the noise is L (G + G^T) L^T with
        G = c_1 dW_1 + c_2 dW_2 K / m (``noise_factor``): three m x m products instead of five
        (the same with C and k for padding). With positions the logit noise N_G =
        [L, L_Pi] W [L, L_Pi]^T, W = [[dW_2, dW_3], [dW_4, dW_5]], has covariance
        (V + Pi) (x) (V + Pi)."""
        layout = self._layout()
        if layout in ("full", "uniform"):
            G = self.noise_factor(V, L, dW)[0]
            return matmul(matmul(L, G + G.T), L.T if LT is None else LT)
        if self.positions is None or self.heads == math.inf:
            return super().noise(V, L, dW, LT)
        N1 = matmul(matmul(L, dW[0]), L.T if LT is None else LT)
        L_G = jnp.concatenate([L, jnp.asarray(self.positions.root, L.dtype)], axis=1)
        W = jnp.block([[dW[1], dW[2]], [dW[3], dW[4]]])
        N_G = L_G @ W @ L_G.T
        Y = jnp.einsum("ae,aeb->ab", N_G, self._attention_rows(V))
        return self._lin_scale * (N1 + N1.T) + self._attention_scale * (Y + Y.T)

    def noise_factor(self, V: Array, L: Array, dW: Array) -> tuple[Array, Array]:
        """G = c_1 dW_1 + c_2 dW_2 K / k (see ``noise``) and kappa = c_1^2 m + c_2^2
        ||K||_F^2 / k^2 (E[dW_i A A^T dW_i^T] = tr(A A^T) dt I), K = (C L)^T (C L); only where
        every row has the same allowed keys and there are no positions (``has_noise_factor``)."""
        if self._layout() == "general":
            return super().noise_factor(V, L, dW)
        CL, k = self._centred_root(L)
        return self._noise_factor_from_gram(dW, _gram(CL), k)

    @property
    def drift_is_congruence(self) -> bool:
        """Where the noise has its congruence form, so has the whole drift (``drift_split``)."""
        return self.has_noise_factor

    def root_coefficients(self, L: Array, dW: Array) -> tuple[Array, Array, Array]:
        """(B L, G, kappa) from L alone, in two m x m products (K and dW_2 K): with C L the
        centred root (H L without mask), C V C = (C L)(C L)^T, so diag V and diag(C V C) are
        row norms, and ||C V C||_F = ||K||_F with K = (C L)^T (C L), the Gram of the noise;
        B L = gamma^2 / tau0^2 (a (beta^T L) / (2k) + s L / 2) costs O(m^2) (``drift_split``
        for a, beta, s)."""
        if self._layout() == "general":
            return super().root_coefficients(L, dW)
        CL, k = self._centred_root(L)
        K = _gram(CL)
        a = row_sq_norms(L)  # diag V
        d = row_sq_norms(CL)  # diag(C V C), zero outside the allowed keys
        row = self._uniform_row()
        beta = d - total(d) / k
        if row is not None:
            beta = jnp.asarray(row, L.dtype) * beta
        s = total(K * K) / k**2
        BL = self.gamma**2 / self.tau0**2 * (a[:, None] * (beta @ L)[None, :] / (2 * k)
                                             + 0.5 * s * L)
        return (BL, *self._noise_factor_from_gram(dW, K, k))

    def _centred_root(self, L: Array) -> tuple[Array, float]:
        """(C L, k): the rows of a root L of V centred over the k allowed keys (C = H, k = m
        without mask), in O(m^2): C L = M * (L - M M^T L / k) (C = diag(M) - M M^T / k)."""
        if self._layout() == "uniform":
            self.check_tokens(L.shape[0])
            row = self._uniform_row()
            k = float(np.sum(row))
            Mv = jnp.asarray(row, L.dtype)
            return Mv[:, None] * (L - (Mv / k) @ L), k
        return _centre_columns(L), L.shape[0]

    def _noise_factor_from_gram(self, dW: Array, K: Array, k: float) -> tuple[Array, Array]:
        """(G, kappa) of ``noise_factor`` from the Gram K = (C L)^T (C L)."""
        G = self._lin_scale * dW[0]
        kappa = self._lin_scale**2 * K.shape[0]
        if self.heads != math.inf:
            G = G + self._attention_scale / k * matmul(dW[1], K)
            kappa = kappa + (self._attention_scale / k) ** 2 * total(K * K)
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
        if self.positions is not None:
            raise ValueError("with positions the attention noise needs L_Pi dW L^T besides "
                             "N_i = L dW_i L^T: call noise(V, L, dW), not noise_from "
                             "(noise_is_congruence is False)")
        layout = self._layout()
        if layout == "general":
            Y = jnp.einsum("ae,aeb->ab", N[1], self._attention_rows(V))
        elif layout == "uniform":
            *_, C, k = self._uniform_parts(V)
            Y = matmul(N[1], C @ V) / k
        else:  # every row operator is C_a V / k_a = H V / m (the mean as a product: see total)
            m = V.shape[0]
            Y = matmul(N[1], _centre_columns(V)) / m
        return out + self._attention_scale * (Y + Y.T)


class StandardAttention(WithoutSDE, AbstractAttention):
    """Standard (unshaped) attention residual sub-block, A = softmax_row(S). Finite network
    only: its logits are not cooled with the width, so it has no covariance-SDE limit and
    collapses in rank with depth. ``mask`` and ``positions`` as for ``ShapedAttention``."""

    def __init__(self, gamma: float = 0.5, heads: int = 1, key_dim: int | None = None,
                 causal: bool = False, mask: object = None, positions: object = None):
        self._set_common(gamma, check_int("heads", heads, low=1), key_dim, causal, mask,
                         positions)

    def attention_matrix(self, S: Array, mask: Array, width: int) -> Array:
        return jax.nn.softmax(jnp.where(mask, S, -jnp.inf), axis=1)

    # -- infinite width at fixed depth (SPEC section 8) -----------------------------------
    def infinite_width_layer(self, key: Array, V: Array) -> Array:
        """At n = infinity, with the block's H heads: V' = lambda^2 V + gamma^2 (1/H)
        sum_h A_h V A_h^T, A_h = softmax(S_h), S_h = L_G P_h L_G^T (L_G L_G^T = G, the Gram of
        the query and key inputs: V + Pi with positions, else V) with P_h iid m x m standard
        normal (key_dim=None: Cov(S_ab, S_cd) = G_ac G_bd) or Z_q Z_k^T / sqrt(k) (key_dim=k).
        Random: a single head is not Gaussian."""
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
        expectation over one head's logits S = L_G P L_G^T by the fixed quasi-Monte Carlo rule
        of ``blocks._qmc`` (2^16 scrambled Sobol points; beyond m = 11 tokens generated a chunk
        at a time, so memory stays bounded: 0.44 GB at m = 128). Measured accuracy (float64, against
        10^7-sample Monte Carlo, V_ab = 0.5^|a-b|): max entry error of E[A V A^T] 4e-5 at m = 3
        and 1.3e-4 at m = 8, 5-7 times below plain Monte Carlo with as many points. With
        positions the logits see G = V + Pi: the simulators start P independent of the input
        (cross Gram 0), and at infinite width the cross Gram then stays 0 at every depth."""
        m = V.shape[0]
        if is_streamed(m, self.key_dim):  # too large to hold: generated a chunk at a time
            return self._mixing_map(V, *streamed_rule(m, self.key_dim, str(V.dtype)).chunks())
        P = jnp.asarray(logit_points(m, self.key_dim), V.dtype)
        return self._mixing_map(V, P)

    def _mixing_map(self, V: Array, P: Array | Callable[[Array], Array],
                    indices: Array | None = None) -> Array:
        """lambda^2 V + gamma^2 mean_i A_i V A_i^T over the logit factors P (N, m, m), where
        A_i = softmax(L_G P_i L_G^T) over the allowed entries. Large N is averaged in chunks of
        at most 4096 (bounded memory, and a two-level float32 sum). With ``indices`` P is a
        function of a chunk index giving that chunk's points (the streamed rule)."""
        m = V.shape[0]
        L = self._logit_factor(V)
        mask = self._mask_array(m)

        def mean_mixing(P: Array) -> Array:
            A = jax.vmap(self.attention_matrix, (0, None, None))(L @ P @ L.T, mask, 0)
            return jnp.mean(A @ V @ jnp.swapaxes(A, -1, -2), axis=0)

        if indices is None:
            N = P.shape[0]
            chunk = math.gcd(N, 4096)
            means = jax.lax.map(mean_mixing, P.reshape(N // chunk, chunk, m, m))
        else:
            means = jax.lax.map(lambda c: mean_mixing(P(c)), indices)
        M = jnp.mean(means, axis=0)
        return V + self.gamma**2 * ((M + M.T) / 2 - V)
