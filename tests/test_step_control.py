"""The step error of solve_sde: its estimate, the step control (dt=None), the congruence
solver, and the "rms" solver on nearly rank-deficient states (no false blow-ups)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from _fokker_planck import reference_statistics
from scipy import stats

import shapedsde as sd

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
    assert cfg["dt"] <= 2.0**-8 and cfg["tol"] == 0.005
    err = cfg["step_error"]
    assert err["dt"] == pytest.approx(cfg["dt"]) and err["paths"] == 16
    assert len(err["rho_by_time"]) == 3 and err["rho_by_time"][0] == 0.0
    # an explicit step is honoured; with an odd number of steps per saved interval the
    # estimate comes from the Brownian bridge at half the step
    tr = sd.solve_sde(HOT, np.eye(3), key=jax.random.key(0), dt=0.125 / 3, solver="euler",
                      **SMALL)
    assert tr.config["dt"] == pytest.approx(0.125 / 3)
    assert tr.config["step_error"]["dt_other"] == pytest.approx(0.125 / 6)
    assert tr.config["step_error"]["crossing"] is not None  # blow-up possible


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


def _check_against(rho: np.ndarray, ref: np.ndarray, slack: float) -> np.ndarray:
    """|statistic - reference| - (slack + 3 Monte Carlo SE) for mean, q05, q50, q95."""
    rng = np.random.default_rng(0)
    idx = rng.integers(0, rho.size, (200, rho.size))
    def statistics(x):
        return np.array([x.mean(-1), *np.quantile(x, [0.05, 0.5, 0.95], axis=-1)])
    se = statistics(rho[idx]).std(axis=1)
    return np.abs(statistics(rho) - ref) - (slack + 3 * se)


@pytest.mark.slow
def test_default_step_meets_the_tolerance_in_the_hot_setting():
    """Hot shaped attention (tau0 = 0.3, gamma = 0.9), two tokens, V0 = I, "rms", T = 1: the
    mean and the 5/50/95% quantiles of rho_12 at T from the default call (10^4 paths) lie
    within 0.01 (plus 3 Monte Carlo SE) of the Fokker-Planck solution; the old default (Euler,
    dt = 1/256) does not."""
    ref = reference_statistics(HOT, 1.0)
    kw = dict(n_paths=10000, n_save=2, normalize="rms", progress=False)
    default = sd.solve_sde(HOT, np.eye(2), 1.0, key=jax.random.key(0), **kw)
    excess = _check_against(default.correlation()[:, -1, 0, 1], ref, 0.01)
    assert np.all(excess <= 0), (excess, default.config["dt"])
    old = sd.solve_sde(HOT, np.eye(2), 1.0, key=jax.random.key(0), dt=2.0**-8,
                       solver="euler", **kw)
    assert np.any(_check_against(old.correlation()[:, -1, 0, 1], ref, 0.01) > 0)


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
    assert same.excess < same.rho / 2 and same.crossing == 0
    shifted = estimate(covariances(r), exploded, covariances(np.clip(r + 0.2, -1, 1)),
                       exploded, **kw)
    assert shifted.excess > 0.1


def _coupled_law_error(block, V0, per_save, solver, *, ratio=8, n=4096):
    """|S(dt) - S(dt / ratio)| - (0.01 + 3 SE) for the mean and 5/50/95% quantiles of every
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
    return np.abs(statistics(coarse) - statistics(fine)) - (0.01 + 3 * se)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["attention, 3 tokens", "Transformer block, 4 tokens"])
def test_default_step_is_accurate_in_hot_settings_with_more_tokens(case):
    """The step chosen by the default call (10^4 paths) gives every rho_ab's mean and 5/50/95%
    quantiles at T within 0.01 (+ 3 SE) of the same solver at an 8 times smaller step, on
    one Brownian path; the old default (Euler, dt = 1/256) misses it in the first case."""
    if case.startswith("attention"):
        block, V0 = HOT, np.eye(3)
    else:
        block = sd.ShapedTransformerBlock(HOT, sd.ShapedMLP(gamma=0.5))
        V0 = sd.default_covariance(4)
    default = sd.solve_sde(block, V0, 1.0, key=jax.random.key(0), n_paths=10000, n_save=2,
                           normalize="rms", progress=False)
    per_save = round(1.0 / default.config["dt"])
    excess = _coupled_law_error(block, V0, per_save, default.config["solver"])
    assert np.all(excess <= 0), (per_save, excess.max())
    if case.startswith("attention"):
        assert np.any(_coupled_law_error(block, V0, 256, "euler") > 0)


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
def test_default_step_decides_the_crossing_fraction_on_more_paths():
    """Figure 7's setting (hot attention, V0 = I, no normalisation, bound 1000, T = 2) at
    default arguments, 4000 paths. The first pilot (512 coupled paths) cannot tell whether the
    crossing fraction's step error exceeds tol: its standard error is about 2.5 points. The
    control therefore solves more coupled paths, here all of them, and where even they leave
    it undecided their estimate decides (against 2 tol). It takes the step down to 1/1024 or
    less, where the coupled ladders (this file's and figure 7's) put the crossing fraction
    within about a point of its limit (2.7-3.4%). The control that decided on the first pilot
    alone stopped at 1/256 for this key (5.3%), as for keys 0, 3, 4 and 5 (4.7-5.5%); key 1
    it took to 1/1024."""
    from shapedsde.sde import DEFAULT_TOL
    from shapedsde.sde._step_error import UNDECIDED_CROSSING

    n = 4000
    traj = sd.solve_sde(HOT, np.eye(2), 2.0, key=jax.random.key(2), n_paths=n, n_save=2,
                        progress=False)
    err = traj.config["step_error"]
    print(traj.config["dt"], traj.exploded_fraction, err["paths"], err["crossing"],
          err["crossing_se"])
    assert err["paths"] == n
    assert traj.config["dt"] <= 2.0**-10
    assert err["crossing"] <= UNDECIDED_CROSSING * DEFAULT_TOL  # accepted on every path's estimate
    p = traj.exploded_fraction  # within a point (+ 2 SE) of the limit, 2.7-3.4% (figure 7)
    assert 0.027 - 0.01 - 2 * np.sqrt(p * (1 - p) / n) <= p <= 0.034 + 0.01 + 2 * np.sqrt(
        p * (1 - p) / n)


def test_crossing_step_error_is_undecided_only_when_its_interval_holds_tol():
    """``StepError.crossing_undecided``: the step control solves more coupled paths exactly
    when tol lies within the crossing estimate +- 2 SE (and never with normalisation); with
    every path coupled, ``above`` then goes by the estimate."""
    from shapedsde.sde import StepError

    def error(crossing: float | None, se: float | None) -> StepError:
        return StepError(rho=0.0, upper=0.0, excess=0.0, rho_by_time=(0.0,), crossing=crossing,
                         crossing_se=se, dt=0.01, dt_other=0.02, paths=256, order=1)

    tol = 0.005
    assert error(0.0, 0.025).crossing_undecided(tol)  # opposite flips cancelled: undecided
    assert error(0.009, 0.009).crossing_undecided(tol)  # one flip in 256 coupled paths
    assert not error(0.04, 0.01).crossing_undecided(tol)  # shown above tol: halve the step
    assert error(0.04, 0.01).above(tol)
    assert not error(0.001, 0.001).crossing_undecided(tol)  # shown below tol: accept
    assert not error(0.0, 0.0).crossing_undecided(tol)  # no path crossed in one solve only
    assert not error(None, None).crossing_undecided(tol)  # normalised: nothing crosses
    # once every path of the run is coupled, an undecided estimate decides by itself
    assert not error(0.009, 0.009).above(tol)
    assert error(0.012, 0.009).above(tol, every_path=True)  # beyond UNDECIDED_CROSSING tol
    assert not error(0.009, 0.009).above(tol, every_path=True)
    assert not error(None, None).above(tol, every_path=True)


def test_control_warns_and_reports_when_the_smallest_step_is_not_enough(monkeypatch):
    """A tolerance no step can meet: the control stops at MIN_DT, warns with the estimate
    (one readable line) and still returns the result with its step error."""
    from shapedsde.sde import _solve

    monkeypatch.setattr(_solve, "MIN_DT", 2.0**-9)
    with pytest.warns(RuntimeWarning, match="smallest step dt = 0.00195.*step error"):
        traj = sd.solve_sde(sd.ShapedAttention(tau0=0.1, gamma=0.9), np.eye(2), 0.5,
                            key=jax.random.key(0), n_paths=256, n_save=2, tol=1e-9,
                            normalize="rms", progress=False)
    assert traj.config["dt"] == 2.0**-9
    assert traj.config["step_error"]["excess"] > 1e-9
