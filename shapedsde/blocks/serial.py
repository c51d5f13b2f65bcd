r"""Composition: blocks applied one after the other (Neural Tangents' ``serial``).

Each layer of a composition is O(1/n) in mean and O(1/sqrt n) in noise per unit of depth, and
the layers' weights are independent, so per unit time their increments add:

    b = sum_i b_i,   Sigma = sum_i Sigma_i,   noise = sum_i noise_i(dW_i)

(each layer driven by its own ``n_noise`` Brownian matrices). The finite, reduced and
infinite-width layers are applied in turn, each with its own key. The Transformer blocks are
compositions: ``ShapedTransformerBlock()`` is ``Serial(ShapedAttention(), ShapedMLP())``.
"""

from __future__ import annotations

from typing import Any

import jax
from jax import Array

from ._reduced import Scalar
from .attention import ShapedAttention, StandardAttention
from .base import Block, NoNNGPLimitError, NoSDELimitError
from .mlp import ShapedMLP
from .standard_mlp import StandardMLP


class Serial(Block):
    """The blocks ``layers`` applied in turn: one unit of depth (module docstring)."""

    layers: tuple[Block, ...]

    def __init__(self, *layers: Block):
        if not layers:
            raise ValueError("Serial needs at least one block")
        for i, layer in enumerate(layers):
            if not isinstance(layer, Block):
                raise TypeError(f"layer {i} must be a shapedsde Block, got "
                                f"{type(layer).__name__}")
        embeddings = [layer.position_embedding for layer in layers
                      if layer.position_embedding is not None]
        if any(not e.same_as(embeddings[0]) for e in embeddings[1:]):
            raise ValueError("positions: the attention layers of one composition must share "
                             "one positional embedding (the same Gram Pi), since P is fixed "
                             "across the network")
        self.layers = tuple(layers)

    # -- capabilities: every layer must have them --------------------------------------
    @property
    def has_sde(self) -> bool:
        return all(layer.has_sde for layer in self.layers)

    @property
    def has_reduced(self) -> bool:
        return all(layer.has_reduced for layer in self.layers)

    @property
    def has_nngp(self) -> bool:
        return all(layer.has_nngp for layer in self.layers)

    @property
    def has_noise_factor(self) -> bool:
        return all(layer.has_noise_factor for layer in self.layers)

    @property
    def drift_is_congruence(self) -> bool:
        return all(layer.drift_is_congruence for layer in self.layers)

    @property
    def max_heads(self) -> int:
        return max(layer.max_heads for layer in self.layers)

    @property
    def noise_is_congruence(self) -> bool:
        return all(layer.noise_is_congruence for layer in self.layers)

    @property
    def position_embedding(self) -> Any:
        return next((layer.position_embedding for layer in self.layers
                     if layer.position_embedding is not None), None)

    def check_tokens(self, m: int) -> None:
        for layer in self.layers:
            layer.check_tokens(m)

    @property
    def is_normalized(self) -> bool:
        return all(layer.is_normalized for layer in self.layers)

    def unnormalized(self) -> Block:
        layers = tuple(layer.unnormalized() for layer in self.layers)
        changed = any(new is not old for new, old in zip(layers, self.layers, strict=True))
        return Serial(*layers) if changed else self

    def no_sde_error(self) -> NoSDELimitError:
        return next(layer for layer in self.layers if not layer.has_sde).no_sde_error()

    def no_nngp_error(self) -> NoNNGPLimitError:
        return next(layer for layer in self.layers if not layer.has_nngp).no_nngp_error()

    def check_width(self, width: int) -> None:
        for layer in self.layers:
            layer.check_width(width)

    # -- finite and infinite width: in turn ----------------------------------------------
    def _keys(self, key: Array) -> Array:
        return jax.random.split(key, len(self.layers))

    def layer_with_control(self, key: Array, X: Array) -> tuple[Array, Array]:
        cv = 0.0
        for layer, k in zip(self.layers, self._keys(key), strict=True):
            X, cv_layer = layer.layer_with_control(k, X)
            cv = cv + cv_layer  # each has mean zero given the layer's input
        return X, cv

    def reduced_layer(self, key: Array, V: Array, width: Scalar) -> Array:
        for layer, k in zip(self.layers, self._keys(key), strict=True):
            V = layer.reduced_layer(k, V, width)
        return V

    def nngp_layer(self, V: Array) -> Array:
        for layer in self.layers:
            V = layer.nngp_layer(V)
        return V

    def infinite_width_layer(self, key: Array, V: Array) -> Array:
        for layer, k in zip(self.layers, self._keys(key), strict=True):
            V = layer.infinite_width_layer(k, V)
        return V

    # -- SDE: the layers' coefficients add -------------------------------------------------
    @property
    def n_noise(self) -> int:
        return sum(layer.n_noise for layer in self.layers)

    def _noise_slices(self) -> list[slice]:
        ends = [0]
        for layer in self.layers:
            ends.append(ends[-1] + layer.n_noise)
        return [slice(a, b) for a, b in zip(ends[:-1], ends[1:], strict=True)]

    def drift(self, V: Array) -> Array:
        return sum(layer.drift(V) for layer in self.layers)

    def diffusion_cov(self, V: Array) -> Array:
        return sum(layer.diffusion_cov(V) for layer in self.layers)

    def noise(self, V: Array, L: Array, dW: Array, LT: Array | None = None) -> Array:
        """All products N_i = L dW_i L^T at once (``noise_from``) where every layer's noise is a
        function of them; otherwise each layer's own ``noise`` on its slice of dW."""
        if self.noise_is_congruence:
            return super().noise(V, L, dW, LT)
        return sum(layer.noise(V, L, dW[part], LT)
                   for layer, part in zip(self.layers, self._noise_slices(), strict=True))

    def noise_from(self, V: Array, N: Array) -> Array:
        return sum(layer.noise_from(V, N[part])
                   for layer, part in zip(self.layers, self._noise_slices(), strict=True))

    def drift_split(self, V: Array) -> tuple[Array, Array | None]:
        splits = [layer.drift_split(V) for layer in self.layers]
        rest = [R for _, R in splits if R is not None]
        return sum(B for B, _ in splits), (sum(rest) if rest else None)

    def noise_factor(self, V: Array, L: Array, dW: Array) -> tuple[Array, Array]:
        factors = [layer.noise_factor(V, L, dW[part])
                   for layer, part in zip(self.layers, self._noise_slices(), strict=True)]
        return sum(G for G, _ in factors), sum(kappa for _, kappa in factors)

    def root_coefficients(self, L: Array, dW: Array) -> tuple[Array, Array, Array]:
        parts = [layer.root_coefficients(L, dW[part])
                 for layer, part in zip(self.layers, self._noise_slices(), strict=True)]
        return tuple(sum(p[i] for p in parts) for i in range(3))  # type: ignore[return-value]

    def config(self) -> dict[str, Any]:
        return {"kind": "Serial", "layers": [layer.config() for layer in self.layers]}


def ShapedTransformerBlock(attention: ShapedAttention | None = None,  # noqa: N802
                           mlp: ShapedMLP | None = None) -> Serial:
    """The shaped Transformer block: ``Serial(attention, mlp)``, shaped attention then the
    shaped MLP, each with its own gamma (defaults: ``ShapedAttention()``, ``ShapedMLP()``)."""
    attention = ShapedAttention() if attention is None else attention
    mlp = ShapedMLP() if mlp is None else mlp
    if not isinstance(attention, ShapedAttention):
        raise TypeError(f"attention must be a ShapedAttention, got {type(attention).__name__}")
    if not isinstance(mlp, ShapedMLP):
        raise TypeError(f"mlp must be a ShapedMLP, got {type(mlp).__name__}")
    return Serial(attention, mlp)


def StandardTransformerBlock(attention: StandardAttention | None = None,  # noqa: N802
                             mlp: StandardMLP | None = None) -> Serial:
    """The standard (unshaped) Transformer block, the baseline without an SDE limit:
    ``Serial(attention, mlp)``, standard attention then the standard ReLU MLP."""
    attention = StandardAttention() if attention is None else attention
    mlp = StandardMLP() if mlp is None else mlp
    if not isinstance(attention, StandardAttention):
        raise TypeError(f"attention must be a StandardAttention, got {type(attention).__name__}")
    if not isinstance(mlp, StandardMLP):
        raise TypeError(f"mlp must be a StandardMLP, got {type(mlp).__name__}")
    return Serial(attention, mlp)
