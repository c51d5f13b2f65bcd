"""Issue 27, a new user's first hour: one set of defaults, quiet and true output, results that
can be run again. One test (or group) per finding of the issue; each failed before the fix."""

from __future__ import annotations

import inspect
import re
import sys
import warnings
from pathlib import Path

import jax
import numpy as np
import pytest

import shapedsde as sd
from shapedsde import cli, defaults
from shapedsde.analysis.trajectories import Trajectories
from shapedsde.network.simulate import save_layers

REPO = Path(__file__).resolve().parents[1]
V2 = sd.default_covariance(2)
TINY = dict(T=0.25, dt=1 / 16, n_save=3)  # 2 steps per saved interval: no refinement


def _default(fn: object, name: str) -> object:
    return inspect.signature(fn).parameters[name].default


# -- Python and the CLI share one set of defaults --------------------------------------------

def test_python_and_cli_defaults_agree():
    """Before: solve_sde and simulate_network saved 11 times, the CLI 17; the CLI normalised
    ("rms"), Python did not; the CLI solved 2000 paths, Python 1000."""
    args = cli.make_parser().parse_args(["compare"])
    for fn in (sd.solve_sde, sd.simulate_network):
        assert _default(fn, "n_save") == args.n_save == defaults.N_SAVE
        assert _default(fn, "normalize") == defaults.NORMALIZE
        assert (args.normalize == "none") == (defaults.NORMALIZE is None)
    assert _default(sd.solve_sde, "n_paths") == args.paths == defaults.N_PATHS
    assert _default(sd.solve_sde, "tol") == args.tol == defaults.TOL
    assert _default(sd.solve_sde, "dt") is None and args.dt == "auto"
    assert _default(sd.solve_sde, "solver") == args.solver
    assert _default(sd.solve_sde, "dtype") == args.dtype
    attention, mlp = sd.ShapedAttention(), sd.ShapedMLP()
    model = cli.MODEL_DEFAULTS
    assert (attention.gamma, attention.tau0, attention.causal) == (
        model["gamma"], model["tau0"], model["causal"])
    assert str(attention.heads) == model["heads"] and mlp.gamma == model["gamma"]
    assert (mlp.c_plus, mlp.c_minus) == (model["c_plus"], model["c_minus"])


def test_default_save_times_coincide_for_the_sde_and_networks():
    """Before: with the Python defaults a network of depth 128 saved at t = 0.1015625, ...,
    the SDE at t = 0.1, ..., and compare kept only t in {0, 0.5, 1}."""
    n_save = _default(sd.simulate_network, "n_save")
    sde_times = np.linspace(0.0, 1.0, _default(sd.solve_sde, "n_save"))
    for width in (64, 128, 256, 1024):  # depth = width at T = 1
        assert np.array_equal(save_layers(width, n_save) / width, sde_times)


# -- compare says which saved times it drops -------------------------------------------------

def _paths(t: np.ndarray, kind: str) -> Trajectories:
    V = np.broadcast_to(np.eye(2), (5, t.size, 2, 2)).copy()
    V[:, :, 0, 1] = V[:, :, 1, 0] = np.linspace(-0.5, 0.5, 5)[:, None]
    return Trajectories(t=t, V=V, exploded=np.zeros(5, bool),
                        explosion_time=np.full(5, np.inf), config={"kind": kind})


def test_compare_warns_about_saved_times_it_drops():
    """Before: the times saved by one side only were left out without a word."""
    sde = _paths(np.linspace(0.0, 1.0, 11), "sde")
    net = _paths(save_layers(128, 11) / 128, "network")
    with pytest.warns(UserWarning, match="not shared") as caught:
        result = sd.compare(sde, net)
    assert result.times == pytest.approx([0.0, 0.5, 1.0])
    message = str(caught[0].message)
    assert "'sde' at t = 0.1, 0.2" in message and "'network' at t = 0.101562" in message
    assert "3 shared times t = 0, 0.5, 1" in message
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        sd.compare(sde, _paths(np.linspace(0.0, 1.0, 11), "network"))  # same times: silent
        sd.compare(sde, net, times=[0.5, 1.0])  # times asked for: silent


# -- a requested dt that the grid refines is reported -----------------------------------------

class _Stop(Exception):
    """Raised in place of the solve: the checks below happen before it."""


def test_refined_dt_is_reported(monkeypatch):
    """Before: dt = 1/1024 with 11 saved times ran at 1/1030 without a word. With the default
    17 saved times a dyadic step is taken as given."""
    block, key = sd.ShapedAttention(), jax.random.key(0)
    with pytest.warns(UserWarning, match=r"dt = 0.05 refined to 0.0416667 \(3 steps"):
        sde = sd.solve_sde(block, V2, key=key, n_paths=8, **dict(TINY, dt=1 / 20))
    assert sde.config["dt_requested"] == 1 / 20 and sde.config["dt"] == pytest.approx(1 / 24)

    from shapedsde.sde import _solve

    def stop(*args: object, **kwargs: object) -> None:
        raise _Stop

    monkeypatch.setattr(_solve, "make_solver", stop)  # the grid is set before the solver
    with pytest.warns(UserWarning, match=r"dt = 0.000976562 refined to 0.000970874"):
        with pytest.raises(_Stop):
            sd.solve_sde(block, V2, 1.0, key=key, dt=1 / 1024, n_save=11)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for dt in (1 / 1024, 1 / 256, 1 / 16):
            with pytest.raises(_Stop):
                sd.solve_sde(block, V2, 1.0, key=key, dt=dt)


def test_cli_prints_library_warnings_on_one_line(tmp_path, capsys):
    argv = ["simulate", "--paths", "8", "--T", "0.25", "--n-save", "3", "--dt", "1/20",
            "--tokens", "2", "--out", str(tmp_path / "s.npz")]
    assert cli.main(argv) == 0
    err = capsys.readouterr().err.splitlines()
    notes = [line for line in err if "refined" in line]
    assert len(notes) == 1
    assert notes[0].startswith("shapedsde: warning: solve_sde: dt = 0.05 refined to 0.0416667")


# -- progress bars: only where a person watches, with true totals -----------------------------

def test_library_calls_draw_no_progress_bars(capsys):
    """Before: solve_sde, simulate_network and simulate_infinite_width drew bars by default."""
    for fn in (sd.solve_sde, sd.simulate_network, sd.simulate_infinite_width):
        assert _default(fn, "progress") is False
    sd.solve_sde(sd.ShapedAttention(), V2, key=jax.random.key(0), n_paths=8, **TINY)
    assert capsys.readouterr().err == ""


def _totals(err: str) -> set[str]:
    return set(re.findall(r"\d+/(\d+)", err))


def test_progress_totals_are_the_paths_asked_for(capsys):
    """Before: "SDE paths: 0/44" for 300 paths (the bar counted what was left after the
    step control's pilot) and "network layers: 0/8" for 20 networks of depth 8."""
    sd.solve_sde(sd.ShapedAttention(), V2, key=jax.random.key(0), n_paths=300, progress=True,
                 chunk_size=8, **TINY)  # the compiled shape of the 8-path runs
    err = capsys.readouterr().err
    assert "SDE paths" in err and _totals(err) == {"300"}
    sd.simulate_network(sd.ShapedAttention(), V2, width=8, depth=8, n_samples=20,
                        key=jax.random.key(1), method="full", n_save=3, progress=True)
    err = capsys.readouterr().err
    assert "networks" in err and _totals(err) == {"20"}


def test_cli_draws_bars_only_on_a_terminal(monkeypatch, tmp_path):
    """Before: the CLI drew bars (on stderr, ahead of the tables) into logs and pipes too."""
    seen = []

    def fake_solve(*args: object, progress: bool, **kwargs: object) -> None:
        seen.append(progress)
        raise ValueError("stop")

    import shapedsde.sde

    monkeypatch.setattr(shapedsde.sde, "solve_sde", fake_solve)
    for tty, flags, expected in ((False, [], False), (True, [], True),
                                 (True, ["--no-progress"], False)):
        monkeypatch.setattr(sys.stderr, "isatty", lambda tty=tty: tty, raising=False)
        assert cli.main(["simulate", "--out", str(tmp_path / "x.npz"), *flags]) == 2
        assert seen.pop() is expected


# -- help texts say what happens --------------------------------------------------------------

def _option_helps(command: str) -> dict[str, str]:
    """Each option's help as printed (defaults expanded by the formatter)."""
    parser = cli.make_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices[command]
    fmt = sub._get_formatter()
    return {a.option_strings[-1]: " ".join(fmt._expand_help(a).split())
            for a in sub._actions if a.help and a.option_strings}


def test_help_texts_state_each_default_once_and_the_solver_rule():
    """Before: --tol's help repeated its default; --solver's help said congruence is the
    default "where the block allows it", while "auto" takes Euler for every cool block."""
    for command in ("simulate", "compare", "figures"):
        for option, text in _option_helps(command).items():
            assert text.count("(default") <= 1, (option, text)
            assert "paper" not in text
    helps = _option_helps("compare")
    assert helps["--tol"].endswith("(default: 0.005)") and helps["--tol"].count("0.005") == 1
    assert "gamma^2 / tau0^2 >= 1" in helps["--solver"] and "else euler" in helps["--solver"]
    assert "more than 7 tokens" in helps["--solver"]
    assert "terminal" in helps["--no-progress"]


def test_figure_progress_labels_name_the_figure_once(capsys):
    """Before: the heads figure's bar read "heads: heads: ..."."""
    from experiments import _common as C

    for script in sorted((REPO / "experiments").glob("[!_]*.py")):
        for desc in re.findall(r'C\.progress\(.*?, opts, "(.*?)"\)', script.read_text()):
            label = C.progress_label(script.stem, desc)
            assert not label.startswith(f"{script.stem}: {script.stem}"), script.name
    opts = C.Options(name="heads", quick=True, outdir=REPO, seed=0, progress=True)
    assert list(C.progress([1, 4], opts, "heads")) == [1, 4]
    assert "heads: heads" not in capsys.readouterr().err


# -- a saved result names the block it was made with ------------------------------------------

@pytest.mark.parametrize("block", [
    sd.ShapedAttention(tau0=0.3, gamma=0.9, heads=float("inf")),
    sd.ShapedAttention(heads=2, key_dim=3, causal=True),
    sd.ShapedTransformerBlock(sd.ShapedAttention(tau0=2.0), sd.ShapedMLP(c_plus=0.5)),
    sd.normalized(sd.ShapedTransformerBlock()),
    sd.Normalized(sd.ShapedMLP(gamma=0.2)),
    sd.StandardTransformerBlock(sd.StandardAttention(heads=3), sd.StandardMLP(gamma=0.3)),
    sd.ShapedAttention(mask=sd.sliding_window_mask(4, 2), positions=sd.decay_gram(4, 0.5)),
])
def test_block_from_config_rebuilds_every_block(block):
    config = block.config()
    for rebuilt in (sd.block_from_config(config), sd.Block.from_config(config),
                    type(block).from_config(config)):
        assert type(rebuilt) is type(block) and rebuilt.config() == config


@pytest.mark.parametrize("config, error, match", [
    ([1, 2], TypeError, "config must be a block description"),
    ({"gamma": 0.5}, ValueError, "kind"),
    ({"kind": "Attention"}, ValueError, "must name a block class"),
    ({"kind": "sde", "block": {}}, ValueError, "pass its config\\['block'\\]"),
    ({"kind": "ShapedMLP", "tau0": 1.0}, ValueError, "does not take: tau0"),
    ({"kind": "ShapedMLP", "gamma": 2.0}, ValueError, "gamma"),
])
def test_block_from_config_rejects_bad_configs(config, error, match):
    with pytest.raises(error, match=match):
        sd.block_from_config(config)
    with pytest.raises(ValueError, match="not a ShapedMLP"):
        sd.ShapedMLP.from_config(sd.ShapedAttention().config())


def test_a_loaded_result_runs_again(tmp_path):
    """Before: there was no way to rebuild the block of a saved result."""
    block = sd.ShapedTransformerBlock(sd.ShapedAttention(tau0=0.5), sd.ShapedMLP())
    first = sd.solve_sde(block, V2, key=jax.random.key(3), n_paths=8, normalize="rms",
                         **TINY)
    cfg = Trajectories.load(first.save(tmp_path / "run.npz")).config
    key = jax.random.wrap_key_data(np.asarray(cfg["key"]["data"], np.uint32),
                                   impl=cfg["key"]["impl"])
    again = sd.solve_sde(sd.block_from_config(cfg["block"]), np.asarray(cfg["V0"]), cfg["T"],
                         key=key, dt=cfg["dt_requested"], tol=cfg["tol"] or defaults.TOL,
                         n_paths=cfg["n_paths"], n_save=len(first.t),
                         normalize=cfg["normalize"], solver=cfg["solver"],
                         scheme=cfg["scheme"], blowup_bound=cfg["blowup_bound"],
                         dtype=cfg["dtype"], first_path=cfg["first_path"])
    np.testing.assert_array_equal(again.V, first.V)
    assert again.config == first.config
