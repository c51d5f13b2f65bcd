"""Residual blocks: each holds its finite-width layer beside its covariance-SDE coefficients
and its infinite-width map; compositions (``Serial``) and RMS normalisation (``Normalized``)
are blocks too."""

from .attention import AbstractAttention, ShapedAttention, StandardAttention
from .base import Block, NoNNGPLimitError, NoSDELimitError, traced_parameters
from .mlp import ShapedMLP
from .normalization import Normalized, normalized
from .rebuild import block_from_config
from .serial import Serial, ShapedTransformerBlock, StandardTransformerBlock
from .standard_mlp import StandardMLP

__all__ = ["AbstractAttention", "Block", "NoNNGPLimitError", "NoSDELimitError", "Normalized",
           "Serial", "ShapedAttention", "ShapedMLP", "ShapedTransformerBlock",
           "StandardAttention", "StandardMLP", "StandardTransformerBlock", "block_from_config",
           "normalized", "traced_parameters"]
