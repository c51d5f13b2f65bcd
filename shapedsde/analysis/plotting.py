"""Figures of sampled covariance paths."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from . import metrics
from .trajectories import Trajectories

__all__ = ["plot_correlation_bands"]

MAX_PANELS = 9
"""Beyond this many token pairs (m > 4) the panels pool the pairs by band of token distance
(``metrics.distance_band``): 8 panels at m = 128 instead of 8128."""


def _panels(m: int) -> list[tuple[str, list[tuple[int, int]]]]:
    """(title, pairs) of each panel: one per pair a < b, or for more than ``MAX_PANELS``
    pairs one per dyadic band of |a - b| holding every pair of that band."""
    pairs = metrics.offdiag_pairs(m)
    if len(pairs) <= MAX_PANELS:
        return [(f"rho[{a},{b}]", [(a, b)]) for a, b in pairs]
    bands: dict[tuple[int, int], list[tuple[int, int]]] = {}
    for a, b in pairs:
        bands.setdefault(metrics.distance_band(b - a), []).append((a, b))
    return [(f"|a-b| = {lo}" if lo == hi else f"|a-b| = {lo}-{min(hi, m - 1)}"
             f" ({len(band)} pairs)", band) for (lo, hi), band in sorted(bands.items())]


def plot_correlation_bands(
    trajs: dict[str, Trajectories],
    path: str | Path,
    *,
    lower: float = 0.1,
    upper: float = 0.9,
    title: str | None = None,
) -> Path:
    """Plot, for each off-diagonal pair (a, b), the law of rho_ab(V_t) against t.

    One subplot per pair a < b; for each named set of paths, the median of rho_ab over the
    non-exploded paths as a line and the [lower, upper] quantile band shaded (colours C0, C1,
    ... in the order of ``trajs``). With more than ``MAX_PANELS`` pairs (m > 4) one subplot per
    dyadic band of token distance |a - b| (1, 2, 3-4, 5-8, ...), its quantiles over the paths
    and the pairs of the band together. Saved as PNG (dpi 150); the parent directory is created.

    Returns:
        The path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not trajs:
        raise ValueError("trajs is empty: nothing to plot")
    if not 0.0 <= lower < upper <= 1.0:
        raise ValueError(f"need 0 <= lower < upper <= 1, got lower={lower}, upper={upper}")
    tokens = {s.n_tokens for s in trajs.values()}
    if len(tokens) != 1:
        raise ValueError(f"all trajectories must have the same number of tokens, got {tokens}")
    panels = _panels(tokens.pop())
    if not panels:
        raise ValueError("need at least 2 tokens to plot correlations")

    ncols = min(len(panels), 3)
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(4.0 * ncols, 3.0 * nrows), sharex=True, sharey=True, squeeze=False
    )
    for k, (label, trajectories) in enumerate(trajs.items()):
        valid = trajectories.valid()
        if valid.n_samples == 0:
            continue
        rho = valid.correlation()  # (samples, k, m, m)
        colour = f"C{k}"
        for ax, (_, pairs) in zip(axes.flat, panels, strict=False):
            a, b = np.array(pairs).T
            pooled = np.moveaxis(rho[:, :, a, b], 2, 1).reshape(-1, valid.n_times)
            lo, med, hi = np.quantile(pooled, [lower, 0.5, upper], axis=0)
            ax.fill_between(valid.t, lo, hi, color=colour, alpha=0.18, linewidth=0)
            for edge in (lo, hi):  # dashed edges keep overlapping bands readable
                ax.plot(valid.t, edge, color=colour, lw=0.9, ls="--")
            ax.plot(valid.t, med, color=colour, lw=1.8, label=f"{label} (n={valid.n_samples})")

    for ax, (name, _) in zip(axes.flat, panels, strict=False):
        ax.set_title(name, fontsize=10)
        ax.grid(alpha=0.3)
    for i, ax in enumerate(axes.flat[: len(panels)]):
        if i + ncols >= len(panels):  # lowest visible subplot of its column
            ax.xaxis.set_tick_params(labelbottom=True)
            ax.set_xlabel("t = layer / width")
    for ax in axes[:, 0]:
        ax.set_ylabel("rho_ab")
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    axes.flat[0].legend(
        fontsize=8, title=f"median, {lower:g}-{upper:g} quantiles", title_fontsize=8
    )
    if title:
        fig.suptitle(title)
    fig.tight_layout()

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path
