"""Deterministic checks of the SDE coefficients: cheap noise vs diffusion_cov, masked vs closed
form, autodiff Ito vs finite differences."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import shapedsde as sd
from shapedsde.blocks.normalization import rms

from helpers import fd_ito, noise_covariance

V = jnp.asarray(np.array([[1.0, 0.5, 0.2], [0.5, 1.3, 0.4], [0.2, 0.4, 0.8]]), jnp.float32)
BLOCKS = [sd.ShapedAttention(), sd.ShapedAttention(tau0=0.7, gamma=0.9, heads=3),
          sd.ShapedAttention(heads=math.inf), sd.ShapedAttention(causal=True)]


@pytest.mark.parametrize("block", BLOCKS, ids=repr)
def test_cheap_noise_has_the_diffusion_covariance(block):
    np.testing.assert_allclose(noise_covariance(block, V), block.diffusion_cov(V),
                               rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize("block", BLOCKS[1:3] + [sd.ShapedTransformerBlock()], ids=repr)
def test_cheap_noise_has_the_diffusion_covariance_at_m8(block):
    """m = 8: the products are ``dot`` calls, not the fused form used for m <= 7; both with
    the symmetric root and with the solver's Cholesky factor and stored L^T."""
    A = np.random.default_rng(8).standard_normal((8, 8))
    V8 = jnp.asarray(A @ A.T / 8 + 0.2 * np.eye(8), jnp.float32)
    S = block.diffusion_cov(V8)
    for solver_root in (False, True):
        np.testing.assert_allclose(noise_covariance(block, V8, solver_root), S, rtol=1e-4,
                                   atol=1e-5 * float(jnp.max(jnp.abs(S))))


@pytest.mark.parametrize("block", BLOCKS, ids=repr)
def test_diffusion_is_symmetric_psd(block):
    S = np.asarray(block.diffusion_cov(V), np.float64)
    np.testing.assert_allclose(S, S.transpose(1, 0, 2, 3), atol=1e-6)
    np.testing.assert_allclose(S, S.transpose(2, 3, 0, 1), atol=1e-6)
    assert np.linalg.eigvalsh(S.reshape(9, 9))[0] > -1e-5


def test_masked_formula_reduces_to_closed_form():
    for block in BLOCKS[:3]:
        np.testing.assert_allclose(block.drift_masked(V), block.drift(V), rtol=1e-5, atol=1e-7)


def test_full_drift_matches_spec_example():
    """Hand-evaluated SPEC formula at V = I (m = 2): V~ = H, beta = 0, ||H||^2 = 1, so
    b = gamma^2 / tau0^2 * I / 4."""
    b = sd.ShapedAttention(tau0=2.0, gamma=0.6).drift(jnp.eye(2))
    np.testing.assert_allclose(b, 0.36 / 4.0 * np.eye(2) / 4.0, rtol=1e-6)


def test_infinite_heads_drop_attention_noise():
    S_inf = sd.ShapedAttention(heads=math.inf).diffusion_cov(V)
    S_big = sd.ShapedAttention(heads=10**6).diffusion_cov(V)
    np.testing.assert_allclose(S_inf, S_big, rtol=1e-4, atol=1e-6)
    gamma = 0.5
    np.testing.assert_allclose(S_inf, gamma**2 * (2 - gamma**2) * sd.blocks.attention.lin(V),
                               rtol=1e-6)


@pytest.mark.parametrize("block", BLOCKS[:2] + BLOCKS[3:], ids=repr)
def test_autodiff_ito_equals_finite_difference_ito(block):
    rho = np.asarray(rms(V), np.float64)
    fd_drift, fd_diff = fd_ito(block, rho)
    np.testing.assert_allclose(sd.drift(block, rho, normalize="rms"), fd_drift, atol=2e-4)
    np.testing.assert_allclose(sd.diffusion_cov(block, rho, normalize="rms"), fd_diff,
                               atol=2e-4)


def test_normalised_coefficients_vanish_on_the_diagonal():
    b = np.asarray(sd.drift(BLOCKS[0], V, normalize="rms"))
    S = np.asarray(sd.diffusion_cov(BLOCKS[0], V, normalize="rms"))
    assert np.max(np.abs(np.diag(b))) < 1e-6
    assert np.max(np.abs(S[np.arange(3), np.arange(3)])) < 1e-6
    assert np.max(np.abs(b)) > 1e-2  # but not trivially zero


def test_ito_correction_matters():
    """Df[b] alone (no second-order term) differs from the normalised drift: the Ito term is
    not negligible, so the finite-difference test above can fail."""
    rho = rms(V)
    block = BLOCKS[0]
    first_only = jax.jvp(rms, (rho,), (block.drift(rho),))[1]
    assert np.max(np.abs(np.asarray(sd.drift(block, rho, "rms")) - first_only)) > 1e-2


def test_standard_attention_has_no_sde():
    with pytest.raises(sd.NoSDELimitError, match="no covariance-SDE limit"):
        sd.drift(sd.StandardAttention(), V)
    with pytest.raises(sd.NoSDELimitError):
        sd.solve_sde(sd.StandardAttention(), V, 1.0, key=jax.random.key(0))
