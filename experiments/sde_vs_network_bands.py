r"""Figure 3: median and 5-95% bands over t of rho_12 and V_11, SDE vs network, with and
without normalisation.

The network has width n = 256 and depth T n (exact reduced simulator), saved at the same
times t = layer / n as the SDE. With normalize="rms" V is a correlation matrix (V_11 = 1), so
only rho_12 is shown; without normalisation rho_12 and V_11 (log scale) are shown. The
un-normalised SDE can explode (drift ~ |V|^3): exploded paths are frozen by the solver and left
out of the bands, and the legend gives their fraction. Setting: m = 3 tokens with
V0_ab = 0.5^|a-b|, shaped attention tau0 = 1, gamma = 0.5, T = 1. ``simulate`` and ``draw``
are reused by ``transformer_block``.
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

NAME = "sde_vs_network_bands"
FULL: dict[str, Any] = {
    "block": {"kind": "ShapedAttention", "tau0": 1.0, "gamma": 0.5},
    "tokens": 3, "rho0": 0.5, "pair": [0, 1], "diag": 0, "T": 1.0,
    "normalizations": ["rms", "none"], "width": 256, "n_samples": 4000, "dt": 2.0**-10,
    "n_save": 33, "levels": [0.05, 0.5, 0.95],
    "method": "auto",
}
QUICK: dict[str, Any] = dict(FULL, method=C.QUICK_METHOD, width=32, n_samples=256, dt=2.0**-8,
                             n_save=5)


def panels(cfg: dict[str, Any]) -> list[tuple[str, str]]:
    """(normalisation, quantity) of each panel: rho for every normalisation, V_aa where it
    is not constant (no normalisation)."""
    out = [(norm, "rho") for norm in cfg["normalizations"]]
    return out + [(norm, "V") for norm in cfg["normalizations"] if norm == "none"]


def _quantity(traj: sd.Trajectories, what: str, cfg: dict[str, Any]) -> np.ndarray:
    """rho_ab or V_aa of the non-exploded paths, shape (samples, times)."""
    valid = traj.valid()
    if what == "rho":
        a, b = cfg["pair"]
        return valid.correlation()[:, :, a, b]
    d = cfg["diag"]
    return valid.V[:, :, d, d]


def simulate(cfg: dict[str, Any], opts: C.Options,
             tag: int = 0) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """SDE and network for every normalisation; bands, final samples and KS at T."""
    block = C.block_from_config(cfg["block"])
    V0 = C.initial_covariance(cfg["tokens"], cfg["rho0"])
    width, T = cfg["width"], cfg["T"]
    depth = round(T * width)
    if depth != T * width or depth % (cfg["n_save"] - 1):
        raise ValueError(f"depth T * width = {T * width} must be an integer multiple of "
                         f"n_save - 1 = {cfg['n_save'] - 1} (save times must coincide)")
    data: dict[str, np.ndarray] = {}
    results: dict[str, Any] = {}
    for k, norm in enumerate(C.progress(cfg["normalizations"], opts, "normalisations")):
        normalize = C.normalize_arg(norm)
        runs = {
            "sde": sd.solve_sde(block, V0, T, key=opts.key(tag + 2 * k),
                                n_paths=cfg["n_samples"], dt=cfg["dt"], n_save=cfg["n_save"],
                                normalize=normalize, progress=opts.progress),
            "net": sd.simulate_network(block, V0, width=width, depth=depth,
                                       n_samples=cfg["n_samples"], n_save=cfg["n_save"],
                                       key=opts.key(tag + 2 * k + 1), normalize=normalize,
                                       method=cfg["method"], progress=opts.progress),
        }
        data["t"] = runs["sde"].t
        for what in ("rho", "V"):
            values = {src: _quantity(traj, what, cfg) for src, traj in runs.items()}
            for src, x in values.items():
                data[f"{norm}_{what}_{src}_q"] = C.quantile_bands(x, cfg["levels"])
                data[f"{norm}_{what}_{src}_final"] = x[:, -1]
            if (norm, what) in panels(cfg):
                ks, w1 = C.distances(values["sde"][:, -1], values["net"][:, -1])
                results[f"{norm}_{what}_ks"], results[f"{norm}_{what}_w1"] = ks, w1
        for src, traj in runs.items():
            data[f"{norm}_exploded_{src}"] = np.array(traj.exploded_fraction)
            results[f"{norm}_exploded_{src}"] = traj.exploded_fraction
    results["ks_critical_5pct"] = C.ks_critical(cfg["n_samples"], cfg["n_samples"])
    return data, results


def draw(axes: Sequence[Any], data: dict[str, np.ndarray], cfg: dict[str, Any]) -> None:
    """One axis per entry of :func:`panels`."""
    a, b = cfg["pair"]
    d = cfg["diag"]
    lo, _, hi = cfg["levels"]
    t = data["t"]
    for ax, (norm, what) in zip(axes, panels(cfg), strict=True):
        for src, colour, name in (("sde", C.SDE_COLOUR, "SDE"),
                                  ("net", "C1", f"network, width {cfg['width']}")):
            exploded = float(data[f"{norm}_exploded_{src}"])
            label = name + (f" ({exploded:.1%} exploded, left out)" if exploded else "")
            C.band(ax, t, data[f"{norm}_{what}_{src}_q"], colour, label)
        quantity = f"rho_{a + 1}{b + 1}" if what == "rho" else f"V_{d + 1}{d + 1}"
        ks = data[f"{norm}_{what}_net_final"], data[f"{norm}_{what}_sde_final"]
        ks_value = C.distances(*ks)[0]
        ax.set_title(f"{quantity}, normalize={norm} (KS at T: {ks_value:.3f})")
        ax.set_xlabel("t = layer / width")
        ax.set_ylabel(quantity)
        if what == "V":
            ax.set_yscale("log")
        ax.legend(loc="lower left", title=f"median and {lo:.0%}-{hi:.0%} band")


def setting(cfg: dict[str, Any]) -> str:
    """The model of the figure: block, tokens and initial covariance."""
    return f"{C.describe(cfg['block'])}, {C.v0_text(cfg['tokens'], cfg['rho0'])}"


def caption(cfg: dict[str, Any]) -> str:
    """What the panels compare."""
    return (f"SDE (dt = 1/{round(1 / cfg['dt'])}) vs network of width {cfg['width']} and depth "
            f"{round(cfg['T'] * cfg['width'])}, {cfg['n_samples']} samples each")


def title(cfg: dict[str, Any]) -> str:
    return f"{setting(cfg)}\n{caption(cfg)}"


def summary(results: dict[str, Any], cfg: dict[str, Any]) -> list[str]:
    lines = [f"{norm} {what}: KS at T {results[f'{norm}_{what}_ks']:.4f}, "
             f"W1 {results[f'{norm}_{what}_w1']:.4f}" for norm, what in panels(cfg)]
    lines += [f"{norm}: exploded SDE {results[f'{norm}_exploded_sde']:.1%}, network "
              f"{results[f'{norm}_exploded_net']:.1%}" for norm in cfg["normalizations"]]
    lines.append(f"KS 5% critical value {results['ks_critical_5pct']:.4f}")
    return lines


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Simulate, plot and save figure 3."""
    opts = C.parse_args(NAME, __doc__, argv)
    cfg = opts.config(FULL, QUICK)
    data, results = simulate(cfg, opts)
    with C.style():
        fig, axes = C.subplots(1, len(panels(cfg)), (4.4, 3.5))
        draw(axes[0], data, cfg)
        fig.suptitle(title(cfg))
        return C.finish(opts, fig, cfg, data, results, summary(results, cfg))


if __name__ == "__main__":
    main()
