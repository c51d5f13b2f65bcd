"""Tests of shapedsde.analysis.plotting: the figure is written and is a non-trivial PNG."""

import numpy as np
import pytest

from shapedsde.analysis.plotting import plot_correlation_bands
from shapedsde.analysis.trajectories import Trajectories

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def paths(seed: int, m: int, kind: str, samples: int = 50, k: int = 6) -> Trajectories:
    """Wishart draws V = X X^T / 8 at k times, with correlation increasing in t."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 1.0, k)
    X = rng.standard_normal((samples, k, m, 8)) + t[:, None, None] * rng.standard_normal(8)
    exploded = np.zeros(samples, dtype=bool)
    exploded[0] = True
    return Trajectories(
        t=t,
        V=X @ np.swapaxes(X, -1, -2) / 8,
        exploded=exploded,
        explosion_time=np.where(exploded, 0.5, np.inf),
        config={"kind": kind},
    )


@pytest.mark.parametrize("m", [2, 4])
def test_writes_png(tmp_path, m):
    target = tmp_path / "figs" / "bands.png"  # parent does not exist yet
    out = plot_correlation_bands(
        {"sde": paths(0, m, "sde"), "network": paths(1, m, "network")},
        str(target),
        title="test",
    )
    assert out == target and out.is_file()
    data = out.read_bytes()
    assert data.startswith(PNG_SIGNATURE) and len(data) > 10_000


def test_rejects_bad_input(tmp_path):
    with pytest.raises(ValueError, match="empty"):
        plot_correlation_bands({}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="same number of tokens"):
        plot_correlation_bands({"a": paths(0, 2, "a"), "b": paths(0, 3, "b")}, tmp_path / "x.png")
    with pytest.raises(ValueError, match="lower < upper"):
        plot_correlation_bands({"a": paths(0, 2, "a")}, tmp_path / "x.png", lower=0.9, upper=0.1)
