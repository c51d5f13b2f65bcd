"""shapedsde: covariance SDEs of shaped Transformers, and the finite networks they describe.

    >>> import jax, numpy as np, shapedsde as sd
    >>> block = sd.ShapedAttention(tau0=1.0, gamma=0.5)
    >>> V0 = sd.default_covariance(4)
    >>> sde = sd.solve_sde(block, V0, T=1.0, n_paths=500, n_save=17, normalize="rms",
    ...                    key=jax.random.key(0))
    >>> net = sd.simulate_network(block, V0, width=128, depth=128, n_samples=500, n_save=17,
    ...                           normalize="rms", key=jax.random.key(1))
    >>> print(sd.compare(sde, net).final())
"""

import os as _os

# OpenBLAS (numpy's, and scipy's, which also serves XLA's eigh and Cholesky on a CPU) runs a
# thread pool for every call, even on small matrices; on a few shared cores the pool fights
# XLA's own threads. Measured on 2 cores: eigh of a 128 x 128 matrix 120 ms with the default
# pool, 0.8 ms with one thread; a reduced network at m = 128 45x faster, an SDE step 40x. Set
# here, before numpy is first imported (``import shapedsde`` first); an explicit setting wins.
_os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from .analysis import (  # noqa: E402  (after the thread setting)
    Comparison,
    Trajectories,
    compare,
    correlation,
    effective_rank,
    plot_correlation_bands,
    stable_rank,
)
from .blocks import (
    Block,
    Mask,
    NoNNGPLimitError,
    Normalized,
    NoSDELimitError,
    PositionGram,
    Serial,
    ShapedAttention,
    ShapedMLP,
    ShapedTransformerBlock,
    StandardAttention,
    StandardMLP,
    StandardTransformerBlock,
    block_from_config,
    block_mask,
    causal_mask,
    decay_gram,
    normalized,
    padding_mask,
    sinusoidal_gram,
    sliding_window_mask,
)
from .compile_cache import enable_compilation_cache
from .defaults import default_covariance
from .infinite_width import nngp_kernel, nngp_layer, simulate_infinite_width
from .network import one_layer_moments, simulate_network
from .sde import diffusion_cov, drift, solve_sde

__all__ = [
    "Block",
    "Comparison",
    "Mask",
    "NoNNGPLimitError",
    "NoSDELimitError",
    "Normalized",
    "PositionGram",
    "Serial",
    "ShapedAttention",
    "ShapedMLP",
    "ShapedTransformerBlock",
    "StandardAttention",
    "StandardMLP",
    "StandardTransformerBlock",
    "Trajectories",
    "block_from_config",
    "block_mask",
    "causal_mask",
    "compare",
    "correlation",
    "decay_gram",
    "default_covariance",
    "diffusion_cov",
    "drift",
    "effective_rank",
    "enable_compilation_cache",
    "nngp_kernel",
    "nngp_layer",
    "normalized",
    "one_layer_moments",
    "padding_mask",
    "plot_correlation_bands",
    "simulate_infinite_width",
    "simulate_network",
    "sinusoidal_gram",
    "sliding_window_mask",
    "solve_sde",
    "stable_rank",
]
__version__ = "0.1.0"
