r"""Figure 2: law of a correlation rho_12 at time T, finite networks of growing width vs the SDE.

The networks have width n and depth T n (exact reduced simulator); the SDE is the limit
n, d -> infinity with d / n = T (step dt chosen by the step control, its step error resolved
below tol and shown; SPEC section 9).
Left: histograms of rho_12(V_T); right: the difference of empirical CDFs F_network - F_SDE,
whose maximum modulus is the two-sample KS statistic (W1 is its integral). As n grows the
network law approaches the SDE.

The default setting is "hot" (small tau0, gamma near 1) so that finite-width effects are
visible at width 32: two orthogonal tokens (V0 = I), shaped attention tau0 = 0.3,
gamma = 0.9, RMS normalisation, T = 1. ``simulate`` and ``draw`` are reused by
``transformer_block`` with another block.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if not __package__:  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

import shapedsde as sd  # noqa: E402
from experiments import _common as C  # noqa: E402

NAME = "sde_vs_network_density"
HOT = {"kind": "ShapedAttention", "tau0": 0.3, "gamma": 0.9}
# SDE step: chosen by solve_sde's step control ("dt": None), which accepts a step only once
# every statistic of rho (mean, 5/50/95% quantiles) has its step error resolved below "tol"
# (estimate + 2 SE), so the SDE's own error stays below the Monte Carlo error compared here
FULL: dict[str, Any] = {
    "block": HOT, "tokens": 2, "rho0": 0.0, "pair": [0, 1], "normalize": "rms", "T": 1.0,
    "widths": [32, 128, 512], "n_samples": 10000, "dt": None, "tol": 0.005, "n_save": 2,
    "bins": 40, "method": "auto",
}
# quick: a fixed coarse step instead of the step control (its error is still estimated and
# shown, not held below tol), so that the run stays seconds
QUICK: dict[str, Any] = dict(FULL, method=C.QUICK_METHOD, widths=[4, 32], n_samples=1024,
                             dt=2.0**-8)


def simulate(cfg: dict[str, Any], opts: C.Options,
             tag: int = 0) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """SDE and networks at every width of ``cfg``; returns (data arrays, key numbers).

    Keys ``opts.key(tag)`` (SDE) and ``opts.key(tag + 1 + i)`` (width i) are used.
    """
    block = C.block_from_config(cfg["block"])
    V0 = C.initial_covariance(cfg["tokens"], cfg["rho0"])
    normalize = C.normalize_arg(cfg["normalize"])
    sde = sd.solve_sde(block, V0, cfg["T"], key=opts.key(tag), n_paths=cfg["n_samples"],
                       dt=cfg["dt"], tol=cfg["tol"], n_save=cfg["n_save"],
                       normalize=normalize, progress=opts.progress)
    x = C.rho_at(sde, cfg["pair"])
    step = C.sde_step(sde)
    data: dict[str, np.ndarray] = {"sde": x, "widths": np.array(cfg["widths"]),
                                   "sde_dt": np.array(step["dt"]),
                                   "sde_step_error": np.array(step["step_error"]["rho"]),
                                   "sde_step_rho_se": np.array(step["step_error"]["rho_se"]),
                                   "sde_step_bound": np.array(step["step_error"]["bound"])}
    ks, w1, exploded = [], [], []
    for i, width in enumerate(C.progress(cfg["widths"], opts, "widths")):
        depth = round(cfg["T"] * width)
        if depth != cfg["T"] * width:
            raise ValueError(f"T * width = {cfg['T']} * {width} is not an integer depth")
        net = sd.simulate_network(block, V0, width=width, depth=depth,
                                  n_samples=cfg["n_samples"], n_save=2, key=opts.key(tag + 1 + i),
                                  normalize=normalize, method=cfg["method"], progress=opts.progress)
        y = C.rho_at(net, cfg["pair"])
        data[f"net_{width}"] = y
        d_ks, d_w1 = C.distances(x, y)
        ks.append(d_ks)
        w1.append(d_w1)
        exploded.append(net.exploded_fraction)
    data.update(ks=np.array(ks), w1=np.array(w1), exploded_net=np.array(exploded),
                exploded_sde=np.array(sde.exploded_fraction))
    results = {"ks": dict(zip(map(str, cfg["widths"]), ks, strict=True)),
               "w1": dict(zip(map(str, cfg["widths"]), w1, strict=True)),
               "ks_critical_5pct": C.ks_critical(x.size, cfg["n_samples"]),
               "sde_exploded": sde.exploded_fraction, "sde_step": step,
               "sde_sd": float(x.std()), "sde_median": float(np.median(x))}
    return data, results


def draw(axes: Sequence[Any], data: dict[str, np.ndarray], cfg: dict[str, Any]) -> None:
    """Left axis: histograms of rho; right axis: F_network - F_SDE."""
    ax_h, ax_d = axes
    step = {"dt": float(data["sde_dt"]), "step_error": {
        "rho": float(data["sde_step_error"]), "rho_se": float(data["sde_step_rho_se"]),
        "bound": float(data["sde_step_bound"])}}
    widths = [int(w) for w in data["widths"]]
    colours = C.width_colours(widths)
    a, b = cfg["pair"]
    bins = np.linspace(-1.0, 1.0, cfg["bins"] + 1)
    grid = np.linspace(-1.0, 1.0, 801)
    x = np.sort(data["sde"])
    F_sde = np.searchsorted(x, grid, side="right") / x.size
    for width, colour, ks, w1 in zip(widths, colours, data["ks"], data["w1"], strict=True):
        y = np.sort(data[f"net_{width}"])
        label = f"width {width}: KS {ks:.3f}, W1 {w1:.3f}"
        ax_h.hist(y, bins=bins, density=True, histtype="step", color=colour, lw=1.4, label=label)
        ax_d.plot(grid, np.searchsorted(y, grid, side="right") / y.size - F_sde, color=colour)
    ax_h.hist(x, bins=bins, density=True, histtype="step", color=C.SDE_COLOUR, lw=2.0,
              ls="--", label=f"SDE ({C.step_text(step)})")
    crit = C.ks_critical(x.size, cfg["n_samples"])
    ax_d.axhspan(-crit, crit, color="grey", alpha=0.15, lw=0)
    ax_d.axhline(0.0, color=C.SDE_COLOUR, lw=0.8)
    ax_h.set_xlabel(f"rho_{a + 1}{b + 1} at t = T = {cfg['T']:g}")
    ax_h.set_ylabel("density")
    ax_h.legend(loc="upper left", title=f"{cfg['n_samples']} samples each")
    ax_d.set_xlabel(f"rho_{a + 1}{b + 1} at t = T = {cfg['T']:g}")
    ax_d.set_ylabel("F_network - F_SDE (empirical CDFs)")
    ax_d.set_title(f"CDF difference (colours as left)\ngrey: |diff| < {crit:.3f}, the KS 5% "
                   "critical value", fontsize=9)


def setting(cfg: dict[str, Any]) -> str:
    """The model of the figure: block, tokens and initial covariance."""
    return f"{C.describe(cfg['block'])}, {C.v0_text(cfg['tokens'], cfg['rho0'])}"


def caption(cfg: dict[str, Any]) -> str:
    """What the panels compare."""
    a, b = cfg["pair"]
    return (f"law of rho_{a + 1}{b + 1} at T = {cfg['T']:g}, normalize={cfg['normalize']}: "
            f"networks of width n and depth T n vs the SDE")


def title(cfg: dict[str, Any]) -> str:
    return f"{setting(cfg)}\n{caption(cfg)}"


def summary(results: dict[str, Any]) -> list[str]:
    lines = [f"width {w}: KS {results['ks'][w]:.4f}, W1 {results['w1'][w]:.4f}"
             for w in results["ks"]]
    lines.append(f"KS 5% critical value {results['ks_critical_5pct']:.4f}; SDE sd of rho "
                 f"{results['sde_sd']:.3f}, exploded {results['sde_exploded']:.1%}")
    lines.append(f"SDE {C.step_summary(results['sde_step'])}")
    return lines


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Simulate, plot and save figure 2."""
    opts = C.parse_args(NAME, __doc__, argv)
    cfg = opts.config(FULL, QUICK)
    data, results = simulate(cfg, opts)
    with C.style():
        fig, axes = C.subplots(1, 2, (5.0, 3.6))
        draw(axes[0], data, cfg)
        fig.suptitle(title(cfg))
        return C.finish(opts, fig, cfg, data, results, summary(results))


if __name__ == "__main__":
    main()
