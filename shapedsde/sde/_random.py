r"""Counter-based Gaussian noise for the SDE solver: Threefry-2x32-20 written in plain ``jnp``.

Every path owns a 64-bit Threefry key (drawn once from its JAX key, ``path_key_words``); the
normals of step ``s`` come from the Threefry hashes of the counters (s, 0), (s, 1), ... under that
key, each hash giving two 32-bit words, through a Box-Muller transform (float32) or the inverse
normal CDF (float64, as ``jax.random.normal`` does); see ``standard_normal``.

Why not ``jax.random.normal(fold_in(key, s))``: on the CPU backend JAX lowers Threefry as a
rolled loop and, in its partitionable mode, spends one hash per 32-bit word; this unrolled,
fused version gives the same generator family (Random123 Threefry-2x32 with 20 rounds, checked
against JAX's own ``threefry_2x32`` on the Random123 known-answer vectors in the tests) at about
a fifth of the cost, which is the largest single item of an Euler step at small m.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = np.uint32(0x1BD11BDA)


def _rotl(x: Array, r: int) -> Array:
    return (x << np.uint32(r)) | (x >> np.uint32(32 - r))


def threefry2x32(k0: Array, k1: Array, x0: Array, x1: Array) -> tuple[Array, Array]:
    """Threefry-2x32 with 20 rounds (Salmon et al. 2011) of the counter (x0, x1) under the key
    (k0, k1); all uint32, broadcast together."""
    ks = (k0, k1, k0 ^ k1 ^ _PARITY)
    x0, x1 = x0 + ks[0], x1 + ks[1]
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x0 = x0 + x1
            x1 = _rotl(x1, r) ^ x0
        x0 = x0 + ks[(i + 1) % 3]
        x1 = x1 + ks[(i + 2) % 3] + np.uint32(i + 1)
    return x0, x1


def path_key_words(key: Array) -> Array:
    """The (2,) uint32 Threefry key of one path, drawn from its JAX key (any PRNG impl)."""
    return jax.random.bits(key, (2,), jnp.uint32)


def _hashes(words: Array, counter: Array, k: int) -> tuple[Array, Array]:
    """Hashes of the counters (counter, 0), ..., (counter, k - 1) under the path key ``words``
    (2,): two arrays of k uint32 words."""
    i = jnp.arange(k, dtype=jnp.uint32)
    return threefry2x32(words[0], words[1], jnp.full_like(i, counter), i)


def random_words(words: Array, counter: Array, n: int) -> Array:
    """The first n uint32 words of the stream ``counter`` (both words of hash 0, then hash 1,
    ...: a shorter request is a prefix of a longer one)."""
    return jnp.stack(_hashes(words, counter, (n + 1) // 2), axis=-1).reshape(-1)[:n]


def _unit_interval(bits: Array, dtype: jnp.dtype) -> Array:
    """Uniform in [0, 1) from the top mantissa bits of ``bits`` (uint32, or uint64 for float64)."""
    nmant = jnp.finfo(dtype).nmant
    one = jnp.asarray(1.0, dtype)
    as_uint = bits.dtype.type
    mantissa = (bits >> as_uint(bits.dtype.itemsize * 8 - nmant)) \
        | jax.lax.bitcast_convert_type(one, bits.dtype)
    return jax.lax.bitcast_convert_type(mantissa, dtype) - one


# Taylor coefficients of sin x / x and cos x in x^2, enough for float32 on |x| <= pi / 2
_SIN = tuple((-1) ** k / math.factorial(2 * k + 1) for k in range(6))
_COS = tuple((-1) ** k / math.factorial(2 * k) for k in range(7))


def _polynomial(x2: Array, coefficients: tuple[float, ...]) -> Array:
    out = jnp.asarray(coefficients[-1], x2.dtype)
    for c in coefficients[-2::-1]:
        out = out * x2 + jnp.asarray(c, x2.dtype)
    return out


def _cos_sin_uniform_angle(v: Array) -> tuple[Array, Array]:
    """(cos phi, sin phi) of the angle phi = 2 pi v - pi for v in [0, 1), to float32 rounding
    (max error 4e-7): Taylor polynomials of the half angle (|phi / 2| <= pi / 2), then the
    double-angle formulas. Only multiply-adds: several times cheaper on CPU than ``jnp.cos``
    and ``jnp.sin``, whose range reduction is built for arbitrary arguments."""
    h = jnp.asarray(np.pi, v.dtype) * (v - 0.5)
    h2 = h * h
    s, c = h * _polynomial(h2, _SIN), _polynomial(h2, _COS)
    return c * c - s * s, 2.0 * s * c


def _inverse_cdf(hi: Array, lo: Array, dtype: jnp.dtype) -> Array:
    """float64 normals from the two words of each hash (52 random mantissa bits)."""
    hi, lo = hi.astype(jnp.uint64), lo.astype(jnp.uint64)
    u = 2.0 * _unit_interval((hi << np.uint64(32)) | lo, dtype) - 1.0
    low = np.nextafter(np.asarray(-1.0, dtype), np.asarray(0.0, dtype))
    return jnp.asarray(np.sqrt(2.0), dtype) * jax.lax.erf_inv(jnp.maximum(low, u))


def _radius(u: Array) -> Array:
    return jnp.sqrt(-2.0 * jnp.log(1.0 - u))  # 1 - u in (0, 1]


def standard_normal(words: Array, counter: Array, n: int, dtype: jnp.dtype) -> Array:
    """n iid N(0, 1) of the stream ``counter`` under the path key ``words``.

    float32: Box-Muller on the stream's first 2 ceil(n / 2) words, uniforms u from their top 23
    bits: the first half gives the radii sqrt(-2 log(1 - u)) (1 - u >= 2^-23, so |z| <= 5.65),
    the second half the angles; z = (r cos, r sin). With polynomial cos and sin this costs
    about 0.4 of the inverse-CDF transform ``sqrt(2) erfinv(2u - 1)`` on CPU (``erf_inv`` is
    the single most expensive operation of the noise). float64: inverse CDF, one hash (52
    random mantissa bits) per normal."""
    dtype = jnp.dtype(dtype)
    if dtype == jnp.float64:
        return _inverse_cdf(*_hashes(words, counter, n), dtype)
    half = (n + 1) // 2
    u = _unit_interval(random_words(words, counter, 2 * half), dtype)
    cos, sin = _cos_sin_uniform_angle(u[half:])
    r = _radius(u[:half])
    return jnp.concatenate([r * cos, r * sin])[:n]


def normals_at(words: Array, counter: Array, n: Array, positions: Array,
               dtype: jnp.dtype) -> Array:
    """``standard_normal(words, counter, n, dtype)[positions]`` without the rest of the stream:
    the hashes of just the words these normals use (two per normal in float32, where each
    normal reads a radius and an angle word; one in float64). Elementwise: ``words`` (..., 2),
    ``counter``, ``n`` and ``positions`` (uint32, traced) broadcast together, so normals of
    several streams and keys come from one fused computation."""
    dtype = jnp.dtype(dtype)
    k0, k1 = words[..., 0], words[..., 1]
    if dtype == jnp.float64:
        return _inverse_cdf(*threefry2x32(k0, k1, counter + 0 * positions, positions), dtype)
    half = (n + np.uint32(1)) // np.uint32(2)
    first = positions < half  # r cos of pair i = position, else r sin of pair position - half
    pair = jnp.where(first, positions, positions - half)

    def word(index: Array) -> Array:  # word 2i, 2i + 1 of the stream: the two halves of hash i
        x0, x1 = threefry2x32(k0, k1, counter + 0 * index, index >> np.uint32(1))
        return _unit_interval(jnp.where(index % 2 == 0, x0, x1), dtype)

    cos, sin = _cos_sin_uniform_angle(word(pair + half))
    return _radius(word(pair)) * jnp.where(first, cos, sin)
