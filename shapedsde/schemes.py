r"""One step of the covariance SDE for a batch of paths: the solvers and the state they keep.

    dV = b(V) dt + noise(V, L, dW),   L L^T = V,   dW: ``block.n_noise`` m x m Brownian matrices

A solver is a small diffrax solver class (``step`` as in ``diffrax.AbstractSolver``) that
declares its weak order; ``shapedsde.sde`` drives it over a grid and estimates its step error
by coupled solves (``shapedsde.step_error``). Both keep every path on the state space and
freeze a path that blows up (SPEC section 3); ``step``'s ``args`` is the integer index of the
step on its grid, which names the step's Brownian increment (``Increments``).

* ``GuardedEuler``: Euler-Maruyama, then the Cholesky factor (tolerant of rank deficiency,
  ``linalg.semidefinite_cholesky``), projection onto the PSD cone where the step left it
  (counted in ``psd_repairs``), optional normalisation, blow-up freeze. Works for every block.
* ``CongruenceEuler``: the same increment to O(dt) in law, written as a congruence. With
  drift b = B V + V B^T + R and noise L (G + G^T) L^T (``Block.drift_split``,
  ``Block.noise_factor``, E[G G^T] = kappa dt I),

      L' = (I + B dt) L (I + G) / sqrt(1 + kappa dt),   V' = L' L'^T + R dt.

  V' - V has the drift and the noise of an Euler step up to terms of mean O(dt^2) and of
  variance O(dt^2), so the scheme has weak order 1 like Euler; but where R = 0 (shaped
  attention without mask) V' is PSD and of the rank of V by construction: no projection, no
  factorisation, and no mass stuck on the boundary of the cone. Euler steps overshoot that
  boundary when the coefficients are large (hot attention), and the projection glues the
  overshooting paths to rank-deficient states, biasing the law of rho (measured in
  ``benchmarks/weak_convergence.py``).
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from jax import Array

from ._batching import in_groups
from .blocks.base import Block
from .brownian import Increments
from .linalg import matmul, mirror_lower, psd_parts, semidefinite_cholesky
from .normalize import ito_drift, ito_noise, rms
from .refinement import may_need_refinement, refine


class SDEState(NamedTuple):
    """State of a batch of B paths (the solver integrates the batch as one system)."""

    V: Array  # (B, m, m) covariance: its lower triangle (mirror_lower gives the matrix)
    L: Array  # (B, m, m) a square root of V, L L^T = V
    LT: Array  # (B, m, m) L^T, stored: the noise's last product then needs no transpose
    t_explode: Array  # (B,) time of blow-up, -1 while the path is alive
    repairs: Array  # (B,) steps that left the PSD cone and were projected back


class CovarianceSDE(eqx.Module):
    """The SDE of one block under one normalisation: drift and noise of one path's state."""

    block: Block
    normalize: str | None = eqx.field(static=True)
    scheme: str = eqx.field(static=True)
    m: int = eqx.field(static=True)
    dtype: str = eqx.field(static=True)

    def drift(self, y: SDEState) -> Array:
        if self.normalize == "rms" and self.scheme == "ito":
            b, Sigma = self.block.drift(y.V), self.block.diffusion_cov(y.V)
            return ito_drift(rms, b, Sigma, y.V)
        return self.block.drift(y.V)

    def noise(self, y: SDEState, dW: Array) -> Array:
        dV = self.block.noise(y.V, y.L, dW, y.LT)
        if self.normalize == "rms" and self.scheme == "ito":
            return ito_noise(rms, y.V, dV)
        return dV


class _NoiseTerm(diffrax.AbstractTerm):
    """Matrix-Brownian noise term: control dW (B, n_noise, m, m), product noise(V, L, dW)."""

    sde: CovarianceSDE
    increments: Increments
    mode: Array

    def vf(self, t, y: SDEState, args) -> SDEState:
        return y

    def contr(self, t0, t1, *, step: Array | None = None, **kwargs) -> Array:
        return self.increments(step, t1 - t0, self.mode)

    def prod(self, vf: SDEState, control: Array) -> Array:
        return jax.vmap(self.sde.noise)(vf, control)


class _DriftTerm(diffrax.AbstractTerm):
    """Drift term acting on the covariance part of the state: control dt, product b(V) dt."""

    sde: CovarianceSDE

    def vf(self, t, y: SDEState, args) -> Array:
        return jax.vmap(self.sde.drift)(y)

    def contr(self, t0, t1, **kwargs):
        return t1 - t0

    def prod(self, vf: Array, control) -> Array:
        return vf * control


def make_terms(sde: CovarianceSDE, increments: Increments, mode: Array) -> diffrax.MultiTerm:
    return diffrax.MultiTerm(_DriftTerm(sde), _NoiseTerm(sde, increments, mode))


class _GuardedSolver(diffrax.AbstractSolver):
    """Shared part of the solvers: the state-space guard after the step, the blow-up freeze and
    the refinement of hot paths (module docstring). Subclasses give ``propose``: V' (lower
    triangle read) and, if the step keeps the cone by construction, its square root L' (else
    None), from the state, the step size and the Brownian increment."""

    sde: CovarianceSDE
    bound: Array  # blow-up threshold on max_a V_aa
    calm: Array  # only paths with max_a V_aa above this may need refinement (refinement.calm_scale)
    weak_order: ClassVar[int] = 1
    term_structure: ClassVar = diffrax.MultiTerm[tuple[diffrax.AbstractTerm,
                                                       diffrax.AbstractTerm]]
    interpolation_cls: ClassVar = diffrax.LocalLinearInterpolation

    def order(self, terms) -> int:
        return 1

    def strong_order(self, terms) -> float:
        return 0.5

    def init(self, terms, t0, t1, y0: SDEState, args) -> Array | None:
        """Solver state: whether some path may need refinement in the next step (None with
        normalisation), carried from step to step."""
        return None if self.sde.normalize is not None else self._any_grown(y0)

    def _any_grown(self, y: SDEState) -> Array:
        return jnp.any(may_need_refinement(y, self.calm))

    def func(self, terms, t0, y0, args):
        return terms.vf(t0, y0, args)

    def propose(self, terms, y: SDEState, dt: Array, dW: Array) -> tuple[Array, Array | None]:
        raise NotImplementedError

    def advance(self, terms, y0: SDEState, t0: Array, t1: Array, dW: Array) -> SDEState:
        """One step of size t1 - t0 with increments dW (B, n_noise, m, m) for every path, then
        the guard; a path that leaves the state space is frozen and its time recorded."""
        y = y0._replace(V=mirror_lower(y0.V))
        V1, L1 = self.propose(terms, y, t1 - t0, dW)
        alive = y0.t_explode < 0
        if L1 is None:
            V1, L1, repaired, broken = onto_state_space(V1, self.sde.normalize, alive)
        else:
            broken = ~jnp.all(jnp.isfinite(V1), axis=(1, 2))
            repaired = jnp.zeros_like(broken)
            if self.sde.normalize == "rms":
                V1, L1 = normalise_rms(V1, L1)
        # on the PSD state max_a V_aa = max_ab |V_ab|, and reads m entries, not m^2
        too_big = ~(jnp.max(jnp.diagonal(V1, axis1=1, axis2=2), axis=1) <= self.bound)
        bad = too_big | broken
        keep = alive & ~bad
        return SDEState(
            V=jnp.where(keep[:, None, None], V1, y0.V),
            L=jnp.where(keep[:, None, None], L1, y0.L),
            LT=jnp.where(keep[:, None, None], jnp.swapaxes(L1, 1, 2), y0.LT),
            t_explode=jnp.where(alive & bad, jnp.asarray(t1, y0.V.dtype), y0.t_explode),
            repairs=y0.repairs + (keep & repaired).astype(y0.repairs.dtype),
        )

    def step_as(self, terms, t0, t1, y0: SDEState, args,
                refining: bool) -> tuple[SDEState, Array | None]:
        """One step of every path of the batch (``args``: its index on the grid) and the new
        solver state. With ``refining`` (static), paths whose drift is fast for their state are
        stepped again in 2^k(V) substeps on the grid's Brownian path (``refinement.refine``);
        without, the plain step. A driver picks the branch from the solver state (``step``);
        ``shapedsde.sde`` runs the plain and the refining steps as two loops instead, since a
        ``cond`` in every step costs even when not taken (m = 8, 1000 paths, 260 steps: 0.47
        against 0.34 s): its operands and results are copied out of the loop's fusions."""
        y1 = self.advance(terms, y0, t0, t1, terms.terms[1].contr(t0, t1, step=args))
        if self.sde.normalize is not None:  # the normalised SDE cannot blow up
            return y1, None
        if refining:
            y1 = refine(self, terms, y0, y1, t0, t1, args)
        return y1, self._any_grown(y1)

    def step(self, terms, t0, t1, y0: SDEState, args, solver_state, made_jump):
        """``step_as``, refining where ``solver_state`` (from ``init`` or the previous step)
        says some path may need it (diffrax's solver interface)."""
        del made_jump
        if solver_state is None:
            y1, solver_state = self.step_as(terms, t0, t1, y0, args, False)
        else:
            y1, solver_state = jax.lax.cond(
                solver_state, lambda: self.step_as(terms, t0, t1, y0, args, True),
                lambda: self.step_as(terms, t0, t1, y0, args, False))
        return y1, None, dict(y0=y0, y1=y1), solver_state, diffrax.RESULTS.successful


class GuardedEuler(_GuardedSolver):
    """Euler-Maruyama: V' = V + b(V) dt + noise(V, L, dW), then the guard."""

    def propose(self, terms, y: SDEState, dt: Array, dW: Array) -> tuple[Array, None]:
        drift_term, noise_term = terms.terms
        dV = drift_term.vf_prod(None, y, None, dt) + noise_term.vf_prod(None, y, None, dW)
        return y.V + dV, None


class CongruenceEuler(_GuardedSolver):
    """L' = (I + B dt) L (I + G) / sqrt(1 + kappa dt), V' = L' L'^T + R dt (module docstring).
    Needs ``block.noise_factor``; the normalised SDE in its "project" form (f after the step)."""

    def propose(self, terms, y: SDEState, dt: Array, dW: Array) -> tuple[Array, Array | None]:
        block = self.sde.block

        def one(V: Array, L: Array, dW: Array) -> tuple[Array, Array, Array | None]:
            B, R = block.drift_split(V)
            G, kappa = block.noise_factor(V, L, dW)
            eye = jnp.eye(V.shape[0], dtype=V.dtype)
            L1 = matmul(L + dt * matmul(B, L), eye + G) * jax.lax.rsqrt(1.0 + kappa * dt)
            return L1, matmul(L1, L1.T), None if R is None else R * dt

        L1, V1, RdT = jax.vmap(one)(y.V, y.L, dW)
        if RdT is None:
            return V1, L1
        return V1 + RdT, None


SOLVERS = {"euler": GuardedEuler, "congruence": CongruenceEuler}


def supports_congruence(block: Block, m: int) -> bool:
    """Whether ``block`` gives the factors the congruence solver needs (evaluated on shapes)."""
    V = jax.ShapeDtypeStruct((m, m), jnp.float32)
    dW = jax.ShapeDtypeStruct((block.n_noise, m, m), jnp.float32)
    return jax.eval_shape(block.noise_factor, V, V, dW) is not None


def normalise_rms(V: Array, L: Array) -> tuple[Array, Array]:
    """f(V) = D^{-1/2} V D^{-1/2} on a batch, and the matching root D^{-1/2} L."""
    s = jax.lax.rsqrt(jnp.clip(jnp.diagonal(V, axis1=1, axis2=2), jnp.finfo(V.dtype).tiny))
    V = V * s[:, :, None] * s[:, None, :]
    V = jnp.where(jnp.eye(V.shape[1], dtype=bool), jnp.ones((), V.dtype), V)
    return V, s[:, :, None] * L


_REPAIR_GROUP = 8  # paths repaired per eigh call


def onto_state_space(V: Array, normalize: str | None,
                     active: Array) -> tuple[Array, Array, Array, Array]:
    """Project a symmetric batch V (B, m, m) onto the PSD cone where needed and normalise; return
    (V, L, repaired, broken). ``active`` (B,) marks the paths whose result is used; ``broken``
    flags active paths whose V has an entry that is not finite.

    L is the Cholesky factor, which tolerates rank deficiency (``linalg.semidefinite_cholesky``:
    a numerically singular direction is dropped from L; V is unchanged, so nothing is counted).
    Where it does not exist (V outside the cone beyond rounding, or not finite) an ``eigh``
    gives the projection (counted in ``repaired``) and the symmetric square root. Such paths are
    rare, so they are gathered in groups of ``_REPAIR_GROUP`` and only those are decomposed (a
    ``while_loop`` until none is left) instead of the whole batch; inactive (frozen or
    exploding) paths are skipped. Each path's result depends on that path only.
    """
    L, ok, _ = semidefinite_cholesky(V)

    def repair_group(idx: Array, todo: Array,
                     state: tuple[Array, ...]) -> tuple[tuple[Array, ...], Array]:
        V, L, left, broken = state  # todo: the group may hold paths that need nothing
        finite = jnp.all(jnp.isfinite(V[idx]), axis=(1, 2))
        eye = jnp.eye(V.shape[1], dtype=V.dtype)
        V_psd, L_eig, lam = psd_parts(jnp.where(finite[:, None, None], mirror_lower(V[idx]), eye))
        tol = 100 * jnp.finfo(V.dtype).eps * jnp.max(jnp.abs(lam), axis=1)
        out = (todo & (lam[:, 0] < -tol))[:, None, None]
        return (V.at[idx].set(jnp.where(out, V_psd, V[idx])),
                L.at[idx].set(jnp.where(todo[:, None, None], L_eig, L[idx])),
                left.at[idx].set(left[idx] | out[:, 0, 0]),
                broken.at[idx].set(broken[idx] | (todo & ~finite))), todo

    no = jnp.zeros_like(ok)
    V, L, repaired, broken = in_groups((~ok & active).astype(jnp.int32), _REPAIR_GROUP,
                                       repair_group, (V, L, no, no))
    if normalize == "rms":  # V's lower triangle defines it; the mirror is formed when read
        V, L = normalise_rms(V, L)
    return V, L, repaired, broken
