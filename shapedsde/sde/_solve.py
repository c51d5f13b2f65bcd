r"""Integration of the covariance SDE, batched over paths, with its step error controlled.

    dV = b(V) dt + noise(V, L, dW),   L L^T = V,   dW: ``block.n_noise`` m x m Brownian matrices

The noise is the block's "cheap noise" (O(m^3) per step, no m^2 x m^2 square root). The paths
are integrated by the driver (``solve``) with a solver of ``_solvers`` (by default the
congruence form of Euler where the block allows it and its attention is hot, else
Euler-Maruyama), which keeps every path on the state space and freezes a path that blows up,
wrapped in ``Refined`` (``_refinement``) for the un-normalised SDE, whose hot paths take
substeps. The number of steps, T, V0 and the block's parameters are traced values, so a sweep
over them, or the step control below, compiles once.

Step error (SPEC section 9). Every solve also integrates a subset of its paths (the first
``pilot_paths(n_paths)``) on the same Brownian path at twice the step (increments summed in
pairs) or, when that grid does not reach the saved times, at half the step (Brownian bridge),
and records the estimated error of the mean and quantiles of every rho_ab in
``Trajectories.config["step_error"]`` (``_step_error``). With ``dt=None`` (default) the
step is chosen by that estimate: the number of steps is doubled while the estimated error of
some correlation statistic (or of the blow-up fraction) exceeds ``tol`` by more than its Monte
Carlo error (``StepError.above``); the subset solved at the accepted step is kept as the first
paths of the result, and every solve of the run uses one compiled shape. Crossings of the
blow-up bound are rare events, so on the first subset their estimate carries a standard error
of a few points; while tol lies within that estimate +- 2 SE (``StepError.crossing_undecided``)
the control solves more of the run's paths on both grids (doubling them, up to all) before it
decides; where all of them leave it undecided, it halves the step if the estimate exceeds
2 tol (``StepError.above``, ``_step_error.UNDECIDED_CROSSING``).

Randomness is per path: path i's increment on grid step k is a pure function of
(``fold_in(key, i)``, k) (``_brownian``), so a path does not depend on the chunk, the batch or
the number of devices it runs on. Chunks are split over the local JAX devices.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import jax.numpy as jnp
import numpy as np
from jax import Array
from tqdm.auto import tqdm

from .._batching import key_record, padded_chunk_size
from .._precision import resolve_dtype
from ..analysis.trajectories import Trajectories
from ..blocks import Block, normalized, traced_parameters
from ..defaults import TOL
from ..validation import (
    check_covariance,
    check_int,
    check_key,
    check_normalize,
    check_path_range,
    check_real,
    check_result_size,
)
from ._brownian import MAX_FLOAT32_STEPS
from ._driver import Solution, solve
from ._refinement import Refined, calm_scale
from ._solvers import SOLVERS, GuardedSolver
from ._step_error import StepError, estimate

SCHEMES = ("project", "ito")
SOLVER_NAMES = ("auto", *SOLVERS)
DEFAULT_TOL = TOL
"""Default bound on the estimated step error of the mean and quantiles of rho (SPEC section 9:
the Monte Carlo error of a typical run, 10^4 paths; ``shapedsde.defaults.TOL``)."""
START_DT = 2.0**-8
"""First step tried by the step control (and the largest it takes)."""
MIN_DT = 2.0**-15
"""Smallest step the step control takes; if the tolerance is not met there it warns."""
MAX_STEPS = 2**30  # step indices are exact integers, and bridge streams start at 2^31


def make_solver(name: str, block: Block, V0: Array, *, normalized: bool,
                bound: Array) -> GuardedSolver | Refined:
    """The solver ``name`` ("euler" or "congruence") for the SDE of ``block`` from V0: with the
    guard's normalisation and blow-up ``bound``, wrapped in ``Refined`` where the SDE can blow
    up (un-normalised)."""
    solver = SOLVERS[name](normalized=normalized, bound=bound)
    return solver if normalized else Refined(solver, calm_scale(block.drift, V0))


def pilot_paths(n_paths: int) -> int:
    """Paths solved twice for the step-error estimate: all of them up to 256, then a quarter
    (a power of two), at most 2048: about 15% more work for a run of 1000 paths."""
    if n_paths <= 256:
        return n_paths
    return min(n_paths, 2048, max(256, 1 << (n_paths // 4).bit_length() - 1))


def _head(solution: Solution, n: int) -> Solution:
    """The first n paths of a solve."""
    return Solution(*(a[:n] for a in solution))


def _joined(first: Solution, second: Solution) -> Solution:
    """Two solves of consecutive paths as one."""
    return Solution(*(np.concatenate(pair) for pair in zip(first, second, strict=True)))


def attention_heat(config: dict[str, Any]) -> float:
    """Largest gamma^2 / tau0^2 of the shaped attention (sub-)blocks of a block's config (0
    without attention): the scale of the cubic drift. ``solver="auto"`` takes the congruence
    solver from 1 on: in hot settings it reaches a given accuracy at a fraction of Euler's cost,
    while in cool ones Euler needs no repairs and its step is cheaper (``benchmarks/README.md``)."""
    heat = config["gamma"] ** 2 / config["tau0"] ** 2 if "tau0" in config else 0.0
    parts = [v for v in config.values() if isinstance(v, dict)]
    parts += [x for v in config.values() if isinstance(v, list) for x in v
              if isinstance(x, dict)]
    return max([heat, *(attention_heat(part) for part in parts)])


def _steps_per_save(interval: float, dt: float) -> int:
    return max(1, math.ceil(interval / dt - 1e-9))


def solve_sde(block: Block, V0: object, T: float, *, key: Array, dt: float | None = None,
              tol: float = 0.005, n_paths: int = 1000, n_save: int = 17,
              normalize: str | None = None, solver: str = "auto", scheme: str = "project",
              blowup_bound: float = 1e3, dtype: str = "float32", chunk_size: int = 1024,
              first_path: int = 0, progress: bool = False) -> Trajectories:
    """Integrate the covariance SDE of ``block`` from ``V0`` to time ``T`` for ``n_paths`` paths.

    Args:
        block: a block with an SDE limit, e.g. ``ShapedAttention()``.
        V0: initial covariance (m, m), symmetric PSD with positive diagonal. For a normalised
            SDE it is first mapped to its correlation matrix.
        T: final time (depth / width of the network it describes), > 0.
        key: JAX PRNG key; path i uses ``fold_in(key, i)``, so results do not depend on
            ``n_paths`` or ``chunk_size``.
        dt: None (default): the step is chosen so that the estimated step error of the mean and
            5/50/95% quantiles of every rho_ab at the saved times (and, without normalisation,
            of the blow-up fraction) is at most ``tol`` (module docstring). A number: the
            largest step, refined so that the saved times lie on the grid (dt = 1/width is one
            step per layer; a refined step is recorded in ``config["dt"]`` beside
            ``config["dt_requested"]`` and announced by a ``UserWarning``); the error is then
            estimated and recorded, not controlled.
        tol: bound on the estimated step error for ``dt=None``, > 0.
        n_save: number of evenly spaced saved times, including 0 and T (default 17: the
            times k T / 16; ``shapedsde.defaults``).
        normalize: None (default: the block as given) or "rms" (the normalised SDE on
            correlation matrices; shorthand for the block ``normalized(block)``).
        solver: "congruence" (``CongruenceEuler``), "euler" (Euler-Maruyama), or "auto":
            congruence where the block declares its factors (``has_noise_factor``: shaped
            attention without a mask, the shaped MLP and their Transformer block), scheme is
            "project" and the attention is hot (``attention_heat`` >= 1), else Euler.
        scheme: for a normalised SDE, "project" (step the block's SDE, then map onto
            correlation matrices, as the network does) or "ito" (step the Ito-transformed SDE
            of ``Normalized``, Euler only).
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
        progress: draw a progress bar on stderr over the ``n_paths`` paths (restarted when
            the step control halves the step). Off by default in library calls.

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
    target = normalized(block) if check_normalize(normalize) == "rms" else block
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    if solver not in SOLVER_NAMES:
        raise ValueError(f"solver must be one of {SOLVER_NAMES}, got {solver!r}")
    blowup_bound = check_real("blowup_bound", blowup_bound, low=1.0)
    chunk_size = check_int("chunk_size", chunk_size, low=1)
    jdtype = resolve_dtype(dtype)
    is_normalized = target.is_normalized
    stepped = target if scheme == "ito" else target.unnormalized()
    if not is_normalized and stepped is not target:
        raise ValueError("the SDE needs RMS normalisation after every sub-block or after none "
                         f"(block {type(block).__name__} normalises some); use "
                         "normalize='rms' or sd.normalized(block)")
    if solver == "auto":
        hot = attention_heat(block.config()) >= 1
        solver = "congruence" if hot and stepped.has_noise_factor else "euler"
    elif solver == "congruence" and not stepped.has_noise_factor:
        raise ValueError(f"solver 'congruence' needs scheme 'project' and a block with "
                         f"noise_factor ({type(block).__name__} with these options has none); "
                         "use solver='euler'")

    interval = T / (n_save - 1)
    per_save = _steps_per_save(interval, START_DT if dt is None else dt)
    per_save += per_save % 2 if dt is None else 0  # the control's grids halve exactly
    max_steps = MAX_STEPS if dtype == "float64" else MAX_FLOAT32_STEPS
    if per_save * (n_save - 1) > max_steps:
        raise ValueError(f"T / dt = {per_save * (n_save - 1)} steps exceeds {max_steps}; "
                         "increase dt" + (" or use dtype='float64'" if dtype == "float32"
                                          else ""))
    if dt is not None and not math.isclose(interval / per_save, dt, rel_tol=1e-9):
        warnings.warn(f"solve_sde: dt = {dt:.6g} refined to {interval / per_save:.6g} "
                      f"({per_save} steps per saved interval T / (n_save - 1) = {interval:.6g}) "
                      f"so that the {n_save} saved times lie on the step grid; "
                      "config['dt'] records the step taken", UserWarning, stacklevel=2)
    save_ts = np.linspace(0.0, T, n_save)
    scale = 1.0 if is_normalized else float(np.max(np.diag(V0)))
    stepped = traced_parameters(stepped, jdtype)
    V0_j = jnp.asarray(V0, jdtype)
    step_solver = make_solver(solver, stepped, V0_j, normalized=is_normalized,
                              bound=jnp.asarray(blowup_bound * scale, jdtype))
    # one compiled shape for every solve of the run
    chunk = padded_chunk_size(pilot_paths(n_paths), chunk_size)
    grid = (step_solver, stepped, V0_j, jnp.asarray(save_ts, jdtype))
    bar = tqdm(total=n_paths, desc="SDE paths", unit="path", leave=False, disable=not progress)
    run = dict(key=key, chunk_size=chunk)

    def whole(count: int) -> int:
        """Paths to ask the driver for: ``count`` rounded up to whole chunks (one compiled
        shape for every solve; the padding is solved anyway and dropped by ``_head``)."""
        return -(-count // chunk) * chunk

    def step_error(base: Solution, other: Solution, per_save: int) -> StepError:
        return estimate(base.V, base.t_explode >= 0, other.V, other.t_explode >= 0,
                        dt=interval / per_save, relation="coarse" if per_save % 2 == 0
                        else "fine", order=step_solver.weak_order,
                        normalize="rms" if is_normalized else None)

    while True:  # the first n paths at the run's step and, on the same Brownian path, at
        # twice the step (or, where the grid cannot be halved, half the step)
        n = pilot_paths(n_paths)
        other_steps = per_save // 2 if per_save % 2 == 0 else 2 * per_save
        coupled = dict(brownian_dt=interval / per_save, **run)
        bar.reset()
        bar.set_description(f"SDE paths (dt = {interval / per_save:.3g})")
        base = _head(solve(*grid, per_save, n_paths=whole(n), first_path=first_path, **run), n)
        bar.update(n)
        other = _head(solve(*grid, other_steps, n_paths=whole(n), first_path=first_path,
                            **coupled), n)
        err = step_error(base, other, per_save)
        while dt is None and n < n_paths and err.crossing_undecided(tol):
            more = min(2 * n, n_paths)  # more coupled paths: paths n, ..., more - 1
            start = first_path + n
            base = _joined(base, _head(solve(*grid, per_save, n_paths=whole(more - n),
                                             first_path=start, **run), more - n))
            bar.update(more - n)
            other = _joined(other, _head(solve(*grid, other_steps, n_paths=whole(more - n),
                                               first_path=start, **coupled), more - n))
            n = more
            err = step_error(base, other, per_save)
        if dt is not None or not err.above(tol, every_path=n == n_paths):
            break
        if interval / (2 * per_save) < MIN_DT or 2 * per_save * (n_save - 1) > max_steps:
            warnings.warn(f"solve_sde: step error above tol = {tol:g} beyond its Monte Carlo "
                          f"error at the smallest step dt = {interval / per_save:.3g} ({err}); "
                          "the result carries it (config['step_error'])", RuntimeWarning,
                          stacklevel=2)
            break
        per_save *= 2
    parts = [base]
    for start in range(n, n_paths, chunk):  # the rest, a chunk per call (for the progress bar)
        size = min(chunk, n_paths - start)
        parts.append(_head(solve(*grid, per_save, n_paths=chunk, first_path=first_path + start,
                                 **run), size))
        bar.update(size)
    bar.close()
    base = Solution(*(np.concatenate(arrays) for arrays in zip(*parts, strict=True)))
    exploded = base.t_explode >= 0
    return Trajectories(
        t=save_ts, V=base.V, exploded=exploded,
        explosion_time=np.where(exploded, base.t_explode, np.inf), psd_repairs=base.repairs,
        config={"kind": "sde", "block": block.config(), "T": T, "dt": interval / per_save,
                "dt_requested": dt, "tol": tol if dt is None else None, "solver": solver,
                "step_error": err.to_dict(), "n_paths": n_paths, "first_path": first_path,
                "normalize": "rms" if is_normalized else None, "scheme": scheme,
                "blowup_bound": blowup_bound, "dtype": dtype, "V0": V0.tolist(),
                "key": key_record(key)})
