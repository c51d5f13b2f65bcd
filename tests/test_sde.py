"""The SDE solver: determinism, batch independence, diffrax's contracts (``diffeqsolve`` runs
the package's solvers), the refinement wrapper, state-space guards, blow-up, weak convergence
on a case with a known answer."""

from __future__ import annotations

import contextlib
import itertools
import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import shapedsde as sd

V0 = sd.default_covariance(3)
BLOCK = sd.ShapedAttention()
KW = dict(T=0.25, dt=1 / 64, n_save=5, progress=False)


def test_saved_times_include_zero_and_T():
    tr = sd.solve_sde(BLOCK, V0, key=jax.random.key(0), n_paths=4, **KW)
    np.testing.assert_allclose(tr.t, np.linspace(0, 0.25, 5), atol=1e-7)
    np.testing.assert_allclose(tr.V[:, 0], np.broadcast_to(V0, (4, 3, 3)), atol=1e-6)
    assert tr.V.shape == (4, 5, 3, 3) and tr.config["kind"] == "sde"


def test_same_key_same_paths_other_key_other_paths():
    a = sd.solve_sde(BLOCK, V0, key=jax.random.key(3), n_paths=8, **KW)
    b = sd.solve_sde(BLOCK, V0, key=jax.random.key(3), n_paths=8, **KW)
    c = sd.solve_sde(BLOCK, V0, key=jax.random.key(4), n_paths=8, **KW)
    np.testing.assert_array_equal(a.V, b.V)
    assert np.max(np.abs(a.V[:, -1] - c.V[:, -1])) > 1e-3


@pytest.mark.parametrize("normalize", [None, "rms"])
def test_path_does_not_depend_on_batch_or_chunk_size(normalize):
    small = sd.solve_sde(BLOCK, V0, key=jax.random.key(1), n_paths=3, normalize=normalize,
                         **KW)
    big = sd.solve_sde(BLOCK, V0, key=jax.random.key(1), n_paths=10, chunk_size=4,
                       normalize=normalize, **KW)
    np.testing.assert_allclose(small.V, big.V[:3], rtol=1e-6, atol=1e-6)


def test_refined_paths_do_not_depend_on_their_batch():
    """Hot un-normalised attention, where many paths are refined in groups: a path's result
    (its state and its explosion time) is the same in batches of 8 and of 128, though its
    refinement group holds other paths (a group's depth once cut the substeps of its paths)."""
    hot = sd.ShapedAttention(tau0=0.3, gamma=0.9)
    kw = dict(T=2.0, dt=1 / 64, n_save=2, n_paths=128, solver="congruence", progress=False)
    big = sd.solve_sde(hot, np.eye(2), key=jax.random.key(2), **kw)
    small = sd.solve_sde(hot, np.eye(2), key=jax.random.key(2), chunk_size=8, **kw)
    assert 0.02 < big.exploded_fraction < 0.5  # refinement was at work
    np.testing.assert_array_equal(small.exploded, big.exploded)
    np.testing.assert_allclose(small.explosion_time, big.explosion_time)
    np.testing.assert_allclose(small.V, big.V, rtol=1e-6, atol=1e-6)


def test_highest_is_top_k():
    """``_batching.highest`` (the groups of ``in_groups``: PSD repairs, refinement levels and
    walks) picks the paths that ``jax.lax.top_k`` picks, in its order (largest first, equal
    ones by index), at a fraction of its CPU cost; a wrong tie order is told apart."""
    from shapedsde._batching import highest

    rng = np.random.default_rng(0)
    for size, (B, share) in itertools.product((1, 2, 8, 32), ((8, 1.0), (64, 0.3), (1024, 0.01))):
        p = jnp.asarray(rng.integers(0, 4, B) * (rng.random(B) < share), jnp.int32)
        size = min(size, B)
        np.testing.assert_array_equal(highest(p, size), jax.lax.top_k(p, size)[1])
    ties = jnp.asarray([0, 2, 1, 2, 0], jnp.int32)
    np.testing.assert_array_equal(highest(ties, 4), [1, 3, 2, 0])  # not [3, 1, 2, 4]


def test_refined_paths_do_not_depend_on_the_group_size():
    """The refinement's group size (``Refined.group``, default ``group_size``: pairs from 3
    tokens on) is a matter of cost only: hot paths of 3 tokens refined in groups of 8 and in
    pairs agree. In float64, to 1e-9 (seen: equal); in float32 the lanes of 8 and of 2 round
    differently and the hot paths amplify it to about 1e-4."""
    import dataclasses

    from shapedsde.sde import _refinement as refinement
    from shapedsde.sde import solve

    with float64():
        V0 = jnp.asarray(sd.default_covariance(3), jnp.float64)
        hot, refined = _hot_solver("congruence", V0)
        assert refined.group is None and refinement.group_size(3) == 2
        assert refinement.group_size(64) == 1 and refinement.level_group(64) == 4
        ts = jnp.asarray([0.0, 2.0])
        pairs = solve(refined, hot, V0, ts, 128, key=jax.random.key(4), n_paths=64)
        eights = solve(dataclasses.replace(refined, group=8), hot, V0, ts, 128,
                       key=jax.random.key(4), n_paths=64)
    with pytest.raises(ValueError, match="group"):
        dataclasses.replace(refined, group=0)
    exploded = pairs.t_explode >= 0
    assert 0.02 < exploded.mean() < 0.5  # refinement was at work
    np.testing.assert_array_equal(eights.t_explode >= 0, exploded)
    np.testing.assert_allclose(eights.t_explode, pairs.t_explode, rtol=1e-12)
    np.testing.assert_allclose(eights.V, pairs.V, rtol=1e-9, atol=1e-12)


@contextlib.contextmanager
def float64():
    """x64 on inside (process-wide; restored on exit)."""
    was = jax.config.jax_enable_x64
    jax.config.update("jax_enable_x64", True)
    try:
        yield
    finally:
        jax.config.update("jax_enable_x64", was)


def _hot_solver(solver: str, V0: jax.Array):
    import jax.numpy as jnp

    from shapedsde.sde import make_solver

    hot = sd.blocks.traced_parameters(sd.ShapedAttention(tau0=0.3, gamma=0.9), V0.dtype)
    return hot, make_solver(solver, hot, V0, normalized=False, bound=jnp.asarray(1e3, V0.dtype))


def test_refined_step_redoes_the_hot_paths_where_its_state_says():
    """``Refined.step`` is the wrapped solver's step, redone in substeps for the paths above
    the calm scale where its state says some path may need it. From a state with one path far
    above it, the refined and the plain steps differ for that path only; with the state
    saying no path needs it, the step is the wrapped solver's."""
    import equinox as eqx

    from shapedsde.sde import MatrixBrownianPath, covariance_terms

    V0 = jnp.eye(2, dtype=jnp.float32)
    hot, refined = _hot_solver("congruence", V0)
    words = jnp.array([[3, 7], [11, 5], [1, 2], [9, 4]], jnp.uint32)
    terms = covariance_terms(hot, MatrixBrownianPath(words, 1 / 256, hot.n_noise, 2, "float32"))
    y, (state, _) = refined.start(V0, 4)
    assert isinstance(refined.solver, sd.sde.RootCongruenceEuler)  # its state y is a root of V
    y = y * jnp.sqrt(jnp.array([3.0, 1.0, 1.0, 1.0])[:, None, None])  # level 3 at the start

    @eqx.filter_jit  # one compilation: op by op, the step's loops compile one by one
    def steps(refined, terms, y, state, hot, calm):
        args = (terms, jnp.float32(3 / 256), jnp.float32(4 / 256), y, None)
        return (refined.solver.step(*args, state, False)[0],
                refined.step(*args, (state, hot), False),
                refined.step(*args, (state, calm), False)[0])

    plain, redone, kept = steps(refined, terms, y, state, jnp.bool_(True), jnp.bool_(False))
    assert bool(redone[3][1])  # still hot
    assert not np.allclose(plain[0], redone[0][0], rtol=1e-3)
    # the cond's branches compile apart: equal up to float32 rounding
    np.testing.assert_allclose(plain[1:], redone[0][1:], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(kept, plain, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("solver", ["euler", "congruence"])
def test_diffeqsolve_runs_the_package_solvers_as_the_driver_does(solver):
    """diffrax's contracts: ``diffrax.diffeqsolve`` with ``ConstantStepSize`` drives the
    package's solvers on its terms and Brownian path and gives the driver's paths (float64,
    hot attention; diffrax accumulates its step times with its own rounding, so equal to
    1e-9): the guarded Euler alone, and the congruence step inside the refinement wrapper
    with refinement at work (its state is a root of V, saved as V by ``SaveAt``'s ``fn``,
    as the driver saves it). diffrax's own Euler runs on the same terms and path too:
    unguarded, it agrees with the guarded Euler on the paths that stay inside the PSD cone
    and below the bound."""
    import diffrax

    from shapedsde.sde import MatrixBrownianPath, covariance_terms, solve

    with float64():
        V0 = jnp.asarray(sd.default_covariance(3), jnp.float64)
        hot, refined = _hot_solver(solver, V0)
        step_solver = refined.solver if solver == "euler" else refined
        n, T, steps = 16, 1.0, 64
        key = jax.random.key(3)
        ts = jnp.asarray([0.0, 0.5, 1.0])
        ours = solve(step_solver, hot, V0, ts, steps // 2, key=key, n_paths=n, chunk_size=n)

        keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n, dtype=jnp.uint32))
        words = jax.vmap(lambda k: jax.random.bits(k, (2,), jnp.uint32))(keys)
        terms = covariance_terms(hot, MatrixBrownianPath(words, T / steps, 2, 3, "float64"))
        y0 = step_solver.start(V0, n)[0]

        def with_diffrax(diffrax_solver, covariance=step_solver.covariance):
            saveat = diffrax.SaveAt(ts=ts, fn=lambda t, y, args: covariance(y))
            solution = diffrax.diffeqsolve(terms, diffrax_solver, 0.0, T, T / steps, y0,
                                           saveat=saveat,
                                           stepsize_controller=diffrax.ConstantStepSize(),
                                           max_steps=steps + 1)
            return np.swapaxes(np.asarray(solution.ys), 0, 1)

        np.testing.assert_allclose(with_diffrax(step_solver), ours.V, rtol=1e-9, atol=1e-12)
        if solver == "euler":
            inside = (ours.repairs == 0) & (ours.t_explode < 0)
            assert inside.sum() >= n // 2
            plain = with_diffrax(diffrax.Euler(), lambda y: y)
            np.testing.assert_allclose(plain[inside], ours.V[inside], rtol=1e-9, atol=1e-12)
        else:
            peak = np.diagonal(ours.V, axis1=2, axis2=3).max(axis=(1, 2))
            assert (peak > float(refined.calm)).any()  # paths in the refinement's range


def _root(m: int, seed: int) -> np.ndarray:
    """A square root of a random correlation-like V that is not triangular (L Q, Q
    orthogonal): the root solver's state is any root, not a Cholesky factor."""
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((m, m))
    L = np.linalg.cholesky(A @ A.T / m + 0.2 * np.eye(m))
    return L @ np.linalg.qr(rng.standard_normal((m, m)))[0]


@pytest.mark.parametrize("block, m", [
    (sd.ShapedAttention(tau0=0.8, gamma=0.6), 5),
    (sd.ShapedAttention(tau0=0.8, gamma=0.6, heads=3), 20),
    (sd.ShapedAttention(heads=math.inf), 6),
    (sd.ShapedAttention(mask=sd.padding_mask(6, 4), heads=2, tau0=0.8, gamma=0.6), 6),
    (sd.Serial(sd.ShapedAttention(gamma=0.3), sd.ShapedAttention(gamma=0.4, heads=2)), 9),
])
def test_root_coefficients_are_the_congruence_parts_of_v(block, m):
    """``root_coefficients`` (B L, G, kappa from a root L alone, B L in O(m^2)) equals B @ L
    and ``noise_factor``'s (G, kappa) of V = L L^T (float64); the check rejects the same
    parts of a block whose gamma is 1% off (control)."""
    with float64():
        L = jnp.asarray(_root(m, m))
        dW = jax.random.normal(jax.random.key(m), (block.n_noise, m, m), jnp.float64)
        V = L @ L.T

        def parts(block):
            B, R = block.drift_split(V)
            assert R is None
            return (B @ L, *block.noise_factor(V, L, dW))

        ours = jax.jit(block.root_coefficients)(L, dW)
        wanted = parts(block)
        off = parts(eqx.tree_at(lambda b: b.gamma, block, block.gamma * 1.01)
                    if not isinstance(block, sd.Serial) else
                    sd.Serial(*(eqx.tree_at(lambda b: b.gamma, x, x.gamma * 1.01)
                                for x in block.layers)))
    assert block.drift_is_congruence
    for have, want, wrong in zip(ours, wanted, off, strict=True):
        np.testing.assert_allclose(have, want, rtol=1e-12, atol=1e-13)
        assert not np.allclose(have, wrong, rtol=1e-6, atol=1e-8)


def test_root_coefficients_refuse_a_drift_that_is_no_congruence():
    causal = sd.ShapedAttention(causal=True)
    assert not causal.drift_is_congruence
    L = jnp.eye(3)
    with pytest.raises(ValueError, match="not a congruence direction"):
        causal.root_coefficients(L, jnp.zeros((2, 3, 3)))


@pytest.mark.parametrize("normalized", [False, True])
def test_root_congruence_paths_are_the_congruence_paths(normalized):
    """The root solver (state L, three products a step) and ``CongruenceEuler`` (state V) are
    one scheme: the same paths of a key to rounding (float64), raw with hot attention whose
    paths are refined and blow up (the same blow-up times), and "rms" at 12 tokens. Its
    state's rows normalised, V's diagonal is exactly 1."""
    from shapedsde.sde import CongruenceEuler, Refined, RootCongruenceEuler, calm_scale, solve

    block = sd.ShapedAttention() if normalized else sd.ShapedAttention(tau0=0.3, gamma=0.9)
    m = 12 if normalized else 3
    with float64():
        V0 = jnp.asarray(sd.default_covariance(m), jnp.float64)
        ts = jnp.asarray([0.0, 1.0, 2.0])
        out = []
        for cls in (CongruenceEuler, RootCongruenceEuler):
            solver = cls(normalized=normalized, bound=jnp.asarray(1e3, jnp.float64))
            if not normalized:
                solver = Refined(solver, calm_scale(block.drift, V0))
            out.append(solve(solver, block, V0, ts, 32, key=jax.random.key(7), n_paths=32))
    V, root = out
    if normalized:
        np.testing.assert_array_equal(np.diagonal(root.V, axis1=2, axis2=3), 1.0)
    else:
        assert 0 < (root.t_explode >= 0).sum() < 32  # hot: some paths blow up, not all
    np.testing.assert_array_equal(root.t_explode, V.t_explode)
    np.testing.assert_allclose(root.V, V.V, rtol=1e-9, atol=1e-12)
    assert root.repairs.sum() == 0
    with pytest.raises(ValueError, match="ConstantStepSize"):  # no vector field of a root
        RootCongruenceEuler(normalized=normalized, bound=jnp.asarray(1e3)).func(
            None, 0.0, jnp.eye(2)[None], None)


def test_first_path_continues_the_same_run():
    """Paths first_path, ... of a call are those paths of a larger call (to split runs)."""
    whole = sd.solve_sde(BLOCK, V0, key=jax.random.key(5), n_paths=7, **KW)
    tail = sd.solve_sde(BLOCK, V0, key=jax.random.key(5), n_paths=3, first_path=4, **KW)
    np.testing.assert_allclose(tail.V, whole.V[4:], rtol=1e-6, atol=1e-6)
    # the sample indexing is shared by both simulators; "full" compiles faster at width 8
    net = dict(width=8, depth=4, key=jax.random.key(5), method="full", progress=False)
    whole = sd.simulate_network(BLOCK, V0, n_samples=5, **net)
    tail = sd.simulate_network(BLOCK, V0, n_samples=2, first_sample=3, **net)
    np.testing.assert_allclose(tail.V, whole.V[3:], rtol=1e-6, atol=1e-6)


def test_too_many_steps_for_float32_is_refused():
    with pytest.raises(ValueError, match="steps exceeds"):
        sd.solve_sde(BLOCK, V0, 1.0, dt=2.0**-31, key=jax.random.key(0), n_paths=1,
                     progress=False)


def _backend_compiles(fn) -> int:
    events: list[str] = []

    def listener(event: str, duration: float, **kwargs) -> None:
        if event == "/jax/core/compile/backend_compile_duration":
            events.append(event)

    jax.monitoring.register_event_duration_secs_listener(listener)
    try:
        fn()
    finally:
        jax.monitoring.unregister_event_duration_listener(listener)
    return len(events)


def test_repeated_calls_with_the_same_shapes_do_not_recompile():
    """Keys, V0 values, T and dt at the same number of steps, and the blow-up bound are traced
    values: after the first call nothing is compiled again."""
    kw = dict(n_paths=4, n_save=5, progress=False)
    sd.solve_sde(BLOCK, V0, 0.25, key=jax.random.key(0), dt=1 / 64, **kw)
    V1 = sd.default_covariance(3, rho=0.3)
    assert _backend_compiles(lambda: sd.solve_sde(
        BLOCK, 2.0 * V1, 0.5, key=jax.random.key(1), dt=1 / 32, blowup_bound=50.0, **kw)) == 0
    net = dict(width=8, depth=4, n_samples=3, progress=False)
    sd.simulate_network(BLOCK, V0, key=jax.random.key(0), **net)
    assert _backend_compiles(lambda: sd.simulate_network(
        BLOCK, 2.0 * V1, key=jax.random.key(1), blowup_bound=50.0, **net)) == 0


@pytest.mark.parametrize("scheme", ["project", "ito"])
def test_rms_paths_are_correlation_matrices(scheme):
    tr = sd.solve_sde(sd.ShapedAttention(gamma=0.9, tau0=0.5), V0, key=jax.random.key(2),
                      n_paths=64, normalize="rms", scheme=scheme, **KW)
    d = np.diagonal(tr.V, axis1=-2, axis2=-1)
    np.testing.assert_allclose(d, 1.0, atol=1e-5)
    assert np.all(np.abs(tr.V) <= 1 + 1e-5)
    assert np.min(np.linalg.eigvalsh(tr.V.astype(np.float64))) > -1e-5


def test_blow_up_is_frozen_flagged_and_timed():
    """Hot attention (tau0 = 0.2) from a large V0: the cubic drift explodes in finite time."""
    block = sd.ShapedAttention(tau0=0.2, gamma=0.9)
    V = 3.0 * np.array([[1.0, 0.1, -0.2], [0.1, 1.0, 0.0], [-0.2, 0.0, 1.0]])
    tr = sd.solve_sde(block, V, 1.0, key=jax.random.key(0), n_paths=200, dt=1 / 64,
                      n_save=5, progress=False)
    assert 0 < tr.exploded_fraction <= 1
    assert np.all(np.isfinite(tr.V))
    bound = 1e3 * 3.0
    assert np.all(np.abs(tr.V) <= bound * (1 + 1e-6))
    t_exp = tr.explosion_time
    assert np.all(np.isinf(t_exp[~tr.exploded]))
    assert np.all((t_exp[tr.exploded] > 0) & (t_exp[tr.exploded] <= 1.0))
    # frozen: after the explosion time the saved state no longer changes
    early = np.flatnonzero(tr.exploded & (t_exp <= tr.t[-2]))
    assert early.size > 0  # some path exploded with at least two saved times after it
    for i in early:
        after = tr.t >= t_exp[i]
        frozen = tr.V[i, after]
        np.testing.assert_array_equal(frozen, np.broadcast_to(tr.V[i, -1], frozen.shape))
    assert tr.valid().n_samples == int((~tr.exploded).sum())


def test_state_space_flags_non_finite_paths_only():
    """A step that overflows (inf or NaN entries) is flagged as broken, never repaired into the
    state; the other paths of the batch, PD or outside the cone, are handled as usual."""
    from shapedsde.sde._solvers import on_state_space

    good = np.asarray(V0, np.float32)
    outside = good - 2.0 * np.eye(3, dtype=np.float32)  # left the cone
    V = np.stack([good, good, outside, good, good])
    V[1, 0, 2] = V[1, 2, 0] = np.inf
    V[3, 1, 1] = np.nan
    V[4, 0, 0] = np.inf
    Vs, L, left_cone, broken = on_state_space(jnp.asarray(V), False, jnp.ones(5, bool))
    np.testing.assert_array_equal(broken, [False, True, False, True, True])
    np.testing.assert_array_equal(left_cone, [False, False, True, False, False])
    for i in (0, 2):
        assert np.all(np.isfinite(Vs[i])) and np.all(np.isfinite(L[i]))
        np.testing.assert_allclose(L[i] @ L[i].T, Vs[i], atol=1e-5)
    assert np.linalg.eigvalsh(np.asarray(Vs[2], np.float64)).min() > -1e-6


def test_near_singular_start_gives_no_nan():
    V = np.ones((3, 3)) + 1e-7 * np.eye(3)  # rank one up to 1e-7: tokens all alike
    for normalize in (None, "rms"):
        tr = sd.solve_sde(BLOCK, V, key=jax.random.key(0), n_paths=32, normalize=normalize,
                          **KW)
        assert np.all(np.isfinite(tr.V))


def test_float64_switch():
    """dtype="float64" switches on x64 (process-wide); float32 runs still work after it."""
    was = jax.config.jax_enable_x64
    try:
        tr = sd.solve_sde(BLOCK, V0, key=jax.random.key(0), n_paths=2, dtype="float64", **KW)
        assert tr.V.dtype == np.float64
        net = sd.simulate_network(BLOCK, V0, width=8, depth=2, n_samples=2,
                                  key=jax.random.key(0), method="full", progress=False)
        assert net.V.dtype == np.float32
        assert sd.solve_sde(BLOCK, V0, key=jax.random.key(0), n_paths=2, **KW).V.dtype \
            == np.float32
    finally:
        jax.config.update("jax_enable_x64", was)


@pytest.mark.slow
def test_weak_convergence_in_dt():
    """Lin-only noise and no drift (tau0 -> inf, infinitely many heads): dV = c (N + N^T),
    so E[V_t] = V_0 and E[V_aa(t)^2] = V_aa(0)^2 e^{2 kappa t}, kappa = gamma^2 (2 - gamma^2),
    while Euler gives (1 + 2 kappa dt)^{t/dt} (2.344 at dt = 1/16 against 2.399). The Monte
    Carlo means agree with these values within 4 SE (the SE, ~0.07 with 40000 paths, is too
    large to resolve the O(dt) gap itself: that needs ~10^6 paths). Coarser steps leave the PSD
    cone often, and the repairs bias E[V] (about +3% at dt = 1/4): kept out of this test."""
    gamma = 0.5
    kappa = gamma**2 * (2 - gamma**2)
    block = sd.ShapedAttention(tau0=1e6, gamma=gamma, heads=math.inf)
    V = np.eye(2)
    exact = math.exp(2 * kappa)
    for dt, n in ((1 / 16, 40000), (1 / 64, 40000)):
        tr = sd.solve_sde(block, V, 1.0, key=jax.random.key(7), n_paths=n, dt=dt, n_save=2,
                          solver="euler", progress=False, chunk_size=8192)
        assert tr.psd_repairs.sum() < 1e-4 * n / dt  # no projection bias to speak of
        VT = tr.V[:, -1].astype(np.float64)
        np.testing.assert_allclose(VT.mean(0), V, atol=4 * VT.std(0).max() / math.sqrt(n))
        sq = VT[:, 0, 0] ** 2
        mean, se = sq.mean(), sq.std() / math.sqrt(n)
        euler = (1 + 2 * kappa * dt) ** round(1 / dt)
        assert abs(mean - euler) < 4 * se, (dt, mean, euler, se)
        assert abs(mean - exact) < 4 * se, (dt, mean, exact, se)


@pytest.mark.parametrize("normalize", [None, "rms"])
def test_many_tokens_solve_and_state_their_memory(normalize):
    """m = 64 (issue 26): the step's products and factorisation are batched ``dot``s and LAPACK
    from m = 17 on, so the program compiles in seconds; the result is the size that
    ``check_result_size`` states (n_paths x n_save x m x m of the dtype), and the paths stay on
    the state space (finite, symmetric, positive diagonal)."""
    from shapedsde.validation import check_result_size

    m, n_paths, n_save = 64, 8, 3
    V0 = sd.default_covariance(m)
    tr = sd.solve_sde(BLOCK, V0, 1 / 32, key=jax.random.key(0), dt=1 / 64, n_paths=n_paths,
                      n_save=n_save, normalize=normalize, progress=False)
    assert tr.V.shape == (n_paths, n_save, m, m)
    assert tr.V.nbytes == check_result_size(n_paths, n_save, m, "float32")
    assert np.all(np.isfinite(tr.V)) and not tr.exploded.any()
    np.testing.assert_allclose(tr.V, np.swapaxes(tr.V, -1, -2), atol=1e-6)
    assert np.all(np.diagonal(tr.V, axis1=-2, axis2=-1) > 0)
