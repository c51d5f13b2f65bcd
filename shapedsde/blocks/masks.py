r"""Attention masks: which keys each query may attend to (issue 28).

A mask is an m x m boolean pattern M (row a: the query, column b: the key), with at least one
allowed key in every row. Softmax and the base attention U of the shaped block run over the
allowed entries of each row, and the SDE centres each row over its allowed entries (per-row
centring C_a = diag(M_a) - M_a M_a^T / k_a, k_a = sum_b M_ab; SPEC sections 3 and 10).

Constructors (each records its name and parameters, printed by the CLI and stored in configs):

* ``causal_mask(m)``: M_ab = [b <= a] (``causal=True`` of the attention blocks is this mask for
  whatever m the block meets);
* ``padding_mask(m, k)``: the first k tokens are real, every query attends to the real keys
  only. The padded tokens stay in the state: their rows still move (they attend to the real
  tokens), but no real token sees them, so the real tokens' covariance evolves exactly as with
  full attention on the k real tokens alone;
* ``sliding_window_mask(m, w, causal=False)``: query a sees the keys b with |a - b| < w
  (causal: 0 <= a - b < w, the w most recent tokens including itself);
* ``block_mask(m, size)``: consecutive groups of ``size`` tokens (the last may be shorter),
  each attending within its group.

``Mask`` is a frozen, hashable dataclass (the pattern is a tuple of tuples), so it can be a
static field of an equinox Module: a new mask is a new compiled shape, like a new m.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..validation import check_int, from_kind


@dataclass(frozen=True)
class Mask:
    """An m x m pattern of allowed keys, with the name and parameters it was built from.

    Build one with the constructors of this module, or from any m x m boolean (or 0/1) array
    with :func:`as_mask`; a row without an allowed key is rejected."""

    pattern: tuple[tuple[bool, ...], ...]
    kind: str = "custom"
    params: tuple[tuple[str, Any], ...] = ()

    @property
    def m(self) -> int:
        """Number of tokens the mask is made for."""
        return len(self.pattern)

    @property
    def array(self) -> np.ndarray:
        """The pattern as a read-only (m, m) boolean array."""
        out = np.array(self.pattern, dtype=bool)
        out.setflags(write=False)
        return out

    @property
    def counts(self) -> np.ndarray:
        """k_a: the number of allowed keys of every query (all >= 1)."""
        return self.array.sum(axis=1)

    @property
    def uniform_row(self) -> np.ndarray | None:
        """The common row when every query has the same allowed keys (full attention, padding),
        else None. Then every row has the same centring C and the shaped block's drift and
        noise are congruences (``ShapedAttention.drift_split``, ``noise_factor``)."""
        rows = set(self.pattern)
        return np.array(self.pattern[0], dtype=bool) if len(rows) == 1 else None

    def config(self) -> dict[str, Any]:
        """JSON-serialisable description: name and parameters, or the pattern itself (with
        its parameters, e.g. the file it was read from)."""
        if self.kind == "custom":
            pattern = [[int(x) for x in row] for row in self.pattern]
            return {"kind": "custom", "pattern": pattern, **dict(self.params)}
        return {"kind": self.kind, "m": self.m, **dict(self.params)}

    def describe(self) -> str:
        """Short text such as 'sliding_window(m=8, w=2, causal=False)' (CLI, titles)."""
        return f"{self.kind}({', '.join(f'{k}={v}' for k, v in (('m', self.m), *self.params))})"


def _build(kind: str, allowed: np.ndarray, **params: Any) -> Mask:
    return _validated(allowed, "mask", kind, tuple(params.items()))


def _validated(values: Any, name: str, kind: str = "custom",
               params: tuple[tuple[str, Any], ...] = ()) -> Mask:
    if isinstance(values, str):
        raise TypeError(f"{name} must be an (m, m) boolean array or a Mask, got the string "
                        f"{values!r}; build named patterns with causal_mask, padding_mask, "
                        "sliding_window_mask or block_mask")
    try:
        arr = np.asarray(values)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be an (m, m) boolean array: {err}") from None
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be an (m, m) boolean array, got {type(values).__name__}")
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1] or arr.shape[0] < 1:
        raise ValueError(f"{name} must be a square (m, m) boolean array, got shape {arr.shape}")
    if arr.dtype != bool:
        if arr.dtype.kind not in "iuf" or not np.all((arr == 0) | (arr == 1)):
            raise ValueError(f"{name} must hold booleans (or 0 / 1), got dtype {arr.dtype}")
        arr = arr.astype(bool)
    empty = np.nonzero(~arr.any(axis=1))[0]
    if empty.size:
        raise ValueError(f"{name}: row {int(empty[0])} has no allowed key; every query must "
                         "attend to at least one key (at least one True per row)")
    pattern = tuple(tuple(bool(x) for x in row) for row in arr)
    return Mask(pattern=pattern, kind=kind, params=params)


def causal_mask(m: int) -> Mask:
    """M_ab = [b <= a]: every token attends to itself and the tokens before it."""
    m = check_int("m", m, low=1)
    return _build("causal", np.tri(m, dtype=bool))


def padding_mask(m: int, k: int) -> Mask:
    """The first k of m tokens are real: every query (padded ones too) attends to the k real
    keys only. The padded queries still move but never feed back into the real tokens."""
    m = check_int("m", m, low=1)
    k = check_int("k", k, low=1)
    if k > m:
        raise ValueError(f"k (real tokens) must be <= m = {m}, got {k}")
    allowed = np.zeros((m, m), bool)
    allowed[:, :k] = True
    return _build("padding", allowed, k=k)


def sliding_window_mask(m: int, w: int, causal: bool = False) -> Mask:
    """Query a attends to the keys b with |a - b| < w (``causal``: 0 <= a - b < w). w = 1 lets
    every token see only itself (no mixing); w >= m is full (or causal) attention."""
    m = check_int("m", m, low=1)
    w = check_int("w", w, low=1)
    if not isinstance(causal, bool):
        raise TypeError(f"causal must be a bool, got {type(causal).__name__}")
    diff = np.arange(m)[:, None] - np.arange(m)[None, :]  # a - b
    allowed = (diff >= 0) & (diff < w) if causal else np.abs(diff) < w
    return _build("sliding_window", allowed, w=w, causal=causal)


def block_mask(m: int, size: int) -> Mask:
    """Consecutive groups of ``size`` tokens (the last group may be shorter), each attending
    only within its own group (block-diagonal pattern)."""
    m = check_int("m", m, low=1)
    size = check_int("size", size, low=1)
    group = np.arange(m) // size
    return _build("block", group[:, None] == group[None, :], size=size)


CONSTRUCTORS: dict[str, Callable[..., Mask]] = {
    "causal": causal_mask, "padding": padding_mask, "sliding_window": sliding_window_mask,
    "block": block_mask}
"""Named mask patterns: ``kind`` of ``Mask.config()`` -> constructor."""


def mask_from_config(spec: dict[str, Any], name: str = "mask") -> Mask:
    """The mask described by ``Mask.config()`` (a named pattern with its parameters, or
    ``{"kind": "custom", "pattern": [[...]]}``)."""
    return from_kind(spec, name, "mask", CONSTRUCTORS, "pattern",
                     lambda pattern, recorded: _validated(pattern, name, "custom", recorded))


def as_mask(value: Any, name: str = "mask", **params: Any) -> Mask:
    """``value`` as a validated ``Mask``: a Mask, a config dict (``Mask.config()``), or an
    m x m boolean (or 0/1) array-like (``params``, e.g. source="mask.npy", are recorded with
    it)."""
    if isinstance(value, Mask):
        return value
    if isinstance(value, dict):
        return mask_from_config(value, name)
    return _validated(value, name, "custom", tuple(params.items()))
