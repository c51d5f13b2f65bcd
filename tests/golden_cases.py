"""The golden set: small float64 runs of every simulator through the public API only.

Recorded once (``python tests/golden_cases.py``) before the solver and the package layout were
redesigned (issue 24), and checked by ``tests/test_golden.py``: a refactoring must reproduce
every array to 1e-8 relative and every flag and count exactly. Re-record only for a change of
the randomness or of the science that a note explains.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np

import shapedsde as sd

GOLDEN = Path(__file__).parent / "golden" / "golden.npz"
F64 = dict(dtype="float64", progress=False)
V3 = sd.default_covariance(3)
V4 = sd.default_covariance(4, rho=0.5)
COOL = sd.ShapedAttention(tau0=1.0, gamma=0.5)
HOT = sd.ShapedAttention(tau0=0.3, gamma=0.9)


def _traj(tr: sd.Trajectories) -> dict[str, np.ndarray]:
    out = {"t": tr.t, "V": tr.V, "exploded": tr.exploded, "explosion_time": tr.explosion_time,
           "psd_repairs": tr.psd_repairs}
    cfg = tr.config
    if cfg.get("kind") == "sde":
        err = cfg["step_error"]
        out["dt"] = np.asarray(cfg["dt"])
        out["solver"] = np.asarray(cfg["solver"])
        out["step_error"] = np.asarray([err["rho"], err["upper"], err["excess"],
                                        -1.0 if err["crossing"] is None else err["crossing"]])
        out["step_error_by_time"] = np.asarray(err["rho_by_time"])
        out["coupled_paths"] = np.asarray(err["paths"])
    return out


def _sde(block: sd.Block, V0: np.ndarray, T: float, key: int, **kw: object
         ) -> Callable[[], dict[str, np.ndarray]]:
    return lambda: _traj(sd.solve_sde(block, V0, T, key=jax.random.key(key), **F64, **kw))


def _net(block: sd.Block, V0: np.ndarray, key: int, **kw: object
         ) -> Callable[[], dict[str, np.ndarray]]:
    return lambda: _traj(sd.simulate_network(block, V0, key=jax.random.key(key), **F64, **kw))


CASES: dict[str, Callable[[], dict[str, np.ndarray]]] = {
    # the SDE at a fixed step: each solver, raw and "rms", both rms schemes
    "sde/euler/raw": _sde(COOL, V3, 0.5, 1, dt=1 / 64, n_paths=16, n_save=3, solver="euler"),
    "sde/congruence/raw": _sde(COOL, V3, 0.5, 1, dt=1 / 64, n_paths=16, n_save=3,
                               solver="congruence"),
    "sde/euler/rms": _sde(COOL, V3, 0.5, 2, dt=1 / 64, n_paths=16, n_save=3, solver="euler",
                          normalize="rms"),
    "sde/congruence/rms": _sde(HOT, V3, 0.5, 2, dt=1 / 64, n_paths=16, n_save=3,
                               solver="congruence", normalize="rms"),
    "sde/euler/rms-ito": _sde(HOT, V3, 0.5, 2, dt=1 / 64, n_paths=16, n_save=3,
                              solver="euler", normalize="rms", scheme="ito"),
    # odd steps per saved interval: the estimate uses the bridge at half the step
    "sde/euler/odd-steps": _sde(HOT, V3, 0.25, 3, dt=0.125 / 3, n_paths=16, n_save=3,
                                solver="euler"),
    # the step control: cool (no refinement), "rms", and hot raw (crossings, more paths)
    "sde/auto/cool": _sde(COOL, V4, 1.0, 4, n_paths=64, n_save=3),
    "sde/auto/hot-rms": _sde(HOT, np.eye(2), 1.0, 5, n_paths=64, n_save=3, normalize="rms"),
    "sde/auto/hot-raw": _sde(sd.ShapedAttention(tau0=0.4, gamma=0.9), np.eye(2), 1.0, 6,
                             n_paths=300, n_save=2),
    # refined hot paths that blow up, each solver; and a later slice of the same run
    "sde/refined/congruence": _sde(HOT, V3, 2.0, 7, dt=1 / 64, n_paths=48, n_save=3,
                                   solver="congruence"),
    "sde/refined/euler": _sde(HOT, V3, 2.0, 7, dt=1 / 64, n_paths=48, n_save=3,
                              solver="euler"),
    "sde/refined/first-path": _sde(HOT, V3, 2.0, 7, dt=1 / 64, n_paths=8, first_path=40,
                                   n_save=3, solver="congruence"),
    # masks, heads, other blocks
    "sde/causal/raw": _sde(sd.ShapedAttention(causal=True, tau0=0.5), V4, 0.5, 8, dt=1 / 64,
                           n_paths=16, n_save=3),
    "sde/causal/rms": _sde(sd.ShapedAttention(causal=True, tau0=0.5), V4, 0.5, 8, dt=1 / 64,
                           n_paths=16, n_save=3, normalize="rms"),
    "sde/heads3": _sde(sd.ShapedAttention(heads=3, tau0=0.5), V3, 0.5, 9, dt=1 / 64,
                       n_paths=16, n_save=3),
    "sde/heads-inf": _sde(sd.ShapedAttention(heads=math.inf), V3, 0.5, 9, dt=1 / 64,
                          n_paths=16, n_save=3, normalize="rms"),
    "sde/mlp": _sde(sd.ShapedMLP(gamma=0.7), V3, 0.5, 10, dt=1 / 64, n_paths=16, n_save=3),
    "sde/transformer/raw": _sde(sd.ShapedTransformerBlock(), V3, 0.5, 11, dt=1 / 64,
                                n_paths=16, n_save=3),
    "sde/transformer/hot-rms": _sde(
        sd.ShapedTransformerBlock(HOT, sd.ShapedMLP(gamma=0.6)), V3, 0.5, 11, dt=1 / 64,
        n_paths=16, n_save=3, normalize="rms"),
    # both network simulators
    "net/attention/full": _net(COOL, V3, 12, width=16, depth=8, n_samples=6, n_save=3,
                               method="full"),
    "net/attention/reduced": _net(COOL, V3, 12, width=16, depth=8, n_samples=6, n_save=3,
                                  method="reduced"),
    "net/attention/reduced-rms": _net(HOT, V3, 12, width=16, depth=8, n_samples=6, n_save=3,
                                      method="reduced", normalize="rms"),
    "net/transformer/full-rms": _net(sd.ShapedTransformerBlock(), V3, 13, width=12, depth=6,
                                     n_samples=4, n_save=3, method="full", normalize="rms"),
    "net/transformer/reduced": _net(sd.ShapedTransformerBlock(), V3, 13, width=12, depth=6,
                                    n_samples=4, n_save=3, method="reduced"),
    "net/standard/full": _net(sd.StandardAttention(heads=2, causal=True), V3, 14, width=12,
                              depth=6, n_samples=4, n_save=3, method="full"),
    "net/standard/reduced": _net(sd.StandardTransformerBlock(), V3, 14, width=12, depth=6,
                                 n_samples=4, n_save=3, method="reduced", normalize="rms"),
    "net/causal-heads/reduced": _net(sd.ShapedAttention(heads=2, causal=True), V3, 15,
                                     width=12, depth=6, n_samples=4, n_save=3,
                                     method="reduced"),
    # infinite width at fixed depth
    "inf/standard-attention": lambda: _traj(sd.simulate_infinite_width(
        sd.StandardAttention(heads=2), V3, depth=5, n_samples=6, key=jax.random.key(16),
        **F64)),
    "inf/standard-transformer": lambda: _traj(sd.simulate_infinite_width(
        sd.StandardTransformerBlock(sd.StandardAttention(heads=3, causal=True)), V3, depth=4,
        n_samples=4, key=jax.random.key(17), normalize="rms", **F64)),
    "nngp/standard-attention": lambda: {"V": sd.nngp_kernel(sd.StandardAttention(), V3, 3,
                                                            dtype="float64")},
    "nngp/standard-transformer-rms": lambda: {"V": sd.nngp_kernel(
        sd.StandardTransformerBlock(sd.StandardAttention(causal=True)), V3, 3, "rms",
        dtype="float64")},
    "nngp/shaped": lambda: {"V": sd.nngp_kernel(sd.ShapedTransformerBlock(), V3, 2,
                                                dtype="float64")},
}


def record(path: Path = GOLDEN, names: list[str] | None = None) -> None:
    """Record every case, or only ``names`` (keeping the others' arrays as recorded): a
    change of behaviour that is meant re-records just the cases it changes."""
    arrays = {}
    if names:
        unknown = set(names) - set(CASES)
        if unknown:
            raise SystemExit(f"unknown golden cases: {sorted(unknown)}")
        with np.load(path) as old:
            arrays = {k: old[k] for k in old.files if k.split(":", 1)[0] not in names}
    for name in names or CASES:
        print(name, flush=True)
        for field, value in CASES[name]().items():
            arrays[f"{name}:{field}"] = np.asarray(value)
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, **arrays)
    print(f"wrote {len(arrays)} arrays to {path}")


if __name__ == "__main__":
    # python tests/golden_cases.py [CASE ...]: all cases, or only those named
    record(GOLDEN, sys.argv[1:] or None)
