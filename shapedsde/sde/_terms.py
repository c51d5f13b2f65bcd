r"""The covariance SDE of a block as two diffrax terms, for a batch of B paths (the state y is
their covariances, shape (B, m, m)):

    dV = b(V) dt + noise(V, L, dW),   L L^T = V,   dW: ``block.n_noise`` m x m Brownian matrices.

``CovarianceDrift`` is an ODE term (control dt); ``CovarianceNoise`` a control term driven by a
Brownian path (``MatrixBrownianPath``), whose vector field at V is V with a square root of it
(``NoiseFactor``: its Cholesky factor): the noise is linear in dW and formed from L in O(m^3)
("cheap noise", SPEC section 3). ``covariance_terms(block, path)``, the ``MultiTerm`` of the
two, is an SDE that diffrax's own solvers can step too (``diffrax.Euler``: y + b dt + noise);
the package's solvers
(``_solvers``) keep L from the factorisation that guards the PSD cone and pass it to ``prod``
instead of factorising again.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import diffrax
import jax
import jax.numpy as jnp
from jax import Array

from ..blocks import Block
from ..linalg import psd_sqrt, semidefinite_cholesky


class NoiseFactor(NamedTuple):
    """The noise's vector field at V: V, a square root L (L L^T = V) and L^T."""

    V: Array
    L: Array
    LT: Array


class CovarianceDrift(diffrax.AbstractTerm):
    """b(V) dt for every path: vf(t, V) = b(V), control dt."""

    block: Block

    def vf(self, t: Any, y: Array, args: Any) -> Array:
        return jax.vmap(self.block.drift)(y)

    def contr(self, t0: Array, t1: Array, **kwargs: Any) -> Array:
        return t1 - t0

    def prod(self, vf: Array, control: Array) -> Array:
        return vf * control


class CovarianceNoise(diffrax.AbstractTerm):
    """noise(V, L, dW) for every path: vf(t, V) = ``NoiseFactor`` (V and its Cholesky factor,
    or where V has left the PSD cone the root of its projection), control the Brownian
    increment dW (B, n_noise, m, m) of ``path``."""

    block: Block
    path: diffrax.AbstractBrownianPath

    def vf(self, t: Any, y: Array, args: Any) -> NoiseFactor:
        L, ok, _ = semidefinite_cholesky(y)  # the package's solvers' root, so the same paths
        L = jnp.where(ok[..., None, None], L, psd_sqrt(y)[0])  # outside the cone: eigen root
        return NoiseFactor(y, L, L.swapaxes(-1, -2))

    def contr(self, t0: Array, t1: Array, **kwargs: Any) -> Array:
        return self.path.evaluate(t0, t1)

    def prod(self, vf: NoiseFactor, control: Array) -> Array:
        return jax.vmap(self.block.noise)(vf.V, vf.L, control, vf.LT)


def unwrapped(term: diffrax.AbstractTerm) -> CovarianceDrift | CovarianceNoise:
    """The covariance term inside ``term``: ``diffeqsolve`` wraps each term (for the direction
    of integration; an identity forwards), and solvers that read a term's block or path reach
    them here."""
    while not isinstance(term, (CovarianceDrift, CovarianceNoise)):
        term = term.term
    return term


def covariance_terms(block: Block, path: diffrax.AbstractBrownianPath) -> diffrax.MultiTerm:
    """The SDE of ``block`` driven by ``path``: MultiTerm(drift, noise)."""
    return diffrax.MultiTerm(CovarianceDrift(block), CovarianceNoise(block, path))
