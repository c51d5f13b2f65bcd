r"""Figure 8: more heads, less attention noise: the spread of rho at a fixed time against H.

With H heads the attention part of the diffusion is divided by H (SPEC section 3):

    Sigma(V) = gamma^2 (2 - gamma^2) Lin(V) + gamma^4 / (m^2 tau0^2 H) [V_ac K_bd + ...],

so the spread of a correlation decreases with H towards the H = infinity SDE, where attention
acts deterministically and only the residual noise gamma^2 (2 - gamma^2) Lin(V) remains.
Setting: two orthogonal tokens (V0 = I), shaped attention tau0 = 0.3, gamma = 0.9, RMS
normalisation, t = 1/8; networks of width 128 (depth 16, key width 128 / H per head) with
H = 1, 4, 16 heads, and the SDE at the same H and at H = infinity.
(a) standard deviation of rho_12(t) with its standard error; (b) the laws themselves.
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

import shapedsde as sd  # noqa: E402
from experiments import _common as C  # noqa: E402
from experiments.sde_vs_network_density import HOT  # noqa: E402

NAME = "heads"
# SDE step: the step control's ("dt": None) for each H, every statistic of rho resolved below
# "tol" (estimate + 2 SE); the hot H = 1 model needs a much finer step than H = 16
FULL: dict[str, Any] = {
    "block": HOT, "tokens": 2, "rho0": 0.0, "pair": [0, 1], "normalize": "rms", "T": 0.125,
    "width": 128, "heads": [1, 4, 16], "n_samples": 10000, "dt": None, "tol": 0.005,
    "bins": 40, "method": "auto",
}
# quick: the shapes of sde_vs_network_density's quick run (256 SDE steps, width 32, 1024 paths):
# a fixed coarse step instead of the step control, so that the run stays seconds
QUICK: dict[str, Any] = dict(FULL, method=C.QUICK_METHOD, width=32, heads=[1], n_samples=1024,
                             dt=2.0**-11)


def sd_and_se(x: np.ndarray) -> tuple[float, float]:
    """Sample standard deviation s and its delta-method standard error
    sqrt((mu_4 - s^4) / N) / (2 s) (no normality assumed)."""
    s = float(x.std())
    mu4 = float(np.mean((x - x.mean()) ** 4))
    return s, math.sqrt(max(mu4 - s**4, 0.0) / x.size) / (2 * s)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Networks and SDEs at every H, the SDE at H = infinity; plot spreads and laws."""
    opts = C.parse_args(NAME, __doc__, argv)
    cfg = opts.config(FULL, QUICK)
    V0 = C.initial_covariance(cfg["tokens"], cfg["rho0"])
    normalize = C.normalize_arg(cfg["normalize"])
    T, width = cfg["T"], cfg["width"]
    depth = round(T * width)
    if depth != T * width:
        raise ValueError(f"T * width = {T * width} is not an integer depth")
    heads: list[int | float] = [*cfg["heads"], math.inf]
    data: dict[str, np.ndarray] = {"heads": np.array(heads, float)}
    results: dict[str, Any] = {"sde": {}, "network": {}, "sde_step": {}}
    for k, H in enumerate(C.progress(heads, opts, "numbers of heads")):
        name = "inf" if H == math.inf else str(H)
        block = C.block_from_config(dict(cfg["block"], heads=name if H == math.inf else H))
        sde = sd.solve_sde(block, V0, T, key=opts.key(2 * k), n_paths=cfg["n_samples"],
                           dt=cfg["dt"], tol=cfg["tol"], n_save=2, normalize=normalize,
                           progress=opts.progress)
        data[f"sde_{name}"] = C.rho_at(sde, cfg["pair"])
        results["sde_step"][name] = C.sde_step(sde)
        results["sde"][name] = sd_and_se(data[f"sde_{name}"])
        if H != math.inf:
            net = sd.simulate_network(block, V0, width=width, depth=depth,
                                      n_samples=cfg["n_samples"], n_save=2,
                                      key=opts.key(2 * k + 1), normalize=normalize,
                                      method=cfg["method"], progress=opts.progress)
            data[f"net_{name}"] = C.rho_at(net, cfg["pair"])
            results["network"][name] = sd_and_se(data[f"net_{name}"])

    steps = list(results["sde_step"].values())
    data.update(sde_dt=np.array([s["dt"] for s in steps]),
                sde_step_error=np.array([s["step_error"]["rho"] for s in steps]))
    a, b = cfg["pair"]
    rho = f"rho_{a + 1}{b + 1}"
    finite = [int(h) for h in cfg["heads"]]
    pos = {str(h): math.log2(h) for h in finite}
    pos["inf"] = math.log2(max(finite)) + 2
    with C.style():
        fig, axes = C.subplots(1, 2, (4.8, 3.7))
        ax, ax_h = axes[0]
        for source, marker, colour, label, shift in (
                ("network", "o", "C0", f"network, width {width}", -0.08),
                ("sde", "s", C.SDE_COLOUR, "SDE at the same H", 0.08)):
            names = list(results[source])
            x = [pos[n] + shift for n in names]
            y, err = zip(*(results[source][n] for n in names), strict=True)
            face = colour if source == "network" else "white"
            ax.errorbar(x, y, yerr=err, fmt=marker, color=colour, mfc=face, ms=6, capsize=3,
                        label=label)
        inf_sd = results["sde"]["inf"][0]
        ax.axhline(inf_sd, color=C.SDE_COLOUR, ls=":", lw=1,
                   label=f"SDE, H = infinity: {inf_sd:.3f}")
        ax.set_xticks(list(pos.values()), [*map(str, finite), "inf"])
        ax.set_xlim(min(pos.values()) - 0.6, max(pos.values()) + 0.6)
        ax.set_xlabel("heads H (log scale; inf = no attention noise)")
        ax.set_ylabel(f"standard deviation of {rho}(t = {T:g})")
        ax.set_title(f"(a) spread of {rho} at t = {T:g} (+- 1 standard error)")
        ax.legend(loc="upper right")
        bins = np.linspace(-1.0, 1.0, cfg["bins"] + 1)
        for H, colour in zip(finite, C.width_colours(finite), strict=True):
            ax_h.hist(data[f"net_{H}"], bins=bins, density=True, histtype="step", color=colour,
                      lw=1.4, label=f"network, H = {H}: sd {results['network'][str(H)][0]:.3f}")
        ax_h.hist(data["sde_inf"], bins=bins, density=True, histtype="step",
                  color=C.SDE_COLOUR, lw=2, ls="--", label=f"SDE, H = infinity: sd {inf_sd:.3f}")
        ax_h.set_xlabel(f"{rho} at t = {T:g}")
        ax_h.set_ylabel("density")
        ax_h.set_title(f"(b) law of {rho} at t = {T:g}")
        ax_h.set_ylim(0.0, 1.45 * ax_h.get_ylim()[1])
        ax_h.legend(loc="upper center", ncols=2)
        fig.suptitle(f"{C.describe(cfg['block'])}, {C.v0_text(cfg['tokens'], cfg['rho0'])}, "
                     f"normalize={cfg['normalize']}\n{cfg['n_samples']} samples each, SDE "
                     f"{C.step_text(steps)}, network depth {depth}")
        summary = [f"H = {n}: network sd {results['network'][n][0]:.4f} +- "
                   f"{results['network'][n][1]:.4f}, SDE sd {results['sde'][n][0]:.4f} +- "
                   f"{results['sde'][n][1]:.4f}" for n in results["network"]]
        summary.append(f"H = inf: SDE sd {inf_sd:.4f} +- {results['sde']['inf'][1]:.4f}")
        summary += [f"SDE, H = {n}: {C.step_summary(s)}" for n, s in results["sde_step"].items()]
        return C.finish(opts, fig, cfg, data, results, summary)


if __name__ == "__main__":
    main()
