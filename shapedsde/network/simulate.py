r"""The finite network the SDE describes, simulated with real Gaussian weight matrices.

A sample starts from X0 = sqrt(n) [L0, 0] (m x n, L0 L0^T = V0), whose Gram X0 X0^T / n is
exactly V0; as every weight matrix is rotation invariant, the choice of X0 with that Gram does
not change the law of the network. ``depth`` blocks are applied, each ``block.layer`` with fresh
weights drawn from ``fold_in(fold_in(key, sample), layer)``, and V = X X^T / n is saved at
evenly spaced layers. Time is t = layer / width, as in the SDE.

Compilation: the block's float parameters (``traced_parameters``), V0, depth, n_save and the
blow-up bound are traced values, the number of samples is padded to a chunk
(``_batching.padded_chunk_size``), and so is the width for the reduced simulator where the
block's reduced layer has width-independent shapes (``Block.reduced_width_traceable``): a sweep
over any of these reuses one compiled ``_advance``. The full network's width is a shape.

With a positional embedding (attention with ``positions``) the full network adds
P = sqrt(n) [0, L_Pi, 0] to the queries and keys, orthogonal to X0, and the reduced simulator
carries the joint Gram of [X; P] from cross Gram 0 (``blocks._reduced.JointGram``).
"""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from tqdm.auto import tqdm

from .._batching import chunks, key_record, over_devices, padded_chunk_size, path_keys
from .._precision import full_precision, resolve_dtype
from ..analysis.metrics import correlation
from ..analysis.trajectories import Trajectories
from ..blocks import Block, normalized, traced_parameters
from ..blocks._reduced import JointGram, Scalar, State, state_covariance
from ..validation import (
    check_covariance,
    check_int,
    check_key,
    check_normalize,
    check_path_range,
    check_real,
    check_result_size,
    check_width,
)


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


METHODS = ("auto", "full", "reduced")


class _NetworkState(eqx.Module):
    """X (m, n) for the full network, V (m, m) for the reduced one (the joint Gram of [X; P],
    ``JointGram``, where the block has a positional embedding); -1 while not blown up."""

    Z: State
    t_explode: Array


def _covariance(Z: State, method: str) -> Array:
    return gram(Z) if method == "full" else state_covariance(Z)


@eqx.filter_jit
@full_precision
def _advance(block: Block, keys: Array, states: _NetworkState, first_layer: Array,
             n_layers: Array, width: Scalar, method: str,
             bound: Array) -> tuple[_NetworkState, Array]:
    """Apply layers first_layer + 1, ..., first_layer + n_layers to a batch of samples (split
    over the local devices). ``width`` is a Python int (static) or, for a reduced layer that
    allows it, a traced scalar."""

    def layer(key: Array, Z: Array) -> Array:
        if method == "full":
            return block.layer(key, Z)
        return block.reduced_layer(key, Z, width)

    def one(key: Array, s: _NetworkState, first_layer: Array, n_layers: Array,
            bound: Array) -> tuple[_NetworkState, Array]:
        def body(i: Array, s: _NetworkState) -> _NetworkState:
            index = first_layer + i + 1
            Z1 = layer(jax.random.fold_in(key, index), s.Z)
            V1 = _covariance(Z1, method)
            bad = ~(jnp.max(jnp.abs(V1)) <= bound)  # also when V1 is not finite
            alive = s.t_explode < 0
            t = (index / width).astype(s.t_explode.dtype)
            keep = alive & ~bad
            return _NetworkState(Z=jax.tree.map(lambda a, b: jnp.where(keep, a, b), Z1, s.Z),
                                 t_explode=jnp.where(alive & bad, t, s.t_explode))

        s = jax.lax.fori_loop(0, n_layers, body, s)
        return s, _covariance(s.Z, method)

    batched = jax.vmap(one, (0, 0, None, None, None))
    return over_devices(lambda batch, *args: batched(*batch, *args), (keys, states),
                        first_layer, n_layers, bound)


def save_layers(depth: int, n_save: int) -> np.ndarray:
    """Evenly spaced layers 0, ..., depth at which V is saved (at most n_save, no repeats)."""
    return np.unique(np.round(np.linspace(0, depth, n_save)).astype(int))


def default_chunk_size(width: int, heads: int = 1) -> int:
    """Samples per compiled call so that one chunk's weights take about 256 MB (float32)."""
    return int(np.clip(2**26 // (width * width * max(heads, 1)), 1, 512))


def simulate_network(block: Block, V0: object, *, width: int, depth: int, n_samples: int,
                     key: Array, n_save: int = 17, normalize: str | None = None,
                     method: str = "auto", blowup_bound: float = 1e3, dtype: str = "float32",
                     chunk_size: int | None = None, first_sample: int = 0,
                     progress: bool = False) -> Trajectories:
    """Simulate the finite network of ``depth`` blocks at ``width`` from covariance ``V0``.

    Args:
        block: any block (``StandardAttention`` included: it needs no SDE limit).
        V0: initial covariance (m, m); mapped to its correlation matrix where the block is
            normalised.
        width: feature width n >= m (also the hidden width of MLPs).
        depth: number of blocks; the final time is depth / width.
        n_samples: independent networks (fresh weights each); sample i uses
            ``fold_in(key, i)``, so results do not depend on ``n_samples`` or ``chunk_size``.
        n_save: number of evenly spaced saved layers, including 0 and ``depth`` (rounded to
            whole layers: they are the SDE's save times k T / (n_save - 1) when n_save - 1
            divides ``depth``).
        normalize: None (default: the block as given), or "rms" to rescale every token to
            norm sqrt(n) after each sub-block (shorthand for the block ``normalized(block)``).
        method: "full" multiplies real n x n weight matrices (O(m n^2) per layer, the ground
            truth); "reduced" samples the same law on m x m matrices (``shapedsde.blocks._reduced``,
            cost independent of n); "auto" picks "reduced" when the block has it.
        blowup_bound: a sample with |V_ab| > ``blowup_bound * max(diag V0)`` (or overflow) is
            frozen and flagged, as in ``solve_sde``.
        dtype: "float32" or "float64".
        chunk_size: samples per compiled call (default: about 256 MB of weights), rounded up
            to a multiple of the local device count; samples are split over the local devices.
        first_sample: index of the first sample: the call returns samples first_sample, ...,
            first_sample + n_samples - 1, exactly as part of a larger call would (to split a
            run over processes or hosts).
        progress: draw a progress bar on stderr over the ``n_samples`` networks. Off by
            default in library calls.

    Returns:
        ``Trajectories`` with t = saved layer / width.
    """
    if not isinstance(block, Block):
        raise TypeError(f"block must be a shapedsde Block, got {type(block).__name__}")
    key = check_key(key)
    V0 = check_covariance(V0, dtype=dtype)
    m = V0.shape[0]
    width = check_width(width, m)
    block.check_tokens(m)
    block.check_width(width)
    depth = check_int("depth", depth, low=1)
    n_samples = check_int("n_samples", n_samples, low=1)
    first_sample = check_int("first_sample", first_sample, low=0)
    check_path_range(first_sample, n_samples, "first_sample", "n_samples")
    n_save = check_int("n_save", n_save, low=2)
    normalize = check_normalize(normalize)
    blowup_bound = check_real("blowup_bound", blowup_bound, low=1.0)
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "auto":
        method = "reduced" if block.has_reduced else "full"
    elif method == "reduced" and not block.has_reduced:
        raise ValueError(f"method='reduced' is not available for {type(block).__name__}")
    jdtype = resolve_dtype(dtype)
    config_block = block.config()
    if normalize == "rms":
        block = normalized(block)
    if block.is_normalized:
        V0 = correlation(V0)
    if chunk_size is None:
        chunk_size = 512 if method == "reduced" else default_chunk_size(width, block.max_heads)
    chunk_size = padded_chunk_size(n_samples, check_int("chunk_size", chunk_size, low=1))

    layers = save_layers(depth, n_save)
    check_result_size(n_samples, len(layers), m, dtype, names=("n_samples", "n_save"),
                      split="split the run over several calls with first_sample")
    config = {"kind": "network", "block": config_block, "width": width, "depth": depth,
              "n_samples": n_samples, "first_sample": first_sample, "method": method,
              "normalize": "rms" if block.is_normalized else None,
              "blowup_bound": blowup_bound, "dtype": dtype, "V0": V0.tolist(),
              "key": key_record(key)}
    X0 = initial_features(V0, width)  # NumPy float64, cast once below
    V_init = X0 @ X0.T / width
    Z0 = jnp.asarray(X0 if method == "full" else V_init, jdtype)
    embedding = block.position_embedding
    if method == "reduced" and embedding is not None:  # P independent of X0: C = 0
        Z0 = JointGram.start(Z0, jnp.asarray(embedding.matrix(), jdtype))
    V_init = np.asarray(jnp.asarray(V_init, jdtype))  # saved at t = 0, in the run's dtype
    bound = jnp.asarray(blowup_bound * float(np.max(np.diag(V0))), jdtype)
    block = traced_parameters(block, jdtype)
    trace_width = method == "reduced" and block.reduced_width_traceable(width, m)
    width_arg = jnp.asarray(width, jdtype) if trace_width else width
    V_all = np.empty((n_samples, len(layers), m, m), V_init.dtype)
    t_exp = np.empty(n_samples, V_init.dtype)
    # counts networks; a chunk advances by its share of the layers done
    with tqdm(total=n_samples, desc=f"networks (depth {depth})", unit="network", leave=False,
              disable=not progress, bar_format="{l_bar}{bar}| {n:.0f}/{total} networks "
              "[{elapsed}<{remaining}]") as bar:
        for start, size in chunks(n_samples, chunk_size):
            keys = path_keys(key, first_sample + start, chunk_size)
            states = _NetworkState(
                Z=jax.tree.map(lambda z: jnp.broadcast_to(z, (chunk_size, *z.shape)), Z0),
                t_explode=-jnp.ones(chunk_size, jdtype))
            V_all[start:start + size, 0] = V_init
            for i, (lo, hi) in enumerate(zip(layers[:-1], layers[1:], strict=True), 1):
                states, V = _advance(block, keys, states, jnp.asarray(lo), jnp.asarray(hi - lo),
                                     width_arg, method, bound)
                V_all[start:start + size, i] = np.asarray(V)[:size]
                bar.update(size * int(hi - lo) / depth)
            t_exp[start:start + size] = np.asarray(states.t_explode)[:size]
    exploded = t_exp >= 0
    return Trajectories(t=layers / width, V=V_all, exploded=exploded,
                        explosion_time=np.where(exploded, t_exp, np.inf), config=config)
