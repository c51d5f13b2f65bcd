"""Every compiled function of the package traces its matrix products at full precision.

On a GPU, JAX's default precision for float32 products is TF32: measured on an H200
(``benchmarks/backend_agreement.py``), the paths of a key at 8 tokens were 3e-3 of their scale
from the CPU's, and at 32 tokens path means 1.6 standard errors of 256 paths apart; at full
precision 2.5e-5 and 0.23 SE. A CPU computes float32 products in full whatever is asked, so the
check reads the precision in each function's lowered program, which any backend can do.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import pytest

import shapedsde as sd
from shapedsde.infinite_width import nngp
from shapedsde.network import moments, simulate
from shapedsde.sde import _driver, _solve

KEY = jax.random.key(0)
V3 = sd.default_covariance(3)
V8 = sd.default_covariance(8)  # below 8 tokens the drift is written without matrix products
HOT = sd.ShapedAttention(tau0=0.3, gamma=0.9)

# (module that calls it by this name, compiled function, a public call that runs it)
ENTRIES: dict[str, tuple[Any, str, Callable[[], object]]] = {
    "sde": (_driver, "_integrate", lambda: sd.solve_sde(HOT, V3, 0.25, key=KEY, dt=1 / 16,
                                                         n_paths=8, n_save=2)),
    "calm scale": (_solve, "calm_scale", lambda: sd.solve_sde(HOT, V8, 0.25, key=KEY,
                                                                   dt=1 / 16, n_paths=8,
                                                                   n_save=2)),
    "network": (simulate, "_advance", lambda: sd.simulate_network(
        HOT, V3, width=8, depth=2, n_samples=8, key=KEY, n_save=2)),
    "moments": (moments, "_increments", lambda: sd.one_layer_moments(
        HOT, V3, width=8, n_samples=8, key=KEY)),
    "nngp": (nngp, "_kernel", lambda: sd.nngp_kernel(sd.StandardAttention(), V3, depth=2)),
    "infinite width": (nngp, "_random_recursion", lambda: sd.simulate_infinite_width(
        sd.StandardAttention(), V3, depth=2, n_samples=8, key=KEY, n_save=2)),
}


def _lowered_dots(monkeypatch: pytest.MonkeyPatch, module: Any, name: str,
                  call: Callable[[], object], compiled: Any = None) -> list[str]:
    """The dot_general lines of every program ``module.name`` (or ``compiled`` in its place)
    lowers to while ``call`` runs."""
    compiled = compiled or getattr(module, name)
    dots: list[str] = []

    def recording(*args: Any, **kwargs: Any) -> Any:
        text = compiled.lower(*args, **kwargs).as_text()
        dots.extend(line for line in text.splitlines() if "dot_general" in line)
        return compiled(*args, **kwargs)

    monkeypatch.setattr(module, name, recording)
    call()
    return dots


@pytest.mark.parametrize("entry", ENTRIES)
def test_every_matrix_product_is_at_full_precision(monkeypatch: pytest.MonkeyPatch,
                                                   entry: str) -> None:
    module, name, call = ENTRIES[entry]
    dots = _lowered_dots(monkeypatch, module, name, call)
    assert dots, f"{entry}: no matrix product was traced"
    assert all("HIGHEST" in line for line in dots), f"{entry}: {dots[0]}"


def test_without_full_precision_the_products_are_at_the_default() -> None:
    """Control: the SDE's function compiled without ``full_precision`` lowers its products at
    the backend's default, which the check above rejects."""
    wrapped = _driver._integrate
    plain = eqx.filter_jit(wrapped.__wrapped__.__wrapped__)
    with pytest.MonkeyPatch.context() as patch:
        dots = _lowered_dots(patch, _driver, "_integrate", ENTRIES["sde"][2], compiled=plain)
    assert dots and not any("HIGHEST" in line for line in dots)
    assert _driver._integrate is wrapped  # the other tests see the package's function


def test_every_compiled_function_of_the_package_is_traced_at_full_precision() -> None:
    """A compiled function added later is covered too: every ``eqx.filter_jit`` in the package
    decorates a ``full_precision`` function, and those with matrix products are checked above."""
    package = Path(sd.__file__).parent
    jitted = 0
    for path in package.rglob("*.py"):
        lines = path.read_text().splitlines()
        for i, line in enumerate(lines):
            if line.strip().startswith("@eqx.filter_jit"):
                jitted += 1
                assert lines[i + 1].strip() == "@full_precision", f"{path.name}:{i + 2}"
    assert jitted == len(ENTRIES)
