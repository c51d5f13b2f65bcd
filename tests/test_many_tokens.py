"""Many tokens (issue 26): the streamed quasi-Monte Carlo rule of ``nngp_layer`` (the same
numbers as the cached rule, a bounded working set at m = 128) and every simulator at m >= 64
with small path counts."""

import resource
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import special
from scipy.stats import qmc

import shapedsde as sd
from shapedsde.blocks import _qmc
from shapedsde.blocks._reduced import root

GB = 2**30


def fresh_layer(block, V):
    """block.nngp_layer traced anew (a fresh jit: not the cache of an earlier rule choice)."""
    return np.asarray(jax.jit(lambda V: block.nngp_layer(V))(jnp.asarray(V, jnp.float32)))


# --- the streamed rule ------------------------------------------------------------------------

@pytest.mark.parametrize("dim", [3, 50])
def test_sobol_rows_are_scipys_points_bit_for_bit(dim):
    # the closed form shift XOR D(gray(i)) against scipy's engine (catches a change of the
    # private attributes it reads), whole and from a chunk start inside the sequence
    want = qmc.Sobol(dim, scramble=True, seed=_qmc.SEED).random_base2(14)
    np.testing.assert_array_equal(_qmc.sobol_rows(0, 2**14, dim), want)
    np.testing.assert_array_equal(_qmc.sobol_rows(3 * 1024, 1024, dim), want[3072:4096])
    np.testing.assert_array_equal(_qmc.sobol_rows(0, 512, dim, dim - 2), want[:512, -2:])


@pytest.mark.parametrize("block", [sd.StandardAttention(gamma=0.9),
                                   sd.StandardAttention(key_dim=2, heads=2),
                                   sd.StandardAttention(key_dim=6, causal=True)],
                         ids=["gaussian", "key_dim<m", "key_dim>=m causal"])
def test_streamed_rule_gives_the_cached_rules_numbers(block, monkeypatch):
    # at m = 4 the rule is cached; forced to stream (chunks regenerated inside the layer) it
    # gives the same layer up to float32 rounding (measured: max difference 6e-8)
    V = sd.default_covariance(4, 0.5)
    cached = fresh_layer(block, V)
    assert not _qmc.is_streamed(4, block.key_dim)
    monkeypatch.setattr(_qmc, "CACHE_BYTES", 0)
    assert _qmc.is_streamed(4, block.key_dim)
    np.testing.assert_allclose(fresh_layer(block, V), cached, atol=5e-7)


def test_streamed_rule_at_64_tokens_is_the_mean_over_its_points(monkeypatch):
    # the chunk arithmetic at m = 64 (8 chunks of 512 points), with 2^12 points instead of
    # 2^16 to stay fast: the layer against E[A V A^T] averaged in numpy over the same points
    monkeypatch.setattr(_qmc, "N_POINTS", 2**12)
    monkeypatch.setattr(_qmc, "CACHE_BYTES", 0)
    m, gamma = 64, 0.8
    V = sd.default_covariance(m, 0.5)
    assert _qmc.chunk_points(m, 4) == 512
    have = fresh_layer(sd.StandardAttention(gamma=gamma), V)
    P = special.ndtri(np.clip(_qmc.sobol_rows(0, 2**12, m * m), 1e-12, 1)).reshape(-1, m, m)
    L = np.asarray(root(jnp.asarray(V, jnp.float32)), np.float64)  # the layer's own factor
    S = L @ P @ L.T
    A = np.exp(S - S.max(-1, keepdims=True))
    A /= A.sum(-1, keepdims=True)
    M = (A @ V @ np.swapaxes(A, -1, -2)).mean(0)
    np.testing.assert_allclose(have, (1 - gamma**2) * V + gamma**2 * M, atol=2e-5)


def test_nngp_working_set_at_128_tokens_is_below_one_gigabyte():
    # by the chunk arithmetic: the cached rule is held only up to CACHE_BYTES, the streamed one
    # holds a few chunks (table, uniforms, logits and attention products) and its constants
    assert _qmc.rule_bytes(128, None) == 2**16 * 128**2 * 8  # 8.6 GB if held at once
    for key_dim in (None, 16, 82):
        assert _qmc.is_streamed(128, key_dim)
        for itemsize in (4, 8):
            assert _qmc.streamed_working_bytes(128, key_dim, itemsize) < GB / 4
    assert _qmc.chunk_points(128, 4) == 128 and _qmc.chunk_points(4, 4) == 4096
    biggest_cached = max(m for m in range(2, 129) if not _qmc.is_streamed(m, None))
    assert biggest_cached == 11 and _qmc.CACHE_BYTES <= GB / 16


def test_a_rule_beyond_the_sobol_dimensions_is_a_clear_error():
    with pytest.raises(ValueError, match="21201"):
        sd.nngp_layer(sd.StandardAttention(key_dim=128), sd.default_covariance(128, 0.5))


@pytest.mark.slow  # about 80 s on 2 cores (65536 points of 128 x 128 logits)
def test_nngp_layer_at_128_tokens_measured_within_one_gigabyte():
    # measured in a fresh process: the peak resident memory of one layer at m = 128 (the
    # JAX runtime included; 0.54 GB measured, where the cached rule alone was 8.6 GB)
    code = textwrap.dedent("""
        import resource, numpy as np, shapedsde as sd
        V = sd.nngp_layer(sd.StandardAttention(), sd.default_covariance(128, 0.5))
        assert np.isfinite(V).all() and np.allclose(V, V.T)
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert int(out.stdout.split()[-1]) * 1024 < GB  # ru_maxrss is in KiB on Linux
    assert resource  # the parent's own memory is not what is measured
