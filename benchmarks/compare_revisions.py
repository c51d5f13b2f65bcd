"""Cost of ``solve_sde`` against an earlier revision of the package, in one process, paired.

The revision's package is extracted with ``git archive`` into a temporary folder and imported
as ``shapedsde_rev`` beside the working tree's ``shapedsde``, so both run on the same machine
at the same time: every round times each once, in alternating order, and the ratio reported is
the median over rounds of (this tree's time) / (the revision's time). "first" is the first call
of a setting (tracing and compilation included), each in a fresh process (``--child``), the
two revisions' processes alternating.

    .venv/bin/python benchmarks/compare_revisions.py --rev 796c4a3            # all settings
    .venv/bin/python benchmarks/compare_revisions.py --rev 796c4a3 --quick    # fewer rounds

Results are printed and written to benchmarks/results/compare_revisions.json.
"""

from __future__ import annotations

import argparse
import importlib
import io
import json
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def import_revision(rev: str, folder: Path):
    """The package at git revision ``rev`` as the module ``shapedsde_rev``."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev, "shapedsde"],
                             check=True, capture_output=True).stdout
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(folder, filter="data")
    package = folder / "shapedsde"
    for path in package.rglob("*.py"):
        text = path.read_text()
        text = text.replace("from shapedsde", "from shapedsde_rev").replace(
            "import shapedsde", "import shapedsde_rev")
        path.write_text(text)
    package.rename(folder / "shapedsde_rev")
    sys.path.insert(0, str(folder))
    return importlib.import_module("shapedsde_rev")


SETTINGS = {
    # fixed steps: the throughput benchmark's settings (raw attention, dt = 1/256, T = 1)
    "fixed m=4 raw": dict(m=4, tau0=1.0, gamma=0.5, dt=2.0**-8, paths=1000),
    "fixed m=8 raw": dict(m=8, tau0=1.0, gamma=0.5, dt=2.0**-8, paths=1000),
    "fixed m=8 raw 4000": dict(m=8, tau0=1.0, gamma=0.5, dt=1 / 500, paths=4000, rho0=0.3),
    "fixed m=16 raw": dict(m=16, tau0=1.0, gamma=0.5, dt=2.0**-8, paths=1000),
    "fixed m=8 rms": dict(m=8, tau0=1.0, gamma=0.5, dt=2.0**-8, paths=1000, normalize="rms"),
    # the default call (dt=None): cool and hot
    "cool default m=4": dict(m=4, tau0=1.0, gamma=0.5, paths=1000),
    "cool default m=8": dict(m=8, tau0=1.0, gamma=0.5, paths=1000),
    "hot default m=2 rms": dict(m=2, tau0=0.3, gamma=0.9, paths=1000, normalize="rms"),
    "hot default m=3 raw": dict(m=3, tau0=0.3, gamma=0.9, paths=1000, T=0.5),
}


def caller(sd, setting: dict) -> Callable[[int], object]:
    import jax

    m = setting["m"]
    if "rho0" in setting:  # V0 = (1 - rho) I + rho 1 1^T
        V0 = (1 - setting["rho0"]) * np.eye(m) + setting["rho0"]
    else:
        V0 = sd.default_covariance(m)
    block = sd.ShapedAttention(tau0=setting["tau0"], gamma=setting["gamma"])

    def call(seed: int) -> object:
        return sd.solve_sde(block, V0, setting.get("T", 1.0), key=jax.random.key(seed),
                            dt=setting.get("dt"), n_paths=setting["paths"], n_save=2,
                            normalize=setting.get("normalize"), progress=False).V

    return call


def first_call(rev: str, which: str, name: str) -> float:
    """Seconds of the first call of setting ``name`` in a fresh process ("new": this tree)."""
    out = subprocess.run([sys.executable, __file__, "--rev", rev, "--child", which, name],
                         check=True, capture_output=True, text=True).stdout
    return float(out.strip().splitlines()[-1])


def measure(new, old, setting: dict, rounds: int) -> dict:
    calls = {"new": caller(new, setting), "old": caller(old, setting)}
    for name in ("old", "new"):
        calls[name](0)
    times = {name: [] for name in calls}
    for r in range(rounds):
        for name in (("new", "old") if r % 2 else ("old", "new")):
            t0 = time.perf_counter()
            calls[name](r + 1)
            times[name].append(time.perf_counter() - t0)
    ratios = np.array(times["new"]) / np.array(times["old"])
    return {"best_old_s": min(times["old"]), "best_new_s": min(times["new"]),
            "ratio_median": float(np.median(ratios)), "ratio_best": min(times["new"])
            / min(times["old"])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", required=True, help="git revision to compare against")
    parser.add_argument("--quick", action="store_true", help="3 rounds instead of 7")
    parser.add_argument("--only", action="append", help="a setting (repeatable)")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results"
                                             / "compare_revisions.json"))
    parser.add_argument("--child", nargs=2, metavar=("WHICH", "SETTING"),
                        help=argparse.SUPPRESS)  # time one first call ("old" or "new")
    args = parser.parse_args()
    import shapedsde as new

    with tempfile.TemporaryDirectory() as folder:
        old = import_revision(args.rev, Path(folder))
        if args.child:
            which, name = args.child
            call = caller(new if which == "new" else old, SETTINGS[name])
            t0 = time.perf_counter()
            call(0)
            print(time.perf_counter() - t0)
            return
        rows = {}
        print(f"{'setting':<22} {'first old':>9} {'first new':>9} {'best old':>9} "
              f"{'best new':>9} {'new/old med':>11} {'best':>6}")
        for name, setting in SETTINGS.items():
            if args.only and name not in args.only:
                continue
            r = measure(new, old, setting, 3 if args.quick else 7)
            order = ("old", "new") if len(rows) % 2 == 0 else ("new", "old")
            r.update({f"first_{which}_s": first_call(args.rev, which, name) for which in order})
            rows[name] = r
            print(f"{name:<22} {r['first_old_s']:>9.2f} {r['first_new_s']:>9.2f} "
                  f"{r['best_old_s']:>9.3f} {r['best_new_s']:>9.3f} {r['ratio_median']:>11.3f} "
                  f"{r['ratio_best']:>6.3f}", flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"rev": args.rev, "rows": rows}, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
