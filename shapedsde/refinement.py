r"""Per-path step refinement where the state grows (the un-normalised SDE's blow-up).

The attention drift is cubic in V, so its rate relative to V grows like |V|^2: a fixed step
that resolves V ~ V0 overshoots once |V| is large, and the fraction of paths that cross the
blow-up bound by T then depends on the step (figure 7). Here every path gets its own level
k = ceil(log2(r dt / MAX_CHANGE)), clipped to [0, MAX_LEVEL], from its relative drift rate
r = max_ab |b(V)_ab| / max_a V_aa at the start of the step; a path with k > 0 redoes the step
as 2^k substeps. Its substep increments come from the Brownian bridge of the step's increment
dW (a dyadic tree, ``bridge_increments``, whose level-l normals are drawn from the path's own
key), so they are exact in law given dW and the path still follows the Brownian path of the
grid.

Why the relative drift rate suffices: for hot attention at large V the noise's relative scale
grows like |V| while the drift's relative rate grows like |V|^2, so over one substep with
r h <= MAX_CHANGE the relative noise is O(sqrt(MAX_CHANGE)) at every scale. Beyond the deepest
level (|V| of order sqrt(2^MAX_LEVEL MAX_CHANGE / (s dt)), s the drift's scale) the path
overshoots and is flagged; there log |V| drifts upward so strongly that the SDE itself escapes
to the bound with probability close to one, so the crossing fraction is not biased by it.

Hot paths are few; they are gathered in groups of ``GROUP`` (a ``while_loop`` until none is
left, as for the PSD repairs), so the cost is that of the hot paths only; a group's tree is
built to its deepest level only (a ``switch`` over the depth). Each path's result depends on
that path alone (its level, its increment, its key), up to rounding in the block sums.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from ._random import standard_normal
from .linalg import mirror_lower

MAX_CHANGE = 0.01
"""Largest relative change of V that the drift may make in one (sub)step before refining
(0.05 left the crossing fraction of figure 7's setting converging at order ~0.3 in dt; 0.01
gives order ~1: 7.5%, 6.0%, 5.25% at dt = 2^-6, 2^-8, 2^-10, 2000 paths)."""
MAX_LEVEL = 8
"""A step is split into at most 2^MAX_LEVEL substeps."""
GROUP = 32
"""Hot paths refined together."""
_BRIDGE_KEY = np.uint32(0x9E3779B9)  # the bridge normals use the path key XOR this


def levels(drift_rate: Array, dt: Array) -> Array:
    """Refinement level k of every path (int32): 2^k substeps keep r dt / 2^k <= MAX_CHANGE."""
    ratio = jnp.maximum(drift_rate * dt / MAX_CHANGE, 1.0)
    return jnp.clip(jnp.ceil(jnp.log2(ratio)), 0, MAX_LEVEL).astype(jnp.int32)


def bridge_increments(dW: Array, z: list[Array], h: Array) -> Array:
    """The 2^d increments of a Brownian path over a step of size h whose increment is dW
    (n, m, m), d = len(z), from the normals z[l] (2^l, n, m, m) of each level l: level by level
    each interval of length h / 2^l with increment I splits into I / 2 +- sqrt(h / 2^l) / 2 z
    (the Brownian bridge). The two halves sum to I, so the increments at depth d summed in
    blocks of 2^(d - k) are those at depth k: a path's substeps do not depend on the depth
    its group is built to."""
    incs = dW[None]
    for level, zl in enumerate(z):
        k = 2**level
        dev = jnp.sqrt(h / k) / 2 * zl
        incs = jnp.stack([incs / 2 + dev, incs / 2 - dev], axis=1).reshape((2 * k,) + dW.shape)
    return incs


def _bridge_cumulative(words: Array, dW: Array, *, step: Array, h: Array, depth: int) -> Array:
    """Cumulative sums (2^MAX_LEVEL + 1, n, m, m; the first 2^depth + 1 used) of one path's
    bridge increments at ``depth``; level l's normals come from the path key XOR (key + l), so
    they do not depend on the depth."""
    size = dW.size
    z = [standard_normal(words ^ (_BRIDGE_KEY + np.uint32(level)), step, 2**level * size,
                         dW.dtype).reshape((2**level,) + dW.shape) for level in range(depth)]
    fine = bridge_increments(dW, z, h)
    out = jnp.zeros((2**MAX_LEVEL + 1,) + dW.shape, dW.dtype)
    return out.at[1:2**depth + 1].set(jnp.cumsum(fine, axis=0))


def _substeps(solver: Any, terms: Any, y: Any, level: Array, depth: Array, cumulative: Array,
              t0: Array, t1: Array) -> Any:
    """One path (fields without batch axis): 2^level substeps over [t0, t1] from the
    cumulative bridge increments at ``depth`` >= level."""
    h = t1 - t0
    n_sub = 2**level
    width = 2 ** (depth - level)  # bridge increments per substep
    h_sub = h / n_sub.astype(h.dtype)

    def one(j: Array, y: Any) -> Any:
        inc = cumulative[(j + 1) * width] - cumulative[j * width]
        s0 = t0 + j.astype(h.dtype) * h_sub
        s1 = jnp.where(j + 1 == n_sub, t1, s0 + h_sub)
        return solver.advance(terms, y, s0, s1, inc[None])

    batch1 = jax.tree_util.tree_map(lambda a: a[None], y)
    out = jax.lax.fori_loop(0, n_sub, one, batch1)
    return jax.tree_util.tree_map(lambda a: a[0], out)


def refine(solver: Any, terms: Any, y0: Any, y1: Any, t0: Array, t1: Array, dW: Array,
           increments: Any, step: Array) -> Any:
    """``y1`` (the plain step of the batch from ``y0``) with the hot paths redone in substeps.
    Only paths whose largest variance exceeds ``solver.calm`` (``sde.calm_scale``) are looked
    at: below it the drift needs no refinement, and the batch skips the drift evaluation."""
    V = mirror_lower(y0.V)
    scale = jnp.max(jnp.diagonal(V, axis1=1, axis2=2), axis=1)
    grown = (y0.t_explode < 0) & (scale > solver.calm)
    return jax.lax.cond(jnp.any(grown), lambda: _refine_grown(solver, terms, y0, y1, t0, t1, dW,
                                                              increments, step, V, grown),
                        lambda: y1)


def _refine_grown(solver: Any, terms: Any, y0: Any, y1: Any, t0: Array, t1: Array, dW: Array,
                  increments: Any, step: Array, V: Array, grown: Array) -> Any:
    b = jax.vmap(solver.sde.block.drift)(V)
    rate = jnp.max(jnp.abs(b), axis=(1, 2)) / jnp.max(jnp.diagonal(V, axis1=1, axis2=2), axis=1)
    level = levels(rate, t1 - t0)
    hot = grown & (level > 0)
    step = step.astype(jnp.uint32)

    def group(state: tuple[Any, Array]) -> tuple[Any, Array]:
        y1, need = state
        idx = jax.lax.top_k(need.astype(jnp.int32), min(GROUP, need.shape[0]))[1]
        todo = need[idx]
        depth = jnp.max(jnp.where(todo, level[idx], 1))  # the deepest level of the group
        words, dW_group = increments.words[idx], dW[idx]
        builders = [jax.vmap(functools.partial(_bridge_cumulative, step=step, h=t1 - t0,
                                               depth=depth_))
                    for depth_ in range(1, MAX_LEVEL + 1)]
        cumulative = jax.lax.switch(depth - 1, builders, words, dW_group)
        part = jax.tree_util.tree_map(lambda a: a[idx], y0)
        redone = jax.vmap(lambda y, k, c: _substeps(solver, terms, y, k, depth, c, t0, t1))(
            part, jnp.maximum(level[idx], 1), cumulative)

        def put(whole: Array, new: Array) -> Array:
            keep = todo.reshape((-1,) + (1,) * (new.ndim - 1))
            return whole.at[idx].set(jnp.where(keep, new, whole[idx]))

        return jax.tree_util.tree_map(put, y1, redone), need.at[idx].set(False)

    return jax.lax.while_loop(lambda s: jnp.any(s[1]), group, (y1, hot))[0]
