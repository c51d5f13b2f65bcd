"""Sweeps do not recompile (issue 16, finding 8): block parameters, V0, depth, n_save, the
reduced simulator's width and the number of paths (within a power-of-two bucket) reach the
compiled code as traced values."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import jax
import numpy as np
import pytest

import shapedsde as sd
from shapedsde._batching import padded_chunk_size
from shapedsde.blocks.base import traced_parameters


class _Messages(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextmanager
def compilations(name: str) -> Iterator[list[int]]:
    """Count the XLA compilations of the jitted function ``name`` inside the block (JAX logs
    'Compiling jit(name) ...' for each under ``jax.log_compiles``)."""
    handler, logger = _Messages(), logging.getLogger("jax")
    count = [0]
    logger.addHandler(handler)
    try:
        with jax.log_compiles():
            yield count
    finally:
        logger.removeHandler(handler)
        count[0] = sum(m.startswith(f"Compiling jit({name})") for m in handler.messages)


V0 = sd.default_covariance(3)


def test_network_sweep_compiles_once():
    """gamma x tau0 x width x n_samples (and V0) sweep of the reduced attention network: one
    compilation of the layer loop (before: one per point, 6.8 s per new width)."""
    results = {}
    with compilations("_advance") as count:
        for gamma in (0.3, 0.6):
            for tau0 in (0.5, 2.0):
                for width, n in ((16, 20), (40, 27)):
                    results[gamma, tau0, width] = sd.simulate_network(
                        sd.ShapedAttention(tau0=tau0, gamma=gamma), V0 * gamma, width=width,
                        depth=width // 4, n_samples=n, key=jax.random.key(0), n_save=3,
                        normalize="rms", progress=False)
    assert count[0] == 1
    # the parameters do act: different gamma, tau0 and width give different paths
    finals = [r.V[0, -1, 0, 1] for r in results.values()]
    assert len(set(np.round(finals, 6))) == len(finals)
    assert results[0.3, 0.5, 16].config["block"] == {
        "kind": "ShapedAttention", "tau0": 0.5, "gamma": 0.3, "heads": 1, "key_dim": None,
        "causal": False}


def test_traced_parameters_same_paths():
    """Traced parameters keep the block's values and config, and a sample does not depend on
    the number of samples padded to the chunk (sizes of the sweep above: no new compile)."""
    block = sd.ShapedAttention(tau0=0.7, gamma=0.4)
    kw = dict(width=16, depth=4, key=jax.random.key(3), n_save=3, normalize="rms",
              progress=False)
    a = sd.simulate_network(block, V0, n_samples=20, **kw)
    b = sd.simulate_network(block, V0, n_samples=27, **kw)
    np.testing.assert_array_equal(a.V, b.V[:20])
    traced = traced_parameters(block, np.float32)
    assert isinstance(traced.gamma, jax.Array) and isinstance(traced.config()["gamma"], float)
    assert traced.config()["tau0"] == pytest.approx(0.7)
    V = np.asarray(V0, np.float32)
    np.testing.assert_allclose(traced.drift(V), block.drift(V), rtol=1e-6)


def test_padded_chunk_size_buckets():
    assert {padded_chunk_size(n, 1024) for n in range(1, 9)} == {8}
    assert {padded_chunk_size(n, 1024) for n in (500, 512)} == {512}
    assert padded_chunk_size(5000, 1024) == 1024


def test_sde_sweep_compiles_once():
    """New gamma, tau0 and n_paths for solve_sde: one compilation of the solver (before:
    3.7-5.3 s for each). The solver is fixed: ``solver="auto"`` picks Euler or the congruence
    solver by the attention's heat, and compiles once for each it picks."""
    with compilations("_integrate") as count:
        for gamma, tau0, n in ((0.3, 0.5, 20), (0.6, 0.5, 20), (0.3, 2.0, 27)):
            sd.solve_sde(sd.ShapedAttention(tau0=tau0, gamma=gamma), V0, 0.25,
                         key=jax.random.key(0), dt=1 / 16, n_paths=n, n_save=3,
                         normalize="rms", solver="congruence", progress=False)
    assert count[0] == 1
