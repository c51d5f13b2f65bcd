r"""A fixed quasi-Monte Carlo rule for Gaussian expectations (the NNGP kernel of attention).

``nngp_layer`` of standard attention needs E_S[A V A^T], an integral over the m x m logits S of
one head. In token space S = L P L^T (L L^T = V), where P is

* P = Z, iid m x m standard normal, in the Gaussian limit (key_dim=None): then
  Cov(S_ab, S_cd) = V_ac V_bd;
* P = Z_q Z_k^T / sqrt(k) with Z_q, Z_k iid m x k for a finite key width k, sampled as
  G T^T / sqrt(k) with G iid m x m and T the Bartlett factor of a Wishart_m(I, k)
  (``reduced.gaussian_product``; for k < m, Z_q and Z_k themselves).

The rule is N = 2^16 points P_i from one scrambled Sobol sequence (seed 0) pushed through the
inverse normal and chi CDFs, so it is deterministic and E[f(P)] is approximated by the plain
average of f(P_i). Two ways to hold it, chosen by its size (``is_streamed``):

* up to ``CACHE_BYTES`` (m <= 11 for key_dim=None) ``logit_points`` returns all N points at
  once (float64, cached per (m, key_dim)); ``nngp_layer`` averages them in chunks;
* beyond that (2^16 m^2 floats are 4 GB at m = 128) ``StreamedRule`` regenerates the points a
  chunk at a time inside the compiled layer: Sobol point i is shift XOR D(gray(i)), D(g) the
  XOR of the scrambled direction numbers at the set bits of g, and for a chunk start s that is
  a multiple of the chunk size B, gray(s + r) = gray(s) XOR gray(r) (r < B), so a chunk is one
  (B, d) table of D(gray(r)) XOR one row. The same points up to the inverse normal CDF
  (XLA's ndtri in the layer's dtype, scipy's in float64 for the cache): the two paths agree to
  float rounding (tested), and the working set is a few chunks (``streamed_working_bytes``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array
from scipy import stats
from scipy.stats import qmc

N_POINTS = 2**16
"""Number of quasi-Monte Carlo points of the rule (a power of two, as Sobol needs)."""
SEED = 0
"""Seed of the Owen scrambling of the Sobol sequence: the rule is one fixed set of points."""
CACHE_BYTES = 2**26
"""Largest rule (float64 bytes of all N points) held in memory at once; larger rules stream.
Holding costs several copies while the points are made and handed to XLA: peak resident memory
of one ``nngp_kernel`` call measured 0.78 GB at m = 11 (the largest cached), 1.35 GB at m = 16
and 2.3 GB at m = 22 had they been cached, 0.36 GB streamed at m = 12."""
CHUNK_BYTES = 2**23
"""Bytes of one chunk of streamed points in the layer's dtype (8 MiB). Measured at m = 64 on 2
cores: 6.7 s per layer with 8 MiB or 2 MiB chunks, 16.7 s with 32 MiB ones (a chunk's arrays
then fall out of the caches between the passes of generation and mixing)."""
MAX_CHUNK = 4096
"""Points averaged per step: the cached rule's chunk, kept so its results do not change."""
_CLIP = 1e-12  # a scrambled point is never exactly 0; keep the inverse CDFs finite anyway


MAX_DIMS = 21201
"""Most dimensions scipy's Sobol direction numbers cover (Joe and Kuo): m <= 145 tokens for
key_dim=None."""


def rule_dims(m: int, key_dim: int | None) -> int:
    """Dimension of the Sobol sequence behind the rule (the uniforms of one point); ValueError
    beyond ``MAX_DIMS``."""
    if key_dim is None:
        dims = m * m
    elif key_dim < m:
        dims = 2 * m * key_dim
    else:
        dims = m * m + m * (m - 1) // 2 + m
    if dims > MAX_DIMS:
        raise ValueError(
            f"the NNGP rule of {m} tokens with key_dim={key_dim} needs a Sobol sequence of "
            f"{dims} dimensions, more than the {MAX_DIMS} it has: use fewer tokens, or a "
            f"key_dim below m with 2 m key_dim <= {MAX_DIMS} (or key_dim=None, m <= 145)")
    return dims


def rule_bytes(m: int, key_dim: int | None) -> int:
    """float64 bytes of all N points P_i (N m^2 floats)."""
    return N_POINTS * m * m * 8


def is_streamed(m: int, key_dim: int | None) -> bool:
    """Whether the rule of m tokens is generated a chunk at a time (too large to cache)."""
    return rule_bytes(m, key_dim) > CACHE_BYTES


def chunk_points(m: int, itemsize: int) -> int:
    """Points per streamed chunk: the largest power of two up to ``MAX_CHUNK`` (4096) whose
    chunk of P stays within ``CHUNK_BYTES`` (512 at m = 64 and 128 at m = 128 in float32)."""
    fits = max(CHUNK_BYTES // (m * m * itemsize), 1)
    return min(MAX_CHUNK, 2 ** int(math.log2(fits)))


def streamed_working_bytes(m: int, key_dim: int | None, itemsize: int) -> int:
    """The memory the streamed rule holds during one layer, by the chunk arithmetic: the
    (B, d) uint32 table and the uniforms of a chunk as d floats (twice), the chunk's logits,
    attention matrices and their products (8 (B, m, m) arrays, more than are alive at once),
    and the constants (direction numbers, the Bartlett diagonal). 0.09 GB at m = 128 (float32,
    key_dim=None); the whole process, JAX runtime included, peaked at 0.44 GB there."""
    B, d = chunk_points(m, itemsize), rule_dims(m, key_dim)
    table = B * d * 4
    uniforms = 2 * B * d * itemsize
    mixing = 8 * B * m * m * itemsize
    constants = d * 31 * 4 + (N_POINTS * m * itemsize if key_dim is not None
                              and key_dim >= m else 0)
    return table + uniforms + mixing + constants


def _sobol_uniforms(n_points: int, dim: int) -> np.ndarray:
    """(n_points, dim) scrambled Sobol points in (0, 1)."""
    u = qmc.Sobol(dim, scramble=True, seed=SEED).random_base2(int(np.log2(n_points)))
    return np.clip(u, _CLIP, 1.0 - _CLIP)


@functools.lru_cache(maxsize=8)
def logit_points(m: int, key_dim: int | None, n_points: int = N_POINTS) -> np.ndarray:
    """The points P_i, shape (n_points, m, m), float64 and read-only: S = L P_i L^T are the
    logits of one head at the quadrature nodes (see the module docstring)."""
    rule_dims(m, key_dim)  # the check of the size
    if key_dim is None or key_dim < m:
        dims = m * m if key_dim is None else 2 * m * key_dim
        P = points_from_normals(stats.norm.ppf(_sobol_uniforms(n_points, dims)), None, m,
                                key_dim)
    else:
        n_low = m * (m - 1) // 2
        u = _sobol_uniforms(n_points, m * m + n_low + m)
        P = points_from_normals(stats.norm.ppf(u[:, : m * m + n_low]),
                                _bartlett_diagonal(u[:, m * m + n_low:], key_dim), m, key_dim)
    P.setflags(write=False)
    return P


def points_from_normals(z: np.ndarray | Array, diag: np.ndarray | Array | None, m: int,
                        key_dim: int | None) -> np.ndarray | Array:
    """P (n, m, m) from a rule's normals z (n, dims) and, for key_dim >= m, its Bartlett
    diagonal (n, m): one construction for the cached rule (NumPy, float64) and the streamed
    one (JAX, in the layer). The lower triangle and diagonal of T are placed by products with
    0/1 embeddings, which are exact, so that the same code runs on both array types."""
    xp = np if isinstance(z, np.ndarray) else jnp
    n = z.shape[0]
    if key_dim is None:
        return z.reshape(n, m, m)
    if key_dim < m:
        Z = z.reshape(n, 2, m, key_dim)
        return Z[:, 0] @ xp.swapaxes(Z[:, 1], -1, -2) / math.sqrt(key_dim)
    lower, diagonal = _triangle_embeddings(m)
    G = z[:, : m * m].reshape(n, m, m)
    T = (z[:, m * m:] @ xp.asarray(lower, z.dtype)
         + diag @ xp.asarray(diagonal, z.dtype)).reshape(n, m, m)
    return G @ xp.swapaxes(T, -1, -2) / math.sqrt(key_dim)


@functools.lru_cache(maxsize=16)
def _triangle_embeddings(m: int) -> tuple[np.ndarray, np.ndarray]:
    """0/1 matrices that place m (m - 1) / 2 values on the strict lower triangle (row-major,
    ``np.tril_indices`` order) and m values on the diagonal of a flattened m x m matrix."""
    rows, cols = np.tril_indices(m, -1)
    lower = np.zeros((len(rows), m * m))
    lower[np.arange(len(rows)), rows * m + cols] = 1.0
    diagonal = np.zeros((m, m * m))
    diagonal[np.arange(m), np.arange(m) * (m + 1)] = 1.0
    return lower, diagonal


def _bartlett_diagonal(u: np.ndarray, key_dim: int) -> np.ndarray:
    """T_ii = sqrt(chi^2(k - i)) at the uniforms u (n, m) (Bartlett's decomposition)."""
    return np.sqrt(stats.chi2.ppf(u, key_dim - np.arange(u.shape[1])))


# -- the streamed rule ----------------------------------------------------------------------

@functools.lru_cache(maxsize=4)
def _direction_numbers(dim: int) -> tuple[np.ndarray, np.ndarray, float]:
    """The scrambled Sobol sequence of ``dim`` dimensions as (direction numbers (dim, bits)
    uint32, digital shift (dim,) uint32, 2^-bits): point i = (shift XOR D(gray(i))) 2^-bits.
    scipy's engine holds them (private attributes; ``test_nngp`` checks the points bit for bit
    against ``random_base2`` so a change of scipy is caught)."""
    engine = qmc.Sobol(dim, scramble=True, seed=SEED)
    return (np.ascontiguousarray(engine._sv, np.uint32),
            np.asarray(engine._shift, np.uint32), float(engine._scale))


def _xor_of_directions(sv: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """D(g) for each Gray code g in ``codes``: (len(codes), dim) uint32."""
    out = np.zeros((len(codes), sv.shape[0]), np.uint32)
    for bit in range(sv.shape[1]):
        on = (codes >> bit) & 1 == 1
        out[on] ^= sv[:, bit]
    return out


def _gray(i: np.ndarray) -> np.ndarray:
    return i ^ (i >> 1)


def sobol_rows(start: int, count: int, dim: int, first: int = 0) -> np.ndarray:
    """Rows start .. start + count - 1 of the rule's scrambled Sobol sequence of ``dim``
    dimensions, columns ``first`` .. dim - 1, float64 (the closed form the streamed rule uses;
    equal bit for bit to scipy's)."""
    sv, shift, scale = _direction_numbers(dim)
    bits = _xor_of_directions(sv[first:],
                              _gray(np.arange(start, start + count, dtype=np.int64)))
    return (bits ^ shift[first:]) * scale


class StreamedRule:
    """The rule of m tokens as ``n_chunks`` chunks of ``chunk`` points generated on demand
    (``chunks``): chunk c holds P_i for i in [c B, (c + 1) B), shape (B, m, m)."""

    def __init__(self, m: int, key_dim: int | None, dtype: object):
        self.m, self.key_dim, self.dtype = m, key_dim, jnp.dtype(dtype)
        self.chunk = chunk_points(m, self.dtype.itemsize)
        self.n_chunks = N_POINTS // self.chunk
        dims = rule_dims(m, key_dim)
        # the Bartlett diagonal needs the chi inverse CDF, which XLA lacks: its N m uniforms
        # (2^16 m floats, 32 MB at m = 128) are transformed once on the host
        self.normal_dims = dims - (m if key_dim is not None and key_dim >= m else 0)
        sv, shift, self._scale = _direction_numbers(dims)
        self._sv, self._shift = sv[: self.normal_dims], shift[: self.normal_dims]
        self._diagonal = None
        if self.normal_dims < dims:
            u = np.clip(sobol_rows(0, N_POINTS, dims, self.normal_dims), _CLIP, 1 - _CLIP)
            self._diagonal = _bartlett_diagonal(u, key_dim)

    def chunks(self) -> tuple[Callable[[Array], Array], Array]:
        """(points, indices): ``points(c)`` is the c-th chunk of P_i in the rule's dtype, for
        c in ``indices`` (to be mapped over inside a compiled function)."""
        sv = jnp.asarray(self._sv)
        r = np.arange(self.chunk, dtype=np.int64)
        low = jnp.asarray(np.broadcast_to(self._shift, (self.chunk, self.normal_dims)))
        for bit in range(int(2 * self.chunk - 1).bit_length()):  # gray(r) < 2B
            on = jnp.asarray(((_gray(r) >> bit) & 1 == 1)[:, None])
            low = jnp.where(on, low ^ sv[:, bit], low)  # shift XOR D(gray(r)), built per call
        return functools.partial(self._points, low, sv), jnp.arange(self.n_chunks)

    def _points(self, low: Array, sv: Array, c: Array) -> Array:
        m, k, B = self.m, self.key_dim, self.chunk
        code = jnp.asarray(c, jnp.uint32) * B
        code = code ^ (code >> 1)  # gray(cB): XOR gray(r) gives gray(cB + r)
        on = (code >> jnp.arange(sv.shape[1], dtype=jnp.uint32)) & 1
        high = jax.lax.reduce(sv * on, np.uint32(0), jax.lax.bitwise_xor, (1,))
        x = low ^ high  # u = x 2^-bits
        # the upper half through 1 - u = (2^bits - x) 2^-bits, exact in integers: in float32
        # u itself would round to 1 (z = inf) for x within 32 of 2^bits
        one = round(1 / self._scale)
        upper = x >= one // 2
        tail = jnp.where(upper, jnp.uint32(one) - x, x).astype(self.dtype) * self._scale
        z = jax.scipy.special.ndtri(jnp.maximum(tail, _CLIP))
        z = jnp.where(upper, -z, z)
        diag = None
        if self._diagonal is not None:
            diag = jax.lax.dynamic_slice_in_dim(jnp.asarray(self._diagonal, self.dtype),
                                                c * B, B)
        return points_from_normals(z, diag, m, k)

@functools.lru_cache(maxsize=8)
def streamed_rule(m: int, key_dim: int | None, dtype: str) -> StreamedRule:
    """The cached ``StreamedRule`` (its direction numbers are read once per (m, key_dim))."""
    return StreamedRule(m, key_dim, dtype)
