"""Residual blocks: each holds its finite-width layer beside its covariance-SDE coefficients."""

from .attention import ShapedAttention, StandardAttention
from .base import Block, NoNNGPLimitError, NoSDELimitError
from .mlp import ShapedMLP
from .standard_mlp import StandardMLP
from .transformer import ShapedTransformerBlock, StandardTransformerBlock

__all__ = ["Block", "NoNNGPLimitError", "NoSDELimitError", "ShapedAttention", "ShapedMLP",
           "ShapedTransformerBlock", "StandardAttention", "StandardMLP",
           "StandardTransformerBlock"]
