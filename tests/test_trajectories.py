"""Tests of the Trajectories container: validation, selection, persistence, display."""

import dataclasses
import json

import numpy as np
import pytest

from shapedsde.analysis.metrics import correlation
from shapedsde.analysis.trajectories import Trajectories

CONFIG = {"kind": "sde", "block": {"name": "attention", "gamma": 0.5, "tau0": 1.0}, "T": 1.0}


def make(samples: int = 6, k: int = 5, m: int = 3, n: int = 16, seed: int = 0) -> Trajectories:
    """Wishart draws V = X X^T / n at k times in [0, 1]; paths 1 and 4 flagged as exploded."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((samples, k, m, n))
    exploded = np.zeros(samples, dtype=bool)
    exploded[[1, 4] if samples > 4 else []] = True
    return Trajectories(
        t=np.linspace(0.0, 1.0, k),
        V=(X @ np.swapaxes(X, -1, -2) / n).astype(np.float32),
        exploded=exploded,
        explosion_time=np.where(exploded, 0.75, np.inf),
        psd_repairs=np.arange(samples),
        config=CONFIG,
    )


def test_properties():
    tr = make()
    assert (tr.n_samples, tr.n_times, tr.n_tokens) == (6, 5, 3)
    assert tr.exploded_fraction == pytest.approx(2 / 6)
    assert tr.kind == "sde"
    assert tr.correlation().shape == (6, 5, 3, 3)
    np.testing.assert_array_equal(tr.correlation(), correlation(tr.V))


def test_defaults_and_dtypes():
    V = np.broadcast_to(np.eye(2), (3, 4, 2, 2))
    tr = Trajectories(t=[0, 1, 2, 3], V=V, exploded=[0, 0, 0], explosion_time=np.full(3, np.inf))
    np.testing.assert_array_equal(tr.psd_repairs, 0)
    assert tr.psd_repairs.dtype.kind == "i"
    assert tr.exploded.dtype == bool
    assert tr.t.dtype == np.float64
    assert tr.config == {}
    assert tr.kind == "trajectories"


def test_frozen():
    tr = make()
    with pytest.raises(dataclasses.FrozenInstanceError):
        tr.V = tr.V * 2  # type: ignore[misc]


def test_nan_rejected():
    tr = make()
    V = tr.V.copy()
    V[2, 3, 0, 1] = np.nan
    with pytest.raises(ValueError, match="Trajectories.V contains NaN"):
        dataclasses.replace(tr, V=V)


@pytest.mark.parametrize(
    "field, value, match",
    [
        ("t", np.linspace(0, 1, 4), r"t must have shape \(5,\)"),
        ("V", np.zeros((6, 5, 3, 2)), r"V must have shape"),
        ("V", np.zeros((5, 3, 3)), r"V must have shape"),
        ("exploded", np.zeros(5, dtype=bool), r"exploded must have shape \(6,\)"),
        ("explosion_time", np.full(7, np.inf), r"explosion_time must have shape \(6,\)"),
        ("psd_repairs", np.zeros((6, 1), dtype=int), r"psd_repairs must have shape \(6,\)"),
        ("explosion_time", np.zeros(6), r"explosion_time must be inf where exploded is False"),
    ],
)
def test_inconsistent_shapes_rejected(field, value, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(make(), **{field: value})


def test_valid_keeps_only_non_exploded_paths():
    tr = make()
    ok = tr.valid()
    keep = [0, 2, 3, 5]
    assert ok.n_samples == 4 and not ok.exploded.any()
    np.testing.assert_array_equal(ok.V, tr.V[keep])
    np.testing.assert_array_equal(ok.psd_repairs, keep)
    assert np.all(np.isinf(ok.explosion_time))
    assert ok.config == tr.config


def test_at():
    tr = make()
    assert tr.at(0.5) == 2
    assert tr.at(0.25 + 1e-8) == 1
    assert tr.at(1.0) == 4
    with pytest.raises(ValueError, match="not a saved time"):
        tr.at(0.3)


@pytest.mark.parametrize("name", ["run.npz", "run", "sub/dir/run"])
@pytest.mark.parametrize("as_str", [True, False])
def test_save_load_round_trip_is_exact(tmp_path, name, as_str):
    tr = make()
    target = tmp_path / name
    written = tr.save(str(target) if as_str else target)
    assert written.suffix == ".npz" and written.exists()
    assert written.name == "run.npz"
    back = Trajectories.load(str(written) if as_str else written)
    for f in ("t", "V", "exploded", "explosion_time", "psd_repairs"):
        a, b = getattr(tr, f), getattr(back, f)
        assert a.dtype == b.dtype, f
        np.testing.assert_array_equal(a, b, err_msg=f)
    assert back.config == CONFIG
    # the file is self-describing: config as JSON, with a format version
    with np.load(written) as data:
        assert json.loads(str(data["config_json"])) == CONFIG
        assert int(data["format_version"]) == 1


def test_load_rejects_unknown_format_version(tmp_path):
    path = make().save(tmp_path / "run")
    with np.load(path) as data:
        arrays = dict(data)
    arrays["format_version"] = np.array(99)
    np.savez_compressed(path, **arrays)
    with pytest.raises(ValueError, match="format_version 99"):
        Trajectories.load(path)


def test_summary_and_repr():
    tr = make()
    text = tr.summary()
    for piece in ("sde", "samples:          6", "tokens:           3", "times:            5"):
        assert piece in text
    assert "33.3%" in text
    rho = correlation(tr.V[[0, 2, 3, 5], -1])
    assert f"{np.median(rho[:, [0, 0, 1], [1, 2, 2]]):.4f}" in text
    r = repr(tr)
    assert r.startswith("Trajectories(") and "samples=6" in r and "exploded=2" in r
    assert len(r) < 120 and "[" not in r  # no arrays printed


# -- issue 16: every malformed file gives one clear error -----------------------------------
def _malformed(tmp_path, case: str):
    good = make().save(tmp_path / "good.npz")
    path = tmp_path / f"{case}.npz"
    if case == "png":
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(200))
    elif case == "empty":
        path.write_bytes(b"")
    elif case == "truncated":
        path.write_bytes(good.read_bytes()[:300])
    elif case == "other_npz":  # e.g. a figure's own data file
        np.savez(path, tau0=np.ones(3), config_json=np.array("{}"))
    elif case == "npy":
        path = tmp_path / "array.npy"
        np.save(path, np.ones(3))
    else:
        with np.load(good) as data:
            arrays = dict(data)
        if case == "broken_json":
            arrays["config_json"] = np.array("{broken")
        elif case == "reversed_times":
            arrays["t"] = arrays["t"][::-1].copy()
        np.savez(path, **arrays)
    return path


@pytest.mark.parametrize("case", ["png", "empty", "truncated", "other_npz", "npy",
                                  "broken_json", "reversed_times"])
def test_load_rejects_malformed_files(tmp_path, case):
    path = _malformed(tmp_path, case)
    with pytest.raises(ValueError, match="not a shapedsde trajectories file") as err:
        Trajectories.load(path)
    assert str(path) in str(err.value)


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        Trajectories.load(tmp_path / "nothing.npz")


def test_times_must_increase():
    with pytest.raises(ValueError, match="strictly increasing"):
        dataclasses.replace(make(), t=np.linspace(1.0, 0.0, 5))
