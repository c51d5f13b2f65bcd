"""Residual blocks: each holds its finite-width layer beside its covariance-SDE coefficients."""

from .attention import ShapedAttention, StandardAttention
from .base import Block, NoSDELimitError

__all__ = ["Block", "NoSDELimitError", "ShapedAttention", "StandardAttention"]
