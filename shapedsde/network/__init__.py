"""The finite network the SDE describes: the full simulator (real n x n weights), the exact
reduced one (the same law on m x m matrices, SPEC section 4), and one-layer moments."""

from .moments import Estimate, one_layer_increments, one_layer_moments
from .simulate import simulate_network

__all__ = ["Estimate", "one_layer_increments", "one_layer_moments", "simulate_network"]
