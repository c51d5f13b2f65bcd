"""Run a jitted per-path function over many paths in fixed-size chunks with a progress bar,
each chunk split over the local JAX devices.

Every path draws its randomness from ``fold_in(key, path_index)``, so a path's result does not
depend on the chunk or batch size, nor on the number of devices; chunks are padded to one
shape (a power of two up to the chunk size, and a multiple of the device count) so that one
compilation serves every chunk, and every number of paths up to the same power of two.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from jax.sharding import Mesh, NamedSharding, PartitionSpec
from tqdm.auto import tqdm

PATHS = "paths"
MIN_BUCKET = 8
"""Smallest padded chunk: runs of 1 to 8 paths share one compilation."""


def highest(priority: Array, size: int) -> Array:
    """Indices of the ``size`` largest of ``priority`` (B,) (int, >= 0), largest first and equal
    ones by index: ``jax.lax.top_k``'s order, by ``size`` passes of ``argmax``. On the CPU
    ``top_k`` sorts the whole batch: 141 us for 2 of 1024 paths against 5.6 us here, a cost
    that ``in_groups`` paid in every step where a path was hot (``benchmarks/README.md``)."""
    lowest = jnp.iinfo(priority.dtype).min

    def pick(i: Array, state: tuple[Array, Array]) -> tuple[Array, Array]:
        left, idx = state
        j = jnp.argmax(left).astype(jnp.int32)
        return left.at[j].set(lowest), idx.at[i].set(j)

    return jax.lax.fori_loop(0, size, pick, (priority, jnp.zeros(size, jnp.int32)))[1]


def in_groups(priority: Array, size: int,
              body: Callable[[Array, Array, Any], tuple[Any, Array]], carry: Any) -> Any:
    """Apply ``body(idx, todo, carry) -> (carry, done)`` to groups of at most ``size`` of the
    paths of a batch with ``priority`` (B,) > 0, highest first, until none is left (a
    ``while_loop``): the work of a rare kind of path (PSD repairs, refinement) then costs in
    proportion to those paths, not to the batch. ``idx`` may hold paths with priority 0 when
    fewer are left (``todo`` marks the others); ``done`` (within ``idx``) must include the
    first path, which has the highest priority."""
    size = min(size, priority.shape[0])

    def step(state: tuple[Any, Array]) -> tuple[Any, Array]:
        carry, priority = state
        idx = highest(priority, size)
        carry, done = body(idx, priority[idx] > 0, carry)
        return carry, priority.at[idx].set(jnp.where(done, 0, priority[idx]))

    return jax.lax.while_loop(lambda state: jnp.any(state[1] > 0), step, (carry, priority))[0]


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
    """Keys of paths start, ..., start + size - 1: ``fold_in(key, index)``, the index as a
    uint32 word (callers keep real indices below 2**32, ``validation.check_path_range``; the
    padding beyond is dropped, so its wrapping does not matter)."""
    index = (np.arange(size, dtype=np.uint64) + np.uint64(start)) % np.uint64(2**32)
    return _fold_in_each(key, jnp.asarray(index.astype(np.uint32)))


_fold_in_each = jax.jit(jax.vmap(jax.random.fold_in, (None, 0)))
"""fold_in(key, i) for each i, compiled: an eager ``vmap`` is traced anew at every chunk."""


def key_record(key: Array) -> dict[str, object]:
    """The key as JSON (PRNG implementation and key data), stored in a result's config."""
    if jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
        return {"impl": str(jax.random.key_impl(key)),
                "data": np.asarray(jax.random.key_data(key)).tolist()}
    return {"impl": "raw uint32", "data": np.asarray(key).tolist()}


def chunks(n: int, chunk_size: int) -> Iterator[tuple[int, int]]:
    """(start, number of real paths) of each chunk."""
    for start in range(0, n, chunk_size):
        yield start, min(chunk_size, n - start)


def padded_chunk_size(n: int, chunk_size: int) -> int:
    """Paths per compiled call: min(chunk_size, the power of two >= max(n, MIN_BUCKET)),
    rounded up to a multiple of the local device count. A new n (a sweep over the number of
    paths) compiles again only when it crosses a power of two below the chunk size."""
    devices = jax.local_device_count()
    bucket = 1 << (max(n, MIN_BUCKET) - 1).bit_length()
    return -(-max(1, min(chunk_size, bucket)) // devices) * devices


class ChunkedResult:
    """Arrays of n paths filled chunk by chunk (``put``), allocated at the first chunk: the
    result is held once, not twice."""

    def __init__(self, n: int):
        self.n = n
        self.arrays: tuple[np.ndarray, ...] = ()

    def put(self, rows: slice, outputs: tuple[Array, ...]) -> None:
        """Store a chunk's outputs (leading axis: the padded chunk) in ``rows``."""
        out = [np.asarray(o) for o in outputs]
        if not self.arrays:
            self.arrays = tuple(np.empty((self.n, *o.shape[1:]), o.dtype) for o in out)
        for whole, o in zip(self.arrays, out, strict=True):
            whole[rows] = o[:rows.stop - rows.start]


def path_chunks(key: Array, n: int, chunk_size: int, *, first: int = 0, progress: bool,
                desc: str) -> Iterator[tuple[slice, Array]]:
    """For each chunk of paths first, ..., first + n - 1: the rows of the result it fills and
    its keys (padded to one shape; ``on_devices``), with a progress bar over the paths."""
    chunk_size = padded_chunk_size(n, chunk_size)
    with tqdm(total=n, desc=desc, disable=not progress, unit="path", leave=False) as bar:
        for start, size in chunks(n, chunk_size):
            yield slice(start, start + size), on_devices(path_keys(key, first + start,
                                                                   chunk_size))
            bar.update(size)


def on_devices(x: Array) -> Array:
    """``x`` with its leading (paths) axis split over the local devices (unchanged on one
    device): a jitted function of it then runs each device's share (GSPMD)."""
    mesh = local_mesh()
    if mesh.size == 1:
        return x
    return jax.device_put(x, NamedSharding(mesh, PartitionSpec(PATHS)))


def run_chunked(fn: Callable[[Array], tuple[Array, ...]], key: Array, n: int, chunk_size: int,
                *, first: int = 0, progress: bool, desc: str) -> tuple[np.ndarray, ...]:
    """Concatenate ``fn(keys of a chunk)`` over the chunks of paths first, ..., first + n - 1,
    dropping the padding."""
    result = ChunkedResult(n)
    for rows, keys in path_chunks(key, n, chunk_size, first=first, progress=progress,
                                  desc=desc):
        result.put(rows, fn(keys))
    return result.arrays
