r"""The driver: a solver, a block's SDE and a Brownian path, stepped over a grid.

``solve`` integrates paths first_path, ..., first_path + n_paths - 1 of a key from V0 over the
grid with ``steps_per_save`` equal steps between consecutive saved times. Path i is driven by
the Brownian path of ``fold_in(key, i)`` laid out on a base grid of step ``brownian_dt``
(``MatrixBrownianPath``; default: the grid's own step), so a solve at twice or half the step on
the same key is a coupled solve on the same Brownian path (the step control's error estimate).
A chunk of paths is integrated as one system (``_integrate``: one loop over the steps, each
``solver.step``), so a path does not depend on the chunk, the batch or the number of devices it
runs on; V0, the saved times, the number of steps, the block's parameters and the solver's
bounds are traced values, so a sweep over any of them compiles once.

This is what ``solve_sde``'s step control, the benchmarks and the tests call; ``solve_sde``
adds the choice of the step, the solver and the checks of its arguments.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from .._batching import ChunkedResult, path_chunks
from .._precision import full_precision
from ..blocks import Block
from ._brownian import MatrixBrownianPath
from ._random import path_key_words
from ._terms import covariance_terms


class Solution(NamedTuple):
    """Paths of a solve: V (n_paths, n_save, m, m), the time each blew up (-1 if not) and the
    number of its steps that left the PSD cone."""

    V: np.ndarray
    t_explode: np.ndarray
    repairs: np.ndarray


def solve(solver: Any, block: Block, V0: Array, save_ts: Array, steps_per_save: int, *,
          key: Array, n_paths: int, first_path: int = 0, brownian_dt: float | None = None,
          chunk_size: int = 1024, progress: bool = False) -> Solution:
    """Integrate ``n_paths`` paths of ``block``'s SDE with ``solver`` (module docstring).

    Args:
        solver: ``GuardedEuler``, ``CongruenceEuler`` or either ``Refined``
            (``make_solver``).
        block: the block whose coefficients are stepped (for the normalised SDE in its
            "project" form: the block without its normalisation, with a solver that projects).
        V0: initial covariance (m, m), a JAX array of the solve's dtype.
        save_ts: saved times (n_save,), increasing, starting at 0.
        steps_per_save: steps between consecutive saved times.
        key: JAX PRNG key; path i uses ``fold_in(key, i)``.
        brownian_dt: step of the Brownian path's base grid (default: the grid's step).
        chunk_size: paths per compiled call (padded to one shape).
    """
    ts = np.asarray(save_ts)  # on the host: no op-by-op compilation
    grid_dt = float(ts[1] - ts[0]) / steps_per_save
    dt = jnp.asarray(grid_dt if brownian_dt is None else brownian_dt, V0.dtype)
    steps = jnp.asarray(steps_per_save, jnp.int32)
    result = ChunkedResult(n_paths)
    for rows, keys in path_chunks(key, n_paths, chunk_size, first=first_path,
                                  progress=progress, desc="SDE paths"):
        result.put(rows, _integrate(solver, block, keys, V0, save_ts, steps, dt))
    return Solution(*result.arrays)


@eqx.filter_jit
@full_precision
def _integrate(solver: Any, block: Block, keys: Array, V0: Array, save_ts: Array,
               steps_per_save: Array, brownian_dt: Array) -> tuple[Array, Array, Array]:
    """The paths of ``keys`` as one system of B paths: V at the saved times (B, n_save, m, m),
    blow-up times and repairs."""
    words = jax.vmap(path_key_words)(keys)
    path = MatrixBrownianPath(words, brownian_dt, block.n_noise, V0.shape[0], V0.dtype)
    terms = covariance_terms(block, path)
    base_terms = covariance_terms(block, path.base_steps())
    y0, state0 = solver.start(V0, words.shape[0])
    saved0 = jnp.zeros(save_ts.shape + y0.shape, y0.dtype).at[0].set(y0)

    n_steps = steps_per_save * (save_ts.shape[0] - 1)
    grid_dt = (save_ts[1] - save_ts[0]) / steps_per_save.astype(y0.dtype)
    own_grid = jnp.abs(grid_dt / brownian_dt - 1.0) < 1e-3  # one base step per step

    def times(k: Array) -> tuple[Array, Array, Array]:
        """Step k of the grid, step j of the saved interval i: [t0, t1] and the saved slot
        at its end (the last write of each slot is the state at save_ts[i + 1])."""
        i = k // steps_per_save
        j = k - i * steps_per_save
        h = (save_ts[i + 1] - save_ts[i]) / steps_per_save.astype(y0.dtype)
        t0 = save_ts[i] + j.astype(y0.dtype) * h
        return t0, jnp.where(j + 1 == steps_per_save, save_ts[i + 1], t0 + h), i + 1

    def step(carry: tuple[Array, Array, Any, Array]) -> tuple[Array, Array, Any, Array]:
        k, y, state, saved = carry
        t0, t1, slot = times(k)
        y, _, _, state, _ = solver.step(terms, t0, t1, y, None, state, False)
        return k + 1, y, state, saved.at[slot].set(y)

    def plain_step(carry: tuple[Array, Array, Any, Array]) -> tuple[Array, Array, Any, Array]:
        """A step of the solver that ``Refined`` wraps, on the path's own grid: no path is
        hot."""
        k, y, (state, _), saved = carry
        t0, t1, slot = times(k)
        y, _, _, state, _ = solver.solver.step(base_terms, t0, t1, y, None, state, False)
        return k + 1, y, (state, solver.hot(y, state)), saved.at[slot].set(y)

    def refined_step(carry: tuple[Array, Array, Any, Array]) -> tuple[Array, Array, Any, Array]:
        k, y, (state, _), saved = carry
        t0, t1, slot = times(k)
        y, _, _, state, _ = solver.refined_step(terms, t0, t1, y, None, state)
        return k + 1, y, state, saved.at[slot].set(y)

    def refined_steps(carry: tuple[Array, Array, Any, Array]) -> tuple[Array, Array, Any, Array]:
        """A run of plain steps while no path is hot, then of refined steps while some is (or
        on another grid than the path's own, the coupled solves, always the latter): the
        loops' own conditions decide, which is cheaper than a ``cond`` in every step
        (``benchmarks/README.md``)."""
        carry = jax.lax.while_loop(lambda c: (c[0] < n_steps) & own_grid & ~c[2][1],
                                   plain_step, carry)
        return jax.lax.while_loop(lambda c: (c[0] < n_steps) & (~own_grid | c[2][1]),
                                  refined_step, carry)

    carry = (jnp.zeros((), jnp.int32), y0, state0, saved0)
    body = refined_steps if solver.refines else step
    _, _, state, saved = jax.lax.while_loop(lambda c: c[0] < n_steps, body, carry)
    guard = solver.guard_state(state)
    return jnp.swapaxes(solver.covariance(saved), 0, 1), guard.t_explode, guard.repairs
