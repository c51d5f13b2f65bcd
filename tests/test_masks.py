"""Attention masks and positional encodings (issue 28), deterministic checks: constructors and
bad input, configs that round-trip, and the coefficients of the shaped SDE against a NumPy
reference (``masks_reference``), the cheap noise, the congruence forms and the padding's
autonomy. The Monte Carlo checks are in ``test_masks_statistics.py``."""

from __future__ import annotations

import json
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from masks_reference import reference_diffusion, reference_drift

import shapedsde as sd
from experiments._common import block_from_config
from shapedsde.blocks import as_mask, as_positions
from shapedsde.linalg import psd_sqrt

from helpers import noise_covariance

M = 4
_D = np.diag([1.0, 1.2, 0.9, 1.1])
V64 = _D @ sd.default_covariance(M, rho=0.5) @ _D
V = jnp.asarray(V64, jnp.float32)
PI = sd.decay_gram(M, 0.7, 0.8)
MASKS = {"padding": sd.padding_mask(M, 3), "window": sd.sliding_window_mask(M, 2),
         "causal-window": sd.sliding_window_mask(M, 2, causal=True),
         "blocks": sd.block_mask(M, 2)}


# -- constructors and bad input -------------------------------------------------------------------

def test_mask_constructors():
    np.testing.assert_array_equal(sd.causal_mask(3).array, [[1, 0, 0], [1, 1, 0], [1, 1, 1]])
    np.testing.assert_array_equal(sd.padding_mask(3, 2).array, [[1, 1, 0]] * 3)
    np.testing.assert_array_equal(sd.sliding_window_mask(4, 2).array,
                                  [[1, 1, 0, 0], [1, 1, 1, 0], [0, 1, 1, 1], [0, 0, 1, 1]])
    np.testing.assert_array_equal(sd.sliding_window_mask(4, 2, causal=True).array,
                                  [[1, 0, 0, 0], [1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]])
    np.testing.assert_array_equal(sd.block_mask(5, 2).array,
                                  np.kron(np.eye(3), np.ones((2, 2)))[:5, :5])
    np.testing.assert_array_equal(sd.padding_mask(4, 3).counts, [3, 3, 3, 3])
    assert sd.padding_mask(4, 3).uniform_row is not None
    assert sd.sliding_window_mask(4, 2).uniform_row is None
    # hashable (a static field of a Module), equal by value, configs round-trip
    assert hash(sd.causal_mask(4)) == hash(sd.causal_mask(4))
    for mask in [*MASKS.values(), sd.causal_mask(4), as_mask(np.eye(3, dtype=bool))]:
        assert as_mask(json.loads(json.dumps(mask.config()))) == mask
    assert sd.sliding_window_mask(8, 2).describe() == "sliding_window(m=8, w=2, causal=False)"


def test_position_constructors():
    np.testing.assert_allclose(PI.matrix(), 0.8 * 0.7 ** np.abs(np.subtract.outer(range(4),
                                                                                 range(4))))
    root = np.asarray(PI.root)
    np.testing.assert_allclose(root @ root.T, PI.matrix(), atol=1e-12)
    sin = sd.sinusoidal_gram(6, scale=2.0, dim=8)
    np.testing.assert_allclose(np.diag(sin.matrix()), 2.0)
    assert np.linalg.eigvalsh(sin.matrix())[0] > -1e-12
    for gram in (PI, sin, as_positions([[1.0, 0.2], [0.2, 0.5]])):
        again = as_positions(json.loads(json.dumps(gram.config())))
        assert again.same_as(gram) and again.describe() == gram.describe()


@pytest.mark.parametrize("value, error, match", [
    ([[True, False], [False, False]], ValueError, "mask: row 1 has no allowed key"),
    (np.ones((2, 3), bool), ValueError, r"mask must be a square \(m, m\)"),
    (np.ones((2, 2, 2), bool), ValueError, "mask must be a square"),
    ([[1, 2], [0, 1]], ValueError, "mask must hold booleans"),
    ("causal", TypeError, "mask must be an"),
    ({"kind": "diagonal"}, ValueError, "mask: unknown mask kind 'diagonal'"),
    ({"kind": "causal", "w": 2}, ValueError, "mask: bad parameters for a causal mask"),
])
def test_bad_masks_name_the_parameter(value, error, match):
    with pytest.raises(error, match=match):
        sd.ShapedAttention(mask=value)


@pytest.mark.parametrize("value, error, match", [
    ([[1.0, 2.0], [2.0, 1.0]], ValueError, "positions must be positive semi-definite"),
    ([[1.0, 0.5], [0.1, 1.0]], ValueError, "positions must be symmetric"),
    (np.ones((2, 3)), ValueError, r"positions must be a square \(m, m\)"),
    ([[1.0, np.nan], [np.nan, 1.0]], ValueError, "positions contains NaN"),
    ("decay", TypeError, "positions must be an"),
    ({"kind": "rope"}, ValueError, "positions: unknown positional Gram kind 'rope'"),
    ({"kind": "decay", "m": 3}, ValueError,
     "positions: bad parameters for a decay positional Gram"),
])
def test_bad_positions_name_the_parameter(value, error, match):
    with pytest.raises(error, match=match):
        sd.StandardAttention(positions=value)


def test_bad_combinations_and_sizes():
    with pytest.raises(ValueError, match=r"k \(real tokens\) must be <= m = 3"):
        sd.padding_mask(3, 4)
    with pytest.raises(ValueError, match="w must be an integer >= 1"):
        sd.sliding_window_mask(3, 0)
    with pytest.raises(ValueError, match="rho must lie in"):
        sd.decay_gram(3, 1.0)
    with pytest.raises(ValueError, match="either causal=True or mask"):
        sd.ShapedAttention(causal=True, mask=sd.causal_mask(3))
    with pytest.raises(ValueError, match="positions is 4 x 4 but mask is 3 x 3"):
        sd.ShapedAttention(mask=sd.causal_mask(3), positions=PI)
    with pytest.raises(ValueError, match="share one positional embedding"):
        sd.Serial(sd.ShapedAttention(positions=PI), sd.ShapedAttention(positions=2 * PI.matrix()))
    block = sd.ShapedAttention(mask=sd.padding_mask(4, 2))
    V3 = sd.default_covariance(3)
    key = jax.random.key(0)
    for call in (lambda: sd.drift(block, V3),
                 lambda: sd.solve_sde(block, V3, 0.1, key=key, n_paths=2, progress=False),
                 lambda: sd.simulate_network(block, V3, width=8, depth=1, n_samples=2, key=key,
                                             progress=False),
                 lambda: sd.nngp_layer(sd.StandardAttention(positions=PI), V3)):
        with pytest.raises(ValueError, match=r"(mask|positions) is 4 x 4 .* m = 3 tokens"):
            call()
    with pytest.raises(ValueError, match="width must be >= 2 m = 8 with positions"):
        sd.simulate_network(sd.ShapedAttention(positions=PI), V64, width=6, depth=1,
                            n_samples=2, key=key, progress=False)


# -- configs ----------------------------------------------------------------------------------

def test_configs_round_trip_the_mask_and_the_positional_gram():
    blocks = [sd.ShapedAttention(tau0=0.7, mask=sd.sliding_window_mask(4, 2), positions=PI),
              sd.StandardAttention(heads=2, mask=np.tri(4, dtype=bool),
                                   positions=PI.matrix()),
              sd.ShapedTransformerBlock(sd.ShapedAttention(mask=sd.padding_mask(4, 3))),
              sd.normalized(sd.ShapedAttention(positions=sd.sinusoidal_gram(4)))]
    for block in blocks:
        config = json.loads(json.dumps(block.config()))
        again = block_from_config(config)
        assert again.config() == config
        assert eqx.tree_equal(again, block) is True
    assert blocks[1].config()["mask"]["kind"] == "custom"
    assert blocks[1].config()["positions"]["kind"] == "custom"
    # without mask and positions the config is what it was before them
    assert set(sd.ShapedAttention().config()) == {"kind", "tau0", "gamma", "heads", "key_dim",
                                                  "causal"}


# -- SDE coefficients -------------------------------------------------------------------------

CASES = {  # (mask, positions, heads, check the cheap noise): every layout of the formulas
    "padding": (MASKS["padding"], None, 2, True),  # rows alike: congruence forms
    "window+Pi": (MASKS["window"], PI, 2, True),  # per-row centring, logits see V + Pi
    "causal-window": (MASKS["causal-window"], None, 2, True),  # per-row, noise_from
    "blocks+Pi": (MASKS["blocks"], PI, 3, False),
    "Pi, heads=inf": (None, PI, math.inf, True),
}


def _coefficients(block: sd.ShapedAttention, noise: bool = True) -> tuple[np.ndarray, ...]:
    """drift, diffusion_cov (and the cheap noise's covariance), compiled once per block."""
    @jax.jit
    def run(V):
        out = (block.drift(V), block.diffusion_cov(V))
        return out + (noise_covariance(block, V),) if noise else out

    return tuple(np.asarray(x, np.float64) for x in run(V))


@pytest.mark.parametrize("case", list(CASES))
def test_coefficients_match_the_reference_and_the_cheap_noise(case):
    """drift and diffusion_cov equal the entry-by-entry reference; the cheap noise has exactly
    the diffusion covariance."""
    mask, positions, heads, noise = CASES[case]
    block = sd.ShapedAttention(mask=mask, positions=positions, tau0=0.8, gamma=0.6,
                               heads=heads)
    allowed = None if mask is None else mask.array
    Pi = None if positions is None else positions.matrix()
    drift, diffusion, *noise_cov = _coefficients(block, noise)
    np.testing.assert_allclose(drift, reference_drift(V64, allowed, Pi, 0.6, 0.8),
                               rtol=2e-5, atol=2e-6)
    S = reference_diffusion(V64, allowed, Pi, 0.6, 0.8, heads)
    np.testing.assert_allclose(diffusion, S, rtol=2e-5, atol=2e-6)
    if noise:
        np.testing.assert_allclose(noise_cov[0], S, rtol=5e-5, atol=5e-6)
    # the mask and the positions do act (not trivially equal to full attention)
    assert np.abs(drift - reference_drift(V64, None, None, 0.6, 0.8)).max() > 1e-2


def test_causal_shortcut_is_the_causal_mask():
    shortcut = sd.ShapedAttention(causal=True, heads=2)
    explicit = sd.ShapedAttention(mask=sd.causal_mask(M), heads=2)
    np.testing.assert_array_equal(shortcut.allowed(M), explicit.allowed(M))
    np.testing.assert_array_equal(shortcut._mask_array(M), explicit._mask_array(M))
    for a, b in zip(_coefficients(shortcut, False), _coefficients(explicit, False), strict=True):
        np.testing.assert_array_equal(a, b)
    assert not shortcut.has_noise_factor and not explicit.has_noise_factor
    assert sd.ShapedAttention().allowed(M) is None  # full attention: the closed forms in H


def test_padding_has_congruence_forms_and_real_tokens_are_autonomous():
    """Every row of a padding mask has the same allowed keys: the drift is B V + V B^T and the
    noise L (G + G^T) L^T (the congruence solver's factors). The real tokens never see the
    padded ones, so their drift and diffusion are those of full attention on them alone."""
    block = sd.ShapedAttention(mask=sd.padding_mask(M, 3), heads=2, tau0=0.8, gamma=0.6)
    real = sd.ShapedAttention(heads=2, tau0=0.8, gamma=0.6)
    assert block.has_noise_factor and block.noise_is_congruence
    L = jnp.asarray(psd_sqrt(V)[0])
    dW = jax.random.normal(jax.random.key(1), (2, M, M))

    @jax.jit
    def forms(V, L, dW):
        B, R = block.drift_split(V)
        G, kappa = block.noise_factor(V, L, dW)
        N = jnp.stack([L @ w @ L.T for w in dW])
        return (B @ V + V @ B.T, block.drift_masked(V), L @ (G + G.T) @ L.T,
                block.noise(V, L, dW), block.noise_from(V, N), kappa, R is None,
                block.drift(V)[:3, :3], real.drift(V[:3, :3]),
                block.diffusion_cov(V)[:3, :3, :3, :3], real.diffusion_cov(V[:3, :3]))

    (congruent, general, factor_noise, noise, noise_from, kappa, no_rest,
     drift3, real_drift, diffusion3, real_diffusion) = forms(V, L, dW)
    assert no_rest
    np.testing.assert_allclose(congruent, general, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(factor_noise, noise, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(noise_from, noise, rtol=1e-5, atol=1e-6)
    # kappa dt I = E[G G^T] for G = c1 dW1 + c2 dW2 K / k, K = (C L)^T (C L)
    CL = (np.diag([1, 1, 1, 0.0]) - np.outer([1, 1, 1, 0], [1, 1, 1, 0]) / 3) @ np.asarray(L)
    K = CL.T @ CL
    c1, c2 = math.sqrt(0.36 * (2 - 0.36) / 2), 0.36 / (0.8 * math.sqrt(2))
    assert float(kappa) == pytest.approx(c1**2 * M + (c2 / 3) ** 2 * np.sum(K * K), rel=1e-5)
    np.testing.assert_allclose(drift3, real_drift, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(diffusion3, real_diffusion, rtol=1e-5, atol=1e-7)
    for other in (sd.ShapedAttention(mask=MASKS["window"]), sd.ShapedAttention(positions=PI)):
        assert not other.has_noise_factor
        with pytest.raises(ValueError, match="no congruence form"):
            other.noise_factor(V, L, dW)


def test_positions_in_compositions_use_each_layers_noise():
    """A composition with positions draws each layer's noise from its own Brownian blocks
    (``noise``: L_Pi dW L^T is not a function of L dW L^T) and keeps the diffusion additive."""
    block = sd.ShapedTransformerBlock(sd.ShapedAttention(positions=PI, mask=MASKS["window"]),
                                      sd.ShapedMLP())
    assert not block.noise_is_congruence and block.position_embedding.same_as(PI)
    assert block.n_noise == 5 + 1
    S, noise_cov = jax.jit(lambda V: (block.diffusion_cov(V), noise_covariance(block, V)))(V)
    np.testing.assert_allclose(noise_cov, S, rtol=5e-5, atol=5e-6)
    with pytest.raises(ValueError, match="noise_from"):
        block.layers[0].noise_from(V, jnp.zeros((5, M, M)))


def test_zero_positional_gram_is_no_positions():
    with_zero = sd.ShapedAttention(mask=MASKS["window"], positions=np.zeros((M, M)))
    np.testing.assert_allclose(
        _coefficients(with_zero, False)[0], reference_drift(V64, MASKS["window"].array),
        rtol=2e-5, atol=2e-6)
