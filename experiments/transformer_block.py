r"""Figure 4: figures 2 and 3 for the shaped Transformer block (attention, then shaped MLP).

One unit of depth is a shaped attention sub-block followed by a shaped-ReLU MLP sub-block, and
the SDE coefficients add: b = b_att + b_mlp, Sigma = Sigma_att + Sigma_mlp. Top row: the law
of rho_12 at T = 1 for networks of widths 32, 128, 512 against the SDE (``normalize="rms"``,
the code and setting of ``sde_vs_network_density``: two orthogonal tokens, attention
tau0 = 0.3, gamma = 0.9); bottom row: median and 5-95% bands of rho_12 and V_11 over t at
width 256, with and without normalisation (the code and setting of ``sde_vs_network_bands``:
m = 3 tokens, V0_ab = 0.5^|a-b|, attention tau0 = 1, gamma = 0.5). In both rows every
attention sub-block is followed by the same shaped MLP (gamma = 0.5, c_+ = 0, c_- = -1).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if not __package__:  # run as a file: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import matplotlib.pyplot as plt  # noqa: E402

from experiments import _common as C  # noqa: E402
from experiments import sde_vs_network_bands as bands  # noqa: E402
from experiments import sde_vs_network_density as density  # noqa: E402

NAME = "transformer_block"
MLP: dict[str, Any] = {"kind": "ShapedMLP", "gamma": 0.5, "c_plus": 0.0, "c_minus": -1.0}
# the attention sub-blocks of figures 2 (hot) and 3 (mild), each followed by the same MLP
HOT_BLOCK: dict[str, Any] = {"kind": "ShapedTransformerBlock", "attention": density.HOT,
                             "mlp": MLP}
MILD_BLOCK: dict[str, Any] = {"kind": "ShapedTransformerBlock",
                              "attention": bands.FULL["block"], "mlp": MLP}
# SDE steps: those of figures 2 (the step control's, resolved below tol) and 3
FULL: dict[str, Any] = {
    "density": dict(density.FULL, block=HOT_BLOCK, n_samples=5000),
    "bands": dict(bands.FULL, block=MILD_BLOCK),
}
# quick (a smoke test of the code, seconds): one width, only "rms" in the bands part (the
# un-normalised path is exercised by sde_vs_network_bands' quick run), and both parts on the
# model and shapes of the density part, so that JAX compiles one SDE and one network
QUICK: dict[str, Any] = {
    "density": dict(density.QUICK, block=HOT_BLOCK, widths=[32], n_samples=256, n_save=5),
    "bands": dict(bands.QUICK, block=HOT_BLOCK, tokens=density.FULL["tokens"],
                  rho0=density.FULL["rho0"], normalizations=["rms"]),
}
BANDS_TAG = 100  # keys of the bands part: opts.key(100 + k), independent of the density part


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Simulate both parts, plot them in two rows and save figure 4."""
    opts = C.parse_args(NAME, __doc__, argv)
    cfg = opts.config(FULL, QUICK)
    d_data, d_results = density.simulate(cfg["density"], opts, tag=0)
    b_data, b_results = bands.simulate(cfg["bands"], opts, tag=BANDS_TAG)
    data = {f"density_{k}": v for k, v in d_data.items()}
    data.update({f"bands_{k}": v for k, v in b_data.items()})
    results = {"density": d_results, "bands": b_results}
    n_bands = len(bands.panels(cfg["bands"]))
    with C.style():
        fig = plt.figure(figsize=(4.4 * max(n_bands, 3), 7.6), layout="constrained")
        top, bottom = fig.subfigures(2, 1)
        density.draw(top.subplots(1, 2, squeeze=False)[0], d_data, cfg["density"])
        fig.suptitle("Shaped Transformer block (attention sub-block, then shaped MLP "
                     "sub-block) in the settings of figures 2 (a) and 3 (b)")
        top.suptitle(f"(a) {density.setting(cfg['density'])}\n{density.caption(cfg['density'])}")
        bands.draw(bottom.subplots(1, n_bands, squeeze=False)[0], b_data, cfg["bands"])
        bottom.suptitle(f"(b) {bands.setting(cfg['bands'])}\n{bands.caption(cfg['bands'])}")
        summary = ["density: " + line for line in density.summary(d_results)]
        summary += ["bands: " + line for line in bands.summary(b_results, cfg["bands"])]
        return C.finish(opts, fig, cfg, data, results, summary)


if __name__ == "__main__":
    main()
