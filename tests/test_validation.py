"""Every bad input is rejected with an error that names the parameter and its allowed range."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest

import shapedsde as sd
from shapedsde import validation

V0 = sd.default_covariance(3)
KEY = jax.random.key(0)


@pytest.mark.parametrize("kwargs,match", [
    (dict(gamma=0.0), r"gamma must lie in \(0, 1\]"),
    (dict(gamma=1.5), r"gamma must lie in \(0, 1\]"),
    (dict(gamma=float("nan")), "gamma must be finite"),
    (dict(tau0=0.0), r"tau0 must lie in \(0, inf\)"),
    (dict(tau0=-1.0), "tau0"),
    (dict(tau0=math.inf), "tau0 must be finite"),
    (dict(heads=0), "heads must be an integer >= 1"),
    (dict(heads=2.5), "heads must be an integer"),
    (dict(key_dim=0), "key_dim"),
])
def test_block_parameters(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        sd.ShapedAttention(**kwargs)


def test_type_errors():
    with pytest.raises(TypeError, match="gamma must be a real number"):
        sd.ShapedAttention(gamma="0.5")
    with pytest.raises(TypeError, match="causal must be a bool"):
        sd.ShapedAttention(causal=1)
    with pytest.raises(TypeError, match="block must be a shapedsde Block"):
        sd.drift("attention", V0)
    with pytest.raises(TypeError, match="block must be a shapedsde Block"):
        sd.solve_sde("attention", V0, 1.0, key=KEY)
    with pytest.raises(TypeError, match="block must be a shapedsde Block"):
        sd.simulate_network("attention", V0, width=8, depth=1, n_samples=1, key=KEY)


@pytest.mark.parametrize("V,match", [
    (np.array([[1.0, 2.0], [2.0, 1.0]]), "positive semi-definite"),
    (np.array([[1.0, 0.5], [0.4, 1.0]]), "symmetric"),
    (np.array([[1.0, np.nan], [np.nan, 1.0]]), "NaN"),
    (np.array([[0.0, 0.0], [0.0, 1.0]]), "strictly positive diagonal"),
    (np.ones((2, 3)), "square"),
    (np.ones((1, 1)), "at least m = 2"),
])
def test_bad_covariance(V, match):
    with pytest.raises(ValueError, match=match):
        sd.solve_sde(sd.ShapedAttention(), V, 1.0, key=KEY, progress=False)
    with pytest.raises(ValueError, match=match):
        sd.drift(sd.ShapedAttention(), V)


@pytest.mark.parametrize("kwargs,match", [
    (dict(T=0.0), r"T must lie in \(0, inf\)"),
    (dict(T=float("nan")), "T must be finite"),
    (dict(dt=-0.1), "dt"),
    (dict(n_paths=0), "n_paths must be an integer >= 1"),
    (dict(n_save=1), "n_save must be an integer >= 2"),
    (dict(normalize="layer"), "normalize must be None or 'rms'"),
    (dict(scheme="milstein"), "scheme must be one of"),
    (dict(dtype="float16"), "dtype must be 'float32' or 'float64'"),
])
def test_bad_solver_arguments(kwargs, match):
    args = dict(T=1.0, n_paths=2, progress=False) | kwargs
    T = args.pop("T")
    with pytest.raises((ValueError, TypeError), match=match):
        sd.solve_sde(sd.ShapedAttention(), V0, T, key=KEY, **args)


@pytest.mark.parametrize("kwargs,match", [
    (dict(width=2), "width must be >= number of tokens m = 3"),
    (dict(width=16.5), "width must be an integer"),
    (dict(depth=0), "depth must be an integer >= 1"),
    (dict(n_samples=0), "n_samples"),
    (dict(method="exact"), "method must be one of"),
])
def test_bad_network_arguments(kwargs, match):
    args = dict(width=16, depth=4, n_samples=2, progress=False) | kwargs
    with pytest.raises((ValueError, TypeError), match=match):
        sd.simulate_network(sd.ShapedAttention(), V0, key=KEY, **args)


def test_infinite_heads_rejected_by_finite_network():
    with pytest.raises(ValueError, match="heads=math.inf exists only in the SDE limit"):
        sd.simulate_network(sd.ShapedAttention(heads=math.inf), V0, width=16, depth=2,
                            n_samples=2, key=KEY, progress=False)


# -- issue 16: resources, keys, V0 that the computation's dtype cannot hold -----------------


@pytest.mark.parametrize("key", [0, None, np.uint32(7), jax.random.split(KEY, 3)])
def test_key_must_be_one_prng_key(key):
    with pytest.raises(TypeError, match="key must be a single JAX PRNG key"):
        sd.solve_sde(sd.ShapedAttention(), V0, 1.0, key=key, n_paths=2, progress=False)
    with pytest.raises(TypeError, match="key must be a single JAX PRNG key"):
        sd.simulate_network(sd.ShapedAttention(), V0, width=8, depth=1, n_samples=1, key=key,
                            progress=False)


def test_raw_uint32_key_accepted():
    assert validation.check_key(jax.random.PRNGKey(0)).shape == (2,)


def test_path_indices_must_fit_32_bits():
    # before: first_path = 2**32 silently returned the paths of first_path = 0
    with pytest.raises(ValueError, match=r"first_path \+ n_paths must be <= 2\*\*32"):
        sd.solve_sde(sd.ShapedAttention(), V0, 1.0, key=KEY, n_paths=2, first_path=2**32,
                     progress=False)
    with pytest.raises(ValueError, match=r"first_sample \+ n_samples must be <= 2\*\*32"):
        sd.simulate_network(sd.ShapedAttention(), V0, width=8, depth=1, n_samples=2,
                            first_sample=2**32 - 1, key=KEY, progress=False)


def test_result_larger_than_memory_rejected(monkeypatch):
    monkeypatch.setattr(validation, "available_memory", lambda: 24 * 10**9)
    # 10^8 paths x 11 times x 3 x 3 float32 = 39.6 GB > 80% of 24 GB: refused before any work
    with pytest.raises(ValueError, match=r"39.6 GB.*fewer paths \(n_paths\).*first_path"):
        sd.solve_sde(sd.ShapedAttention(), V0, 1.0, key=KEY, n_paths=10**8, n_save=11,
                     progress=False)
    with pytest.raises(ValueError, match=r"fewer paths \(n_samples\).*first_sample"):
        sd.simulate_network(sd.ShapedAttention(), V0, width=8, depth=10, n_samples=10**8,
                            key=KEY, progress=False)
    assert validation.check_result_size(1000, 11, 3, "float32") == 1000 * 11 * 9 * 4


def test_complex_v0_rejected():
    V = V0.astype(complex)
    V[0, 1], V[1, 0] = 0.5 + 0.1j, 0.5 - 0.1j  # Hermitian, not a real covariance
    with pytest.raises(ValueError, match="V0 must be real"):
        sd.solve_sde(sd.ShapedAttention(), V, 1.0, key=KEY, n_paths=2, progress=False)
    real = validation.check_covariance(V0.astype(complex))  # zero imaginary part: fine
    np.testing.assert_array_equal(real, V0)


def test_v0_that_underflows_in_float32_rejected():
    tiny = 1e-40 * np.eye(2)  # a valid float64 covariance, all zeros in float32
    with pytest.raises(ValueError, match=r"V0's diagonal must lie in .* float32"):
        sd.solve_sde(sd.ShapedAttention(), tiny, 1.0, key=KEY, n_paths=2, progress=False)
    with pytest.raises(ValueError, match="float32"):
        sd.simulate_network(sd.ShapedAttention(), tiny, width=8, depth=1, n_samples=1,
                            key=KEY, progress=False)
    with pytest.raises(ValueError, match="float32"):
        validation.check_covariance(1e38 * np.eye(2), dtype="float32")
    validation.check_covariance(tiny, dtype="float64")  # representable in double precision
