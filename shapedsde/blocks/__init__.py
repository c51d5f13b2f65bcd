"""Residual blocks: each holds its finite-width layer beside its covariance-SDE coefficients
and its infinite-width map; compositions (``Serial``) and RMS normalisation (``Normalized``)
are blocks too."""

from .attention import AbstractAttention, ShapedAttention, StandardAttention
from .base import Block, NoNNGPLimitError, NoSDELimitError, traced_parameters
from .masks import Mask, as_mask, block_mask, causal_mask, padding_mask, sliding_window_mask
from .mlp import ShapedMLP
from .normalization import Normalized, normalized
from .positions import PositionGram, as_positions, decay_gram, sinusoidal_gram
from .rebuild import block_from_config
from .serial import Serial, ShapedTransformerBlock, StandardTransformerBlock
from .standard_mlp import StandardMLP

__all__ = ["AbstractAttention", "Block", "Mask", "NoNNGPLimitError", "NoSDELimitError",
           "Normalized", "PositionGram", "Serial", "ShapedAttention", "ShapedMLP",
           "ShapedTransformerBlock", "StandardAttention", "StandardMLP",
           "StandardTransformerBlock", "as_mask", "as_positions", "block_from_config",
           "block_mask", "causal_mask", "decay_gram", "normalized", "padding_mask",
           "sinusoidal_gram", "sliding_window_mask", "traced_parameters"]
