"""Tests of shapedsde.analysis.compare on Wishart samples with known (equal or different) laws."""

import json

import numpy as np
import pytest
from scipy import stats

from shapedsde.analysis.compare import Comparison, common_times, compare
from shapedsde.analysis.metrics import correlation
from shapedsde.analysis.trajectories import Trajectories


def wishart_paths(
    seed: int,
    samples: int = 400,
    times: tuple[float, ...] = (0.0, 0.5, 1.0),
    m: int = 2,
    n: int = 8,
    corr: float = 0.5,
    scale: float = 1.0,
    kind: str = "sde",
) -> Trajectories:
    """V_t = I at t = 0, else scale * Wishart(C, n) / n with C = (1 - corr) I + corr 11^T."""
    rng = np.random.default_rng(seed)
    L = np.linalg.cholesky((1 - corr) * np.eye(m) + corr * np.ones((m, m)))
    X = L @ rng.standard_normal((samples, len(times), m, n))
    V = scale * X @ np.swapaxes(X, -1, -2) / n
    V[:, np.asarray(times) == 0.0] = np.eye(m)
    return Trajectories(
        t=np.asarray(times),
        V=V,
        exploded=np.zeros(samples, dtype=bool),
        explosion_time=np.full(samples, np.inf),
        config={"kind": kind},
    )


@pytest.fixture(scope="module")
def same() -> Comparison:
    return compare(wishart_paths(0), wishart_paths(1, kind="network"))


def test_rows_layout(same):
    assert same.labels == ("sde", "network")
    assert same.times == [0.0, 0.5, 1.0]
    assert [r.quantity for r in same.rows[:3]] == ["rho[0,1]", "V[0,0]", "V[1,1]"]
    assert len(same.rows) == 3 * 3
    assert all(r.n_a == r.n_b == 400 for r in same.rows)


def test_same_law_is_not_rejected(same):
    assert same.min_pvalue() > 0.01
    assert same.max_ks() < 0.15


def test_different_laws_are_rejected():
    base = wishart_paths(0)
    shifted_corr = compare(base, wishart_paths(1, corr=0.8, kind="network"))
    assert shifted_corr.min_pvalue(kind="rho") < 1e-6
    assert shifted_corr.min_pvalue(kind="V") > 1e-3  # the diagonal has the same law
    scaled = compare(base, wishart_paths(1, scale=1.5, kind="network"))
    assert scaled.min_pvalue(kind="V") < 1e-6
    assert scaled.min_pvalue(kind="rho") > 1e-3  # correlations are scale-invariant


def test_statistics_equal_scipy_and_numpy():
    a, b = wishart_paths(0, m=3), wishart_paths(1, corr=0.6, m=3)
    result = compare(a, b, quantiles=(0.25, 0.75))
    row = next(r for r in result.rows if r.t == 1.0 and r.quantity == "rho[1,2]")
    x, y = correlation(a.V[:, 2])[:, 1, 2], correlation(b.V[:, 2])[:, 1, 2]
    ks = stats.ks_2samp(x, y)
    assert row.ks == pytest.approx(ks.statistic, abs=1e-15)
    assert row.pvalue == pytest.approx(ks.pvalue, rel=1e-12)
    assert row.w1 == pytest.approx(stats.wasserstein_distance(x, y), rel=1e-12)
    np.testing.assert_allclose(row.q_a, np.quantile(x, [0.25, 0.75]))
    np.testing.assert_allclose(row.q_b, np.quantile(y, [0.25, 0.75]))
    diag = next(r for r in result.rows if r.t == 0.5 and r.quantity == "V[2,2]")
    assert diag.ks == pytest.approx(stats.ks_2samp(a.V[:, 1, 2, 2], b.V[:, 1, 2, 2]).statistic)


def test_constant_quantities_are_degenerate_rows(same):
    at_zero = same.select(times=[0.0])
    assert len(at_zero) == 3 and all(r.degenerate for r in at_zero)
    assert all((r.ks, r.pvalue, r.w1) == (0.0, 1.0, 0.0) for r in at_zero)
    assert not any(r.degenerate for r in same.select(times=[0.5, 1.0]))


def test_normalised_diagonal_is_degenerate_up_to_rounding():
    a, b = wishart_paths(0), wishart_paths(1)
    d_a = np.sqrt(np.diagonal(a.V, axis1=-2, axis2=-1))
    rho_a = (a.V / d_a[..., :, None] / d_a[..., None, :]).astype(np.float32)  # diagonal 1 +- eps
    result = compare(
        Trajectories(a.t, rho_a, a.exploded, a.explosion_time, config={"kind": "sde"}),
        Trajectories(b.t, correlation(b.V), b.exploded, b.explosion_time),
        times=[1.0],
    )
    assert [r.degenerate for r in result.rows] == [False, True, True]


def test_exploded_paths_dropped_and_counted():
    a, b = wishart_paths(0), wishart_paths(1, kind="network")
    exploded = np.zeros(a.n_samples, dtype=bool)
    exploded[:30] = True
    V = a.V.copy()
    V[:30] *= 1e6  # frozen at a huge value: would dominate the comparison if kept
    a = Trajectories(a.t, V, exploded, np.where(exploded, 0.7, np.inf), config=a.config)
    result = compare(a, b)
    assert result.dropped == {"sde": 30, "network": 0}
    assert all(r.n_a == 370 and r.n_b == 400 for r in result.rows)
    assert result.min_pvalue() > 0.01
    kept = compare(a, b, include_exploded=True)
    assert kept.dropped == {"sde": 0, "network": 0}
    assert all(r.n_a == 400 for r in kept.rows)
    assert kept.max_w1(kind="V") > 1e3 > 1 > result.max_w1(kind="V")
    assert "sde 30" in str(result)


def test_common_times_and_explicit_times():
    a = wishart_paths(0, times=(0.0, 0.25, 0.5, 0.75, 1.0))
    b = wishart_paths(1, times=(0.0, 0.5 + 1e-9, 1.0), kind="network")
    assert common_times(a, b) == [(0, 0), (2, 1), (4, 2)]
    with pytest.warns(UserWarning, match="'sde' at t = 0.25, 0.75"):  # dropped, and said so
        assert compare(a, b).times == [0.0, 0.5, 1.0]
    assert compare(a, b, times=[0.5]).times == [0.5]
    with pytest.raises(ValueError, match="not a saved time"):
        compare(a, b, times=[0.25])
    with pytest.raises(ValueError, match="no common saved times"):
        compare(wishart_paths(0, times=(0.1, 0.2)), wishart_paths(1, times=(0.3,)))


def test_token_count_mismatch_rejected():
    with pytest.raises(ValueError, match="token counts differ"):
        compare(wishart_paths(0, m=2), wishart_paths(1, m=3))


def test_labels():
    a, b = wishart_paths(0), wishart_paths(1)
    assert compare(a, b).labels == ("sde (a)", "sde (b)")
    assert compare(a, b, labels=("euler", "milstein")).dropped == {"euler": 0, "milstein": 0}
    with pytest.raises(ValueError, match="labels must differ"):
        compare(a, b, labels=("x", "x"))


def test_filters_final_and_serialisation(same):
    final = same.final()
    assert final.times == [1.0] and len(final.rows) == 3
    assert final.labels == same.labels and final.dropped == same.dropped
    rho_rows = same.select(kind="rho")
    assert {r.quantity for r in rho_rows} == {"rho[0,1]"}
    assert same.min_pvalue(kind="rho") == min(r.pvalue for r in rho_rows if not r.degenerate)
    assert same.max_ks(times=[0.5]) == max(r.ks for r in same.select(times=[0.5]))
    assert same.min_pvalue(times=[0.0]) == 1.0  # only degenerate rows there
    with pytest.raises(ValueError, match="kind"):
        same.min_pvalue(kind="diag")  # type: ignore[arg-type]
    d = json.loads(json.dumps(same.to_dict()))
    assert d["labels"] == ["sde", "network"] and len(d["rows"]) == len(same.rows)
    assert d["rows"][3]["quantity"] == "rho[0,1]" and d["rows"][3]["q_a"] == list(same.rows[3].q_a)


def test_str_table(same):
    text = str(same)
    lines = text.splitlines()
    assert len(lines) == 2 + len(same.rows) + 1  # header, rule, rows, summary
    for piece in ("quantity", "KS", "W1", "sde q0.1", "network q0.9", "rho[0,1]", "V[1,1]"):
        assert piece in text
    assert f"min p = {same.min_pvalue():.3g}" in lines[-1]
    assert len({len(line) for line in lines[2:-1] if "constant" not in line}) == 1  # fixed width


# -- issue 16: arguments are checked by name ------------------------------------------------
@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(quantiles=[]), ValueError, "quantiles must hold at least one level"),
        (dict(quantiles=[0.5, 1.5]), ValueError, r"quantiles must lie in \[0, 1\]"),
        (dict(quantiles=0.5), TypeError, "quantiles must be a sequence"),
        (dict(labels=("x",)), TypeError, "labels must be a pair of strings"),
        (dict(labels="ab"), TypeError, "labels must be a pair of strings"),
        (dict(times=0.5), TypeError, "times must be an iterable"),
        (dict(include_exploded="yes"), TypeError, "include_exploded must be a bool"),
        (dict(degenerate_rtol=-1.0), ValueError, "degenerate_rtol"),
    ],
)
def test_bad_arguments_named(kwargs, error, match):
    with pytest.raises(error, match=match):
        compare(wishart_paths(0), wishart_paths(1), **kwargs)


def test_plain_arrays_rejected():
    a = wishart_paths(0)
    with pytest.raises(TypeError, match="b must be a Trajectories"):
        compare(a, a.V)
    with pytest.raises(TypeError, match="a must be a Trajectories"):
        compare(a.V, a)


def test_comparison_shows_the_sde_step_error_beside_ks():
    """An SDE sample carries its estimated step error; the table prints it beside KS and W1
    (rho rows only), so a user sees whether the SDE side limits the comparison."""
    import jax

    import shapedsde as sd

    V0 = sd.default_covariance(3)
    kw = dict(n_save=3, normalize="rms", progress=False)
    sde = sd.solve_sde(sd.ShapedAttention(), V0, 0.25, key=jax.random.key(0), n_paths=64,
                       dt=1 / 64, **kw)
    net = sd.simulate_network(sd.ShapedAttention(), V0, width=16, depth=4, n_samples=64,
                              key=jax.random.key(1), method="reduced", **kw)
    comparison = sd.compare(sde, net)
    by_time = sde.config["step_error"]["rho_by_time"]
    assert comparison.step_error(0.25) == pytest.approx(by_time[-1])
    assert list(comparison.step_errors) == ["sde"]
    table = str(comparison)
    assert "step err" in table.splitlines()[0]
    rho_row = next(line for line in table.splitlines() if line.strip().startswith("0.25")
                   and "rho[0,1]" in line)
    assert f"{by_time[-1]:9.2g}".strip() in rho_row
    assert "step_errors" in comparison.to_dict()
    assert sd.compare(net, net, labels=("a", "b")).step_errors == {}
