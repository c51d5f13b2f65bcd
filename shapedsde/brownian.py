r"""The Brownian path of every SDE path: one path, read on grids of several step sizes.

A path's noise is the matrix Brownian motion W (``block.n_noise`` m x m matrices) whose
increments over the *base grid* (step h, the step of the solve at mode BASE) are
sqrt(h) z_k, with z_k the normals of stream k of the path's key (counter-based: a pure function
of (path key, k), so a path does not depend on the batch it is solved in). Finer intervals come
from the Brownian bridge, a dyadic tree under each base step: an interval of length l with
increment I splits into I / 2 +- sqrt(l) / 2 z, where z at the tree's first level is stream
BRIDGE_STREAMS + k and at level j >= 1 comes from the key XOR (TREE_KEY + j) at counter k.
Every increment below is a sum of the tree's leaves, so all grids read the same W:

* mode BASE (0), step k: sqrt(h) z_k;
* mode FINE (1), step k of size h / 2: half k % 2 of base step k // 2;
* mode r >= 2 (COARSE = 2 for r = 2), step k of size r h: base steps rk, ..., rk + r - 1;
* ``Increments.substeps``: the 2^d equal substeps of a step of any mode (the refinement of
  hot paths, ``shapedsde.refinement``), from the tree at the depth that resolves them.

So solves at dt, 2 dt, dt / 2 (the step control's coupled solves, ``shapedsde.step_error``),
r dt (the benchmark's ladders) and their refined substeps are all driven by one Brownian path.
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from ._random import standard_normal

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


def bridge_increments(total: Array, z: list[Array], length: Array) -> Array:
    """The 2^d increments (2^d, ...) of a Brownian path over an interval of ``length`` whose
    increment is ``total``, d = len(z), from the normals z[l] (2^l, ...) of each level l:
    each interval of length length / 2^l with increment I splits into I / 2 +- sqrt(length /
    2^l) / 2 z. The two halves sum to I, so the increments at depth d summed in blocks of
    2^(d - k) are those at depth k."""
    incs = total[None]
    for level, zl in enumerate(z):
        k = 2**level
        dev = jnp.sqrt(length / k) / 2 * zl
        incs = jnp.stack([incs / 2 + dev, incs / 2 - dev], axis=1).reshape(
            (2 * k,) + total.shape)
    return incs


class Increments(eqx.Module):
    """Brownian increments (B, n_noise, m, m) of a batch of paths: a pure function of (path key,
    step index, step size, mode), so a path does not depend on the batch it is solved in."""

    words: Array  # (B, 2) uint32 Threefry keys of the paths
    n: int = eqx.field(static=True)
    m: int = eqx.field(static=True)
    dtype: str = eqx.field(static=True)

    def _draw(self, stream: Array) -> Array:
        return standard_normal_matrices(self.words, stream, self.n, self.m, self.dtype)

    def __call__(self, step: Array, h: Array, mode: Array) -> Array:
        """Increment of the step ``step`` (of size h) on the grid of ``mode`` (a traced scalar:
        one compiled solve serves every mode)."""
        step = step.astype(jnp.uint32)

        def base() -> Array:
            return jnp.sqrt(h) * self._draw(step)

        def fine() -> Array:
            sign = 1.0 - 2.0 * (step % 2).astype(h.dtype)  # first or second half
            base_step = step // 2
            return jnp.sqrt(0.5 * h) * (self._draw(base_step)
                                        + sign * self._draw(base_step + np.uint32(BRIDGE_STREAMS)))

        def coarse() -> Array:
            r = mode.astype(jnp.uint32)
            zero = jnp.zeros((self.words.shape[0], self.n, self.m, self.m), self.dtype)
            total = jax.lax.fori_loop(np.uint32(0), r,
                                      lambda i, acc: acc + self._draw(r * step + i), zero)
            return jnp.sqrt(h / r.astype(h.dtype)) * total

        return jax.lax.switch(jnp.minimum(mode, COARSE), (base, fine, coarse))

    def _tree(self, base_step: Array, h_base: Array, depth: int) -> Array:
        """The 2^depth leaves (B, 2^depth, n, m, m) of the tree under base step ``base_step``."""
        z = [self._draw(base_step + np.uint32(BRIDGE_STREAMS))[:, None]]
        size = self.n * self.m * self.m
        for level in range(1, depth):
            normals = jax.vmap(lambda w, lv=level: standard_normal(
                w ^ (TREE_KEY + np.uint32(lv)), base_step, 2**lv * size, self.dtype))(self.words)
            z.append(normals.reshape((-1, 2**level, self.n, self.m, self.m)))
        total = jnp.sqrt(h_base) * self._draw(base_step)
        return jax.vmap(bridge_increments, in_axes=(0, 0, None))(total, z, h_base)

    def substeps(self, step: Array, h: Array, mode: Array, depth: int) -> Array:
        """The increments (B, 2^depth, n, m, m) of the 2^depth equal substeps of step ``step``
        (of size h) on the grid of ``mode``; they sum to ``self(step, h, mode)``.

        Read from the trees one level deeper than the substeps of a base step (so that a FINE
        step, half a base step, is resolved too): leaf f of base step i of the step's span
        falls in substep (i 2^(depth + 1) + f) // (2 r) for r base steps per step, and in
        substep f - (k % 2) 2^depth for the half k % 2 (FINE), where it lies in that half."""
        step = step.astype(jnp.uint32)
        fine = mode == FINE
        r = jnp.where(mode >= COARSE, mode, 1).astype(jnp.uint32)
        first = jnp.where(fine, step // 2, r * step)
        h_base = jnp.where(fine, 2.0 * h, h / r.astype(h.dtype))
        leaves = 2 ** (depth + 1)
        f = jnp.arange(leaves, dtype=jnp.uint32)
        half_start = (step % 2) * np.uint32(2**depth)
        out = jnp.zeros((self.words.shape[0], 2**depth, self.n, self.m, self.m), self.dtype)

        def add(i: Array, out: Array) -> Array:
            tree = self._tree(first + i, h_base, depth + 1)
            in_half = (f >= half_start) & (f < half_start + np.uint32(2**depth))
            index = jnp.where(fine, jnp.where(in_half, f - half_start, np.uint32(2**depth)),
                              (i * np.uint32(leaves) + f) // (np.uint32(2) * r))
            return out.at[:, index].add(tree, mode="drop")

        return jax.lax.fori_loop(np.uint32(0), jnp.where(fine, np.uint32(1), r), add, out)
