"""The exact reduced simulator (SPEC section 4) against the full network of real weight matrices.

The reduced simulator claims to sample V_{l+1} given V_l with exactly the law of the full network
at every width, so two-sample KS tests between ``method="full"`` (key 0) and the reduced
simulator (key 1, requested as ``method="auto"``, which must pick it) must not reject: at the
final time, for each off-diagonal correlation rho[a,b], each diagonal entry V[a,a] (both from
``compare``) and each off-diagonal entry V[a,b] (helper below).
Every block kind (shaped and standard attention with heads and causal masks, the shaped MLP,
the Transformer block; with and without "rms"). Widths m + 2 = 6 (the Wishart tail is then
singular and the key width per head can be < m) and 64; every statistical case draws 2000
samples per method.

Multiple testing: a case runs up to 16 KS tests (6 rho, 4 diagonal V, 6 off-diagonal V; fewer
under "rms", where V[a,a] = 1 is constant). We assert min p >= 0.01 / (number of tests), the
Bonferroni bound, so each case falsely fails with probability <= 0.01 (the seeds are fixed, so
the outcome is deterministic). A negative control (reduced with gamma = 0.6 against full with
gamma = 0.5) checks that the same tests, at the same sample size, have power.
"""

from __future__ import annotations

import contextlib
import functools

import jax
import numpy as np
import pytest
from scipy import stats

import shapedsde as sd
from shapedsde import ShapedAttention, StandardAttention
from shapedsde.analysis.metrics import offdiag_pairs

M = 4
N_SAMPLES = 2000
FAMILY_LEVEL = 0.01
DEPTH = {6: 8, 64: 16}  # t = depth / width = 1.33 at width 6, 0.25 at width 64

BLOCKS = {
    "shaped": (ShapedAttention(), None),
    "shaped-rms": (ShapedAttention(), "rms"),
    "shaped-2heads": (ShapedAttention(heads=2), None),
    "shaped-causal": (ShapedAttention(causal=True), None),
    "standard": (StandardAttention(), None),
    "standard-2heads-causal": (StandardAttention(heads=2, causal=True), None),
    "mlp": (sd.ShapedMLP(c_plus=0.5, c_minus=-2.0), None),
    "mlp-rms": (sd.ShapedMLP(), "rms"),
    "transformer": (sd.ShapedTransformerBlock(ShapedAttention(heads=2), sd.ShapedMLP()), None),
    "transformer-rms": (sd.ShapedTransformerBlock(), "rms"),
}


@contextlib.contextmanager
def fast_compile(enabled: bool = True):
    """Compile with most XLA optimisations off while inside (restored on exit).

    Every (block, width, method) is one compilation; on a 2-core CPU the reduced simulator takes
    5-10 s to compile optimised (threefry and gamma samplers) but runs 2000 x 16 layers in well
    under a second, so for these tests compile time dominates and -O0-like code is faster
    overall. Only the full network at width 64 (random-number bound) keeps the optimiser.
    The flag only changes code generation, not the sampled law."""
    name = "jax_disable_most_optimizations"
    old = jax.config.read(name)
    jax.config.update(name, enabled)
    try:
        yield
    finally:
        jax.config.update(name, old)


@functools.cache
def simulate(case: str, width: int, method: str, gamma: float | None = None) -> sd.Trajectories:
    """Final-time samples of one case; cached so the negative control reuses the full run.

    The reduced side runs with method="auto", which must resolve to "reduced"."""
    block, normalize = BLOCKS[case]
    if gamma is not None:
        block = ShapedAttention(gamma=gamma)
    seed = {"full": 0, "auto": 1}[method]
    # A single compilation per (block, width, method): equal chunks, n_save = 2. The full
    # network at width 64 runs faster in chunks of 250 (its weights then fit in cache).
    chunk_size = 250 if method == "full" and width > 8 else N_SAMPLES
    with fast_compile(enabled=not (method == "full" and width > 8)):
        return sd.simulate_network(
            block, sd.default_covariance(M), width=width, depth=DEPTH[width],
            n_samples=N_SAMPLES, key=jax.random.key(seed), n_save=2, normalize=normalize,
            method=method, chunk_size=chunk_size, progress=False)


def offdiag_v_pvalues(a: sd.Trajectories, b: sd.Trajectories) -> dict[str, float]:
    """KS p-values of the off-diagonal entries V[p,q] (p < q) at the final time (exploded paths
    dropped; entries constant in both samples are skipped)."""
    Va, Vb = a.valid().V[:, -1], b.valid().V[:, -1]
    out = {}
    for p, q in offdiag_pairs(Va.shape[-1]):
        x, y = Va[:, p, q], Vb[:, p, q]
        if np.ptp(np.concatenate([x, y])) > 1e-6:
            out[f"V[{p},{q}]"] = float(stats.ks_2samp(x, y).pvalue)
    return out


def all_pvalues(a: sd.Trajectories, b: sd.Trajectories) -> dict[str, float]:
    """Every informative final-time KS p-value: rho[p,q], V[p,p] (from ``compare``), V[p,q]."""
    final = sd.compare(a, b).final()
    pvals = {r.quantity: r.pvalue for r in final.rows if not r.degenerate}
    return pvals | offdiag_v_pvalues(a, b)


def assert_same_law(full: sd.Trajectories, reduced: sd.Trajectories) -> None:
    pvals = all_pvalues(full, reduced)
    n_tests = len(pvals)
    assert n_tests >= 12
    worst = min(pvals, key=pvals.get)
    # Bonferroni: P(some p < FAMILY_LEVEL / n_tests) <= FAMILY_LEVEL when the laws agree.
    assert pvals[worst] >= FAMILY_LEVEL / n_tests, (
        f"{worst}: p = {pvals[worst]:.3g} < {FAMILY_LEVEL} / {n_tests}; all: {pvals}")


@pytest.mark.slow
@pytest.mark.parametrize("width", [6, 64])
@pytest.mark.parametrize("case", list(BLOCKS))
def test_reduced_matches_full(case: str, width: int) -> None:
    full, reduced = simulate(case, width, "full"), simulate(case, width, "auto")
    assert full.config["method"] == "full" and reduced.config["method"] == "reduced"
    assert full.V.shape == reduced.V.shape == (N_SAMPLES, 2, M, M)
    # the law has moved away from the point mass at V0 (otherwise the test would be vacuous)
    rho = sd.correlation(full.V)[:, :, 0, 1]
    assert np.mean(np.abs(rho[:, -1] - rho[:, 0])) > 0.02
    assert full.exploded.sum() == reduced.exploded.sum() == 0
    assert_same_law(full, reduced)


@pytest.mark.slow
def test_negative_control_has_power() -> None:
    """Reduced with gamma = 0.6 against full with gamma = 0.5 (width 6): must be rejected."""
    full = simulate("shaped", 6, "full")
    wrong = simulate("shaped", 6, "auto", gamma=0.6)
    pvals = all_pvalues(full, wrong)
    assert min(pvals.values()) < 1e-4, pvals


def test_method_selection_and_batch_independence() -> None:
    block, V0 = ShapedAttention(), sd.default_covariance(M)
    assert block.has_reduced and StandardAttention(heads=2, causal=True).has_reduced
    kw = dict(width=6, depth=3, key=jax.random.key(7), n_save=4, progress=False)
    with pytest.raises(ValueError, match="method"):
        sd.simulate_network(block, V0, n_samples=5, method="bogus", **kw)
    with fast_compile():  # two compilations: chunks of 3 (padded to 6 for n_samples=5) and 20
        small = sd.simulate_network(block, V0, n_samples=5, chunk_size=3, **kw)
        big = sd.simulate_network(block, V0, n_samples=20, method="reduced", **kw)
        chunked = sd.simulate_network(block, V0, n_samples=20, method="reduced", chunk_size=3,
                                      **kw)
    assert small.config["method"] == "reduced"  # "auto" picks the reduced simulator
    assert small.V.shape == (5, 4, M, M) and big.V.shape == chunked.V.shape == (20, 4, M, M)
    # the saved V have moved and differ between samples
    assert np.ptp(small.V[:, -1, 0, 1]) > 0
    np.testing.assert_allclose(big.V[:5], small.V, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(chunked.V, big.V, rtol=1e-6, atol=1e-7)
