"""Behaviour is preserved: every simulator reproduces the golden set recorded before the
solver was redesigned (``tests/golden_cases.py``), arrays to 1e-8 relative (an absolute
floor of 1e-12 times the array's scale, for entries near zero) and flags and counts exactly,
in float64.

Every case is one compilation of its own (5-40 s on 2 cores), so the fast set (``make test``)
checks one case of each kind of code: each solver, both "rms" schemes, the step control,
refined hot paths, a mask, infinitely many heads, both network simulators, the
infinite-width simulator and ``nngp_kernel``. The others are marked slow (``make
test-all``)."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from golden_cases import CASES, GOLDEN

EXACT = ("exploded", "psd_repairs", "solver", "coupled_paths")
FAST = {"sde/congruence/raw", "sde/euler/rms", "sde/congruence/rms", "sde/euler/rms-ito",
        "sde/auto/hot-rms", "sde/refined/congruence", "sde/causal/rms", "sde/heads-inf",
        "net/attention/reduced-rms", "net/transformer/full-rms", "inf/standard-transformer",
        "nngp/standard-attention", "nngp/standard-transformer-rms", "nngp/shaped"}
assert FAST <= set(CASES), FAST - set(CASES)


@pytest.fixture(scope="module")
def golden():
    with np.load(GOLDEN) as data:
        return {k: data[k] for k in data.files}


@pytest.mark.parametrize("name", [
    name if name in FAST else pytest.param(name, marks=pytest.mark.slow) for name in CASES])
def test_golden_case_is_reproduced(name, golden):
    was = jax.config.jax_enable_x64
    try:
        got = CASES[name]()
    finally:
        jax.config.update("jax_enable_x64", was)
    expected = {k.split(":", 1)[1]: v for k, v in golden.items() if k.split(":", 1)[0] == name}
    assert set(got) == set(expected), name
    for field, want in expected.items():
        have = np.asarray(got[field])
        assert have.shape == want.shape, (name, field)
        if field in EXACT or want.dtype.kind in "biuU":
            np.testing.assert_array_equal(have, want, err_msg=f"{name}: {field}")
        else:
            finite = np.isfinite(want)
            np.testing.assert_array_equal(np.isfinite(have), finite, err_msg=f"{name}: {field}")
            scale = float(np.max(np.abs(want[finite]), initial=1.0))
            np.testing.assert_allclose(have[finite], want[finite], rtol=1e-8,
                                       atol=1e-12 * scale, err_msg=f"{name}: {field}")
            np.testing.assert_array_equal(have[~finite], want[~finite])
