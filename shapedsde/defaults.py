"""Built-in defaults shared by the CLI, the demo and the examples."""

from __future__ import annotations

import numpy as np

from .validation import check_int, check_real


def default_covariance(m: int, rho: float = 0.8) -> np.ndarray:
    """Toeplitz correlation V0_ab = rho^|a - b| (positive definite for |rho| < 1): tokens that
    are close in position are more alike, so every pair starts at a different correlation."""
    m = check_int("tokens", m, low=2)
    rho = check_real("rho", rho, low=-1.0, high=1.0, high_open=True)
    idx = np.arange(m)
    return rho ** np.abs(idx[:, None] - idx[None, :])
