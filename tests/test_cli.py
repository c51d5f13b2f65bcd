"""Tests of the command-line interface (shapedsde.cli), run in-process on tiny problems."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

from shapedsde.analysis.trajectories import Trajectories
from shapedsde.cli import coinciding_n_save, main, make_parser

README_EXAMPLE = re.compile(r"```python\n(.*?)```", re.S)

# Tiny sizes shared by the runs below (same shapes, so the compiled solver is reused).
FAST = ["--paths", "64", "--T", "0.25", "--n-save", "5", "--no-progress"]


def test_help_exits_zero(capsys):
    assert main(["--help"]) == 0
    assert "compare" in capsys.readouterr().out
    assert main(["compare", "--help"]) == 0
    out = capsys.readouterr().out
    assert "--width" in out and "default: 128" in out


def test_simulate_writes_loadable_npz(tmp_path, capsys):
    out = tmp_path / "sde"  # ".npz" is appended
    assert main(["simulate", *FAST, "--out", str(out)]) == 0
    traj = Trajectories.load(tmp_path / "sde.npz")
    assert traj.V.shape == (64, 5, 4, 4)
    assert traj.kind == "sde"
    printed = capsys.readouterr().out
    assert "median rho(T)" in printed and str(tmp_path / "sde.npz") in printed


def test_compare_writes_figure_and_table(tmp_path, capsys):
    fig = tmp_path / "figs" / "demo.png"
    fig.parent.mkdir()  # the folder of --out must exist (only the default one is created)
    data = tmp_path / "data"  # --save-data DIR is created
    # method "full" compiles faster than the reduced simulator (used by the slow test below)
    argv = ["compare", *FAST, "--width", "16", "--method", "full", "--out", str(fig),
            "--save-data", str(data)]
    assert main(argv) == 0
    assert fig.is_file() and fig.stat().st_size > 0
    assert fig.read_bytes().startswith(b"\x89PNG")
    out = capsys.readouterr().out
    assert "rho[0,1]" in out and "exploded: SDE" in out and str(fig) in out
    sde, net = Trajectories.load(data / "sde.npz"), Trajectories.load(data / "network.npz")
    assert sde.t == pytest.approx(net.t)  # save times coincide: depth 4, n_save 5


@pytest.mark.slow  # compiles the un-normalised SDE and network (about 20 s)
def test_compare_unnormalised_with_adjusted_n_save(tmp_path, capsys):
    # depth = round(0.25 * 12) = 3: n_save = 5 is reduced to 4 so that save times coincide
    argv = ["compare", *FAST, "--width", "12", "--normalize", "none",
            "--out", str(tmp_path / "none.png")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "using n-save = 4" in out
    assert "exploded: SDE" in out and "V[0,0]" in out and "(constant)" not in out
    assert (tmp_path / "none.png").is_file()


def test_coinciding_n_save():
    assert coinciding_n_save(128, 17) == 17
    assert coinciding_n_save(4, 17) == 5
    assert coinciding_n_save(12, 9) == 7
    assert coinciding_n_save(7, 5) == 2


@pytest.mark.parametrize(
    "extra, name",
    [
        (["--gamma", "1.5"], "gamma"),
        (["--gamma", "0"], "gamma"),
        (["--tau0", "0"], "tau0"),
        (["--tau0", "-1"], "tau0"),
        (["--width", "2", "--tokens", "4"], "width"),
        (["--tokens", "1"], "tokens"),
        (["--paths", "0"], "paths"),
        (["--T", "nan"], "T"),
        (["--T", "0.01", "--width", "16"], "depth"),
        (["--heads", "0"], "heads"),
        (["--n-save", "1"], "n-save"),
        (["--dt", "0"], "dt"),
        (["--tol", "0"], "tol"),
        (["--tol", "nan"], "tol"),
        (["--solver", "rk4"], "solver"),
        (["--block", "attention", "--causal", "--solver", "congruence"], "congruence"),
    ],
)
def test_bad_values_give_one_line_error(tmp_path, capsys, extra, name):
    argv = ["compare", *FAST, "--width", "16", "--out", str(tmp_path / "f.png"), *extra]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("shapedsde: error: ") and name in err[0]
    assert not (tmp_path / "f.png").exists()


@pytest.mark.parametrize("extra", [["--gamma", "2"], ["--tokens", "1"], ["--T", "-1"]])
def test_simulate_bad_values(tmp_path, capsys, extra):
    assert main(["simulate", *FAST, "--out", str(tmp_path / "s.npz"), *extra]) == 2
    assert capsys.readouterr().err.startswith("shapedsde: error: ")


def test_argparse_errors_exit_two(capsys):
    assert main(["compare", "--width", "2.5"]) == 2
    assert main(["compare", "--gamma", "abc"]) == 2
    assert main(["frobnicate"]) == 2
    assert "Traceback" not in capsys.readouterr().err


def test_module_entry_point_no_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "shapedsde.cli", "simulate", "--gamma", "2",
         "--out", str(tmp_path / "s.npz")],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "shapedsde: error: gamma must lie in (0, 1], got 2" in proc.stderr


@pytest.mark.slow  # compiles two more SDEs and networks
@pytest.mark.parametrize("block", ["mlp", "transformer"])
def test_compare_other_blocks(tmp_path, capsys, block):
    argv = ["compare", *FAST, "--block", block, "--width", "16", "--method", "full",
            "--heads", "2", "--out", str(tmp_path / "b.png")]
    assert main(argv) == 0
    out = capsys.readouterr().out
    name = {"mlp": "ShapedMLP", "transformer": "Serial(ShapedAttention"}[block]
    assert out.startswith(name) and "rho[0,1]" in out


def test_infinite_heads_only_for_the_sde(tmp_path, capsys):
    assert main(["simulate", *FAST, "--heads", "inf", "--out", str(tmp_path / "s.npz")]) == 0
    assert main(["compare", *FAST, "--heads", "inf", "--width", "16"]) == 2
    assert "heads=math.inf exists only in the SDE limit" in capsys.readouterr().err


# -- issue 16: every error before the work, the configuration actually used ----------------
@pytest.fixture
def no_work(monkeypatch):
    """Make any computation fail the test: the errors below must come before it."""
    import functools

    import shapedsde.network
    import shapedsde.sde

    def forbid(fn):
        @functools.wraps(fn)
        def run(*args, **kwargs):
            raise AssertionError(f"{fn.__name__} ran before the arguments were checked")
        return run

    monkeypatch.setattr(shapedsde.sde, "solve_sde", forbid(shapedsde.sde.solve_sde))
    monkeypatch.setattr(shapedsde.network, "simulate_network",
                        forbid(shapedsde.network.simulate_network))


@pytest.mark.parametrize(
    "argv, name",
    [
        (["simulate", "--out", "/etc/passwd/x.npz"], "--out"),  # parent is a file
        (["simulate", "--out", "/proc/x.npz"], "--out"),  # folder not writable
        (["compare", "--out", "{tmp}"], "--out"),  # a folder, not a file
        (["simulate", "--out", "{tmp}/missing/x.npz"], "--out"),  # no silent mkdir
        (["compare", "--out", "{tmp}/x.txt"], "--out"),  # not a figure format
        (["compare", "--out", "{tmp}/f.png", "--save-data", "/etc/passwd/d"], "--save-data"),
        (["simulate", "--paths", "1000000000000", "--out", "{tmp}/s.npz"], "--paths"),
        (["compare", "--paths", "4294967297", "--out", "{tmp}/f.png"], "--paths"),
    ],
)
def test_errors_before_any_work(tmp_path, capsys, no_work, argv, name):
    argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
    assert main([*argv, "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("shapedsde: error: ") and name in err[0]
    assert not (tmp_path / "missing").exists()


def test_result_size_checked_before_work(tmp_path, capsys, no_work, monkeypatch):
    from shapedsde import validation

    monkeypatch.setattr(validation, "available_memory", lambda: 24 * 10**9)
    # 10^8 paths x 17 times x 4 x 4 float32 = 109 GB on a 24 GB machine
    assert main(["simulate", "--paths", str(10**8), "--out", str(tmp_path / "s.npz")]) == 2
    err = capsys.readouterr().err
    assert "109 GB" in err and "--paths" in err and "--n-save" in err


def test_version(capsys):
    from shapedsde import __version__

    with pytest.raises(SystemExit) as stop:
        make_parser().parse_args(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"shapedsde {__version__}"


def test_prints_configuration_used_and_records_seed(tmp_path, capsys):
    out = tmp_path / "mlp.npz"
    argv = ["simulate", *FAST, "--block", "mlp", "--heads", "4", "--causal", "--tau0", "0.3",
            "--dt", "2", "--seed", "7", "--out", str(out)]
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "--tau0, --heads, --causal do not apply to --block mlp" in captured.err
    header = captured.out.splitlines()[0]
    assert header.startswith("ShapedMLP(gamma=0.5, c_plus=0, c_minus=-1)")
    assert "tau0" not in header and "heads" not in header and "seed=7" in header
    # the step actually taken (T = 0.25 with 5 save times: 1/16), not the requested dt = 2
    assert "SDE step (euler solver): dt = 0.0625" in captured.out
    assert "shapedsde: warning: solve_sde: dt = 2 refined to 0.0625" in captured.err
    config = Trajectories.load(out).config
    assert config["seed"] == 7 and config["key"]["data"] == [0, 7]


REPO = Path(__file__).resolve().parents[1]


def test_demo_and_readme_example_leave_the_checkout_clean():
    """make demo writes where git does not track, and the README example writes no file
    (before: figures/demo.png, tracked, and figures/example.png)."""
    recipe = (REPO / "Makefile").read_text().split("\ndemo:", 1)[1].split("\n\n", 1)[0]
    out = recipe.split("--out", 1)[1].split()[0]
    assert out.startswith("results/")
    gitignore = (REPO / ".gitignore").read_text().split()
    assert "results/" in gitignore
    example = README_EXAMPLE.search((REPO / "README.md").read_text()).group(1)
    assert "figures/" not in example
    assert not re.search(r"\.save\(|savefig|plot_correlation_bands|open\(", example)
    assert make_parser().parse_args(["compare"]).out == Path("results/demo.png")
