r"""The Brownian path of every SDE path: one path, read on grids of several step sizes.

A path's noise is the matrix Brownian motion W (``block.n_noise`` m x m matrices) whose
increments over the *base grid* (step h, the step of the solve at mode BASE) are
sqrt(h) z_k, with z_k the normals of stream k of the path's key (counter-based: a pure function
of (path key, k), so a path does not depend on the batch it is solved in). Finer intervals come
from the Brownian bridge, a dyadic tree under each base step: an interval of length l with
increment I splits into I / 2 +- sqrt(l) / 2 z, where z at the tree's first level is stream
BRIDGE_STREAMS + k and at node q of level j >= 1 is block q of the stream k under the key XOR
(TREE_KEY + j). Every increment below is a node of these trees or a sum of them, so all grids
read the same W:

* mode BASE (0), step k: sqrt(h) z_k;
* mode FINE (1), step k of size h / 2: half k % 2 of base step k // 2;
* mode r >= 2 (COARSE = 2 for r = 2), step k of size r h: base steps rk, ..., rk + r - 1;
* ``Increments.node``: any dyadic part of a step of any mode (the substeps of the refinement
  of hot paths, ``shapedsde.refinement``), a node of the tree: the root and the splitting
  normals on the way down to it, MAX_LEVEL blocks of normals drawn in one elementwise
  computation (``_random.normals_at`` reads a block of a stream without the rest), not the
  2^depth leaves under the step.

So solves at dt, 2 dt, dt / 2 (the step control's coupled solves, ``shapedsde.step_error``),
r dt (the benchmark's ladders) and their refined substeps are all driven by one Brownian path.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from ._random import normals_at, standard_normal

BRIDGE_STREAMS = 2**31
"""Counter offset of the first tree level's normals (mode FINE); grid steps stay below 2^31."""
TREE_KEY = np.uint32(0x9E3779B9)
"""The normals of tree level j >= 1 use the path key XOR (TREE_KEY + j)."""

BASE, FINE, COARSE = 0, 1, 2
"""Grid modes (module docstring): base step, half of it, r >= 2 base steps."""


def standard_normal_matrices(words: Array, stream: Array, n: int, m: int,
                             dtype: jnp.dtype) -> Array:
    """The n iid standard normal m x m matrices (B, n, m, m) of ``stream`` for paths with
    Threefry keys ``words`` (B, 2). Drawn in the (m, n, m) layout that
    ``linalg.congruence`` multiplies, so its transposes and this one cancel."""
    z = jax.vmap(lambda w: standard_normal(w, stream, n * m * m, dtype))(words)
    return jnp.moveaxis(z.reshape(-1, m, n, m), 2, 1)


class Increments(eqx.Module):
    """Brownian increments (B, n_noise, m, m) of a batch of paths: a pure function of (path key,
    step index, step size, mode), so a path does not depend on the batch it is solved in."""

    words: Array  # (B, 2) uint32 Threefry keys of the paths
    n: int = eqx.field(static=True)
    m: int = eqx.field(static=True)
    dtype: str = eqx.field(static=True)

    def _draw(self, stream: Array) -> Array:
        return standard_normal_matrices(self.words, stream, self.n, self.m, self.dtype)

    def _draw_pair(self, first: Array, second: Array) -> tuple[Array, Array]:
        """The normals of two streams. One vectorised draw: XLA's CPU code for two separate
        draws costs about three times as much (m = 4, 256 paths: 0.63 against 0.19 us per
        path-step)."""
        z = jax.vmap(self._draw)(jnp.stack([first, second]))
        return z[0], z[1]

    def __call__(self, step: Array, h: Array, mode: Array) -> Array:
        """Increment of the step ``step`` (of size h) on the grid of ``mode``: a traced scalar
        (one compiled solve serves every mode, through a conditional) or a Python int (that
        branch alone, as ``sde._solve_batch`` reads the base grid)."""
        step = step.astype(jnp.uint32)

        def base() -> Array:
            return jnp.sqrt(h) * self._draw(step)

        def fine() -> Array:
            sign = 1.0 - 2.0 * (step % 2).astype(h.dtype)  # first or second half
            base_step = step // 2
            z, bridge = self._draw_pair(base_step, base_step + np.uint32(BRIDGE_STREAMS))
            return jnp.sqrt(0.5 * h) * (z + sign * bridge)

        def coarse() -> Array:  # r = 2, the step control's coupled solve: unrolled
            first = np.uint32(2) * step
            z, z_next = self._draw_pair(first, first + np.uint32(1))
            return jnp.sqrt(0.5 * h) * (z + z_next)

        def coarse_r() -> Array:  # any r (the benchmark's ladders)
            r = mode.astype(jnp.uint32)
            zero = jnp.zeros((self.words.shape[0], self.n, self.m, self.m), self.dtype)
            total = jax.lax.fori_loop(np.uint32(0), r,
                                      lambda i, acc: acc + self._draw(r * step + i), zero)
            return jnp.sqrt(h / r.astype(h.dtype)) * total

        branches = (base, fine, coarse, coarse_r)
        if isinstance(mode, int):  # static: no conditional in the step (see _solve_batch)
            branch = branches[min(mode, COARSE + 1)]
            mode = jnp.asarray(mode, jnp.int32)  # coarse_r reads r from it
            return branch()
        return jax.lax.switch(jnp.minimum(mode, COARSE + 1), branches)

    def _path_normals(self, base_step: Array, level: Array, index: Array,
                      max_level: int) -> Array:
        """(max_level + 1, B, n, m, m): the root's normals of base step ``base_step``, then
        the normals that split the nodes of levels 0, ..., max_level - 1 on the way down to
        node ``index`` of level ``level`` (rows of levels >= ``level``: any normals, to be
        weighted 0). Level 0 splits with stream BRIDGE_STREAMS + base_step (as ``_draw``
        lays it out), level j >= 1 with block index >> (level - j) of stream base_step under
        the key XOR (TREE_KEY + j). One elementwise computation (``_random.normals_at``) for
        all of them: separate draws inside the refinement's walk cost a few kernels each,
        which at one or a few paths dominate a substep."""
        n, m = self.n, self.m
        size = n * m * m
        a, i, b = np.meshgrid(np.arange(m), np.arange(n), np.arange(m), indexing="ij")
        drawn = (a * n * m + i * m + b).transpose(1, 0, 2).reshape(-1)  # _draw's layout
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

    def _base_node(self, base_step: Array, h_base: Array, level: Array, index: Array,
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

    def node(self, step: Array, h: Array, mode: Array, level: Array, index: Array, *,
             max_level: int) -> Array:
        """Increment (B, n, m, m) of the dyadic interval ``index`` of the 2^level equal parts
        of step ``step`` (of size h) on the grid of ``mode`` (all traced): a node of the tree
        under a base step (FINE: one level deeper, under base step step // 2; mode r = 2^a:
        a levels shallower, under base step r step + (index >> (level - a))), or for a
        level <= a the sum of the roots of the r / 2^level base steps it covers. The nodes of
        a level sum to ``self(step, h, mode)``; the refinement reads its substeps here
        (``shapedsde.refinement``). r must be a power of two; ``level`` <= ``max_level``
        (static: the tree levels drawn for every node)."""
        step, level, index = (jnp.asarray(x).astype(jnp.uint32) for x in (step, level, index))
        fine = mode == FINE
        r = jnp.where(mode >= COARSE, mode, 1).astype(jnp.uint32)
        shallower = (jax.lax.population_count(r - np.uint32(1))).astype(jnp.uint32)  # log2 r
        whole = level <= shallower  # (coarse) the node spans whole base steps
        count = jnp.where(whole, r >> level, np.uint32(1))
        deep = level - jnp.minimum(level, shallower)
        first = jnp.where(fine, step // 2,
                          r * step + jnp.where(whole, index * count, index >> deep))
        base_level = jnp.where(fine, level + 1, jnp.where(whole, 0, deep))
        base_index = jnp.where(fine, ((step % 2) << level) | index,
                               jnp.where(whole, 0, index & ((np.uint32(1) << deep) - 1)))
        h_base = jnp.where(fine, 2.0 * h, h / r.astype(h.dtype))
        node = self._base_node(first, h_base, base_level, base_index, max_level + 1)
        return jax.lax.fori_loop(  # the other whole base steps of a coarse node: their roots
            np.uint32(1), count,
            lambda i, acc: acc + jnp.sqrt(h_base) * self._draw(first + i), node)
