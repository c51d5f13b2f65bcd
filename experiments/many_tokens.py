r"""Figure 11: many tokens, from m = 2 to 128: depth against the token correlations.

Shaped attention in the SDE regime (tau0 = 1, gamma = 0.5, RMS-normalised, from m orthogonal
tokens V0 = I) at time T = depth / width: the SDE (at dt = 1/512, checked against independent
paths at twice the step: the plotted means move by less than their Monte Carlo error, the
figure's resolution; its per-pair estimate is recorded too) and finite networks of one width
(exact reduced simulator, or the full one where ``method="auto"`` finds it cheaper), against m.
Beside it, standard attention (gamma = 0.5, "rms") at infinite width and heads after a fixed
number of layers: the NNGP kernel V' = lambda^2 V + gamma^2 E[A V A^T] (``sd.nngp_kernel``;
beyond 11 tokens its quadrature rule is streamed, 0.5 GB at m = 128).

(a) the mean off-diagonal correlation at T: shaped attention keeps the tokens uncorrelated on
average at every m (its drift is symmetric under permutations of the tokens); standard
attention pulls every token towards their mean, whose share of V starts at 1/m and grows by a
fixed factor per layer, so at a fixed depth its collapse is the further along the fewer tokens
there are;
(b) the stable rank tr V / ||V||_2 at T (1 = collapsed, m = orthogonal);
(c) with a causal mask, at m = ``causal_tokens``: the mean correlation of tokens a and a + d
against their distance d.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if not __package__:  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from scipy import special  # noqa: E402

import shapedsde as sd  # noqa: E402
from experiments import _common as C  # noqa: E402
from shapedsde.analysis.metrics import distance_profile, offdiag_mean  # noqa: E402

NAME = "many_tokens"
FULL: dict[str, Any] = {
    "tokens": [2, 4, 8, 16, 32, 64, 128],
    "shaped": {"kind": "ShapedAttention", "tau0": 1.0, "gamma": 0.5},
    "standard": {"kind": "StandardAttention", "gamma": 0.5},
    "T": 1.0, "dt": 2.0**-9, "width": 256, "n_samples": 64, "method": "auto",
    "nngp_depth": 8, "causal_tokens": 64,
}
STEP_CHECK_LEVEL = 0.01  # family-wise level of the step check (``step_check``)
# quick: a few small m (the streamed NNGP rule is tested in tests/test_many_tokens.py)
QUICK: dict[str, Any] = dict(FULL, tokens=[2, 4, 8], width=16, n_samples=16, dt=2.0**-5,
                             nngp_depth=2, causal_tokens=8, method=C.QUICK_METHOD)


STEP_KEYS = ("dt", "tol", "step_error", "step_z", "step_z_noise")


def spec(base: dict[str, Any], causal: bool) -> dict[str, Any]:
    """The block config, with the causal mask if asked."""
    return dict(base, causal=True) if causal else dict(base)


def final_statistics(traj: sd.Trajectories) -> dict[str, np.ndarray]:
    """At the last saved time, over the non-exploded samples: each sample's mean off-diagonal
    correlation, stable rank and correlation against token distance."""
    V = traj.valid().V[:, -1]
    rho = sd.correlation(V)
    return {"corr": offdiag_mean(rho), "rank": sd.stable_rank(V),
            "profile": distance_profile(rho)}


def mean_se(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean over samples (axis 0) and its standard error."""
    return x.mean(0), x.std(0, ddof=1) / np.sqrt(len(x))


def step_check(fine: dict[str, np.ndarray], coarse: dict[str, np.ndarray]
               ) -> tuple[float, float]:
    """Largest |difference| / SE of the plotted means (correlation, stable rank, correlation by
    token distance) between the SDE at the figure's step and at twice it, on independent paths,
    and what noise alone reaches over that many means with probability 1% (the two-sided
    Bonferroni quantile): a step error the figure could show would exceed it."""
    z = np.concatenate([np.ravel(np.abs(a - b) / np.maximum(np.hypot(sa, sb), 1e-12))
                        for (a, sa), (b, sb) in ((mean_se(fine[k]), mean_se(coarse[k]))
                                                 for k in fine)])
    return float(z.max()), float(special.ndtri(1 - STEP_CHECK_LEVEL / (2 * z.size)))


def shaped_runs(cfg: dict[str, Any], opts: C.Options, m: int, causal: bool, tag: int
                ) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, Any]]:
    """SDE and network at m tokens: their final statistics and the SDE's step record, with
    ``step_z`` and ``step_z_noise`` (``step_check`` against the SDE at twice the step)."""
    block = C.block_from_config(spec(cfg["shaped"], causal))
    V0, T, width = np.eye(m), cfg["T"], cfg["width"]
    sde, coarse = (sd.solve_sde(block, V0, T, key=opts.key(seed), n_paths=cfg["n_samples"],
                                dt=dt, n_save=2, normalize="rms", progress=opts.progress)
                   for seed, dt in ((2 * tag, cfg["dt"]), (1000 + tag, 2 * cfg["dt"])))
    net = sd.simulate_network(block, V0, width=width, depth=round(T * width),
                              n_samples=cfg["n_samples"], n_save=2, key=opts.key(2 * tag + 1),
                              normalize="rms", method=cfg["method"], progress=opts.progress)
    fine = final_statistics(sde)
    step_z, step_z_noise = step_check(fine, final_statistics(coarse))
    return ({"sde": fine, "net": final_statistics(net)},
            dict(C.sde_step(sde), method=net.config["method"], step_z=step_z,
                 step_z_noise=step_z_noise))


def simulate(cfg: dict[str, Any], opts: C.Options) -> tuple[dict[str, np.ndarray],
                                                           dict[str, Any]]:
    ms = cfg["tokens"]
    data: dict[str, np.ndarray] = {"tokens": np.array(ms)}
    results: dict[str, Any] = {"sde_steps": {}, "network_method": {}, "max_z": {}}
    stats: dict[str, list[tuple[float, float]]] = {}
    standard = C.block_from_config(cfg["standard"])
    for k, m in enumerate(C.progress(ms, opts, "tokens")):
        runs, step = shaped_runs(cfg, opts, m, causal=False, tag=k)
        results["sde_steps"][str(m)] = {key: step[key] for key in STEP_KEYS}
        results["network_method"][str(m)] = step["method"]
        z = 0.0
        for what in ("corr", "rank"):
            for src in ("sde", "net"):
                stats.setdefault(f"{src}_{what}", []).append(mean_se(runs[src][what]))
            (a, sa), (b, sb) = stats[f"sde_{what}"][-1], stats[f"net_{what}"][-1]
            z = max(z, abs(a - b) / max(np.hypot(sa, sb), 1e-12))
        results["max_z"][str(m)] = float(z)
        kernel = sd.nngp_kernel(standard, np.eye(m), cfg["nngp_depth"], normalize="rms")[-1]
        stats.setdefault("nngp_corr", []).append((float(offdiag_mean(sd.correlation(kernel))),
                                                  0.0))
        stats.setdefault("nngp_rank", []).append((float(sd.stable_rank(kernel)), 0.0))
    for name, values in stats.items():
        data[f"{name}_mean"], data[f"{name}_se"] = np.array(values).T

    m = cfg["causal_tokens"]
    runs, step = shaped_runs(cfg, opts, m, causal=True, tag=len(ms))
    results["causal_sde_step"] = {key: step[key] for key in STEP_KEYS}
    data["distance"] = np.arange(1, m)
    for src in ("sde", "net"):
        data[f"causal_{src}_mean"], data[f"causal_{src}_se"] = mean_se(runs[src]["profile"])
    kernel = sd.nngp_kernel(C.block_from_config(spec(cfg["standard"], True)), np.eye(m),
                            cfg["nngp_depth"], normalize="rms")[-1]
    data["causal_nngp"] = distance_profile(sd.correlation(kernel))

    last = -1
    results.update(
        largest_m=ms[last],
        sde_corr_largest_m=[float(data["sde_corr_mean"][last]),
                            float(data["sde_corr_se"][last])],
        net_corr_largest_m=[float(data["net_corr_mean"][last]),
                            float(data["net_corr_se"][last])],
        sde_rank_largest_m=[float(data["sde_rank_mean"][last]),
                            float(data["sde_rank_se"][last])],
        net_rank_largest_m=[float(data["net_rank_mean"][last]),
                            float(data["net_rank_se"][last])],
        nngp_corr_largest_m=float(data["nngp_corr_mean"][last]),
        nngp_rank_largest_m=float(data["nngp_rank_mean"][last]),
        causal_neighbour=[float(data["causal_sde_mean"][0]), float(data["causal_net_mean"][0]),
                          float(data["causal_nngp"][0])],
        causal_far=[float(data["causal_sde_mean"][-1]), float(data["causal_net_mean"][-1]),
                    float(data["causal_nngp"][-1])],
        max_step_error=max(s["step_error"]["rho"] for s in results["sde_steps"].values()),
        max_step_excess=max(s["step_error"]["excess"]
                            for s in results["sde_steps"].values()),
        max_step_z=max(s["step_z"] for s in [*results["sde_steps"].values(),
                                             results["causal_sde_step"]]),
        max_step_z_ratio=max(s["step_z"] / s["step_z_noise"]
                             for s in [*results["sde_steps"].values(),
                                       results["causal_sde_step"]]),
    )
    return data, results


def draw(axes: Any, data: dict[str, np.ndarray], cfg: dict[str, Any]) -> None:
    ms = data["tokens"]
    width, depth = cfg["width"], cfg["nngp_depth"]
    labels = {"sde": "shaped, SDE", "net": f"shaped, network (width {width})"}
    colours = {"sde": C.SDE_COLOUR, "net": "C0"}
    for ax, what in zip(axes[0][:2], ("corr", "rank"), strict=True):
        ax.plot(ms, data[f"sde_{what}_mean"], color=colours["sde"], label=labels["sde"])
        ax.errorbar(ms, data[f"net_{what}_mean"], yerr=2 * data[f"net_{what}_se"], fmt="o",
                    ms=3, capsize=2, color=colours["net"], label=labels["net"])
        ax.plot(ms, data[f"nngp_{what}_mean"], color="C3", ls="--", marker=".",
                label=f"standard, NNGP kernel, depth {depth}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("tokens m")
    ax_c, ax_r, ax_d = axes[0]
    ax_c.set_ylabel("mean off-diagonal correlation at T")
    ax_c.set_ylim(-0.1, 1.05)
    ax_r.plot(ms, ms, color="grey", lw=0.8, ls=":", label="m (orthogonal tokens)")
    ax_r.set_yscale("log", base=2)
    ax_r.set_ylabel("stable rank tr V / ||V|| at T")
    ax_r.legend(loc="upper left")
    d = data["distance"]
    ax_d.plot(d, data["causal_sde_mean"], color=colours["sde"], label=labels["sde"])
    ax_d.errorbar(d, data["causal_net_mean"], yerr=2 * data["causal_net_se"], fmt="o", ms=2,
                  capsize=1, color=colours["net"], label=labels["net"])
    ax_d.plot(d, data["causal_nngp"], color="C3", ls="--",
              label=f"standard, NNGP kernel, depth {depth}")
    ax_d.set_xscale("log", base=2)
    ax_d.set_xlabel("token distance d")
    ax_d.set_ylabel("mean rho[a, a + d] at T")
    ax_d.set_title(f"causal mask, m = {cfg['causal_tokens']}")
    ax_c.set_title("full attention")
    ax_r.set_title("full attention")
    top = max(0.5, float(np.max(data["causal_nngp"])))
    ax_d.set_ylim(-0.2, 2 * top)  # the upper half for the legend
    ax_d.legend(loc="upper right", title="bars: 2 SE")


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Simulate, plot and save the figure."""
    opts = C.parse_args(NAME, __doc__, argv)
    cfg = opts.config(FULL, QUICK)
    with C.quick_compilation(opts):
        data, results = simulate(cfg, opts)
    with C.style():
        fig, axes = C.subplots(1, 3, (3.6, 3.2))
        draw(axes, data, cfg)
        fig.suptitle(
            f"Many tokens: orthogonal tokens (V0 = I), RMS-normalised, at T = {cfg['T']:g}; "
            f"shaped attention (tau0 = {cfg['shaped']['tau0']:g}, gamma = "
            f"{cfg['shaped']['gamma']:g}), {cfg['n_samples']} SDE paths and networks each\n"
            f"SDE at dt = 1/{round(1 / cfg['dt'])} (at twice the step its means move by "
            f"{results['max_step_z_ratio']:.2f} x the 1% noise level); standard attention "
            f"(gamma = {cfg['standard']['gamma']:g}) at infinite width and heads")
        summary = [f"m = {m}: mean correlation SDE {a:.3f}, network {b:.3f}, NNGP {c:.3f}; "
                   f"stable rank SDE {r:.2f}, network {s:.2f}, NNGP {q:.2f}; max |SDE - net| "
                   f"/ SE {results['max_z'][str(m)]:.1f}; SDE at twice the step moves by "
                   f"{results['sde_steps'][str(m)]['step_z']:.1f} SE (noise alone at 1%: "
                   f"{results['sde_steps'][str(m)]['step_z_noise']:.1f}); "
                   f"{C.step_summary(results['sde_steps'][str(m)])}"
                   for m, a, b, c, r, s, q in zip(
                       data["tokens"], data["sde_corr_mean"], data["net_corr_mean"],
                       data["nngp_corr_mean"], data["sde_rank_mean"], data["net_rank_mean"],
                       data["nngp_rank_mean"], strict=True)]
        summary.append(f"causal, m = {cfg['causal_tokens']}: neighbour rho SDE / network / "
                       f"NNGP {np.round(results['causal_neighbour'], 3)}, farthest "
                       f"{np.round(results['causal_far'], 3)}; SDE at twice the step moves by "
                       f"{results['causal_sde_step']['step_z']:.1f} SE (noise alone at 1%: "
                       f"{results['causal_sde_step']['step_z_noise']:.1f}); "
                       f"{C.step_summary(results['causal_sde_step'])}")
        return C.finish(opts, fig, cfg, data, results, summary)


if __name__ == "__main__":
    main()
