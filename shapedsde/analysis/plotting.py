"""Figures of sampled covariance paths."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from . import metrics
from .trajectories import Trajectories

__all__ = ["plot_correlation_bands"]


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
    ... in the order of ``trajs``). Saved as PNG (dpi 150); the parent directory is created.

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
    pairs = metrics.offdiag_pairs(tokens.pop())
    if not pairs:
        raise ValueError("need at least 2 tokens to plot correlations")

    ncols = min(len(pairs), 3)
    nrows = math.ceil(len(pairs) / ncols)
    fig, axes = plt.subplots(
        nrows, ncols, figsize=(4.0 * ncols, 3.0 * nrows), sharex=True, sharey=True, squeeze=False
    )
    for k, (label, trajectories) in enumerate(trajs.items()):
        valid = trajectories.valid()
        if valid.n_samples == 0:
            continue
        rho = valid.correlation()  # (samples, k, m, m)
        band = np.quantile(rho, [lower, 0.5, upper], axis=0)  # (3, k, m, m)
        colour = f"C{k}"
        for ax, (a, b) in zip(axes.flat, pairs, strict=False):
            lo, med, hi = band[:, :, a, b]
            ax.fill_between(valid.t, lo, hi, color=colour, alpha=0.18, linewidth=0)
            for edge in (lo, hi):  # dashed edges keep overlapping bands readable
                ax.plot(valid.t, edge, color=colour, lw=0.9, ls="--")
            ax.plot(valid.t, med, color=colour, lw=1.8, label=f"{label} (n={valid.n_samples})")

    for ax, (a, b) in zip(axes.flat, pairs, strict=False):
        ax.set_title(f"rho[{a},{b}]", fontsize=10)
        ax.grid(alpha=0.3)
    for i, ax in enumerate(axes.flat[: len(pairs)]):
        if i + ncols >= len(pairs):  # lowest visible subplot of its column
            ax.xaxis.set_tick_params(labelbottom=True)
            ax.set_xlabel("t = layer / width")
    for ax in axes[:, 0]:
        ax.set_ylabel("rho_ab")
    for ax in list(axes.flat)[len(pairs) :]:
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
