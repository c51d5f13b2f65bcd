"""The package's architecture, as a reader meets it: the way from ``solve_sde`` to one step is
short, blocks and solvers follow equinox's abstract-or-final pattern, capabilities are declared,
and normalisation and composition are blocks."""

from __future__ import annotations

import inspect
import math
import traceback

import equinox as eqx
import jax
import numpy as np
import pytest

import shapedsde as sd
from shapedsde import blocks
from shapedsde import sde as sde_package

from helpers import ToyBlock


def test_solve_sde_reaches_the_line_that_adds_the_increment_in_six_frames(monkeypatch):
    """From ``solve_sde`` to ``GuardedEuler.step`` (whose body adds the increment to V), for
    the plain steps of every solve of a run (the pilot's coupled solves and the rest): at
    most 7 frames of the package, counted on the live stack when the step is traced
    (``solve_grid`` is the run's solve of its paths on one grid; with dt=None the step
    control's ``_control`` and its coupled ``solve_paths`` add two). A step of a hot path
    goes through the refinement wrapper, one frame more, and its substeps through the walk.
    The tracing wrapper of ``full_precision`` is not counted, as ``jit``'s are not."""
    stacks = []
    step = sde_package.GuardedEuler.step

    def spy(self, *args, **kwargs):
        stacks.append([f.name for f in traceback.extract_stack()
                       if "/shapedsde/" in f.filename.replace("\\", "/")
                       and not f.filename.endswith("_precision.py")])
        return step(self, *args, **kwargs)

    monkeypatch.setattr(sde_package.GuardedEuler, "step", spy)
    # a composition no other test solves, so that the solve is traced here, not cached
    block = sd.Serial(sd.ShapedAttention(gamma=0.3), sd.ShapedAttention(gamma=0.4))
    sd.solve_sde(block, np.eye(2), 0.1, key=jax.random.key(0), dt=0.05, n_paths=8, n_save=2,
                 solver="euler", progress=False)
    chains = [s[s.index("solve_sde"):] + ["GuardedEuler.step"] for s in stacks
              if "solve_sde" in s]
    plain = [c for c in chains if "refined_step" not in c and "walk" not in c]
    assert plain, "the solve was not traced"
    for chain in plain:
        assert len(chain) <= 7, chain
    assert ["solve_sde", "solve_grid", "solve", "_integrate", "refined_steps", "plain_step",
            "GuardedEuler.step"] in plain
    refined = [c for c in chains if "refined_step" in c and "walk" not in c]
    assert refined and all(len(c) == 8 for c in refined), refined


def _classes(module) -> list[type]:
    return [c for _, c in inspect.getmembers(module, inspect.isclass)
            if c.__module__.startswith("shapedsde")]


@pytest.mark.parametrize("base", [blocks.Block, eqx.Module])
def test_every_module_is_abstract_or_final(base):
    """equinox's pattern: a class that is subclassed is abstract (cannot be instantiated),
    and a concrete class is not subclassed."""
    import shapedsde.sde._refinement
    import shapedsde.sde._solvers

    classes = {c for m in (blocks, sde_package, shapedsde.sde._solvers,
                           shapedsde.sde._refinement) for c in _classes(m)
               if issubclass(c, base) and c is not base}
    for cls in classes:
        subclasses = [s for s in classes if s is not cls and issubclass(s, cls)]
        if subclasses:
            assert inspect.isabstract(cls) or getattr(cls, "__abstractclassvars__", None) \
                or getattr(cls, "__abstractvars__", None), (cls, subclasses)


def test_capabilities_are_declared():
    """What a block offers is declared by it (class variables or properties of the
    compositions), and compositions derive theirs from their layers."""
    shaped = sd.ShapedTransformerBlock()
    standard = sd.StandardTransformerBlock()
    causal = sd.ShapedAttention(causal=True, heads=3)
    assert (shaped.has_sde, shaped.has_reduced, shaped.has_nngp) == (True, True, True)
    assert (standard.has_sde, standard.has_reduced, standard.has_nngp) == (False, True, True)
    assert shaped.has_noise_factor and not causal.has_noise_factor
    assert not sd.Serial(sd.ShapedMLP(), causal).has_noise_factor
    # the whole drift is a congruence direction for attention alone, not with an MLP
    assert sd.ShapedAttention().drift_is_congruence and not causal.drift_is_congruence
    assert not shaped.drift_is_congruence and not sd.ShapedMLP().drift_is_congruence
    assert sd.Serial(sd.ShapedAttention(), sd.ShapedAttention(heads=2)).drift_is_congruence
    assert sde_package.solver_class("congruence", sd.ShapedAttention()) \
        is sde_package.RootCongruenceEuler
    assert sde_package.solver_class("congruence", shaped) is sde_package.CongruenceEuler
    assert sde_package.solver_class("euler", sd.ShapedAttention()) is sde_package.GuardedEuler
    assert causal.max_heads == 3 and sd.Serial(sd.ShapedMLP(), causal).max_heads == 3
    assert sd.ShapedAttention(heads=math.inf).max_heads == 1
    with pytest.raises(sd.NoSDELimitError, match="StandardAttention"):
        standard.require_sde()
    for cls in (sd.ShapedAttention, sd.StandardAttention, sd.ShapedMLP, sd.StandardMLP):
        for capability in ("has_sde", "has_reduced", "has_nngp"):
            assert isinstance(getattr(cls, capability), bool), (cls, capability)


def test_a_block_missing_a_declaration_cannot_be_built():
    class Undeclared(ToyBlock):
        pass

    with pytest.raises(TypeError, match="has_"):
        Undeclared()


def test_normalisation_and_composition_are_blocks():
    """``normalized`` puts RMS normalisation after every sub-block (as the network does); its
    SDE is the Ito form, whose drift at a correlation matrix is that of the public
    ``sd.drift(..., normalize="rms")`` and keeps the diagonal fixed."""
    transformer = sd.ShapedTransformerBlock()
    norm = sd.normalized(transformer)
    assert isinstance(norm, sd.Serial) and all(isinstance(b, sd.Normalized) for b in norm.layers)
    assert norm.is_normalized and norm.unnormalized() == transformer
    assert sd.normalized(norm) is norm
    V = sd.default_covariance(3)
    b = np.asarray(norm.drift(np.asarray(V, np.float32)))
    np.testing.assert_allclose(b, sd.drift(transformer, V, "rms"), atol=1e-6)
    np.testing.assert_allclose(np.diag(b), 0.0, atol=1e-6)
    assert isinstance(sd.Normalized(sd.ShapedMLP()), blocks.Block)
    with pytest.raises(TypeError, match="already normalised"):
        sd.Normalized(sd.Normalized(sd.ShapedMLP()))
    with pytest.raises(TypeError, match="layer 1"):
        sd.Serial(sd.ShapedMLP(), "attention")


def test_the_solvers_are_diffrax_solvers():
    import diffrax

    assert issubclass(sde_package.GuardedEuler, diffrax.AbstractSolver)
    assert issubclass(sde_package.CongruenceEuler, diffrax.AbstractSolver)
    assert issubclass(sde_package.Refined, diffrax.AbstractSolver)
    assert issubclass(sde_package.MatrixBrownianPath, diffrax.AbstractBrownianPath)
