"""Residual blocks: each holds its finite-width layer beside its covariance-SDE coefficients."""

from .attention import ShapedAttention, StandardAttention
from .base import Block, NoSDELimitError
from .mlp import ShapedMLP
from .transformer import ShapedTransformerBlock

__all__ = ["Block", "NoSDELimitError", "ShapedAttention", "ShapedMLP", "ShapedTransformerBlock",
           "StandardAttention"]
