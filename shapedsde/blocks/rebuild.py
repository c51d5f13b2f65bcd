"""The block a result was made with, rebuilt from its description (``Block.config()``).

Every result records ``config["block"] = block.config()``: the class name under ``"kind"`` and
the constructor's arguments (compositions nest: ``Serial`` lists its ``"layers"``,
``Normalized`` holds its ``"block"``; infinitely many heads are written ``"inf"``).
:func:`block_from_config` reverses it, so that a saved result can be run again::

    traj = sd.Trajectories.load("results/sde.npz")
    block = sd.block_from_config(traj.config["block"])   # == the block of the run
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from typing import Any

from .base import Block

__all__ = ["block_classes", "block_from_config"]

RESULT_KINDS = ("sde", "network", "infinite_width")
"""``config["kind"]`` of whole results (``Trajectories.config``), not of blocks."""


def block_classes() -> dict[str, type[Block]]:
    """Every concrete block class by name (subclasses of ``Block`` without abstract methods,
    user-defined ones included once their module is imported)."""
    found: dict[str, type[Block]] = {}
    todo = [Block]
    while todo:
        cls = todo.pop()
        todo.extend(cls.__subclasses__())
        if not inspect.isabstract(cls) and cls is not Block:
            found.setdefault(cls.__name__, cls)
    return found


def _is_block_config(value: Any) -> bool:
    return isinstance(value, Mapping) and value.get("kind") in block_classes()


def _value(value: Any) -> Any:
    """A field of a block config as a constructor argument: nested blocks rebuilt, "inf"
    (how ``config()`` writes infinitely many heads) as ``math.inf``; anything else (e.g. the
    description of a mask, which its block's constructor takes) as it is."""
    if _is_block_config(value):
        return block_from_config(value)
    if isinstance(value, list) and value and all(_is_block_config(v) for v in value):
        return [block_from_config(v) for v in value]
    return math.inf if value == "inf" else value


def block_from_config(config: Mapping[str, Any]) -> Block:
    """The block that ``config`` describes (the output of ``Block.config()``, as stored in a
    result's ``config["block"]``), e.g.
    ``block_from_config({"kind": "ShapedAttention", "tau0": 0.3, "gamma": 0.9, "heads": 1,
    "key_dim": None, "causal": False})`` is ``ShapedAttention(tau0=0.3, gamma=0.9)``.

    Raises:
        TypeError: ``config`` is not a mapping.
        ValueError: no ``"kind"``, an unknown kind, a whole result's config instead of its
            ``config["block"]``, a field the block's constructor does not take, or a value it
            rejects (its own message).
    """
    if not isinstance(config, Mapping):
        raise TypeError(f"config must be a block description (a dict from Block.config()), "
                        f"got {type(config).__name__}")
    fields = dict(config)
    kind = fields.pop("kind", None)
    if kind in RESULT_KINDS and "block" in fields:
        raise ValueError(f"config is a whole result's configuration (kind {kind!r}); pass its "
                         "config['block']")
    classes = block_classes()
    if kind not in classes:
        raise ValueError(f"config['kind'] must name a block class ({', '.join(sorted(classes))}"
                         f"), got {kind!r}")
    cls = classes[kind]
    args = {name: _value(value) for name, value in fields.items()}
    params = inspect.signature(cls.__init__).parameters
    star = [p.name for p in params.values() if p.kind is inspect.Parameter.VAR_POSITIONAL]
    if star and set(args) == {star[0]}:
        return cls(*args[star[0]])  # e.g. Serial(*layers)
    unknown = sorted(set(args) - set(params) - {"self"})
    if unknown:
        raise ValueError(f"config of {kind} has fields its constructor does not take: "
                         f"{', '.join(unknown)}")
    return cls(**args)
