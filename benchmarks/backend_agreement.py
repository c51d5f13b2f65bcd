"""Do ``solve_sde``'s paths for a key depend on the backend (CPU or GPU) and its matmul precision?

Solves shaped attention (gamma 0.5, tau0 1, raw) from V0_ab = 0.8^|a-b| to T = 1 at dt = 1/256
for 256 paths at several m, on whatever backend JAX starts with, at JAX's default matmul
precision and at "highest", and writes the final V of every path to ``--out`` (npz). Run it once
per backend, then compare the files:

    JAX_PLATFORMS=cpu python benchmarks/backend_agreement.py --out cpu.npz
    python benchmarks/backend_agreement.py --out gpu.npz
    python benchmarks/backend_agreement.py --compare cpu.npz gpu.npz

The comparison prints, per m and precision, the largest |V_gpu - V_cpu| over paths and entries,
relative to the largest |V_cpu|, and the same for the mean over paths of each entry against its
Monte Carlo standard error. On CPU both precisions are float32 products; on a GPU JAX's default
precision for float32 matrix products is TF32 (10-bit mantissa). Run once on an H200 before the
package traced its products at full precision (``shapedsde/_precision.py``): the table is in
``benchmarks/README.md`` ("On a GPU") and ``results/backend_agreement_gpu.txt``; with it, the two
precisions give the same paths.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

MS = (4, 8, 32)
N_PATHS, DT = 256, 2.0**-8


def solve_all(out: str) -> None:
    import jax

    import shapedsde as sd

    arrays = {}
    print(f"backend {jax.default_backend()}, devices {jax.devices()}", flush=True)
    for m in MS:
        V0 = np.asarray(sd.default_covariance(m))
        block = sd.ShapedAttention(tau0=1.0, gamma=0.5)
        for precision in ("default", "highest"):
            with jax.default_matmul_precision(precision):
                traj = sd.solve_sde(block, V0, 1.0, key=jax.random.PRNGKey(0), dt=DT,
                                    n_paths=N_PATHS, n_save=2, progress=False)
            arrays[f"m{m}_{precision}"] = traj.V[:, -1]
            print(f"m = {m:>3} {precision:>7}: solver {traj.config['solver']}, finite paths "
                  f"{np.isfinite(traj.V[:, -1]).all(axis=(1, 2)).mean():.3f}", flush=True)
    np.savez(out, backend=jax.default_backend(), **arrays)


def compare(reference: str, other: str) -> None:
    a, b = np.load(reference), np.load(other)
    print(f"{a['backend']} against {b['backend']}")
    print(f"{'m':>3} {'precision':>9} {'max |dV| / max |V|':>19} {'max |d mean| / SE':>18}")
    for name in sorted((k for k in a.files if k != "backend"),
                       key=lambda k: (int(k[1:].split("_")[0]), k)):
        x, y = a[name], b[name]
        both = np.isfinite(x).all(axis=(1, 2)) & np.isfinite(y).all(axis=(1, 2))
        x, y = x[both], y[both]
        rel = np.abs(y - x).max() / np.abs(x).max()
        se = x.std(axis=0, ddof=1) / np.sqrt(len(x))
        z = np.max(np.abs(y.mean(axis=0) - x.mean(axis=0)) / se)
        m, precision = name[1:].split("_")
        print(f"{m:>3} {precision:>9} {rel:>19.2e} {z:>18.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="npz to write this backend's final V to")
    parser.add_argument("--compare", nargs=2, metavar=("REFERENCE", "OTHER"),
                        help="compare two files written by --out")
    args = parser.parse_args()
    if args.compare:
        compare(*args.compare)
    elif args.out:
        solve_all(args.out)
    else:
        parser.print_usage()
        sys.exit(2)


if __name__ == "__main__":
    main()
