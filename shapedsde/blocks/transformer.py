r"""The shaped Transformer block: shaped attention, then the shaped MLP (one unit of depth).

Per unit time the two sub-blocks' increments add (each is O(1/n) in mean and O(1/sqrt n) in
noise, and their noises are independent), so

    b = b_att + b_mlp,   Sigma = Sigma_att + Sigma_mlp,   noise = noise_att(dW_1) + noise_mlp(dW_2).

With "rms" the finite network normalises after each sub-block; in the limit this is the same
as normalising once per block (the cross term of the two Ito corrections has mean zero).
"""

from __future__ import annotations

import jax
from jax import Array

from .attention import ShapedAttention, StandardAttention
from .base import Block
from .mlp import ShapedMLP
from .standard_mlp import StandardMLP


class ShapedTransformerBlock(Block):
    """Attention sub-block followed by MLP sub-block, each with its own gamma."""

    attention: ShapedAttention
    mlp: ShapedMLP

    def __init__(self, attention: ShapedAttention | None = None, mlp: ShapedMLP | None = None):
        attention = ShapedAttention() if attention is None else attention
        mlp = ShapedMLP() if mlp is None else mlp
        if not isinstance(attention, ShapedAttention):
            raise TypeError(f"attention must be a ShapedAttention, got {type(attention).__name__}")
        if not isinstance(mlp, ShapedMLP):
            raise TypeError(f"mlp must be a ShapedMLP, got {type(mlp).__name__}")
        self.attention, self.mlp = attention, mlp

    @property
    def parts(self) -> tuple[Block, Block]:
        return self.attention, self.mlp

    def check_width(self, width: int) -> None:
        for part in self.parts:
            part.check_width(width)

    def layer_with_control(self, key: Array, X: Array,
                           normalize: str | None) -> tuple[Array, Array]:
        cv = 0.0
        for part, k in zip(self.parts, jax.random.split(key, 2), strict=True):
            X, cv_part = part.layer_with_control(k, X, normalize)
            cv = cv + cv_part  # each has mean zero given the sub-block's input
        return X, cv

    def reduced_layer(self, key: Array, V: Array, width: int, normalize: str | None) -> Array:
        for part, k in zip(self.parts, jax.random.split(key, 2), strict=True):
            V = part.reduced_layer(k, V, width, normalize)
        return V

    def nngp_layer(self, V: Array, normalize: str | None) -> Array:
        """The sub-blocks' infinite-width maps in turn ("rms" after each): the identity for
        the shaped block."""
        for part in self.parts:
            V = part.nngp_layer(V, normalize)
        return V

    def infinite_width_layer(self, key: Array, V: Array, normalize: str | None) -> Array:
        for part, k in zip(self.parts, jax.random.split(key, 2), strict=True):
            V = part.infinite_width_layer(k, V, normalize)
        return V

    @property
    def n_noise(self) -> int:
        return sum(part.n_noise for part in self.parts)

    def drift(self, V: Array) -> Array:
        return sum(part.drift(V) for part in self.parts)

    def diffusion_cov(self, V: Array) -> Array:
        return sum(part.diffusion_cov(V) for part in self.parts)

    def noise_from(self, V: Array, N: Array) -> Array:
        k = self.attention.n_noise
        return self.attention.noise_from(V, N[:k]) + self.mlp.noise_from(V, N[k:])

    def drift_split(self, V: Array) -> tuple[Array, Array | None]:
        (B_att, R_att), (B_mlp, R_mlp) = (part.drift_split(V) for part in self.parts)
        rest = [R for R in (R_att, R_mlp) if R is not None]
        return B_att + B_mlp, (sum(rest) if rest else None)

    def noise_factor(self, V: Array, L: Array, dW: Array) -> tuple[Array, Array] | None:
        k = self.attention.n_noise
        att, mlp = self.attention.noise_factor(V, L, dW[:k]), self.mlp.noise_factor(V, L, dW[k:])
        if att is None or mlp is None:
            return None
        return att[0] + mlp[0], att[1] + mlp[1]


class StandardTransformerBlock(ShapedTransformerBlock):
    """Standard attention followed by the standard ReLU MLP (the unshaped baseline): the same
    chaining as ``ShapedTransformerBlock`` for the finite, reduced and infinite-width layers
    (at n = infinity V' = mlp(attention(V)), with the arc-cosine kernel for the MLP), and no
    SDE limit."""

    def __init__(self, attention: StandardAttention | None = None,
                 mlp: StandardMLP | None = None):
        attention = StandardAttention() if attention is None else attention
        mlp = StandardMLP() if mlp is None else mlp
        if not isinstance(attention, StandardAttention):
            raise TypeError(
                f"attention must be a StandardAttention, got {type(attention).__name__}")
        if not isinstance(mlp, StandardMLP):
            raise TypeError(f"mlp must be a StandardMLP, got {type(mlp).__name__}")
        self.attention, self.mlp = attention, mlp

    @property
    def has_sde(self) -> bool:
        return False
