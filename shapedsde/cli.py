"""Command-line interface: ``shapedsde simulate``, ``shapedsde compare`` and
``shapedsde figures``.

Invalid values (from the command line or from the library's checks) end with one line
``shapedsde: error: <message>`` on stderr and exit status 2; set SHAPEDSDE_DEBUG=1 to get the
traceback instead. The library's warnings are printed as one line ``shapedsde: warning: ...``.
Defaults are the Python API's (``shapedsde.defaults``); progress bars are drawn on stderr when
it is a terminal (``--no-progress`` hides them).
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.util
import math
import os
import sys
import time
import warnings
from fractions import Fraction
from pathlib import Path
from types import ModuleType

import numpy as np

from . import __version__
from ._batching import key_record
from .analysis.trajectories import Trajectories
from .blocks import (
    Block,
    Mask,
    PositionGram,
    ShapedAttention,
    ShapedMLP,
    ShapedTransformerBlock,
    as_mask,
    as_positions,
    block_mask,
    causal_mask,
    decay_gram,
    padding_mask,
    sinusoidal_gram,
    sliding_window_mask,
)
from .compile_cache import cache_from_environment
from .defaults import N_PATHS, N_SAVE, NORMALIZE, TOL, default_covariance
from .validation import (
    check_figure_path,
    check_int,
    check_output_file,
    check_output_folder,
    check_path_range,
    check_real,
    check_result_size,
    check_width,
)

PROG = "shapedsde"
BLOCKS = ("attention", "mlp", "transformer")
MODEL_DEFAULTS = {"gamma": 0.5, "tau0": 1.0, "heads": "1", "c_plus": 0.0, "c_minus": -1.0,
                  "causal": False, "mask": None, "positions": None}
"""Defaults of the model options, those of ``ShapedAttention()`` and ``ShapedMLP()`` (parsed as
None, so that an option given for a block it does not apply to can be told apart from its
default)."""
APPLIES = {"attention": ("gamma", "tau0", "heads", "causal", "mask", "positions"),
           "mlp": ("gamma", "c_plus", "c_minus"),
           "transformer": tuple(MODEL_DEFAULTS)}
"""The model options each block uses."""
DEFAULT_SDE_OUT = Path("results/sde.npz")
DEFAULT_FIGURE = Path("results/demo.png")
"""Default outputs: their folder (results/, ignored by git) is created if missing; the folder
of any other --out must exist."""


def model_option(args: argparse.Namespace, name: str) -> object:
    """The value of model option ``name``: as given, else its default."""
    value = getattr(args, name)
    return MODEL_DEFAULTS[name] if value is None else value


def ignored_options(args: argparse.Namespace) -> list[str]:
    """The model options given on the command line that the chosen block does not use."""
    return ["--" + name.replace("_", "-") for name in MODEL_DEFAULTS
            if getattr(args, name) is not None and name not in APPLIES[args.block]]


def build_block(args: argparse.Namespace) -> Block:
    """The block named by ``--block``, configured from the parsed options (the one place that
    maps options to blocks: a new block adds its choice to BLOCKS, APPLIES and a branch
    here)."""
    opt = lambda name: model_option(args, name)  # noqa: E731
    heads = math.inf if opt("heads") == "inf" else int(opt("heads"))
    if args.block not in BLOCKS:
        raise ValueError(f"block must be one of {BLOCKS}, got {args.block!r}")
    attention = mlp = None
    if args.block in ("attention", "transformer"):
        mask = _named("--mask", parse_mask, opt("mask"), args.tokens)
        positions = _named("--positions", parse_positions, opt("positions"), args.tokens)
        attention = ShapedAttention(tau0=opt("tau0"), gamma=opt("gamma"), heads=heads,
                                    causal=opt("causal"), mask=mask, positions=positions)
    if args.block in ("mlp", "transformer"):
        mlp = ShapedMLP(gamma=opt("gamma"), c_plus=opt("c_plus"), c_minus=opt("c_minus"))
    if args.block == "transformer":
        return ShapedTransformerBlock(attention, mlp)
    return attention if attention is not None else mlp


MASK_PATTERNS = "causal, padding:K, window:W, window:W:causal, block:SIZE or a .npy file"
POSITION_PATTERNS = "decay:RHO[:SCALE], sinusoidal[:SCALE[:DIM]] or a .npy file"


def _load_npy(text: str, option: str) -> object:
    try:
        return np.load(text, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise ValueError(f"{option}: cannot read {text} ({err})") from None


def _pattern_args(text: str, option: str, patterns: str,
                  kinds: dict[str, tuple[type, ...]]) -> tuple[str, list[object]]:
    """('name', [parsed parameters]) of 'name:p1:p2' with the parameter types of ``kinds``."""
    name, *raw = text.split(":")
    if name not in kinds:
        raise ValueError(f"{option}: unknown pattern {text!r}; use {patterns}")
    types = kinds[name]
    if len(raw) > len(types):
        raise ValueError(f"{option}: too many parameters in {text!r}; use {patterns}")
    values: list[object] = []
    for kind, item in zip(types, raw, strict=False):
        try:
            values.append(kind(item))
        except ValueError:
            raise ValueError(f"{option}: {item!r} in {text!r} is not a valid "
                             f"{kind.__name__}; use {patterns}") from None
    return name, values


def _named(option: str, parse: object, text: str | None, m: int) -> object:
    """``parse(text, m)`` (None for None), its errors prefixed with the option's name."""
    if text is None:
        return None
    try:
        return parse(text, m)  # type: ignore[operator]
    except (ValueError, TypeError) as err:
        message = str(err)
        if not message.startswith(option):
            message = f"{option} {text}: {message}"
        raise type(err)(message) from None


def parse_mask(text: str, m: int) -> Mask:
    """The mask named on the command line for m tokens (``MASK_PATTERNS``)."""
    if text.endswith(".npy"):
        return as_mask(_load_npy(text, "--mask"), "--mask", source=text)
    kinds = {"causal": (), "padding": (int,), "window": (int, str), "block": (int,)}
    name, values = _pattern_args(text, "--mask", MASK_PATTERNS, kinds)
    if name != "causal" and not values:
        raise ValueError(f"--mask: {name} needs a parameter ({name}:N); use {MASK_PATTERNS}")
    if name == "causal":
        return causal_mask(m)
    if name == "padding":
        return padding_mask(m, values[0])
    if name == "block":
        return block_mask(m, values[0])
    if values[1:] not in ([], ["causal"]):
        raise ValueError(f"--mask: the third field of {text!r} may only be 'causal'")
    return sliding_window_mask(m, values[0], causal=values[1:] == ["causal"])


def parse_positions(text: str, m: int) -> PositionGram:
    """The positional Gram named on the command line for m tokens (``POSITION_PATTERNS``)."""
    if text.endswith(".npy"):
        return as_positions(_load_npy(text, "--positions"), "--positions", source=text)
    kinds = {"decay": (float, float), "sinusoidal": (float, int)}
    name, values = _pattern_args(text, "--positions", POSITION_PATTERNS, kinds)
    if name == "decay":
        if not values:
            raise ValueError(f"--positions: decay needs RHO (decay:RHO); use "
                             f"{POSITION_PATTERNS}")
        return decay_gram(m, *values)
    return sinusoidal_gram(m, *values)


def block_description(block: Block) -> str:
    """The block's class and the parameters it actually uses, e.g. 'ShapedMLP(gamma=0.5,
    c_plus=0, c_minus=-1)' (sub-blocks of a Transformer block nested; a mask and a positional
    Gram by name and parameters, e.g. 'mask=padding(m=4, k=3)')."""
    def fmt(config: dict[str, object]) -> str:
        parts = []
        for k, v in config.items():
            if k == "kind" or v is None:
                continue
            if k in ("mask", "positions") and isinstance(v, dict):
                parts.append(f"{k}={(as_mask if k == 'mask' else as_positions)(v).describe()}")
                continue
            parts.append(fmt(v) if isinstance(v, dict) else
                         ", ".join(fmt(x) for x in v) if isinstance(v, list) else
                         f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}")
        return f"{config['kind']}({', '.join(parts)})"
    return fmt(block.config())


def _step(text: str) -> float | str:
    """'auto' (the solver chooses the step with error control) or a real such as 1/256."""
    return "auto" if text == "auto" else _real(text)


def _heads(text: str) -> str:
    """An integer >= 1, or 'inf' (SDE only: infinitely many heads, no attention noise)."""
    if text == "inf":
        return text
    try:
        int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer or 'inf': {text!r}") from None
    return text  # the range is checked by ShapedAttention, like every other model value


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Show defaults, except the uninformative None / False of optional paths and flags."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        if action.default is None or action.default is False:
            return action.help
        return super()._get_help_string(action)


def _real(text: str) -> float:
    """A real number, also written as a fraction such as 1/256."""
    try:
        return float(text)
    except ValueError:
        try:
            return float(Fraction(text))
        except (ValueError, ZeroDivisionError):
            raise argparse.ArgumentTypeError(f"not a real number: {text!r}") from None


PROGRESS_HELP = "hide the progress bars (drawn on stderr only when it is a terminal)"


def show_progress(args: argparse.Namespace) -> bool:
    """Progress bars where a person is watching: stderr is a terminal and no --no-progress."""
    return not args.no_progress and sys.stderr.isatty()


def _common_options() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(add_help=False)
    model = p.add_argument_group("model", "options that do not apply to the chosen block are "
                                          "ignored with a warning")
    model.add_argument("--block", choices=BLOCKS, default="attention",
                       help="residual block: shaped attention, shaped MLP, or both in turn "
                            "(the Transformer block); gamma applies to each sub-block")
    model.add_argument("--tokens", type=int, default=4,
                       help="number of tokens m; V0 = default_covariance(m), V0_ab = 0.8^|a-b|")
    d = MODEL_DEFAULTS
    model.add_argument("--gamma", type=_real,
                       help="branch weight, 0 < gamma <= 1 (X' = lambda X + gamma branch) "
                            f"(default: {d['gamma']:g})")
    model.add_argument("--tau0", type=_real,
                       help="attention temperature, tau = tau0 sqrt(width), tau0 > 0 "
                            f"(default: {d['tau0']:g})")
    model.add_argument("--heads", type=_heads,
                       help=f"attention heads, or 'inf' (SDE only) (default: {d['heads']})")
    model.add_argument("--c-plus", type=_real,
                       help="shaped ReLU slope shift c_+ (MLP: s_+ = 1 + c_+ / sqrt(n)) "
                            f"(default: {d['c_plus']:g})")
    model.add_argument("--c-minus", type=_real,
                       help="shaped ReLU slope shift c_- (MLP: s_- = 1 + c_- / sqrt(n)) "
                            f"(default: {d['c_minus']:g})")
    model.add_argument("--causal", action="store_true", default=None,
                       help="causal attention mask (the same as --mask causal)")
    model.add_argument("--mask", metavar="PATTERN",
                       help="attention mask for the --tokens tokens: " + MASK_PATTERNS
                            + " (an m x m boolean array; every query needs an allowed key)")
    model.add_argument("--positions", metavar="PATTERN",
                       help="Gram Pi = P P^T / n of a positional embedding added to queries "
                            "and keys: " + POSITION_PATTERNS + " (m x m, symmetric PSD)")
    model.add_argument("--normalize", choices=("none", "rms"),
                       default="none" if NORMALIZE is None else NORMALIZE,
                       help="'none': the block as given; 'rms': rescale every token to norm "
                            "sqrt(width) after every sub-block (V is a correlation matrix, no "
                            "path explodes)")
    run = p.add_argument_group("simulation")
    run.add_argument("--T", type=_real, default=1.0, help="final time t = depth / width")
    run.add_argument("--paths", type=int, default=N_PATHS,
                     help="number of SDE paths (and of network samples)")
    run.add_argument("--seed", type=int, default=0, help="random seed")
    run.add_argument("--dt", type=_step, default="auto",
                     help="'auto': the solver chooses the SDE step with error control "
                          "(solve_sde(dt=None)); else the step, such as 1/256, refined with a "
                          "warning where the saved times T k / (n-save - 1) are not on its grid")
    run.add_argument("--tol", type=_real, default=TOL,
                     help="with --dt auto: largest estimated step error of the mean and "
                          "5/50/95%% quantiles of every correlation")
    run.add_argument("--solver", default="auto",
                     help="SDE solver: 'congruence' (Euler in congruence form: V stays PSD by "
                          "construction), 'euler' (Euler-Maruyama with a PSD repair), or "
                          "'auto': congruence where the block has that form (shaped attention "
                          "without a mask, the shaped MLP, their Transformer block) and its "
                          "attention is hot (gamma^2 / tau0^2 >= 1) or there are more than 7 "
                          "tokens, else euler")
    run.add_argument("--n-save", type=int, default=N_SAVE,
                     help="number of evenly spaced saved times, including 0 and T")
    run.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                     help="floating-point precision")
    run.add_argument("--no-progress", action="store_true", help=PROGRESS_HELP)
    return p


def make_parser() -> argparse.ArgumentParser:
    fmt = _Formatter
    parser = argparse.ArgumentParser(
        prog=PROG, formatter_class=fmt,
        description="Covariance SDEs of shaped Transformers and the finite networks they "
                    "describe. Options go after the subcommand, e.g. "
                    "'shapedsde compare --width 64 --gamma 0.3'.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = [_common_options()]
    sim = sub.add_parser("simulate", parents=common, formatter_class=fmt,
                         help="solve the covariance SDE and save the paths",
                         description="Solve the covariance SDE from V0 to time T and save "
                                     "the paths (Trajectories .npz).")
    sim.add_argument("--out", type=Path, default=DEFAULT_SDE_OUT,
                     help="output .npz (.npz appended if missing); its folder must exist, "
                          "except the default results/, which is created")
    cmp_ = sub.add_parser("compare", parents=common, formatter_class=fmt,
                          help="compare the SDE with the finite network and plot both",
                          description="Solve the SDE and simulate the network of width n and "
                                      "depth round(T n); print the distributional comparison "
                                      "at the final time and plot correlation bands.")
    cmp_.add_argument("--width", type=int, default=128, help="network width n")
    cmp_.add_argument("--method", choices=("auto", "full", "reduced"), default="auto",
                      help="network simulator: full n x n weights, or the exact reduced one")
    cmp_.add_argument("--out", type=Path, default=DEFAULT_FIGURE,
                      help="figure (PNG, or another format matplotlib writes); its folder must "
                           "exist, except the default results/, which is created")
    cmp_.add_argument("--save-data", type=Path, default=None, metavar="DIR",
                      help="also save sde.npz and network.npz in DIR (created if missing; its "
                           "parent folder must exist)")
    figs = sub.add_parser("figures", formatter_class=fmt,
                          help="make the package's figures (the experiments in experiments/)",
                          description="Run the figure scripts of the repository's experiments/ "
                                      "folder in turn; each writes NAME.png, NAME.pdf, NAME.npz "
                                      "and NAME.json.")
    figs.add_argument("--quick", action="store_true",
                      help="tiny sizes (seconds per figure, for tests), not full quality")
    figs.add_argument("--only", action="append", metavar="NAME",
                      help="make only this figure (repeatable; default: all)")
    figs.add_argument("--outdir", type=Path, default=None, metavar="DIR",
                      help="output folder (default: figures/ in the repository)")
    figs.add_argument("--seed", type=int, default=0, help="random seed")
    figs.add_argument("--no-progress", action="store_true", help=PROGRESS_HELP)
    return parser


def coinciding_n_save(depth: int, n_save: int) -> int:
    """Largest k + 1 <= n_save with k dividing depth, so saved layers are exact multiples."""
    return 1 + max(k for k in range(1, min(n_save - 1, depth) + 1) if depth % k == 0)


def _check_tokens(block: Block, args: argparse.Namespace) -> None:
    """A mask or positional Gram read from a file must be made for --tokens tokens."""
    try:
        block.check_tokens(args.tokens)
    except ValueError as err:
        raise ValueError(f"{err} (--tokens {args.tokens})") from None


def _check_run_options(args: argparse.Namespace) -> None:
    check_real("T", args.T, low=0.0)
    if args.dt != "auto":
        check_real("dt", args.dt, low=0.0)
    check_int("paths", args.paths, low=1)
    check_path_range(0, args.paths, n_name="--paths")
    check_int("n-save", args.n_save, low=2)
    check_real("tol", args.tol, low=0.0)
    from .sde import SOLVER_NAMES

    if args.solver not in SOLVER_NAMES:
        raise ValueError(f"--solver must be one of {', '.join(SOLVER_NAMES)}, got "
                         f"{args.solver!r}")


def _check_result_size(args: argparse.Namespace, m: int, n_save: int, copies: int) -> None:
    check_result_size(args.paths, n_save, m, args.dtype, copies=copies,
                      names=("--paths", "--n-save"),
                      split="split the run with the Python API (first_path / first_sample)")


def _warn_ignored(args: argparse.Namespace) -> None:
    ignored = ignored_options(args)
    if ignored:
        print(f"{PROG}: warning: {', '.join(ignored)} do{'es' if len(ignored) == 1 else ''} "
              f"not apply to --block {args.block}; ignored", file=sys.stderr)


def _dt_text(args: argparse.Namespace) -> str:
    return "auto" if args.dt == "auto" else f"{args.dt:g}"


def _configuration(block: Block, args: argparse.Namespace, **run: object) -> str:
    """One line with the configuration actually used (block parameters that apply, run
    options, seed)."""
    items = " ".join(f"{k}={v}" for k, v in run.items())
    return (f"{block_description(block)} tokens={args.tokens} normalize={args.normalize} | "
            f"{items} dtype={args.dtype} seed={args.seed}")


def _step_report(sde: Trajectories, args: argparse.Namespace) -> str:
    """The SDE step actually used (from the result), with its error estimate if the solver
    gives one, and a note when it differs from the requested --dt."""
    step = float(sde.config["dt"])
    text = (f"SDE step ({sde.config.get('solver', 'euler')} solver): dt = {step:.6g} "
            f"({1 / step:.6g} steps per unit time)")
    error = sde.config.get("step_error")
    if isinstance(error, dict) and error.get("statement"):  # shapedsde.sde.StepError
        text += f", step error on rho {error['statement']}"
        if error.get("crossing") is not None:
            text += (f", on the blow-up fraction {error['crossing']:.2g} +- "
                     f"{error['crossing_se']:.1g} (below {error['crossing_bound']:.2g})")
    return text


def _with_seed(traj: Trajectories, seed: int, key: object) -> Trajectories:
    """The result with the CLI's seed and the key it drew from recorded in its config."""
    return dataclasses.replace(traj, config={**traj.config, "seed": seed,
                                             "key": key_record(key)})


def _sde_kwargs(args: argparse.Namespace) -> dict[str, object]:
    return dict(dt=None if args.dt == "auto" else args.dt, tol=args.tol, solver=args.solver,
                n_paths=args.paths,
                normalize=None if args.normalize == "none" else "rms", dtype=args.dtype,
                progress=show_progress(args))


def cmd_simulate(args: argparse.Namespace) -> int:
    import jax

    from .sde import solve_sde

    block = build_block(args)
    V0 = default_covariance(args.tokens)
    _check_tokens(block, args)
    _check_run_options(args)
    _check_result_size(args, V0.shape[0], args.n_save, copies=1)
    out = check_output_file(Trajectories.npz_path(args.out), "--out",
                            create_folder=args.out == DEFAULT_SDE_OUT)
    _warn_ignored(args)
    print(_configuration(block, args, T=f"{args.T:g}", paths=args.paths, dt=_dt_text(args),
                         n_save=args.n_save), flush=True)
    key = jax.random.key(args.seed)
    sde = solve_sde(block, V0, args.T, key=key, n_save=args.n_save, **_sde_kwargs(args))
    print(_step_report(sde, args))
    path = _with_seed(sde, args.seed, key).save(out)
    print(sde.summary())
    print(f"wrote {path}")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    import jax

    from .analysis import compare, plot_correlation_bands
    from .network import simulate_network
    from .sde import solve_sde

    block = build_block(args)
    V0 = default_covariance(args.tokens)
    _check_tokens(block, args)
    _check_run_options(args)
    width = check_width(args.width, V0.shape[0])
    block.check_width(width)
    depth = round(args.T * width)
    if depth < 1:
        raise ValueError(f"depth = round(T * width) = round({args.T:g} * {width}) is 0; "
                         "increase T or width")
    T = depth / width
    n_save = coinciding_n_save(depth, args.n_save)
    _check_result_size(args, V0.shape[0], n_save, copies=2)  # SDE and network
    figure = check_figure_path(args.out, "--out", create_folder=args.out == DEFAULT_FIGURE)
    if args.save_data is not None:
        existing = args.save_data if args.save_data.exists() else args.save_data.parent
        check_output_folder(existing, "--save-data")
    kw = _sde_kwargs(args)
    _warn_ignored(args)
    print(_configuration(block, args, T=f"{T:g}", width=width, depth=depth, paths=args.paths,
                         dt=_dt_text(args), n_save=n_save, method=args.method), flush=True)
    if not math.isclose(T, args.T, rel_tol=1e-12):
        print(f"note: T = {args.T:g} is not a multiple of 1/width; using T = depth / width "
              f"= {T:g}")
    if n_save != args.n_save:
        print(f"note: n-save = {args.n_save} - 1 does not divide depth = {depth}; using "
              f"n-save = {n_save} so that SDE and network save times coincide")

    key = jax.random.key(args.seed)
    t0 = time.perf_counter()
    sde = solve_sde(block, V0, T, key=key, n_save=n_save, **kw)
    t1 = time.perf_counter()
    print(_step_report(sde, args), flush=True)
    net = simulate_network(block, V0, width=width, depth=depth, n_samples=args.paths,
                           key=jax.random.fold_in(key, 1), n_save=n_save,
                           normalize=kw["normalize"], method=args.method, dtype=args.dtype,
                           progress=kw["progress"])
    t2 = time.perf_counter()
    print(f"exploded: SDE {sde.exploded_fraction:.1%}, network {net.exploded_fraction:.1%}")
    print(f"wall time: SDE {t1 - t0:.1f} s, network ({net.config['method']}) {t2 - t1:.1f} s")
    print(compare(sde, net, labels=("SDE", "network")).final())
    if args.save_data is not None:
        for name, traj, k in (("sde", sde, key), ("network", net, jax.random.fold_in(key, 1))):
            print(f"wrote {_with_seed(traj, args.seed, k).save(args.save_data / f'{name}.npz')}")
    title = f"{block_description(block)}, {args.tokens} tokens, normalize={args.normalize}"
    fig = plot_correlation_bands({"SDE": sde, f"network (width {width})": net}, figure,
                                 title=title)
    print(f"wrote {fig}")
    return 0


def experiments_dir() -> Path:
    """The figure scripts' folder: ``experiments/`` beside the package in the repository (an
    editable install, ``pip install -e .``, or a source checkout)."""
    import shapedsde

    return Path(shapedsde.__file__).resolve().parents[1] / "experiments"


def load_experiments() -> ModuleType:
    """Import the ``experiments`` package from :func:`experiments_dir` by path (it is not
    installed with shapedsde, so it need not be on sys.path)."""
    folder = experiments_dir()
    init = folder / "__init__.py"
    if not init.is_file():
        raise ValueError(f"the figure scripts were not found: {init} does not exist (they ship "
                         "with the source repository; install it with 'pip install -e .')")
    loaded = sys.modules.get("experiments")
    if loaded is not None:
        if Path(getattr(loaded, "__file__", "") or "").resolve() == init.resolve():
            return loaded
        raise ValueError(f"another module named 'experiments' is already imported "
                         f"({getattr(loaded, '__file__', loaded)!r}), not {init}")
    spec = importlib.util.spec_from_file_location("experiments", init,
                                                  submodule_search_locations=[str(folder)])
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["experiments"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules["experiments"]
        raise
    return module


def figure_names() -> tuple[str, ...]:
    """Names of the figure scripts, in gallery order (``experiments.FIGURES``)."""
    return tuple(load_experiments().FIGURES)


def load_figure(name: str) -> ModuleType:
    """The figure script ``experiments/<name>.py`` as a module (with ``main(argv)``)."""
    names = figure_names()
    if name not in names:
        raise ValueError(f"unknown figure {name!r}; choose from {', '.join(names)}")
    return importlib.import_module(f"experiments.{name}")


def cmd_figures(args: argparse.Namespace) -> int:
    names = list(figure_names())
    if args.only:
        modules = [load_figure(name) for name in dict.fromkeys(args.only)]
    else:
        modules = [load_figure(name) for name in names]
    argv = ["--seed", str(args.seed)]
    argv += ["--quick"] if args.quick else []
    argv += [] if show_progress(args) else ["--no-progress"]
    argv += ["--outdir", str(args.outdir)] if args.outdir is not None else []
    times = []
    for i, module in enumerate(modules, 1):
        name = module.__name__.rsplit(".", 1)[-1]
        print(f"[{i}/{len(modules)}] {name}", flush=True)
        t0 = time.perf_counter()
        module.main(argv)
        times.append((name, time.perf_counter() - t0))
    print("figure                     seconds")
    for name, seconds in times:
        print(f"{name:<26} {seconds:7.1f}")
    return 0


def _show_warning(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                  file: object = None, line: str | None = None) -> None:
    """A library warning as one line ``shapedsde: warning: ...`` on stderr."""
    print(f"{PROG}: warning: {' '.join(str(message).split())}", file=sys.stderr, flush=True)


COMMANDS = {"simulate": cmd_simulate, "compare": cmd_compare, "figures": cmd_figures}


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; return the exit status (0 success, 2 invalid arguments)."""
    try:
        args = make_parser().parse_args(argv)
    except SystemExit as stop:  # --help (0) or an argparse error (2, message already printed)
        return stop.code if isinstance(stop.code, int) else 2
    with warnings.catch_warnings(record=True) as caught:  # opt-in: SHAPEDSDE_CACHE_DIR
        warnings.simplefilter("always")
        cache_from_environment()
    for warning in caught:
        print(f"{PROG}: warning: {warning.message}", file=sys.stderr)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            return COMMANDS[args.command](args)
    except (ValueError, TypeError) as err:
        if os.environ.get("SHAPEDSDE_DEBUG"):
            raise
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"{PROG}: error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
