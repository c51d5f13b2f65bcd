"""The package's own experiments (not reproductions of a paper's settings): one script per
figure, each ``main(argv) -> dict`` with ``--quick``.

Run one with ``python -m experiments.NAME [--quick] [--outdir DIR]`` from the repository root,
or all of them with ``shapedsde figures`` (``make figures``). Every script writes NAME.png,
NAME.pdf, NAME.npz (the plotted data, with the configuration as JSON inside) and NAME.json
(configuration and key numbers) to ``figures/`` or ``--outdir``.
"""

import shapedsde  # noqa: F401  (first, before numpy: it limits OpenBLAS to one thread)

FIGURES = (
    "rank_collapse",
    "sde_vs_network_density",
    "sde_vs_network_bands",
    "transformer_block",
    "convergence",
    "hyperparameters",
    "blow_up",
    "heads",
    "limits",
    "masks_and_positions",
    "many_tokens",
)
"""The figure scripts in gallery order (``experiments/<name>.py``)."""
