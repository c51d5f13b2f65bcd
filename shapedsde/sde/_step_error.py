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

Statistics of rho use the paths alive in both solves. Estimates and standard errors are per
statistic (``StepError.gap``, ``se``); ``StepError.bound`` = max(estimate + 2 SE) bounds every
statistic's error with 97.5% confidence each; ``excess`` = max(|gap| - z SE) is the part that
Monte Carlo noise cannot explain, with z the Bonferroni quantile for the number K of statistics
(z = 3.9 for the 1120 statistics of 8 tokens at 10 saved times). The step control
(``shapedsde.sde``) accepts a step when its bound is within tol (``StepError.within``), using
bounds scaled from coarser steps where the order holds (``consistent``, ``extrapolate``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
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

CROSSING_TOL = 2.0
"""The blow-up fraction's error is held to CROSSING_TOL tol (one point at the default tol),
the correlations' to tol: its estimate converges at order 1/2 (CROSSING_ORDER), with a
standard error from rare flips of a path's crossing between the two grids, so that holding it
to tol took the hot three-token setting of the tests to dt = 1/16384 (500 s for 1000 paths),
against 1/4096 at 2 tol."""

CAP = 2.0
"""Largest error a correlation statistic can have (rho lies in [-1, 1]): estimates and bounds
above it (a few coupled paths, a quantile where the density estimate is tiny) say nothing more
and are capped."""


@dataclass(frozen=True)
class StepError:
    """Estimated discretisation error of a solve at step ``dt``.

    Attributes:
        rho: the estimated |S(dt) - S(0)| of the statistic with the largest ``bound`` (the mean
            or a 5/50/95% quantile of some rho_ab at a saved time t > 0), and ``rho_se`` its
            standard error: "rho +- rho_se".
        bound: max over the statistics of estimate + 2 SE: each statistic's error lies below
            it with 97.5% confidence (one-sided). For the step control's result it may come,
            statistic by statistic, from a coarser step of its ladder scaled by the order
            (``extrapolated``); else it equals ``upper``.
        upper: max over the statistics of estimate + 2 SE, from this solve's coupled pair.
        excess: max over the statistics of the estimate - z standard errors, z the two-sided
            Bonferroni quantile at FAMILY_LEVEL over them (the part Monte Carlo noise cannot
            explain; 0 if none): > tol shows the error above tol.
        rho_by_time: the largest estimate at each saved time (0 at t = 0).
        crossing: estimated error of the fraction of paths that blew up by T (None with
            normalisation, which cannot blow up); crossing_se its standard error;
            crossing_bound its bound (estimate + 2 SE, or scaled from the ladder).
        dt, dt_other: the step of the solve and that of the coupled solve.
        paths: number of coupled paths.
        order: weak order p assumed.
        resolved: whether ``bound`` (and ``crossing_bound``) lie within the tolerance the step
            was chosen for (None for a step given by the caller: no tolerance).
        extrapolated: whether some bound came from a coarser step of the ladder.
        gap, se: per statistic (saved time, pair a < b, statistic) estimate and standard
            error, for the step control (not in ``to_dict``).
    """

    rho: float
    rho_se: float
    bound: float
    upper: float
    excess: float
    rho_by_time: tuple[float, ...]
    crossing: float | None
    crossing_se: float | None
    crossing_bound: float | None
    dt: float
    dt_other: float
    paths: int
    order: int
    resolved: bool | None = None
    extrapolated: bool = False
    gap: NDArray = field(default_factory=lambda: np.zeros(0), repr=False, compare=False)
    se: NDArray = field(default_factory=lambda: np.zeros(0), repr=False, compare=False)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self)
               if f.name not in ("gap", "se")}
        out["rho_by_time"] = list(self.rho_by_time)
        out["statement"] = self.statement()
        return out

    def within(self, tol: float) -> bool:
        """Every correlation statistic's error shown below tol (its bound), and the blow-up
        fraction's below CROSSING_TOL tol."""
        return self.bound <= tol and (self.crossing_bound is None
                                      or self.crossing_bound <= CROSSING_TOL * tol)

    def shown_above(self, tol: float) -> bool:
        """Some statistic's error shown above tol beyond Monte Carlo noise (``excess``), or
        the crossing fraction's beyond 2 SE."""
        crossing = (self.crossing is not None
                    and self.crossing - Z * self.crossing_se > CROSSING_TOL * tol)
        return self.excess > tol or crossing

    def statement(self) -> str:
        """The error in words: "0.003 +- 0.001 (below 0.005 at 2 SE)", or, where the coupled
        paths cannot resolve it below the tolerance, "not resolved with these paths"."""
        text = f"{self.rho:.2g} +- {self.rho_se:.1g} (below {self.bound:.2g} at 2 SE"
        text += ", extrapolated from coarser steps)" if self.extrapolated else ")"
        if self.resolved is False:
            text += " - not resolved below tol with these paths"
        return text

    def __str__(self) -> str:
        text = (f"step error on rho (dt = {self.dt:.4g}, vs {self.dt_other:.4g} on "
                f"{self.paths} coupled paths): {self.statement()}")
        if self.crossing is not None:
            text += (f", blow-up fraction {self.crossing:.2g} +- {self.crossing_se:.1g} "
                     f"(below {self.crossing_bound:.2g})")
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
    gap, se = np.minimum(gap, CAP), np.minimum(se, CAP)
    bounds = gap + Z * se
    worst = np.unravel_index(np.argmax(bounds), bounds.shape) if bounds.size else None
    upper = float(min(bounds.max(initial=0.0), CAP))
    return StepError(rho=float(gap[worst]) if worst else 0.0,
                     rho_se=float(se[worst]) if worst else 0.0, bound=upper, upper=upper,
                     excess=float(max((gap - max(z, Z) * se).max(initial=0.0), 0.0)),
                     rho_by_time=tuple(float(x) for x in by_time), crossing=crossing,
                     crossing_se=crossing_se,
                     crossing_bound=None if crossing is None else crossing + Z * crossing_se,
                     dt=float(dt), dt_other=float(dt_other), paths=int(V.shape[0]),
                     order=int(order), gap=gap, se=se)


def consistent(coarse: StepError, fine: StepError) -> bool:
    """Whether the estimates at 2 dt (``coarse``) and dt (``fine``, from its own coupled
    pair) scale like dt^p: for every statistic, the coarse estimate / 2^p and the fine one
    agree within z combined standard errors (z the Bonferroni quantile at FAMILY_LEVEL over
    the statistics). Where they do, the step is in the range where the order holds and an
    estimate may be scaled to a smaller step (``extrapolate``)."""
    if coarse.gap.shape != fine.gap.shape or not fine.gap.size:
        return False
    scale = 2.0 ** -coarse.order
    spread = np.hypot(scale * coarse.se, fine.se)
    z = float(special.ndtri(1.0 - FAMILY_LEVEL / (2 * fine.gap.size)))
    return bool(np.all(np.abs(scale * coarse.gap - fine.gap) <= max(z, Z) * spread + 1e-12))


def extrapolate(levels: list[StepError], dt: float, direct: StepError | None = None,
                tol: float | None = None) -> StepError:
    """The step error at ``dt`` from the ladder's ``levels`` (coupled pairs at steps >= dt
    where the order holds, ``consistent``) and, if given, the ``direct`` estimate at dt:
    statistic by statistic the smallest bound, estimate + 2 SE scaled by (dt / dt_level)^p
    (the crossing fraction by its own order, CROSSING_ORDER). The record keeps the direct
    estimate's fields (dt, paths, rho_by_time, excess) where there is one."""
    sources = [(err, (dt / err.dt) ** err.order) for err in levels]
    if direct is not None:
        sources.append((direct, 1.0))
    gaps = np.stack([err.gap * f for err, f in sources])
    ses = np.stack([err.se * f for err, f in sources])
    bounds = gaps + Z * ses
    best = np.argmin(bounds, axis=0)  # per statistic, the source of the smallest bound
    gap, se = (np.take_along_axis(a, best[None], 0)[0] for a in (gaps, ses))
    bound = gap + Z * se
    worst = np.unravel_index(np.argmax(bound), bound.shape)
    base = direct if direct is not None else levels[-1]
    crossing = crossing_se = crossing_bound = None
    if base.crossing is not None:
        scaled = [((e.crossing + Z * e.crossing_se) * (dt / e.dt) ** CROSSING_ORDER, e)
                  for e, _ in sources]
        crossing_bound, e = min(scaled, key=lambda pair: pair[0])
        f = (dt / e.dt) ** CROSSING_ORDER
        crossing, crossing_se = e.crossing * f, e.crossing_se * f
    extrapolated = bool(np.any([sources[i][0] is not direct for i in np.unique(best)]))
    if crossing is not None and (e is not direct):
        extrapolated = True
    out = StepError(
        rho=float(gap[worst]), rho_se=float(se[worst]), bound=min(float(bound.max()), CAP),
        upper=base.upper if direct is not None else min(float(bound.max()), CAP),
        excess=base.excess if direct is not None else 0.0,
        rho_by_time=base.rho_by_time if direct is not None else tuple(
            float(x) for x in gap.reshape(gap.shape[0], -1).max(axis=1)),
        crossing=crossing, crossing_se=crossing_se, crossing_bound=crossing_bound,
        dt=float(dt), dt_other=base.dt_other if direct is not None else 2.0 * dt,
        paths=base.paths, order=base.order, extrapolated=extrapolated, gap=gap, se=se)
    if tol is not None:
        out = replace(out, resolved=out.within(tol))
    return out
