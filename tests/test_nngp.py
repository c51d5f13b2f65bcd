"""Infinite width at fixed depth (SPEC section 8): the blocks' NNGP maps, nngp_layer,
nngp_kernel and simulate_infinite_width, checked against quadrature and finite networks."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

import shapedsde as sd
from shapedsde.blocks.standard_mlp import arccos_kernel
from shapedsde.network.simulate import initial_features

from helpers import ToyBlock

V3 = sd.default_covariance(3, 0.5)
SHAPED = [sd.ShapedAttention(tau0=0.3, gamma=0.9), sd.ShapedAttention(heads=math.inf),
          sd.ShapedAttention(heads=2, key_dim=4, causal=True), sd.ShapedMLP(gamma=0.7),
          sd.ShapedTransformerBlock()]
Z_MAX = 4.5  # |z| bound for Monte Carlo means (Bonferroni over the m(m+1)/2 entries)


def z_scores(samples: np.ndarray, expected: np.ndarray) -> np.ndarray:
    """(sample mean - expected) / standard error, per entry of the upper triangle."""
    a, b = np.triu_indices(expected.shape[-1])
    x = samples[:, a, b]
    return (x.mean(0) - expected[a, b]) / (x.std(0, ddof=1) / math.sqrt(len(x)))


# --- the maps themselves ----------------------------------------------------------------------

@pytest.mark.parametrize("block", SHAPED, ids=lambda b: type(b).__name__)
def test_shaped_blocks_are_the_identity_at_fixed_depth(block):
    V = 2.0 * V3
    np.testing.assert_allclose(sd.nngp_layer(block, V), V, atol=1e-6)
    np.testing.assert_allclose(sd.nngp_layer(block, V, normalize="rms"), V3, atol=1e-6)
    kernel = sd.nngp_kernel(block, V, 5)
    assert kernel.shape == (6, 3, 3)
    np.testing.assert_allclose(kernel, np.broadcast_to(V, kernel.shape), atol=1e-6)
    traj = sd.simulate_infinite_width(block, V, depth=3, n_samples=2, key=jax.random.key(0),
                                      progress=False)
    np.testing.assert_allclose(traj.V, np.broadcast_to(V, traj.V.shape), atol=1e-6)


def test_standard_blocks_are_not_the_identity():
    # the control for the identity test: the unshaped blocks move V by O(1) in one layer
    for block in (sd.StandardAttention(), sd.StandardMLP(), sd.StandardTransformerBlock()):
        assert np.abs(sd.nngp_layer(block, V3) - V3).max() > 0.02


@pytest.mark.slow  # about 6 s
def test_shaped_network_at_fixed_depth_shrinks_onto_the_identity_like_n_to_minus_half():
    # rho_12 after 8 layers of hot shaped attention: spread ~ c / sqrt(n) around rho_12(0)
    block = sd.ShapedAttention(tau0=0.3, gamma=0.9)
    sds = {}
    for width in (64, 1024):
        net = sd.simulate_network(block, V3, width=width, depth=8, n_samples=2000, n_save=2,
                                  normalize="rms", key=jax.random.key(width), progress=False)
        rho = net.correlation()[:, -1, 0, 1]
        sds[width] = rho.std()
        # the median sits at the NNGP value 0.5 up to O(1/n) drift (measured: 0.48, 0.499)
        assert abs(np.median(rho) - 0.5) < 2.0 / math.sqrt(width)
    ratio = sds[64] / sds[1024]  # sqrt(1024 / 64) = 4; SE of the ratio about 3%
    assert 3.5 < ratio < 4.5, ratio


def test_arccos_kernel_against_quadrature():
    sigma = np.array([1.0, 0.7, 1.9])
    for rho in (-0.95, -0.4, 0.0, 0.8, 0.99):
        for a, b in ((0, 1), (1, 2)):
            sa, sb = sigma[a], sigma[b]
            C = np.array([[sa * sa, rho * sa * sb], [rho * sa * sb, sb * sb]])
            density = stats.multivariate_normal(np.zeros(2), C).pdf
            # 2 E[max(u, 0) max(v, 0)] over the positive quadrant (the integrand is smooth)
            value = 2 * integrate.dblquad(lambda v, u, pdf=density: u * v * pdf([u, v]),
                                          0, 12 * sa, 0, 12 * sb, epsabs=1e-10)[0]
            K = np.asarray(arccos_kernel(jnp.asarray(C, jnp.float32)))
            assert abs(K[0, 1] - value) < 2e-6 * sa * sb, (rho, K[0, 1], value)
            np.testing.assert_allclose(np.diag(K), np.diag(C), rtol=1e-6)  # K_aa = V_aa
            # control: the kernel without its sin(theta) term misses by far more
            theta = math.acos(rho)
            assert abs(sa * sb * (math.pi - theta) * rho / math.pi - value) > 1e-2 * sa * sb


def test_nngp_layer_of_the_mlp_is_the_arccos_map_and_rms_keeps_a_correlation():
    block = sd.StandardMLP(gamma=0.6)
    V = np.diag([1.0, 2.0, 0.5]) @ V3 @ np.diag([1.0, 2.0, 0.5])
    K = np.asarray(arccos_kernel(jnp.asarray(V)))
    np.testing.assert_allclose(sd.nngp_layer(block, V), 0.64 * V + 0.36 * K, rtol=1e-5)
    out = sd.nngp_layer(block, V, normalize="rms")
    np.testing.assert_allclose(np.diag(out), 1.0, atol=1e-6)
    assert np.all(out[np.triu_indices(3, 1)] > V3[np.triu_indices(3, 1)])  # ReLU aligns


def test_causal_attention_first_row_attends_to_itself_only():
    V = 1.5 * V3
    out = sd.nngp_layer(sd.StandardAttention(gamma=0.8, causal=True), V)
    assert out[0, 0] == pytest.approx(V[0, 0], rel=1e-6)  # A_0. = e_0 for every logit
    full = sd.nngp_layer(sd.StandardAttention(gamma=0.8), V)
    assert abs(full[0, 0] - V[0, 0]) > 0.05


def test_nngp_kernel_iterates_nngp_layer():
    block = sd.StandardTransformerBlock(sd.StandardAttention(gamma=0.6, key_dim=3),
                                        sd.StandardMLP(gamma=0.4))
    kernel = sd.nngp_kernel(block, V3, 3, normalize="rms")
    assert kernel.shape == (4, 3, 3)
    np.testing.assert_allclose(kernel[0], V3, atol=1e-7)
    for layer in range(3):
        np.testing.assert_allclose(kernel[layer + 1],
                                   sd.nngp_layer(block, kernel[layer], normalize="rms"),
                                   atol=2e-6)
    # composition of the sub-blocks' maps, "rms" after each
    attention, mlp = block.layers
    mid = sd.nngp_layer(attention, V3, normalize="rms")
    np.testing.assert_allclose(kernel[1], sd.nngp_layer(mlp, mid, normalize="rms"),
                               atol=2e-6)
    # rank collapse: every correlation grows towards 1 with depth
    rho = sd.nngp_kernel(block, V3, 30, normalize="rms")[:, 0, 2]
    assert np.all(np.diff(rho) > 0) and rho[-1] > 0.95


# --- the quasi-Monte Carlo rule and the random recursion --------------------------------------

def test_nngp_layer_is_the_mean_of_the_random_single_head_layer():
    # E[V'] of one n = infinity layer is the NNGP map for any H: independent Monte Carlo
    # (40000 single-head layers, SE about 1e-3) against the quasi-Monte Carlo rule
    for block in (sd.StandardAttention(gamma=0.9), sd.StandardAttention(gamma=0.9, key_dim=2)):
        traj = sd.simulate_infinite_width(block, V3, depth=1, n_samples=40000,
                                          key=jax.random.key(3), progress=False)
        expected = sd.nngp_layer(block, V3)
        z = z_scores(traj.V[:, 1], expected)
        assert np.abs(z).max() < Z_MAX, z
        # control: a 2% error in gamma is rejected
        wrong = sd.nngp_layer(sd.StandardAttention(gamma=0.882, key_dim=block.key_dim), V3)
        assert np.abs(z_scores(traj.V[:, 1], wrong)).max() > Z_MAX


def test_spread_of_the_infinite_width_layer_falls_like_one_over_sqrt_heads():
    # one layer: V' - E V' is the mean of H iid heads' terms, so its sd is exactly sd_1 / sqrt H
    sds = []
    for heads in (1, 16):
        traj = sd.simulate_infinite_width(sd.StandardAttention(heads=heads), V3, depth=1,
                                          n_samples=4000, key=jax.random.key(heads),
                                          progress=False)
        sds.append(traj.V[:, 1, 0, 1].std())
    assert 0.9 < sds[0] / sds[1] / 4.0 < 1.1  # SE of the ratio about 2.2%


@pytest.mark.slow  # about 20 s: one compilation per head count for the reduced network
def test_nngp_layer_against_wide_finite_network_with_many_heads():
    # width 1024, 16 heads of key width 64, one layer, exact reduced simulator. The mean of V'
    # is lambda^2 V + gamma^2 E[A V A^T] with logits of key width 64 (O(1/64) from Gaussian)
    block = sd.StandardAttention(gamma=0.9, heads=16)
    net = sd.simulate_network(block, V3, width=1024, depth=1, n_samples=4000, n_save=2,
                              key=jax.random.key(7), progress=False)
    z = z_scores(net.V[:, -1], sd.nngp_layer(block, V3))
    assert np.abs(z).max() < Z_MAX, z  # measured: |z| <= 0.7, SE 5e-4
    for wrong in (sd.StandardAttention(gamma=0.93), sd.StandardAttention(gamma=0.9, key_dim=2)):
        assert np.abs(z_scores(net.V[:, -1], sd.nngp_layer(wrong, V3))).max() > Z_MAX


@pytest.mark.slow  # about 10 s
def test_single_head_recursion_is_the_limit_of_finite_networks_at_fixed_depth():
    # rho_12 after 3 layers of single-head standard attention ("rms"): the KS distance between
    # finite networks and the n = infinity recursion falls with the width (measured: 0.37,
    # 0.18, 0.09 at n = 16, 256, 1024 with 4000 samples; 1% critical value 0.036)
    block = sd.StandardAttention(gamma=0.7)
    key = jax.random.key(11)
    inf = sd.simulate_infinite_width(block, V3, depth=3, n_samples=4000, key=key, n_save=2,
                                     normalize="rms", progress=False)
    rho_inf = inf.correlation()[:, -1, 0, 1]
    ks = []
    for width in (16, 256, 1024):
        net = sd.simulate_network(block, V3, width=width, depth=3, n_samples=4000, n_save=2,
                                  normalize="rms", key=jax.random.fold_in(key, width),
                                  progress=False)
        ks.append(stats.ks_2samp(net.correlation()[:, -1, 0, 1], rho_inf).statistic)
    critical = math.sqrt(-math.log(0.01 / 2) / 2) * math.sqrt(2 / 4000)
    assert ks[0] - ks[1] > critical and ks[1] - ks[2] > critical, ks
    # and the single head's law is far from Gaussian (skewed towards rho = 1)
    assert stats.skew(rho_inf) < -0.5


def test_simulate_infinite_width_layers_keys_and_batches():
    block = sd.StandardAttention(heads=2)
    kw = dict(depth=6, key=jax.random.key(5), normalize="rms", progress=False)
    traj = sd.simulate_infinite_width(block, V3, n_samples=5, **kw)
    np.testing.assert_array_equal(traj.t, np.arange(7.0))  # t = layer index
    assert traj.config["kind"] == "infinite_width" and traj.config["time"] == "layer index"
    assert not traj.exploded.any() and np.isinf(traj.explosion_time).all()
    np.testing.assert_allclose(np.diagonal(traj.V, axis1=-2, axis2=-1), 1.0, atol=1e-5)
    # sample i does not depend on the number of samples or the chunk size (float rounding)
    more = sd.simulate_infinite_width(block, V3, n_samples=7, chunk_size=3, **kw)
    np.testing.assert_allclose(more.V[:5], traj.V, atol=1e-5)
    assert np.abs(traj.V[0] - traj.V[1]).max() > 1e-3  # samples differ
    sparse = sd.simulate_infinite_width(block, V3, n_samples=5, n_save=3, **kw)
    np.testing.assert_array_equal(sparse.t, [0.0, 3.0, 6.0])
    np.testing.assert_allclose(sparse.V, traj.V[:, [0, 3, 6]], atol=1e-6)


# --- the standard MLP's finite layers ---------------------------------------------------------

def test_standard_mlp_finite_layer_mean_is_the_arccos_map_at_any_width():
    # E[V' | V] = lambda^2 V + gamma^2 K(V) exactly (E[F F^T / n] = K(V)), full and reduced
    block = sd.StandardMLP(gamma=0.8)
    expected = sd.nngp_layer(block, V3)
    for method, width in (("full", 16), ("reduced", 64)):
        net = sd.simulate_network(block, V3, width=width, depth=1, n_samples=2000, n_save=2,
                                  method=method, key=jax.random.key(width), progress=False)
        z = z_scores(net.V[:, -1], expected)
        assert np.abs(z).max() < Z_MAX, (method, z)
        # control: the identity map (a shaped MLP at infinite width) is rejected
        assert np.abs(z_scores(net.V[:, -1], V3)).max() > Z_MAX


def test_standard_mlp_control_variate_has_mean_zero():
    block = sd.StandardMLP(gamma=0.8)
    X = jnp.asarray(initial_features(V3, 32), jnp.float32)
    keys = jax.random.split(jax.random.key(0), 2000)
    cv = np.asarray(jax.vmap(lambda k: block.layer_with_control(k, X)[1])(keys))
    z = z_scores(cv, np.zeros((3, 3)))
    assert np.abs(z).max() < Z_MAX, z


# --- bad input ----------------------------------------------------------------------------------

class _NoLimit(ToyBlock):
    has_sde, has_reduced, has_nngp = True, False, False


def test_bad_input_is_rejected_with_named_errors():
    key = jax.random.key(0)
    block = sd.StandardAttention()
    with pytest.raises(TypeError, match="block"):
        sd.nngp_layer("attention", V3)
    with pytest.raises(sd.NoNNGPLimitError, match="_NoLimit"):
        sd.nngp_kernel(_NoLimit(), V3, 2)
    with pytest.raises(ValueError, match="^V must be positive semi-definite"):
        sd.nngp_layer(block, [[1.0, 2.0], [2.0, 1.0]])
    with pytest.raises(ValueError, match="V0 must be symmetric"):
        sd.nngp_kernel(block, np.triu(V3), 2)
    with pytest.raises(ValueError, match="depth"):
        sd.nngp_kernel(block, V3, 0)
    with pytest.raises(TypeError, match="depth"):
        sd.nngp_kernel(block, V3, 2.5)
    with pytest.raises(ValueError, match="normalize"):
        sd.nngp_layer(block, V3, normalize="layer")
    with pytest.raises(ValueError, match="n_samples"):
        sd.simulate_infinite_width(block, V3, depth=2, n_samples=0, key=key)
    with pytest.raises(ValueError, match="n_save"):
        sd.simulate_infinite_width(block, V3, depth=2, n_samples=2, key=key, n_save=1)
    with pytest.raises(ValueError, match="gamma"):
        sd.StandardMLP(gamma=1.5)
    with pytest.raises(sd.NoSDELimitError, match="StandardMLP"):
        sd.drift(sd.StandardMLP(), V3)
    with pytest.raises(sd.NoSDELimitError):
        sd.solve_sde(sd.StandardTransformerBlock(), V3, 1.0, key=key, n_paths=2)
    with pytest.raises(TypeError, match="attention"):
        sd.StandardTransformerBlock(attention=sd.ShapedAttention())
    with pytest.raises(TypeError, match="mlp"):
        sd.StandardTransformerBlock(mlp=sd.ShapedMLP())
