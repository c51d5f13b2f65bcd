"""The covariance SDE: its solver, on diffrax's contracts.

* ``MatrixBrownianPath``: the Brownian path of a batch of SDE paths (``evaluate(t0, t1)``);
* ``covariance_terms``: a block's SDE as diffrax terms (``CovarianceDrift``,
  ``CovarianceNoise``);
* ``GuardedEuler``, ``CongruenceEuler``, ``RootCongruenceEuler``: the solvers (diffrax
  ``AbstractSolver``s whose ``step`` states the scheme; the last steps a root of V), ``Refined``:
  the per-path refinement of hot steps, wrapping one;
* ``solve``: the driver (a solver, a block and a Brownian path over a grid);
* ``solve_sde``: the public entry point, with the step control and its error estimate
  (``StepError``, ``estimate``);
* ``drift``, ``diffusion_cov``: a block's coefficients, raw or normalised.
"""

from ._brownian import MatrixBrownianPath, StepPath
from ._driver import Solution, solve
from ._refinement import Refined, calm_scale
from ._solve import (
    DEFAULT_TOL,
    MIN_DT,
    SOLVER_NAMES,
    START_DT,
    attention_heat,
    make_solver,
    pilot_paths,
    solve_sde,
)
from ._solvers import (
    SOLVERS,
    CongruenceEuler,
    GuardedEuler,
    GuardedSolver,
    GuardState,
    RootCongruenceEuler,
    solver_class,
)
from ._step_error import StepError, estimate
from ._terms import CovarianceDrift, CovarianceNoise, NoiseFactor, covariance_terms
from .coefficients import diffusion_cov, drift

__all__ = ["DEFAULT_TOL", "MIN_DT", "SOLVERS", "SOLVER_NAMES", "START_DT", "CongruenceEuler",
           "CovarianceDrift", "CovarianceNoise", "GuardState", "GuardedEuler", "GuardedSolver",
           "MatrixBrownianPath", "NoiseFactor", "Refined", "RootCongruenceEuler", "Solution",
           "StepError", "StepPath",
           "attention_heat", "calm_scale", "covariance_terms", "diffusion_cov", "drift",
           "estimate", "make_solver", "pilot_paths", "solve", "solve_sde", "solver_class"]
