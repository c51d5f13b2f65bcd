r"""Figure 10: what a sliding window and positional encodings do over depth.

Top row, shaped attention in the SDE regime (depth of order the width), RMS-normalised, from
m orthogonal tokens (V0 = I): the mean correlation of tokens a and b against their distance
|a - b| at several times t = layer / n, for full attention, a sliding window (every token sees
its neighbours, |a - b| < w), positional encodings in the queries and keys (Gram
Pi_ab = rho_P^|a-b|), and both. Lines: the SDE (the logits see V + Pi, the centring runs over
the allowed keys of each row); markers with error bars: networks of width n (exact reduced
simulator, P added to queries and keys). Without a mask or positions no pair is special; the
window correlates neighbours, the positional Gram correlates tokens by their distance.

Bottom row, standard attention at fixed depth and infinite width and heads: the NNGP kernel
V' = lambda^2 V + gamma^2 E[A V A^T] (logits of Gram V + Pi) after l layers. Full attention
collapses every pair towards rho = 1 at once (rank collapse); the window spreads correlation
one neighbour per layer, and positions make near tokens collapse first.
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
from shapedsde.analysis.metrics import distance_profile  # noqa: E402

NAME = "masks_and_positions"
CONFIGS = ("full", "window", "positions", "window + positions")
FULL: dict[str, Any] = {
    "tokens": 8, "window": 2, "rho_P": 0.8,
    "shaped": {"tau0": 0.5, "gamma": 0.9}, "T": 1.0, "n_save": 5, "times": [0.25, 0.5, 1.0],
    "width": 128, "n_samples": 2000, "dt": 2.0**-9, "method": "auto",
    "standard": {"gamma": 0.8}, "depths": [1, 2, 4, 8],
}
QUICK: dict[str, Any] = dict(FULL, tokens=4, width=8, n_samples=200, dt=2.0**-5,
                             method=C.QUICK_METHOD, depths=[1, 2, 4])


def spec(kind: str, params: dict[str, Any], name: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """Block config of one of the CONFIGS (``Block.config`` format)."""
    out: dict[str, Any] = {"kind": kind, **params}
    m = cfg["tokens"]
    if "window" in name:
        out["mask"] = sd.sliding_window_mask(m, cfg["window"]).config()
    # without positions Pi = 0 (the same as none): Pi is a traced value, so the configurations
    # with and without positions share their compiled simulators
    scale = 1.0 if "positions" in name else 0.0
    out["positions"] = sd.decay_gram(m, cfg["rho_P"], scale).config()
    return out


def by_distance(V: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean correlation of the pairs at each distance d = 1, ..., m - 1 (mean over pairs, then
    over samples) and its standard error over samples; V of shape (samples, m, m)."""
    per_sample = distance_profile(sd.correlation(V))  # (samples, m - 1)
    se = per_sample.std(0, ddof=1) / np.sqrt(len(per_sample)) if len(per_sample) > 1 else 0.0
    return per_sample.mean(0), se


def kernel_by_distance(V: np.ndarray) -> np.ndarray:
    """The same for one deterministic covariance (m, m)."""
    return by_distance(V[None])[0]


def simulate(cfg: dict[str, Any], opts: C.Options) -> tuple[dict[str, np.ndarray],
                                                           dict[str, Any]]:
    m, width, T = cfg["tokens"], cfg["width"], cfg["T"]
    V0 = np.eye(m)
    depth = round(T * width)
    data: dict[str, np.ndarray] = {"distance": np.arange(1, m)}
    results: dict[str, Any] = {"sde_steps": {}, "neighbour_rho_T": {}, "max_z": {}}
    for k, name in enumerate(C.progress(CONFIGS, opts, "shaped")):
        block = C.block_from_config(spec("ShapedAttention", cfg["shaped"], name, cfg))
        sde = sd.solve_sde(block, V0, T, key=opts.key(2 * k), n_paths=cfg["n_samples"],
                           dt=cfg["dt"], n_save=cfg["n_save"], normalize="rms",
                           progress=opts.progress)
        net = sd.simulate_network(block, V0, width=width, depth=depth,
                                  n_samples=cfg["n_samples"], n_save=cfg["n_save"],
                                  key=opts.key(2 * k + 1), normalize="rms",
                                  method=cfg["method"], progress=opts.progress)
        results["sde_steps"][name] = C.sde_step(sde)
        z_max = 0.0
        for t in cfg["times"]:
            i = sde.at(t)
            for src, traj in (("sde", sde), ("net", net)):
                mean, se = by_distance(traj.valid().V[:, i])
                data[f"{name}_{src}_{t:g}_mean"], data[f"{name}_{src}_{t:g}_se"] = mean, se
            diff = data[f"{name}_sde_{t:g}_mean"] - data[f"{name}_net_{t:g}_mean"]
            se = np.hypot(data[f"{name}_sde_{t:g}_se"], data[f"{name}_net_{t:g}_se"])
            z_max = max(z_max, float(np.max(np.abs(diff) / se)))
        results["max_z"][name] = z_max
        results["neighbour_rho_T"][name] = {
            src: [float(data[f"{name}_{src}_{T:g}_mean"][0]),
                  float(data[f"{name}_{src}_{T:g}_se"][0])] for src in ("sde", "net")}
    results["nngp_neighbour_rho"] = {}
    for name in C.progress(CONFIGS, opts, "standard"):
        block = C.block_from_config(spec("StandardAttention", cfg["standard"], name, cfg))
        kernel = sd.nngp_kernel(block, V0, max(cfg["depths"]), normalize="rms")
        for depth_l in cfg["depths"]:
            data[f"{name}_nngp_{depth_l}"] = kernel_by_distance(kernel[depth_l])
        results["nngp_neighbour_rho"][name] = [float(data[f"{name}_nngp_{d}"][0])
                                               for d in cfg["depths"]]
    return data, results


def draw(axes: Any, data: dict[str, np.ndarray], cfg: dict[str, Any],
         results: dict[str, Any]) -> None:
    d = data["distance"]
    colours = C.width_colours(cfg["times"])
    depth_colours = C.width_colours(cfg["depths"])
    for j, name in enumerate(CONFIGS):
        ax = axes[0, j]
        for t, colour in zip(cfg["times"], colours, strict=True):
            ax.plot(d, data[f"{name}_sde_{t:g}_mean"], color=colour, label=f"SDE, t = {t:g}")
            ax.errorbar(d, data[f"{name}_net_{t:g}_mean"], yerr=2 * data[f"{name}_net_{t:g}_se"],
                        color=colour, fmt="o", ms=3, lw=1, capsize=2,
                        label=f"network, t = {t:g}")
        ax.set_title(f"shaped, {name}\n(max |SDE - net| / SE {results['max_z'][name]:.1f})")
        ax = axes[1, j]
        for depth_l, colour in zip(cfg["depths"], depth_colours, strict=True):
            ax.plot(d, data[f"{name}_nngp_{depth_l}"], color=colour, marker=".",
                    label=f"depth {depth_l}")
        ax.set_title(f"standard, {name} (NNGP)")
        ax.set_xlabel("distance |a - b|")
        for row in (0, 1):
            axes[row, j].set_xticks(d)
    axes[0, 0].set_ylabel("mean rho_ab over pairs and samples")
    axes[1, 0].set_ylabel("rho_ab of the NNGP kernel")
    axes[0, -1].legend(loc="upper right", fontsize=7, title="bars: 2 SE")
    axes[1, -1].legend(loc="lower right", fontsize=7)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Simulate, plot and save the figure."""
    opts = C.parse_args(NAME, __doc__, argv)
    cfg = opts.config(FULL, QUICK)
    with C.quick_compilation(opts):
        data, results = simulate(cfg, opts)
    shaped = cfg["shaped"]
    with C.style():
        fig, axes = C.subplots(2, len(CONFIGS), (3.3, 2.9), sharey="row")
        draw(axes, data, cfg, results)
        steps = C.step_text(list(results["sde_steps"].values()))
        fig.suptitle(
            f"Sliding window (w = {cfg['window']}) and positional Gram Pi_ab = "
            f"{cfg['rho_P']:g}^|a-b| over depth, m = {cfg['tokens']} orthogonal tokens, "
            f"RMS-normalised\ntop: shaped attention (tau0 = {shaped['tau0']:g}, gamma = "
            f"{shaped['gamma']:g}), SDE ({steps})\nvs {cfg['n_samples']} networks of width "
            f"{cfg['width']}; bottom: standard attention (gamma = {cfg['standard']['gamma']:g})"
            f" at width and heads infinite (NNGP kernel)")
        summary = [f"{name}: neighbour rho at T: SDE {v['sde'][0]:.3f} +- {v['sde'][1]:.3f}, "
                   f"network {v['net'][0]:.3f} +- {v['net'][1]:.3f}; max |SDE - net| / SE "
                   f"{results['max_z'][name]:.2f}; NNGP neighbour rho at depths "
                   f"{cfg['depths']}: {np.round(results['nngp_neighbour_rho'][name], 3)}"
                   for name, v in results["neighbour_rho_T"].items()]
        summary += [f"{name}: {C.step_summary(step)}"
                    for name, step in results["sde_steps"].items()]
        return C.finish(opts, fig, cfg, data, results, summary)


if __name__ == "__main__":
    main()
