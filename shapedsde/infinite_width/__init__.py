"""The other limit: infinite width at fixed depth (NNGP kernels, Hron et al. 2020; SPEC
section 8)."""

from .nngp import nngp_kernel, nngp_layer, simulate_infinite_width

__all__ = ["nngp_kernel", "nngp_layer", "simulate_infinite_width"]
