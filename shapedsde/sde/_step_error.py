r"""Discretisation error of SDE statistics, estimated from two coupled solves.

A scheme of weak order p has, for a smooth statistic S of the law of V_t,
S(dt) = S(0) + c dt^p + o(dt^p). Two solves of the same paths at dt and at 2 dt (or dt / 2),
driven by the same Brownian path (``MatrixBrownianPath``), give

    |S(dt) - S(0)| ~ |S(dt) - S(2 dt)| / (2^p - 1) ~ |S(dt) - S(dt / 2)| / (1 - 2^-p).

The statistics are the mean and the 5, 50 and 95% quantiles of every correlation rho_ab
(a < b) at every saved time t > 0, and, without normalisation, the fraction of paths that blew
up by T (the crossing probability of the blow-up bound). Each difference is an average over
the paths of a per-path term, so it comes with a paired standard error:

* mean: x'_i - x_i (x = rho at dt, x' on the other grid);
* quantile q of level p: the shift of the smoothed CDF at q divided by the density there,
  -[Phi((q - x'_i) / h) - Phi((q - x_i) / h)] / f_h(q), with a Gaussian kernel of
  bandwidth h (Silverman's rule). The raw difference of two empirical quantiles jumps by the
  spacing of the order statistics (~0.03 in a 5% tail of 1000 paths) even when the two
  solves barely differ; the smoothed shift is driven only by how far each path moved;
* crossing fraction: [path blew up at dt'] - [path blew up at dt], extrapolated with the
  order CROSSING_ORDER.

Statistics of rho use the paths alive in both solves. ``StepError.upper`` = max(|gap| + 2 SE)
bounds the error with ~95% confidence per statistic; ``excess`` = max(|gap| - z SE) is the
part that Monte Carlo noise cannot explain, with z the Bonferroni quantile for the number K of
statistics (z = 3.9 for the 1120 statistics of 8 tokens at 10 saved times), so that among many
noisy statistics one does not exceed tol by chance. The step control (``shapedsde.sde``) takes
a smaller step while ``excess > tol`` or the crossing fraction is above tol
(``StepError.above``, ``StepError.crossing_undecided``).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from scipy import special

from ..analysis import metrics

QUANTILES = (0.05, 0.5, 0.95)
"""Quantile levels of rho whose step error is estimated (with the mean)."""
Z = 2.0
"""Standard errors in ``upper``."""
FAMILY_LEVEL = 0.05
"""Chance that ``excess`` > 0 for a step without error, over all statistics together."""
CROSSING_ORDER = 0.5
"""Weak order assumed for the crossing fraction (a first-passage probability, whose error
under discrete monitoring is O(dt^1/2)); measured on one Brownian path in figure 7's setting
(4000 paths, 1/32 ... 1/2048) between 0.6 and 1, so the estimate errs on the safe side."""

UNDECIDED_CROSSING = 2.0
"""An undecided crossing estimate on every path of a run halves the step only above this times
tol: where that happens its order-1/2 extrapolation overstates the error, up to about twofold
(figure 7's setting, 10^4 paths: 0.77 points at dt = 1/2048, where two coupled ladders are
0.3-0.7 points from their limit). Judged against tol itself, that run went on to 1/8192
(six times the cost) for a crossing fraction of 3.11% against 3.25%."""


@dataclass(frozen=True)
class StepError:
    """Estimated discretisation error of a solve at step ``dt``.

    Attributes:
        rho: max over saved times t > 0, pairs a < b and statistics (mean and the 5/50/95%
            quantiles of rho_ab) of the estimated |S(dt) - S(0)|.
        upper: max over the same statistics of the estimate + 2 standard errors.
        excess: max over the same statistics of the estimate - z standard errors, z the
            two-sided Bonferroni quantile at FAMILY_LEVEL over them (the part Monte Carlo
            noise cannot explain; 0 if none).
        rho_by_time: the largest estimate at each saved time (0 at t = 0).
        crossing: estimated error of the fraction of paths that blew up by T (None with
            normalisation, which cannot blow up); crossing_se its standard error.
        dt, dt_other: the step of the solve and that of the coupled solve.
        paths: number of coupled paths.
        order: weak order p assumed.
    """

    rho: float
    upper: float
    excess: float
    rho_by_time: tuple[float, ...]
    crossing: float | None
    crossing_se: float | None
    dt: float
    dt_other: float
    paths: int
    order: int

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["rho_by_time"] = list(self.rho_by_time)
        return out

    def above(self, tol: float, *, every_path: bool = False) -> bool:
        """Above tol beyond Monte Carlo noise for some statistic (the crossing fraction at
        2 SE). With ``every_path`` (all paths of the run were solved coupled, so no more can
        tell) a crossing fraction left undecided (``crossing_undecided``) is judged by its
        estimate alone, against UNDECIDED_CROSSING tol."""
        if self.crossing is None:
            return self.excess > tol
        shown = self.crossing - Z * self.crossing_se > tol
        return self.excess > tol or shown or (every_path
                                              and self.crossing > UNDECIDED_CROSSING * tol)

    def crossing_undecided(self, tol: float) -> bool:
        """The crossing fraction's error may exceed tol (estimate + 2 SE > tol) but is not
        shown to (estimate - 2 SE <= tol): more coupled paths would decide. The estimate
        alone does not: crossings of opposite sign between the two solves cancel in it (in
        figure 7's setting, 512 coupled paths gave 0.0 +- 2.5 points at dt = 1/256, where
        the error is about 2.5 points)."""
        return self.crossing is not None and \
            self.crossing - Z * self.crossing_se <= tol < self.crossing + Z * self.crossing_se

    def __str__(self) -> str:
        text = (f"step error (dt = {self.dt:.4g}, vs {self.dt_other:.4g} on {self.paths} "
                f"coupled paths): rho {self.rho:.2g} (<= {self.upper:.2g} at 2 SE)")
        if self.crossing is not None:
            text += f", blow-up fraction {self.crossing:.2g}"
        return text


def paired_shifts(x: NDArray, y: NDArray) -> tuple[NDArray, NDArray]:
    """Differences y - x of the mean and of the QUANTILES, and their standard errors, for
    paired samples x, y of shape (paths, K): two arrays (K, 1 + len(QUANTILES))."""
    n = x.shape[0]
    terms = [y - x]  # per-path terms whose average is each difference
    sd = np.std(x, axis=0)
    *quantiles, q75, q25 = np.quantile(x, (*QUANTILES, 0.75, 0.25), axis=0)  # one partition
    h = 0.9 * np.maximum(np.minimum(sd, (q75 - q25) / 1.34), 1e-12) * n ** -0.2
    for q in quantiles:
        u = (q - x) / h
        density = np.mean(np.exp(-0.5 * u ** 2), axis=0) / (h * np.sqrt(2 * np.pi))
        cdf_shift = special.ndtr((q - y) / h) - special.ndtr(u)
        terms.append(-cdf_shift / np.maximum(density, 1e-12))
    terms_ = np.stack(terms, axis=-1)  # (paths, K, statistics)
    return terms_.mean(axis=0), terms_.std(axis=0) / np.sqrt(max(n, 1))


def _richardson(relation: Literal["coarse", "fine"], order: float) -> float:
    """|S(dt) - S(0)| / |S(dt) - S(other)| for a statistic of weak order ``order``."""
    return 1.0 / (2.0**order - 1.0) if relation == "coarse" else 1.0 / (1.0 - 2.0**-order)


def estimate(V: NDArray, exploded: NDArray[np.bool_], V_other: NDArray,
             exploded_other: NDArray[np.bool_], *, dt: float,
             relation: Literal["coarse", "fine"], order: int,
             normalize: str | None) -> StepError:
    """Step error of the paths ``V`` (solved at dt) from the same paths ``V_other`` solved at
    2 dt ("coarse") or dt / 2 ("fine") on the same Brownian path; both (paths, times, m, m)."""
    factor = _richardson(relation, order)
    dt_other = 2.0 * dt if relation == "coarse" else 0.5 * dt
    both = ~exploded & ~exploded_other
    rho, rho_other = metrics.pair_correlations(V[both]), metrics.pair_correlations(V_other[both])
    times, pairs = rho.shape[1:]
    later = slice(1, None)  # t = 0 is exact
    gap, se = (np.zeros((times, pairs, 1 + len(QUANTILES))) for _ in range(2))
    if both.sum() > 1 and times > 1:
        g, s = paired_shifts(rho[:, later].reshape(rho.shape[0], -1),
                             rho_other[:, later].reshape(rho.shape[0], -1))
        gap[later], se[later] = (factor * np.abs(g).reshape(times - 1, pairs, -1),
                                 factor * s.reshape(times - 1, pairs, -1))
    by_time = gap.reshape(times, -1).max(axis=1) if gap.size else np.zeros(times)
    crossing = crossing_se = None
    if normalize is None:
        d = exploded_other.astype(float) - exploded.astype(float)
        to_limit = _richardson(relation, CROSSING_ORDER)
        crossing = to_limit * abs(float(d.mean()))
        crossing_se = to_limit * float(d.std() / np.sqrt(max(d.size, 1)))
    z = float(special.ndtri(1.0 - FAMILY_LEVEL / (2 * max((times - 1) * gap[0].size, 1))))
    return StepError(rho=float(by_time.max(initial=0.0)),
                     upper=float((gap + Z * se).max(initial=0.0)),
                     excess=float(max((gap - max(z, Z) * se).max(initial=0.0), 0.0)),
                     rho_by_time=tuple(float(x) for x in by_time), crossing=crossing,
                     crossing_se=crossing_se, dt=float(dt), dt_other=float(dt_other),
                     paths=int(V.shape[0]), order=int(order))
