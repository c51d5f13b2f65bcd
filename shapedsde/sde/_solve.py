r"""Integration of the covariance SDE, batched over paths, with its step error controlled.

    dV = b(V) dt + noise(V, L, dW),   L L^T = V,   dW: ``block.n_noise`` m x m Brownian matrices

The noise is the block's "cheap noise" (O(m^3) per step, no m^2 x m^2 square root). The paths
are integrated by the driver (``solve``) with a solver of ``_solvers`` (by default the
congruence form of Euler where the block allows it and its attention is hot or it has more than
8 tokens, else Euler-Maruyama), which keeps every path on the state space and freezes a path
that blows up, wrapped in ``Refined`` (``_refinement``) for the un-normalised SDE, whose hot
paths take substeps. The number of steps, T, V0 and the block's parameters are traced values,
so a sweep over them, or the step control below, compiles once.

Step error (SPEC section 9). A solve at a given ``dt`` also integrates its first
``pilot_paths`` paths (at most ESTIMATE_SHARE of the run's work) on the same Brownian path at
twice the step (increments summed
in pairs) or, when that grid does not reach the saved times, at half the step (Brownian
bridge), and records the estimated error of the mean and 5/50/95% quantiles of every rho_ab at
the saved times, each with its standard error, in ``Trajectories.config["step_error"]``
(``_step_error.StepError``: "0.003 +- 0.001 (below 0.005 at 2 SE)").

With ``dt=None`` (default) the step is accepted only when its error is *resolved* below
``tol``: for every statistic, estimate + 2 standard errors <= tol (97.5% one-sided per
statistic, not family-wise: only statistics whose error is near tol can be accepted wrongly),
and for the blow-up fraction of the un-normalised SDE estimate + 2 SE <= CROSSING_TOL tol. The
control walks a ladder of steps START_DT, START_DT / 2, ..., each solved at dt and 2 dt on
max(n_paths, ESTIMATE_PATHS) coupled paths (paths beyond the run's are solved for the estimate
only). A step's error is bounded, statistic by statistic, by the smallest of its own bound and
the bounds of coarser steps of the ladder scaled by (dt / dt_coarse)^p, where the ladder shows
the order p holds over at least MIN_ORDERED consecutive steps (``_step_error.consistent``: the
estimates at 2 dt and dt agree after scaling, within their noise). The coupled difference of a
statistic has a standard error of order sqrt(dt / paths) and its estimate of order dt, so a
bound scaled from a coarser step is much tighter than a direct one: that is what makes a
resolved error affordable. Where the ladder's bounds put a step up to MAX_EXTRAPOLATION
halvings below the finest step measured within tol, that step is taken after a direct coupled
estimate there on its first paths does not show the error above tol. Where only the blow-up
fraction is unresolved, by its standard error, more coupled paths are solved on the same step
(up to MAX_CROSSING_PATHS_FACTOR times). Where no step down to MIN_DT is resolved, the control
warns (``RuntimeWarning``) and records ``resolved: False``. Every solve of the run uses one
compiled shape.

Randomness is per path: path i's increment on grid step k is a pure function of
(``fold_in(key, i)``, k) (``_brownian``), so a path does not depend on the chunk, the batch or
the number of devices it runs on. Chunks are split over the local JAX devices.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from tqdm.auto import tqdm

from .._batching import MIN_BUCKET, key_record, padded_chunk_size
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
from ._solvers import SOLVERS, GuardedSolver, solver_class
from ._step_error import CROSSING_TOL, StepError, Z, consistent, estimate, extrapolate

SCHEMES = ("project", "ito")
SOLVER_NAMES = ("auto", *SOLVERS)
DEFAULT_TOL = TOL
"""Default bound on the estimated step error of the mean and quantiles of rho (SPEC section 9:
the Monte Carlo error of a typical run, 10^4 paths; ``shapedsde.defaults.TOL``)."""
START_DT = 2.0**-6
"""First step of the step control's ladder (and the largest it takes)."""
ESTIMATE_PATHS = 2048
"""Fewest coupled paths on each step of the ladder: all of the run's paths, and more where it
has fewer (paths first_path + n_paths, ... of the same key, solved for the estimate only), so
that a run of few paths still gets a resolved estimate."""
MAX_CROSSING_PATHS_FACTOR = 4
"""The control solves up to this many times max(n_paths, ESTIMATE_PATHS) coupled paths on a
step where only the blow-up fraction's error is unresolved (``_crossing_needs_paths``)."""
MIN_ORDERED = 3
"""Consecutive steps of the ladder that must agree with the order before bounds are scaled."""
MAX_EXTRAPOLATION = 3
"""Halvings below the finest step measured that a bound may be scaled to (a factor 8)."""
MIN_DT = 2.0**-15
"""Smallest step the step control takes; if the tolerance is not met there it warns."""
EULER_MAX_TOKENS = 7
"""``solver="auto"`` takes the congruence solver beyond this many tokens, hot or cool. From 8
tokens on XLA runs the small products as ``dot``s and the congruence step is the cheaper one
even where Euler repairs nothing: at m = 8 (V0 = 0.7 I + 0.3, tau0 1, gamma 0.5, raw, dt 1/500,
4000 paths) the driver took 2.38 s with Euler and 1.27 s with ``RootCongruenceEuler`` (3.83 and
2.48 s with the refinement of hot paths), and 1.65 against 1.45 s for the shaped Transformer
block ("rms", ``CongruenceEuler``); at m = 4 and 6 they cost the same. Beyond 8 tokens
Euler's proposals leave the PSD cone even in cool settings (the noise of a step grows with m
against V's smallest eigenvalues) and each such step costs an ``eigh``: from
V0_ab = 0.8^|a-b|, tau0 1, gamma 0.5, dt 1/256, Euler repaired 84 (m = 16, raw) to 709
(m = 128, "rms", 16 paths) path-steps, congruence none, and its driver took 0.77-0.82 (m = 16),
0.60-0.79 (m = 32), 0.51-0.68 (m = 64) and 0.42-0.45 (m = 128) of Euler's time
(``benchmarks/README.md``). Up to m = 7 the cool default stays Euler (no repairs there; its
paths for a key are those of the golden set, whose "auto" runs have 2 and 4 tokens)."""
ESTIMATE_SHARE = 0.1
"""At a given dt, the share of the run's work that the step-error estimate may add (issue 26):
its pilot paths' solve on the other grid (``pilot_paths``)."""
MIN_PILOT = 8
"""Fewest pilot paths of a run beyond SMALL_RUN: its estimate's standard errors say how little
that is."""
MAX_PILOT = 2048
SMALL_RUN = 2**24
"""Work (path-steps times m^3) up to which a run at a given dt is estimated on all its paths
(one compiled shape, not two): 32768 path-steps at m = 8, about 30 ms on 2 cores, far less
than a compilation; the golden set's runs and most tests are such runs."""
CHUNK_BYTES = 2**18
"""On a CPU, the default chunk holds as many paths as keep one m x m state of the chunk (one
array of the step, of which it reads and writes several) within these bytes, which stays in
the cores' caches: in one run each, the driver ("rms", dt 1/256) was 17% faster at m = 16 with
256 paths a chunk than with 1024, 22% at m = 32 with 64 against 256, and at m = 64 (raw) 24%
with 16 against 128 (``benchmarks/README.md``); at m = 8 this is the 1024 measured best
before."""
MAX_STEPS = 2**30  # step indices are exact integers, and bridge streams start at 2^31


def make_solver(name: str, block: Block, V0: Array, *, normalized: bool,
                bound: Array) -> GuardedSolver | Refined:
    """The solver ``name`` ("euler" or "congruence") for the SDE of ``block`` from V0: with the
    guard's normalisation and blow-up ``bound``, wrapped in ``Refined`` where the SDE can blow
    up (un-normalised)."""
    solver = solver_class(name, block)(normalized=normalized, bound=bound)
    return solver if normalized else Refined(solver, calm_scale(block.drift, V0))


def default_chunk_size(m: int, dtype: str) -> int:
    """``solve_sde``'s default paths per compiled call at m tokens: on a CPU the power of two
    (8 to 1024) whose m x m states fit CHUNK_BYTES (float32: 1024 at m = 8, 64 at m = 32,
    16 at m = 64, 8 beyond); on an accelerator 1024, which wants large batches."""
    if jax.default_backend() != "cpu":
        return 1024
    paths = CHUNK_BYTES // (m * m * np.dtype(dtype).itemsize)
    return min(1024, max(MIN_BUCKET, 1 << max(paths, 1).bit_length() - 1))


def pilot_paths(n_paths: int, steps: int, m: int, other_per_step: float) -> int:
    """Paths of a run at a given step (``steps`` in all, m tokens) that are also solved on the
    other grid of the step-error estimate (``other_per_step``: its steps per step of the run's
    grid, 1/2 for twice the step, 2 for the bridge at half the step): the largest power of two
    whose solve there costs at most ESTIMATE_SHARE of the run's, at least MIN_PILOT paths and at
    most MAX_PILOT. A pilot path at twice the step costs as much as a path of the run, not half:
    it takes half the steps but draws the same normals (two base increments a step), and with
    few tokens the normals are much of a step (measured: 32 pilot paths of a 256-path run cost
    13% of it at m = 16 and 10% at m = 32, "rms"). A small run (SMALL_RUN, in path-steps times
    m^3) estimates on all its paths: fewer would compile a second shape, which costs more than
    solving them all. A run of 1000 paths at an even number of steps per saved interval: 64."""
    if n_paths * steps * m**3 <= SMALL_RUN:
        return n_paths
    budget = int(n_paths * ESTIMATE_SHARE / max(other_per_step, 1.0))
    return min(n_paths, MAX_PILOT, max(MIN_PILOT, 1 << max(budget, 1).bit_length() - 1))


def _check_paths(n_paths: int, chunk: int) -> int:
    """Paths of the control's direct check at a step below the finest one measured (the run's
    first paths, ``_control``): all of a chunk, and a quarter of the run's (a power of two) from
    256 to MAX_PILOT where that is more."""
    quarter = 1 << max(n_paths // 4, 1).bit_length() - 1
    return max(chunk, min(n_paths, MAX_PILOT, max(256, quarter)))


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
    while in cool ones with few tokens Euler needs no repairs (``benchmarks/README.md``)."""
    heat = config["gamma"] ** 2 / config["tau0"] ** 2 if "tau0" in config else 0.0
    parts = [v for v in config.values() if isinstance(v, dict)]
    parts += [x for v in config.values() if isinstance(v, list) for x in v
              if isinstance(x, dict)]
    return max([heat, *(attention_heat(part) for part in parts)])


def auto_solver(block: Block, stepped: Block, m: int) -> str:
    """What ``solver="auto"`` takes for ``block`` at m tokens, stepped as ``stepped`` (the
    block without its normalisation for scheme "project"): congruence where ``stepped`` has
    that form and the attention is hot (``attention_heat`` >= 1) or there are more than
    EULER_MAX_TOKENS tokens, else Euler."""
    hot = attention_heat(block.config()) >= 1
    many = m > EULER_MAX_TOKENS
    return "congruence" if (hot or many) and stepped.has_noise_factor else "euler"


def _steps_per_save(interval: float, dt: float) -> int:
    return max(1, math.ceil(interval / dt - 1e-9))


def _crossing_needs_paths(err: StepError, tol: float) -> bool:
    """The correlations' error is within tol but the blow-up fraction's bound is not, and
    mostly by its standard error: more coupled paths, not a smaller step, would resolve it."""
    return (err.bound <= tol and err.crossing_bound is not None
            and err.crossing_bound > CROSSING_TOL * tol and Z * err.crossing_se > err.crossing)


def _ordered(levels: list[StepError], direct: StepError) -> list[StepError]:
    """The coarser steps whose bounds may be scaled to ``direct``'s: the run of the ladder's
    last steps, down to ``direct``, in which each agrees with the next finer one after scaling
    by the order (``consistent``), if that run has at least MIN_ORDERED steps; else none. One
    agreeing pair is not enough: on the first steps the estimates are mostly noise and agree
    easily, and a gap that happens to be small there (a 5% quantile at 1/128 in a hot
    correlated setting: 0.0005 +- 0.007, against 0.029 at 1/64) would be scaled down."""
    run = [direct]
    for coarse in reversed(levels):
        if not consistent(coarse, run[0]):
            break
        run.insert(0, coarse)
    return run[:-1] if len(run) >= MIN_ORDERED else []


def _control(tol: float, n_paths: int, per_save: int, interval: float, max_steps: int,
             n_save: int, check_paths: int,
             solve_paths: Callable[..., tuple[Solution, Solution]],
             step_error: Callable[[Solution, Solution, int], StepError],
             bar: Any) -> tuple[int, Solution, StepError]:
    """The step control (module docstring): a ladder of steps from START_DT down, each solved
    on max(n_paths, ESTIMATE_PATHS) paths at dt and 2 dt. Returns the steps per saved interval
    taken, the first paths solved at that step (at most n_paths) and the step error. A step
    below the finest one measured is checked on ``check_paths`` paths at that step."""
    n = max(n_paths, ESTIMATE_PATHS)
    max_paths = MAX_CROSSING_PATHS_FACTOR * n
    levels: list[StepError] = []  # the ladder so far, coarsest first
    while True:
        dt = interval / per_save
        bar.reset()
        bar.set_description(f"SDE step control (dt = {dt:.3g})")
        base, other = solve_paths(per_save, n)
        bar.update(min(n, n_paths))
        while True:
            direct = step_error(base, other, per_save)
            ladder = _ordered(levels, direct)
            err = extrapolate(ladder, dt, direct, tol)
            if not _crossing_needs_paths(err, tol) or n >= max_paths:
                break
            # only the blow-up fraction is unresolved, by its Monte Carlo error (flips of a
            # crossing between the two grids are rare events): more coupled paths, here
            more, more_other = solve_paths(per_save, n, start=n)
            base, other, n = _joined(base, more), _joined(other, more_other), 2 * n
        if err.within(tol):
            return per_save, _head(base, n_paths), err
        if ladder:  # the order holds down to this step
            for j in range(1, MAX_EXTRAPOLATION + 1):
                steps = per_save << j
                if interval / steps < MIN_DT or steps * (n_save - 1) > max_steps:
                    break
                if not extrapolate([*ladder, direct], interval / steps, None, tol).within(tol):
                    continue
                # a direct estimate at that step on the run's first paths: the check that
                # the scaling holds there, and those paths are the result's
                bar.reset()
                bar.set_description(f"SDE paths (dt = {interval / steps:.3g})")
                first, coarse = solve_paths(steps, check_paths)
                check = step_error(first, coarse, steps)
                if not check.shown_above(tol):
                    return steps, _head(first, n_paths), extrapolate(
                        [*ladder, direct], interval / steps, check, tol)
                break
        levels.append(direct)
        if interval / (2 * per_save) < MIN_DT or 2 * per_save * (n_save - 1) > max_steps:
            warnings.warn(f"solve_sde: the step error is not resolved below tol = {tol:g} "
                          f"down to the smallest step dt = {dt:.3g} ({err}); more paths would "
                          "resolve it; the result carries it (config['step_error'])",
                          RuntimeWarning, stacklevel=3)
            return per_save, _head(base, n_paths), replace(err, resolved=False)
        per_save *= 2


def solve_sde(block: Block, V0: object, T: float, *, key: Array, dt: float | None = None,
              tol: float = 0.005, n_paths: int = 1000, n_save: int = 17,
              normalize: str | None = None, solver: str = "auto", scheme: str = "project",
              blowup_bound: float = 1e3, dtype: str = "float32", chunk_size: int | None = None,
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
            "project" and either the attention is hot (``attention_heat`` >= 1) or there are
            more than ``EULER_MAX_TOKENS`` (7) tokens, else Euler.
        scheme: for a normalised SDE, "project" (step the block's SDE, then map onto
            correlation matrices, as the network does) or "ito" (step the Ito-transformed SDE
            of ``Normalized``, Euler only).
        blowup_bound: a path whose max_a V_aa (= max_ab |V_ab| for PSD V) exceeds
            ``blowup_bound * max(diag V0)`` is frozen and flagged as exploded (the
            un-normalised SDE may explode in finite time).
        dtype: "float32" or "float64" (the latter enables ``jax_enable_x64``).
        chunk_size: paths integrated per compiled call (bounds memory; results unchanged),
            rounded up to a multiple of the local device count; each chunk is split over the
            local devices (``jax.local_devices()``). Default (None): ``default_chunk_size``,
            on a CPU as many paths as keep a chunk's m x m states in cache (1024 at m = 8, 64
            at m = 32, 8 at m = 128), on an accelerator 1024.
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
    if chunk_size is None:
        chunk_size = default_chunk_size(V0.shape[0], dtype)
    chunk_size = check_int("chunk_size", chunk_size, low=1)
    jdtype = resolve_dtype(dtype)
    is_normalized = target.is_normalized
    stepped = target if scheme == "ito" else target.unnormalized()
    if not is_normalized and stepped is not target:
        raise ValueError("the SDE needs RMS normalisation after every sub-block or after none "
                         f"(block {type(block).__name__} normalises some); use "
                         "normalize='rms' or sd.normalized(block)")
    if solver == "auto":
        solver = auto_solver(block, stepped, V0.shape[0])
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
    # one compiled shape for every solve of the step control; at a given step, one for the
    # run and, where its pilot paths are fewer than a chunk, one for their other grid
    chunk = padded_chunk_size(n_paths if dt is not None else max(n_paths, ESTIMATE_PATHS),
                              chunk_size)
    grid = (step_solver, stepped, V0_j, jnp.asarray(save_ts, jdtype))
    bar = tqdm(total=n_paths, desc="SDE paths", unit="path", leave=False, disable=not progress)

    def other_grid(steps: int) -> int:
        """Steps per saved interval of the estimate's other grid: half as many (twice the
        step), or for an odd number twice as many (the Brownian bridge)."""
        return steps // 2 if steps % 2 == 0 else 2 * steps

    def solve_grid(steps: int, count: int, start: int = 0, size: int = chunk,
                   brownian_steps: int | None = None) -> Solution:
        """Paths start, ..., start + count - 1 of the run at ``steps`` steps per saved
        interval, on the Brownian path of ``brownian_steps`` (default: its own grid). Whole
        chunks of ``size`` are solved and the padding dropped."""
        extra = {} if brownian_steps is None else {"brownian_dt": interval / brownian_steps}
        return _head(solve(*grid, steps, key=key, n_paths=-(-count // size) * size,
                           first_path=first_path + start, chunk_size=size, **extra), count)

    def solve_paths(steps: int, count: int, start: int = 0) -> tuple[Solution, Solution]:
        """Paths start, ..., start + count - 1 at ``steps`` steps per saved interval and the
        same paths on the same Brownian path on the other grid (``other_grid``)."""
        return (solve_grid(steps, count, start),
                solve_grid(other_grid(steps), count, start, brownian_steps=steps))

    def step_error(base: Solution, other: Solution, per_save: int) -> StepError:
        return estimate(base.V, base.t_explode >= 0, other.V, other.t_explode >= 0,
                        dt=interval / per_save, relation="coarse" if per_save % 2 == 0
                        else "fine", order=step_solver.weak_order,
                        normalize="rms" if is_normalized else None)

    if dt is None:
        per_save, base, err = _control(tol, n_paths, per_save, interval, max_steps, n_save,
                                       _check_paths(n_paths, chunk), solve_paths,
                                       step_error, bar)
        bar.reset()
        bar.set_description(f"SDE paths (dt = {interval / per_save:.3g})")
        bar.update(base.V.shape[0])
        parts = [base]
    else:
        parts = []
    for start in range(sum(p.V.shape[0] for p in parts), n_paths, chunk):  # the rest, a chunk
        size = min(chunk, n_paths - start)                                # per call (the bar)
        parts.append(solve_grid(per_save, size, start))
        bar.update(size)
    base = Solution(*(np.concatenate(arrays) for arrays in zip(*parts, strict=True)))
    if dt is not None:  # the given step: its error estimated on the first paths, not controlled
        pilot = pilot_paths(n_paths, per_save * (n_save - 1), V0.shape[0],
                            other_grid(per_save) / per_save)
        other = solve_grid(other_grid(per_save), pilot, size=padded_chunk_size(pilot, chunk_size),
                           brownian_steps=per_save)
        err = extrapolate([], interval / per_save, step_error(_head(base, pilot), other, per_save))
    bar.close()
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
