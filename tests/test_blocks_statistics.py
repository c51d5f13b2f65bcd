"""Monte Carlo checks of every block kind against its SDE (SPEC section 7): one-layer moments
at two widths, and the law at T = 1 against the finite network at width 128."""

from __future__ import annotations

import functools
import math

import jax
import numpy as np
import pytest

import shapedsde as sd
from shapedsde.network.moments import one_layer_moments

from helpers import assert_ks_family

pytestmark = pytest.mark.slow

BLOCKS = {
    "mlp": sd.ShapedMLP(gamma=0.5, c_plus=0.0, c_minus=-1.0),
    "transformer": sd.ShapedTransformerBlock(sd.ShapedAttention(key_dim=32), sd.ShapedMLP()),
    "heads3": sd.ShapedAttention(heads=3, key_dim=32),
    "causal": sd.ShapedAttention(causal=True, key_dim=32),
}
SAMPLES = {64: 8000, 256: 3000}


def finite_width_drift(block: sd.Block, V: np.ndarray, width: int) -> np.ndarray:
    """Exact one-layer n E[dV] up to O(1/n): the MLP's drift carries the factor
    ShapedMLP.drift_factor(n) = 1 - (c_+ + c_-) / sqrt(n) + O(1/n)."""
    if isinstance(block, sd.ShapedMLP):
        return block.drift_factor(width) * np.asarray(sd.drift(block, V), float)
    if isinstance(block, sd.Serial):
        return sum(finite_width_drift(layer, V, width) for layer in block.layers)
    return np.asarray(sd.drift(block, V), float)


@functools.cache
def moments(name: str, width: int):
    V = sd.default_covariance(3, rho=0.5)
    return V, one_layer_moments(BLOCKS[name], V, width=width, n_samples=SAMPLES[width],
                                key=jax.random.key(width))


@pytest.mark.parametrize("width", [64, 256])
@pytest.mark.parametrize("name", list(BLOCKS))
def test_one_layer_moments(name, width):
    block = BLOCKS[name]
    V, (b_hat, S_hat) = moments(name, width)
    b = finite_width_drift(block, V, width)
    S = np.asarray(sd.diffusion_cov(block, V), float)
    for label, est, target in (("drift", b_hat, b), ("diffusion", S_hat, S)):
        s, se = est.projection(target)
        print(f"{name} width {width} {label}: {s:.4f} +- {se:.4f}, max z {est.max_z(target):.2f}")
        assert abs(s - 1) <= 4 * se, f"{label}: {s:.4f} +- {se:.4f}"
        assert est.max_z(target) <= 4.0


def test_mlp_drift_converges_at_rate_one_over_sqrt_n():
    """The control variate resolves the finite-width bias of the MLP drift: with c_+ + c_- = -1
    it is about +1/sqrt(n) (+13% at n = 64, +6% at n = 256); the SDE's b is rejected at
    n = 64 and the error halves from 64 to 256."""
    errors = {}
    for width in (64, 256):
        V, (b_hat, _) = moments("mlp", width)
        s, se = b_hat.projection(np.asarray(sd.drift(BLOCKS["mlp"], V), float))
        errors[width] = (s - 1, se)
    assert errors[64][0] > 10 * errors[64][1]
    ratio = errors[64][0] / errors[256][0]
    assert 1.5 < ratio < 2.7, f"error ratio 64 -> 256 is {ratio:.2f}, expected ~2"


KS_BLOCKS = {
    "mlp": sd.ShapedMLP(),
    "transformer": sd.ShapedTransformerBlock(),
    "heads4": sd.ShapedAttention(heads=4),
    "causal": sd.ShapedAttention(causal=True),
}


@pytest.mark.parametrize("name", list(KS_BLOCKS))
def test_sde_matches_network_rms(name):
    block, V0 = KS_BLOCKS[name], sd.default_covariance(4)
    sde = sd.solve_sde(block, V0, 1.0, key=jax.random.key(21), n_paths=2000, n_save=3,
                       normalize="rms", progress=False)
    net = sd.simulate_network(block, V0, width=128, depth=128, n_samples=2000, n_save=3,
                              key=jax.random.key(22), normalize="rms", progress=False)
    final = sd.compare(sde, net).final()
    print(name, final)
    assert_ks_family(final, "rho")


def _spread(traj: sd.Trajectories) -> tuple[float, float]:
    """Standard deviation of rho_01 at the final time and its standard error."""
    r = traj.correlation()[:, -1, 0, 1]
    return float(r.std()), float(r.std() / math.sqrt(2 * len(r)))


def test_more_heads_less_spread():
    """Two orthogonal tokens, hot attention (gamma 0.9, tau0 0.3), t = 1/8: the attention noise
    scales like 1/H, so the spread of rho shrinks monotonically in H in the finite network
    (width 128), and approaches the heads = inf SDE (no attention noise)."""
    V0, T, width = np.eye(2), 0.125, 128
    spreads = []
    for H in (1, 4, 16):
        block = sd.ShapedAttention(gamma=0.9, tau0=0.3, heads=H)
        net = sd.simulate_network(block, V0, width=width, depth=round(T * width),
                                  n_samples=4000, key=jax.random.key(H), normalize="rms",
                                  n_save=2, progress=False)
        spreads.append(_spread(net))
    inf = sd.solve_sde(sd.ShapedAttention(gamma=0.9, tau0=0.3, heads=math.inf), V0, T,
                       key=jax.random.key(0), n_paths=4000, normalize="rms", n_save=2,
                       progress=False)
    spreads.append(_spread(inf))
    print("spread of rho_01 for H = 1, 4, 16 (network), inf (SDE):", spreads)
    for (s1, e1), (s2, e2) in zip(spreads[:2], spreads[1:3], strict=True):
        assert s1 - s2 > 3 * math.hypot(e1, e2)
    # H = 16 lies about 0.01 (2 SE at 4000 samples) above the limit, too close to resolve
    # with 3 SE: require only that the limit is not above it and that H = 16 is closer to it
    (s16, e16), (s_inf, e_inf) = spreads[2], spreads[3]
    assert s_inf - s16 < 3 * math.hypot(e16, e_inf)
    assert abs(s16 - s_inf) < abs(spreads[0][0] - s_inf)
