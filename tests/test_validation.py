"""Every bad input is rejected with an error that names the parameter and its allowed range."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest

import shapedsde as sd

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
