r"""Per-path step refinement where the state grows (the un-normalised SDE's blow-up).

The attention drift is cubic in V, so its rate relative to V grows like |V|^2: a fixed step
that resolves V ~ V0 overshoots once |V| is large, and the fraction of paths that cross the
blow-up bound by T then depends on the step (figure 7). Here every path gets its own level
k = ceil(log2(r REFERENCE_STEP / MAX_CHANGE)), clipped to [0, MAX_LEVEL], from its relative
drift rate r = max_ab |b(V)_ab| / max_a V_aa; a path with k > 0 at the start of a step redoes
it in substeps of dt / 2^k, k re-evaluated at the start of every substep (``_walk``; at most
HEADROOM levels deeper than at the step's start), on the Brownian path of the grid
(``brownian.Increments.node``: exact in law given the step's increment, and shared by the
coupled solves at other steps).

The level depends on the state only, so the scheme is Euler (or the congruence step) with the
state-dependent step dt / 2^k(V) (as in adaptive steps for superlinear drifts, Kelly and Lord
2018): every substep shrinks with dt and the whole law, crossing fraction included, converges as
dt -> 0, with the error that ``shapedsde.step_error`` measures. A bound on the substep's change
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
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
from jax import Array

from ._batching import in_groups
from .linalg import mirror_lower

MAX_CHANGE = 0.01
"""Largest relative change of V that the drift may make in one substep of a step of
REFERENCE_STEP (so at most MAX_CHANGE dt / REFERENCE_STEP at step dt)."""
REFERENCE_STEP = 2.0**-8
"""The step at which a substep's relative drift change is at most MAX_CHANGE."""
MAX_LEVEL = 8
"""A step is split into at most 2^MAX_LEVEL substeps."""
LEVEL_GROUP = 32
"""Paths whose refinement level is evaluated together (``_levels_of``)."""
HEADROOM = 2
"""Levels a path may deepen by within a step (its drift rate growing 4-fold): its Brownian
increments are read to its starting level plus this (at most MAX_LEVEL). With 0, figure 7's
crossing fraction at dt = 1/512 was 4.4% against 3.75% (2000 paths, one Brownian path)."""


def group_size(m: int) -> int:
    """Hot paths refined together at m tokens. A group's walks run as one vectorised loop, as
    long as its longest walk, and every substep draws all tree levels' normals for each path
    of the group (``brownian.Increments.node``: 10 blocks of n_noise m^2). At m = 2 those are
    cheap and a group of 8 shares each substep's fixed cost: figure 7's ladder (1024 paths,
    steps 1/512 and 1/2048) took 1.8 and 6.8 s in groups of 8, 2.6 and 9.7 s in groups of 4,
    4.1 and 15.9 s in pairs. From m = 3 the draws dominate and a group mostly pays for paths
    that are not hot: in pairs, hot attention (tau0 0.3, gamma 0.9, dt 1/256, 1000 paths, T 1)
    took 0.63 against 1.2-1.3 s at m = 3 and 1.0-1.1 against 2.1-2.4 s at m = 4, and the cool
    default's base solve at m = 8 (keys 1-5) 2.09 against 2.28 s; single paths were no
    cheaper (m = 8, tau0 0.5: 3.5-3.9 s against 3.3-3.5 s in pairs)."""
    return 8 if m <= 2 else 2


def levels(drift_rate: Array) -> Array:
    """Refinement level k of every path (int32) from its relative drift rate r: 2^k substeps
    keep r REFERENCE_STEP / 2^k <= MAX_CHANGE. It depends on the state only (not on dt)."""
    ratio = jnp.maximum(drift_rate * REFERENCE_STEP / MAX_CHANGE, 1.0)
    return jnp.clip(jnp.ceil(jnp.log2(ratio)), 0, MAX_LEVEL).astype(jnp.int32)


def calm_scale(drift: Callable[[Array], Array], V0: Array) -> Array:
    """Largest variance below which no path needs refinement: max diag V0 times
    max(2, sqrt(MAX_CHANGE / (r0 REFERENCE_STEP))), r0 the relative drift rate at V0, assuming
    that rate grows at most like |V|^2 (the cubic attention drift; the MLP's is bounded)."""
    scale = jnp.max(jnp.diagonal(V0))
    r0 = jnp.max(jnp.abs(drift(V0))) / scale
    return scale * jnp.maximum(2.0, jnp.sqrt(MAX_CHANGE / jnp.maximum(r0 * REFERENCE_STEP,
                                                                       1e-30)))


def _rate(block: Any, V: Array) -> Array:
    """Relative drift rate max_ab |b(V)_ab| / max_a V_aa of one path (V: its full matrix)."""
    return jnp.max(jnp.abs(block.drift(V))) / jnp.max(jnp.diagonal(V))


def _walk(solver: Any, terms: Any, y: Any, depth: Array, increments: Any, step: Array,
          t0: Array, t1: Array) -> Any:
    """One path (fields without batch axis; ``increments`` its ``brownian.Increments``, a batch
    of one) from t0 to t1 in substeps on the dyadic grid of 2^depth units: a substep starts at
    a multiple p of the unit (t1 - t0) / 2^depth and is 2^(depth - k) units long, k =
    ``levels`` at its start (at most ``depth``), shortened to the largest power of two
    dividing p, so that it is a node of the step's Brownian tree (``Increments.node``, read
    when it is taken). The level follows the state within the step: a path that grows during
    the step takes shorter substeps from where it has grown."""
    n = jnp.left_shift(1, depth)
    unit = (t1 - t0) / n.astype(t0.dtype)
    noise = terms.terms[1]

    def body(carry: tuple[Array, Any]) -> tuple[Array, Any]:
        p, y = carry
        k = jnp.minimum(levels(_rate(solver.sde.block, mirror_lower(y.V[0]))), depth)
        aligned = jnp.where(p == 0, depth, jax.lax.population_count((p & -p) - 1))
        span = jnp.minimum(depth - k, aligned)  # log2 of the substep's units
        w = jnp.left_shift(1, span)
        s1 = jnp.where(p + w == n, t1, t0 + (p + w).astype(t0.dtype) * unit)
        dW = increments.node(step, t1 - t0, noise.mode, depth - span, p >> span,
                             max_level=MAX_LEVEL)
        return p + w, solver.advance(terms, y, t0 + p.astype(t0.dtype) * unit, s1, dW)

    batch1 = jax.tree_util.tree_map(lambda a: a[None], y)
    _, out = jax.lax.while_loop(lambda c: c[0] < n, body, (jnp.zeros((), jnp.int32), batch1))
    return jax.tree_util.tree_map(lambda a: a[0], out)


def may_need_refinement(y: Any, calm: Array) -> Array:
    """Paths (B,) alive with their largest variance above ``calm`` (``calm_scale``): below it
    the drift needs no refinement."""
    return (y.t_explode < 0) & (jnp.max(jnp.diagonal(y.V, axis1=1, axis2=2), axis=1) > calm)


def _levels_of(block: Any, V: Array, grown: Array) -> Array:
    """``levels`` (B,) of the ``grown`` paths of the batch (0 elsewhere), their drifts evaluated
    in groups of LEVEL_GROUP: only those paths cost a drift evaluation."""

    def chunk(idx: Array, todo: Array, level: Array) -> tuple[Array, Array]:
        rate = jax.vmap(functools.partial(_rate, block))(mirror_lower(V[idx]))
        return level.at[idx].set(jnp.where(todo, levels(rate), level[idx])), todo

    return in_groups(grown.astype(jnp.int32), LEVEL_GROUP, chunk,
                     jnp.zeros(grown.shape, jnp.int32))


def refine(solver: Any, terms: Any, y0: Any, y1: Any, t0: Array, t1: Array, step: Array) -> Any:
    """``y1`` (the plain step of the batch from ``y0``) with the hot paths redone in substeps.
    A path above ``solver.calm`` at level k > 0 at the start of the step is redone, going
    down to level min(k + HEADROOM, MAX_LEVEL) at most; such paths are taken in groups of
    ``group_size(m)``, deepest first (so that a group's walks take similar numbers of
    substeps), each on its own Brownian path and to its own depth: a path does not depend on
    the paths it is grouped with. Paths at level 0 keep their plain step."""
    increments = terms.terms[1].increments
    grown = may_need_refinement(y0, solver.calm)
    level = _levels_of(solver.sde.block, y0.V, grown)
    depth = jnp.minimum(level + HEADROOM, MAX_LEVEL)

    def group(idx: Array, todo: Array, y1: Any) -> tuple[Any, Array]:
        one_each = eqx.tree_at(lambda inc: inc.words, increments, increments.words[idx][:, None])
        part = jax.tree_util.tree_map(lambda a: a[idx], y0)
        redone = jax.vmap(lambda y, d, inc: _walk(solver, terms, y, d, inc, step, t0, t1))(
            part, depth[idx], one_each)

        def put(whole: Array, new: Array) -> Array:
            keep = todo.reshape((-1,) + (1,) * (new.ndim - 1))
            return whole.at[idx].set(jnp.where(keep, new, whole[idx]))

        return jax.tree_util.tree_map(put, y1, redone), todo

    deepest_first = jnp.where(grown & (level > 0), depth + 1, 0)
    return in_groups(deepest_first, group_size(y0.V.shape[-1]), group, y1)
