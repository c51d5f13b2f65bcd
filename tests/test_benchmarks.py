"""The throughput benchmark compares like with like: its baselines (a plain JAX scan, NumPy
vectorised over paths, the literal NumPy loop) take the library's Euler step, and its noise-only
loop draws the solver's noise."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import shapedsde as sd

sys.path.insert(0, str(Path(__file__).parents[1] / "benchmarks"))
bench = importlib.import_module("sde_throughput")

BLOCK = sd.ShapedAttention(tau0=bench.TAU0, gamma=bench.GAMMA)


def _random_covariances(m: int, n: int, seed: int) -> np.ndarray:
    X = np.random.default_rng(seed).standard_normal((n, m, m + 2))
    return (X @ np.swapaxes(X, 1, 2) / (m + 2)).astype(np.float32)


def _library_step(V: np.ndarray, dW: np.ndarray, dt: float) -> np.ndarray:
    """V + b(V) dt + noise(V, L, dW) per path, L the Cholesky factor; dW (paths, 2, m, m)."""
    def one(V, dW):
        return V + BLOCK.drift(V) * dt + BLOCK.noise(V, jnp.linalg.cholesky(V), dW)

    return np.asarray(jax.vmap(one)(jnp.asarray(V), jnp.asarray(dW)))


@pytest.mark.parametrize("m", [4, 8])
def test_scan_baseline_has_the_library_drift_and_noise(m: int):
    V = _random_covariances(m, 3, seed=m)
    dW = np.random.default_rng(1).standard_normal((3, 2, m, m)).astype(np.float32)
    for Vp, dWp in zip(V, dW, strict=True):
        L = jnp.linalg.cholesky(Vp)
        np.testing.assert_allclose(bench._drift(jnp.asarray(Vp)), BLOCK.drift(Vp),
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(bench._noise(jnp.asarray(Vp), L, jnp.asarray(dWp)),
                                   BLOCK.noise(Vp, L, dWp), rtol=1e-4, atol=1e-5)


def test_numpy_baselines_take_the_library_step():
    """One step of each NumPy baseline, with the normals it draws from its seed, equals the
    library's Euler step (then symmetrised)."""
    m, n, seed, dt = 4, 3, 7, bench.DT
    V0 = np.asarray(sd.default_covariance(m), np.float32)
    scale = np.float32(np.sqrt(dt))
    V = np.broadcast_to(V0, (n, m, m))

    dW = np.random.default_rng(seed).standard_normal((2, n, m, m), dtype=np.float32) * scale
    expected = _library_step(V, np.swapaxes(dW, 0, 1), dt)
    np.testing.assert_allclose(bench.numpy_euler(V0, n, 1, seed), expected, rtol=1e-5, atol=1e-6)

    rng = np.random.default_rng(seed)  # the loop draws (2, m, m) per path, path after path
    dW = np.stack([rng.standard_normal((2, m, m), dtype=np.float32) * scale for _ in range(n)])
    np.testing.assert_allclose(bench.numpy_path_loop(V0, n, 1, seed), _library_step(V, dW, dt),
                               rtol=1e-5, atol=1e-6)


def test_noise_floor_sums_standard_normals():
    """The noise-only loop draws n_paths x steps x 2 m^2 standard normals: their sum divided by
    the square root of their number is one standard normal (|z| < 5 fails with probability
    6e-7), and other seeds give other draws."""
    m, paths, steps = 4, 64, 16
    run = bench.noise_floor(m, paths, steps)
    z = [float(run(seed)) / np.sqrt(paths * steps * 2 * m * m) for seed in (1, 2)]
    assert all(abs(x) < 5 for x in z), z
    assert z[0] != z[1]


wc = importlib.import_module("weak_convergence")


def test_weak_convergence_statistics_and_paired_differences():
    """The statistics exclude blown-up paths and append the crossing fraction; a coupled
    difference of a shifted copy is the shift, with zero bootstrap SE."""
    rho = np.linspace(-1.0, 1.0, 101)[:, None]
    exploded = np.zeros(101, bool)
    exploded[-1] = True  # rho = 1 is left out
    S = wc.statistics(rho, exploded, crossing=True)
    kept = rho[:-1, 0]
    np.testing.assert_allclose(S, [kept.mean(), *np.quantile(kept, wc.QUANTILES), 1 / 101])
    diff, se = wc.paired_difference(rho + 0.25, exploded, rho, exploded, True, 20)
    np.testing.assert_allclose(diff, [0.25, 0.25, 0.25, 0.25, 0.0], atol=1e-12)
    np.testing.assert_allclose(se, 0.0, atol=1e-12)
    assert wc.max_error(diff, se + 0.1)[:2] == (pytest.approx(0.25), pytest.approx(0.1))
    diff, se = wc.paired_difference(rho, exploded, rho, np.zeros(101, bool), True, 20)
    assert diff[4] == pytest.approx(1 / 101) and se[4] > 0
    assert wc.excess(np.array([0.03, -0.05]), np.array([0.01, 0.03])) == pytest.approx(0.01)
    assert wc.stat_name(5, False, 3) == "rho13:q05"
    assert wc.stat_name(12, True, 3) == "crossing"


def test_weak_convergence_order_and_cost():
    """First-order errors give slope 1 (levels within 4 SE left out); the cost to reach the
    target interpolates log-log between the levels around the crossing."""
    dts = 2.0 ** -np.arange(5, 10)
    errors = 3.0 * dts
    errors[-1] = 0.5  # noise-dominated level, SE below makes it excluded
    ses = np.array([1e-4] * 4 + [1.0])
    assert wc.weak_order(dts, errors, ses) == pytest.approx(1.0)
    assert wc.weak_order(dts, errors, np.ones(5)) is None
    cost, how = wc.cost_to_reach([1 / 64, 1 / 128, 1 / 256], [0.04, 0.02, 0.005], [1, 2, 4])
    assert how == "interp" and cost == pytest.approx(np.sqrt(8))
    assert wc.cost_to_reach([1 / 64, 1 / 128], [0.004, 0.001], [1, 2]) == (1.0, "<=")
    assert wc.cost_to_reach([1 / 64, 1 / 128], [0.4, 0.1], [1, 2]) == (None, "not reached")
    assert wc.resolved_error(np.array([0.5, -0.03, 0.01]), np.array([0.1, 0.001, 0.002])) \
        == pytest.approx(0.03)
    assert wc.resolved_error(np.array([0.5]), np.array([0.1])) is None
