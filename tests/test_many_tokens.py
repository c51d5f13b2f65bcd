"""Many tokens (issue 26): the streamed quasi-Monte Carlo rule of ``nngp_layer`` (the same
numbers as the cached rule, a bounded working set at m = 128) and every simulator at m >= 64
with small path counts."""

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
    # measured in a fresh process: the peak resident memory of one layer at m = 128, the JAX
    # runtime included (0.41 GiB measured; the cached rule's points alone were 8.6 GB). VmHWM,
    # not ru_maxrss: Linux carries ru_maxrss over exec, so a child would report the larger
    # peak of the pytest process that started it
    code = textwrap.dedent("""
        import numpy as np, shapedsde as sd
        V = sd.nngp_layer(sd.StandardAttention(), sd.default_covariance(128, 0.5))
        assert np.isfinite(V).all() and np.allclose(V, V.T)
        status = open("/proc/self/status").read().split("VmHWM:")[1].split()
        print(int(status[0]) * 1024)  # kB
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    peak = int(out.stdout.split()[-1])
    assert peak < GB, f"peak resident memory {peak / GB:.2f} GiB"


# --- every simulator at m = 64 ----------------------------------------------------------------

M = 64
V64 = sd.default_covariance(M, 0.5)
SHAPED = sd.ShapedAttention(tau0=1.0, gamma=0.5)


def check_correlations(traj, n_samples, n_times):
    """Shapes, finite values and unit diagonals of an "rms" run."""
    assert traj.V.shape == (n_samples, n_times, M, M) and traj.n_tokens == M
    assert np.isfinite(traj.V).all() and not traj.exploded.any()
    np.testing.assert_allclose(np.diagonal(traj.V, axis1=-2, axis2=-1), 1.0, atol=1e-4)
    np.testing.assert_allclose(traj.V, np.swapaxes(traj.V, -1, -2), atol=1e-5)


@pytest.mark.parametrize("method", ["reduced", "full"])
def test_networks_at_64_tokens(method):
    net = sd.simulate_network(SHAPED, V64, width=128, depth=8, n_samples=4, n_save=3,
                              key=jax.random.key(0), normalize="rms", method=method)
    check_correlations(net, 4, 3)
    assert net.config["method"] == method


def test_sde_at_64_tokens_records_its_step_error():
    sde = sd.solve_sde(SHAPED, V64, 0.125, key=jax.random.key(1), n_paths=4, dt=1 / 32,
                       n_save=3, normalize="rms")
    check_correlations(sde, 4, 3)
    assert np.isfinite(sde.config["step_error"]["rho"])
    # "auto" takes the congruence solver from 8 tokens on, hot or cool: its steps keep V PSD
    # (Euler's left the cone and took an eigh in ~5% of path-steps at 64 tokens)
    assert sde.config["solver"] == "congruence" and sde.psd_repairs.sum() == 0


def test_auto_solver_is_congruence_from_8_tokens_where_the_block_has_that_form():
    from shapedsde.sde._solve import auto_solver

    hot, causal = sd.ShapedAttention(tau0=0.3, gamma=0.9), sd.ShapedAttention(causal=True)
    assert [auto_solver(SHAPED, SHAPED, m) for m in (2, 7, 8, 128)] == [
        "euler", "euler", "congruence", "congruence"]
    assert auto_solver(hot, hot, 2) == "congruence"
    assert auto_solver(causal, causal, 64) == "euler"  # a mask: no congruence form


def test_infinite_width_simulator_and_kernel_at_64_tokens():
    inf = sd.simulate_infinite_width(sd.StandardAttention(gamma=0.8), V64, depth=2,
                                     n_samples=4, key=jax.random.key(2), normalize="rms")
    check_correlations(inf, 4, 3)
    # rank collapse at one head: every layer raises the mean correlation
    rho = sd.correlation(inf.V).mean(axis=(-2, -1))
    assert np.all(np.diff(rho, axis=1) > 0)
    # the shaped block and the MLP have closed-form maps: no rule, fast at any m
    np.testing.assert_allclose(sd.nngp_kernel(SHAPED, V64, 3)[-1], V64, atol=1e-6)
    assert np.isfinite(sd.nngp_kernel(sd.StandardMLP(), V64, 3)).all()


def test_compare_and_plot_summarise_64_tokens(tmp_path):
    # 2016 pairs: the table has one line per band of token distance, the plot one panel
    sde = sd.solve_sde(SHAPED, V64, 0.125, key=jax.random.key(3), n_paths=8, dt=1 / 32,
                       n_save=2, normalize="rms")
    net = sd.simulate_network(SHAPED, V64, width=64, depth=8, n_samples=8, n_save=2,
                              key=jax.random.key(4), normalize="rms")
    result = sd.compare(sde, net, times=[0.125])
    assert len(result.rows) == M * (M - 1) // 2 + M  # every pair is still compared
    bands = result.by_distance()
    assert [b["quantity"] for b in bands] == [
        "rho |a-b|=1", "rho |a-b|=2", "rho |a-b|=3-4", "rho |a-b|=5-8", "rho |a-b|=9-16",
        "rho |a-b|=17-32", "rho |a-b|=33-63", "V[a,a]"]
    assert sum(b["n"] for b in bands) == len(result.rows)
    assert bands[0]["q_a"][1] > bands[5]["q_a"][1]  # V0 = 0.5^|a-b|: near pairs correlate
    text = str(result)
    assert len(text.splitlines()) < 16 and "summarised by token distance" in text
    png = sd.plot_correlation_bands({"SDE": sde, "network": net}, tmp_path / "bands.png")
    assert png.stat().st_size > 20_000


def test_cli_compare_at_64_tokens(tmp_path, capsys):
    from shapedsde.cli import main

    out = tmp_path / "c.png"
    assert main(["compare", "--tokens", "64", "--paths", "8", "--T", "0.125", "--width", "64",
                 "--dt", "1/32", "--n-save", "2", "--normalize", "rms", "--no-progress",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "rho |a-b|=33-63" in text and "rho[0,1]" not in text
    assert len(text.splitlines()) < 30 and out.exists()


def test_openblas_is_limited_to_one_thread_by_import():
    out = subprocess.run([sys.executable, "-c", "import os, shapedsde; "
                          "print(os.environ['OPENBLAS_NUM_THREADS'])"],
                         capture_output=True, text=True, check=True,
                         env={k: v for k, v in __import__("os").environ.items()
                              if k != "OPENBLAS_NUM_THREADS"})
    assert out.stdout.split()[-1] == "1"


@pytest.mark.slow  # about 30 s: 1000 networks of each kind at m = 64
def test_reduced_and_full_networks_agree_in_law_at_64_tokens():
    from scipy import stats

    kw = dict(width=64, depth=8, n_samples=1000, n_save=2, normalize="rms")
    laws = [sd.correlation(sd.simulate_network(SHAPED, V64, key=jax.random.key(k),
                                               method=method, **kw).V[:, -1])
            for k, method in ((5, "reduced"), (6, "full"))]
    for d in (1, 8, 40):  # a near, a middle and a far pair
        a, b = (rho[:, 10, 10 + d] for rho in laws)
        assert stats.ks_2samp(a, b).pvalue > 1e-3, d
