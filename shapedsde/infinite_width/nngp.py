r"""The other limit: infinite width at fixed depth (NNGP kernels, Hron et al. 2020), SPEC 8.

The SDE describes n, d -> infinity with d / n -> T. Here n -> infinity with the depth d fixed:
the value and MLP projections average out (law of large numbers over n columns) and the
residual cross terms vanish, so each block maps V to a function of V and of its attention
logits, which stay random (S = Q K^T / sqrt(k), Q and K with iid N(0, V) columns):

* standard attention, H heads: V' = lambda^2 V + gamma^2 (1/H) sum_h A_h V A_h^T,
  A_h = softmax(S_h): random for finite H (a single head is not Gaussian), and for H ->
  infinity the deterministic NNGP kernel map V' = lambda^2 V + gamma^2 E_S[A V A^T];
* standard ReLU MLP: V' = lambda^2 V + gamma^2 K(V), K the arc-cosine kernel;
* shaped attention and shaped MLP: the identity (logits cooled by 1 / sqrt n, slopes -> 1);
* "rms": V' mapped to its correlation matrix after every sub-block.

Each block holds its own map (``Block.nngp_layer`` for n = H = infinity,
``Block.infinite_width_layer`` for n = infinity with the block's own heads); this module runs
them: ``nngp_layer`` (one layer), ``nngp_kernel`` (the deterministic recursion over depth)
and ``simulate_infinite_width`` (the random recursion, many samples).
"""

from __future__ import annotations

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from .._batching import run_chunked
from .._precision import full_precision, resolve_dtype
from ..analysis.trajectories import Trajectories
from ..blocks import Block, normalized, traced_parameters
from ..blocks.normalization import rms
from ..network.simulate import save_layers
from ..validation import check_covariance, check_int, check_normalize

__all__ = ["nngp_kernel", "nngp_layer", "simulate_infinite_width"]


def _check_block(block: object, normalize: object) -> Block:
    """The block, normalised after every sub-block for ``normalize="rms"``."""
    if not isinstance(block, Block):
        raise TypeError(f"block must be a shapedsde Block, got {type(block).__name__}")
    block.require_nngp()
    return normalized(block) if check_normalize(normalize) == "rms" else block


def _start(V0: object, name: str, block: Block, dtype: str) -> Array:
    """The checked initial covariance as a JAX array of ``dtype``, mapped to its correlation
    matrix where the block is normalised (as ``simulate_network`` does)."""
    V = jnp.asarray(check_covariance(V0, name), resolve_dtype(dtype))
    block.check_tokens(V.shape[0])
    return rms(V) if block.is_normalized else V


@eqx.filter_jit
@full_precision
def _kernel(block: Block, V0: Array, depth: int) -> Array:
    def step(V: Array, _: None) -> tuple[Array, Array]:
        V1 = block.nngp_layer(V)
        return V1, V1

    return jnp.concatenate([V0[None], jax.lax.scan(step, V0, None, length=depth)[1]])


def nngp_layer(block: Block, V: object, normalize: str | None = None, *,
               dtype: str = "float32") -> np.ndarray:
    """One layer at width n = infinity and, for attention, H = infinity heads (fixed depth):
    the deterministic NNGP kernel map V -> V' of ``block``, shape (m, m).

    Standard attention: V' = lambda^2 V + gamma^2 E_S[A V A^T], the expectation by a fixed
    quasi-Monte Carlo rule (2^16 scrambled Sobol points; max entry error of E[A V A^T] about
    4e-5 at m = 3 and 1.3e-4 at m = 8 against 10^7-sample Monte Carlo; 20-40 ms per layer on
    2 CPU cores at m <= 8, 30 s at m = 128, where the points, 4 GB in all, are generated a
    chunk at a time: 0.44 GB peak memory of the whole process). Standard MLP: the arc-cosine
    kernel in
    closed form. Shaped blocks: the identity. With ``normalize="rms"`` V is first mapped to its
    correlation matrix and V' is the correlation after each sub-block.

    Raises ``NoNNGPLimitError`` for a block without an infinite-width map.
    """
    return _checked_kernel(block, V, "V", 1, normalize, dtype)[1]


def nngp_kernel(block: Block, V0: object, depth: int, normalize: str | None = None, *,
                dtype: str = "float32") -> np.ndarray:
    """The NNGP kernels V_0 = V0, V_1, ..., V_depth of ``depth`` blocks at n = H = infinity
    (``nngp_layer`` applied ``depth`` times), shape (depth + 1, m, m). Deterministic."""
    return _checked_kernel(block, V0, "V0", depth, normalize, dtype)


def _checked_kernel(block: object, V0: object, name: str, depth: object, normalize: object,
                    dtype: str) -> np.ndarray:
    block = _check_block(block, normalize)
    depth = check_int("depth", depth, low=1)
    V0 = _start(V0, name, block, dtype)
    return np.asarray(_kernel(traced_parameters(block, V0.dtype), V0, depth))


@eqx.filter_jit
@full_precision
def _random_recursion(block: Block, keys: Array, V0: Array, depth: int,
                      saved: tuple[int, ...]) -> tuple[Array]:
    """V at the ``saved`` layers of one n = infinity network per key, (len(keys), k, m, m):
    layer l draws its heads from fold_in(key, l), as ``simulate_network`` does."""

    def one(key: Array) -> Array:
        def step(V: Array, layer: Array) -> tuple[Array, Array]:
            V1 = block.infinite_width_layer(jax.random.fold_in(key, layer), V)
            return V1, V1

        path = jax.lax.scan(step, V0, jnp.arange(1, depth + 1))[1]
        return jnp.concatenate([V0[None], path])[np.asarray(saved)]

    return (jax.vmap(one)(keys),)


def simulate_infinite_width(block: Block, V0: object, *, depth: int, n_samples: int, key: Array,
                            n_save: int | None = None, normalize: str | None = None,
                            dtype: str = "float32", chunk_size: int = 1024,
                            progress: bool = False) -> Trajectories:
    """Sample the n = infinity recursion of ``depth`` blocks with the block's own number of
    heads: V_{l+1} = ``block.infinite_width_layer``(V_l), random where attention has finitely
    many heads (standard attention: V' = lambda^2 V + gamma^2 (1/H) sum_h A_h V A_h^T with
    fresh Gaussian logits per head and layer), deterministic otherwise.

    Args:
        block: any block with an infinite-width map (every built-in block).
        V0: initial covariance (m, m); with ``normalize="rms"`` mapped to its correlation.
        depth: number of blocks (fixed: the width is infinite).
        n_samples: independent networks; sample i uses ``fold_in(key, i)`` and its layer l
            ``fold_in(fold_in(key, i), l)``, so results do not depend on ``n_samples`` or
            ``chunk_size``.
        n_save: number of evenly spaced saved layers including 0 and ``depth`` (default: all
            depth + 1 layers).
        normalize: None, or "rms" (correlation matrix after every sub-block).
        dtype: "float32" or "float64".
        chunk_size: samples per compiled call.
        progress: draw a progress bar on stderr over the ``n_samples`` samples. Off by
            default in library calls.

    Returns:
        ``Trajectories`` whose ``t`` holds the saved **layer index** l, not the SDE time
        t = l / n (which is 0 for every layer at infinite width). Nothing explodes here
        (softmax rows and the ReLU kernel keep V bounded): ``exploded`` is all False.
    """
    config_block = block.config() if isinstance(block, Block) else None
    block = _check_block(block, normalize)
    depth = check_int("depth", depth, low=1)
    n_samples = check_int("n_samples", n_samples, low=1)
    chunk_size = check_int("chunk_size", chunk_size, low=1)
    if n_save is None:
        layers = np.arange(depth + 1)
    else:
        layers = save_layers(depth, check_int("n_save", n_save, low=2))
    V0 = _start(V0, "V0", block, dtype)
    saved = tuple(int(i) for i in layers)
    traced = traced_parameters(block, V0.dtype)  # one compilation for every gamma
    (V,) = run_chunked(lambda keys: _random_recursion(traced, keys, V0, depth, saved),
                       key, n_samples, chunk_size, progress=progress,
                       desc="infinite-width samples")
    return Trajectories(
        t=layers.astype(float), V=V, exploded=np.zeros(n_samples, bool),
        explosion_time=np.full(n_samples, np.inf),
        config={"kind": "infinite_width", "time": "layer index", "block": config_block,
                "depth": depth, "n_samples": n_samples,
                "normalize": "rms" if block.is_normalized else None,
                "dtype": dtype, "V0": np.asarray(V0).tolist()})
