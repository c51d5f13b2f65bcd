"""The command line's --mask and --positions (issue 28): named patterns and .npy files, printed
in the configuration line, stored with the results, and bad values as one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
from test_cli import FAST, no_work  # noqa: F401 - the fixture is used by name

import shapedsde as sd
from experiments._common import block_from_config
from shapedsde.analysis.trajectories import Trajectories
from shapedsde.cli import (
    block_description,
    build_block,
    ignored_options,
    main,
    make_parser,
    parse_mask,
    parse_positions,
)


def test_patterns_and_files(tmp_path):
    assert parse_mask("causal", 4) == sd.causal_mask(4)
    assert parse_mask("padding:3", 4) == sd.padding_mask(4, 3)
    assert parse_mask("window:2:causal", 5) == sd.sliding_window_mask(5, 2, causal=True)
    assert parse_mask("block:2", 4) == sd.block_mask(4, 2)
    assert parse_positions("decay:0.5:2", 3).same_as(sd.decay_gram(3, 0.5, 2.0))
    assert parse_positions("sinusoidal:1:8", 3).same_as(sd.sinusoidal_gram(3, 1.0, 8))
    np.save(tmp_path / "mask.npy", np.tri(3, dtype=bool))
    mask = parse_mask(str(tmp_path / "mask.npy"), 3)
    np.testing.assert_array_equal(mask.array, np.tri(3, dtype=bool))
    block = sd.ShapedAttention(mask=mask, positions=sd.decay_gram(3, 0.5))
    text = block_description(block)
    assert f"mask=custom(m=3, source={tmp_path / 'mask.npy'})" in text
    assert "positions=decay(m=3, rho=0.5, scale=1)" in text


def test_simulate_prints_and_stores_mask_and_positions(tmp_path, capsys):
    """One run with a named mask and a positional Gram from a .npy file: the configuration line
    names both, and the saved config rebuilds the block."""
    gram = 0.5 * sd.decay_gram(4, 0.3).matrix()
    np.save(tmp_path / "pi.npy", gram)
    out = tmp_path / "s.npz"
    argv = ["simulate", *FAST, "--dt", "1/16", "--mask", "window:2", "--positions",
            str(tmp_path / "pi.npy"), "--out", str(out)]
    assert main(argv) == 0
    header = capsys.readouterr().out.splitlines()[0]
    assert "mask=sliding_window(m=4, w=2, causal=False)" in header
    assert f"positions=custom(m=4, source={tmp_path / 'pi.npy'})" in header
    config = Trajectories.load(out).config["block"]
    assert config["mask"] == {"kind": "sliding_window", "m": 4, "w": 2, "causal": False}
    np.testing.assert_allclose(config["positions"]["gram"], gram)
    rebuilt = block_from_config(config)
    assert rebuilt.mask == sd.sliding_window_mask(4, 2)
    np.testing.assert_allclose(rebuilt.positions.matrix(), gram)


@pytest.mark.parametrize("extra, name", [
    (["--mask", "diagonal"], "--mask: unknown pattern 'diagonal'"),
    (["--mask", "window:two"], "--mask: 'two' in 'window:two' is not a valid int"),
    (["--mask", "padding:9"], "--mask padding:9: k (real tokens) must be <= m = 4"),
    (["--mask", "{tmp}/rowless.npy"], "has no allowed key"),
    (["--mask", "{tmp}/m5.npy"], "mask is 5 x 5"),
    (["--positions", "decay:1.5"], "--positions decay:1.5: rho must lie in"),
    (["--positions", "{tmp}/bad.npy"], "must be positive semi-definite"),
    (["--positions", "{tmp}/missing.npy"], "--positions: cannot read"),
    (["--causal", "--mask", "causal"], "either causal=True or mask"),
])
def test_bad_mask_and_positions_give_one_line_error(tmp_path, capsys, no_work,  # noqa: F811
                                                    extra, name):
    rowless = np.ones((4, 4), bool)
    rowless[1] = False
    np.save(tmp_path / "rowless.npy", rowless)
    np.save(tmp_path / "m5.npy", np.ones((5, 5), bool))
    np.save(tmp_path / "bad.npy", np.array([[1.0, 2.0, 0, 0], [2.0, 1.0, 0, 0], [0, 0, 1, 0],
                                            [0, 0, 0, 1]]))
    extra = [a.replace("{tmp}", str(tmp_path)) for a in extra]
    assert main(["compare", *FAST, "--width", "16", "--out", str(tmp_path / "f.png"),
                 *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("shapedsde: error: ") and name in err[0]


def test_mask_and_positions_are_ignored_for_the_mlp():
    args = make_parser().parse_args(["simulate", "--block", "mlp", "--mask", "causal",
                                     "--positions", "decay:0.5"])
    assert ignored_options(args) == ["--mask", "--positions"]
    assert not isinstance(build_block(args), sd.ShapedAttention)
