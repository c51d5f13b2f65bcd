"""Throughput of ``solve_sde`` (path-steps per second) against two plain baselines.

The SDE is shaped attention (gamma 0.5, tau0 1, one head, no normalisation) from
V0_ab = 0.8^|a-b| to T = 1 with dt = 1/256, float32. Three implementations, timed in the same run:

* ``solve_sde``: the library, as a user calls it (``progress=False``);
* (a) ``scan``: a plain ``jax.lax.scan`` + ``vmap`` Euler-Maruyama written here from the SPEC
  formulas: per-path threefry keys (``fold_in(key, step)`` then ``jax.random.normal``), a Cholesky
  square root and two m x m Gaussian matrices per step;
* (b) ``numpy``: the same Euler loop in NumPy, vectorised over paths (batched ``matmul`` and
  ``linalg.cholesky``), looping over steps; and ``numpy loop``, the literal loop over paths and
  steps (one m x m Cholesky and a few small products per path-step), timed on 20 paths.

"noise/s" is the rate of drawing ``solve_sde``'s noise alone (``noise_floor``: its Brownian
path's increments, ``MatrixBrownianPath.evaluate``), and "bound"
that rate over vectorised NumPy's: no Euler solver that draws this noise can be more than
"bound" times faster than (b), whatever the rest of its step costs.

``--devices N`` starts JAX with N host CPU devices (``XLA_FLAGS``, before JAX is imported):
``solve_sde`` then splits its paths over them, while the plain scan (a) runs on one device, as
a user's jitted function would.

Compilation is reported separately: "first call" is the first ``solve_sde`` call for a shape
(tracing + compilation + run), "steady" the best of the timed repeats with other keys (identical
shapes, so nothing recompiles). ``solve_sde`` and the scan are timed in alternation, round by
round, so both see the same machine load; "x scan" is the ratio of their best times and
"(med)" the median over rounds of the ratio within a round. Achieved GFLOP/s use the flop model
of ``flops_per_step`` against the measured float32 matmul peak (best of n x n products).

    .venv/bin/python benchmarks/sde_throughput.py               # full table, a few minutes
    .venv/bin/python benchmarks/sde_throughput.py --quick       # m = 8 only, about 1.5 minutes
    .venv/bin/python benchmarks/sde_throughput.py --devices 2   # paths over 2 CPU devices
    .venv/bin/python benchmarks/sde_throughput.py --by-m        # m = 2..128, raw and "rms"
    .venv/bin/python benchmarks/sde_throughput.py --setting     # m = 8, 4000 paths, refinement
    .venv/bin/python benchmarks/sde_throughput.py --default-call 128   # first call, defaults
    bash benchmarks/gpu_table.sh      # on a GPU: --by-m with --paths 4096 --chunk 4096, ...

Results are printed and written to benchmarks/results/sde_throughput[_by_m|_setting].json.

``--by-m`` (issue 26): for every m in BY_M and both forms of the SDE (raw, "rms"), the first
``solve_sde`` call at a fixed step (a fresh compilation for each (m, form), in this process),
then rounds that alternate ``solve_sde``, the driver's solve of the same paths with the solver
``solve_sde`` chose ("auto": congruence from 8 tokens on) alone (``shapedsde.sde.solve``: no
pilot solve at twice the step, no estimate) and the scan; rates are path-steps of the run's
own grid per second (the pilot's solve at twice the step is counted as work ``solve_sde``
does, not as path-steps); "est %" is what ``solve_sde`` adds to the driver for the
step-error estimate, timed by itself after the rounds (its pilot paths solved on the same
Brownian path at twice the step, and the statistics), over ``solve_sde``'s time (medians over
rounds); the JSON also keeps the older, noisier reading 1 - driver / ``solve_sde``.
``--setting``: the throughput benchmark's own setting
(m = 8, 4000 paths, 500 steps, raw, V0 = 0.7 I + 0.3), and the refinement's share: the driver
with the ``Refined`` solver against the same solver without it, on the same paths.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path


def _devices_from_argv(argv: list[str]) -> int:
    for i, arg in enumerate(argv):
        if arg.startswith("--devices"):
            return int(arg.split("=", 1)[1] if "=" in arg else argv[i + 1])
    return 1


DEVICES = _devices_from_argv(sys.argv)
if DEVICES > 1:  # must happen before JAX starts
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                               + f" --xla_force_host_platform_device_count={DEVICES}")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import NamedSharding  # noqa: E402
from jax.sharding import PartitionSpec as P  # noqa: E402
from network_cost import machine  # noqa: E402

import shapedsde as sd  # noqa: E402
from shapedsde.sde import MatrixBrownianPath  # noqa: E402

GAMMA, TAU0, T, DT = 0.5, 1.0, 1.0, 2.0**-8
MS = (4, 8, 16, 32)
PATHS = (1000, 10000)


def flops_per_step(m: int) -> float:
    """Useful flops of one attention Euler step: 3 m x m matrix products per noise matrix pair
    (L dW L^T twice, N_2 H V once) at 2 m^3 each, a Cholesky (m^3 / 3) and O(m^2) elementwise work
    (drift, centring, symmetrisation), counted as 20 m^2."""
    return 5 * 2 * m**3 + m**3 / 3 + 20 * m**2


def solver_flops_per_step(m: int, solver: str) -> float:
    """Useful flops of one step of ``solve_sde``'s solver for shaped attention without mask:
    Euler as ``flops_per_step``; the congruence step on the root (``RootCongruenceEuler``)
    3 products (K = (H L)^T (H L), dW_2 K, L' (I + G)), no Cholesky, O(m^2) work as 20 m^2."""
    return flops_per_step(m) if solver == "euler" else 3 * 2 * m**3 + 20 * m**2


# -- (a) plain JAX Euler --------------------------------------------------------------------
def _drift(V: jax.Array) -> jax.Array:
    m = V.shape[0]
    Vt = V - V.mean(0, keepdims=True) - V.mean(1, keepdims=True) + V.mean()
    a = jnp.diag(V)
    Vb = V @ (jnp.diag(Vt) - jnp.trace(Vt) / m)
    first = (jnp.outer(a, Vb) + jnp.outer(Vb, a)) / (2 * m)
    return GAMMA**2 / TAU0**2 * (first + jnp.sum(Vt * Vt) * V / m**2)


def _noise(V: jax.Array, L: jax.Array, dW: jax.Array) -> jax.Array:
    m = V.shape[0]
    N1 = L @ dW[0] @ L.T
    N2 = L @ dW[1] @ L.T
    Y = N2 @ (V - V.mean(0, keepdims=True)) / m
    return np.sqrt(GAMMA**2 * (2 - GAMMA**2) / 2) * (N1 + N1.T) + GAMMA**2 / TAU0 * (Y + Y.T)


def scan_euler(V0: np.ndarray, n_paths: int, n_steps: int) -> Callable[[jax.Array], jax.Array]:
    """Jitted function key -> final V of every path (n_paths, m, m)."""
    m, dt = V0.shape[0], T / n_steps

    def path(key: jax.Array) -> jax.Array:
        def step(V: jax.Array, i: jax.Array) -> tuple[jax.Array, None]:
            dW = jax.random.normal(jax.random.fold_in(key, i), (2, m, m)) * np.sqrt(dt)
            L = jnp.linalg.cholesky(V)
            V = V + _drift(V) * dt + _noise(V, L, dW)
            return 0.5 * (V + V.T), None

        return jax.lax.scan(step, jnp.asarray(V0, jnp.float32), jnp.arange(n_steps))[0]

    return jax.jit(lambda key: jax.vmap(path)(jax.random.split(key, n_paths)))


# -- (b) NumPy Euler ------------------------------------------------------------------------
def _np_sqrt(V: np.ndarray) -> np.ndarray:
    try:
        return np.linalg.cholesky(V)
    except np.linalg.LinAlgError:  # some path left the PSD cone: eigen square root, clipped
        lam, Q = np.linalg.eigh(V)
        return Q * np.sqrt(np.clip(lam, 0, None))[:, None, :]


def numpy_euler(V0: np.ndarray, n_paths: int, n_steps: int, seed: int) -> np.ndarray:
    """``n_steps`` Euler steps of size DT (the rate, not the horizon, is what is timed)."""
    m, dt = V0.shape[0], DT
    rng = np.random.default_rng(seed)
    V = np.broadcast_to(V0.astype(np.float32), (n_paths, m, m)).copy()
    c1, c2 = np.sqrt(GAMMA**2 * (2 - GAMMA**2) / 2), GAMMA**2 / TAU0
    for _ in range(n_steps):
        L = _np_sqrt(V)
        Lt = np.swapaxes(L, 1, 2)
        dW = rng.standard_normal((2, n_paths, m, m), dtype=np.float32) * np.float32(np.sqrt(dt))
        N1, N2 = L @ dW[0] @ Lt, L @ dW[1] @ Lt
        Y = N2 @ (V - V.mean(1, keepdims=True)) / m
        Vt = V - V.mean(1, keepdims=True) - V.mean(2, keepdims=True) \
            + V.mean((1, 2), keepdims=True)
        a = np.diagonal(V, axis1=1, axis2=2)
        dVt = np.diagonal(Vt, axis1=1, axis2=2)
        Vb = np.einsum("pab,pb->pa", V, dVt - dVt.mean(1, keepdims=True))
        first = (a[:, :, None] * Vb[:, None, :] + Vb[:, :, None] * a[:, None, :]) / (2 * m)
        drift = GAMMA**2 / TAU0**2 * (first + (Vt * Vt).sum((1, 2))[:, None, None] * V / m**2)
        V = V + drift * dt + c1 * (N1 + np.swapaxes(N1, 1, 2)) + c2 * (Y + np.swapaxes(Y, 1, 2))
        V = 0.5 * (V + np.swapaxes(V, 1, 2))
    return V


def numpy_path_loop(V0: np.ndarray, n_paths: int, n_steps: int, seed: int) -> np.ndarray:
    """The literal Euler loop: over paths, then steps, one m x m matrix at a time."""
    m, dt = V0.shape[0], DT
    rng = np.random.default_rng(seed)
    c1, c2 = np.sqrt(GAMMA**2 * (2 - GAMMA**2) / 2), GAMMA**2 / TAU0
    out = np.empty((n_paths, m, m), np.float32)
    for p in range(n_paths):
        V = V0.astype(np.float32)
        for _ in range(n_steps):
            L = _np_sqrt(V[None])[0]
            dW = rng.standard_normal((2, m, m), dtype=np.float32) * np.float32(np.sqrt(dt))
            N1, N2 = L @ dW[0] @ L.T, L @ dW[1] @ L.T
            Y = N2 @ (V - V.mean(0)) / m
            Vt = V - V.mean(0) - V.mean(1)[:, None] + V.mean()
            a, dVt = np.diag(V), np.diag(Vt)
            Vb = V @ (dVt - dVt.mean())
            drift = GAMMA**2 / TAU0**2 * ((np.outer(a, Vb) + np.outer(Vb, a)) / (2 * m)
                                          + np.sum(Vt * Vt) * V / m**2)
            V = V + drift * dt + c1 * (N1 + N1.T) + c2 * (Y + Y.T)
            V = 0.5 * (V + V.T)
        out[p] = V
    return out


# -- the noise alone ------------------------------------------------------------------------
def noise_floor(m: int, n_paths: int, n_steps: int) -> Callable[[int], jax.Array]:
    """Jitted seed -> sum of the noise ``solve_sde`` draws for shaped attention over ``n_steps``
    steps (its own generator: per-path Threefry keys, Box-Muller, n m^2 normals per path-step)
    and nothing else. Its rate bounds any Euler solver that draws this noise."""
    n = sd.ShapedAttention().n_noise

    @jax.jit
    def total(words: jax.Array) -> jax.Array:
        path = MatrixBrownianPath(words, DT, n, m, "float32")

        def body(k: jax.Array, acc: jax.Array) -> jax.Array:
            t = k.astype(jnp.float32) * DT
            return acc + jnp.sum(path.evaluate(t, t + DT))

        return jax.lax.fori_loop(0, n_steps, body, jnp.zeros((), jnp.float32))

    # paths split over the local devices, as solve_sde splits them
    paths = NamedSharding(jax.make_mesh((jax.local_device_count(),), ("paths",)), P("paths"))

    def run(seed: int) -> jax.Array:
        words = jax.random.bits(jax.random.PRNGKey(seed), (n_paths, 2), jnp.uint32)
        return total(jax.device_put(words, paths))

    return run


# -- timing ---------------------------------------------------------------------------------
def best_time(fn: Callable[[int], object], repeats: int) -> float:
    """Fastest of ``repeats`` calls fn(seed) with seeds 1, 2, ... (outputs pulled to host)."""
    return float(paired_times([fn], repeats).min())


def paired_times(fns: list[Callable[[int], object]], repeats: int) -> np.ndarray:
    """Times (repeats, len(fns)) of calls fn(seed) with seeds 1, 2, ..., interleaved: every
    round calls each fn once, in alternating order. On a shared machine the load drifts over
    minutes; timing one implementation after the other would skew their ratio."""
    times = np.zeros((repeats, len(fns)))
    for r in range(repeats):
        order = range(len(fns)) if r % 2 == 0 else reversed(range(len(fns)))
        for i in order:
            t0 = time.perf_counter()
            jax.block_until_ready(fns[i](r + 1))
            times[r, i] = time.perf_counter() - t0
    return times


def matmul_peak(sizes: tuple[int, ...] = (256, 512, 1024, 2048)) -> float:
    """Best float32 GFLOP/s of an n x n matrix product over ``sizes`` (and 4096, 8192 on an
    accelerator), at JAX's default matmul precision."""
    if jax.default_backend() != "cpu":
        sizes = (*sizes, 4096, 8192)
    best = 0.0
    for n in sizes:
        a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), jnp.float32)
        f = jax.jit(lambda x: x @ x)
        f(a).block_until_ready()
        t = best_time(lambda _, f=f, a=a: f(a), 5)
        best = max(best, 2 * n**3 / t / 1e9)
    return best


BY_M = (2, 4, 8, 16, 32, 64, 128)


def by_m_paths(m: int) -> int:
    """Paths per call in ``--by-m``: 256 (the issue's runs) up to m = 64 (a scan call there
    takes about 10 s on 2 cores), 64 at m = 128 so that a scan round stays under a minute
    (with fewer, the step-error estimate's floor of ``MIN_PILOT`` = 8 pilot paths would
    dominate: 25% of a 16-path run)."""
    return 256 if m <= 64 else 64


def measure_by_m(m: int, normalize: str | None, repeats: int, n_paths: int | None = None,
                 chunk_size: int | None = None) -> dict:
    """``solve_sde`` (fixed dt = DT, n_save 2), the driver alone and the scan at m tokens, on
    ``n_paths`` paths (default ``by_m_paths(m)``), ``chunk_size`` paths per compiled call
    (default: ``solve_sde``'s, ``default_chunk_size``)."""
    from shapedsde._batching import padded_chunk_size
    from shapedsde.blocks import traced_parameters
    from shapedsde.sde import make_solver, solve
    from shapedsde.sde._solve import default_chunk_size
    from shapedsde.sde._step_error import estimate

    n_paths, n_steps = n_paths or by_m_paths(m), round(T / DT)
    chunk_size = chunk_size or default_chunk_size(m, "float32")
    V0 = np.asarray(sd.default_covariance(m))
    block = sd.ShapedAttention(tau0=TAU0, gamma=GAMMA)

    def run(seed: int) -> sd.Trajectories:
        return sd.solve_sde(block, V0, T, key=jax.random.PRNGKey(seed), dt=DT, n_paths=n_paths,
                            n_save=2, normalize=normalize, chunk_size=chunk_size,
                            progress=False)

    def library(seed: int) -> np.ndarray:
        return run(seed).V

    t0 = time.perf_counter()
    first_run = run(0)
    first_s = time.perf_counter() - t0
    first, chosen = first_run.V, first_run.config["solver"]
    stepped = traced_parameters(block, jnp.float32)
    V0_j = jnp.asarray(V0, jnp.float32)
    solver = make_solver(chosen, stepped, V0_j, normalized=normalize == "rms",
                         bound=jnp.asarray(1e3 * float(np.max(np.diag(V0))), jnp.float32))
    ts = jnp.asarray([0.0, T], jnp.float32)

    pilot = first_run.config["step_error"]["paths"]
    base = {}

    def estimate_alone(seed: int) -> float:
        """What ``solve_sde`` adds to the driver at a given dt: its pilot paths solved on the
        same Brownian path at twice the step, and the estimate from them (the run's own paths
        at dt are the driver's, solved beforehand in the same round)."""
        head = base[seed]
        t0 = time.perf_counter()
        other = solve(solver, stepped, V0_j, ts, n_steps // 2, key=jax.random.PRNGKey(seed),
                      n_paths=pilot, brownian_dt=DT,
                      chunk_size=padded_chunk_size(pilot, chunk_size))
        estimate(head.V, head.t_explode >= 0, other.V, other.t_explode >= 0, dt=DT,
                 relation="coarse", order=solver.weak_order, normalize=normalize)
        return time.perf_counter() - t0

    def driver(seed: int) -> np.ndarray:
        """The driver alone on the run's paths (it keeps the pilot's paths at dt for
        ``estimate_alone``)."""
        out = solve(solver, stepped, V0_j, ts, n_steps, key=jax.random.PRNGKey(seed),
                    n_paths=n_paths, chunk_size=chunk_size)
        base[seed] = type(out)(*(a[:pilot] for a in out))
        return out.V

    driver(0)
    estimate_alone(0)
    scan = scan_euler(V0, n_paths, n_steps)
    scan(jax.random.PRNGKey(0)).block_until_ready()
    paired = paired_times([library, driver,
                           lambda s: scan(jax.random.PRNGKey(s))], repeats)
    t_lib, t_drv, t_scan = paired.min(axis=0)
    t_est = np.array([estimate_alone(r + 1) for r in range(repeats)])
    path_steps = n_paths * n_steps
    return {"m": m, "normalize": normalize, "n_paths": n_paths, "n_steps": n_steps,
            "chunk_size": chunk_size, "solver": chosen,
            "pilot_paths": pilot,
            "estimate_share": 1 - t_drv / t_lib,
            "estimate_share_median": float(np.median(1 - paired[:, 1] / paired[:, 0])),
            "estimate_s": float(np.median(t_est)),
            "estimate_share_direct": float(np.median(t_est) / np.median(paired[:, 0])),
            "first_call_s": first_s, "steady_s": t_lib, "driver_s": t_drv, "scan_s": t_scan,
            "rate": {"solve_sde": path_steps / t_lib, "driver": path_steps / t_drv,
                     "scan": path_steps / t_scan},
            "ratio_scan": t_scan / t_lib, "ratio_scan_median":
                float(np.median(paired[:, 2] / paired[:, 0])),
            "driver_ratio_scan": t_scan / t_drv,
            "gflops": path_steps / t_drv * solver_flops_per_step(m, chosen) / 1e9,
            "finite_fraction_library": float(np.mean(np.isfinite(first).all(axis=(1, 2, 3))))}


def measure_setting(repeats: int) -> dict:
    """The benchmark's setting: m = 8, 4000 paths, 500 steps of 1/500, raw, V0 = 0.7 I + 0.3.
    ``solve_sde`` against the scan, and the driver with and without ``Refined``."""
    from shapedsde.blocks import traced_parameters
    from shapedsde.sde import make_solver, solve

    m, n_paths, n_steps = 8, 4000, 500
    V0 = 0.7 * np.eye(m) + 0.3
    block = sd.ShapedAttention(tau0=TAU0, gamma=GAMMA)

    def run(seed: int) -> sd.Trajectories:
        return sd.solve_sde(block, V0, T, key=jax.random.PRNGKey(seed), dt=1 / n_steps,
                            n_paths=n_paths, n_save=2, progress=False)

    def library(seed: int) -> np.ndarray:
        return run(seed).V

    t0 = time.perf_counter()
    chosen = run(0).config["solver"]
    first_s = time.perf_counter() - t0
    stepped = traced_parameters(block, jnp.float32)
    V0_j = jnp.asarray(V0, jnp.float32)
    refined = make_solver(chosen, stepped, V0_j, normalized=False,
                          bound=jnp.asarray(1e3, jnp.float32))
    ts = jnp.asarray([0.0, T], jnp.float32)

    def driver(solver: object) -> Callable[[int], np.ndarray]:
        return lambda seed: solve(solver, stepped, V0_j, ts, n_steps,
                                  key=jax.random.PRNGKey(seed), n_paths=n_paths).t_explode

    with_refinement, without = driver(refined), driver(refined.solver)
    with_refinement(0), without(0)
    scan = scan_euler(V0, n_paths, n_steps)
    scan(jax.random.PRNGKey(0)).block_until_ready()
    paired = paired_times([library, with_refinement, without,
                           lambda s: scan(jax.random.PRNGKey(s))], repeats)
    t_lib, t_ref, t_plain, t_scan = paired.min(axis=0)
    return {"m": m, "n_paths": n_paths, "n_steps": n_steps, "solver": chosen,
            "first_call_s": first_s,
            "steady_s": t_lib, "driver_refined_s": t_ref, "driver_plain_s": t_plain,
            "scan_s": t_scan, "ratio_scan": t_scan / t_lib,
            "ratio_scan_median": float(np.median(paired[:, 3] / paired[:, 0])),
            "driver_ratio_scan": t_scan / t_ref,
            "refinement_share": 1 - t_plain / t_ref,
            "refinement_share_median": float(np.median(1 - paired[:, 2] / paired[:, 1]))}


def measure_default_call(m: int) -> dict:
    """The first ``solve_sde`` call at default arguments (dt=None: the step control chooses the
    step; 1000 paths) at m tokens, compilation included."""
    V0 = np.asarray(sd.default_covariance(m))
    t0 = time.perf_counter()
    traj = sd.solve_sde(sd.ShapedAttention(tau0=TAU0, gamma=GAMMA), V0, T,
                        key=jax.random.PRNGKey(0))
    elapsed = time.perf_counter() - t0
    return {"m": m, "first_call_s": elapsed, "dt": traj.config["dt"],
            "solver": traj.config["solver"],
            "step_error": traj.config["step_error"].get("statement")}


def main_by_m(args: argparse.Namespace, peak: float) -> None:
    suffix = "" if DEVICES == 1 else f"_{DEVICES}dev"
    out = Path(args.out or Path(__file__).parent / "results" / f"sde_throughput_by_m{suffix}.json")
    print(f"{'m':>3} {'form':>4} {'solver':>10} {'paths':>5} {'pilot':>5} {'first s':>8} "
          f"{'solve_sde/s':>11} {'driver/s':>9} {'scan/s':>9} {'x scan':>6} {'(med)':>6} "
          f"{'drv x':>6} {'est %':>6} {'GFLOP/s':>8} {'% peak':>6}")
    rows = []
    for m in args.ms or BY_M:
        for normalize in [None if f == "raw" else "rms" for f in args.forms]:
            r = measure_by_m(m, normalize, args.repeats, args.paths, args.chunk)
            rows.append(r)
            q = r["rate"]
            print(f"{m:>3} {normalize or 'raw':>4} {r['solver']:>10} {r['n_paths']:>5} "
                  f"{r['pilot_paths']:>5} {r['first_call_s']:>8.1f} "
                  f"{q['solve_sde']:>11.3g} {q['driver']:>9.3g} {q['scan']:>9.3g} "
                  f"{r['ratio_scan']:>6.2f} {r['ratio_scan_median']:>6.2f} "
                  f"{r['driver_ratio_scan']:>6.2f} "
                  f"{100 * r['estimate_share_direct']:>6.1f} {r['gflops']:>8.2f} "
                  f"{100 * r['gflops'] / peak:>6.2f}", flush=True)
            out.parent.mkdir(parents=True, exist_ok=True)  # partial results survive a stop
            out.write_text(json.dumps({"machine": machine(), "matmul_peak_gflops": peak,
                                       "rows": rows}, indent=1))
    print(f"wrote {out}")


def measure(m: int, n_paths: int, repeats: int, numpy_steps: int) -> dict:
    V0 = np.asarray(sd.default_covariance(m))
    n_steps = round(T / DT)
    block = sd.ShapedAttention(tau0=TAU0, gamma=GAMMA)

    def library(seed: int) -> np.ndarray:
        return sd.solve_sde(block, V0, T, key=jax.random.PRNGKey(seed), dt=DT, n_paths=n_paths,
                            n_save=2, progress=False).V

    t0 = time.perf_counter()
    library(0)
    first = time.perf_counter() - t0
    scan = scan_euler(V0, n_paths, n_steps)
    scan(jax.random.PRNGKey(0)).block_until_ready()
    paired = paired_times([library, lambda s: scan(jax.random.PRNGKey(s))], repeats)
    t_lib, t_scan = paired.min(axis=0)
    t_np = best_time(lambda s: numpy_euler(V0, n_paths, numpy_steps, s), 1)
    t_loop = best_time(lambda s: numpy_path_loop(V0, 20, 32, s), 1)
    noise = noise_floor(m, n_paths, n_steps)
    noise(0).block_until_ready()
    t_noise = best_time(noise, repeats)

    path_steps = n_paths * n_steps
    rate = {"solve_sde": path_steps / t_lib, "scan": path_steps / t_scan,
            "numpy": n_paths * numpy_steps / t_np, "numpy_loop": 20 * 32 / t_loop,
            "noise": path_steps / t_noise}
    return {"m": m, "n_paths": n_paths, "n_steps": n_steps, "devices": jax.local_device_count(),
            "first_call_s": first, "steady_s": t_lib, "rate": rate,
            "ratio_scan": rate["solve_sde"] / rate["scan"],
            "ratio_scan_median": float(np.median(paired[:, 1] / paired[:, 0])),
            "ratio_numpy": rate["solve_sde"] / rate["numpy"],
            "ratio_numpy_loop": rate["solve_sde"] / rate["numpy_loop"],
            "ratio_numpy_bound": rate["noise"] / rate["numpy"],
            "gflops": rate["solve_sde"] * flops_per_step(m) / 1e9}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="m = 8, 1000 and 10000 paths")
    parser.add_argument("--repeats", type=int, default=5,
                        help="timed rounds (solve_sde and the scan alternate)")
    parser.add_argument("--devices", type=int, default=1,
                        help="host CPU devices to start JAX with (solve_sde uses all)")
    parser.add_argument("--out", default=None, help="JSON output (default: "
                        "benchmarks/results/sde_throughput[_<N>dev].json)")
    parser.add_argument("--by-m", action="store_true", help="m = 2..128, raw and rms")
    parser.add_argument("--ms", type=int, nargs="*", help="with --by-m: these m only")
    parser.add_argument("--paths", type=int, default=None,
                        help="with --by-m: paths per call at every m (default 256 up to m = 64, "
                        "64 at m = 128: sized for 2 CPU cores)")
    parser.add_argument("--chunk", type=int, default=None,
                        help="with --by-m: solve_sde's chunk_size (paths per compiled call; "
                        "default: solve_sde's own)")
    parser.add_argument("--forms", nargs="*", choices=("raw", "rms"), default=("raw", "rms"),
                        help="with --by-m: these forms of the SDE only")
    parser.add_argument("--setting", action="store_true",
                        help="m = 8, 4000 paths, 500 steps, raw: ratio and refinement share")
    parser.add_argument("--default-call", type=int, metavar="M", default=None,
                        help="time the first solve_sde call at default arguments at M tokens")
    args = parser.parse_args()
    if args.default_call:
        r = measure_default_call(args.default_call)
        print(json.dumps(r, indent=1), flush=True)
        if args.out:
            Path(args.out).write_text(json.dumps({"machine": machine(), "default_call": r},
                                                 indent=1))
        return
    if args.by_m or args.setting:
        peak = matmul_peak()
        print(f"matmul peak: {peak:.0f} GFLOP/s (float32)", flush=True)
        if args.setting:
            r = measure_setting(args.repeats)
            print(json.dumps(r, indent=1), flush=True)
            out = Path(args.out or Path(__file__).parent / "results"
                       / "sde_throughput_setting.json")
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps({"machine": machine(), "matmul_peak_gflops": peak,
                                       "setting": r}, indent=1))
        if args.by_m:
            main_by_m(args, peak)
        return
    ms = (8,) if args.quick else MS
    suffix = "" if DEVICES == 1 else f"_{DEVICES}dev"
    out = Path(args.out or Path(__file__).parent / "results" / f"sde_throughput{suffix}.json")
    peak = matmul_peak()
    print(f"JAX devices: {jax.local_device_count()}; matmul peak: {peak:.0f} GFLOP/s (float32)")
    print(f"{'m':>3} {'paths':>6} {'first s':>8} {'steady s':>9} {'solve_sde/s':>12} "
          f"{'scan/s':>10} {'numpy/s':>10} {'loop/s':>8} {'x scan':>7} {'(med)':>6} {'x numpy':>8} "
          f"{'x loop':>7} {'noise/s':>9} {'bound':>6} {'GFLOP/s':>8} {'% peak':>7}")
    rows = []
    for m in ms:
        for n_paths in PATHS if m <= 16 else PATHS[:1]:  # m = 32: 10^4 paths take minutes
            numpy_steps = max(8, min(256, round(2e5 / n_paths * (8 / m) ** 2)))
            r = measure(m, n_paths, args.repeats, numpy_steps)
            rows.append(r)
            q = r["rate"]
            print(f"{m:>3} {n_paths:>6} {r['first_call_s']:>8.2f} {r['steady_s']:>9.3f} "
                  f"{q['solve_sde']:>12.3g} {q['scan']:>10.3g} {q['numpy']:>10.3g} "
                  f"{q['numpy_loop']:>8.3g} {r['ratio_scan']:>7.2f} {r['ratio_scan_median']:>6.2f} "
                  f"{r['ratio_numpy']:>8.1f} "
                  f"{r['ratio_numpy_loop']:>7.0f} {q['noise']:>9.3g} "
                  f"{r['ratio_numpy_bound']:>6.1f} {r['gflops']:>8.2f} "
                  f"{100 * r['gflops'] / peak:>7.2f}", flush=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"machine": machine(), "matmul_peak_gflops": peak,
                               "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
