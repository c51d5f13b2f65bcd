r"""Figure 9: the two limits, infinite width at fixed depth (NNGP) beside depth ~ width (SDE).

(a, b) Shaped attention (tau0 = 0.3, gamma = 0.9, "rms"), m = 3 tokens with V0_ab = 0.5^|a-b|,
exact reduced simulator: rho_12 at the output of networks of width n = 32 ... 4096, at a fixed
depth d = 16 and at a depth proportional to the width, d = T n. At fixed depth the shaped
block's infinite-width map is the identity (SPEC section 8), so the law collapses onto the NNGP
value rho_12(0) with a spread falling like n^(-1/2) (fitted where d / n <= 1/16); at d = T n
the spread tends to the SDE's at time T (dt = 2^-10).
(c, d) Standard attention (gamma = 0.8, "rms") at infinite width, depth 2: the random
n = infinity recursion with H heads (``simulate_infinite_width``); its spread shrinks like
H^(-1/2) onto the deterministic NNGP kernel (H = infinity, ``nngp_kernel``). A single head's
law is not Gaussian (d).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if not __package__:  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from scipy import stats  # noqa: E402

import shapedsde as sd  # noqa: E402
from experiments import _common as C  # noqa: E402
from experiments.heads import sd_and_se  # noqa: E402
from experiments.sde_vs_network_density import HOT  # noqa: E402

NAME = "limits"
FULL: dict[str, Any] = {
    "shaped": HOT, "standard": {"kind": "StandardAttention", "gamma": 0.8},
    "tokens": 3, "rho0": 0.5, "pair": [0, 1], "normalize": "rms",
    "widths": [32, 64, 128, 256, 512, 1024, 2048, 4096], "fixed_depth": 16, "T": 0.25,
    "fit_from": 256,
    "n_samples": 4000, "sde_paths": 10000, "dt": 2.0**-10, "method": "auto",
    "heads": [1, 2, 4, 8, 16, 32, 64], "standard_depth": 2, "n_infinite": 10000, "bins": 60,
}
QUICK: dict[str, Any] = dict(FULL, widths=[16, 32, 64], fixed_depth=4, fit_from=16,
                             n_samples=256,
                             sde_paths=512, method=C.QUICK_METHOD, heads=[1, 4],
                             n_infinite=512)
LEVELS = (0.05, 0.5, 0.95)


def network_rho(cfg: dict[str, Any], opts: C.Options, width: int, depth: int,
                tag: int) -> np.ndarray:
    """rho at the output of ``n_samples`` shaped networks of this width and depth."""
    net = sd.simulate_network(C.block_from_config(cfg["shaped"]),
                              C.initial_covariance(cfg["tokens"], cfg["rho0"]), width=width,
                              depth=depth, n_samples=cfg["n_samples"], n_save=2,
                              key=opts.key(tag), normalize=C.normalize_arg(cfg["normalize"]),
                              method=cfg["method"], progress=opts.progress)
    return C.rho_at(net, cfg["pair"])


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Shaped networks against width at two depths, the SDE, and standard attention at
    infinite width against the number of heads; plot all four panels."""
    opts = C.parse_args(NAME, __doc__, argv)
    cfg = opts.config(FULL, QUICK)
    V0 = C.initial_covariance(cfg["tokens"], cfg["rho0"])
    normalize = C.normalize_arg(cfg["normalize"])
    a, b = cfg["pair"]
    widths = cfg["widths"]
    data: dict[str, np.ndarray] = {"widths": np.array(widths)}
    results: dict[str, Any] = {"fixed": {}, "proportional": {}, "heads": {}}

    # (a, b) shaped attention: fixed depth and d = T n, against the SDE at T
    for k, width in enumerate(C.progress(widths, opts, "widths")):
        depths = {"fixed": cfg["fixed_depth"], "proportional": max(1, round(cfg["T"] * width))}
        for j, (regime, depth) in enumerate(depths.items()):
            rho = network_rho(cfg, opts, width, depth, 2 * k + j)
            data[f"{regime}_{width}"] = rho
            s, se = sd_and_se(rho)
            results[regime][str(width)] = {"depth": depth, "sd": s, "sd_se": se,
                                           "median": float(np.median(rho))}
    sde = sd.solve_sde(C.block_from_config(cfg["shaped"]), V0, cfg["T"], key=opts.key(100),
                       n_paths=cfg["sde_paths"], dt=cfg["dt"], n_save=2, normalize=normalize,
                       progress=opts.progress)
    data["sde"] = C.rho_at(sde, cfg["pair"])
    sde_sd, sde_se = sd_and_se(data["sde"])
    results["sde"] = {"T": cfg["T"], "dt": cfg["dt"], "sd": sde_sd, "sd_se": sde_se,
                      "median": float(np.median(data["sde"]))}
    fixed_sd = [results["fixed"][str(w)]["sd"] for w in widths]
    fitted = [w for w in widths if w >= cfg["fit_from"]]  # where depth / width <= 1/16
    results["fixed_sd_slope"] = C.loglog_slope(fitted, fixed_sd[-len(fitted):])[0]
    results["nngp_shaped"] = float(sd.nngp_kernel(C.block_from_config(cfg["shaped"]), V0,
                                                  cfg["fixed_depth"], normalize)[-1, a, b])

    # (c, d) standard attention at infinite width against the number of heads
    standard = cfg["standard"]
    depth_s = cfg["standard_depth"]
    nngp = sd.nngp_kernel(C.block_from_config(standard), V0, depth_s, normalize)
    results["nngp_standard"] = float(sd.correlation(nngp[-1])[a, b])
    heads = cfg["heads"]
    for k, H in enumerate(C.progress(heads, opts, "heads")):
        traj = sd.simulate_infinite_width(
            C.block_from_config(dict(standard, heads=H)), V0, depth=depth_s,
            n_samples=cfg["n_infinite"], n_save=2, key=opts.key(200 + k), normalize=normalize,
            progress=opts.progress)
        rho = C.rho_at(traj, cfg["pair"])
        data[f"heads_{H}"] = rho
        s, se = sd_and_se(rho)
        results["heads"][str(H)] = {"sd": s, "sd_se": se, "mean": float(rho.mean()),
                                    "mean_minus_nngp": float(rho.mean()) - results["nngp_standard"],
                                    "quantiles": C.quantile_bands(rho, LEVELS).tolist()}
    results["heads_sd_slope"] = C.loglog_slope(heads, [results["heads"][str(H)]["sd"]
                                                       for H in heads])[0]
    single = data[f"heads_{heads[0]}"]
    fit = stats.norm(single.mean(), single.std())
    results["single_head"] = {"skewness": float(stats.skew(single)),
                              "excess_kurtosis": float(stats.kurtosis(single)),
                              "ks_to_fitted_gaussian": float(stats.kstest(single, fit.cdf)
                                                             .statistic)}

    rho_name = f"rho_{a + 1}{b + 1}"
    with C.style():
        fig, axes = C.subplots(2, 2, (4.6, 3.4))
        (ax_sd, ax_med), (ax_h, ax_hist) = axes
        colours = {"fixed": "C0", "proportional": "C1"}
        labels = {"fixed": f"fixed depth d = {cfg['fixed_depth']}",
                  "proportional": f"depth d = T n, T = {cfg['T']:g}"}
        for regime, colour in colours.items():
            sds = [results[regime][str(w)]["sd"] for w in widths]
            ses = [results[regime][str(w)]["sd_se"] for w in widths]
            ax_sd.errorbar(widths, sds, yerr=ses, fmt="o-", color=colour, ms=4, capsize=2,
                           label=labels[regime])
            ax_med.plot(widths, [results[regime][str(w)]["median"] for w in widths], "o-",
                        color=colour, ms=4, label=labels[regime])
        w = np.array(widths, float)
        guide = fixed_sd[-1] * np.sqrt(w[-1] / w)
        ax_sd.plot(w, guide, color="grey", ls=":", lw=1, label="n^(-1/2) through the last point")
        ax_sd.axhline(sde_sd, color=C.SDE_COLOUR, ls="--", lw=1,
                      label=f"SDE at T = {cfg['T']:g}: {sde_sd:.3f}")
        ax_sd.set_xscale("log", base=2)
        ax_sd.set_yscale("log")
        ax_sd.set_xlabel("width n")
        ax_sd.set_ylabel(f"standard deviation of {rho_name}")
        ax_sd.set_title(f"(a) spread of {rho_name} at the output\n(fixed depth: slope "
                        f"{results['fixed_sd_slope']:.2f} for n >= {cfg['fit_from']})")
        ax_sd.legend(loc="lower left")
        ax_med.axhline(results["nngp_shaped"], color="C0", ls=":", lw=1,
                       label=f"NNGP (identity): {results['nngp_shaped']:.3f}")
        ax_med.axhline(results["sde"]["median"], color=C.SDE_COLOUR, ls="--", lw=1,
                       label=f"SDE at T = {cfg['T']:g}: {results['sde']['median']:.3f}")
        ax_med.set_xscale("log", base=2)
        ax_med.set_xlabel("width n")
        ax_med.set_ylabel(f"median of {rho_name}")
        ax_med.set_title(f"(b) median of {rho_name} at the output")
        ax_med.legend(loc="best")

        q = np.array([results["heads"][str(H)]["quantiles"] for H in heads]).T
        ax_h.fill_between(heads, q[0], q[2], color="C2", alpha=0.2, linewidth=0,
                          label="5-95% band, n = infinity")
        ax_h.plot(heads, [results["heads"][str(H)]["mean"] for H in heads], "o-", color="C2",
                  ms=4, label="mean, n = infinity")
        ax_h.axhline(results["nngp_standard"], color=C.SDE_COLOUR, ls="--", lw=1,
                     label=f"NNGP kernel (H = infinity): {results['nngp_standard']:.3f}")
        ax_h.set_xscale("log", base=2)
        ax_h.set_xticks(heads, [str(H) for H in heads])
        ax_h.set_xlabel("heads H")
        ax_h.set_ylabel(f"{rho_name} at depth {depth_s}")
        ax_h.set_title(f"(c) standard attention, n = infinity: sd ~ H^"
                       f"{results['heads_sd_slope']:.2f}")
        ax_h.legend(loc="lower right")
        bins = np.linspace(np.quantile(single, 0.002), single.max(), cfg["bins"] + 1)
        ax_hist.hist(single, bins=bins, density=True, color="C2", alpha=0.5,
                     label=f"H = {heads[0]}: skewness {results['single_head']['skewness']:.2f}")
        x = np.linspace(bins[0], bins[-1], 400)
        ax_hist.plot(x, fit.pdf(x), color="C2", lw=1.2,
                     label="Gaussian of the same mean and sd")
        ax_hist.hist(data[f"heads_{heads[-1]}"], bins=bins, density=True, histtype="step",
                     color="C4", lw=1.4, label=f"H = {heads[-1]}")
        ax_hist.axvline(results["nngp_standard"], color=C.SDE_COLOUR, ls="--", lw=1,
                        label="NNGP kernel")
        ax_hist.set_xlabel(f"{rho_name} at depth {depth_s}")
        ax_hist.set_ylabel("density")
        ax_hist.set_title(f"(d) law of {rho_name}, n = infinity: one head is not Gaussian",
                          fontsize=9)
        ax_hist.legend(loc="upper left")
        fig.suptitle(
            f"Two limits: {C.v0_text(cfg['tokens'], cfg['rho0'])}, normalize="
            f"{cfg['normalize']}\ntop: {C.describe(cfg['shaped'])}, {cfg['n_samples']} "
            f"networks per point, SDE {cfg['sde_paths']} paths, dt = 1/{round(1 / cfg['dt'])}"
            f"\nbottom: {C.describe(standard)} at infinite width, {cfg['n_infinite']} samples "
            "per H")
        summary = [
            f"shaped, fixed depth {cfg['fixed_depth']}: sd of {rho_name} "
            + ", ".join(f"{results['fixed'][str(w)]['sd']:.4f}" for w in widths)
            + f" at n = {widths}; slope {results['fixed_sd_slope']:.3f}",
            "shaped, d = T n: sd " + ", ".join(f"{results['proportional'][str(w)]['sd']:.4f}"
                                               for w in widths)
            + f"; SDE {sde_sd:.4f} +- {sde_se:.4f}, median {results['sde']['median']:.3f}",
            f"standard, n = inf, depth {depth_s}: sd " + ", ".join(
                f"{results['heads'][str(H)]['sd']:.4f}" for H in heads)
            + f" at H = {heads}; slope {results['heads_sd_slope']:.3f}; NNGP "
            f"{results['nngp_standard']:.4f}",
            f"single head: skewness {results['single_head']['skewness']:.2f}, excess kurtosis "
            f"{results['single_head']['excess_kurtosis']:.2f}, KS to fitted Gaussian "
            f"{results['single_head']['ks_to_fitted_gaussian']:.3f}",
        ]
        return C.finish(opts, fig, cfg, data, results, summary)


if __name__ == "__main__":
    main()
