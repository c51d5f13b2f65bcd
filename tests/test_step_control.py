"""The step error of solve_sde: its estimate, the step control (dt=None), the congruence
solver, and the "rms" solver on nearly rank-deficient states (no false blow-ups)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from _fokker_planck import reference_statistics
from scipy import stats

import shapedsde as sd
from shapedsde.sde import DEFAULT_TOL

HOT = sd.ShapedAttention(tau0=0.3, gamma=0.9)
SMALL = dict(T=0.25, n_save=3, n_paths=16, progress=False)


def solve_on_grid(block, V0, T, steps, key, n, *, normalize=None, solver="euler",
                  brownian_steps=None, chunk_size=1024):
    """The public driver (``shapedsde.sde.solve``) over [0, T] in ``steps`` steps, float32, on
    the Brownian path of ``key`` laid out on ``brownian_steps`` steps (default: the grid's)."""
    import jax.numpy as jnp

    from shapedsde.blocks import normalized, traced_parameters
    from shapedsde.sde import make_solver, solve

    target = normalized(block) if normalize == "rms" else block
    stepped = traced_parameters(target.unnormalized(), jnp.float32)
    V0 = jnp.asarray(V0, jnp.float32)
    step_solver = make_solver(solver, stepped, V0, normalized=target.is_normalized,
                              bound=jnp.float32(1e3))
    return solve(step_solver, stepped, V0, jnp.asarray([0.0, T], jnp.float32), steps,
                 key=jax.random.key(key), n_paths=n, chunk_size=chunk_size,
                 brownian_dt=None if brownian_steps is None else T / brownian_steps)


def test_result_records_step_solver_and_error():
    tr = sd.solve_sde(HOT, np.eye(3), key=jax.random.key(0), normalize="rms", **SMALL)
    cfg = tr.config
    assert cfg["solver"] == "congruence" and cfg["dt_requested"] is None
    assert cfg["dt"] <= 2.0**-6 and cfg["tol"] == 0.005
    err = cfg["step_error"]
    # resolved: estimate + 2 SE within tol, and so stated
    assert err["resolved"] is True and err["bound"] <= 0.005
    assert err["rho"] + 2 * err["rho_se"] == pytest.approx(err["bound"], rel=1e-6)
    assert err["statement"].startswith(f"{err['rho']:.2g} +- ")
    assert err["dt"] == pytest.approx(cfg["dt"]) and err["paths"] >= 16
    assert len(err["rho_by_time"]) == 3 and err["rho_by_time"][0] == 0.0
    # an explicit step is honoured; with an odd number of steps per saved interval the
    # estimate comes from the Brownian bridge at half the step
    tr = sd.solve_sde(HOT, np.eye(3), key=jax.random.key(0), dt=0.125 / 3, solver="euler",
                      **SMALL)
    assert tr.config["dt"] == pytest.approx(0.125 / 3)
    assert tr.config["step_error"]["dt_other"] == pytest.approx(0.125 / 6)
    assert tr.config["step_error"]["crossing"] is not None  # blow-up possible


def test_default_chunk_keeps_a_chunk_of_states_in_cache():
    """``solve_sde``'s default chunk on a CPU: the power of two of paths (8 to 1024) whose
    m x m states fit CHUNK_BYTES; 1024 up to 8 tokens in float32 (what it was for every m)."""
    from shapedsde.sde._solve import CHUNK_BYTES, default_chunk_size

    if jax.default_backend() != "cpu":  # an accelerator wants large batches
        assert default_chunk_size(64, "float32") == 1024
        return
    for m in (2, 3, 4, 8, 12, 16, 32, 64, 100, 128, 512):
        for dtype, size in (("float32", 4), ("float64", 8)):
            c = default_chunk_size(m, dtype)
            assert 8 <= c <= 1024 and c & (c - 1) == 0
            assert c == 8 or c * m * m * size <= CHUNK_BYTES  # fits, or the floor
            assert c == 1024 or 2 * c * m * m * size > CHUNK_BYTES  # the largest that fits
    assert [default_chunk_size(m, "float32") for m in (8, 16, 32, 64, 128)] == [1024, 256, 64,
                                                                                16, 8]


def test_pilot_paths_keep_the_estimate_within_its_share():
    """At a given dt the estimate solves its pilot paths on the other grid: at most
    ESTIMATE_SHARE of the run's work (the largest such power of two, from MIN_PILOT to
    MAX_PILOT), except a small run, estimated on all its paths (one compiled shape)."""
    from shapedsde.sde._solve import (
        ESTIMATE_SHARE,
        MAX_PILOT,
        MIN_PILOT,
        SMALL_RUN,
        _check_paths,
        pilot_paths,
    )

    assert pilot_paths(48, 448, 3, 0.5) == 48  # the golden set's largest fixed-step run
    assert pilot_paths(64, 256, 4, 0.5) == 64 and 64 * 256 * 4**3 <= SMALL_RUN
    for n, steps, m, other in [(64, 256, 64, 0.5), (256, 256, 8, 0.5), (4000, 500, 8, 0.5),
                               (1000, 256, 16, 2.0), (10**6, 64, 32, 0.5), (9, 256, 64, 2.0)]:
        p = pilot_paths(n, steps, m, other)
        assert n * steps * m**3 > SMALL_RUN
        assert min(n, MIN_PILOT) <= p <= min(n, MAX_PILOT)
        assert p & (p - 1) == 0 or p == n  # a power of two, or the whole run
        cost = max(other, 1.0)  # a pilot path at twice the step draws a run path's normals
        assert p * cost <= ESTIMATE_SHARE * n or p == min(n, MIN_PILOT)
        assert 2 * p * cost > ESTIMATE_SHARE * n or p in (MIN_PILOT, MAX_PILOT)
    # the control's direct check below the finest step measured: at least a chunk, and a
    # quarter of the run (a power of two from 256 to MAX_PILOT) where that is more
    assert [_check_paths(n, 1024) for n in (16, 1000, 4096, 8192, 10**5)] == [
        1024, 1024, 1024, 2048, 2048]
    assert _check_paths(1000, 64) == 256 and _check_paths(100, 64) == 100


def test_estimate_on_pilot_paths_is_that_of_a_run_of_those_paths():
    """A run beyond SMALL_RUN estimates its step error on its first pilot paths: the same
    coupled pairs, hence the same record, as a run of just those paths (which estimates on all
    of its paths). The run's paths do not depend on it."""
    from shapedsde.sde._solve import pilot_paths

    block, V0 = sd.ShapedAttention(), sd.default_covariance(16)
    run = dict(key=jax.random.key(5), dt=1 / 64, n_save=2, normalize="rms", progress=False)
    big = sd.solve_sde(block, V0, 0.25, n_paths=512, **run)
    p = pilot_paths(512, 16, 16, 0.5)
    assert p == 32 and big.config["step_error"]["paths"] == p
    small = sd.solve_sde(block, V0, 0.25, n_paths=p, **run)
    assert small.config["step_error"] == big.config["step_error"]
    np.testing.assert_array_equal(small.V, big.V[:p])


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan"), "0.01"])
def test_bad_tol_is_refused(bad):
    with pytest.raises((ValueError, TypeError), match="tol"):
        sd.solve_sde(HOT, np.eye(2), key=jax.random.key(0), tol=bad, **SMALL)


def test_bad_solver_is_refused():
    with pytest.raises(ValueError, match="solver"):
        sd.solve_sde(HOT, np.eye(2), key=jax.random.key(0), solver="rk4", **SMALL)
    causal = sd.ShapedAttention(causal=True)
    with pytest.raises(ValueError, match="congruence"):
        sd.solve_sde(causal, np.eye(2), key=jax.random.key(0), solver="congruence", **SMALL)
    tr = sd.solve_sde(causal, np.eye(2), key=jax.random.key(0), dt=1 / 16, **SMALL)
    assert tr.config["solver"] == "euler"


def test_coarse_fine_and_base_grids_share_one_brownian_path():
    """Solved on the same Brownian path (increments summed in pairs, or split by the bridge),
    the paths at 2 dt, dt and dt / 2 stay close (strong coupling); another key gives other
    paths."""
    def final(key, steps):
        return solve_on_grid(sd.ShapedAttention(), sd.default_covariance(3), 0.25, steps, key,
                             64, normalize="rms", brownian_steps=64, chunk_size=64).V[:, -1]

    base, coarse, fine = final(1, 64), final(1, 32), final(1, 128)
    far = np.abs(base - final(2, 64)).mean()
    assert np.abs(base - coarse).mean() < 0.1 * far
    assert np.abs(base - fine).mean() < 0.1 * far


def _statistics(x: np.ndarray) -> np.ndarray:
    """(mean, q05, q50, q95) over the last axis."""
    return np.array([x.mean(-1), *np.quantile(x, [0.05, 0.5, 0.95], axis=-1)])


def _error_and_se(rho: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """|statistic - reference| for mean, q05, q50, q95, and the Monte Carlo SE (bootstrap)."""
    idx = np.random.default_rng(0).integers(0, rho.size, (200, rho.size))
    return np.abs(_statistics(rho) - ref), _statistics(rho[idx]).std(axis=1)


A = sd.ShapedAttention
# hot settings (gamma^2 / tau0^2 from 16 to 44) where the old default (the congruence solver
# at dt = 1/256, accepted whatever its estimate) misses the exact law by more than
# tol + 2 SE for this key (scan of 12 settings at 2 x 10^4 paths: most missed by 1-2 SE only)
FOKKER_PLANCK_SETTINGS = {
    "Transformer block": (sd.ShapedTransformerBlock(A(tau0=0.25, gamma=1.0),
                                                    sd.ShapedMLP(gamma=0.5)), 0.0, 1.0),
    "correlated start": (A(tau0=0.25, gamma=1.0), 0.5, 1.0),
    "T = 2": (A(tau0=0.18, gamma=1.0), 0.0, 2.0),
    "two heads": (A(tau0=0.15, gamma=1.0, heads=2), 0.0, 1.0),
}


@pytest.mark.slow
@pytest.mark.parametrize("case", list(FOKKER_PLANCK_SETTINGS))
def test_default_step_meets_the_tolerance_against_the_exact_law(case):
    """Two tokens under "rms": the default call with 2 x 10^4 paths gives the mean and the
    5/50/95% quantiles of rho_12(T) within tol + 2 Monte Carlo SE of the Fokker-Planck
    solution, states an error bound that the actual error does not exceed by more than 2 SE,
    and says it is resolved; the old default (congruence at dt = 1/256) misses the law."""
    block, rho0, T = FOKKER_PLANCK_SETTINGS[case]
    ref = reference_statistics(block, T, rho0=rho0)
    V0 = np.array([[1.0, rho0], [rho0, 1.0]])
    kw = dict(n_paths=20000, n_save=2, normalize="rms", progress=False)
    default = sd.solve_sde(block, V0, T, key=jax.random.key(0), **kw)
    err = default.config["step_error"]
    error, se = _error_and_se(default.correlation()[:, -1, 0, 1], ref)
    assert np.all(error <= DEFAULT_TOL + 2 * se), (error, se, default.config["dt"])
    assert np.all(error <= err["bound"] + 2 * se), (error, err)
    assert err["resolved"] and err["bound"] <= DEFAULT_TOL
    old = sd.solve_sde(block, V0, T, key=jax.random.key(0), dt=2.0**-8, solver="congruence",
                       **kw)
    error, se = _error_and_se(old.correlation()[:, -1, 0, 1], ref)
    assert np.any(error > DEFAULT_TOL + 2 * se), (error, se)


def _ks_float32_float64(block, V0, T, dt, n):
    was = jax.config.jax_enable_x64
    try:
        kw = dict(dt=dt, n_paths=n, n_save=2, normalize="rms", solver="euler", progress=False)
        f32 = sd.solve_sde(block, V0, T, key=jax.random.key(0), **kw)
        f64 = sd.solve_sde(block, V0, T, key=jax.random.key(1), dtype="float64", **kw)
    finally:
        jax.config.update("jax_enable_x64", was)
    m = f32.n_tokens
    a, b = np.triu_indices(m, k=1)
    r32, r64 = (tr.correlation()[:, -1][:, a, b] for tr in (f32, f64))
    p = min(stats.ks_2samp(r32[:, k], r64[:, k]).pvalue for k in range(a.size))
    return f32, f64, p


@pytest.mark.slow
@pytest.mark.parametrize("case", ["8 tokens, T = 4", "hot, 6 tokens"])
def test_rms_never_blows_up_and_float32_has_the_float64_law(case):
    """Under "rms" V is a correlation matrix and cannot blow up. Near rank deficiency
    (collapsed tokens) a float32 Cholesky factor used to come out huge or infinite, and 7% of
    the paths of the first case (2-14% in hot 6-token settings) were flagged as exploded and
    dropped: exactly the collapsed ones. None may be, and the law must be float64's (KS on
    every rho_ab at T, Bonferroni over the pairs)."""
    if case == "8 tokens, T = 4":
        block, V0, T = sd.ShapedAttention(), sd.default_covariance(8), 4.0
    else:
        block, V0, T = HOT, sd.default_covariance(6), 1.0
    f32, f64, p = _ks_float32_float64(block, V0, T, 2.0**-8, 1000)
    assert not f32.exploded.any() and not f64.exploded.any()
    pairs = f32.n_tokens * (f32.n_tokens - 1) // 2
    assert p > 0.01 / pairs


def test_estimate_pairs_the_paths_alive_in_both_solves():
    """Paths that blew up in both coupled solves must not switch the paired standard errors
    off: the same noisy paths give a gap mostly within its Monte Carlo error, and a real shift
    of the law gives an excess near the shift."""
    from shapedsde.sde import estimate

    rng = np.random.default_rng(0)
    n, m = 400, 2
    r = np.tanh(rng.standard_normal(n))
    noise = 0.02 * rng.standard_normal(n)

    def covariances(rho):
        V = np.broadcast_to(np.eye(m), (n, 2, m, m)).copy()
        V[:, 1, 0, 1] = V[:, 1, 1, 0] = rho
        return V

    exploded = np.zeros(n, bool)
    exploded[:20] = True  # the same paths blew up in both
    kw = dict(dt=0.01, relation="coarse", order=1, normalize=None)
    same = estimate(covariances(r), exploded, covariances(np.clip(r + noise, -1, 1)), exploded,
                    **kw)
    assert same.excess < max(same.rho_by_time) / 2 and same.crossing == 0
    assert same.rho + 2 * same.rho_se == pytest.approx(same.bound)
    shifted = estimate(covariances(r), exploded, covariances(np.clip(r + 0.2, -1, 1)),
                       exploded, **kw)
    assert shifted.excess > 0.1


def _coupled_law_error(block, V0, per_save, solver, *, ratio=8, n=2048):
    """|S(dt) - S(dt / ratio)| - (tol + 2 SE) for the mean and 5/50/95% quantiles of every
    rho_ab at T = 1 under "rms", dt = 1 / per_save, both solved on one Brownian path (the
    coarse solve sums `ratio` increments of the fine one), SE from a paired bootstrap."""
    m = V0.shape[0]
    fine_steps = per_save * ratio

    def rho_at_T(steps):
        return sd.correlation(solve_on_grid(block, V0, 1.0, steps, 11, n, normalize="rms",
                                            solver=solver, brownian_steps=fine_steps).V[:, -1])

    fine, coarse = rho_at_T(fine_steps), rho_at_T(per_save)
    a, b = np.triu_indices(m, k=1)
    fine, coarse = fine[:, a, b], coarse[:, a, b]

    def statistics(x):  # (..., paths, pairs) -> (..., 4, pairs)
        return np.stack([x.mean(-2), *np.quantile(x, [0.05, 0.5, 0.95], axis=-2)], axis=-2)

    idx = np.random.default_rng(0).integers(0, n, (100, n))  # paired bootstrap
    se = np.std(statistics(coarse[idx]) - statistics(fine[idx]), axis=0)
    return np.abs(statistics(coarse) - statistics(fine)) - (DEFAULT_TOL + 2 * se)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["attention, 3 tokens", "Transformer block, 4 tokens"])
def test_default_step_is_accurate_in_hot_settings_with_more_tokens(case):
    """The step chosen by the default call (10^4 paths) gives every rho_ab's mean and 5/50/95%
    quantiles at T within tol (+ 2 SE) of the same solver at an 8 times smaller step, on
    one Brownian path; the old default (congruence at dt = 1/256) misses it."""
    block = A(tau0=0.25, gamma=1.0)
    if case.startswith("attention"):
        V0 = np.eye(3)
    else:
        block = sd.ShapedTransformerBlock(block, sd.ShapedMLP(gamma=0.5))
        V0 = sd.default_covariance(4)
    default = sd.solve_sde(block, V0, 1.0, key=jax.random.key(0), n_paths=10000, n_save=2,
                           normalize="rms", progress=False)
    assert default.config["step_error"]["resolved"]
    per_save = round(1.0 / default.config["dt"])
    excess = _coupled_law_error(block, V0, per_save, default.config["solver"])
    assert np.all(excess <= 0), (per_save, excess.max())
    assert np.any(_coupled_law_error(block, V0, 256, "congruence") > 0)


def test_every_grid_and_substep_reads_one_brownian_path():
    """``MatrixBrownianPath`` (the Brownian path of the solves at dt, 2 dt, dt / 2, r dt and of
    the refinement's substeps): the dyadic parts of a step of any grid (``within``) sum to the
    step's increment (``evaluate``) and each part is the sum of its two children (so a path's
    substeps do not depend on the depth it is read to); the parts of the two halves of a base
    step, and of a step of two base steps, are those of the base steps they cover; a part read
    directly (``evaluate`` on its interval) is the same. Their spread is that of Brownian
    increments (variance = length)."""
    import jax.numpy as jnp

    from shapedsde.sde import MatrixBrownianPath

    words = jnp.array([[3, 7], [11, 5]], jnp.uint32)
    h = 0.5
    path = MatrixBrownianPath(words, jnp.float32(h), 2, 2, "float32")
    step_increment = jax.jit(lambda t0, t1: path.evaluate(t0, t1))
    part = jax.jit(lambda t0, t1, s0, s1: path.within(t0, t1).evaluate(s0, s1))

    def parts(t0: float, size: float, depth: int) -> np.ndarray:
        """All 2^depth parts of the step [t0, t0 + size] (paths, 2^depth, n, m, m)."""
        w = size / 2**depth
        return np.stack([np.asarray(part(jnp.float32(t0), jnp.float32(t0 + size),
                                         jnp.float32(j * w), jnp.float32((j + 1) * w)))
                         for j in range(2**depth)], axis=1)

    for t0, size in [(5 * h, h), (5 * h, h / 2), (5.5 * h, h / 2), (4 * h, 2 * h),
                     (4 * h, 4 * h)]:
        total = np.asarray(step_increment(jnp.float32(t0), jnp.float32(t0 + size)))
        for depth in (0, 1, 3, 5):
            np.testing.assert_allclose(parts(t0, size, depth).sum(axis=1), total, atol=2e-5)
        np.testing.assert_allclose(parts(t0, size, 3),
                                   parts(t0, size, 4).reshape(2, 8, 2, 2, 2, 2).sum(2),
                                   atol=2e-5)
    halves = np.concatenate([parts(5 * h, h / 2, 3), parts(5.5 * h, h / 2, 3)], axis=1)
    np.testing.assert_allclose(halves, parts(5 * h, h, 4), atol=1e-6)
    pair = np.concatenate([parts(4 * h, h, 3), parts(5 * h, h, 3)], axis=1)
    np.testing.assert_allclose(parts(4 * h, 2 * h, 4), pair, atol=1e-6)
    direct = np.asarray(step_increment(jnp.float32(5 * h + 3 * h / 8), jnp.float32(5 * h + h / 2)))
    np.testing.assert_allclose(direct, parts(5 * h, h, 3)[:, 3], atol=1e-6)
    fine = parts(5 * h, h, 5)  # 32 increments of length h / 32 per path, given their sum
    spread = np.var(fine - fine.mean(axis=1, keepdims=True)) * 32 / h * 32 / 31
    assert 0.8 < spread < 1.2, spread


@pytest.mark.slow
def test_crossing_fraction_converges_in_dt_on_one_brownian_path():
    """Figure 7's setting (hot attention, V0 = I, no normalisation, bound 1000, T = 2), 2000
    paths solved at dt = 1/128, 1/512 and 1/2048 on one Brownian path, the refinement's
    substeps included: the crossing fraction at 1/512 is within one point (+ 3 paired SE) of
    that at 1/2048, and its change shrinks at least twofold per fourfold smaller step. With
    the refinement's substeps bounded independently of dt (and drawn per grid step) the hot
    paths' error did not shrink with dt: 1/512 was 1.5 points from 1/2048 (4000 paths)."""
    n, fine = 2000, 4096  # steps over T = 2 at dt = 1/2048
    crossed = {r: solve_on_grid(HOT, np.eye(2), 2.0, fine // r, 3, n, solver="congruence",
                                brownian_steps=fine).t_explode >= 0
               for r in (16, 4, 1)}

    def change(r_coarse: int, r_fine: int) -> tuple[float, float]:
        d = crossed[r_coarse].astype(float) - crossed[r_fine]
        return d.mean(), d.std() / np.sqrt(n)

    near, near_se = change(4, 1)
    far, far_se = change(16, 4)
    assert abs(near) <= 0.01 + 3 * near_se, (near, near_se)
    assert abs(near) <= far / 2 + 3 * np.hypot(near_se, far_se / 2), (near, far)


@pytest.mark.slow
def test_default_step_resolves_the_crossing_fraction():
    """Figure 7's setting (hot attention, V0 = I, no normalisation, bound 1000, T = 2) at
    default arguments, 4000 paths: the blow-up fraction's error bound is within
    CROSSING_TOL tol and the fraction within a point (+ 2 SE) of its limit, 2.7-3.4% (the
    coupled ladders of figure 7). The old control stopped at 1/256 for this key (5.3%)."""
    from shapedsde.sde._step_error import CROSSING_TOL

    n = 4000
    traj = sd.solve_sde(HOT, np.eye(2), 2.0, key=jax.random.key(2), n_paths=n, n_save=2,
                        progress=False)
    err = traj.config["step_error"]
    assert err["resolved"] and err["crossing_bound"] <= CROSSING_TOL * DEFAULT_TOL
    p = traj.exploded_fraction
    assert 0.027 - 0.01 - 2 * np.sqrt(p * (1 - p) / n) <= p <= 0.034 + 0.01 + 2 * np.sqrt(
        p * (1 - p) / n)


def _error(rho: float, se: float, crossing: float | None = None,
           crossing_se: float | None = None, *, dt: float = 0.01, gap: object = None):
    from shapedsde.sde import StepError
    from shapedsde.sde._step_error import Z

    gap = np.full((2, 1, 4), rho) if gap is None else np.asarray(gap, float)
    ses = np.full(gap.shape, se)
    bound = float((gap + Z * ses).max())
    return StepError(rho=rho, rho_se=se, bound=bound, upper=bound, excess=0.0,
                     rho_by_time=(0.0, rho), crossing=crossing, crossing_se=crossing_se,
                     crossing_bound=None if crossing is None else crossing + Z * crossing_se,
                     dt=dt, dt_other=2 * dt, paths=256, order=1, gap=gap, se=ses)


def test_a_step_is_accepted_only_when_its_error_is_resolved_below_tol():
    """``StepError.within``: estimate + 2 SE <= tol (the blow-up fraction: <= CROSSING_TOL
    tol); an estimate below tol whose SE leaves it unresolved is not accepted (the old rule
    accepted anything not shown above tol); only more paths decide a crossing fraction that
    its standard error leaves open."""
    from shapedsde.sde._solve import _crossing_needs_paths

    tol = 0.005
    assert _error(0.002, 0.001).within(tol)
    assert not _error(0.002, 0.002).within(tol)  # 0.006 at 2 SE: unresolved
    assert not _error(0.002, 0.002).shown_above(tol)  # ... though not shown above it
    assert not _error(0.004, 0.001).within(tol)
    assert _error(0.001, 0.0005, 0.004, 0.002).within(tol)  # 0.008 <= 2 tol
    assert not _error(0.001, 0.0005, 0.004, 0.004).within(tol)
    assert _crossing_needs_paths(_error(0.001, 0.0005, 0.004, 0.004), tol)
    assert not _crossing_needs_paths(_error(0.001, 0.0005, 0.03, 0.004), tol)  # shown: halve
    assert not _crossing_needs_paths(_error(0.004, 0.004, 0.004, 0.004), tol)  # rho first


def test_bounds_scale_from_coarser_steps_only_where_the_order_holds():
    """``consistent``: estimates at 2 dt and dt that halve (within their noise) show order 1;
    a level that does not (the control: a gap that stays put) is not used. ``extrapolate``
    takes, statistic by statistic, the smaller of the direct and the scaled bound, and says
    so."""
    from shapedsde.sde._step_error import consistent, extrapolate

    coarse = _error(0.02, 0.001, dt=0.02)
    fine = _error(0.01, 0.004, dt=0.01)
    assert consistent(coarse, fine)
    assert not consistent(coarse, _error(0.02, 0.001, dt=0.01))  # did not halve
    got = extrapolate([coarse], 0.01, fine, tol=0.02)
    assert got.bound == pytest.approx(0.011)  # (0.02 + 2 * 0.001) / 2 < 0.01 + 2 * 0.004
    assert got.extrapolated and got.resolved
    assert got.rho == pytest.approx(0.01) and got.rho_se == pytest.approx(0.0005)
    # a step below the finest measured: scaled by the order, no direct estimate
    below = extrapolate([coarse, fine], 0.0025)
    assert below.bound == pytest.approx(0.022 / 8) and below.dt == 0.0025
    direct = extrapolate([], 0.01, fine)
    assert direct.bound == pytest.approx(fine.upper) and not direct.extrapolated


def test_stated_error_is_capped_at_what_a_correlation_can_change_by():
    """Five coupled paths of a shifted law: the quantile shifts divided by a tiny density
    estimate once stated errors of 50; no estimate or bound exceeds 2 now."""
    from shapedsde.sde import estimate

    rng = np.random.default_rng(14)  # a draw whose estimate + 2 SE is 3.0 uncapped
    n, m = 5, 2
    V = np.broadcast_to(np.eye(m), (n, 2, m, m)).copy()
    other = V.copy()
    V[:, 1, 0, 1] = V[:, 1, 1, 0] = rng.uniform(-1, 1, n)
    other[:, 1, 0, 1] = other[:, 1, 1, 0] = -V[:, 1, 0, 1]
    none = np.zeros(n, bool)
    err = estimate(V, none, other, none, dt=0.01, relation="coarse", order=1, normalize="rms")
    assert 0 < err.rho <= 2 and err.bound <= 2 and err.upper <= 2
    assert max(err.rho_by_time) <= 2
    # the record a solve states (``extrapolate``, also for a given step) is capped too
    from shapedsde.sde._step_error import extrapolate
    assert extrapolate([], 0.01, err).bound <= 2


def test_control_warns_and_reports_when_the_smallest_step_is_not_enough(monkeypatch):
    """A tolerance no step can meet: the control stops at MIN_DT, warns (one readable line)
    and returns the result, recorded as not resolved."""
    from shapedsde.sde import _solve

    monkeypatch.setattr(_solve, "MIN_DT", 2.0**-8)
    with pytest.warns(RuntimeWarning, match="not resolved below tol = 1e-09.*"
                                             "smallest step dt = 0.0039"):
        traj = sd.solve_sde(sd.ShapedAttention(tau0=0.1, gamma=0.9), np.eye(2), 0.5,
                            key=jax.random.key(0), n_paths=256, n_save=2, tol=1e-9,
                            normalize="rms", progress=False)
    assert traj.config["dt"] == 2.0**-8
    assert traj.config["step_error"]["resolved"] is False
    assert "not resolved" in traj.config["step_error"]["statement"]
