"""Batched tiny matrix products on CPU: XLA ``dot`` against fused multiply-adds.

``shapedsde.linalg.matmul`` writes a @ b as m broadcast multiply-adds when the inner size is
<= 7 and uses ``dot`` beyond; this script measures why. For each m it times, per product and
per matrix of a batch of 1024, (i) ``a @ b`` (one batched ``dot``), (ii) the fused form, and
(iii) the chain L @ X @ L^T of the noise products, each inside a ``fori_loop`` so that the
product is the loop's work. Run:

    .venv/bin/python benchmarks/small_products.py
"""

from __future__ import annotations

import time
from collections.abc import Callable

import jax
import jax.numpy as jnp

from shapedsde import linalg
from shapedsde.linalg import fused_matmul

BATCH, REPEATS = 1024, 64


def per_matrix_us(step: Callable[[jax.Array, jax.Array], jax.Array], a: jax.Array,
                  L: jax.Array, rounds: int = 5) -> float:
    """Best time per matrix of ``REPEATS`` dependent applications of ``step``, in us."""
    run = jax.jit(lambda a, L: jax.lax.fori_loop(0, REPEATS, lambda i, x: step(x, L), a))
    run(a, L).block_until_ready()
    best = float("inf")
    for _ in range(rounds):
        start = time.perf_counter()
        run(a, L).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return best / REPEATS / BATCH * 1e6


def main() -> None:
    print(f"per matrix of a batch of {BATCH}, us; linalg.matmul is fused for m <= "
          f"{linalg._UNROLLED_PRODUCT_MAX}")
    print("  m    dot  fused   L X L^T dot  L X L^T fused")
    for m in range(2, 11):
        k1, k2 = jax.random.split(jax.random.key(m))
        a = 0.3 * jax.random.normal(k1, (BATCH, m, m))
        L = 0.3 * jax.random.normal(k2, (BATCH, m, m))
        dot = per_matrix_us(lambda x, L: 0.5 * (x @ L), a, L)
        fused = per_matrix_us(lambda x, L: 0.5 * fused_matmul(x, L), a, L)
        chain_dot = per_matrix_us(lambda x, L: 0.5 * (L @ x @ jnp.swapaxes(L, 1, 2)), a, L)
        chain_fused = per_matrix_us(
            lambda x, L: 0.5 * fused_matmul(fused_matmul(L, x), jnp.swapaxes(L, 1, 2)), a, L)
        print(f"{m:3d} {dot:6.3f} {fused:6.3f} {chain_dot:12.3f} {chain_fused:14.3f}")


if __name__ == "__main__":
    main()
