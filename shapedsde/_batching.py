"""Run a jitted per-path function over many paths in fixed-size chunks with a progress bar,
each chunk split over the local JAX devices.

Every path draws its randomness from ``fold_in(key, path_index)``, so a path's result does not
depend on the chunk or batch size, nor on the number of devices; chunks are padded to one
shape (a multiple of the device count) so that one compilation serves every chunk.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.sharding import Mesh, PartitionSpec
from tqdm.auto import tqdm

PATHS = "paths"


def local_mesh() -> Mesh:
    """One-axis mesh ("paths") over this process's devices."""
    return Mesh(np.array(jax.local_devices()), (PATHS,))


def over_devices(fn: Callable[..., object], batched: object, *replicated: Array) -> object:
    """``fn(batched, *replicated)`` with the leading axis of every array in the pytree
    ``batched`` (and of every output) split over the local devices; a plain call on one
    device. The leading size must be a multiple of the device count (``run_chunked`` pads)."""
    mesh = local_mesh()
    if mesh.size == 1:
        return fn(batched, *replicated)
    specs = (PartitionSpec(PATHS),) + (PartitionSpec(),) * len(replicated)
    return jax.shard_map(fn, mesh=mesh, in_specs=specs, out_specs=PartitionSpec(PATHS),
                         check_vma=False)(batched, *replicated)


def path_keys(key: Array, start: int, size: int) -> Array:
    """Keys of paths start, ..., start + size - 1: ``fold_in(key, index)``."""
    return jax.vmap(jax.random.fold_in, (None, 0))(key, jnp.arange(start, start + size))


def chunks(n: int, chunk_size: int) -> Iterator[tuple[int, int]]:
    """(start, number of real paths) of each chunk."""
    for start in range(0, n, chunk_size):
        yield start, min(chunk_size, n - start)


def padded_chunk_size(n: int, chunk_size: int) -> int:
    """min(chunk_size, n) rounded up to a multiple of the local device count."""
    devices = jax.local_device_count()
    return -(-max(1, min(chunk_size, n)) // devices) * devices


def run_chunked(fn: Callable[[Array], tuple[Array, ...]], key: Array, n: int, chunk_size: int,
                *, first: int = 0, progress: bool, desc: str) -> tuple[np.ndarray, ...]:
    """Concatenate ``fn(path_keys(chunk))`` over the chunks of paths first, ..., first + n - 1,
    dropping the padding."""
    chunk_size = padded_chunk_size(n, chunk_size)
    parts: list[tuple[np.ndarray, ...]] = []
    with tqdm(total=n, desc=desc, disable=not progress, unit="path", leave=False) as bar:
        for start, size in chunks(n, chunk_size):
            out = fn(path_keys(key, first + start, chunk_size))
            parts.append(tuple(np.asarray(o)[:size] for o in out))
            bar.update(size)
    return tuple(np.concatenate(p, axis=0) for p in zip(*parts, strict=True))
