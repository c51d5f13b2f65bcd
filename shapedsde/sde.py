r"""Integration of the covariance SDE, batched over paths, with its step error controlled.

    dV = b(V) dt + noise(V, L, dW),   L L^T = V,   dW: ``block.n_noise`` m x m Brownian matrices

The noise is the block's "cheap noise" (O(m^3) per step, no m^2 x m^2 square root). A chunk of
paths is integrated as one system whose state holds every path's V (B, m, m); the steps are
taken by a solver of ``shapedsde.schemes`` (by default the congruence form of Euler where the
block allows it and its attention is hot, else Euler-Maruyama), which keeps every path on the
state space, refines the steps of paths whose cubic drift grows (``shapedsde.refinement``) and
freezes a path that blows up. The grid has ``per_save`` equal steps between consecutive saved
times; the number of steps, T, V0 and the block's parameters are traced values, so a sweep
over them, or the step control below, compiles once.

Step error (SPEC section 9). Every solve also integrates a subset of its paths (the first
``pilot_paths(n_paths)``) on the same Brownian path at twice the step (increments summed in
pairs) or, when that grid does not reach the saved times, at half the step (Brownian bridge),
and records the estimated error of the mean and quantiles of every rho_ab in
``Trajectories.config["step_error"]`` (``shapedsde.step_error``). With ``dt=None`` (default) the
step is chosen by that estimate: the number of steps is doubled while the estimated error of
some correlation statistic (or of the blow-up fraction) exceeds ``tol`` by more than its Monte
Carlo error (``StepError.above``); the subset solved at the accepted step is kept as the first
paths of the result, and every solve of the run uses one compiled shape. Crossings of the
blow-up bound are rare events, so on the first subset their estimate carries a standard error
of a few points; while tol lies within that estimate +- 2 SE (``StepError.crossing_undecided``)
the control solves more of the run's paths on both grids (doubling them, up to all) before it
decides; where all of them leave it undecided, it halves the step if the estimate exceeds
2 tol (``StepError.above``, ``step_error.UNDECIDED_CROSSING``).

Randomness is per path: path i's increment on grid step k is a pure function of
(``fold_in(key, i)``, k) (``shapedsde._random``), so a path does not depend on the chunk, the
batch or the number of devices it runs on. Chunks are split over the local JAX devices
(``shapedsde._batching.over_devices``).
"""

from __future__ import annotations

import functools
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from ._batching import key_record, over_devices, padded_chunk_size, run_chunked
from ._precision import resolve_dtype
from ._random import path_key_words
from .blocks.base import Block, traced_parameters
from .brownian import BASE, COARSE, FINE, Increments
from .linalg import mirror_lower, sym
from .refinement import calm_scale
from .schemes import (
    SOLVERS,
    CovarianceSDE,
    SDEState,
    make_terms,
    onto_state_space,
    supports_congruence,
)
from .step_error import estimate
from .trajectories import Trajectories
from .validation import (
    check_covariance,
    check_int,
    check_key,
    check_normalize,
    check_path_range,
    check_real,
    check_result_size,
)

SCHEMES = ("project", "ito")
SOLVER_NAMES = ("auto", *SOLVERS)
DEFAULT_TOL = 0.005
"""Default bound on the estimated step error of the mean and quantiles of rho (SPEC section 9:
the Monte Carlo error of a typical run, 10^4 paths)."""
START_DT = 2.0**-8
"""First step tried by the step control (and the largest it takes)."""
MIN_DT = 2.0**-15
"""Smallest step the step control takes; if the tolerance is not met there it warns."""
MAX_STEPS = 2**30  # step indices are exact integers, and bridge streams start at 2^31


def initial_state(V0: Array, n_paths: int, normalize: str | None) -> SDEState:
    V, L, _, _ = onto_state_space(sym(V0[None]), normalize, jnp.ones((1,), bool))
    V = mirror_lower(V)
    zeros = jnp.zeros((n_paths,), V.dtype)
    shape = (n_paths,) + V0.shape
    return SDEState(V=jnp.broadcast_to(V, shape), L=jnp.broadcast_to(L, shape),
                    LT=jnp.broadcast_to(jnp.swapaxes(L, 1, 2), shape), t_explode=zeros - 1,
                    repairs=jnp.zeros((n_paths,), jnp.int32))


def _solve_batch(sde: CovarianceSDE, solver: str, words: Array, V0: Array, save_ts: Array,
                 per_save: Array, bound: Array, mode: Array) -> tuple[Array, Array, Array]:
    """Integrate the paths of keys ``words`` (B, 2) as one system: ``per_save`` steps between
    consecutive saved times, increments of grid ``mode`` (``brownian.BASE``/COARSE/FINE).

    Plain steps of the base grid (nearly all the work of a run) read their increments with the
    mode fixed at trace time: a traced mode is a conditional in every step, which copies the
    increments out of the step's fusions (m = 8, 256 paths: 348 against 324 us per step). The
    other grids' steps (the step control's coupled solves) go through the refining step, whose
    refinement costs little where no path has grown. The normalised SDE, which never refines,
    keeps one loop with the traced mode: a second loop for its base grid, chosen by a ``cond``
    per saved interval, made the hot default slower (m = 2: 0.068 against 0.060 s warm, 2.8
    against 2.3 s first call)."""
    increments = Increments(words, sde.block.n_noise, sde.m, sde.dtype)
    terms, base_terms = make_terms(sde, increments, mode), make_terms(sde, increments, BASE)
    step_solver = SOLVERS[solver](sde, bound, calm_scale(sde.block.drift, V0))
    base = mode == BASE

    def interval(carry: tuple[SDEState, Any], i: Array) -> tuple[tuple[SDEState, Any], Array]:
        t_start = save_ts[i]
        h = (save_ts[i + 1] - t_start) / per_save.astype(save_ts.dtype)

        def steps_while(terms: Any, refining: bool, go_on: Callable[[Any], Array],
                        state: tuple[Array, SDEState, Any]) -> tuple[Array, SDEState, Any]:
            """Steps j, j + 1, ... of the interval, refining or not (``step_as``), while
            ``go_on(solver state)`` (the solver state: some path may need refinement)."""
            def one_step(state: tuple[Array, SDEState, Any]) -> tuple[Array, SDEState, Any]:
                j, y, _ = state
                t0 = t_start + j.astype(h.dtype) * h
                t1 = jnp.where(j + 1 == per_save, save_ts[i + 1], t0 + h)
                return j + 1, *step_solver.step_as(terms, t0, t1, y, i * per_save + j, refining)

            return jax.lax.while_loop(lambda s: (s[0] < per_save) & go_on(s[2]), one_step,
                                      state)

        y, state = carry
        start = (jnp.zeros((), jnp.int32), y, state)
        if state is None:  # normalised: nothing to refine
            _, y, _ = steps_while(terms, False, lambda _: True, start)
        else:  # alternate runs of plain and of refining steps, as the state says
            plain = functools.partial(steps_while, base_terms, False, lambda grown: base & ~grown)
            refining = functools.partial(steps_while, terms, True, lambda grown: ~base | grown)
            _, y, state = jax.lax.while_loop(lambda s: s[0] < per_save,
                                             lambda s: refining(plain(s)), start)
        return (y, state), mirror_lower(y.V)

    y0 = initial_state(V0, words.shape[0], sde.normalize)
    first = step_solver.init(terms, save_ts[0], save_ts[-1], y0, None)
    (y, _), Vs = jax.lax.scan(interval, (y0, first), jnp.arange(save_ts.shape[0] - 1))
    Vs = jnp.concatenate([mirror_lower(y0.V)[None], Vs])
    return jnp.swapaxes(Vs, 0, 1), y.t_explode, y.repairs


@eqx.filter_jit
def _solve_paths(sde: CovarianceSDE, solver: str, keys: Array,
                 *args: Array) -> tuple[Array, Array, Array]:
    """Solve the paths of ``keys``, split over the local devices; args as ``_solve_batch``."""
    words = jax.vmap(path_key_words)(keys)
    return over_devices(lambda w, *args: _solve_batch(sde, solver, w, *args), words, *args)


@dataclass(frozen=True)
class _Problem:
    """Everything a solve needs but the paths, the step and the grid mode."""

    sde: CovarianceSDE
    solver: str
    key: Array
    V0: Array
    save_ts: Array
    bound: Array
    chunk_size: int

    def solve(self, first: int, n: int, per_save: int, mode: int,
              progress: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Paths first, ..., first + n - 1: V (n, n_save, m, m), blow-up flags and repairs."""
        args = (self.V0, self.save_ts, jnp.asarray(per_save, jnp.int32), self.bound,
                jnp.asarray(mode, jnp.int32))
        Vs, t_exp, repairs = run_chunked(
            lambda keys: _solve_paths(self.sde, self.solver, keys, *args), self.key, n,
            self.chunk_size, first=first, progress=progress, desc="SDE paths")
        return Vs, t_exp, repairs


def pilot_paths(n_paths: int) -> int:
    """Paths solved twice for the step-error estimate: all of them up to 256, then a quarter
    (a power of two), at most 2048: about 15% more work for a run of 1000 paths."""
    if n_paths <= 256:
        return n_paths
    return min(n_paths, 2048, max(256, 1 << (n_paths // 4).bit_length() - 1))


def _joined(first: tuple[np.ndarray, ...], second: tuple[np.ndarray, ...]
            ) -> tuple[np.ndarray, ...]:
    """Two solves' outputs (``_Problem.solve``) of consecutive paths as one."""
    return tuple(np.concatenate(pair) for pair in zip(first, second, strict=True))


class _CoupledSolves:
    """The first ``n`` paths of a run solved at the run's step and again at twice (or, when the
    grid cannot be halved, half) the step on the same Brownian path, and the step error they
    show; ``extend`` adds the next paths of the run (the base solves are kept as the result
    if the step is accepted)."""

    def __init__(self, problem: _Problem, first: int, n: int, per_save: int, interval: float,
                 order: int, normalize: str | None):
        self.problem, self.first, self.per_save = problem, first, per_save
        self.interval, self.order, self.normalize = interval, order, normalize
        self.coarse = per_save % 2 == 0
        self.n = 0
        self.paths: tuple[np.ndarray, ...] = ()
        self.other: tuple[np.ndarray, ...] = ()
        self.extend(n, progress=False)

    def extend(self, n: int, progress: bool) -> None:
        """Solve paths ``self.n``, ..., n - 1 of the run too, and estimate again from all."""
        first, count, per_save = self.first + self.n, n - self.n, self.per_save
        paths = self.problem.solve(first, count, per_save, BASE, progress)
        other = self.problem.solve(first, count, per_save // 2, COARSE, False) if self.coarse \
            else self.problem.solve(first, count, 2 * per_save, FINE, False)
        if self.n:
            paths, other = _joined(self.paths, paths), _joined(self.other, other)
        self.paths, self.other, self.n = paths, other, n
        self.error = estimate(self.paths[0], self.paths[1] >= 0, self.other[0],
                              self.other[1] >= 0, dt=self.interval / per_save,
                              relation="coarse" if self.coarse else "fine", order=self.order,
                              normalize=self.normalize)


def attention_heat(config: dict) -> float:
    """Largest gamma^2 / tau0^2 of the shaped attention (sub-)blocks of a block's config (0
    without attention): the scale of the cubic drift. ``solver="auto"`` takes the congruence
    solver from 1 on: in hot settings it reaches a given accuracy at a fraction of Euler's cost
    (0.18 at gamma^2 / tau0^2 = 9, 0.04 at 81: ``benchmarks/README.md``), while in cool ones
    Euler needs no repairs and its step is cheaper (m = 4: 0.10 s against 0.14 s per 1024
    paths at 260 steps)."""
    heat = config["gamma"] ** 2 / config["tau0"] ** 2 if "tau0" in config else 0.0
    parts = [attention_heat(v) for v in config.values() if isinstance(v, dict)]
    return max([heat, *parts])


def _steps_per_save(interval: float, dt: float) -> int:
    return max(1, math.ceil(interval / dt - 1e-9))


def solve_sde(block: Block, V0: object, T: float, *, key: Array, dt: float | None = None,
              tol: float = DEFAULT_TOL, n_paths: int = 1000, n_save: int = 11,
              normalize: str | None = None, solver: str = "auto", scheme: str = "project",
              blowup_bound: float = 1e3, dtype: str = "float32", chunk_size: int = 1024,
              first_path: int = 0, progress: bool = True) -> Trajectories:
    """Integrate the covariance SDE of ``block`` from ``V0`` to time ``T`` for ``n_paths`` paths.

    Args:
        block: a block with an SDE limit, e.g. ``ShapedAttention()``.
        V0: initial covariance (m, m), symmetric PSD with positive diagonal. With
            ``normalize="rms"`` it is first mapped to its correlation matrix.
        T: final time (depth / width of the network it describes), > 0.
        key: JAX PRNG key; path i uses ``fold_in(key, i)``, so results do not depend on
            ``n_paths`` or ``chunk_size``.
        dt: None (default): the step is chosen so that the estimated step error of the mean and
            5/50/95% quantiles of every rho_ab at the saved times (and, without normalisation,
            of the blow-up fraction) is at most ``tol`` (module docstring). A number: the
            largest step, refined so that the saved times lie on the grid (dt = 1/width is one
            step per layer); the error is then estimated and recorded, not controlled.
        tol: bound on the estimated step error for ``dt=None``, > 0.
        n_save: number of evenly spaced saved times, including 0 and T.
        normalize: None or "rms" (the normalised SDE on correlation matrices).
        solver: "congruence" (``schemes.CongruenceEuler``), "euler" (Euler-Maruyama), or
            "auto": congruence where the block gives its factors (shaped attention without a
            causal mask, the shaped MLP and their Transformer block), scheme is "project" and
            the attention is hot (``attention_heat`` >= 1), else Euler.
        scheme: for "rms", "project" (step, then apply f) or "ito" (Ito-transformed SDE,
            Euler only).
        blowup_bound: a path whose max_a V_aa (= max_ab |V_ab| for PSD V) exceeds
            ``blowup_bound * max(diag V0)`` is frozen and flagged as exploded (the
            un-normalised SDE may explode in finite time).
        dtype: "float32" or "float64" (the latter enables ``jax_enable_x64``).
        chunk_size: paths integrated per compiled call (bounds memory; results unchanged),
            rounded up to a multiple of the local device count; each chunk is split over the
            local devices (``jax.local_devices()``).
        first_path: index of the first path: the call returns paths first_path, ...,
            first_path + n_paths - 1, exactly as part of a larger call would (to split a run
            over processes or hosts).
        progress: show a progress bar.

    Returns:
        ``Trajectories`` with ``t`` (n_save,), ``V`` (n_paths, n_save, m, m) and blow-up flags;
        ``config["dt"]`` is the step used, ``config["step_error"]`` its estimated error
        (``StepError.to_dict``), ``config["solver"]`` the solver.
    """
    if not isinstance(block, Block):
        raise TypeError(f"block must be a shapedsde Block, got {type(block).__name__}")
    block.require_sde()
    key = check_key(key)
    V0 = check_covariance(V0, dtype=dtype)
    T = check_real("T", T, low=0.0)
    if dt is not None:
        dt = check_real("dt", dt, low=0.0)
    tol = check_real("tol", tol, low=0.0)
    n_paths = check_int("n_paths", n_paths, low=1)
    first_path = check_int("first_path", first_path, low=0)
    check_path_range(first_path, n_paths)
    n_save = check_int("n_save", n_save, low=2)
    check_result_size(n_paths, n_save, V0.shape[0], dtype)
    normalize = check_normalize(normalize)
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    if solver not in SOLVER_NAMES:
        raise ValueError(f"solver must be one of {SOLVER_NAMES}, got {solver!r}")
    blowup_bound = check_real("blowup_bound", blowup_bound, low=1.0)
    chunk_size = check_int("chunk_size", chunk_size, low=1)
    jdtype = resolve_dtype(dtype)

    m = V0.shape[0]
    def congruence_ok() -> bool:  # traces the block's noise factor: 10 ms, only when needed
        return scheme == "project" and supports_congruence(block, m)

    if solver == "auto":
        solver = "congruence" if attention_heat(block.config()) >= 1 and congruence_ok() \
            else "euler"
    elif solver == "congruence" and not congruence_ok():
        raise ValueError(f"solver 'congruence' needs scheme 'project' and a block with "
                         f"noise_factor ({type(block).__name__} with these options has none); "
                         "use solver='euler'")
    interval = T / (n_save - 1)
    per_save = _steps_per_save(interval, START_DT if dt is None else dt)
    per_save += per_save % 2 if dt is None else 0  # the control's grids halve exactly
    if per_save * (n_save - 1) > MAX_STEPS:
        raise ValueError(f"T / dt = {per_save * (n_save - 1)} steps exceeds {MAX_STEPS}; "
                         "increase dt")
    save_ts = np.linspace(0.0, T, n_save)
    scale = 1.0 if normalize == "rms" else float(np.max(np.diag(V0)))
    problem = _Problem(
        sde=CovarianceSDE(traced_parameters(block, jdtype), normalize, scheme, m, dtype),
        solver=solver, key=key, V0=jnp.asarray(V0, jdtype), save_ts=jnp.asarray(save_ts, jdtype),
        bound=jnp.asarray(blowup_bound * scale, jdtype),
        chunk_size=padded_chunk_size(pilot_paths(n_paths), chunk_size))  # one shape for all
    order = SOLVERS[solver].weak_order

    while True:
        pilot = _CoupledSolves(problem, first_path, pilot_paths(n_paths), per_save, interval,
                               order, normalize)
        while dt is None and pilot.n < n_paths and pilot.error.crossing_undecided(tol):
            pilot.extend(min(2 * pilot.n, n_paths), progress)
        err = pilot.error
        if dt is not None or not err.above(tol, every_path=pilot.n == n_paths):
            break
        if interval / (2 * per_save) < MIN_DT or 2 * per_save * (n_save - 1) > MAX_STEPS:
            warnings.warn(f"solve_sde: step error above tol = {tol:g} beyond its Monte Carlo "
                          f"error at the smallest step dt = {interval / per_save:.3g} ({err}); "
                          "the result carries it (config['step_error'])", RuntimeWarning,
                          stacklevel=2)
            break
        per_save *= 2
    done = pilot.paths
    rest = problem.solve(first_path + pilot.n, n_paths - pilot.n, per_save, BASE, progress) \
        if n_paths > pilot.n else None
    Vs, t_exp, repairs = done if rest is None else _joined(done, rest)
    exploded = t_exp >= 0
    return Trajectories(
        t=save_ts, V=Vs, exploded=exploded,
        explosion_time=np.where(exploded, t_exp, np.inf), psd_repairs=repairs,
        config={"kind": "sde", "block": block.config(), "T": T, "dt": interval / per_save,
                "dt_requested": dt, "tol": tol if dt is None else None, "solver": solver,
                "step_error": err.to_dict(), "n_paths": n_paths, "first_path": first_path,
                "normalize": normalize, "scheme": scheme, "blowup_bound": blowup_bound,
                "dtype": dtype, "V0": V0.tolist(), "key": key_record(key)})
