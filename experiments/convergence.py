r"""Figure 5: distance between the network law and the SDE law against width (log-log).

For rho_12 at T = 1 (setting of figure 2: two orthogonal tokens, shaped attention tau0 = 0.3,
gamma = 0.9, RMS normalisation), the two-sample KS statistic sup_x |F_n(x) - F(x)| and the
1-Wasserstein distance int |F_n(x) - F(x)| dx between N(n) networks of width n (depth n,
exact reduced simulator) and N_sde SDE paths.

Monte Carlo floor: even for equal laws both distances are of order N^{-1/2} (for KS about
0.87 sqrt(1/N_sde + 1/N(n))). The floor is measured directly, as the same distance between
the SDE sample and an independent SDE sample of size N(n) (averaged over disjoint chunks of
it), and drawn beside the data; the slope is fitted from the smallest width up to the first
width whose distance is not above ``fit_factor`` times the floor.
The number of networks is N(n) = min(n_max, layer_budget / n) (the cost is N(n) n layers), so
the floor rises at the largest widths.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if not __package__:  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from matplotlib.ticker import NullLocator  # noqa: E402

import shapedsde as sd  # noqa: E402
from experiments import _common as C  # noqa: E402
from experiments.sde_vs_network_density import HOT  # noqa: E402

NAME = "convergence"
# SDE step: the step control's ("dt": None), every statistic of rho resolved below "tol"
# (estimate + 2 SE), so that the SDE's own error stays below the Monte Carlo floor
FULL: dict[str, Any] = {
    "block": HOT, "tokens": 2, "rho0": 0.0, "pair": [0, 1], "normalize": "rms", "T": 1.0,
    "widths": [2**k for k in range(4, 13)], "n_sde": 20000, "n_max": 20000,
    "layer_budget": 20000 * 256, "dt": None, "tol": 0.005, "fit_factor": 2.0,
    "method": "auto",
}
# quick: the shapes and the fixed coarse step of sde_vs_network_density's quick run (compiled
# once per process; no step control, so that the run stays seconds)
QUICK: dict[str, Any] = dict(FULL, method=C.QUICK_METHOD, widths=[4, 32], n_sde=1024,
                             n_max=1024, layer_budget=1024 * 32, dt=2.0**-8)
METRICS = (("ks", "KS statistic"), ("w1", "1-Wasserstein distance"))


def n_networks(cfg: dict[str, Any], width: int) -> int:
    """N(n) = min(n_max, layer_budget // n): the cost of a width is N(n) n layers."""
    return int(min(cfg["n_max"], cfg["layer_budget"] // width))


def floor_distances(x: np.ndarray, independent: np.ndarray, size: int) -> tuple[float, float]:
    """Monte Carlo floor for a network sample of ``size``: (KS, W1) between the SDE sample
    ``x`` and disjoint chunks of ``size`` paths of an independent SDE sample, averaged over the
    chunks (one chunk when ``size`` is the whole sample)."""
    chunks = [independent[i:i + size] for i in range(0, independent.size - size + 1, size)]
    return tuple(np.mean([C.distances(x, c) for c in chunks], axis=0).tolist())


def fit(widths: np.ndarray, dist: np.ndarray, floor: np.ndarray,
        factor: float) -> dict[str, Any]:
    """Least-squares slope of log dist against log n over the widths from the smallest one up
    to the first whose distance is not above ``factor`` x floor (excluded); with its standard
    error when at least 3 widths are fitted."""
    keep = np.cumprod(dist > factor * floor).astype(bool)
    out: dict[str, Any] = {"fitted_widths": widths[keep].tolist(), "slope": math.nan,
                           "slope_se": math.nan, "intercept": math.nan}
    if keep.sum() >= 2:
        x, y = np.log(widths[keep]), np.log(dist[keep])
        out["slope"], out["intercept"] = C.loglog_slope(widths[keep], dist[keep])
        if keep.sum() >= 3:
            resid = y - (out["intercept"] + out["slope"] * x)
            s2 = float(resid @ resid) / (x.size - 2)
            out["slope_se"] = math.sqrt(s2 / float(((x - x.mean()) ** 2).sum()))
    return out


def fit_text(f: dict[str, Any], label: str, factor: float) -> str:
    """The fit as printed on the plot."""
    w = f["fitted_widths"]
    if len(w) < 2:
        return f"no fit: fewer than 2 widths with {label} > {factor:g} x floor"
    se = "" if math.isnan(f["slope_se"]) else f" +- {f['slope_se']:.2f}"
    return (f"fitted slope {f['slope']:.2f}{se} over n = {w[0]}-{w[-1]}\n({len(w)} widths; "
            f"fit stops at the first width with {label} < {factor:g} x floor)")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Simulate the SDE twice (data and floor) and the networks at every width; fit, plot."""
    opts = C.parse_args(NAME, __doc__, argv)
    cfg = opts.config(FULL, QUICK)
    block = C.block_from_config(cfg["block"])
    V0 = C.initial_covariance(cfg["tokens"], cfg["rho0"])
    normalize = C.normalize_arg(cfg["normalize"])
    widths = np.array(cfg["widths"])
    sdes = [sd.solve_sde(block, V0, cfg["T"], key=opts.key(tag), n_paths=cfg["n_sde"],
                         dt=cfg["dt"], tol=cfg["tol"], n_save=2, normalize=normalize,
                         progress=opts.progress) for tag in (0, 1)]
    sde_a, sde_b = (C.rho_at(sde, cfg["pair"]) for sde in sdes)
    steps = [C.sde_step(sde) for sde in sdes]
    data: dict[str, np.ndarray] = {"widths": widths, "sde": sde_a, "sde_floor": sde_b,
                                   "sde_dt": np.array([s["dt"] for s in steps]),
                                   "sde_step_error": np.array([s["step_error"]["rho"]
                                                               for s in steps])}
    rows = []
    for i, width in enumerate(C.progress(cfg["widths"], opts, "widths")):
        n_net = n_networks(cfg, width)
        net = sd.simulate_network(block, V0, width=width, depth=round(cfg["T"] * width),
                                  n_samples=n_net, n_save=2, key=opts.key(2 + i),
                                  normalize=normalize, method=cfg["method"], progress=opts.progress)
        y = C.rho_at(net, cfg["pair"])
        data[f"net_{width}"] = y
        rows.append((n_net, *C.distances(sde_a, y), *floor_distances(sde_a, sde_b, n_net)))
    n_net, ks, w1, floor_ks, floor_w1 = map(np.array, zip(*rows, strict=True))
    data.update(n_net=n_net, ks=ks, w1=w1, floor_ks=floor_ks, floor_w1=floor_w1)
    fits = {name: fit(widths, data[name], data[f"floor_{name}"], cfg["fit_factor"])
            for name, _ in METRICS}
    results = {
        "ks": dict(zip(map(str, widths), ks.tolist(), strict=True)),
        "w1": dict(zip(map(str, widths), w1.tolist(), strict=True)),
        "floor_ks": dict(zip(map(str, widths), floor_ks.tolist(), strict=True)),
        "floor_w1": dict(zip(map(str, widths), floor_w1.tolist(), strict=True)),
        "n_net": dict(zip(map(str, widths), n_net.tolist(), strict=True)),
        "fit": fits,
        "ks_critical_1pct_largest": C.ks_critical(cfg["n_sde"], int(n_net[-1]), alpha=0.01),
        "sde_step": dict(zip(("sde", "sde_floor"), steps, strict=True)),
    }

    with C.style():
        fig, axes = C.subplots(1, 2, (4.8, 3.9))
        for ax, (name, label) in zip(axes[0], METRICS, strict=True):
            dist, floor, f = data[name], data[f"floor_{name}"], fits[name]
            ax.plot(widths, dist, "o-", color="C0", label="network (width n) vs SDE")
            ax.plot(widths, floor, "x--", color="grey",
                    label="Monte Carlo floor: SDE vs independent SDE (same sample sizes)")
            if len(f["fitted_widths"]) >= 2:
                w = np.array(f["fitted_widths"], float)
                ax.plot(w, np.exp(f["intercept"]) * w ** f["slope"], color="C3", lw=2.5,
                        alpha=0.6, label="least-squares fit")
            ax.plot(widths, dist[0] * (widths / widths[0]) ** -1.0, ":", color="black",
                    lw=1.0, label="guide ~ 1/n")
            ax.set_xscale("log", base=2)
            ax.set_xticks(widths, [str(w) for w in widths])
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_yscale("log")
            ax.set_xlabel("width n (depth = T n)")
            ax.set_ylabel(label)
            ax.set_ylim(0.3 * min(dist.min(), floor.min()), 2.0 * dist.max())
            ax.text(0.97, 0.97, fit_text(f, name.upper(), cfg["fit_factor"]),
                    transform=ax.transAxes, ha="right", va="top",
                    bbox={"boxstyle": "round", "fc": "white", "ec": "0.7"})
        handles, labels = axes[0, 0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncols=2)
        a, b = cfg["pair"]
        sizes = (f"N_sde = {cfg['n_sde']}, N(n) = {n_net[0]}" if n_net[0] == n_net[-1] else
                 f"N_sde = {cfg['n_sde']}, N(n) = {n_net[0]} down to {n_net[-1]}")
        fig.suptitle(f"{C.describe(cfg['block'])}, {C.v0_text(cfg['tokens'], cfg['rho0'])}, "
                     f"normalize={cfg['normalize']}\ndistance between the laws of "
                     f"rho_{a + 1}{b + 1} at T = {cfg['T']:g}: networks vs SDE; {sizes}\n"
                     f"SDE {C.step_text(steps)}")
        summary = [f"n = {w:5d} (N = {n}): KS {k:.4f} (floor {fk:.4f}), W1 {d:.4f} "
                   f"(floor {fw:.4f})"
                   for w, n, k, fk, d, fw in zip(widths, n_net, ks, floor_ks, w1, floor_w1,
                                                 strict=True)]
        summary += [f"{name.upper()}: " + fit_text(fits[name], name.upper(),
                                                   cfg["fit_factor"]).replace("\n", " ")
                    for name, _ in METRICS]
        summary += [f"SDE ({name}) {C.step_summary(s)}"
                    for name, s in results["sde_step"].items()]
        return C.finish(opts, fig, cfg, data, results, summary)


if __name__ == "__main__":
    main()
