r"""Solvers of the covariance SDE: small diffrax solvers whose ``step`` states the scheme.

The state y is the batch of covariances V (B, m, m); the solver state (``GuardState``) holds a
square root L of each V, the time each path blew up (-1 while alive) and how often its steps
left the PSD cone. After the scheme's update every step goes through the *guard*
(``GuardedSolver.guard``, SPEC section 5): V is factorised (its Cholesky factor tolerates rank
deficiency), projected onto the PSD cone where it left it (counted), mapped onto correlation
matrices for the normalised SDE, and a path whose variance passes the blow-up bound, or that
overflows, is frozen at its last state and its time recorded (the un-normalised SDE can blow
up in finite time; its paths are kept out of statistics, never returned as NaN).

* ``GuardedEuler``: Euler-Maruyama, V' = V + b(V) dt + noise(V, L, dW). Every block.
* ``CongruenceEuler``: the same increment to O(dt) in law, written as a congruence. With
  b = B V + V B^T + R and noise L (G + G^T) L^T (``Block.drift_split``, ``Block.noise_factor``,
  E[G G^T] = kappa dt I),

      L' = (I + B dt) L (I + G) / sqrt(1 + kappa dt),   V' = L' L'^T + R dt.

  V' - V has the drift and the noise of an Euler step up to terms of mean O(dt^2) and variance
  O(dt^2) (weak order 1, like Euler); where R = 0 (shaped attention without a mask) V' is PSD
  and of the rank of V by construction: no projection, no factorisation, no mass stuck on the
  boundary of the cone, which Euler's overshooting steps produce in hot settings.

Both are ``diffrax.AbstractSolver``s: ``diffrax.diffeqsolve`` with ``ConstantStepSize`` runs
them on ``covariance_terms`` (tested against the package's driver, ``shapedsde.sde.solve``).
"""

from __future__ import annotations

import abc
from typing import Any, ClassVar, NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from jax import Array

from .._batching import in_groups
from ..blocks.normalization import rms_state
from ..linalg import matmul, mirror_lower, psd_parts, row_sq_norms, semidefinite_cholesky, sym
from ._terms import CovarianceDrift, CovarianceNoise, NoiseFactor, unwrapped


class GuardState(NamedTuple):
    """What the guard keeps of every path besides V (B paths)."""

    L: Array  # (B, m, m) Cholesky factor of V
    LT: Array  # (B, m, m) L^T, stored: the noise's last product then needs no transpose
    t_explode: Array  # (B,) time of blow-up, -1 while the path is alive
    repairs: Array  # (B,) steps that left the PSD cone and were projected back


_Step = tuple[Array, None, dict[str, Array], Any, diffrax.RESULTS]


class GuardedSolver(diffrax.AbstractItoSolver):
    """The guard shared by the solvers (module docstring). ``normalized``: the SDE lives on
    correlation matrices (V mapped by f(V) = D^-1/2 V D^-1/2 after every step); ``bound``:
    blow-up threshold on max_a V_aa."""

    normalized: bool = eqx.field(static=True)
    bound: Array
    weak_order: ClassVar[int] = 1
    refines: ClassVar[bool] = False
    term_structure: ClassVar = diffrax.MultiTerm[tuple[CovarianceDrift, CovarianceNoise]]
    interpolation_cls: ClassVar = diffrax.LocalLinearInterpolation

    def order(self, terms: Any) -> int:
        return 1

    def strong_order(self, terms: Any) -> float:
        return 0.5

    def init(self, terms: Any, t0: Array, t1: Array, y0: Array, args: Any) -> GuardState:
        """Factorise the initial covariances (already on the state space, ``start``)."""
        L = on_state_space(y0, self.normalized, jnp.ones(y0.shape[0], bool))[1]
        zeros = jnp.zeros(y0.shape[0], y0.dtype)
        return GuardState(L, jnp.swapaxes(L, 1, 2), zeros - 1, jnp.zeros(y0.shape[0], jnp.int32))

    def func(self, terms: Any, t0: Array, y0: Array, args: Any) -> Any:
        return terms.vf(t0, y0, args)

    def start(self, V0: Array, n_paths: int) -> tuple[Array, GuardState]:
        """(y0, solver state) of ``n_paths`` paths from V0 (m, m): V0 on the state space (PSD, a
        correlation matrix if normalised), factorised once (``init`` factorises every path's
        y0, for ``diffeqsolve``)."""
        V, L = on_state_space(sym(V0[None]), self.normalized, jnp.ones(1, bool))[:2]
        shape = (n_paths, *V0.shape)
        zeros = jnp.zeros(n_paths, V0.dtype)
        return jnp.broadcast_to(mirror_lower(V), shape), GuardState(
            jnp.broadcast_to(L, shape), jnp.broadcast_to(jnp.swapaxes(L, 1, 2), shape),
            zeros - 1, jnp.zeros(n_paths, jnp.int32))

    def guard_state(self, solver_state: GuardState) -> GuardState:
        """The ``GuardState`` in the solver's state."""
        return solver_state

    @abc.abstractmethod
    def step(self, terms: Any, t0: Array, t1: Array, y0: Array, args: Any,
             solver_state: GuardState, made_jump: Any) -> _Step:
        """One step of every path, then ``guard``."""

    def covariance(self, y: Array) -> Array:
        """V of states y (..., m, m): the state is V itself (``RootCongruenceEuler``'s is a
        root of V)."""
        return y

    def variances(self, y: Array) -> Array:
        """diag V of states y (..., m)."""
        return jnp.diagonal(y, axis1=-2, axis2=-1)

    def guard(self, t1: Array, y0: Array, V1: Array, L1: Array | None,
              state: GuardState) -> _Step:
        """Put the proposed V1 (its lower triangle is read) on the state space, freeze the
        paths that blow up; L1: its square root if the scheme kept the cone (else None)."""
        alive = state.t_explode < 0
        if L1 is None:
            V1, L1, repaired, broken = on_state_space(V1, self.normalized, alive)
        else:
            broken = ~jnp.all(jnp.isfinite(V1), axis=(1, 2))
            repaired = jnp.zeros_like(broken)
            if self.normalized:
                V1, L1 = rms_state(V1, L1)
        # on the PSD state max_a V_aa = max_ab |V_ab|, and reads m entries, not m^2
        peak = jnp.max(jnp.diagonal(V1, axis1=1, axis2=2), axis=1)
        return self.settle(t1, y0, mirror_lower(V1), peak, broken, repaired, state, L1)

    def settle(self, t1: Array, y0: Array, y1: Array, peak: Array, broken: Array,
               repaired: Array, state: GuardState, L1: Array | None) -> _Step:
        """Take the proposed states y1 of the paths that are alive and stay below the bound
        (``peak``: their max_a V_aa) and not ``broken``; freeze the others at y0 and record
        when they blew up."""
        alive = state.t_explode < 0
        bad = ~(peak <= self.bound) | broken
        keep = (alive & ~bad)[:, None, None]
        y = jnp.where(keep, y1, y0)
        state = GuardState(
            L=None if L1 is None else jnp.where(keep, L1, state.L),
            LT=None if L1 is None else jnp.where(keep, jnp.swapaxes(L1, 1, 2), state.LT),
            t_explode=jnp.where(alive & bad, jnp.asarray(t1, y0.dtype), state.t_explode),
            repairs=state.repairs + (keep[:, 0, 0] & repaired).astype(state.repairs.dtype))
        return y, None, dict(y0=y0, y1=y), state, diffrax.RESULTS.successful


class GuardedEuler(GuardedSolver):
    """Euler-Maruyama, V' = V + b(V) dt + noise(V, L, dW), then the guard."""

    def step(self, terms: Any, t0: Array, t1: Array, y0: Array, args: Any,
             solver_state: GuardState, made_jump: Any) -> _Step:
        drift, noise = terms.terms
        factor = NoiseFactor(y0, solver_state.L, solver_state.LT)
        V1 = y0 + (drift.vf_prod(t0, y0, args, drift.contr(t0, t1))
                   + noise.prod(factor, noise.contr(t0, t1)))
        return self.guard(t1, y0, V1, None, solver_state)


class CongruenceEuler(GuardedSolver):
    """L' = (I + B dt) L (I + G) / sqrt(1 + kappa dt), V' = L' L'^T + R dt (module docstring),
    then the guard. Needs blocks that declare ``has_noise_factor``."""

    def step(self, terms: Any, t0: Array, t1: Array, y0: Array, args: Any,
             solver_state: GuardState, made_jump: Any) -> _Step:
        drift, noise = terms.terms
        dt, dW = drift.contr(t0, t1), noise.contr(t0, t1)

        block = unwrapped(drift).block

        def one(V: Array, L: Array, dW: Array) -> tuple[Array, Array, Array | None]:
            B, R = block.drift_split(V)
            G, kappa = block.noise_factor(V, L, dW)
            eye = jnp.eye(V.shape[0], dtype=V.dtype)
            L1 = matmul(L + dt * matmul(B, L), eye + G) * jax.lax.rsqrt(1.0 + kappa * dt)
            return L1, matmul(L1, L1.T), None if R is None else R * dt

        L1, V1, RdT = jax.vmap(one)(y0, solver_state.L, dW)
        if RdT is not None:  # the rest of the drift may leave the cone: factorise again
            V1, L1 = V1 + RdT, None
        return self.guard(t1, y0, V1, L1, solver_state)


class RootCongruenceEuler(GuardedSolver):
    """``CongruenceEuler`` where the whole drift is a congruence direction (R = 0,
    ``Block.drift_is_congruence``: shaped attention without mask or with padding), whose state
    is the root itself: y = L, V = L L^T (formed only where it is saved, ``covariance``),

        L' = (L + B L dt)(I + G) / sqrt(1 + kappa dt),

    with B L, G and kappa from L alone (``Block.root_coefficients``: two m x m products for
    shaped attention, B L in O(m^2)): three products per step, where ``CongruenceEuler``
    takes five (B L, and V' = L' L'^T for the next step's drift). The same scheme: its paths
    are ``CongruenceEuler``'s up to rounding. The guard reads max_a V_aa as the largest row
    norm of L' and normalises by scaling its rows; nothing leaves the cone, so nothing is
    repaired, and the solver state keeps no second copy of L."""

    def init(self, terms: Any, t0: Array, t1: Array, y0: Array, args: Any) -> GuardState:
        zeros = jnp.zeros(y0.shape[0], y0.dtype)
        return GuardState(None, None, zeros - 1, jnp.zeros(y0.shape[0], jnp.int32))

    def func(self, terms: Any, t0: Array, y0: Array, args: Any) -> Any:
        """Not offered: the terms' vector field is V's, the state is a root of V (diffrax
        reads ``func`` only to choose a first step for an adaptive controller)."""
        raise ValueError("RootCongruenceEuler steps a root of V, for which the terms give no "
                         "vector field: drive it with diffrax.ConstantStepSize")

    def start(self, V0: Array, n_paths: int) -> tuple[Array, GuardState]:
        """The root of V0 on the state space, factorised once, for ``n_paths`` paths."""
        L = on_state_space(sym(V0[None]), self.normalized, jnp.ones(1, bool))[1]
        y0 = jnp.broadcast_to(L, (n_paths, *V0.shape))
        return y0, self.init(None, None, None, y0, None)

    def covariance(self, y: Array) -> Array:
        V = y @ jnp.swapaxes(y, -1, -2)
        if self.normalized:  # the rows of L have norm 1 up to rounding
            V = jnp.where(jnp.eye(V.shape[-1], dtype=bool), jnp.ones((), V.dtype), V)
        return V

    def variances(self, y: Array) -> Array:
        return row_sq_norms(y)

    def step(self, terms: Any, t0: Array, t1: Array, y0: Array, args: Any,
             solver_state: GuardState, made_jump: Any) -> _Step:
        drift, noise = terms.terms
        dt, dW = drift.contr(t0, t1), noise.contr(t0, t1)
        block = unwrapped(drift).block

        def one(L: Array, dW: Array) -> Array:
            BL, G, kappa = block.root_coefficients(L, dW)
            eye = jnp.eye(L.shape[0], dtype=L.dtype)
            return matmul(L + dt * BL, eye + G) * jax.lax.rsqrt(1.0 + kappa * dt)

        L1 = jax.vmap(one)(y0, dW)
        norms = self.variances(L1)  # (B, m): diag V'
        broken = ~jnp.all(jnp.isfinite(norms), axis=1)
        if self.normalized:
            L1 = L1 * jax.lax.rsqrt(jnp.clip(norms, jnp.finfo(L1.dtype).tiny))[:, :, None]
            norms = jnp.ones_like(norms)
        return self.settle(t1, y0, L1, jnp.max(norms, axis=1), broken,
                           jnp.zeros_like(broken), solver_state, None)


SOLVERS = {"euler": GuardedEuler, "congruence": CongruenceEuler}


def solver_class(name: str, block: Any) -> type[GuardedSolver]:
    """The solver class of ``name`` for ``block``: "congruence" steps the root alone
    (``RootCongruenceEuler``) where the block declares ``drift_is_congruence``."""
    if name == "congruence" and block.drift_is_congruence:
        return RootCongruenceEuler
    return SOLVERS[name]


_REPAIR_GROUP = 8  # paths repaired per eigh call


def on_state_space(V: Array, normalized: bool, active: Array
                   ) -> tuple[Array, Array, Array, Array]:
    """Project a symmetric batch V (B, m, m; its lower triangle is read) onto the PSD cone where
    needed and normalise; return (V, L, repaired, broken). ``active`` (B,) marks the paths
    whose result is used; ``broken`` flags active paths whose V has an entry that is not finite.

    L is the Cholesky factor, which tolerates rank deficiency (``linalg.semidefinite_cholesky``:
    a numerically singular direction is dropped from L; V is unchanged, so nothing is counted).
    Where it does not exist (V outside the cone beyond rounding, or not finite) an ``eigh``
    gives the projection (counted in ``repaired``) and the symmetric square root. Such paths are
    rare, so they are gathered in groups of ``_REPAIR_GROUP`` and only those are decomposed (a
    ``while_loop`` until none is left) instead of the whole batch; inactive (frozen) paths are
    skipped. Each path's result depends on that path only.
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
    if normalized:
        V, L = rms_state(V, L)
    return V, L, repaired, broken
