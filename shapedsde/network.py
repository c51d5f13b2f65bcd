r"""The finite network the SDE describes, simulated with real Gaussian weight matrices.

A sample starts from X0 = sqrt(n) [L0, 0] (m x n, L0 L0^T = V0), whose Gram X0 X0^T / n is
exactly V0; as every weight matrix is rotation invariant, the choice of X0 with that Gram does
not change the law of the network. ``depth`` blocks are applied, each ``block.layer`` with fresh
weights drawn from ``fold_in(fold_in(key, sample), layer)``, and V = X X^T / n is saved at
evenly spaced layers. Time is t = layer / width, as in the SDE.
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from tqdm.auto import tqdm

from ._batching import chunks, path_keys
from ._precision import resolve_dtype
from .blocks.base import Block, rms_rows
from .trajectories import Trajectories
from .validation import check_covariance, check_int, check_normalize, check_real, check_width


def initial_features(V0: np.ndarray, width: int) -> np.ndarray:
    """X0 = sqrt(width) [L0, 0] with L0 L0^T = V0 (eigen square root: V0 may be singular)."""
    lam, Q = np.linalg.eigh(V0)
    L0 = (Q * np.sqrt(np.clip(lam, 0.0, None))) @ Q.T
    X0 = np.zeros((V0.shape[0], width))
    X0[:, : V0.shape[0]] = math.sqrt(width) * L0
    return X0


def gram(X: Array) -> Array:
    """V = X X^T / n."""
    return X @ X.T / X.shape[-1]


class _NetworkState(eqx.Module):
    X: Array  # (m, n) features
    t_explode: Array  # time of blow-up, -1 while finite and within the bound


@eqx.filter_jit
def _advance(block: Block, keys: Array, states: _NetworkState, first_layer: Array,
             n_layers: Array, normalize: str | None, bound: float) -> tuple[_NetworkState, Array]:
    """Apply layers first_layer + 1, ..., first_layer + n_layers to a batch of samples."""

    def one(key: Array, s: _NetworkState) -> tuple[_NetworkState, Array]:
        width = s.X.shape[1]

        def body(i: Array, s: _NetworkState) -> _NetworkState:
            layer = first_layer + i + 1
            X1 = block.layer(jax.random.fold_in(key, layer), s.X, normalize)
            V1 = gram(X1)
            bad = ~jnp.all(jnp.isfinite(V1)) | (jnp.max(jnp.abs(V1)) > bound)
            alive = s.t_explode < 0
            t = (layer / width).astype(s.X.dtype)
            return _NetworkState(X=jnp.where(alive & ~bad, X1, s.X),
                                 t_explode=jnp.where(alive & bad, t, s.t_explode))

        s = jax.lax.fori_loop(0, n_layers, body, s)
        return s, gram(s.X)

    return jax.vmap(one)(keys, states)


def save_layers(depth: int, n_save: int) -> np.ndarray:
    """Evenly spaced layers 0, ..., depth at which V is saved (at most n_save, no repeats)."""
    return np.unique(np.round(np.linspace(0, depth, n_save)).astype(int))


def default_chunk_size(width: int, heads: int = 1) -> int:
    """Samples per compiled call so that one chunk's weights take about 256 MB (float32)."""
    return int(np.clip(2**26 // (width * width * max(heads, 1)), 1, 512))


def simulate_network(block: Block, V0: object, *, width: int, depth: int, n_samples: int,
                     key: Array, n_save: int = 11, normalize: str | None = None,
                     blowup_bound: float = 1e3, dtype: str = "float32",
                     chunk_size: int | None = None, progress: bool = True) -> Trajectories:
    """Simulate the finite network of ``depth`` blocks at ``width`` from covariance ``V0``.

    Args:
        block: any block (``StandardAttention`` included: it needs no SDE limit).
        V0: initial covariance (m, m); with ``normalize="rms"`` mapped to its correlation.
        width: feature width n >= m (also the hidden width of MLPs).
        depth: number of blocks; the final time is depth / width.
        n_samples: independent networks (fresh weights each); sample i uses
            ``fold_in(key, i)``, so results do not depend on ``n_samples`` or ``chunk_size``.
        n_save: number of evenly spaced saved layers, including 0 and ``depth``.
        normalize: None, or "rms" to rescale every token to norm sqrt(n) after each sub-block.
        blowup_bound: a sample with |V_ab| > ``blowup_bound * max(diag V0)`` (or overflow) is
            frozen and flagged, as in ``solve_sde``.
        dtype: "float32" or "float64".
        chunk_size: samples per compiled call (default: about 256 MB of weights).
        progress: show a progress bar.

    Returns:
        ``Trajectories`` with t = saved layer / width.
    """
    if not isinstance(block, Block):
        raise TypeError(f"block must be a shapedsde Block, got {type(block).__name__}")
    V0 = check_covariance(V0)
    m = V0.shape[0]
    width = check_width(width, m)
    block.check_width(width)
    depth = check_int("depth", depth, low=1)
    n_samples = check_int("n_samples", n_samples, low=1)
    n_save = check_int("n_save", n_save, low=2)
    normalize = check_normalize(normalize)
    blowup_bound = check_real("blowup_bound", blowup_bound, low=1.0)
    jdtype = resolve_dtype(dtype)
    if normalize == "rms":
        d = np.sqrt(np.diag(V0))
        V0 = V0 / np.outer(d, d)
    if chunk_size is None:
        chunk_size = default_chunk_size(width, int(getattr(block, "heads", 1)))
    chunk_size = min(check_int("chunk_size", chunk_size, low=1), n_samples)

    layers = save_layers(depth, n_save)
    X0 = jnp.asarray(initial_features(V0, width), jdtype)
    if normalize == "rms":
        X0 = rms_rows(X0)
    bound = blowup_bound * float(np.max(np.diag(V0)))
    V_parts, t_parts = [], []
    steps = -(-n_samples // chunk_size)
    with tqdm(total=steps * int(depth), desc="network layers", unit="layer", leave=False,
              disable=not progress) as bar:
        for start, size in chunks(n_samples, chunk_size):
            keys = path_keys(key, start, chunk_size)
            states = _NetworkState(X=jnp.broadcast_to(X0, (chunk_size, *X0.shape)),
                                   t_explode=-jnp.ones(chunk_size, jdtype))
            saved = [np.broadcast_to(np.asarray(gram(X0)), (chunk_size, m, m))]
            for lo, hi in zip(layers[:-1], layers[1:], strict=True):
                states, V = _advance(block, keys, states, jnp.asarray(lo), jnp.asarray(hi - lo),
                                     normalize, bound)
                saved.append(np.asarray(V))
                bar.update(int(hi - lo))
            V_parts.append(np.stack(saved, axis=1)[:size])
            t_parts.append(np.asarray(states.t_explode)[:size])
    t_exp = np.concatenate(t_parts)
    exploded = t_exp >= 0
    return Trajectories(
        t=layers / width, V=np.concatenate(V_parts), exploded=exploded,
        explosion_time=np.where(exploded, t_exp, np.inf),
        config={"kind": "network", "block": block.config(), "width": width, "depth": depth,
                "n_samples": n_samples, "normalize": normalize, "blowup_bound": blowup_bound,
                "dtype": dtype, "V0": V0.tolist()})
