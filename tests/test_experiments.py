"""Tests of the figure scripts (experiments/) and of ``shapedsde figures``, run in-process in
--quick mode (tiny sizes; several scripts share shapes so that JAX compiles them once)."""

import json
import math
import sys

import numpy as np
import pytest

from shapedsde.cli import figure_names, load_figure, main

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
QUICK = ["--quick", "--no-progress"]
# run order: the first three share their compiled SDE and networks
ORDER = ["sde_vs_network_density", "convergence", "heads", "rank_collapse",
         "sde_vs_network_bands", "transformer_block", "hyperparameters", "blow_up", "limits",
         "masks_and_positions", "many_tokens"]


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """name -> (outdir, results) of the script's quick run, each script run once."""
    outdir = tmp_path_factory.mktemp("figures")
    done = {}

    def run(name):
        if name not in done:
            done[name] = load_figure(name).main([*QUICK, "--outdir", str(outdir)])
        return outdir, done[name]

    return run


def load(outdir, name):
    with np.load(outdir / f"{name}.npz", allow_pickle=False) as npz:
        return {k: npz[k] for k in npz.files}


def test_every_figure_is_tested():
    assert sorted(ORDER) == sorted(figure_names())


@pytest.mark.slow  # each quick run costs 1-25 s, mostly JAX compilation (about 90 s in all)
@pytest.mark.parametrize("name", ORDER)
def test_quick_run_writes_png_pdf_and_data(quick_run, name):
    outdir, results = quick_run(name)
    png, pdf = (outdir / f"{name}.png").read_bytes(), (outdir / f"{name}.pdf").read_bytes()
    assert png.startswith(PNG_SIGNATURE) and len(png) > 20_000
    assert pdf.startswith(b"%PDF") and len(pdf) > 5_000
    data = load(outdir, name)
    config = json.loads(str(data.pop("config_json")))
    assert config["figure"] == name and config["quick"] is True and config["seed"] == 0
    assert json.loads(str(data.pop("results_json")))["seconds"] == results["seconds"]
    assert data and not any(np.isnan(v).any() for v in data.values() if v.dtype.kind == "f")
    beside = json.loads((outdir / f"{name}.json").read_text())
    assert beside["config"] == config
    assert results["files"]["npz"] == str(outdir / f"{name}.npz")


@pytest.mark.slow
def test_rank_collapse_standard_collapses_shaped_does_not(quick_run):
    outdir, results = quick_run("rank_collapse")
    data = load(outdir, "rank_collapse")
    # standard attention: every token pair ends up aligned (1.000 in the quick run, depth 64)
    assert data["standard_corr_mean"][-1] > 0.9
    assert data["standard_rank_mean"][-1] < 1.1
    # shaped: -0.003 in the quick run (256 networks, per-network sd 0.4: standard error 0.03)
    assert data["shaped_corr_mean"][-1] < 0.5
    assert data["shaped_rank_mean"][-1] > 1.2
    assert results["standard_collapse_depth"] is not None
    assert results["shaped_collapse_depth"] is None


@pytest.mark.slow
def test_limits_fixed_depth_and_heads_spreads_fall_like_one_over_sqrt(quick_run):
    _, results = quick_run("limits")
    # quick run: slopes -0.51 (shaped, fixed depth 4, n = 16-64, 256 networks) and -0.50
    # (standard attention at n = infinity, H = 1, 4, 512 samples)
    assert -0.7 < results["fixed_sd_slope"] < -0.3
    assert -0.7 < results["heads_sd_slope"] < -0.3
    assert results["nngp_shaped"] == pytest.approx(0.5, abs=1e-5)  # the identity map
    assert results["single_head"]["skewness"] < -0.5  # one head: not Gaussian


@pytest.mark.slow
def test_convergence_distance_decreases_with_width(quick_run):
    outdir, _ = quick_run("convergence")
    data = load(outdir, "convergence")
    widths, ks, w1, n_net = data["widths"], data["ks"], data["w1"], data["n_net"]
    assert widths[0] < widths[-1]
    n_sde = data["sde"].size
    # if the widest network were no closer to the SDE than the narrowest, ks[0] - ks[-1] would
    # exceed this 1% two-sample KS critical value with probability below 1%
    margin = math.sqrt(-math.log(0.01 / 2) / 2) * math.sqrt(1 / n_sde + 1 / n_net[-1])
    assert ks[0] - ks[-1] > margin  # quick run: 0.29 (width 4) vs 0.13 (width 32), margin 0.07
    assert w1[0] - w1[-1] > 3 * data["floor_w1"][-1]  # quick run: 0.41 vs 0.16, floor 0.023


@pytest.mark.slow
def test_cli_figures_only_quick(tmp_path, capsys):
    # hyperparameters: its quick SDEs are compiled already when the whole module runs
    argv = ["figures", "--only", "hyperparameters", *QUICK, "--outdir", str(tmp_path)]
    assert main(argv) == 0
    for ext in ("png", "pdf", "npz", "json"):
        assert (tmp_path / f"hyperparameters.{ext}").stat().st_size > 0
    assert not (tmp_path / "heads.png").exists()
    out = capsys.readouterr().out
    assert "[1/1] hyperparameters" in out and "columns: tau0 = 1" in out


def test_cli_figures_unknown_name(tmp_path, capsys):
    assert main(["figures", "--only", "nope", *QUICK, "--outdir", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("shapedsde: error: unknown figure 'nope'; choose from ")
    assert "rank_collapse" in err[0]
    assert not any(tmp_path.iterdir())


def test_cli_figures_missing_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("shapedsde.cli.experiments_dir", lambda: tmp_path / "experiments")
    monkeypatch.delitem(sys.modules, "experiments", raising=False)
    assert main(["figures", "--quick"]) == 2
    err = capsys.readouterr().err
    assert "figure scripts were not found" in err and "Traceback" not in err


@pytest.mark.slow
def test_many_tokens_records_every_m_and_the_sde_step(quick_run):
    outdir, results = quick_run("many_tokens")
    data = load(outdir, "many_tokens")
    ms = data["tokens"]
    for name in ("sde_rank_mean", "net_rank_mean", "nngp_rank_mean"):
        assert data[name].shape == ms.shape and np.all(data[name] <= ms + 1e-6)
    # standard attention at a fixed depth from orthogonal tokens: the common component starts
    # at 1/m, so fewer tokens are further collapsed (quick run: 0.271, 0.156, 0.085)
    assert np.all(np.diff(data["nngp_corr_mean"]) < 0)
    assert len(data["causal_sde_mean"]) == data["distance"].size == ms[-1] - 1
    assert set(results["sde_steps"]) == {str(m) for m in ms}
    assert all(math.isfinite(s["step_error"]["rho"]) for s in results["sde_steps"].values())
    # the SDE at twice the step, on independent paths: the plotted means agree within what
    # noise alone reaches (at 1%, Bonferroni over each run's means)
    steps = [*results["sde_steps"].values(), results["causal_sde_step"]]
    assert results["max_step_z"] == max(s["step_z"] for s in steps)
    assert all(2.5 < s["step_z_noise"] < 4.5 for s in steps)
    assert results["max_step_z_ratio"] < 1
