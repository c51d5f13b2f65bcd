"""Distributional comparison of two sets of covariance paths (e.g. SDE against network).

At every common saved time t and for every scalar quantity Q -- each off-diagonal correlation
rho_ab (a < b) and each diagonal entry V_aa -- the two empirical laws of Q(V_t) are compared by
their quantiles, the two-sample Kolmogorov-Smirnov statistic sup_x |F_a(x) - F_b(x)| with its
p-value, and the 1-Wasserstein distance int |F_a(x) - F_b(x)| dx.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from numpy.typing import NDArray
from scipy import stats

from ..validation import check_real
from . import metrics
from .trajectories import Trajectories

__all__ = ["Comparison", "ComparisonRow", "compare", "common_times"]

TIME_ATOL = 1e-6
"""Two saved times are the same time if they differ by at most this much."""
MAX_TABLE_PAIRS = 45
"""Beyond this many token pairs (m > 10) the printed table summarises the pairs by token
distance (``Comparison.by_distance``): 8128 rows per time at m = 128 are not read."""

Kind = Literal["rho", "V"]


@dataclass(frozen=True)
class ComparisonRow:
    """Comparison of one scalar quantity at one time.

    ``degenerate`` rows are quantities that are the same constant in both samples (e.g. every
    quantity at t = 0, or V_aa = 1 under normalisation); they carry ks = 0, pvalue = 1, w1 = 0.
    """

    t: float
    quantity: str
    q_a: tuple[float, ...]
    q_b: tuple[float, ...]
    ks: float
    pvalue: float
    w1: float
    n_a: int
    n_b: int
    degenerate: bool = False

    @property
    def kind(self) -> Kind:
        """Quantity kind: "rho" for a correlation rho[a,b], "V" for a diagonal entry V[a,a]."""
        return "rho" if self.quantity.startswith("rho") else "V"


@dataclass(frozen=True, repr=False)
class Comparison:
    """Result of :func:`compare`: one row per (time, quantity), plus bookkeeping.

    Attributes:
        rows: the comparisons, ordered by time, then rho pairs, then diagonal entries.
        labels: names of the two samples (a, b).
        dropped: label -> number of exploded paths left out.
        quantiles: the quantile levels of ``ComparisonRow.q_a`` / ``q_b``.
        step_errors: label -> {saved time: estimated step error of the rho statistics} for
            each sample solved from the SDE (``Trajectories.config["step_error"]``), so that
            a KS or W1 distance can be read against the SDE side's own discretisation error.
    """

    rows: list[ComparisonRow]
    labels: tuple[str, str]
    dropped: dict[str, int]
    quantiles: tuple[float, ...] = (0.1, 0.5, 0.9)
    step_errors: dict[str, dict[float, float]] = dataclasses.field(default_factory=dict)

    def step_error(self, t: float) -> float | None:
        """Largest estimated SDE step error of the rho statistics at time t (None if no
        sample carries one)."""
        found = [err for by_time in self.step_errors.values() for s, err in by_time.items()
                 if abs(s - t) <= TIME_ATOL]
        return max(found) if found else None

    def select(
        self, times: Iterable[float] | None = None, kind: Kind | None = None
    ) -> list[ComparisonRow]:
        """Rows at the given times and of the given kind ("rho" or "V"); None selects all."""
        if kind not in (None, "rho", "V"):
            raise ValueError(f"kind must be None, 'rho' or 'V', got {kind!r}")
        wanted = None if times is None else np.atleast_1d(np.asarray(list(times), dtype=float))
        return [
            r
            for r in self.rows
            if (kind is None or r.kind == kind)
            and (wanted is None or bool(np.any(np.abs(wanted - r.t) <= TIME_ATOL)))
        ]

    def _informative(self, times: Iterable[float] | None, kind: Kind | None) -> list[ComparisonRow]:
        return [r for r in self.select(times, kind) if not r.degenerate]

    def min_pvalue(self, times: Iterable[float] | None = None, kind: Kind | None = None) -> float:
        """Smallest KS p-value over the non-degenerate selected rows (1.0 if there are none)."""
        return min((r.pvalue for r in self._informative(times, kind)), default=1.0)

    def max_ks(self, times: Iterable[float] | None = None, kind: Kind | None = None) -> float:
        """Largest KS statistic over the non-degenerate selected rows (0.0 if there are none)."""
        return max((r.ks for r in self._informative(times, kind)), default=0.0)

    def max_w1(self, times: Iterable[float] | None = None, kind: Kind | None = None) -> float:
        """Largest 1-Wasserstein distance over the non-degenerate selected rows (0.0 if none)."""
        return max((r.w1 for r in self._informative(times, kind)), default=0.0)

    @property
    def times(self) -> list[float]:
        """The distinct times of the rows, increasing."""
        return sorted({r.t for r in self.rows})

    def final(self) -> Comparison:
        """The same comparison restricted to the last common time."""
        if not self.rows:
            return self
        return dataclasses.replace(self, rows=self.select(times=[self.times[-1]]))

    def by_distance(self) -> list[dict[str, Any]]:
        """The rows summarised by token distance, for many tokens: per time, one group per
        dyadic band of |a - b| (1, 2, 3-4, 5-8, ...: ``metrics.distance_band``) over the rho
        rows and one group of the diagonal entries V[a,a], each with the number of quantities
        ``n``, the mean over them of each quantile of a and of b (``q_a``, ``q_b``), the
        largest KS and W1 and the smallest p-value (over every quantity of the group)."""
        groups: dict[tuple[float, int], list[tuple[int, ComparisonRow]]] = {}
        for r in self.rows:
            d = _pair_distance(r.quantity)
            band = metrics.distance_band(d)[0] if d else 1 << 30  # V[a,a] after the bands
            groups.setdefault((r.t, band), []).append((d, r))
        out = []
        for (t, _), members in sorted(groups.items()):
            rows = [r for _, r in members]
            low, high = min(d for d, _ in members), max(d for d, _ in members)
            name = ("V[a,a]" if not low else f"rho |a-b|={low}" if low == high
                    else f"rho |a-b|={low}-{high}")
            out.append({"t": t, "quantity": name, "n": len(rows),
                        "q_a": np.mean([r.q_a for r in rows], axis=0).tolist(),
                        "q_b": np.mean([r.q_b for r in rows], axis=0).tolist(),
                        "ks": max(r.ks for r in rows), "pvalue": min(r.pvalue for r in rows),
                        "w1": max(r.w1 for r in rows),
                        "degenerate": all(r.degenerate for r in rows)})
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable form (plain lists, floats, ints, bools and strings)."""
        return {
            "labels": list(self.labels),
            "dropped": dict(self.dropped),
            "quantiles": list(self.quantiles),
            "min_pvalue": self.min_pvalue(),
            "max_ks": self.max_ks(),
            "step_errors": {k: [[t, e] for t, e in v.items()] for k, v in self.step_errors.items()},
            "rows": [
                {**dataclasses.asdict(r), "q_a": list(r.q_a), "q_b": list(r.q_b)} for r in self.rows
            ],
            "by_distance": self.by_distance(),
        }

    def __repr__(self) -> str:
        return (
            f"Comparison(labels={self.labels}, rows={len(self.rows)}, times={len(self.times)}, "
            f"min_pvalue={self.min_pvalue():.3g}, max_ks={self.max_ks():.3f})"
        )

    def __str__(self) -> str:
        q_names = [f"{label} q{q:g}" for label in self.labels for q in self.quantiles]
        q_width = max(10, *(len(name) + 2 for name in q_names))
        n_pairs = sum(r.kind == "rho" for r in self.rows) // max(len(self.times), 1)
        summarised = n_pairs > MAX_TABLE_PAIRS
        # many tokens: one line per band of token distance (its mean quantiles, worst KS, p, W1)
        table = (self.by_distance() if summarised else
                 [{**dataclasses.asdict(r), "kind": r.kind} for r in self.rows])
        name_width = max(10, *(len(r["quantity"]) for r in table)) if table else 10
        header = f"{'t':>8}  {'quantity':<{name_width}}"
        if summarised:
            header += f"  {'pairs':>5}"
        header += "".join(f"{name:>{q_width}}" for name in q_names)
        header += f"  {'KS':>6}  {'p':>9}  {'W1':>9}"
        if self.step_errors:
            header += f"  {'step err':>9}"
        lines = [header, "-" * len(header)]
        for r in table:
            qs = "".join(f"{x:{q_width}.4g}" for x in (*r["q_a"], *r["q_b"]))
            note = "  (constant)" if r["degenerate"] else ""
            err = ""
            if self.step_errors:
                rho = r["quantity"].startswith("rho")
                value = self.step_error(r["t"]) if rho else None
                err = f"  {value:9.2g}" if value is not None else f"  {'-':>9}"
            count = f"  {r['n']:5d}" if summarised else ""
            lines.append(
                f"{r['t']:8.4g}  {r['quantity']:<{name_width}}{count}{qs}"
                f"  {r['ks']:6.3f}  {r['pvalue']:9.3g}  {r['w1']:9.3g}{err}{note}"
            )
        n_degenerate = sum(r.degenerate for r in self.rows)
        dropped = ", ".join(f"{k} {v}" for k, v in self.dropped.items())
        lines.append(
            f"{len(self.rows)} rows ({n_degenerate} constant) at {len(self.times)} times; "
            f"exploded paths dropped: {dropped}; "
            f"min p = {self.min_pvalue():.3g}, max KS = {self.max_ks():.3f}"
        )
        if summarised:
            lines.append(f"{n_pairs} token pairs, summarised by token distance |a-b|: mean "
                         "quantiles over the pairs of a band, largest KS and W1, smallest p "
                         "(Comparison.rows holds every pair)")
        if self.step_errors:
            lines.append("step err: the SDE sample's estimated discretisation error of the mean "
                         "and 5/50/95% quantiles of rho at t (max over the pairs)")
        return "\n".join(lines)


def _pair_distance(quantity: str) -> int:
    """|b - a| of a row's "rho[a,b]", 0 for a diagonal entry "V[a,a]"."""
    if not quantity.startswith("rho"):
        return 0
    a, b = (int(i) for i in quantity[4:-1].split(","))
    return abs(b - a)


def common_times(
    a: Trajectories, b: Trajectories, times: Iterable[float] | None = None
) -> list[tuple[int, int]]:
    """Index pairs (i, j) with a.t[i] == b.t[j] up to TIME_ATOL, in the order of a.t.

    If ``times`` is given, those times are used instead and must be saved in both (ValueError
    otherwise, from :meth:`Trajectories.at`).
    """
    if times is not None:
        return [(a.at(t), b.at(t)) for t in times]
    pairs = []
    for i, t in enumerate(a.t):
        j = int(np.argmin(np.abs(b.t - t))) if b.n_times else -1
        if j >= 0 and abs(b.t[j] - t) <= TIME_ATOL:
            pairs.append((i, j))
    return pairs


def _default_labels(a: Trajectories, b: Trajectories) -> tuple[str, str]:
    """Labels from config["kind"]; suffixed with " (a)" / " (b)" if the two kinds coincide."""
    la, lb = a.kind, b.kind
    return (la, lb) if la != lb else (f"{la} (a)", f"{lb} (b)")


def _is_degenerate(x: NDArray[np.float64], y: NDArray[np.float64], rtol: float) -> bool:
    """True if all values of x and y coincide up to rtol * max(1, max |value|)."""
    both = np.concatenate([x, y])
    return bool(np.ptp(both) <= rtol * max(1.0, float(np.max(np.abs(both)))))


def _compare_samples(
    t: float,
    quantity: str,
    x: NDArray[np.float64],
    y: NDArray[np.float64],
    quantiles: Sequence[float],
    degenerate_rtol: float,
) -> ComparisonRow:
    """Quantiles, KS test and W1 distance of the samples x (from a) and y (from b)."""
    q_a = tuple(float(v) for v in np.quantile(x, quantiles))
    q_b = tuple(float(v) for v in np.quantile(y, quantiles))
    common = dict(t=float(t), quantity=quantity, q_a=q_a, q_b=q_b, n_a=x.size, n_b=y.size)
    if _is_degenerate(x, y, degenerate_rtol):
        return ComparisonRow(**common, ks=0.0, pvalue=1.0, w1=0.0, degenerate=True)
    ks = stats.ks_2samp(x, y)
    w1 = stats.wasserstein_distance(x, y)
    return ComparisonRow(**common, ks=float(ks.statistic), pvalue=float(ks.pvalue), w1=float(w1))


def _check_arguments(
    a: object, b: object, quantiles: object, labels: object, include_exploded: object,
    degenerate_rtol: object,
) -> tuple[tuple[float, ...], tuple[str, str] | None]:
    """The argument checks of :func:`compare`; returns (quantiles, labels) normalised."""
    for name, s in (("a", a), ("b", b)):
        if not isinstance(s, Trajectories):
            raise TypeError(f"{name} must be a Trajectories (from solve_sde, simulate_network "
                            f"or Trajectories.load), got {type(s).__name__}")
    if isinstance(quantiles, (str, bytes)) or not isinstance(quantiles, Iterable):
        raise TypeError(f"quantiles must be a sequence of levels in [0, 1], got "
                        f"{type(quantiles).__name__}")
    levels = tuple(check_real("quantiles", q, low=0.0, high=1.0, low_open=False)
                   for q in quantiles)
    if not levels:
        raise ValueError("quantiles must hold at least one level in [0, 1], got none")
    if labels is not None:
        if not (isinstance(labels, (tuple, list)) and len(labels) == 2
                and all(isinstance(x, str) for x in labels)):
            raise TypeError(f"labels must be a pair of strings (label of a, label of b), got "
                            f"{labels!r}")
        labels = (labels[0], labels[1])
    if not isinstance(include_exploded, (bool, np.bool_)):
        raise TypeError(f"include_exploded must be a bool, got {type(include_exploded).__name__}")
    check_real("degenerate_rtol", degenerate_rtol, low=0.0, low_open=False)
    return levels, labels


def compare(
    a: Trajectories,
    b: Trajectories,
    *,
    quantiles: Sequence[float] = (0.1, 0.5, 0.9),
    times: Iterable[float] | None = None,
    include_exploded: bool = False,
    labels: tuple[str, str] | None = None,
    degenerate_rtol: float = 1e-6,
) -> Comparison:
    """Compare the laws of rho_ab(V_t) (a < b) and V_aa(V_t) between two sets of paths.

    Args:
        a: the first sample of paths (e.g. the SDE's).
        b: the second sample of paths (e.g. the networks'), with as many tokens as ``a``.
        quantiles: quantile levels reported for each sample.
        times: times to compare (each must be saved in both); default all common saved times,
            with a ``UserWarning`` that names the saved times of either sample that the other
            did not save (they are left out).
        include_exploded: keep exploded (frozen) paths; by default they are dropped and counted.
        labels: names of a and b; default their config["kind"].
        degenerate_rtol: a quantity whose values in both samples agree up to
            degenerate_rtol * max(1, |value|) is reported as a degenerate (constant) row.

    Raises:
        TypeError: a or b is not a Trajectories, or an argument has the wrong type.
        ValueError: token counts differ, no common time, a sample has no paths left, or an
            argument is out of range (each error names its argument).
    """
    quantiles, labels = _check_arguments(a, b, quantiles, labels, include_exploded,
                                         degenerate_rtol)
    if a.n_tokens != b.n_tokens:
        raise ValueError(f"token counts differ: a has m = {a.n_tokens}, b has m = {b.n_tokens}")
    if times is not None:
        if isinstance(times, (str, bytes)) or not isinstance(times, Iterable):
            raise TypeError(f"times must be an iterable of saved times, got "
                            f"{type(times).__name__}")
        times = [check_real("times", t, low=None) for t in times]
    pairs = common_times(a, b, times)
    if not pairs:
        raise ValueError(f"no common saved times (a: {a.n_times} times, b: {b.n_times} times)")
    labels = _default_labels(a, b) if labels is None else labels
    if labels[0] == labels[1]:
        raise ValueError(f"labels must differ, got {labels}")
    if times is None:
        _warn_unshared(a, b, pairs, labels)
    dropped = {
        label: 0 if include_exploded else int(s.exploded.sum())
        for label, s in zip(labels, (a, b), strict=True)
    }
    a, b = (a, b) if include_exploded else (a.valid(), b.valid())
    for label, s in zip(labels, (a, b), strict=True):
        if s.n_samples == 0:
            raise ValueError(f"sample {label!r} has no paths to compare")

    m = a.n_tokens
    rows = []
    for i, j in pairs:
        Va, Vb = a.V[:, i].astype(np.float64), b.V[:, j].astype(np.float64)
        rho_a, rho_b = metrics.correlation(Va), metrics.correlation(Vb)
        samples = [
            (f"rho[{p},{q}]", rho_a[:, p, q], rho_b[:, p, q]) for p, q in metrics.offdiag_pairs(m)
        ]
        samples += [(f"V[{p},{p}]", Va[:, p, p], Vb[:, p, p]) for p in range(m)]
        rows += [
            _compare_samples(a.t[i], name, x, y, quantiles, degenerate_rtol)
            for name, x, y in samples
        ]
    return Comparison(
        rows=rows,
        labels=tuple(labels),
        dropped=dropped,
        quantiles=tuple(float(q) for q in quantiles),
        step_errors={label: by_time for label, s in zip(labels, (a, b), strict=True)
                     if (by_time := _step_error_by_time(s))},
    )


def _warn_unshared(a: Trajectories, b: Trajectories, pairs: list[tuple[int, int]],
                   labels: tuple[str, str]) -> None:
    """Warn, naming them, about saved times of a or b that the other did not save."""
    def listed(t: NDArray[np.float64], kept: set[int]) -> str:
        left = [f"{x:.6g}" for i, x in enumerate(t) if i not in kept]
        return ", ".join(left[:8]) + (f", ... ({len(left)} in all)" if len(left) > 8 else "")

    only = [(label, s.t, {p[k] for p in pairs}) for k, (label, s) in
            enumerate(zip(labels, (a, b), strict=True))]
    parts = [f"{label!r} at t = {listed(t, kept)}" for label, t, kept in only
             if len(kept) < len(t)]
    if parts:
        shared = ", ".join(f"{a.t[i]:.6g}" for i, _ in pairs[:8]) + (", ..." if len(pairs) > 8
                                                                    else "")
        warnings.warn(f"compare: saved times not shared by both samples are left out: "
                      f"{'; '.join(parts)}. Compared at the {len(pairs)} shared times t = "
                      f"{shared} (save both at the same times, e.g. n_save - 1 dividing the "
                      "network's depth, or pass times=)", UserWarning, stacklevel=3)


def _step_error_by_time(s: Trajectories) -> dict[float, float]:
    """{saved time: estimated step error of rho} from an SDE result's config, else {}."""
    err = s.config.get("step_error")
    if not isinstance(err, dict) or len(err.get("rho_by_time", ())) != s.n_times:
        return {}
    return {float(t): float(e) for t, e in zip(s.t, err["rho_by_time"], strict=True)}
