"""The solver's Gaussian noise (``shapedsde.sde._random``) and square root: the Threefry hash is the
standard one, the normals are standard normal, and the Cholesky factor flags matrices that are not
positive definite."""

from __future__ import annotations

import math

import jax
import jax.extend.random as jex_random
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from shapedsde import linalg
from shapedsde.sde import _random

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
    assert np.isfinite(z).all() and np.abs(z).max() < 5.66  # 1 - u >= 2^-23: |z| <= 5.65


def test_streams_differ_by_counter_and_key():
    a, b, c = _normals(1000, 0, 0), _normals(1000, 1, 0), _normals(1000, 0, 1)
    assert abs(np.corrcoef(a, b)[0, 1]) < 4 / math.sqrt(1000)
    assert abs(np.corrcoef(a, c)[0, 1]) < 4 / math.sqrt(1000)
    np.testing.assert_array_equal(a, _normals(1000, 0, 0))


def test_box_muller_pairs_are_independent_normals():
    """float32 normals come in Box-Muller pairs (z_i, z_{i + n/2}) from one hash: the pair is
    jointly standard normal iff its squared radius is Exp(1/2) and its angle uniform, and
    independent of the other pairs."""
    z = _normals(200_000)
    x, y = z[:100_000], z[100_000:]
    assert stats.kstest(x * x + y * y, "expon", args=(0, 2)).pvalue > 0.01
    angle = (np.arctan2(y, x) + np.pi) / (2 * np.pi)
    assert stats.kstest(angle, "uniform").pvalue > 0.01
    se = 1 / math.sqrt(x.size)
    assert abs(np.mean(x * y)) < 4 * se
    assert abs(np.mean(x * x * y * y) - 1) < 4 * math.sqrt(8) * se  # Var(x^2 y^2) = 8
    assert abs(np.corrcoef(x[:-1], x[1:])[0, 1]) < 4 * se  # neighbouring hashes


def test_angle_polynomials_match_cos_and_sin():
    v = jnp.linspace(0.0, 1.0, 100_001, dtype=jnp.float32)[:-1]
    cos, sin = _random._cos_sin_uniform_angle(v)
    phi = 2 * np.pi * np.asarray(v, np.float64) - np.pi
    assert np.abs(np.asarray(cos, np.float64) - np.cos(phi)).max() < 1e-6
    assert np.abs(np.asarray(sin, np.float64) - np.sin(phi)).max() < 1e-6


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


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_normals_at_are_the_streams_normals(dtype):
    """``normals_at`` (the refinement's Brownian tree, read one node at a time) gives the
    entries of ``standard_normal``'s stream at any positions: in float32 across the halves of
    the Box-Muller pairs, for odd and even lengths, and in float64."""
    was = jax.config.jax_enable_x64
    try:
        jax.config.update("jax_enable_x64", dtype == "float64")
        words = jnp.array([3, 9], jnp.uint32)
        for n in (8, 9, 256):
            full = np.asarray(_random.standard_normal(words, jnp.uint32(5), n, dtype))
            positions = np.array([0, n // 2 - 1, n // 2, n // 2 + 1, n - 1], np.uint32)
            got = np.asarray(_random.normals_at(words, jnp.uint32(5), n, jnp.asarray(positions),
                                                dtype))
            assert got.dtype == full.dtype
            np.testing.assert_allclose(got, full[positions], rtol=1e-6, atol=1e-6)
    finally:
        jax.config.update("jax_enable_x64", was)


@pytest.mark.parametrize("m", [3, 8, 9])  # unrolled for m <= 8, LAPACK beyond
def test_cholesky_factor_and_failure_flag(m):
    A = np.random.default_rng(m).standard_normal((3, m, m))
    V = A @ np.swapaxes(A, 1, 2) + 0.1 * np.eye(m)
    V[1] -= 50 * np.eye(m)  # not positive definite
    V[2, 0, 0] = np.nan
    L, ok = linalg.cholesky(jnp.asarray(V, jnp.float32))
    assert ok.tolist() == [True, False, False]
    np.testing.assert_allclose(L[0], np.linalg.cholesky(V[0]), rtol=1e-4, atol=1e-4)
