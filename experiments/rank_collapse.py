r"""Figure 1: rank collapse of standard attention, and its absence in shaped attention.

Finite networks (exact reduced simulator) of width n from m orthogonal tokens (V0 = I), RMS
normalised after every block, with the same residual weights lambda^2 + gamma^2 = 1:

    standard: X' = lambda X + gamma softmax(S) X W^V / sqrt(n)
    shaped:   X' = lambda X + gamma (I + softmax(S / (tau0 sqrt n)) - 11^T/m) X W^V / sqrt(n)

Against depth l: the mean off-diagonal correlation mean_{a != b} rho_ab(V_l) and the stable
rank tr(V_l) / ||V_l||_2 in [1, m] (mean over networks, with 5-95% bands). Standard attention
averages tokens with O(1) weights at every layer, so rho -> 1 and the stable rank -> 1 within
a few layers; the shaped softmax is centred at the identity and its logits are cooled with
the width, so correlations move only O(1) over depth n. The dashed line is standard
attention's NNGP kernel (width and heads infinite at fixed depth, ``sd.nngp_kernel``): the
deterministic recursion V' = lambda^2 V + gamma^2 E[A V A^T], which collapses as well.
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
from shapedsde.analysis.metrics import offdiag_mean  # noqa: E402

NAME = "rank_collapse"
FULL: dict[str, Any] = {
    "blocks": {
        "standard": {"kind": "StandardAttention", "gamma": 0.5},
        "shaped": {"kind": "ShapedAttention", "tau0": 1.0, "gamma": 0.5},
    },
    "tokens": 4, "rho0": 0.0, "normalize": "rms",
    "width": 256, "depth": 512, "n_samples": 1000, "n_save": 513,
    "method": "auto",
}
# quick: 3 tokens and 256 samples, so that the shaped network has the shapes of
# sde_vs_network_bands' quick run (compiled once per process)
QUICK: dict[str, Any] = dict(FULL, method=C.QUICK_METHOD, tokens=3, width=32, depth=64,
                             n_samples=256, n_save=65)
LEVELS = (0.05, 0.5, 0.95)
COLLAPSE = 0.9  # "collapsed": mean off-diagonal correlation above this


def summarise(traj: sd.Trajectories) -> dict[str, np.ndarray]:
    """Mean and 5/50/95% quantiles over networks of the mean correlation and stable rank."""
    valid = traj.valid()
    corr = offdiag_mean(valid.correlation())  # (samples, times)
    rank = sd.stable_rank(valid.V)
    return {"corr_mean": corr.mean(0), "corr_q": C.quantile_bands(corr, LEVELS),
            "rank_mean": rank.mean(0), "rank_q": C.quantile_bands(rank, LEVELS),
            "exploded": np.array(traj.exploded_fraction)}


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Simulate both attention kinds, plot correlation and stable rank against depth."""
    opts = C.parse_args(NAME, __doc__, argv)
    cfg = opts.config(FULL, QUICK)
    V0 = C.initial_covariance(cfg["tokens"], cfg["rho0"])
    data: dict[str, np.ndarray] = {}
    for tag, (label, spec) in enumerate(C.progress(cfg["blocks"].items(), opts, "blocks")):
        traj = sd.simulate_network(
            C.block_from_config(spec), V0, width=cfg["width"], depth=cfg["depth"],
            n_samples=cfg["n_samples"], n_save=cfg["n_save"], key=opts.key(tag),
            normalize=C.normalize_arg(cfg["normalize"]), method=cfg["method"],
            progress=opts.progress)
        data["depth"] = np.round(traj.t * cfg["width"]).astype(int)
        data.update({f"{label}_{k}": v for k, v in summarise(traj).items()})
    kernel = sd.nngp_kernel(C.block_from_config(cfg["blocks"]["standard"]), V0, cfg["depth"],
                            C.normalize_arg(cfg["normalize"]))[data["depth"]]
    data["nngp_corr"] = offdiag_mean(sd.correlation(kernel))
    data["nngp_rank"] = sd.stable_rank(kernel)

    depth = data["depth"]
    results: dict[str, Any] = {}
    for label in cfg["blocks"]:
        corr = data[f"{label}_corr_mean"]
        above = np.nonzero(corr > COLLAPSE)[0]
        results[f"{label}_corr_last"] = float(corr[-1])
        results[f"{label}_rank_last"] = float(data[f"{label}_rank_mean"][-1])
        results[f"{label}_collapse_depth"] = int(depth[above[0]]) if above.size else None
    above = np.nonzero(data["nngp_corr"] > COLLAPSE)[0]
    results["nngp_corr_last"] = float(data["nngp_corr"][-1])
    results["nngp_collapse_depth"] = int(depth[above[0]]) if above.size else None

    with C.style():
        fig, axes = C.subplots(1, 2, (4.6, 3.4))
        for k, (label, spec) in enumerate(cfg["blocks"].items()):
            colour = f"C{k}"
            name = C.describe(spec)
            for ax, what in zip(axes[0], ("corr", "rank"), strict=True):
                q = data[f"{label}_{what}_q"]
                ax.fill_between(depth, q[0], q[2], color=colour, alpha=0.15, linewidth=0)
                ax.plot(depth, data[f"{label}_{what}_mean"], color=colour, label=name)
        for ax, what in zip(axes[0], ("corr", "rank"), strict=True):
            ax.plot(depth, data[f"nngp_{what}"], color="black", ls="--", lw=1.0,
                    label="standard attention, NNGP kernel (n = H = infinity)")
        ax_c, ax_r = axes[0]
        ax_c.axhline(COLLAPSE, color="grey", lw=0.8, ls=":")
        ax_c.set_ylabel("mean off-diagonal correlation")
        ax_c.set_ylim(-0.05, 1.05)
        ax_r.set_ylabel("stable rank tr V / ||V||")
        ax_r.set_ylim(0.9, cfg["tokens"] + 0.1)
        for ax in (ax_c, ax_r):
            ax.set_xscale("symlog", linthresh=1)
            ax.set_xlim(0, depth[-1])
            ax.set_xlabel("depth (layers)")
        handles, labels = ax_c.get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncols=3,
                   title="mean over networks (line) and 5-95% band over networks")
        fig.suptitle(f"Rank collapse with depth: {C.v0_text(cfg['tokens'], cfg['rho0'])}, "
                     f"width {cfg['width']},\nRMS-normalised, {cfg['n_samples']} networks each")
        summary = [f"{label}: mean correlation at depth {depth[-1]} = "
                   f"{results[f'{label}_corr_last']:.3f}, stable rank "
                   f"{results[f'{label}_rank_last']:.2f}, first depth above {COLLAPSE}: "
                   f"{results[f'{label}_collapse_depth']}" for label in cfg["blocks"]]
        summary.append(f"standard NNGP kernel: mean correlation at depth {depth[-1]} = "
                       f"{results['nngp_corr_last']:.3f}, first depth above {COLLAPSE}: "
                       f"{results['nngp_collapse_depth']}")
        return C.finish(opts, fig, cfg, data, results, summary)


if __name__ == "__main__":
    main()
