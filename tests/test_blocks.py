"""Deterministic checks of the MLP and Transformer-block coefficients."""

from __future__ import annotations

import math

import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

import shapedsde as sd
from shapedsde.blocks.mlp import nu

from helpers import fd_ito, noise_covariance

V = jnp.asarray(np.array([[1.0, 0.5, 0.2], [0.5, 1.3, 0.4], [0.2, 0.4, 0.8]]), jnp.float32)


def kernel_by_quadrature(rho: float, c_plus: float, c_minus: float, n: int) -> float:
    """E[c^2 phi(u) phi(v)] for unit-variance (u, v) with correlation rho, by 1-d quadrature
    over u of phi(u) E[phi(v) | u] (folded-normal mean), independent of the arccos formula."""
    s_p, s_m = 1 + c_plus / math.sqrt(n), 1 + c_minus / math.sqrt(n)
    c2 = 2 / (s_p**2 + s_m**2)
    a, d = (s_p + s_m) / 2, (s_p - s_m) / 2  # phi(x) = a x + d |x|
    sig = math.sqrt(1 - rho**2)

    def integrand(u: float) -> float:
        mu = rho * u
        e_abs = sig * math.sqrt(2 / math.pi) * math.exp(-mu**2 / (2 * sig**2)) \
            + mu * (1 - 2 * stats.norm.cdf(-mu / sig))
        return (a * u + d * abs(u)) * (a * mu + d * e_abs) * stats.norm.pdf(u)

    val, _ = integrate.quad(integrand, -12, 12, points=[0.0], epsabs=1e-13, epsrel=1e-13,
                            limit=200)
    return c2 * val


@pytest.mark.parametrize("c_plus,c_minus", [(0.0, -1.0), (1.0, -1.0), (0.5, -2.0), (-1.0, 0.0)])
@pytest.mark.parametrize("rho", [-0.6, 0.0, 0.3, 0.8])
def test_mlp_drift_is_the_li_nica_roy_limit(c_plus, c_minus, rho):
    """n (K_n(rho) - rho) -> nu(rho): the kernel of the finite shaped ReLU, by quadrature, at
    n = 10^4 agrees with nu up to the O(n^{-1/2}) finite-width correction (~1%)."""
    block = sd.ShapedMLP(gamma=1.0, c_plus=c_plus, c_minus=c_minus)
    target = float(block.drift(jnp.asarray([[1.0, rho], [rho, 1.0]]))[0, 1])
    assert target == pytest.approx(float(nu(jnp.asarray(rho), c_plus, c_minus)), rel=1e-6)
    n = 10**4
    assert n * (kernel_by_quadrature(rho, c_plus, c_minus, n) - rho) == pytest.approx(
        target, rel=0.03, abs=1e-4)


@pytest.mark.parametrize("c_plus,c_minus", [(0.0, -1.0), (0.5, -2.0)])
def test_mlp_correlation_drift_closed_form(c_plus, c_minus):
    """Under "rms", d rho = gamma^2 [nu(rho) - rho (1 - rho^2)] dt for two tokens: the nu of
    Li, Nica and Roy plus the Ito term of the 2 gamma^2 Lin(V) noise."""
    gamma = 0.7
    block = sd.ShapedMLP(gamma=gamma, c_plus=c_plus, c_minus=c_minus)
    for rho in (-0.5, 0.2, 0.9):
        b = sd.drift(block, np.array([[1.0, rho], [rho, 1.0]]), normalize="rms")
        expected = gamma**2 * (float(nu(jnp.asarray(rho), c_plus, c_minus)) - rho * (1 - rho**2))
        assert float(b[0, 1]) == pytest.approx(expected, rel=1e-4, abs=1e-6)


TRANSFORMER = sd.ShapedTransformerBlock(sd.ShapedAttention(tau0=0.8, gamma=0.6, heads=2),
                                        sd.ShapedMLP(gamma=0.4, c_plus=0.5, c_minus=-1.5))


@pytest.mark.parametrize("block", [sd.ShapedMLP(), TRANSFORMER], ids=repr)
def test_cheap_noise_has_the_diffusion_covariance(block):
    np.testing.assert_allclose(noise_covariance(block, V), block.diffusion_cov(V), rtol=2e-5,
                               atol=2e-6)


def test_transformer_coefficients_add():
    att, mlp = TRANSFORMER.layers
    np.testing.assert_allclose(TRANSFORMER.drift(V), att.drift(V) + mlp.drift(V), rtol=1e-6)
    np.testing.assert_allclose(TRANSFORMER.diffusion_cov(V),
                               att.diffusion_cov(V) + mlp.diffusion_cov(V), rtol=1e-6)
    assert TRANSFORMER.n_noise == 3


@pytest.mark.parametrize("block", [sd.ShapedMLP(), TRANSFORMER], ids=repr)
def test_autodiff_ito_equals_finite_difference_ito(block):
    rho = np.asarray(sd.correlation(np.asarray(V)), np.float64)
    fd_drift, fd_diff = fd_ito(block, rho)
    np.testing.assert_allclose(sd.drift(block, rho, normalize="rms"), fd_drift, atol=2e-4)
    np.testing.assert_allclose(sd.diffusion_cov(block, rho, normalize="rms"), fd_diff,
                               atol=2e-4)


def test_bad_mlp_and_block_arguments():
    with pytest.raises(ValueError, match=r"gamma must lie in \(0, 1\]"):
        sd.ShapedMLP(gamma=1.2)
    with pytest.raises(ValueError, match="c_minus must be finite"):
        sd.ShapedMLP(c_minus=float("inf"))
    with pytest.raises(TypeError, match="attention must be a ShapedAttention"):
        sd.ShapedTransformerBlock(attention=sd.ShapedMLP())
