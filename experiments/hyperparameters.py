r"""Figure 6: how tau0 and gamma shape the law of the final correlation (SDE only).

For shaped attention the SDE coefficients scale as (SPEC section 3)

    drift      b      ~ gamma^2 / tau0^2                 (attention, cubic in V)
    diffusion  Sigma  = gamma^2 (2 - gamma^2) Lin(V)     (residual noise)
                      + gamma^4 / (m^2 tau0^2 H) [...]   (attention noise),

so gamma sets the overall speed and tau0 the weight of the attention terms against the
residual noise. Over a tau0 x gamma grid, the normalised SDE (RMS) is solved from
V0_ab = 0.5^|a-b| with m = 3 tokens to T = 1, and the law of rho_12(V_T) is summarised by
its median (left) and its 5-95% spread q95 - q05 (right), written in every cell.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if not __package__:  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from matplotlib.colors import Normalize, TwoSlopeNorm  # noqa: E402

import shapedsde as sd  # noqa: E402
from experiments import _common as C  # noqa: E402

NAME = "hyperparameters"
FULL: dict[str, Any] = {
    "tau0": [0.1, 0.2, 0.4, 1.0, 4.0], "gamma": [0.1, 0.3, 0.5, 0.7, 0.9],
    "tokens": 3, "rho0": 0.5, "pair": [0, 1], "normalize": "rms", "T": 1.0,
    "n_paths": 2000, "dt": 2.0**-11, "n_save": 2, "levels": [0.05, 0.25, 0.5, 0.75, 0.95],
}
# quick: one row of the grid; the cell (1, 0.5) has the shapes of sde_vs_network_bands' quick
# SDE (compiled once per process)
QUICK: dict[str, Any] = dict(FULL, tau0=[1.0], gamma=[0.5, 0.9], n_paths=256, dt=2.0**-8,
                             n_save=5)
PANELS = (("median", "median of rho_{ab} at T (white: rho_{ab}(0))", "RdBu_r"),
          ("spread", "5-95% spread q95 - q05 of rho_{ab} at T", "magma"))


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Solve the SDE at every (tau0, gamma), plot median and spread heatmaps."""
    opts = C.parse_args(NAME, __doc__, argv)
    cfg = opts.config(FULL, QUICK)
    V0 = C.initial_covariance(cfg["tokens"], cfg["rho0"])
    a, b = cfg["pair"]
    tau0s, gammas = cfg["tau0"], cfg["gamma"]
    grid = [(i, j) for i in range(len(gammas)) for j in range(len(tau0s))]
    q = np.full((len(gammas), len(tau0s), len(cfg["levels"])), np.nan)
    sd_rho = np.full((len(gammas), len(tau0s)), np.nan)
    for k, (i, j) in enumerate(C.progress(grid, opts, "tau0 x gamma grid")):
        block = sd.ShapedAttention(tau0=tau0s[j], gamma=gammas[i])
        traj = sd.solve_sde(block, V0, cfg["T"], key=opts.key(k), n_paths=cfg["n_paths"],
                            dt=cfg["dt"], n_save=cfg["n_save"],
                            normalize=C.normalize_arg(cfg["normalize"]),
                            progress=opts.progress)
        rho = C.rho_at(traj, cfg["pair"])
        q[i, j] = np.quantile(rho, cfg["levels"])
        sd_rho[i, j] = rho.std()
    levels = cfg["levels"]
    maps = {"median": q[..., levels.index(0.5)],
            "spread": q[..., levels.index(0.95)] - q[..., levels.index(0.05)]}
    data = {"tau0": np.array(tau0s), "gamma": np.array(gammas), "quantiles": q,
            "levels": np.array(levels), "sd": sd_rho, **maps}
    results = {name: value.tolist() for name, value in maps.items()}
    results["sd"] = sd_rho.tolist()

    pair = f"{a + 1}{b + 1}"
    with C.style():
        fig, axes = C.subplots(1, 2, (4.6, 3.9))
        for ax, (name, label, cmap) in zip(axes[0], PANELS, strict=True):
            values = maps[name]
            if name == "median":  # diverging around the initial value
                norm = TwoSlopeNorm(vcenter=float(V0[a, b]), vmin=-1.0, vmax=1.0)
            else:
                norm = Normalize(vmin=0.0, vmax=2.0)
            image = ax.imshow(values, origin="lower", cmap=cmap, norm=norm, aspect="auto")
            for (i, j), v in np.ndenumerate(values):
                shade = float(norm(v))
                dark = shade < 0.55 if name == "spread" else abs(shade - 0.5) > 0.3
                ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8,
                        color="white" if dark else "black")
            ax.set_xticks(range(len(tau0s)), [f"{t:g}" for t in tau0s])
            ax.set_yticks(range(len(gammas)), [f"{g:g}" for g in gammas])
            ax.set_xlabel("tau0 (attention temperature tau = tau0 sqrt(n))")
            ax.set_ylabel("gamma (branch weight)")
            ax.set_title(label.replace("{ab}", pair))
            ax.grid(False)
            fig.colorbar(image, ax=ax, shrink=0.9)
        fig.suptitle(f"normalised SDE of shaped attention, {C.v0_text(cfg['tokens'], cfg['rho0'])}"
                     f" (rho_{pair}(0) = {V0[a, b]:g}), T = {cfg['T']:g}, dt = "
                     f"1/{round(1 / cfg['dt'])}, {cfg['n_paths']} paths per cell")
        summary = [f"gamma {g:g}: median " + " ".join(f"{v:+.2f}" for v in maps["median"][i])
                   + " | spread " + " ".join(f"{v:.2f}" for v in maps["spread"][i])
                   for i, g in enumerate(gammas)]
        summary.insert(0, "columns: tau0 = " + ", ".join(f"{t:g}" for t in tau0s))
        return C.finish(opts, fig, cfg, data, results, summary)


if __name__ == "__main__":
    main()
