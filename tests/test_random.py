"""The solver's Gaussian noise (``shapedsde._random``): the Threefry hash is the standard one,
the normals are standard normal, and the symmetric draws have the law of (Z + Z^T) / 2."""

from __future__ import annotations

import math

import jax
import jax.extend.random as jex_random
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

import shapedsde as sd
from shapedsde import _random

# Random123 known-answer vectors for Threefry-2x32 with 20 rounds: (key, counter) -> output.
KNOWN_ANSWERS = [
    ((0x00000000, 0x00000000), (0x00000000, 0x00000000), (0x6B200159, 0x99BA4EFE)),
    ((0xFFFFFFFF, 0xFFFFFFFF), (0xFFFFFFFF, 0xFFFFFFFF), (0x1CB996FC, 0xBB002BE7)),
    ((0x13198A2E, 0x03707344), (0x243F6A88, 0x85A308D3), (0xC4923A9C, 0x483DF7A0)),
]


@pytest.mark.parametrize(("key", "counter", "expected"), KNOWN_ANSWERS)
def test_threefry_known_answers(key, counter, expected):
    out = _random.threefry2x32(*(jnp.uint32(k) for k in key), *(jnp.uint32(c) for c in counter))
    assert tuple(int(o) for o in out) == expected


def test_threefry_equals_jax_implementation():
    bits = np.asarray(jax.random.bits(jax.random.key(3), (2, 2, 500), jnp.uint32))
    key, counter = bits[0], bits[1]
    ours = _random.threefry2x32(key[0], key[1], counter[0], counter[1])
    theirs = jex_random.threefry_2x32(key, counter)
    np.testing.assert_array_equal(np.stack(ours), np.asarray(theirs))


def _normals(n: int, counter: int = 0, seed: int = 0) -> np.ndarray:
    words = _random.path_key_words(jax.random.key(seed))
    return np.asarray(_random.standard_normal(words, jnp.uint32(counter), n, jnp.float32))


def test_standard_normal_law():
    z = _normals(200_000)
    se = 1 / math.sqrt(z.size)
    assert abs(z.mean()) < 4 * se
    assert abs(z.var() - 1) < 4 * math.sqrt(2) * se
    assert stats.kstest(z, "norm").pvalue > 0.01
    assert np.isfinite(z).all() and np.abs(z).max() < 6.5


def test_streams_differ_by_counter_and_key():
    a, b, c = _normals(1000, 0, 0), _normals(1000, 1, 0), _normals(1000, 0, 1)
    assert abs(np.corrcoef(a, b)[0, 1]) < 4 / math.sqrt(1000)
    assert abs(np.corrcoef(a, c)[0, 1]) < 4 / math.sqrt(1000)
    np.testing.assert_array_equal(a, _normals(1000, 0, 0))
    np.testing.assert_array_equal(a[:10], _normals(10, 0, 0))  # a prefix of the same stream


def test_float64_normals_use_52_bits():
    was = jax.config.jax_enable_x64
    try:
        jax.config.update("jax_enable_x64", True)
        words = _random.path_key_words(jax.random.key(0))
        z = np.asarray(_random.standard_normal(words, jnp.uint32(0), 50_000, jnp.float64))
        assert z.dtype == np.float64
        assert stats.kstest(z, "norm").pvalue > 0.01
        u = stats.norm.cdf(z)  # float32 would put every u on a grid of spacing 2^-23
        assert np.mean(np.abs(u * 2**23 - np.round(u * 2**23)) > 1e-3) > 0.9
    finally:
        jax.config.update("jax_enable_x64", was)


def test_symmetric_matrices_have_the_law_of_the_symmetric_part():
    m, n = 4, 20_000
    words = jax.vmap(_random.path_key_words)(jax.random.split(jax.random.key(1), n))
    Z = np.asarray(jax.vmap(_random.matrix_normals, (0, None, None, None, None))(
        words, jnp.uint32(7), m, (True, False), jnp.float32))
    S, G = Z[:, 0], Z[:, 1]
    np.testing.assert_array_equal(S, np.swapaxes(S, 1, 2))
    se = math.sqrt(2 / n)  # standard error of a variance estimate
    assert np.abs(np.var(np.diagonal(S, axis1=1, axis2=2), axis=0) - 1).max() < 4 * se
    iu = np.triu_indices(m, 1)
    assert np.abs(np.var(S[:, iu[0], iu[1]], axis=0) - 0.5).max() < 4 * 0.5 * se
    assert np.abs(np.var(G, axis=0) - 1).max() < 4 * se
    rows, cols = np.triu_indices(m)
    flat = np.concatenate([S[:, rows, cols], G.reshape(n, -1)], axis=1)
    corr = np.corrcoef(flat.T) - np.eye(flat.shape[1])
    assert np.abs(corr).max() < 5 / math.sqrt(n)  # all distinct draws uncorrelated


@pytest.mark.parametrize("block", [sd.ShapedAttention(), sd.ShapedAttention(causal=True),
                                   sd.ShapedMLP(), sd.ShapedTransformerBlock()],
                         ids=["attention", "causal", "mlp", "transformer"])
def test_noise_symmetric_flags_are_truthful(block):
    """Where a block declares dW_i symmetric-only, replacing dW_i by its symmetric part leaves the
    noise unchanged; where it does not, it changes it (so the flag is needed as it is)."""
    m = 3
    V = jnp.asarray(sd.default_covariance(m), jnp.float32)
    L = jnp.linalg.cholesky(V)
    dW = jax.random.normal(jax.random.key(0), (block.n_noise, m, m))
    assert len(block.noise_symmetric) == block.n_noise
    base = block.noise(V, L, dW)
    for i, symmetric in enumerate(block.noise_symmetric):
        changed = block.noise(V, L, dW.at[i].set(0.5 * (dW[i] + dW[i].T)))
        if symmetric:
            np.testing.assert_allclose(changed, base, atol=1e-6)
        else:
            assert np.abs(np.asarray(changed - base)).max() > 1e-3
