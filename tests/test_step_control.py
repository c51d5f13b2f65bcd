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
    import jax.numpy as jnp

    from shapedsde.blocks.base import traced_parameters
    from shapedsde.schemes import BASE, COARSE, FINE, CovarianceSDE
    from shapedsde.sde import _Problem

    m = 3
    V0 = jnp.asarray(sd.default_covariance(m), jnp.float32)
    sde = CovarianceSDE(traced_parameters(sd.ShapedAttention(), jnp.float32), "rms", "project",
                        m, "float32")

    def solve(key, per_save, mode):
        problem = _Problem(sde, "euler", jax.random.key(key), V0,
                           jnp.asarray([0.0, 0.25], jnp.float32), jnp.float32(1e3), 64)
        return problem.solve(0, 64, per_save, mode, False)[0][:, -1]

    base, coarse, fine = solve(1, 64, BASE), solve(1, 32, COARSE), solve(1, 128, FINE)
    far = np.abs(base - solve(2, 64, BASE)).mean()
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
    from shapedsde.step_error import estimate

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
    import jax.numpy as jnp

    from shapedsde.blocks.base import traced_parameters
    from shapedsde.schemes import CovarianceSDE
    from shapedsde.sde import _Problem

    m = V0.shape[0]
    sde = CovarianceSDE(traced_parameters(block, jnp.float32), "rms", "project", m, "float32")
    problem = _Problem(sde, solver, jax.random.key(11), jnp.asarray(V0, jnp.float32),
                       jnp.asarray([0.0, 1.0], jnp.float32), jnp.float32(1e3), 1024)
    fine = sd.correlation(problem.solve(0, n, per_save * ratio, 0, False)[0][:, -1])
    coarse = sd.correlation(problem.solve(0, n, per_save, ratio, False)[0][:, -1])
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


def test_refinement_bridge_is_consistent_across_depths():
    """The substep increments of a refined step are a Brownian bridge of the step's increment:
    they sum to it, and the increments at depth 3 are those at depth 5 summed in blocks of 4,
    so a path's substeps do not depend on the depth its group is built to. Their spread at
    each level is that of Brownian increments (variance = substep length)."""
    import jax.numpy as jnp

    from shapedsde.refinement import _bridge_cumulative

    words = jnp.array([3, 7], jnp.uint32)
    dW = jnp.full((2, 2, 2), 0.3, jnp.float32)
    h = jnp.float32(1.0)
    c3 = np.asarray(_bridge_cumulative(words, dW, step=jnp.uint32(5), h=h, depth=3))
    c5 = np.asarray(_bridge_cumulative(words, dW, step=jnp.uint32(5), h=h, depth=5))
    np.testing.assert_allclose(c3[8], dW, atol=1e-6)
    np.testing.assert_allclose(c5[32], dW, atol=1e-6)
    np.testing.assert_allclose(c3[:9], c5[:33:4], atol=1e-5)
    fine = np.diff(c5[:33], axis=0)  # 32 increments of length 1/32, given their sum 0.3
    assert 0.5 < np.var(fine - 0.3 / 32) * 32 < 1.5
