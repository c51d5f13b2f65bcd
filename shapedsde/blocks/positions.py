r"""Positional encodings in the queries and keys (Neural Tangents' "SUM" embeddings, issue 28).

A fixed positional embedding P (m x n) is added to the attention's query and key inputs, not to
its values:

    S_h = ((X + P) W^Q_h / sqrt n)((X + P) W^K_h / sqrt n)^T / sqrt(n_k),   values: X W^V_h.

Everything depends on P only through its Gram Pi = P P^T / n (rotation invariance of the fresh
weights) and on the cross Gram C = X P^T / n. One layer gives C' = lambda C + (a term of mean
zero and variance O(1/n) from the value projection), so over depth of order n the cross Gram is
gone after the first O(1) layers (in SDE time: after t = 0), and the logits see the Gram
V + Pi: Cov(S_ab, S_cd) = (V + Pi)_ac (V + Pi)_bd (``docs/masks_and_positions.md``).

The simulators take P independent of the input: the finite network places
P = sqrt(n) [0, L_Pi, 0] on the feature coordinates m, ..., 2m - 1 (L_Pi L_Pi^T = Pi), orthogonal
to their initial features X0 = sqrt(n) [L0, 0], so C starts at 0; at infinite width it then
stays 0 at every fixed depth, and the NNGP map sees V + Pi as well.

``PositionGram`` holds Pi and its square root as ordinary (traced) leaves, and its name and
parameters as static fields. Constructors: ``decay_gram(m, rho, scale)`` (Pi_ab = scale
rho^|a-b|) and ``sinusoidal_gram(m, scale, dim)`` (the Gram of sinusoidal embeddings).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import equinox as eqx
import numpy as np
from jax import Array

from ..validation import check_int, check_real, from_kind


def _checked_gram(values: Any, name: str) -> np.ndarray:
    """``values`` as a symmetric PSD (m, m) float64 array, or a ValueError naming ``name``."""
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be an (m, m) array of reals: {err}") from None
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1] or arr.shape[0] < 1:
        raise ValueError(f"{name} must be a square (m, m) Gram matrix, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or inf")
    scale = max(float(np.max(np.abs(arr))), 1e-300)
    asym = float(np.max(np.abs(arr - arr.T)))
    if asym > 1e-8 * scale:
        raise ValueError(f"{name} must be symmetric (a Gram P P^T / n), max |Pi - Pi^T| = "
                         f"{asym:.3g}")
    arr = 0.5 * (arr + arr.T)
    lam_min = float(np.linalg.eigvalsh(arr)[0])
    if lam_min < -1e-8 * scale:
        raise ValueError(f"{name} must be positive semi-definite (a Gram P P^T / n), smallest "
                         f"eigenvalue {lam_min:.3g}")
    return arr


class PositionGram(eqx.Module):
    """The Gram Pi = P P^T / n of a fixed positional embedding P, with its symmetric square
    root, and the name (static) and parameters it was built from. Pi, its root and the float
    parameters are leaves, traced like the blocks' float parameters (``traced_parameters``),
    so that a sweep over Pi of one shape and kind reuses one compilation."""

    gram: np.ndarray | Array
    root: np.ndarray | Array
    kind: str = eqx.field(static=True)
    params: tuple[tuple[str, Any], ...]

    def __init__(self, gram: Any, kind: str = "custom",
                 params: tuple[tuple[str, Any], ...] = (), *, name: str = "positions"):
        arr = _checked_gram(gram, name)
        lam, Q = np.linalg.eigh(arr)
        root = (Q * np.sqrt(np.clip(lam, 0.0, None))) @ Q.T
        arr.setflags(write=False)
        root.setflags(write=False)
        self.gram = arr
        self.root = root
        self.kind = kind
        self.params = tuple(params)

    @property
    def m(self) -> int:
        """Number of tokens (positions)."""
        return int(np.shape(self.gram)[0])

    def matrix(self) -> np.ndarray:
        """Pi as a float64 NumPy array (outside compiled code)."""
        return np.asarray(self.gram, np.float64)

    def _params(self) -> dict[str, Any]:
        """The parameters as plain Python values (floats made traceable become floats)."""
        return {k: float(v) if isinstance(v, (Array, np.ndarray, np.generic)) else v
                for k, v in self.params}

    def config(self) -> dict[str, Any]:
        """JSON-serialisable description: name and parameters, or the matrix itself."""
        if self.kind == "custom":
            return {"kind": "custom", "gram": self.matrix().tolist(), **self._params()}
        return {"kind": self.kind, "m": self.m, **self._params()}

    def describe(self) -> str:
        """Short text such as 'decay(m=8, rho=0.7, scale=1)' (CLI, titles)."""
        items = (("m", self.m), *self._params().items())
        text = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in items)
        return f"{self.kind}({text})"

    def same_as(self, other: PositionGram) -> bool:
        """Whether both hold the same Pi (compositions must share one embedding)."""
        return self.m == other.m and np.array_equal(self.matrix(), other.matrix())


def decay_gram(m: int, rho: float, scale: float = 1.0) -> PositionGram:
    """Pi_ab = scale * rho^|a - b| (|rho| < 1, scale >= 0): positional embeddings whose overlap
    decays geometrically with the distance of the positions (positive definite for scale > 0;
    scale = 0 is the same as no positions)."""
    m = check_int("m", m, low=1)
    rho = check_real("rho", rho, low=-1.0, high=1.0, high_open=True)
    scale = check_real("scale", scale, low=0.0, low_open=False)
    idx = np.arange(m)
    gram = scale * rho ** np.abs(idx[:, None] - idx[None, :])
    return PositionGram(gram, "decay", (("rho", rho), ("scale", scale)))


def sinusoidal_gram(m: int, scale: float = 1.0, dim: int = 16) -> PositionGram:
    """The Gram of the sinusoidal embeddings of Vaswani et al. with ``dim`` features, P_a =
    sqrt(2 scale / dim) [cos(a w_i), sin(a w_i)]_i, w_i = 10000^(-2i / dim): Pi_ab = scale
    mean_i cos((a - b) w_i), PSD by construction, Pi_aa = scale."""
    m = check_int("m", m, low=1)
    scale = check_real("scale", scale, low=0.0)
    dim = check_int("dim", dim, low=2)
    if dim % 2:
        raise ValueError(f"dim must be even (cosine and sine pairs), got {dim}")
    w = 10000.0 ** (-2.0 * np.arange(dim // 2) / dim)
    diff = np.arange(m)[:, None] - np.arange(m)[None, :]
    gram = scale * np.mean(np.cos(diff[..., None] * w), axis=-1)
    return PositionGram(gram, "sinusoidal", (("scale", scale), ("dim", dim)))


CONSTRUCTORS: dict[str, Callable[..., PositionGram]] = {
    "decay": decay_gram, "sinusoidal": sinusoidal_gram}
"""Named positional Grams: ``kind`` of ``PositionGram.config()`` -> constructor."""


def positions_from_config(spec: dict[str, Any], name: str = "positions") -> PositionGram:
    """The positional Gram described by ``PositionGram.config()``."""
    return from_kind(spec, name, "positional Gram", CONSTRUCTORS, "gram",
                     lambda gram, recorded: PositionGram(gram, "custom", recorded, name=name))


def as_positions(value: Any, name: str = "positions", **params: Any) -> PositionGram:
    """``value`` as a validated ``PositionGram``: one already, a config dict, or an m x m
    symmetric PSD array-like (Pi = P P^T / n; ``params``, e.g. source="pi.npy", are recorded
    with it)."""
    if isinstance(value, PositionGram):
        return value
    if isinstance(value, dict):
        return positions_from_config(value, name)
    return PositionGram(value, "custom", tuple(params.items()), name=name)
