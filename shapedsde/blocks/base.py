"""The interface every residual block implements: its finite layer beside its SDE limit.

Like a Neural Tangents ``stax`` layer carries ``apply_fn`` beside ``kernel_fn``, a ``Block``
carries the finite-width map ``layer`` (X -> X' with real Gaussian weights) beside the
coefficients of the covariance SDE it converges to,

    dV = drift(V) dt + noise(V, L, dW),   Cov(noise_ab, noise_cd) = diffusion_cov(V)_{abcd} dt,

where ``L L^T = V`` and ``dW`` holds ``n_noise`` independent m x m matrix Brownian increments,
and beside its infinite-width map at fixed depth (``nngp_layer``). Every block's noise is linear
in the products N_i = L dW_i L^T (``noise_from``), formed for all i at once
(``linalg.congruence``).

Blocks follow equinox's abstract-or-final pattern: ``Block`` and ``AbstractAttention`` are
abstract, every other block class is final. What a block offers is declared, not probed:
``has_sde``, ``has_reduced``, ``has_nngp`` (class variables of the leaf blocks, properties of
the compositions ``Serial`` and ``Normalized``), ``has_noise_factor`` and ``max_heads``.
Compositions are blocks too: ``Serial`` (one after the other, e.g. the Transformer block) and
``Normalized`` (RMS normalisation after a block). The simulators, the solver and the
comparisons use only this interface, so a new block is one file.
"""

# no ``from __future__ import annotations``: equinox reads the AbstractClassVar annotations
import abc
import math
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from equinox import AbstractClassVar
from jax import Array

from ..linalg import congruence, matmul
from ._reduced import Scalar, scalar_sqrt


class NoSDELimitError(ValueError):
    """Raised when an SDE quantity is requested from a block that has no SDE limit."""


class NoNNGPLimitError(ValueError):
    """Raised when the infinite-width (fixed-depth, NNGP) map is requested from a block that
    does not define one."""


class Block(eqx.Module):
    """Abstract residual block, a frozen pytree. Fields that change shapes or structure (heads,
    key_dim, causal) are static; the float parameters (gamma, tau0, c_plus, c_minus) are
    ordinary leaves, Python floats after ``__init__`` and JAX scalars after
    :func:`traced_parameters`, so that compiled code does not specialise on their values."""

    has_sde: AbstractClassVar[bool]
    """Whether the block has a covariance-SDE limit (standard attention has none)."""
    has_reduced: AbstractClassVar[bool]
    """Whether ``reduced_layer`` samples the finite layer exactly on m x m matrices."""
    has_nngp: AbstractClassVar[bool]
    """Whether the block has an infinite-width map at fixed depth (``nngp_layer``)."""

    @property
    def has_noise_factor(self) -> bool:
        """Whether ``drift_split`` and ``noise_factor`` give the congruence form of a step
        (``shapedsde.sde.CongruenceEuler``). None unless a block declares it."""
        return False

    @property
    def drift_is_congruence(self) -> bool:
        """Whether, besides ``has_noise_factor``, the whole drift is a congruence direction
        (``drift_split``'s R is None): then a congruence step needs only a root L of V, and
        ``root_coefficients`` gives its parts from L (``shapedsde.sde.RootCongruenceEuler``)."""
        return False

    @property
    def noise_is_congruence(self) -> bool:
        """Whether the noise is a function of the products N_i = L dW_i L^T alone
        (``noise_from``); attention with positions also needs L_Pi dW L^T and overrides
        ``noise``. Compositions use ``noise_from`` where every layer allows it."""
        return True

    @property
    def position_embedding(self) -> Any:
        """The ``PositionGram`` of the positional embedding P this block adds to its attention
        queries and keys (shared by all its layers), or None. Where it is set, the exact reduced
        state is the joint Gram of [X; P] (``blocks._reduced.JointGram``), not V alone."""
        return None

    def check_tokens(self, m: int) -> None:  # noqa: B027 - optional hook
        """Raise ValueError if the block cannot act on m tokens (a mask or a positional Gram
        made for another m)."""

    @property
    def max_heads(self) -> int:
        """Largest number of attention heads in the block (1 without attention; memory
        estimates of the full network)."""
        return 1

    @property
    def is_normalized(self) -> bool:
        """Whether every sub-block is followed by RMS normalisation (``Normalized``)."""
        return False

    def unnormalized(self) -> "Block":
        """The block without its RMS normalisations (itself if it has none)."""
        return self

    # -- SDE coefficients ---------------------------------------------------------------
    @property
    @abc.abstractmethod
    def n_noise(self) -> int:
        """Number of independent m x m Brownian matrices driving the cheap noise."""

    @abc.abstractmethod
    def drift(self, V: Array) -> Array:
        """b(V) = lim n E[V_{l+1} - V_l | V_l = V], shape (m, m)."""

    @abc.abstractmethod
    def diffusion_cov(self, V: Array) -> Array:
        """Sigma(V)_{abcd} = lim n Cov[dV_ab, dV_cd | V], shape (m, m, m, m)."""

    def noise(self, V: Array, L: Array, dW: Array, LT: Array | None = None) -> Array:
        """Noise increment, linear in ``dW`` of shape (n_noise, m, m), with ``L L^T = V``
        (``LT``: L^T if the caller stores it, see ``linalg.congruence``)."""
        return self.noise_from(V, congruence(L, dW, LT))

    @abc.abstractmethod
    def noise_from(self, V: Array, N: Array) -> Array:
        """The noise increment as a function of N_i = L dW_i L^T, shape (n_noise, m, m)."""

    def drift_split(self, V: Array) -> tuple[Array, Array | None]:
        """(B, R) with drift(V) = B V + V B^T + R, B of shape (m, m); R is None where it is zero.

        The part B V + V B^T is a congruence direction: the congruence solver applies it as
        (I + B dt) V (I + B dt)^T, which cannot leave the PSD cone. Default: B = 0, R = drift."""
        return jnp.zeros_like(V), self.drift(V)

    def noise_factor(self, V: Array, L: Array, dW: Array) -> tuple[Array, Array]:
        """(G, kappa) with noise(V, L, dW) = L (G + G^T) L^T and E[G G^T] = kappa dt I, where
        ``has_noise_factor``.

        With it a step can be written as V + noise = L (I + G)(I + G)^T L^T - L G G^T L^T: the
        congruence solver keeps the first product (PSD by construction) and replaces the
        second by its mean kappa dt V, which changes the law of a step only at O(dt^2)."""
        raise ValueError(f"{type(self).__name__} with these options has no congruence form "
                         "of its noise (has_noise_factor is False)")

    def root_coefficients(self, L: Array, dW: Array) -> tuple[Array, Array, Array]:
        """(B L, G, kappa) of the congruence step from a root L of V alone (L L^T = V), where
        ``drift_is_congruence``. Default: V = L L^T formed and the parts of ``drift_split``
        and ``noise_factor``; blocks whose B has structure override it (shaped attention: B is
        rank one plus a multiple of I, and its drift reads V only through O(m^2) sums of L
        and the Gram that its noise needs anyway)."""
        V = matmul(L, L.T)
        B, R = self.drift_split(V)
        if R is not None:
            raise ValueError(f"{type(self).__name__} with these options has a drift that is "
                             "not a congruence direction (drift_is_congruence is False)")
        G, kappa = self.noise_factor(V, L, dW)
        return matmul(B, L), G, kappa

    # -- finite width ---------------------------------------------------------------------
    @abc.abstractmethod
    def layer_with_control(self, key: Array, X: Array) -> tuple[Array, Array]:
        """One unit of depth of the finite network, X of shape (m, width), with real Gaussian
        weights; also returns a control variate: the part of V' - V that is first order in the
        weights and has conditional mean exactly zero (used by ``shapedsde.network.moments``
        to estimate n E[dV] with O(1) instead of O(sqrt n) fluctuations)."""

    def layer(self, key: Array, X: Array) -> Array:
        """One unit of depth of the finite network (XLA drops the unused control variate)."""
        return self.layer_with_control(key, X)[0]

    def reduced_layer(self, key: Array, V: Array, width: Scalar) -> Array:
        """The same layer sampled exactly in law on m x m matrices (``blocks._reduced``):
        V' given V, at a cost independent of the width. Where ``has_reduced``."""
        raise NotImplementedError(f"{type(self).__name__} has no reduced simulator")

    def check_width(self, width: int) -> None:  # noqa: B027 - optional hook
        """Raise ValueError if the finite network cannot be built at this width."""

    def reduced_width_traceable(self, width: int, m: int) -> bool:
        """Whether ``reduced_layer`` at this width and m tokens may take the width as a traced
        JAX scalar: none of its shapes depends on the width there (then one compilation serves
        every such width). False unless a block says otherwise."""
        return False

    # -- infinite width at fixed depth (SPEC section 8) -----------------------------------
    def nngp_layer(self, V: Array) -> Array:
        """V' of one unit of depth at width n = infinity and, for attention, infinitely many
        heads: the deterministic NNGP kernel map (Neural Tangents' ``kernel_fn``), (m, m).
        Where ``has_nngp``."""
        raise self.no_nngp_error()

    def infinite_width_layer(self, key: Array, V: Array) -> Array:
        """V' of one unit of depth at width n = infinity with the block's own number of heads:
        random while a finite number of attention heads keeps its random logits, otherwise
        (the default) the deterministic ``nngp_layer`` and ``key`` is unused."""
        return self.nngp_layer(V)

    # -- errors for what a block does not have ---------------------------------------------
    def no_nngp_error(self) -> NoNNGPLimitError:
        return NoNNGPLimitError(
            f"{type(self).__name__} defines no infinite-width (NNGP) map: implement "
            "nngp_layer, or simulate its finite network with simulate_network")

    def require_nngp(self) -> None:
        if not self.has_nngp:
            raise self.no_nngp_error()

    def no_sde_error(self) -> NoSDELimitError:
        return NoSDELimitError(
            f"{type(self).__name__} has no covariance-SDE limit (its logits are not cooled "
            "with the width): simulate it with simulate_network, or use ShapedAttention")

    def require_sde(self) -> None:
        if not self.has_sde:
            raise self.no_sde_error()

    @classmethod
    def from_config(cls, config: Any) -> "Block":
        """The block that ``config`` (from :meth:`config`, e.g. a result's
        ``config["block"]``) describes: ``shapedsde.block_from_config``, checked to be a
        ``cls`` (``Block.from_config`` takes any block)."""
        from .rebuild import block_from_config

        block = block_from_config(config)
        if not isinstance(block, cls):
            raise ValueError(f"config describes a {type(block).__name__}, not a {cls.__name__}")
        return block

    def config(self) -> dict[str, Any]:
        """JSON-serialisable description, stored with results (``from_config`` rebuilds the
        block from it)."""
        fields = {k: v for k, v in vars(self).items() if not k.startswith("_")}
        out: dict[str, Any] = {"kind": type(self).__name__}
        for k, v in fields.items():
            out[k] = v.config() if isinstance(v, Block) else _jsonable(v)
        return out


class WithoutSDE(Block):
    """Abstract base of the network-only baselines (standard attention, the standard ReLU MLP):
    they have no covariance-SDE limit, so their SDE coefficients raise ``no_sde_error``."""

    has_sde = False

    @property
    def n_noise(self) -> int:
        raise self.no_sde_error()

    def drift(self, V: Array) -> Array:
        raise self.no_sde_error()

    def diffusion_cov(self, V: Array) -> Array:
        raise self.no_sde_error()

    def noise_from(self, V: Array, N: Array) -> Array:
        raise self.no_sde_error()


def _jsonable(v: Any) -> Any:
    if isinstance(v, (jax.Array, np.ndarray, np.generic)) and np.ndim(v) == 0:
        v = float(v)  # a parameter made traceable by traced_parameters
    if isinstance(v, float) and v == float("inf"):
        return "inf"
    return v


def traced_parameters(block: Block, dtype: Any) -> Block:
    """The block with every float parameter (each non-static float leaf: gamma, tau0, c_plus,
    c_minus, the positional Gram, also inside a composition) as a JAX array of ``dtype``.

    ``eqx.filter_jit`` treats Python floats as static and compiles once per value; apply this
    just before a jitted call so that a sweep over block parameters reuses one compilation.
    Validation stays in the blocks' ``__init__``; ``config()`` still gives plain floats."""
    if not isinstance(block, Block):
        raise TypeError(f"block must be a shapedsde Block, got {type(block).__name__}")
    def traced(x: Any) -> Any:
        if isinstance(x, float) or (isinstance(x, np.ndarray) and x.dtype.kind == "f"):
            return jnp.asarray(x, dtype)
        return x

    return jax.tree_util.tree_map(traced, block)


def residual_output(X: Array, F: Array, W: Array, gamma: Scalar,
                    branch_cv: Array) -> tuple[Array, Array]:
    """The residual update X' = lambda X + gamma B, B = F W / sqrt(n), shared by all blocks.

    F (m, p) are the branch's features before its fresh output projection W (p, n). Since
    lambda^2 + gamma^2 = 1, exactly

        V' - V = lambda gamma (X B^T + B X^T) / n + gamma^2 (B B^T - F F^T) / n
                 + gamma^2 (F F^T / n - V),

    where the first two terms have conditional mean zero given F. They and ``branch_cv`` (the
    zero-mean first-order part of gamma^2 (F F^T / n - V), supplied by the block) form the
    control variate returned with X'.
    """
    n = X.shape[-1]
    lam = scalar_sqrt(1.0 - gamma**2)
    B = F @ W / math.sqrt(n)
    cv = lam * gamma * (X @ B.T + B @ X.T) / n + gamma**2 * (B @ B.T - F @ F.T) / n + branch_cv
    return lam * X + gamma * B, cv
