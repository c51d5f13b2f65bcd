r"""Discretisation error of SDE statistics, estimated from two coupled solves.

A scheme of weak order p has, for a smooth statistic S of the law of V_t,
S(dt) = S(0) + c dt^p + o(dt^p). Two solves of the same paths at dt and at 2 dt (or dt / 2),
driven by the same Brownian path (``schemes.Increments``), give

    |S(dt) - S(0)| ~ |S(dt) - S(2 dt)| / (2^p - 1) ~ |S(dt) - S(dt / 2)| / (1 - 2^-p),

and since the two solves share their noise, the difference has a much smaller Monte Carlo
error than either statistic. Not small enough for the tail quantiles, though: a few paths
decouple between the two steps (near the boundary of the cone in hot settings), so each gap
comes with its Monte Carlo error from a paired bootstrap over the paths, and the step control
judges ``excess = max(|gap| - 2 SE)``, the part of the gap that is not Monte Carlo noise.

The statistics are the mean and the 5, 50 and 95% quantiles of every correlation rho_ab
(a < b) at every saved time t > 0, over the paths that did not blow up, and, without
normalisation, the fraction of paths that blew up by T (the crossing probability of the
blow-up bound).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray

from . import metrics

QUANTILES = (0.05, 0.5, 0.95)
"""Quantile levels of rho whose step error is estimated (with the mean)."""


@dataclass(frozen=True)
class StepError:
    """Estimated discretisation error of a solve at step ``dt``.

    Attributes:
        rho: max over saved times t > 0, pairs a < b and statistics (mean and the 5/50/95%
            quantiles of rho_ab) of the estimated |S(dt) - S(0)|.
        excess: max over the same statistics of (estimate - 2 bootstrap standard errors): the
            part of the estimate that Monte Carlo noise of the coupled difference cannot
            explain. The step control requires ``excess <= tol``.
        rho_by_time: the maximum estimate at each saved time (0 at t = 0).
        crossing: estimated error of the fraction of paths that blew up by T (None with
            normalisation, which cannot blow up).
        rho_mean_se: Monte Carlo standard error of the estimate of the worst mean (paired).
        dt, dt_other: the step of the solve and that of the coupled solve.
        paths: number of coupled paths.
        order: weak order p assumed.
    """

    rho: float
    excess: float
    rho_by_time: tuple[float, ...]
    crossing: float | None
    rho_mean_se: float
    dt: float
    dt_other: float
    paths: int
    order: int

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["rho_by_time"] = list(self.rho_by_time)
        return out

    def __str__(self) -> str:
        text = f"step error (dt = {self.dt:.4g}, vs {self.dt_other:.4g} on {self.paths} " \
               f"coupled paths): rho {self.rho:.2g} (beyond 2 SE: {max(self.excess, 0):.2g})"
        if self.crossing is not None:
            text += f", blow-up fraction {self.crossing:.2g}"
        return text


def _statistics(rho: NDArray, axis: int) -> NDArray[np.float64]:
    """Mean and the QUANTILES of rho over the paths ``axis``, stacked on a last axis."""
    return np.concatenate([rho.mean(axis=axis)[..., None],
                           np.moveaxis(np.quantile(rho, QUANTILES, axis=axis), 0, -1)], axis=-1)


def _pair_correlations(V: NDArray) -> NDArray[np.float64]:
    """rho_ab (a < b) of V (..., m, m), shape (..., pairs)."""
    a, b = np.triu_indices(V.shape[-1], k=1)
    return metrics.correlation(np.asarray(V, np.float64))[..., a, b]


def rho_statistics(V: NDArray[np.floating], exploded: NDArray[np.bool_]) -> NDArray[np.float64]:
    """Mean and quantiles of every rho_ab (a < b) at every saved time over the paths that did
    not blow up: shape (times, pairs, 1 + len(QUANTILES)) (zeros if every path blew up)."""
    rho = _pair_correlations(V[~exploded])
    if rho.shape[0] == 0:
        return np.zeros(rho.shape[1:] + (1 + len(QUANTILES),))
    return _statistics(rho, axis=0)


BOOTSTRAP = 32
"""Paired bootstrap resamples for the standard errors of the gaps."""


def _gap_se(rho: NDArray, rho_other: NDArray, seed: int = 0) -> NDArray[np.float64]:
    """Bootstrap standard error of the statistics' differences of two paired samples of rho
    (paths, times, pairs), resampling paths in pairs."""
    n = rho.shape[0]
    if n < 2:
        return np.zeros(rho.shape[1:] + (1 + len(QUANTILES),))
    idx = np.random.default_rng(seed).integers(0, n, (BOOTSTRAP, n))
    return np.std(_statistics(rho[idx], axis=1) - _statistics(rho_other[idx], axis=1), axis=0)


def estimate(V: NDArray, exploded: NDArray[np.bool_], V_other: NDArray,
             exploded_other: NDArray[np.bool_], *, dt: float,
             relation: Literal["coarse", "fine"], order: int,
             normalize: str | None) -> StepError:
    """Step error of the paths ``V`` (solved at dt) from the same paths ``V_other`` solved at
    2 dt ("coarse") or dt / 2 ("fine") on the same Brownian path; both (paths, times, m, m)."""
    if relation == "coarse":
        factor, dt_other = 1.0 / (2.0**order - 1.0), 2.0 * dt
    else:
        factor, dt_other = 1.0 / (1.0 - 2.0**-order), 0.5 * dt
    S, S_other = rho_statistics(V, exploded), rho_statistics(V_other, exploded_other)
    gap = factor * np.abs(S - S_other)  # (times, pairs, statistics)
    # Monte Carlo error of the gap: paired bootstrap over the paths alive in both solves
    both = ~exploded & ~exploded_other
    rho, rho_other = _pair_correlations(V[both]), _pair_correlations(V_other[both])
    excess = gap - 2 * factor * _gap_se(rho, rho_other)
    by_time = gap.reshape(gap.shape[0], -1).max(axis=1) if gap.size else np.zeros(len(gap))
    se = 0.0
    if gap.size and both.sum() > 1:
        t, p = np.unravel_index(np.argmax(gap[..., 0]), gap.shape[:2])
        se = factor * float(np.std(rho[:, t, p] - rho_other[:, t, p]) / np.sqrt(both.sum()))
    crossing = None
    if normalize is None:
        crossing = factor * abs(float(exploded.mean()) - float(exploded_other.mean()))
    return StepError(rho=float(by_time.max()) if by_time.size else 0.0,
                     excess=float(excess.max()) if excess.size else 0.0,
                     rho_by_time=tuple(float(x) for x in by_time), crossing=crossing,
                     rho_mean_se=se, dt=float(dt), dt_other=float(dt_other),
                     paths=int(V.shape[0]), order=int(order))
