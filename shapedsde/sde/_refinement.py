r"""Per-path step refinement where the state grows (the un-normalised SDE's blow-up).

The attention drift is cubic in V, so its rate relative to V grows like |V|^2: a fixed step
that resolves V ~ V0 overshoots once |V| is large, and the fraction of paths that cross the
blow-up bound by T then depends on the step (figure 7). Here every path gets its own level
k = ceil(log2(r REFERENCE_STEP / MAX_CHANGE)), clipped to [0, MAX_LEVEL], from its relative
drift rate r = max_ab |b(V)_ab| / max_a V_aa; a path with k > 0 at the start of a step redoes
it in substeps of dt / 2^k, k re-evaluated at the start of every substep (``Refined.walk``; at
most HEADROOM levels deeper than at the step's start), on the step's own Brownian path
(``MatrixBrownianPath.within``: its dyadic parts are nodes of the tree under the step, exact in
law given the step's increment, and shared by the coupled solves at other steps).

``Refined`` wraps a solver as diffrax's ``HalfSolver`` wraps one: its ``step`` is the wrapped
solver's step, and, where its state says that some path may need it, the hot paths' steps
redone by the wrapped solver in substeps. The normalised SDE never needs it (it cannot blow
up).

The level depends on the state only, so the scheme is Euler (or the congruence step) with the
state-dependent step dt / 2^k(V) (as in adaptive steps for superlinear drifts, Kelly and Lord
2018): every substep shrinks with dt and the whole law, crossing fraction included, converges as
dt -> 0, with the error that ``_step_error`` measures. A bound on the substep's change
that did not scale with dt would leave the hot paths' error independent of dt: at dt = 2^-8 in
figure 7's setting the crossing fraction went from 5.9% to 4.6% (4000 paths each) when that
bound went from 0.01 to 0.0025, and coupled solves at dt and 2 dt crossed together.

Why the relative drift rate suffices: for hot attention at large V the noise's relative scale
grows like |V| while the drift's relative rate grows like |V|^2, so over a substep with
r h <= MAX_CHANGE the relative noise is O(sqrt(MAX_CHANGE)) at every scale. Beyond the deepest
level the path overshoots and is flagged; there log |V| drifts upward so strongly that the SDE
itself escapes to the bound with probability close to one.

Hot paths are few: their levels are computed in groups (only the paths above a calm scale
cost a drift evaluation), then those at levels k > 0 are refined together in small groups
(``group_size``; ``_batching.in_groups``, as the PSD repairs), each substep's Brownian
increment read from the tree when it is taken (the normals on the way down to its node, not
the 2^depth leaves of the step).
A path's result therefore depends on that path alone (its state and its Brownian path), not
on the batch or the group it is refined in (tested to rounding, ``tests/test_sde.py``).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ClassVar

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
from jax import Array

from .._batching import in_groups
from .._precision import full_precision
from ..blocks import Block
from ._brownian import MAX_LEVEL
from ._solvers import GuardedSolver, GuardState
from ._terms import unwrapped

MAX_CHANGE = 0.01
"""Largest relative change of V that the drift may make in one substep of a step of
REFERENCE_STEP (so at most MAX_CHANGE dt / REFERENCE_STEP at step dt)."""
REFERENCE_STEP = 2.0**-8
"""The step at which a substep's relative drift change is at most MAX_CHANGE."""
SMALL_PRODUCTS = 32
"""Tokens up to which a step's fixed cost (many small kernels) outweighs its m x m products:
there hot paths are refined in pairs and their levels evaluated in groups of 32; beyond, a
path that fills a slot of a group only to pad it costs as much as a hot one (``group_size``,
``level_group``)."""
HEADROOM = 2
"""Levels a path may deepen by within a step (its drift rate growing 4-fold): its Brownian
increments are read to its starting level plus this (at most MAX_LEVEL). With 0, figure 7's
crossing fraction at dt = 1/512 was 4.4% against 3.75% (2000 paths, one Brownian path)."""


def group_size(m: int) -> int:
    """Hot paths refined together at m tokens. A group's walks run as one vectorised loop, as
    long as its longest walk, and every substep draws all tree levels' normals for each path
    of the group: at m = 2 those are cheap and a group of 8 shares each substep's fixed cost;
    from m = 3 on the draws dominate and pairs are cheaper; beyond SMALL_PRODUCTS a substep's
    products dominate, and a pair with one hot path does twice the work of that path alone
    (measured in ``benchmarks/README.md``)."""
    return 8 if m <= 2 else 2 if m <= SMALL_PRODUCTS else 1


def level_group(m: int) -> int:
    """Paths whose refinement level is evaluated together (``_levels_of``): 32 up to
    SMALL_PRODUCTS tokens, where the drift's evaluation is cheap beside the loop's fixed cost,
    4 beyond, where each path of a group (hot or padding) costs the products of V = L L^T and
    of the drift."""
    return 32 if m <= SMALL_PRODUCTS else 4


def levels(drift_rate: Array) -> Array:
    """Refinement level k of every path (int32) from its relative drift rate r: 2^k substeps
    keep r REFERENCE_STEP / 2^k <= MAX_CHANGE. It depends on the state only (not on dt)."""
    ratio = jnp.maximum(drift_rate * REFERENCE_STEP / MAX_CHANGE, 1.0)
    return jnp.clip(jnp.ceil(jnp.log2(ratio)), 0, MAX_LEVEL).astype(jnp.int32)


@eqx.filter_jit  # one compilation on the first call, not one per operation
@full_precision
def calm_scale(drift: Callable[[Array], Array], V0: Array) -> Array:
    """Largest variance below which no path needs refinement: max diag V0 times
    max(2, sqrt(MAX_CHANGE / (r0 REFERENCE_STEP))), r0 the relative drift rate at V0, assuming
    that rate grows at most like |V|^2 (the cubic attention drift; the MLP's is bounded)."""
    scale = jnp.max(jnp.diagonal(V0))
    r0 = jnp.max(jnp.abs(drift(V0))) / scale
    return scale * jnp.maximum(2.0, jnp.sqrt(MAX_CHANGE / jnp.maximum(r0 * REFERENCE_STEP,
                                                                       1e-30)))


def _rate(block: Block, V: Array) -> Array:
    """Relative drift rate max_ab |b(V)_ab| / max_a V_aa of one path."""
    return jnp.max(jnp.abs(block.drift(V))) / jnp.max(jnp.diagonal(V))


def may_need_refinement(variances: Array, state: GuardState, calm: Array) -> Array:
    """Paths (B,) alive with their largest variance (of ``variances``, (B, m)) above ``calm``
    (``calm_scale``): below it the drift needs no refinement."""
    return (state.t_explode < 0) & (jnp.max(variances, axis=1) > calm)


def _levels_of(block: Block, solver: GuardedSolver, y: Array, grown: Array) -> Array:
    """``levels`` (B,) of the ``grown`` paths of the batch of states y (0 elsewhere), their
    drifts evaluated in groups of ``level_group``: only those paths cost a drift evaluation (and,
    for a solver whose state is a root, the product that forms V)."""

    def chunk(idx: Array, todo: Array, level: Array) -> tuple[Array, Array]:
        rate = jax.vmap(functools.partial(_rate, block))(solver.covariance(y[idx]))
        return level.at[idx].set(jnp.where(todo, levels(rate), level[idx])), todo

    return in_groups(grown.astype(jnp.int32), level_group(y.shape[-1]), chunk,
                     jnp.zeros(grown.shape, jnp.int32))


def _take(tree: Any, idx: Array) -> Any:
    return jax.tree_util.tree_map(lambda a: a[idx], tree)


class Refined(diffrax.AbstractItoSolver):
    """``solver``, with the steps of hot paths redone in substeps (module docstring).
    ``calm``: the variance below which no path needs refinement (``calm_scale``); ``group``:
    hot paths refined together (default ``group_size(m)``; a matter of cost only)."""

    solver: GuardedSolver
    calm: Array
    group: int | None = eqx.field(static=True, default=None)

    def __check_init__(self) -> None:
        if self.group is not None and (not isinstance(self.group, int) or self.group < 1):
            raise ValueError(f"group must be None or an int >= 1, got {self.group!r}")

    @property
    def term_structure(self) -> Any:
        return self.solver.term_structure

    @property
    def interpolation_cls(self) -> Any:  # pyright: ignore
        return self.solver.interpolation_cls

    @property
    def weak_order(self) -> int:
        return self.solver.weak_order

    def order(self, terms: Any) -> int | None:
        return self.solver.order(terms)

    def strong_order(self, terms: Any) -> Any:
        return self.solver.strong_order(terms)

    def func(self, terms: Any, t0: Array, y0: Array, args: Any) -> Any:
        return self.solver.func(terms, t0, y0, args)

    def start(self, V0: Array, n_paths: int) -> tuple[Array, tuple[GuardState, Array]]:
        y0, state = self.solver.start(V0, n_paths)
        return y0, (state, self.hot(y0, state))

    def guard_state(self, solver_state: tuple[GuardState, Array]) -> GuardState:
        return solver_state[0]

    def covariance(self, y: Array) -> Array:
        return self.solver.covariance(y)

    def init(self, terms: Any, t0: Array, t1: Array, y0: Array,
             args: Any) -> tuple[GuardState, Array]:
        """The wrapped solver's state, and whether some path may need refinement."""
        state = self.solver.init(terms, t0, t1, y0, args)
        return state, self.hot(y0, state)

    refines: ClassVar[bool] = True
    """Its state says whether some path may need refinement (``hot``): a driver may step the
    wrapped solver alone while it says none does (``shapedsde.sde.solve`` does)."""

    def hot(self, y: Array, state: GuardState) -> Array:
        """Whether some path of (y, the wrapped solver's state) may need refinement."""
        return jnp.any(may_need_refinement(self.solver.variances(y), state, self.calm))

    def step(self, terms: Any, t0: Array, t1: Array, y0: Array, args: Any,
             solver_state: tuple[GuardState, Array], made_jump: Any) -> Any:
        """The wrapped solver's step, refined (``refined_step``) where the state says some path
        may need it."""
        state0, hot = solver_state
        args = (terms, t0, t1, y0, args, state0)
        return jax.lax.cond(hot, lambda: self.refined_step(*args),
                            lambda: self._plain_step(*args))

    def _plain_step(self, terms: Any, t0: Array, t1: Array, y0: Array, args: Any,
                    state0: GuardState) -> Any:
        y1, _, dense, state1, result = self.solver.step(terms, t0, t1, y0, args, state0, False)
        return y1, None, dense, (state1, self.hot(y1, state1)), result

    def refined_step(self, terms: Any, t0: Array, t1: Array, y0: Array, args: Any,
                     state0: GuardState) -> Any:
        """The wrapped solver's step, with the hot paths redone in substeps (``refine``)."""
        y1, _, dense, state1, result = self.solver.step(terms, t0, t1, y0, args, state0, False)
        y1, state1 = self.refine(terms, t0, t1, (y0, state0), y1, state1)
        return y1, None, dense, (state1, self.hot(y1, state1)), result

    def refine(self, terms: Any, t0: Array, t1: Array, start: tuple[Array, GuardState],
               y1: Array, state1: GuardState) -> tuple[Array, GuardState]:
        """(y1, state1), the plain step of the batch from ``start``, with the hot paths redone
        in substeps. A path above ``calm`` at level k > 0 at the start of the step is redone,
        going down to level min(k + HEADROOM, MAX_LEVEL) at most; such paths are taken in
        groups of ``group`` paths, deepest first (so that a group's walks take similar
        numbers of substeps), each on its own Brownian path and to its own depth: a path does
        not depend on the paths it is grouped with. Paths at level 0 keep their plain step."""
        y0, state0 = start
        grown = may_need_refinement(self.solver.variances(y0), state0, self.calm)
        level = _levels_of(unwrapped(terms.terms[0]).block, self.solver, y0, grown)
        depth = jnp.minimum(level + HEADROOM, MAX_LEVEL)
        step_path = unwrapped(terms.terms[1]).path.within(t0, t1)

        def group(idx: Array, todo: Array, out: tuple[Array, GuardState]
                  ) -> tuple[tuple[Array, GuardState], Array]:
            def walk(start: tuple[Array, GuardState], depth: Array,
                     words: Array) -> tuple[Array, GuardState]:
                one = eqx.tree_at(lambda p: p.normals.words, step_path, words[None])
                return self.walk(terms, t0, start, depth, one)

            redone = jax.vmap(walk)(_take(start, idx), depth[idx], step_path.normals.words[idx])

            def put(whole: Array, new: Array) -> Array:
                keep = todo.reshape((-1,) + (1,) * (new.ndim - 1))
                return whole.at[idx].set(jnp.where(keep, new, whole[idx]))

            return jax.tree_util.tree_map(put, out, redone), todo

        deepest_first = jnp.where(grown & (level > 0), depth + 1, 0)
        size = group_size(y0.shape[-1]) if self.group is None else self.group
        return in_groups(deepest_first, size, group, (y1, state1))

    def walk(self, terms: Any, t0: Array, start: tuple[Array, GuardState], depth: Array,
             step_path: Any) -> tuple[Array, GuardState]:
        """One path (arrays without batch axis; ``step_path`` its Brownian path over the
        step, in local time) across the step in substeps on the dyadic grid of 2^depth units:
        a substep starts at a multiple p of the unit h / 2^depth and is 2^(depth - k) units
        long, k = ``levels`` at its start (at most ``depth``), shortened to the largest power
        of two dividing p, so that it is a node of the step's Brownian tree. The level follows
        the state within the step: a path that grows during the step takes shorter substeps
        from where it has grown. Substeps run in local time, where their times are exact; a
        blow-up is recorded at its global time."""
        block = unwrapped(terms.terms[0]).block
        local = eqx.tree_at(lambda ts: unwrapped(ts.terms[1]).path, terms, step_path)
        h = step_path.h
        n = jnp.left_shift(1, depth)
        unit = h / n.astype(h.dtype)

        def substep(carry: tuple[Array, Array, GuardState]) -> tuple[Array, Array, GuardState]:
            p, y, state = carry
            k = jnp.minimum(levels(_rate(block, self.solver.covariance(y)[0])), depth)
            aligned = jnp.where(p == 0, depth, jax.lax.population_count((p & -p) - 1))
            w = jnp.left_shift(1, jnp.minimum(depth - k, aligned))  # units in the substep
            s1 = jnp.where(p + w == n, h, (p + w).astype(h.dtype) * unit)
            y, _, _, state, _ = self.solver.step(local, p.astype(h.dtype) * unit, s1, y, None,
                                                 state, False)
            return p + w, y, state

        y0, state0 = jax.tree_util.tree_map(lambda a: a[None], start)
        _, y, state = jax.lax.while_loop(lambda c: c[0] < n, substep,
                                         (jnp.zeros((), jnp.int32), y0, state0))
        blew_up = (state.t_explode >= 0) & (state0.t_explode < 0)
        state = state._replace(t_explode=jnp.where(blew_up, t0 + state.t_explode,
                                                   state.t_explode))
        return jax.tree_util.tree_map(lambda a: a[0], (y, state))
