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

from .blocks import (
    Block,
    NoNNGPLimitError,
    NoSDELimitError,
    ShapedAttention,
    ShapedMLP,
    ShapedTransformerBlock,
    StandardAttention,
    StandardMLP,
    StandardTransformerBlock,
)
from .coefficients import diffusion_cov, drift
from .compare import Comparison, compare
from .compile_cache import enable_compilation_cache
from .defaults import default_covariance
from .metrics import correlation, effective_rank, stable_rank
from .network import simulate_network
from .nngp import nngp_kernel, nngp_layer, simulate_infinite_width
from .plotting import plot_correlation_bands
from .sde import solve_sde
from .trajectories import Trajectories

__all__ = [
    "Block",
    "Comparison",
    "NoNNGPLimitError",
    "NoSDELimitError",
    "ShapedAttention",
    "ShapedMLP",
    "ShapedTransformerBlock",
    "StandardAttention",
    "StandardMLP",
    "StandardTransformerBlock",
    "Trajectories",
    "compare",
    "correlation",
    "default_covariance",
    "diffusion_cov",
    "drift",
    "effective_rank",
    "enable_compilation_cache",
    "nngp_kernel",
    "nngp_layer",
    "plot_correlation_bands",
    "simulate_infinite_width",
    "simulate_network",
    "solve_sde",
    "stable_rank",
]
__version__ = "0.1.0"
