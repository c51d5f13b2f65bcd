r"""The Brownian path of a batch of SDE paths, as a diffrax ``AbstractBrownianPath``.

Each SDE path is driven by ``n`` independent m x m matrix Brownian motions W. The path is laid
out on a grid of step ``dt`` (its *base* grid): the increment over base step k, [k dt, (k+1) dt],
is sqrt(dt) z_k with z_k the normals of stream k of the path's key (counter-based: a pure
function of (path key, k), ``_random``, so a path does not depend on the batch it is solved
in). Under every base step lies a dyadic Brownian-bridge tree: an interval of length l with
increment I splits into halves I / 2 +- sqrt(l) / 2 z, where z at the tree's first level is
stream BRIDGE_STREAMS + k, and at node q of level j >= 1 block q of stream k under the key XOR
(TREE_KEY + j). ``evaluate(t0, t1)`` reads any interval that is a run of whole base steps, or a
dyadic part of one, from these normals, so every grid reads the same W:

* a step of the base grid: sqrt(dt) z_k;
* a step of twice (r times) the base step: the sum of its 2 (r) base increments;
* a step of half the base step, or any dyadic part of one (the substeps of the refinement of
  hot paths): a node of the tree, from the root and the splitting normals on the way down to
  it (``_random.normals_at`` draws a block of a stream without the rest), not the 2^level
  leaves under the step.

So the coupled solves at dt, 2 dt and dt / 2 (the step control), r dt (the benchmark's
ladders) and the refined substeps of any of them are driven by one Brownian path.

Where it is: ``evaluate`` locates [t0, t1] on the grid by rounding t / dt, exactly in float64
and, in float32, for grids of up to MAX_FLOAT32_STEPS steps. Substeps of a step are located
relative to the step (``within``: the step's path in local time), where their times are exact
dyadic fractions at any depth.
"""

from __future__ import annotations

from typing import ClassVar

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from ._random import normals_at, standard_normal

BRIDGE_STREAMS = 2**31
"""Counter offset of the first tree level's normals; base steps stay below 2^31."""
TREE_KEY = np.uint32(0x9E3779B9)
"""The normals of tree level j >= 1 use the path key XOR (TREE_KEY + j)."""
MAX_LEVEL = 8
"""Deepest tree level below a step that ``within`` reads (2^MAX_LEVEL substeps)."""
MAX_FLOAT32_STEPS = 2**21
"""Largest number of base steps whose times float32 locates exactly (t / dt to 1/4 step)."""


def standard_normal_matrices(words: Array, stream: Array, n: int, m: int,
                             dtype: jnp.dtype) -> Array:
    """The n iid standard normal m x m matrices (B, n, m, m) of ``stream`` for paths with
    Threefry keys ``words`` (B, 2). Drawn in the (m, n, m) layout that
    ``linalg.congruence`` multiplies, so its transposes and this one cancel."""
    z = jax.vmap(lambda w: standard_normal(w, stream, n * m * m, dtype))(words)
    return jnp.moveaxis(z.reshape(-1, m, n, m), 2, 1)


class _Normals(eqx.Module):
    """The normals of a batch of paths: whole streams (``draw``) and tree nodes (``node``)."""

    words: Array  # (B, 2) uint32 Threefry keys of the paths
    n: int = eqx.field(static=True)
    m: int = eqx.field(static=True)
    dtype: str = eqx.field(static=True)

    def draw(self, stream: Array) -> Array:
        return standard_normal_matrices(self.words, stream, self.n, self.m, self.dtype)

    def draw_pair(self, first: Array, second: Array) -> tuple[Array, Array]:
        """The normals of two streams. One vectorised draw: XLA's CPU code for two separate
        draws costs about three times as much."""
        z = jax.vmap(self.draw)(jnp.stack([first, second]))
        return z[0], z[1]

    def _path_normals(self, base_step: Array, level: Array, index: Array,
                      max_level: int) -> Array:
        """(max_level + 1, B, n, m, m): the root's normals of base step ``base_step``, then
        the normals that split the nodes of levels 0, ..., max_level - 1 on the way down to
        node ``index`` of level ``level`` (rows of levels >= ``level``: any normals, to be
        weighted 0). Level 0 splits with stream BRIDGE_STREAMS + base_step (as ``draw`` lays
        it out), level j >= 1 with block index >> (level - j) of stream base_step under the
        key XOR (TREE_KEY + j). One elementwise computation (``_random.normals_at``) for all
        of them: separate draws inside the refinement's walk cost a few kernels each, which
        at one or a few paths dominate a substep."""
        n, m = self.n, self.m
        size = n * m * m
        a, i, b = np.meshgrid(np.arange(m), np.arange(n), np.arange(m), indexing="ij")
        drawn = (a * n * m + i * m + b).transpose(1, 0, 2).reshape(-1)  # draw's layout
        j = jnp.arange(1, max_level, dtype=jnp.uint32)
        block = index >> jnp.where(j < level, level - j, np.uint32(0))
        positions = jnp.concatenate([
            jnp.broadcast_to(jnp.asarray(drawn, jnp.uint32), (2, size)),
            block[:, None] * np.uint32(size) + jnp.arange(size, dtype=jnp.uint32)])
        key_xor = jnp.concatenate([jnp.zeros(2, jnp.uint32), TREE_KEY + j])[:, None, None]
        counter = jnp.concatenate([jnp.stack([base_step, base_step + np.uint32(BRIDGE_STREAMS)]),
                                   jnp.broadcast_to(base_step, j.shape)])[:, None]
        length = jnp.concatenate([jnp.full(2, size, jnp.uint32),
                                  jnp.left_shift(np.uint32(size), j)])[:, None]
        z = jax.vmap(lambda w: normals_at(w ^ key_xor, counter, length, positions,
                                          self.dtype))(self.words[:, None, None, :])
        return jnp.moveaxis(z, 0, 1).reshape((max_level + 1, -1, n, m, m))

    def node(self, base_step: Array, h_base: Array, level: Array, index: Array,
             max_level: int) -> Array:
        """Increment of node ``index`` of level ``level`` <= max_level (an interval of length
        h_base / 2^level) of the tree under base step ``base_step``. Down the bits of ``index``
        from the root, each interval of length l = h_base / 2^j with increment I splits into
        I / 2 +- sqrt(l) / 2 z_j (left +), so the node is, in closed form,

            sqrt(h_base) z / 2^level + sum_{j < level} sign_j sqrt(h_base) 2^(j / 2 - level) z_j

        with z the root's normals and z_j those of the node of level j above it."""
        z = self._path_normals(base_step, level, index, max_level)
        j = jnp.arange(max_level, dtype=jnp.uint32)
        below = j < level
        right = (index >> jnp.where(below, level - j - np.uint32(1), np.uint32(0))) & np.uint32(1)
        scale = jnp.sqrt(h_base) * jnp.exp2(-level.astype(h_base.dtype))
        weight = jnp.where(below, (1.0 - 2.0 * right.astype(h_base.dtype))
                           * jnp.exp2(j.astype(h_base.dtype) / 2), 0.0)
        return scale * (z[0] + jnp.tensordot(weight, z[1:], axes=1))


def _uint(x: Array) -> Array:
    return jnp.round(x).astype(jnp.uint32)


class _IncrementPath(diffrax.AbstractBrownianPath):
    """What the three readers of a batch's W share: its normals, increments only (no Levy
    area, no W(t0) alone), time from 0."""

    normals: eqx.AbstractVar[_Normals]
    levy_area: ClassVar[type] = diffrax.BrownianIncrement

    @property
    def t0(self) -> float:
        return 0.0

    def _interval(self, t0: Array, t1: Array | None, use_levy: bool) -> tuple[Array, Array]:
        if t1 is None or use_levy:
            raise ValueError(f"{type(self).__name__} gives increments W(t1) - W(t0) only")
        return t0, t1


class MatrixBrownianPath(_IncrementPath):
    """W of a batch of paths (module docstring): ``evaluate(t0, t1)`` is the increment
    (B, n, m, m) over [t0, t1], a run of whole base steps (of ``dt``) or a dyadic part of one."""

    normals: _Normals
    dt: Array  # the base step

    def __init__(self, words: Array, dt: Array, n: int, m: int, dtype: str):
        self.normals = _Normals(words, n, m, dtype)
        self.dt = jnp.asarray(dt, dtype)

    @property
    def t1(self) -> float:
        return float("inf")

    def evaluate(self, t0: Array, t1: Array | None = None, left: bool = True,
                 use_levy: bool = False) -> Array:
        """W(t1) - W(t0) (W(t0) itself is not offered: only increments drive the SDE)."""
        del left
        t0, t1 = (jnp.asarray(t, self.dt.dtype) for t in self._interval(t0, t1, use_levy))
        h = t1 - t0
        u0, width = t0 / self.dt, h / self.dt  # in base steps
        k = _uint(u0)
        r = jnp.maximum(_uint(width), np.uint32(1))
        z = self.normals

        def one() -> Array:  # a base step
            return jnp.sqrt(h) * z.draw(k)

        def two() -> Array:  # two base steps (the step control's coupled solve)
            first, second = z.draw_pair(k, k + np.uint32(1))
            return jnp.sqrt(0.5 * h) * (first + second)

        def many() -> Array:  # r base steps (the benchmark's ladders)
            zero = jnp.zeros((z.words.shape[0], z.n, z.m, z.m), z.dtype)
            total = jax.lax.fori_loop(np.uint32(0), r, lambda i, acc: acc + z.draw(k + i),
                                      zero)
            return jnp.sqrt(h / r.astype(h.dtype)) * total

        def half() -> Array:  # half a base step: the tree's first split
            base = _uint(u0 - 0.25)
            sign = 1.0 - 2.0 * (_uint(2.0 * u0) % 2).astype(h.dtype)
            root, bridge = z.draw_pair(base, base + np.uint32(BRIDGE_STREAMS))
            return jnp.sqrt(0.5 * h) * (root + sign * bridge)

        def part() -> Array:  # a deeper dyadic part of a base step
            level = _uint(-jnp.log2(width))
            base = jnp.floor(u0 + 0.5 * width).astype(jnp.uint32)
            index = _uint((u0 - base.astype(h.dtype)) / width)
            return z.node(base, self.dt, level, index, MAX_LEVEL + 1)

        kind = jnp.where(width > 0.75, jnp.minimum(r, 3) - 1, jnp.where(width > 0.375, 3, 4))
        return jax.lax.switch(kind, (one, two, many, half, part))

    def base_steps(self) -> BaseStepPath | MatrixBrownianPath:
        """The same path for a reader that takes one base step at a time (the plain steps of a
        solve on the path's own grid): ``evaluate`` without the dispatch on the interval's
        kind, faster per step from three tokens on. At two tokens XLA compiles that reading
        into a slower step than the dispatched one (``benchmarks/README.md``), so the path
        itself is returned there."""
        return BaseStepPath(self.normals, self.dt) if self.normals.m >= 3 else self

    def within(self, t0: Array, t1: Array) -> StepPath:
        """The path over [t0, t1] (a step of the base grid, of twice or r times it, or half
        of it) in local time: ``StepPath.evaluate(s0, s1)`` = W(t0 + s1) - W(t0 + s0) for any
        dyadic part [s0, s1] of [0, t1 - t0], down to MAX_LEVEL levels."""
        h = t1 - t0
        u0, width = t0 / self.dt, h / self.dt
        fine = width < 0.75
        r = jnp.where(fine, np.uint32(1), _uint(width))
        step = jnp.where(fine, _uint(2.0 * u0), _uint(u0) // r)  # index on its own grid
        return StepPath(self.normals, h, step, r, fine)


class BaseStepPath(_IncrementPath):
    """``MatrixBrownianPath`` read one base step at a time (``base_steps``): ``evaluate(t0, t1)``
    for [t0, t1] a step of the base grid only."""

    normals: _Normals
    dt: Array

    @property
    def t1(self) -> float:
        return float("inf")

    def evaluate(self, t0: Array, t1: Array | None = None, left: bool = True,
                 use_levy: bool = False) -> Array:
        del left
        t0, t1 = self._interval(t0, t1, use_levy)
        return jnp.sqrt(t1 - t0) * self.normals.draw(_uint(t0 / self.dt))


class StepPath(_IncrementPath):
    """One step's Brownian path in local time (``MatrixBrownianPath.within``): the increments
    of its dyadic parts, nodes of the base steps' trees (or sums of whole base steps)."""

    normals: _Normals
    h: Array  # the step's length
    step: Array  # its index on its own grid (of r base steps, or of half steps)
    r: Array  # base steps per step (a power of two), 1 for a half step
    fine: Array  # whether the step is half a base step

    @property
    def t1(self) -> Array:
        return self.h

    def evaluate(self, t0: Array, t1: Array | None = None, left: bool = True,
                 use_levy: bool = False) -> Array:
        """W over the dyadic part [t0, t1] of the step (local times): the ``index``-th of its
        2^level equal parts, a node of the tree under a base step (a half step: one level
        deeper, under base step step // 2; a step of r = 2^a base steps: a levels
        shallower), or for level <= a the sum of the r / 2^level base steps it covers."""
        del left
        h = self.h
        t0, t1 = (jnp.asarray(t, h.dtype) for t in self._interval(t0, t1, use_levy))
        level = _uint(jnp.log2(h / (t1 - t0)))
        index = _uint(t0 / (t1 - t0))
        step, r, fine = self.step, self.r, self.fine
        shallower = (jax.lax.population_count(r - np.uint32(1))).astype(jnp.uint32)  # log2 r
        whole = level <= shallower  # the part spans whole base steps
        count = jnp.where(whole, r >> level, np.uint32(1))
        deep = level - jnp.minimum(level, shallower)
        first = jnp.where(fine, step // 2,
                          r * step + jnp.where(whole, index * count, index >> deep))
        base_level = jnp.where(fine, level + 1, jnp.where(whole, 0, deep))
        base_index = jnp.where(fine, ((step % 2) << level) | index,
                               jnp.where(whole, 0, index & ((np.uint32(1) << deep) - 1)))
        h_base = jnp.where(fine, 2.0 * h, h / r.astype(h.dtype))
        z = self.normals
        node = z.node(first, h_base, base_level, base_index, MAX_LEVEL + 1)

        def whole_steps(node: Array) -> Array:  # the other whole base steps of a part: roots
            return jax.lax.fori_loop(
                np.uint32(1), count, lambda i, acc: acc + jnp.sqrt(h_base) * z.draw(first + i),
                node)

        # a step of one base step (every step of a run on its own grid) has no other: its
        # substeps skip the loop, whose entry cost a substep of the refinement's walks about
        # a fifth (m = 8). r is the step's, not a path's: under the walks' vmap this stays a
        # branch, not a select of both
        return jax.lax.cond(r > 1, whole_steps, lambda node: node, node)
