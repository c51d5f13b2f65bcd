"""Helpers shared by the figure scripts: options, blocks from JSON, statistics, style, saving.

Every script follows the same pattern::

    opts = parse_args(NAME, __doc__, argv)          # --quick, --outdir, --seed, --no-progress
    cfg = opts.config(FULL, QUICK)                  # plain JSON-serialisable dict
    ... simulate with keys from opts.key(tag) ...
    with style():
        fig = ...
        finish(opts, fig, cfg, data, results)       # PNG + PDF + NPZ + JSON, prints a summary

Randomness: ``opts.key(tag)`` is ``fold_in(key(seed), tag)``, so every simulation of a figure
gets its own independent stream and a figure is reproducible from its seed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jax
import matplotlib
import numpy as np
from jax import Array
from scipy import stats
from tqdm.auto import tqdm

import shapedsde as sd
from shapedsde.compile_cache import cache_from_environment

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after selecting the non-interactive backend)

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUTDIR = REPO_ROOT / "figures"

STYLE: dict[str, Any] = {
    "font.size": 9,
    "axes.titlesize": 10,
    "axes.labelsize": 9,
    "legend.fontsize": 8,
    "legend.title_fontsize": 8,
    "xtick.labelsize": 8,
    "ytick.labelsize": 8,
    "figure.titlesize": 10,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "lines.linewidth": 1.6,
    "savefig.dpi": 150,
    "pdf.fonttype": 42,
}
"""One matplotlib style for every figure (applied by :func:`style`)."""

SDE_COLOUR = "black"

QUICK_METHOD = "full"
"""Network simulator of the --quick runs. Full runs use "auto" (the exact reduced simulator,
whose cost does not grow with the width); at the tiny quick widths the full simulator (same
law, real weight matrices) is as cheap to run and compiles about twice as fast (2 s instead of
4-7 s per block and width on 2 CPU cores), and compilation is most of a quick run."""


# --- options ---------------------------------------------------------------------------------

@dataclass
class Options:
    """Parsed command-line options of a figure script."""

    name: str
    quick: bool
    outdir: Path
    seed: int
    progress: bool
    started: float = field(default_factory=time.perf_counter)

    def config(self, full: dict[str, Any], quick: dict[str, Any]) -> dict[str, Any]:
        """The configuration of this run (a deep copy through JSON), with seed and mode."""
        chosen = quick if self.quick else full
        cfg = json.loads(json.dumps(chosen))
        cfg.update(figure=self.name, quick=self.quick, seed=self.seed)
        return cfg

    def key(self, tag: int) -> Array:
        """Independent PRNG key number ``tag`` of this figure: fold_in(key(seed), tag)."""
        return jax.random.fold_in(jax.random.key(self.seed), tag)


def parse_args(name: str, doc: str | None, argv: Sequence[str] | None) -> Options:
    """Parse ``--quick``, ``--outdir``, ``--seed`` and ``--no-progress``."""
    parser = argparse.ArgumentParser(
        prog=f"python -m experiments.{name}",
        description=(doc or "").strip().splitlines()[0] if doc else None,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes (seconds; used by the tests), not full quality")
    parser.add_argument("--outdir", type=Path, default=DEFAULT_OUTDIR,
                        help="folder for NAME.png, NAME.pdf, NAME.npz and NAME.json")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--no-progress", action="store_true",
                        help="hide the progress bars (drawn on stderr only when it is a "
                             "terminal)")
    args = parser.parse_args(list(argv) if argv is not None else None)
    cache_from_environment()  # opt-in: SHAPEDSDE_CACHE_DIR (shapedsde.compile_cache)
    return Options(name=name, quick=args.quick, outdir=args.outdir, seed=args.seed,
                   progress=not args.no_progress and sys.stderr.isatty())


def progress_label(name: str, desc: str) -> str:
    """The outer bar's label: the figure's name and what the bar counts, the name once."""
    return name if desc in ("", name) else f"{name}: {desc}"


@contextlib.contextmanager
def quick_compilation(opts: Options) -> Iterator[None]:
    """Inside, a --quick run compiles with most XLA optimisations off (restored on exit): its
    runs are tiny, so compilation is most of its time, and unoptimised code compiles faster.
    The flag changes code generation only, not the sampled laws."""
    name = "jax_disable_most_optimizations"
    old = jax.config.read(name)
    jax.config.update(name, bool(opts.quick) or old)
    try:
        yield
    finally:
        jax.config.update(name, old)


def progress(items: Iterable[Any], opts: Options, desc: str) -> Iterator[Any]:
    """``items`` with an outer progress bar (the simulators draw their own inner bars)."""
    items = list(items)
    yield from tqdm(items, desc=progress_label(opts.name, desc), disable=not opts.progress,
                    leave=False, unit="run")


# --- model ------------------------------------------------------------------------------------

def block_from_config(spec: dict[str, Any]) -> sd.Block:
    """The block described by ``spec`` (the format of ``Block.config()``, "inf" heads allowed),
    e.g. ``{"kind": "ShapedAttention", "tau0": 0.3, "gamma": 0.9}``."""
    spec = dict(spec)
    kind = spec.pop("kind")
    if kind == "ShapedTransformerBlock":
        return sd.ShapedTransformerBlock(block_from_config(spec["attention"]),
                                         block_from_config(spec["mlp"]))
    if kind == "Serial":
        return sd.Serial(*(block_from_config(layer) for layer in spec["layers"]))
    if kind == "Normalized":
        return sd.Normalized(block_from_config(spec["block"]))
    if spec.get("heads") == "inf":
        spec["heads"] = math.inf
    # "mask" and "positions" (configs of blocks.masks / blocks.positions) are taken as they are
    classes = {"ShapedAttention": sd.ShapedAttention, "StandardAttention": sd.StandardAttention,
               "ShapedMLP": sd.ShapedMLP, "StandardMLP": sd.StandardMLP}
    if kind not in classes:
        raise ValueError(f"unknown block kind {kind!r}")
    return classes[kind](**spec)


def describe(spec: dict[str, Any]) -> str:
    """Short human-readable name of a block spec, with its parameters (for titles)."""
    kind = spec["kind"]
    if kind == "ShapedTransformerBlock":
        return f"Transformer block [{describe(spec['attention'])}; {describe(spec['mlp'])}]"
    heads = spec.get("heads", 1)
    extra = "" if heads in (1, None) else f", H={heads}"
    if spec.get("mask") is not None:
        extra += f", {sd.blocks.as_mask(spec['mask']).describe()} mask"
    if spec.get("positions") is not None:
        extra += f", Pi = {sd.blocks.as_positions(spec['positions']).describe()}"
    if kind == "ShapedAttention":
        return f"shaped attention (tau0={spec['tau0']:g}, gamma={spec['gamma']:g}{extra})"
    if kind == "StandardAttention":
        return f"standard attention (gamma={spec['gamma']:g}{extra})"
    if kind == "ShapedMLP":
        return (f"shaped MLP (gamma={spec['gamma']:g}, c+={spec.get('c_plus', 0.0):g}, "
                f"c-={spec.get('c_minus', -1.0):g})")
    return kind


def initial_covariance(tokens: int, rho0: float) -> np.ndarray:
    """V0 with unit diagonal: the identity (orthogonal tokens) for rho0 = 0, else the
    Toeplitz correlation rho0^|a-b| of ``shapedsde.default_covariance``."""
    return np.eye(tokens) if rho0 == 0 else sd.default_covariance(tokens, rho=rho0)


def v0_text(tokens: int, rho0: float) -> str:
    """How V0 is described in titles."""
    if rho0 == 0:
        return f"m={tokens} orthogonal tokens (V0 = I)"
    return f"m={tokens} tokens, V0_ab = {rho0:g}^|a-b|"


def normalize_arg(name: str) -> str | None:
    """Config value "rms" / "none" to the simulators' ``normalize`` argument."""
    return None if name == "none" else name


def sde_step(traj: sd.Trajectories) -> dict[str, Any]:
    """The step an SDE solve took and its estimated step error (SPEC section 9), for a
    figure's JSON: ``dt``, ``tol`` (None for a fixed step) and ``step_error``
    (``traj.config["step_error"]``: ``rho`` +- ``rho_se`` is the estimated error of the
    statistic of rho (mean, 5/50/95% quantile) with the largest ``bound``, the estimate + 2 SE
    below which every statistic's error lies; ``statement`` says it in words)."""
    return {"dt": traj.config["dt"], "tol": traj.config["tol"],
            "step_error": traj.config["step_error"]}


def step_text(steps: dict[str, Any] | Sequence[dict[str, Any]]) -> str:
    """"dt = 1/N, step error x +- se (below b)" for titles and legends, from one or more
    :func:`sde_step` records: every step taken and the error of the solve with the largest
    bound (the bound, not the estimate, is what the step control holds below tol: an
    estimate from coupled paths is itself noisy)."""
    steps = [steps] if isinstance(steps, dict) else list(steps)
    dts = sorted({round(1 / s["dt"]) for s in steps})
    err = max((s["step_error"] for s in steps), key=lambda e: e["bound"])
    return (f"dt = {', '.join(f'1/{n}' for n in dts)}, step error {err['rho']:.2g} "
            f"+- {err['rho_se']:.1g} (below {err['bound']:.2g})")


def step_summary(step: dict[str, Any]) -> str:
    """One :func:`sde_step` record in full, for the printed summary."""
    err = step["step_error"]
    chosen = ("fixed" if step["tol"] is None
              else f"chosen by the step control for tol = {step['tol']:g}")
    text = (f"dt = 1/{round(1 / step['dt'])} ({chosen}): step error {err['statement']}; "
            f"{err['paths']} coupled paths at dt = 1/{round(1 / err['dt_other'])}")
    if err.get("crossing") is not None:
        text += (f"; blow-up fraction {err['crossing']:.2g} +- {err['crossing_se']:.1g} "
                 f"(below {err['crossing_bound']:.2g})")
    return text


# --- statistics -------------------------------------------------------------------------------

def rho_at(traj: sd.Trajectories, pair: Sequence[int], t: float | None = None) -> np.ndarray:
    """Samples of rho_ab at time t (default: the last saved time), non-exploded paths only."""
    valid = traj.valid()
    i = valid.n_times - 1 if t is None else valid.at(t)
    a, b = pair
    return sd.correlation(valid.V[:, i])[:, a, b]


def distances(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """(two-sample KS statistic sup |F_x - F_y|, 1-Wasserstein distance int |F_x - F_y|)."""
    return float(stats.ks_2samp(x, y).statistic), float(stats.wasserstein_distance(x, y))


def ks_critical(n1: int, n2: int, alpha: float = 0.05) -> float:
    """Asymptotic two-sample KS critical value c(alpha) sqrt((n1 + n2) / (n1 n2)), with
    c(alpha) = sqrt(-ln(alpha / 2) / 2) (1.358 at alpha = 0.05): under equal laws the KS
    statistic exceeds it with probability about alpha."""
    return math.sqrt(-math.log(alpha / 2) / 2) * math.sqrt((n1 + n2) / (n1 * n2))


def quantile_bands(x: np.ndarray, levels: Sequence[float], axis: int = 0) -> np.ndarray:
    """np.quantile over ``axis`` (NaN where there are no samples)."""
    if x.shape[axis] == 0:
        shape = list(x.shape)
        shape[axis] = len(levels)
        return np.full(shape, np.nan)
    return np.quantile(x, levels, axis=axis)


def loglog_slope(x: Sequence[float], y: Sequence[float]) -> tuple[float, float]:
    """Least-squares fit log y = intercept + slope log x; returns (slope, intercept)."""
    slope, intercept = np.polyfit(np.log(np.asarray(x, float)), np.log(np.asarray(y, float)), 1)
    return float(slope), float(intercept)


# --- plotting ---------------------------------------------------------------------------------

@contextlib.contextmanager
def style() -> Iterator[None]:
    """Draw and save inside this context to get the common style."""
    with matplotlib.rc_context(STYLE):
        yield


def band(ax: Any, t: np.ndarray, q: np.ndarray, colour: str, label: str) -> None:
    """Median line and shaded [low, high] band from ``q`` = (low, median, high) over t, with
    dashed edges so that overlapping bands stay readable."""
    lo, med, hi = q
    ax.fill_between(t, lo, hi, color=colour, alpha=0.15, linewidth=0)
    for edge in (lo, hi):
        ax.plot(t, edge, color=colour, lw=0.8, ls="--")
    ax.plot(t, med, color=colour, label=label)


def width_colours(widths: Sequence[int]) -> list[Any]:
    """One colour per width, from light (narrow) to dark (wide)."""
    cmap = plt.get_cmap("viridis")
    k = len(widths)
    return [cmap(0.85 - 0.75 * i / max(k - 1, 1)) for i in range(k)]


def subplots(nrows: int, ncols: int, size: tuple[float, float], **kw: Any) -> tuple[Any, Any]:
    """plt.subplots with a per-panel size (inches) and constrained layout."""
    return plt.subplots(nrows, ncols, figsize=(size[0] * ncols, size[1] * nrows),
                        layout="constrained", squeeze=False, **kw)


# --- output -----------------------------------------------------------------------------------

def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, Path):
        return str(value)
    return value


def finish(opts: Options, fig: Any, cfg: dict[str, Any], data: dict[str, np.ndarray],
           results: dict[str, Any], summary: Sequence[str] = ()) -> dict[str, Any]:
    """Write NAME.png, NAME.pdf, NAME.npz (``data`` plus ``config_json`` and ``results_json``)
    and NAME.json (config, results, run time) to ``opts.outdir``; print ``summary`` lines and
    the files; return ``results`` with ``seconds`` and ``files`` added."""
    outdir = Path(opts.outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    base = outdir / opts.name
    fig.savefig(base.with_suffix(".png"))
    fig.savefig(base.with_suffix(".pdf"))
    plt.close(fig)
    seconds = time.perf_counter() - opts.started
    results = dict(results, seconds=round(seconds, 2))
    meta = {"figure": opts.name, "config": _jsonable(cfg), "results": _jsonable(results),
            "versions": {"shapedsde": sd.__version__, "jax": jax.__version__,
                         "numpy": np.__version__}}
    np.savez_compressed(base.with_suffix(".npz"), **data,
                        config_json=np.array(json.dumps(meta["config"])),
                        results_json=np.array(json.dumps(meta["results"])))
    base.with_suffix(".json").write_text(json.dumps(meta, indent=2) + "\n")
    files = {ext: str(base.with_suffix(f".{ext}")) for ext in ("png", "pdf", "npz", "json")}
    mode = "quick" if opts.quick else "full"
    print(f"{opts.name} ({mode}, seed {opts.seed}, {seconds:.1f} s)")
    for line in summary:
        print(f"  {line}")
    print(f"  wrote {files['png']} (+ .pdf, .npz, .json)")
    return dict(results, files=files)
