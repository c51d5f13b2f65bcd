"""Run a jitted per-path function over many paths in fixed-size chunks with a progress bar.

Every path draws its randomness from ``fold_in(key, path_index)``, so a path's result does not
depend on the chunk or batch size; chunks are padded to one shape so that one compilation
serves every chunk.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from tqdm.auto import tqdm


def path_keys(key: Array, start: int, size: int) -> Array:
    """Keys of paths start, ..., start + size - 1: ``fold_in(key, index)``."""
    return jax.vmap(jax.random.fold_in, (None, 0))(key, jnp.arange(start, start + size))


def chunks(n: int, chunk_size: int) -> Iterator[tuple[int, int]]:
    """(start, number of real paths) of each chunk."""
    for start in range(0, n, chunk_size):
        yield start, min(chunk_size, n - start)


def run_chunked(fn: Callable[[Array], tuple[Array, ...]], key: Array, n: int, chunk_size: int,
                *, progress: bool, desc: str) -> tuple[np.ndarray, ...]:
    """Concatenate ``fn(path_keys(chunk))`` over chunks, dropping the padding."""
    chunk_size = max(1, min(chunk_size, n))
    parts: list[tuple[np.ndarray, ...]] = []
    with tqdm(total=n, desc=desc, disable=not progress, unit="path", leave=False) as bar:
        for start, size in chunks(n, chunk_size):
            out = fn(path_keys(key, start, chunk_size))
            parts.append(tuple(np.asarray(o)[:size] for o in out))
            bar.update(size)
    return tuple(np.concatenate(p, axis=0) for p in zip(*parts, strict=True))
