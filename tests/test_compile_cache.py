"""Tests of the opt-in persistent compilation cache (shapedsde.compile_cache)."""

import os
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest

from shapedsde import compile_cache
from shapedsde.analysis.trajectories import Trajectories
from shapedsde.compile_cache import (
    CACHE_ENV,
    cache_from_environment,
    default_cache_dir,
    enable_compilation_cache,
    machine_tag,
)


@pytest.fixture
def restore_cache_dir():
    """Put JAX's cache folder back as it was (these tests compile nothing while it is set)."""
    before = jax.config.jax_compilation_cache_dir
    yield
    jax.config.update("jax_compilation_cache_dir", before)


def test_default_folder_follows_xdg_and_the_tag_names_versions_and_machine(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_cache_dir() == tmp_path / "shapedsde" / "jax"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_cache_dir() == Path(os.path.expanduser("~/.cache/shapedsde/jax"))
    tag = machine_tag()
    assert tag == machine_tag() and tag.startswith(f"jax{jax.__version__}-")


def test_enabling_sets_a_machine_subfolder_and_keeps_a_folder_already_chosen(
        tmp_path, restore_cache_dir):
    jax.config.update("jax_compilation_cache_dir", None)
    folder = enable_compilation_cache(tmp_path / "cache")
    assert folder == tmp_path / "cache" / machine_tag() and folder.is_dir()
    assert jax.config.jax_compilation_cache_dir == str(folder)
    assert enable_compilation_cache(tmp_path / "other") == folder  # already chosen: kept
    assert not (tmp_path / "other").exists()


def test_a_folder_that_cannot_be_made_leaves_the_cache_off(tmp_path, restore_cache_dir):
    jax.config.update("jax_compilation_cache_dir", None)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    assert enable_compilation_cache(blocker / "cache") is None
    assert not jax.config.jax_compilation_cache_dir


def test_environment_turns_it_on_only_when_set(monkeypatch, tmp_path, restore_cache_dir):
    jax.config.update("jax_compilation_cache_dir", None)
    monkeypatch.delenv(CACHE_ENV, raising=False)
    assert cache_from_environment() is None and not jax.config.jax_compilation_cache_dir
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(CACHE_ENV, str(blocker / "cache"))
    with pytest.warns(RuntimeWarning, match="cannot create or write"):
        assert cache_from_environment() is None
    monkeypatch.setenv(CACHE_ENV, "default")
    monkeypatch.setattr(compile_cache, "default_cache_dir", lambda: tmp_path / "xdg")
    assert cache_from_environment() == tmp_path / "xdg" / machine_tag()


COUNT_HITS_AND_RUN = """
import sys, jax
from shapedsde.cli import main
hits = []
HIT = "/jax/compilation_cache/cache_hits"
jax.monitoring.register_event_listener(lambda event, **kw: event == HIT and hits.append(event))
status = main(sys.argv[1:])
print("cache hits:", len(hits))
sys.exit(status)
"""


@pytest.mark.slow  # two fresh processes, each compiling or loading the solver
def test_cli_runs_load_the_cache_and_give_the_same_result(tmp_path):
    """The first process writes the compiled programs, the second loads them (JAX counts
    the hits) and gives bit-identical paths and step error."""
    env = {**os.environ, CACHE_ENV: str(tmp_path / "cache")}
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    outs, hits = [], []
    for run in range(2):
        out = tmp_path / f"run{run}.npz"
        proc = subprocess.run(
            [sys.executable, "-c", COUNT_HITS_AND_RUN, "simulate", "--paths", "64", "--T",
             "0.25", "--n-save", "5", "--no-progress", "--out", str(out)],
            capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr
        entries = list((tmp_path / "cache" / machine_tag()).iterdir())
        assert entries, "the first run wrote no compiled program"
        hits.append(int(proc.stdout.rsplit("cache hits:", 1)[1]))
        outs.append(Trajectories.load(out))
    assert hits[0] == 0 and hits[1] > 0, hits
    np.testing.assert_array_equal(outs[0].V, outs[1].V)
    assert outs[0].config["step_error"] == outs[1].config["step_error"]


def test_cli_warns_in_one_line_when_the_cache_folder_cannot_be_used(
        monkeypatch, tmp_path, capsys, restore_cache_dir):
    from shapedsde.cli import main

    jax.config.update("jax_compilation_cache_dir", None)
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    monkeypatch.setenv(CACHE_ENV, str(blocker / "cache"))
    assert main(["compare", "--gamma", "2"]) == 2  # fails after the cache step, quickly
    err = capsys.readouterr().err
    assert f"shapedsde: warning: {CACHE_ENV}=" in err and "Traceback" not in err
