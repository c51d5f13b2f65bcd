r"""Figure 7: finite-time blow-up of the un-normalised SDE and the heavy tails of the network.

Without normalisation the attention drift grows like |V|^3 (SPEC section 3: for V = v I,
b = gamma^2 / tau0^2 v^3 (m - 1) / m^2 I), so the SDE can explode in finite time; the solver
freezes a path once some |V_ab| exceeds ``blowup_bound`` x max diag V0 (1000 here) and records
the time. The finite network cannot explode (the softmax saturates) but grows heavy tails.
Setting: two orthogonal tokens (V0 = I), shaped attention tau0 = 0.3, gamma = 0.9 ("hot").

(a) fraction of SDE paths that crossed the bound by time T, for several steps dt and for the
    default step control (dt=None), and the fraction of networks of each width whose V crossed
    the same bound by t = layer / width;
(b, c) tail P(V_11(t) > threshold) of the networks at several widths, with the SDE's
    P(V_11(t) > threshold or exploded by t) at the finest dt.

With a fixed step the explosion fraction used to depend on dt (18% -> 6% as dt fell from 2^-8
to 2^-14): once v ~ (gamma^2 / tau0^2 dt)^{-1/2} one step of the cubic drift overshoots the
bound, while the exact SDE may still turn back (rho_12 -> 1 switches the cubic drift off for
m = 2). The solver now refines the step of such paths (``shapedsde.sde.Refined``), so the
crossing fraction converges in dt; the figure shows it does, and what the networks do: their
tails sit above the SDE's and approach them slowly with the width (the widest, 16384, has
32768 layers, affordable because the reduced simulator's cost per layer does not depend on the
width).
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
from experiments.sde_vs_network_density import HOT  # noqa: E402

NAME = "blow_up"
FULL: dict[str, Any] = {
    "block": HOT, "tokens": 2, "rho0": 0.0, "diag": 0, "T": 2.0, "blowup_bound": 1000.0,
    "dts": [2.0**-6, 2.0**-8, 2.0**-10, 2.0**-12], "n_sde": 4000,
    "widths": [64, 256, 1024, 4096, 16384], "n_net": 2000, "n_save": 33,
    "thresholds": [10.0, 100.0], "method": "auto",
}
QUICK: dict[str, Any] = dict(FULL, method=C.QUICK_METHOD, T=1.0, dts=[2.0**-6], n_sde=256,
                             widths=[16], n_net=256, n_save=5)


def tail(traj: sd.Trajectories, diag: int, threshold: float) -> np.ndarray:
    """P(V_dd(t) > threshold or exploded by t) at the saved times (exploded paths are frozen
    below the bound, so they are counted from their explosion time on)."""
    over = traj.V[:, :, diag, diag] > threshold
    gone = traj.explosion_time[:, None] <= traj.t[None, :] + 1e-12
    return (over | gone).mean(axis=0)


def crossed(explosion_time: np.ndarray, times: np.ndarray) -> np.ndarray:
    """Fraction of paths with explosion time <= t, for every t in ``times``."""
    return (explosion_time[:, None] <= times[None, :] + 1e-12).mean(axis=0)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Solve the SDE at every dt and simulate the networks; plot explosion and tails."""
    opts = C.parse_args(NAME, __doc__, argv)
    cfg = opts.config(FULL, QUICK)
    block = C.block_from_config(cfg["block"])
    V0 = C.initial_covariance(cfg["tokens"], cfg["rho0"])
    T, d, thresholds = cfg["T"], cfg["diag"], cfg["thresholds"]
    times = np.linspace(0.0, T, 401)
    data: dict[str, np.ndarray] = {"times": times, "dts": np.array(cfg["dts"]),
                                   "widths": np.array(cfg["widths"]),
                                   "thresholds": np.array(thresholds)}
    results: dict[str, Any] = {"sde_exploded_at_T": {}, "net_crossed_at_T": {},
                               "net_tail_at_T": {}}
    finest = None
    for k, dt in enumerate(C.progress([*cfg["dts"], None], opts, "SDE steps")):
        traj = sd.solve_sde(block, V0, T, key=opts.key(k), n_paths=cfg["n_sde"], dt=dt,
                            n_save=cfg["n_save"], blowup_bound=cfg["blowup_bound"],
                            progress=opts.progress)
        data[f"sde_explosion_time_{k}"] = traj.explosion_time
        if dt is None:
            results["sde_default"] = {"dt": traj.config["dt"],
                                      "exploded": traj.exploded_fraction,
                                      "step_error": traj.config["step_error"]}
            continue
        results["sde_exploded_at_T"][f"1/{round(1 / dt)}"] = traj.exploded_fraction
        finest = traj
    assert finest is not None
    data["sde_t"] = finest.t
    data["sde_tail"] = np.stack([tail(finest, d, thr) for thr in thresholds])
    for i, width in enumerate(C.progress(cfg["widths"], opts, "widths")):
        net = sd.simulate_network(block, V0, width=width, depth=round(T * width),
                                  n_samples=cfg["n_net"], n_save=cfg["n_save"],
                                  key=opts.key(100 + i), blowup_bound=cfg["blowup_bound"],
                                  method=cfg["method"], progress=opts.progress)
        data["net_t"] = net.t
        data[f"net_explosion_time_{width}"] = net.explosion_time
        data[f"net_tail_{width}"] = np.stack([tail(net, d, thr) for thr in thresholds])
        results["net_crossed_at_T"][str(width)] = net.exploded_fraction
        results["net_tail_at_T"][str(width)] = data[f"net_tail_{width}"][:, -1].tolist()
    results["sde_tail_at_T"] = data["sde_tail"][:, -1].tolist()

    with C.style():
        fig, axes = C.subplots(1, 1 + len(thresholds), (4.3, 3.6), sharey=True)
        ax = axes[0, 0]
        dt_colours = [f"C{k}" for k in range(len(cfg["dts"]))]
        for k, (dt, colour) in enumerate(zip(cfg["dts"], dt_colours, strict=True)):
            ax.plot(times, crossed(data[f"sde_explosion_time_{k}"], times), color=colour,
                    label=f"SDE, dt = 1/{round(1 / dt)}")
        default = results["sde_default"]
        ax.plot(times, crossed(data[f"sde_explosion_time_{len(cfg['dts'])}"], times), ":",
                color="k", lw=2, label=f"SDE, step control (dt = 1/{round(1 / default['dt'])})")
        colours = C.width_colours(cfg["widths"])
        for width, colour in zip(cfg["widths"], colours, strict=True):
            ax.plot(times, crossed(data[f"net_explosion_time_{width}"], times), "--",
                    color=colour, label=f"network, width {width}")
        ax.set_title(f"(a) crossed |V_ab| > {cfg['blowup_bound']:g} by time T")
        ax.set_xlabel("T")
        ax.set_ylabel("fraction of paths")
        ax.set_ylim(0.0, 1.5 * max(line.get_ydata().max() for line in ax.get_lines()))
        ax.legend(loc="upper center", ncols=2)
        for j, thr in enumerate(thresholds):
            ax = axes[0, 1 + j]
            for width, colour in zip(cfg["widths"], colours, strict=True):
                ax.plot(data["net_t"], data[f"net_tail_{width}"][j], "o-", ms=3, color=colour,
                        label=f"network, width {width}")
            ax.plot(data["sde_t"], data["sde_tail"][j], "--", color=C.SDE_COLOUR, lw=2,
                    label=f"SDE, dt = 1/{round(1 / cfg['dts'][-1])} (exploded counted)")
            ax.set_title(f"({'bcdefg'[j]}) P(V_{d + 1}{d + 1}(t) > {thr:g})")
            ax.set_xlabel("t = layer / width")
            ax.legend(loc="upper left")
            ax.yaxis.set_tick_params(labelleft=True)
        fig.suptitle(f"un-normalised {C.describe(cfg['block'])}, "
                     f"{C.v0_text(cfg['tokens'], cfg['rho0'])}\n{cfg['n_sde']} SDE paths per "
                     f"dt, {cfg['n_net']} networks per width (depth = t x width)")
        err = default["step_error"]
        summary = ["SDE exploded by T = " + f"{T:g}: " + ", ".join(
            f"dt {k}: {v:.1%}" for k, v in results["sde_exploded_at_T"].items())
            + f"; step control: {default['exploded']:.1%} at dt = 1/{round(1 / default['dt'])}"
            f" (step error of the fraction {err['crossing']:.2%} +- {err['crossing_se']:.2%}, "
            f"below {err['crossing_bound']:.2%})"]
        summary += [f"width {w}: crossed the bound {results['net_crossed_at_T'][str(w)]:.1%}, "
                    + ", ".join(f"P(V > {thr:g}) = {p:.1%}" for thr, p in
                                zip(thresholds, results["net_tail_at_T"][str(w)], strict=True))
                    for w in cfg["widths"]]
        summary.append("SDE (finest dt): " + ", ".join(
            f"P(V > {thr:g} or exploded) = {p:.1%}"
            for thr, p in zip(thresholds, results["sde_tail_at_T"], strict=True)))
        return C.finish(opts, fig, cfg, data, results, summary)


if __name__ == "__main__":
    main()
