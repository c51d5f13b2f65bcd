"""Built-in defaults shared by the Python API, the CLI, the demo and the examples.

One set of defaults serves ``solve_sde``, ``simulate_network`` and the ``shapedsde`` command:
the CLI reads them from here, and the functions' signatures state the same values, so that
``help()`` and the API pages show them (``tests/test_first_hour.py`` checks that they agree):

* ``NORMALIZE = None``: the block as given. ``normalize`` is shorthand for the block
  ``normalized(block)``, and every function that takes it (``drift``, ``diffusion_cov``, the
  moments, the NNGP maps, the simulators, the CLI's ``--normalize``) adds RMS normalisation
  only when asked, so that a block means the same model everywhere. The demo asks for it
  (``--normalize rms``).
* ``N_SAVE = 17``: 16 equal intervals. The saved times k T / 16 are then exact binary
  fractions, every depth that is a multiple of 16 (every power-of-two width at T = 1) saves
  the network at exactly those times, so that ``compare`` finds every saved time on both
  sides, and any step dt = 2^-j <= T / 16 divides the saved interval, so that a requested
  step is taken as given (with 11 saved times dt = 1/1024 had to become 1/1030).
* ``N_PATHS = 1000``: paths of ``solve_sde`` and of the CLI (``--paths``), also the CLI's
  number of networks.
* ``PROGRESS = False``: library calls draw no progress bars (pass ``progress=True`` to see
  one); the CLI and the figure scripts draw them on stderr when it is a terminal, where a
  person is watching (``--no-progress`` hides them).
"""

from __future__ import annotations

import numpy as np

from .validation import check_int, check_real

NORMALIZE: str | None = None
"""Default ``normalize``: None (the block as given; "rms" adds RMS normalisation)."""
N_SAVE = 17
"""Default number of saved times, 0 and T included (16 equal intervals)."""
N_PATHS = 1000
"""Default number of SDE paths (and, in the CLI, of networks)."""
TOL = 0.005
"""Default bound on the estimated SDE step error of the correlations' statistics (the Monte
Carlo error of 10^4 paths on a correlation, SPEC section 9)."""
PROGRESS = False
"""Default ``progress`` of library calls (the CLI shows bars when stderr is a terminal)."""


def default_covariance(m: int, rho: float = 0.8) -> np.ndarray:
    """Toeplitz correlation V0_ab = rho^|a - b| (positive definite for |rho| < 1): tokens that
    are close in position are more alike, so every pair starts at a different correlation."""
    m = check_int("tokens", m, low=2)
    rho = check_real("rho", rho, low=-1.0, high=1.0, high_open=True)
    idx = np.arange(m)
    return rho ** np.abs(idx[:, None] - idx[None, :])
