"""Monte Carlo checks of masks and positional encodings (issue 28), as every block is checked
(SPEC section 7): one-layer moments of the finite layer at two widths against the coefficients,
with controls that must fail (Pi left out, a wrong centring); the cross Gram X P^T / n shrinking
by lambda per layer; the law at T = 1 of the SDE against networks (KS); the exact reduced
simulator with its joint state against the full network; and the NNGP map against a wide
network with many heads.

Targets and controls come from the NumPy reference (``masks_reference``), which
``test_masks.py`` checks against the blocks' own coefficients entry by entry."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from masks_reference import reference_diffusion, reference_drift
from test_reduced import assert_same_law, fast_compile

import shapedsde as sd
from shapedsde.network.moments import one_layer_moments

from helpers import assert_ks_family

pytestmark = pytest.mark.slow

M = 4
PI = sd.decay_gram(M, 0.7)
WINDOW = sd.sliding_window_mask(M, 2)
PADDING = sd.padding_mask(M, 3)
Z_MAX = 4.0

# block, then (mask, Pi) of the right coefficients and of the controls that must be rejected
ONE_LAYER = {
    "window+Pi": (sd.ShapedAttention(key_dim=32, mask=WINDOW, positions=PI),
                  {"right": (WINDOW, PI), "Pi left out": (WINDOW, None),
                   "full centring": (None, PI),
                   "causal-window centring": (sd.sliding_window_mask(M, 2, causal=True), PI)}),
    "padding": (sd.ShapedAttention(key_dim=32, mask=PADDING),
                {"right": (PADDING, None), "full centring": (None, None),
                 "causal centring": (sd.causal_mask(M), None)}),
}
SAMPLES = {64: 6000, 128: 3000}
V_ONE = sd.default_covariance(M, rho=0.5)


@functools.cache
def moments(name: str, width: int):
    return one_layer_moments(ONE_LAYER[name][0], V_ONE, width=width,
                             n_samples=SAMPLES[width], key=jax.random.key(width))


def targets(mask: sd.Mask | None, positions: sd.PositionGram | None):
    allowed = None if mask is None else mask.array
    Pi = None if positions is None else positions.matrix()
    return reference_drift(V_ONE, allowed, Pi), reference_diffusion(V_ONE, allowed, Pi)


@pytest.mark.parametrize("width", list(SAMPLES))
@pytest.mark.parametrize("name", list(ONE_LAYER))
def test_one_layer_moments_and_controls(name, width):
    """n E[dV] and n Cov[dV] of the finite layer match the coefficients within 4 SE; the drift
    of every control (Pi left out, another centring) is rejected."""
    b_hat, S_hat = moments(name, width)
    for label, (mask, positions) in ONE_LAYER[name][1].items():
        b, S = targets(mask, positions)
        s, se = b_hat.projection(b)
        z_b, z_S = b_hat.max_z(b), S_hat.max_z(S)
        s_S, se_S = S_hat.projection(S)
        print(f"{name} width {width} {label}: drift {s:.4f} +- {se:.4f} (max z {z_b:.1f}), "
              f"diffusion {s_S:.4f} +- {se_S:.4f} (max z {z_S:.1f})")
        if label == "right":
            assert abs(s - 1) <= Z_MAX * se and z_b <= Z_MAX
            assert abs(s_S - 1) <= Z_MAX * se_S and z_S <= Z_MAX
        else:
            assert z_b > Z_MAX, f"control {label} not rejected"


def test_cross_gram_shrinks_by_lambda_per_layer():
    """One layer from a cross Gram C0 = X P^T / n != 0 (P and X overlapping): E[C'] = lambda C0
    exactly (the value projection's part has mean zero) and n Var(C'_ab) = gamma^2 (A V A^T)_aa
    Pi_bb -> gamma^2 V_aa Pi_bb. So over depth of order n the cross Gram is gone after O(1)
    layers and the SDE's logits see V + Pi. Controls: C0 itself (no decay) is rejected."""
    width, n_samples, gamma = 64, 4000, 0.6
    block = sd.ShapedAttention(gamma=gamma, positions=PI, key_dim=16)
    V = sd.default_covariance(M, rho=0.5)
    C0 = 0.2 * np.eye(M) + 0.05
    J = np.block([[V, C0], [C0.T, PI.matrix()]])
    lam_J, Q = np.linalg.eigh(J)
    assert lam_J[0] > 0  # a valid joint Gram of [X; P]
    L_J = (Q * np.sqrt(lam_J)) @ Q.T
    XP = np.zeros((2 * M, width))
    XP[:, : 2 * M] = math.sqrt(width) * L_J
    X0, P = (jnp.asarray(XP[:M], jnp.float32), jnp.asarray(XP[M:], jnp.float32))

    @jax.jit
    def cross(keys):
        X1 = jax.vmap(lambda k: block.layer_with_positions(k, X0, P)[0])(keys)
        return X1 @ P.T / width

    with fast_compile():  # one small run: compile time dominates
        C1 = np.asarray(cross(jax.random.split(jax.random.key(5), n_samples)), np.float64)
    mean, se = C1.mean(0), C1.std(0, ddof=1) / math.sqrt(n_samples)
    lam = math.sqrt(1 - gamma**2)
    z = (mean - lam * C0) / se
    print(f"E[C'] - lambda C0: max |z| {np.abs(z).max():.2f}; C0 itself: "
          f"{np.abs((mean - C0) / se).max():.1f}")
    assert np.abs(z).max() < 4.5
    assert np.abs((mean - C0) / se).max() > 4.5
    ratio = width * C1.var(0, ddof=1) / (gamma**2 * np.outer(np.diag(V), np.diag(PI.matrix())))
    print(f"n Var(C') / (gamma^2 V_aa Pi_bb): {ratio.min():.3f} .. {ratio.max():.3f}")
    assert np.all(np.abs(ratio - 1) < 0.15)  # 4000 samples: sd of a variance ratio ~ 2.2%


def test_sde_matches_network_with_padding_window_and_positions():
    """Padding (3 real tokens of 4), a sliding window (w = 2) and a positional Gram at once:
    the real tokens attend to their real neighbours, the padded one to token 2 only, and the
    logits see V + Pi. The SDE (dt = 1/512) against networks of width 128 and depth 128 at
    T = 1 under "rms": every KS test on rho passes (Bonferroni)."""
    mask = PADDING.array & WINDOW.array
    block = sd.ShapedAttention(mask=mask, positions=PI)
    V0 = sd.default_covariance(M)
    sde = sd.solve_sde(block, V0, 1.0, key=jax.random.key(21), dt=1 / 512, n_paths=2000,
                       n_save=3, normalize="rms", progress=False)
    net = sd.simulate_network(block, V0, width=128, depth=128, n_samples=2000, n_save=3,
                              key=jax.random.key(22), normalize="rms", progress=False)
    final = sd.compare(sde, net).final()
    print(final)
    assert_ks_family(final, "rho")


def test_reduced_simulator_with_positions_is_exact():
    """The reduced simulator's joint state (V, C = X P^T / n, Pi) against the full network with
    P on its own coordinates, at width 2 m + 2 (Wishart tails singular), through a Transformer
    block (attention with padding, positions and 2 heads, then the MLP) under "rms"."""
    block = sd.ShapedTransformerBlock(sd.ShapedAttention(heads=2, mask=PADDING, positions=PI))
    kw = dict(width=2 * M + 2, depth=12, n_samples=2000, n_save=2, normalize="rms",
              progress=False)
    with fast_compile():
        full = sd.simulate_network(block, sd.default_covariance(M), key=jax.random.key(0),
                                   method="full", **kw)
        reduced = sd.simulate_network(block, sd.default_covariance(M), key=jax.random.key(1),
                                      **kw)
    assert reduced.config["method"] == "reduced"
    rho = full.correlation()[:, :, 0, 1]
    assert np.mean(np.abs(rho[:, -1] - rho[:, 0])) > 0.02  # the law has moved
    assert_same_law(full, reduced)


def test_nngp_map_with_mask_and_positions_matches_a_wide_network():
    """Standard attention (sliding window, positions) at width 4096 with 16 heads (key width
    256): one layer's mean V' against the NNGP map lambda^2 V + gamma^2 E[A V A^T] with logits
    of Gram V + Pi. Controls: the map without Pi, and without the mask, are rejected."""
    block = sd.StandardAttention(gamma=0.8, heads=16, mask=WINDOW, positions=PI)
    V0 = sd.default_covariance(M, rho=0.5)
    with fast_compile():  # one layer: compile time dominates
        net = sd.simulate_network(block, V0, width=4096, depth=1, n_samples=4000, n_save=2,
                                  key=jax.random.key(9), progress=False)
    samples = net.V[:, -1]
    a, b = np.triu_indices(M)
    mean = samples[:, a, b].mean(0)
    se = samples[:, a, b].std(0, ddof=1) / math.sqrt(len(samples))

    def z(other: sd.Block) -> np.ndarray:
        return (mean - sd.nngp_layer(other, V0)[a, b]) / se

    z_right = z(block)
    z_no_pi = z(sd.StandardAttention(gamma=0.8, mask=WINDOW, positions=np.zeros((M, M))))
    z_no_mask = z(sd.StandardAttention(gamma=0.8, positions=PI))
    print(f"NNGP vs network: max |z| {np.abs(z_right).max():.2f}, rms z "
          f"{np.sqrt(np.mean(z_right**2)):.2f}, {np.sum(np.abs(z_right) <= 1)} of "
          f"{z_right.size} entries within 1 SE; without Pi {np.abs(z_no_pi).max():.1f}; "
          f"without mask {np.abs(z_no_mask).max():.1f}")
    assert np.abs(z_right).max() < 4.5  # Bonferroni over 10 entries
    assert np.abs(z_no_pi).max() > 4.5 and np.abs(z_no_mask).max() > 4.5
