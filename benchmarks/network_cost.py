"""Cost of the finite network simulator: full (real n x n weights) against reduced (m x m).

Measures seconds per sample-layer of ``simulate_network`` with ``ShapedAttention`` and m = 8
tokens for method "full" and "reduced" at several widths, excluding compilation: each timed call
is preceded by a warm-up call with identical array shapes (same ``n_samples`` and chunk size,
depth 1; the number of layers is a traced argument, so the warm-up compiles exactly what the
timed call runs) and the timed call uses a different key. ``simulate_network`` returns numpy
arrays, so the timed call includes all device work.

The full network costs O(m n^2) per layer (three n x n Gaussian weight matrices), so it is only
run while its total time (compilation included) stays within ``--full-budget`` seconds; larger
widths are reported as skipped.

    .venv/bin/python benchmarks/network_cost.py            # full run (a few minutes)
    .venv/bin/python benchmarks/network_cost.py --quick    # smoke test, < 30 s

Results are printed as a table and written to benchmarks/results/network_cost.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import jax
import numpy as np

import shapedsde as sd
from shapedsde.network.simulate import default_chunk_size

WIDTHS = (64, 128, 256, 512, 1024, 2048, 4096)
QUICK_WIDTHS = (64, 256)
M = 8


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine() -> dict:
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu_model(),
        "jax": jax.__version__,
        "jax_backend": jax.default_backend(),
        "devices": [str(d) for d in jax.devices()],
        "python": platform.python_version(),
        "load_average_at_start": list(os.getloadavg()),
    }


def run(block: sd.ShapedAttention, V0: np.ndarray, width: int, method: str, n_samples: int,
        depth: int, chunk_size: int | None, seed: int) -> float:
    """Wall time of one simulate_network call (numpy output: all device work is included)."""
    t0 = time.perf_counter()
    traj = sd.simulate_network(block, V0, width=width, depth=depth, n_samples=n_samples,
                               key=jax.random.key(seed), n_save=2, method=method,
                               chunk_size=chunk_size, progress=False)
    elapsed = time.perf_counter() - t0
    assert traj.config["method"] == method and traj.V.shape == (n_samples, 2, M, M)
    return elapsed


def measure(block: sd.ShapedAttention, V0: np.ndarray, width: int, method: str,
            n_samples: int, depth: int, chunk_size: int, repeats: int,
            repeat_budget_s: float) -> dict:
    """Warm up on one chunk and one layer (this compiles exactly what the timed calls run: same
    chunk shape, and the number of layers is a traced argument), then time n_samples x depth
    with other keys, up to ``repeats`` times while the timed total stays within
    ``repeat_budget_s``. The fastest repeat is reported (least disturbed by other load)."""
    t0 = time.perf_counter()
    warmup = run(block, V0, width, method, chunk_size, 1, chunk_size, seed=0)
    timed: list[float] = []
    while len(timed) < repeats and (not timed or sum(timed) + timed[-1] <= repeat_budget_s):
        timed.append(run(block, V0, width, method, n_samples, depth, chunk_size,
                         seed=1 + len(timed)))
    return {"width": width, "method": method, "n_samples": n_samples, "depth": depth,
            "chunk_size": chunk_size, "warmup_s": warmup, "timed_s": timed,
            "total_s": time.perf_counter() - t0,
            "s_per_sample_layer": min(timed) / (n_samples * depth),
            "s_per_sample_layer_median": float(np.median(timed)) / (n_samples * depth)}


def full_plan(width: int, cost_guess: float, target_s: float,
              max_chunk: int) -> tuple[int, int, int]:
    """(n_samples, depth, chunk_size) of the full network: chunks of at most the default size
    (about 256 MB of weights) and max_chunk samples, then as many layers (up to 64) and chunks
    (up to 8) as fit in target_s at the predicted cost per sample-layer."""
    chunk = min(default_chunk_size(width), max_chunk)
    sample_layers = target_s / cost_guess
    depth = int(np.clip(round(sample_layers / chunk), 1, 64))
    n_chunks = int(np.clip(round(sample_layers / (chunk * depth)), 1, 8))
    return chunk * n_chunks, depth, chunk


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"widths {QUICK_WIDTHS}, fewer samples and layers (< 30 s)")
    parser.add_argument("--widths", type=int, nargs="+", default=None)
    parser.add_argument("--full-budget", type=float, default=None,
                        help="seconds for the full network, compilation included (default 60; "
                             "12 with --quick); widths that would exceed it are skipped")
    parser.add_argument("--out", type=Path,
                        default=Path(__file__).resolve().parent / "results" / "network_cost.json")
    args = parser.parse_args(argv)

    widths = tuple(args.widths or (QUICK_WIDTHS if args.quick else WIDTHS))
    full_budget = args.full_budget if args.full_budget is not None else (
        12.0 if args.quick else 60.0)
    target_s = 0.3 if args.quick else 1.0  # seconds per timed full call
    repeats = 2 if args.quick else 3
    red_samples, red_depth = (512, 16) if args.quick else (2048, 32)
    full_chunk = 16 if args.quick else 32

    block, V0 = sd.ShapedAttention(), sd.default_covariance(M)
    info = machine()
    print(f"machine: {info['nproc']} CPUs, {info['cpu']}, jax {info['jax']} "
          f"({info['jax_backend']}), load average {info['load_average_at_start'][0]:.2f}")
    print(f"ShapedAttention(gamma=0.5, tau0=1), m = {M}, float32, normalize=None\n", flush=True)

    rows: dict[int, dict] = {}
    # initial guess for the full network: about 1e-4 s per sample-layer at width 64 (three
    # 64 x 64 Gaussian matrices); afterwards extrapolated as n^2 from the last measured width
    full_spent, cost_guess, last_width, skipping = 0.0, 1e-4, 64, False
    for width in widths:
        row = rows.setdefault(width, {"width": width})
        guess = cost_guess * (width / last_width) ** 2
        n_samples, depth, chunk = full_plan(width, guess, target_s, full_chunk)
        # warm-up (one chunk, one layer), timed runs (repeated while within repeats x
        # target_s) and about 5 s of compilation
        one = guess * n_samples * depth
        predicted = guess * chunk + max(one, min(repeats * one, repeats * target_s)) + 5.0
        if skipping or full_spent + predicted > full_budget:
            skipping = True
            row["full"] = None
        else:
            res = measure(block, V0, width, "full", n_samples, depth, chunk, repeats,
                          repeats * target_s)
            full_spent += res["total_s"]
            cost_guess, last_width = res["s_per_sample_layer"], width
            row["full"] = res
        # reduced: the library's default chunk of 512 samples
        row["reduced"] = measure(block, V0, width, "reduced", red_samples, red_depth, 512,
                                 repeats, np.inf)
        full = row["full"]
        print(f"width {width:5d}: full "
              + (f"{full['s_per_sample_layer']:.3e} s ({full['n_samples']} x {full['depth']})"
                 if full else "skipped")
              + f", reduced {row['reduced']['s_per_sample_layer']:.3e} s", flush=True)

    table = [print_header()]
    for width in widths:
        row = rows[width]
        red = row["reduced"]["s_per_sample_layer"]
        full = row["full"]["s_per_sample_layer"] if row["full"] else None
        row["ratio_full_over_reduced"] = full / red if full else None
        table.append(f"{width:>6}  {f'{full:.3e}' if full else 'skipped':>12}  {red:>12.3e}  "
                     + (f"{full / red:>10.1f}" if full else f"{'-':>10}"))
    first, last = rows[widths[0]], rows[widths[-1]]
    drift = last["reduced"]["s_per_sample_layer"] / first["reduced"]["s_per_sample_layer"]
    table.append(f"reduced({widths[-1]}) / reduced({widths[0]}) = {drift:.2f}")
    print("\nseconds per (sample x layer), compilation excluded")
    print("\n".join(table))

    result = {"machine": info, "block": block.config(), "m": M, "quick": args.quick,
              "full_budget_s": full_budget, "full_spent_s": full_spent,
              "rows": [rows[w] for w in widths],
              "reduced_last_over_first": drift, "load_average_at_end": list(os.getloadavg())}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(f"\nwritten to {args.out}")
    return result


def print_header() -> str:
    return f"{'width':>6}  {'full':>12}  {'reduced':>12}  {'full/red':>10}"


if __name__ == "__main__":
    main()
