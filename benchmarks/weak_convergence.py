r"""Weak convergence of the SDE solvers and the cost of the step control (issue 14, item 4).

For a statistic S of the law of V_T (mean and 5/50/95% quantiles of every rho_ab at T over
the paths that did not blow up; without normalisation also the fraction of paths that blew
up by T), a scheme of weak order p has S(dt) = S(0) + c dt^p + o(dt^p). We solve n paths at
a reference step dt_ref and, on the SAME Brownian path, at dt = r dt_ref, r = 2, 4, ..., 2^7
(``shapedsde.sde.solve`` with ``brownian_dt`` the reference step: each coarse step sums r
increments of the reference grid), and report

    error(dt) = max over the statistics of |S(dt) - S(dt_ref)|,

which estimates max |S(dt) - S(0)| up to the reference's own error, about
error(2 dt_ref) / (2^p - 1) (stated with every reference). Because both solves share their
noise, S(dt) - S(dt_ref) has a much smaller Monte Carlo error than either statistic; its
standard error ("SE") is a paired bootstrap over the paths (resample path indices, recompute
both statistics on the same indices, take the standard deviation of the difference; for
the statistic that attains the maximum, and the largest over all statistics). The
empirical weak order is the least-squares slope of log error against log dt over the levels
whose error exceeds 4 SE. The two solvers' references share their Brownian path too, so their
difference also carries a paired SE; for the hot two-token setting both are compared with the
Fokker-Planck solution of ``tests/_fokker_planck.py`` (its values for T = 1 are fixed below).

Cost. After compiling, base-mode solves of 1000 paths (the default ``n_paths``) are timed at
each step, both solvers alternating within each round (the machine is shared: ratios come
from one run); the best time per step is kept. The cost to reach error 0.01 is the time at
the step where the error curve crosses 0.01, both interpolated linearly in log-log between
neighbouring levels ("<=" when even the coarsest step is within 0.01). The default call
(``dt=None``) is run with another key: its chosen step, warm wall time, and
its error against the reference (uncoupled: SE from independent bootstraps of both);
4096 paths (2000 with --quick).

Finally the cool default (shaped attention tau0 = 1, gamma = 0.5, V0 = default_covariance(m),
T = 1, 1000 paths, everything else default) is timed against the code of commit fe1be78
(Euler at dt = 2^-8 without step-error estimate), each in its own subprocess (PYTHONPATH set to
a git worktree of that commit), calls alternating between the two processes.

    .venv/bin/python benchmarks/weak_convergence.py            # full, about 20 min on 2 cores
    .venv/bin/python benchmarks/weak_convergence.py --quick    # a few minutes

Results are printed and written to benchmarks/results/weak_convergence.json.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
QUANTILES = (0.05, 0.5, 0.95)
STAT_NAMES = ("mean", "q05", "q50", "q95")
TARGET = 0.01
FOKKER_PLANCK_HOT = (0.6466, -0.4165, 0.8115, 0.9871)
"""mean, q05, q50, q95 of rho_12 at T = 1, hot attention, m = 2, V0 = I, "rms"
(``tests/_fokker_planck.reference_statistics``)."""
OLD_COMMIT = "fe1be78"
OLD_TREE = Path("/tmp/old_tree")


# -- pure helpers (tested in tests/test_benchmarks.py) --------------------------------------
def statistics(rho: np.ndarray, exploded: np.ndarray, crossing: bool) -> np.ndarray:
    """Statistics of paths ``rho`` (..., n, pairs) with blow-up flags (..., n): for each pair
    the mean and 5/50/95% quantiles over the paths that did not blow up, pair after pair; then,
    if ``crossing``, the fraction of paths that blew up. Shape (..., 4 pairs [+ 1])."""
    rho = np.where(exploded[..., None], np.nan, rho)
    if exploded.any():
        mean, q = np.nanmean(rho, axis=-2), np.nanquantile(rho, QUANTILES, axis=-2)
    else:
        mean, q = rho.mean(axis=-2), np.quantile(rho, QUANTILES, axis=-2)
    S = np.concatenate([mean[..., None], np.moveaxis(q, 0, -1)], axis=-1)
    S = S.reshape(S.shape[:-2] + (-1,))
    if crossing:
        S = np.concatenate([S, exploded.mean(axis=-1)[..., None]], axis=-1)
    return S


def paired_difference(rho: np.ndarray, exploded: np.ndarray, rho_ref: np.ndarray,
                      exploded_ref: np.ndarray, crossing: bool, resamples: int = 100,
                      seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """S(rho) - S(rho_ref) for the same paths (n, pairs) solved twice, and the standard error
    of each difference from a paired bootstrap (the same resampled paths in both)."""
    diff = statistics(rho, exploded, crossing) - statistics(rho_ref, exploded_ref, crossing)
    idx = np.random.default_rng(seed).integers(0, rho.shape[0], (resamples, rho.shape[0]))
    boot = statistics(rho[idx], exploded[idx], crossing) \
        - statistics(rho_ref[idx], exploded_ref[idx], crossing)
    return diff, boot.std(axis=0)


def bootstrap_se(rho: np.ndarray, exploded: np.ndarray, crossing: bool, resamples: int = 100,
                 seed: int = 0) -> np.ndarray:
    """Bootstrap standard error of each statistic of one sample."""
    idx = np.random.default_rng(seed).integers(0, rho.shape[0], (resamples, rho.shape[0]))
    return statistics(rho[idx], exploded[idx], crossing).std(axis=0)


def max_error(diff: np.ndarray, se: np.ndarray) -> tuple[float, float, int]:
    """(max |diff|, the SE of that difference, its index)."""
    i = int(np.argmax(np.abs(diff)))
    return float(abs(diff[i])), float(se[i]), i


def excess(diff: np.ndarray, se: np.ndarray) -> float:
    """max over the statistics of max(|diff| - 2 SE, 0): the part of the error that the
    Monte Carlo noise of the coupled difference cannot explain (``StepError.excess``)."""
    return float(np.max(np.maximum(np.abs(diff) - 2 * se, 0.0)))


SE_LIMIT = 0.002
"""The SE the coupled differences should have (issue 14); statistics above it are noise."""


def resolved_error(diff: np.ndarray, se: np.ndarray, limit: float = SE_LIMIT) -> float | None:
    """max |diff| over the statistics whose coupled SE is at most ``limit`` (None if none is):
    the error the run resolves (in hot settings the 5% quantile of rho sits where rho has
    little density and its coupled difference has an SE of 0.02-0.06 at 4096 paths)."""
    ok = np.asarray(se) <= limit
    return float(np.max(np.abs(np.asarray(diff)[ok]))) if ok.any() else None


def weak_order(dts: np.ndarray, errors: np.ndarray, ses: np.ndarray,
               above: float = 4.0) -> float | None:
    """Least-squares slope of log error against log dt over the levels whose error exceeds
    ``above`` times its SE; None with fewer than two such levels."""
    keep = (np.asarray(errors) > above * np.asarray(ses)) & (np.asarray(errors) > 0)
    if keep.sum() < 2:
        return None
    return float(np.polyfit(np.log(np.asarray(dts)[keep]), np.log(np.asarray(errors)[keep]),
                            1)[0])


def cost_to_reach(dts: np.ndarray, errors: np.ndarray, times: np.ndarray,
                  target: float = TARGET) -> tuple[float | None, str]:
    """Time of a solve at the largest step from which every finer level has an error within
    ``target`` (log-log interpolation between that level and the next coarser one).

    ``dts`` decreasing, ``errors`` and ``times`` at those steps. Returns (time, how): "interp"
    (the crossing between two levels), "<=" (every level is within target: the coarsest
    level's time bounds the cost), or (None, "not reached") when the finest level exceeds it.
    Scanning from the finest level makes a noisy, non-monotone error curve err on the side of
    the smaller step."""
    dts, errors, times = (np.asarray(x, float) for x in (dts, errors, times))
    if errors[-1] > target:
        return None, "not reached"
    bad = np.nonzero(errors > target)[0]
    if bad.size == 0:
        return float(times[0]), "<="
    k = int(bad[-1]) + 1  # first level of the run within target that reaches the finest
    e0, e1 = np.log(errors[k - 1]), np.log(max(errors[k], 1e-12))
    w = (np.log(target) - e0) / (e1 - e0)  # 0 at level k - 1, 1 at level k
    return float(np.exp((1 - w) * np.log(times[k - 1]) + w * np.log(times[k]))), "interp"


# -- settings -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Setting:
    name: str
    description: str
    block: object
    V0: np.ndarray
    normalize: str | None
    T: float
    log2_dt_ref: int  # full mode
    paths: int  # full mode

    @property
    def crossing(self) -> bool:
        return self.normalize is None


def settings() -> list[Setting]:
    import shapedsde as sd

    sys.path.insert(0, str(ROOT))
    from experiments._common import block_from_config
    from experiments.transformer_block import HOT_BLOCK

    hot = sd.ShapedAttention(tau0=0.3, gamma=0.9)
    corner = sd.ShapedAttention(tau0=0.1, gamma=0.9)
    toeplitz = 0.5 ** np.abs(np.subtract.outer(np.arange(3), np.arange(3)))
    return [
        Setting("hot", "figs 2/5/8: attention tau0 0.3, gamma 0.9, m 2, V0 = I, rms, T 1",
                hot, np.eye(2), "rms", 1.0, -12, 4096),
        Setting("corner", "fig 6 corner: attention tau0 0.1, gamma 0.9, m 3, "
                "V0 = 0.5^|a-b|, rms, T 1", corner, toeplitz, "rms", 1.0, -11, 2048),
        Setting("blowup", "fig 7: hot attention, no normalisation, m 2, V0 = I, T 2, "
                "bound 1000", hot, np.eye(2), None, 2.0, -11, 4096),
        Setting("block", "fig 4: HOT_BLOCK (hot attention + shaped MLP), m 2, V0 = I, rms, T 1",
                block_from_config(HOT_BLOCK), np.eye(2), "rms", 1.0, -12, 2048),
    ]


BLOWUP_BOUND = 1000.0
TIME_PATHS = 1000
TIME_MIN_DT = 2.0**-10
"""Steps below this (times T) are not timed: their time is extrapolated, proportional to the
number of steps, from the smallest timed step."""


class Problem:
    """Solves of a setting with one solver on the Brownian path of one key, through the public
    driver ``shapedsde.sde.solve``."""

    def __init__(self, setting: Setting, solver: str, key: int):
        import jax
        import jax.numpy as jnp

        from shapedsde.blocks import normalized, traced_parameters
        from shapedsde.sde import make_solver

        target = normalized(setting.block) if setting.normalize == "rms" else setting.block
        self.block = traced_parameters(target.unnormalized(), jnp.float32)
        self.V0 = jnp.asarray(setting.V0, jnp.float32)
        scale = 1.0 if setting.normalize == "rms" else float(np.max(np.diag(setting.V0)))
        self.solver = make_solver(solver, self.block, self.V0,
                                  normalized=target.is_normalized,
                                  bound=jnp.float32(BLOWUP_BOUND * scale))
        self.T, self.key = setting.T, jax.random.key(key)

    def solve(self, n: int, steps: int, r: int = 1) -> tuple[np.ndarray, np.ndarray]:
        """(V, blow-up times) of n paths at ``steps`` steps over [0, T], on the Brownian path
        laid out on r times as many steps (each step sums r of its increments)."""
        import jax.numpy as jnp

        from shapedsde.sde import solve

        out = solve(self.solver, self.block, self.V0, jnp.asarray([0.0, self.T], jnp.float32),
                    steps, key=self.key, n_paths=n, brownian_dt=self.T / (steps * r),
                    chunk_size=1024)
        return out.V, out.t_explode


def final_rho(V: np.ndarray, t_exp: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """rho_ab (a < b) at the last saved time (n, pairs) and the blow-up flags (n,)."""
    from shapedsde.analysis import metrics

    m = V.shape[-1]
    a, b = np.triu_indices(m, k=1)
    return metrics.correlation(np.asarray(V[:, -1], np.float64))[:, a, b], t_exp >= 0


def ladder(setting: Setting, solver: str, n: int, log2_dt_ref: int, rs: list[int]) -> dict:
    """Reference and coupled coarser solves; the errors and their SEs."""
    problem = Problem(setting, solver, key=0)
    steps = round(setting.T * 2.0**-log2_dt_ref)
    t0 = time.perf_counter()
    ref = final_rho(*problem.solve(n, steps))
    levels = []
    for r in rs:
        rho, expl = final_rho(*problem.solve(n, steps // r, r))
        diff, se = paired_difference(rho, expl, *ref, setting.crossing)
        err, err_se, i = max_error(diff, se)
        levels.append({"r": r, "dt": setting.T / (steps // r), "error": err, "se": err_se,
                       "excess": excess(diff, se), "resolved": resolved_error(diff, se),
                       "se_max": float(se.max()),
                       "se_all": se.tolist(),
                       "worst": stat_name(i, setting.crossing, n_pairs(setting)),
                       "diff": diff.tolist()})
    return {"solver": solver, "dt_ref": setting.T / steps, "paths": n, "levels": levels,
            "ref": ref, "seconds": time.perf_counter() - t0}


def n_pairs(setting: Setting) -> int:
    m = setting.V0.shape[0]
    return m * (m - 1) // 2


def stat_name(i: int, crossing: bool, pairs: int) -> str:
    """Name of statistic i of ``statistics``: "rho<a><b>:<stat>" or "crossing"."""
    if crossing and i == 4 * pairs:
        return "crossing"
    m = round((1 + math.sqrt(1 + 8 * pairs)) / 2)
    a, b = np.triu_indices(m, k=1)
    return f"rho{a[i // 4] + 1}{b[i // 4] + 1}:{STAT_NAMES[i % 4]}"


def time_levels(setting: Setting, solvers: list[str], dts: list[float], rounds: int) -> dict:
    """Best wall time of a base-mode solve of TIME_PATHS paths at each step, per solver, the
    solvers alternating within each round (compiled first)."""
    problems = {s: Problem(setting, s, key=1) for s in solvers}
    for s in solvers:  # compile (the chunk shape of TIME_PATHS paths)
        problems[s].solve(TIME_PATHS, 2)
    times = {s: np.full((rounds, len(dts)), np.inf) for s in solvers}
    for k in range(rounds):
        for j, dt in enumerate(dts):
            order = solvers if (k + j) % 2 == 0 else solvers[::-1]
            for s in order:
                t0 = time.perf_counter()
                problems[s].solve(TIME_PATHS, round(setting.T / dt))
                times[s][k, j] = time.perf_counter() - t0
    return {s: times[s].min(axis=0).tolist() for s in solvers}


def default_call(setting: Setting, n: int, ref: tuple[np.ndarray, np.ndarray]) -> dict:
    """The default call (dt=None) with another key: step, warm time, error against ``ref``."""
    import jax

    import shapedsde as sd

    kw = dict(n_paths=n, normalize=setting.normalize, blowup_bound=BLOWUP_BOUND,
              progress=False)
    t0 = time.perf_counter()
    sd.solve_sde(setting.block, setting.V0, 0.01 * setting.T, key=jax.random.key(7),
                 dt=2.0**-8, **kw)
    warmup = time.perf_counter() - t0  # compiles the shapes of this call; cheap (tiny T)
    t0 = time.perf_counter()
    tr = sd.solve_sde(setting.block, setting.V0, setting.T, key=jax.random.key(1), **kw)
    seconds = time.perf_counter() - t0
    rho, expl = final_rho(tr.V, np.where(tr.exploded, 1.0, -1.0))
    diff = statistics(rho, expl, setting.crossing) - statistics(*ref, setting.crossing)
    se = np.hypot(bootstrap_se(rho, expl, setting.crossing, seed=1),
                  bootstrap_se(*ref, setting.crossing, seed=2))
    err, err_se, i = max_error(diff, se)
    return {"dt": tr.config["dt"], "solver": tr.config["solver"], "seconds": seconds,
            "warmup_s": warmup, "error": err, "se": err_se, "paths": n,
            "step_error": tr.config["step_error"]["excess"]}


# -- the cool default against the code of fe1be78 -------------------------------------------
WORKER = """
import sys, time, jax, shapedsde as sd
block = sd.ShapedAttention(tau0=1.0, gamma=0.5)
print(sd.__file__, flush=True)
for line in sys.stdin:
    m, seed = (int(x) for x in line.split())
    t0 = time.perf_counter()
    tr = sd.solve_sde(block, sd.default_covariance(m), 1.0, key=jax.random.PRNGKey(seed),
                      n_paths=1000, progress=False)
    print(time.perf_counter() - t0, tr.config.get("dt"), flush=True)
"""


def cool_default(ms: tuple[int, ...], rounds: int) -> dict:
    """Warm and first-call times of the default solve, old (fe1be78) against new."""
    made = False
    if not OLD_TREE.exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", str(OLD_TREE), OLD_COMMIT],
                       check=True, capture_output=True)
        made = True
    procs = {}
    try:
        for name, path in (("old", OLD_TREE), ("new", ROOT)):
            env = dict(os.environ, PYTHONPATH=str(path))
            procs[name] = subprocess.Popen([sys.executable, "-c", WORKER], stdin=subprocess.PIPE,
                                           stdout=subprocess.PIPE, text=True, env=env,
                                           cwd="/tmp")
            where = procs[name].stdout.readline().strip()
            assert where.startswith(str(path)), (name, where)

        def call(name: str, m: int, seed: int) -> tuple[float, float]:
            procs[name].stdin.write(f"{m} {seed}\n")
            procs[name].stdin.flush()
            t, dt = procs[name].stdout.readline().split()
            return float(t), float(dt)

        out = {}
        for m in ms:
            first = {name: call(name, m, 0) for name in ("old", "new")}
            warm = {"old": [], "new": []}
            for k in range(rounds):
                for name in (("old", "new") if k % 2 == 0 else ("new", "old")):
                    warm[name].append(call(name, m, k + 1)[0])
            ratios = [n / o for n, o in zip(warm["new"], warm["old"], strict=True)]
            out[m] = {"first_s": {k: v[0] for k, v in first.items()},
                      "dt": {k: v[1] for k, v in first.items()},
                      "best_s": {k: min(v) for k, v in warm.items()}, "warm_s": warm,
                      "ratio_best": min(warm["new"]) / min(warm["old"]),
                      "ratio_median": float(np.median(ratios))}
        return out
    finally:
        for p in procs.values():
            p.stdin.close()
            p.wait()
        if made:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force",
                            str(OLD_TREE)], check=False, capture_output=True)


# -- driver ---------------------------------------------------------------------------------
def run_setting(setting: Setting, quick: bool, rounds: int) -> dict:
    pairs = n_pairs(setting)
    solvers = ["euler"] + (["congruence"] if setting.block.has_noise_factor else [])
    log2_ref = -10 if quick else setting.log2_dt_ref
    n = 1024 if quick else setting.paths
    rs = [2**k for k in range(1, 5 if quick else 8)]
    result = {"setting": setting.name, "description": setting.description, "solvers": {}}
    refs = {}
    for s in solvers:
        lad = ladder(setting, s, n, log2_ref, rs)
        refs[s] = lad.pop("ref")
        result["solvers"][s] = lad
    dts = [lv["dt"] for lv in result["solvers"][solvers[0]]["levels"]]  # increasing
    timed = [dt for dt in dts if dt >= TIME_MIN_DT * setting.T]
    times = time_levels(setting, solvers, timed, rounds)
    for s in solvers:
        r = result["solvers"][s]
        lv = r["levels"]
        for level in lv:  # below the timed steps: time proportional to the number of steps
            dt = level["dt"]
            level["time_extrapolated"] = dt < timed[0]
            level["time_s"] = times[s][timed.index(dt)] if dt in timed \
                else times[s][0] * timed[0] / dt
        errs, ses, excess, t = (np.array([level[k] for level in lv])
                                for k in ("error", "se", "excess", "time_s"))
        r["weak_order"] = weak_order(np.array(dts), errs, ses)
        p = r["weak_order"] if r["weak_order"] and r["weak_order"] > 0.5 else 1.0
        r["ref_error"] = lv[0]["error"] / (2**p - 1)
        r["ref_error_se"] = lv[0]["se"] / (2**p - 1)
        # cost (coarsest level first) on the error and on its part beyond 2 SE
        r["cost_s"], r["cost_how"] = cost_to_reach(dts[::-1], errs[::-1], t[::-1])
        r["cost_excess_s"], r["cost_excess_how"] = cost_to_reach(dts[::-1], excess[::-1],
                                                                 t[::-1])
    if len(solvers) == 2:
        for k in ("cost_s", "cost_excess_s"):
            e, c = (result["solvers"][s][k] for s in solvers)
            result["ratio_" + k] = None if e is None or c is None else c / e
        diff, se = paired_difference(*refs["congruence"], *refs["euler"], setting.crossing)
        err, err_se, i = max_error(diff, se)
        result["refs_differ"] = {"max": err, "se": err_se,
                                 "worst": stat_name(i, setting.crossing, pairs)}
    if setting.name == "hot":
        result["fokker_planck"] = {}
        for s in solvers:
            S = statistics(*refs[s], False)
            se = bootstrap_se(*refs[s], False)
            d = S - np.array(FOKKER_PLANCK_HOT)
            result["fokker_planck"][s] = {"stats": S.tolist(), "diff": d.tolist(),
                                          "se": se.tolist()}
    ref = refs.get("congruence", refs["euler"])
    result["default"] = default_call(setting, 2000 if quick else 4096, ref)
    return result


def fmt(x: float | None, spec: str = ".4f") -> str:
    return "-" if x is None else format(x, spec)


def report(res: dict) -> None:
    print(f"\n== {res['setting']}: {res['description']}")
    for s, r in res["solvers"].items():
        print(f"  {s}: reference dt = 2^{math.log2(r['dt_ref']):.0f}, {r['paths']} paths, "
              f"own estimated error {r['ref_error']:.4f} (SE {r['ref_error_se']:.4f}); "
              f"weak order {fmt(r['weak_order'], '.2f')}; ladder {r['seconds']:.0f} s")
        print(f"    {'dt':>8} {'error':>8} {'SE':>7} {'>2SE':>7} {'resolved':>8} {'maxSE':>7} "
              f"{'worst':>14} {'time s':>8}")
        for lv in r["levels"]:
            print(f"    2^{math.log2(lv['dt']):>5.0f} {lv['error']:>8.4f} {lv['se']:>7.4f} "
                  f"{lv['excess']:>7.4f} {fmt(lv['resolved']):>8} {lv['se_max']:>7.4f} "
                  f"{lv['worst']:>14} "
                  f"{lv['time_s']:>8.3f}{' (extrap.)' if lv['time_extrapolated'] else ''}")
        print(f"    cost to reach {TARGET}: error {r['cost_how']} {fmt(r['cost_s'], '.3f')} s; "
              f"beyond 2 SE {r['cost_excess_how']} {fmt(r['cost_excess_s'], '.3f')} s")
    for k, what in (("ratio_cost_s", "error"), ("ratio_cost_excess_s", "beyond 2 SE")):
        if k in res:
            ratio = res[k]
            verdict = "-" if ratio is None else "holds" if ratio <= 0.5 else "fails"
            print(f"  congruence / euler cost at {what} {TARGET}: {fmt(ratio, '.2f')} "
                  f"(target <= 0.5: {verdict})")
    if "refs_differ" in res:
        d = res["refs_differ"]
        print(f"  references differ by {d['max']:.4f} (SE {d['se']:.4f}, {d['worst']})")
    for s, f in res.get("fokker_planck", {}).items():
        print(f"  {s} reference - Fokker-Planck: "
              + ", ".join(f"{n} {d:+.4f} (SE {e:.4f})"
                          for n, d, e in zip(STAT_NAMES, f["diff"], f["se"], strict=True)))
    d = res["default"]
    print(f"  default call ({d['paths']} paths): {d['solver']} dt = 2^{math.log2(d['dt']):.2f}, "
          f"{d['seconds']:.2f} s, error vs reference {d['error']:.4f} (SE {d['se']:.4f})")


def control_costs(quick: bool, rounds: int) -> dict:
    """What the resolved-error control (issue 25) costs, measured in one run, calls of each
    row alternating round by round (best of ``rounds`` warm calls, after one first call):

    * hot: two tokens, tau0 0.3, gamma 0.9, V0 = I, "rms", T = 1, 10^4 paths (2000 with
      --quick). The default (congruence, step control) against Euler at the step that reaches
      the same accuracy: the step Euler's own control (``solver="euler"``) accepts, timed as a
      fixed-step call (goal: default <= half of it).
    * cool: tau0 1, gamma 0.5, V0 = default_covariance(m), m = 4 and 8, raw, T = 1, 1000 paths.
      The default against a fixed-step call at the step it accepts (goal: <= 1.5x).
    """
    import jax

    import shapedsde as sd

    def timed(call) -> tuple[float, Any]:
        t0 = time.perf_counter()
        out = call()
        return time.perf_counter() - t0, out

    def compare(calls: dict[str, Any]) -> dict:
        first = {name: timed(lambda c=c: c(0))[0] for name, c in calls.items()}
        best = {name: math.inf for name in calls}
        outs = {}
        for r in range(rounds):
            for name, c in calls.items():
                t, outs[name] = timed(lambda c=c, r=r: c(r + 1))
                best[name] = min(best[name], t)
        return {"first_s": first, "best_s": best,
                "dt": {name: o.config["dt"] for name, o in outs.items()},
                "step_error": {name: o.config["step_error"] for name, o in outs.items()}}

    hot = sd.ShapedAttention(tau0=0.3, gamma=0.9)
    n_hot = 2000 if quick else 10000
    kw = dict(n_paths=n_hot, normalize="rms")
    euler = sd.solve_sde(hot, np.eye(2), 1.0, key=jax.random.key(99), solver="euler", **kw)
    euler_dt = euler.config["dt"]
    result = {"hot": compare({
        "default": lambda k: sd.solve_sde(hot, np.eye(2), 1.0, key=jax.random.key(k), **kw),
        "euler_fixed": lambda k: sd.solve_sde(hot, np.eye(2), 1.0, key=jax.random.key(k),
                                              dt=euler_dt, solver="euler", **kw)})}
    result["hot"]["euler_control_step_error"] = euler.config["step_error"]
    result["hot"]["ratio"] = result["hot"]["best_s"]["default"] / result["hot"]["best_s"][
        "euler_fixed"]
    cool = sd.ShapedAttention(tau0=1.0, gamma=0.5)
    for m in (4, 8):
        V0 = sd.default_covariance(m)
        dt = sd.solve_sde(cool, V0, 1.0, key=jax.random.key(98)).config["dt"]
        row = compare({
            "default": lambda k, V0=V0: sd.solve_sde(cool, V0, 1.0, key=jax.random.key(k)),
            "fixed": lambda k, V0=V0, dt=dt: sd.solve_sde(cool, V0, 1.0, key=jax.random.key(k),
                                                         dt=dt)})
        row["ratio"] = row["best_s"]["default"] / row["best_s"]["fixed"]
        result[f"cool_m{m}"] = row
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="dt_ref = 2^-10, 4 levels, 1024 paths, one timing round")
    parser.add_argument("--settings", default="hot,corner,blowup,block")
    parser.add_argument("--rounds", type=int, default=None, help="timing rounds")
    parser.add_argument("--no-cool", action="store_true", help="skip the fe1be78 comparison")
    parser.add_argument("--control-costs", action="store_true",
                        help="only the costs of the resolved-error step control (issue 25)")
    parser.add_argument("--out", default=None,
                        help="JSON output (default: benchmarks/results/weak_convergence.json)")
    args = parser.parse_args()
    rounds = args.rounds or (1 if args.quick else 3)
    sys.path.insert(0, str(Path(__file__).parent))
    from network_cost import machine

    out = Path(args.out or Path(__file__).parent / "results" / "weak_convergence.json")
    chosen = args.settings.split(",")
    results: list[dict] = []
    t_start = time.perf_counter()
    out.parent.mkdir(parents=True, exist_ok=True)

    def write(cool: dict | None) -> None:  # after every setting: a partial run keeps its part
        settings_json = [{**res, "solvers": {s: {k: v for k, v in r.items() if k != "ref"}
                                             for s, r in res["solvers"].items()}}
                         for res in results]
        out.write_text(json.dumps({"machine": machine(), "quick": args.quick,
                                   "seconds": time.perf_counter() - t_start,
                                   "settings": settings_json, "cool_default": cool}, indent=1))

    if args.control_costs:
        costs = control_costs(args.quick, rounds)
        path = out.with_name("control_costs.json")
        path.write_text(json.dumps({"machine": machine(), "quick": args.quick,
                                    "seconds": time.perf_counter() - t_start, **costs},
                                   indent=1))
        for name, row in costs.items():
            print(f"{name}: dt {row['dt']}, best s {row['best_s']}, first s {row['first_s']}, "
                  f"ratio {row['ratio']:.2f}")
        print(f"wrote {path}")
        return
    for setting in settings():
        if setting.name in chosen:
            results.append(run_setting(setting, args.quick, rounds))
            report(results[-1])
            write(None)
    cool = None
    if not args.no_cool:
        cool = cool_default((4, 8), 3 if args.quick else 5)
        print("\n== cool default (tau0 1, gamma 0.5, default_covariance(m), T 1, 1000 paths)")
        for m, c in cool.items():
            print(f"  m = {m}: first call old {c['first_s']['old']:.2f} s, new "
                  f"{c['first_s']['new']:.2f} s; warm best old {c['best_s']['old']:.3f} s "
                  f"(dt {c['dt']['old']:.4g}), new {c['best_s']['new']:.3f} s (dt "
                  f"{c['dt']['new']:.4g}); new/old best {c['ratio_best']:.2f}, median of "
                  f"paired {c['ratio_median']:.2f} (target <= 1.25)")
    write(cool)
    print(f"wrote {out} ({time.perf_counter() - t_start:.0f} s)")


if __name__ == "__main__":
    main()
