"""Container for sampled covariance paths V_t, t = layer / width, from an SDE or a network."""

from __future__ import annotations

import dataclasses
import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from . import metrics

__all__ = ["FORMAT_VERSION", "Trajectories"]

FORMAT_VERSION = 1
"""Version of the .npz layout written by :meth:`Trajectories.save`."""

_ARRAY_FIELDS = ("t", "V", "exploded", "explosion_time", "psd_repairs")


@dataclass(frozen=True, repr=False, eq=False)
class Trajectories:
    """Samples of covariance paths V_t on a common time grid.

    Attributes:
        t: saved times, shape (k,), float.
        V: covariances, shape (samples, k, m, m), float; never contains NaN. An exploded path
            is frozen at its last finite value from its explosion time on.
        exploded: shape (samples,), bool; True where the path left the explosion bound.
        explosion_time: shape (samples,), float; the explosion time, ``inf`` where not exploded.
        psd_repairs: shape (samples,), int; number of steps at which V left the PSD cone and
            was projected back. Defaults to zeros.
        config: JSON-serialisable description of what produced the paths, e.g.
            ``{"kind": "sde", "block": {...}, "T": 1.0, ...}``.
    """

    t: NDArray[np.floating]
    V: NDArray[np.floating]
    exploded: NDArray[np.bool_]
    explosion_time: NDArray[np.floating]
    psd_repairs: NDArray[np.integer] | None = None
    config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        t = np.asarray(self.t)
        V = np.asarray(self.V)
        if V.ndim != 4 or V.shape[-1] != V.shape[-2]:
            raise ValueError(f"Trajectories.V must have shape (samples, k, m, m), got {V.shape}")
        samples, k = V.shape[:2]
        if t.shape != (k,):
            raise ValueError(f"Trajectories.t must have shape ({k},) to match V, got {t.shape}")
        if not np.all(np.isfinite(t)) or np.any(np.diff(t) <= 0):
            raise ValueError(f"Trajectories.t must be finite and strictly increasing, got "
                             f"{np.array2string(t, threshold=6)}")
        if np.isnan(V).any():
            bad = np.unique(np.nonzero(np.isnan(V))[0])
            raise ValueError(
                f"Trajectories.V contains NaN: {bad.size} of {samples} paths affected "
                f"(first: {bad[:5].tolist()}); freeze and flag exploded paths instead"
            )
        repairs = self.psd_repairs
        repairs = np.zeros(samples, dtype=np.int64) if repairs is None else np.asarray(repairs)
        per_sample = {
            "exploded": np.asarray(self.exploded),
            "explosion_time": np.asarray(self.explosion_time),
            "psd_repairs": repairs,
        }
        for name, arr in per_sample.items():
            if arr.shape != (samples,):
                raise ValueError(
                    f"Trajectories.{name} must have shape ({samples},) to match V, got {arr.shape}"
                )
        exploded = per_sample["exploded"].astype(bool)
        explosion_time = per_sample["explosion_time"].astype(np.float64)
        if np.isfinite(explosion_time[~exploded]).any():
            raise ValueError("Trajectories.explosion_time must be inf where exploded is False")
        if not isinstance(self.config, dict):
            raise ValueError(f"Trajectories.config must be a dict, got {type(self.config)}")
        set_ = object.__setattr__  # frozen dataclass: normalise dtypes once, here
        set_(self, "t", t.astype(np.float64, copy=False))
        set_(self, "V", V if np.issubdtype(V.dtype, np.floating) else V.astype(np.float64))
        set_(self, "exploded", exploded)
        set_(self, "explosion_time", explosion_time)
        set_(self, "psd_repairs", repairs.astype(np.int64, copy=False))

    # --- shape information -------------------------------------------------------------------

    @property
    def n_samples(self) -> int:
        """Number of sampled paths."""
        return self.V.shape[0]

    @property
    def n_times(self) -> int:
        """Number of saved times k."""
        return self.V.shape[1]

    @property
    def n_tokens(self) -> int:
        """Number of tokens m."""
        return self.V.shape[-1]

    @property
    def kind(self) -> str:
        """``config["kind"]`` (e.g. "sde" or "network"), or "trajectories" if unset."""
        return str(self.config.get("kind", "trajectories"))

    @property
    def exploded_fraction(self) -> float:
        """Fraction of paths that exploded (0.0 for an empty sample)."""
        return float(self.exploded.mean()) if self.n_samples else 0.0

    # --- derived quantities ------------------------------------------------------------------

    def correlation(self) -> NDArray[np.float64]:
        """Correlations rho_ab = V_ab / sqrt(V_aa V_bb), shape (samples, k, m, m)."""
        return metrics.correlation(self.V)

    def valid(self) -> Trajectories:
        """The non-exploded paths only (config is shared, not copied)."""
        keep = ~self.exploded
        return dataclasses.replace(
            self,
            V=self.V[keep],
            exploded=self.exploded[keep],
            explosion_time=self.explosion_time[keep],
            psd_repairs=self.psd_repairs[keep],
        )

    def at(self, t: float) -> int:
        """Index of the saved time closest to ``t``.

        Raises ValueError if that time is farther than 1e-6 * max(1, |t|) from ``t``.
        """
        if self.n_times == 0:
            raise ValueError("Trajectories has no saved times")
        i = int(np.argmin(np.abs(self.t - t)))
        if abs(self.t[i] - t) > 1e-6 * max(1.0, abs(t)):
            raise ValueError(f"time {t} is not a saved time; closest is t[{i}] = {self.t[i]}")
        return i

    # --- input / output ----------------------------------------------------------------------

    @staticmethod
    def npz_path(path: str | Path) -> Path:
        """The file :meth:`save` writes for ``path``: ``.npz`` appended if missing."""
        path = Path(path)
        return path if path.suffix == ".npz" else path.with_name(path.name + ".npz")

    def save(self, path: str | Path) -> Path:
        """Write to a compressed .npz (``.npz`` appended if missing; missing parent folders
        are created); return the path written."""
        path = self.npz_path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            path,
            **{name: getattr(self, name) for name in _ARRAY_FIELDS},
            config_json=np.array(json.dumps(self.config)),
            format_version=np.array(FORMAT_VERSION),
        )
        return path

    @classmethod
    def load(cls, path: str | Path) -> Trajectories:
        """Read a file written by :meth:`save` (exact round trip).

        Raises:
            FileNotFoundError: no such file.
            ValueError: "<path>: not a shapedsde trajectories file (<reason>)" for anything
                else (another format, an empty or truncated file, another .npz, a broken
                config, inconsistent arrays such as non-increasing times), or an unsupported
                format_version.
        """
        path = Path(path)
        if not path.exists() and path.suffix != ".npz":
            path = path.with_name(path.name + ".npz")
        if not path.exists():
            raise FileNotFoundError(f"{path}: no such file")

        def invalid(reason: str) -> ValueError:
            return ValueError(f"{path}: not a shapedsde trajectories file ({reason})")

        try:
            data = np.load(path, allow_pickle=False)
        except EOFError:
            raise invalid("empty file") from None
        except ValueError:  # NumPy's guess for anything that is neither .npy nor .npz
            raise invalid("not an .npz archive") from None
        except (OSError, zipfile.BadZipFile) as err:
            raise invalid(f"not a readable .npz archive: {err}") from None
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise invalid("a single .npy array, not an .npz archive")
        with data:
            missing = [k for k in (*_ARRAY_FIELDS, "config_json", "format_version")
                       if k not in data.files]
            if missing:
                raise invalid(f"missing {', '.join(missing)}")
            try:
                version = int(data["format_version"])
                arrays = {name: data[name] for name in _ARRAY_FIELDS}
                config = json.loads(str(data["config_json"]))  # JSONDecodeError: a ValueError
            except (ValueError, OSError, TypeError, EOFError, zipfile.BadZipFile) as err:
                raise invalid(f"unreadable entry: {err}") from None
        if version != FORMAT_VERSION:
            raise ValueError(f"{path}: format_version {version} is not supported (expected "
                             f"{FORMAT_VERSION})")
        try:
            return cls(**arrays, config=config)
        except ValueError as err:
            raise invalid(str(err)) from None

    # --- display -----------------------------------------------------------------------------

    def summary(self) -> str:
        """Short multi-line description, with the median off-diagonal correlation at the end."""
        lines = [
            f"kind:             {self.kind}",
            f"samples:          {self.n_samples}",
            f"tokens:           {self.n_tokens}",
            f"times:            {self.n_times}"
            + (f" (t = {self.t[0]:g} .. {self.t[-1]:g})" if self.n_times else ""),
            f"exploded:         {self.exploded_fraction:.1%}",
        ]
        ok = self.valid()
        m = self.n_tokens
        if ok.n_samples and ok.n_times and m > 1:
            rho = metrics.correlation(ok.V[:, -1])
            a, b = np.triu_indices(m, k=1)
            median = float(np.median(rho[:, a, b]))
            lines.append(f"median rho(T):    {median:.4f}  (off-diagonal, non-exploded paths)")
        else:
            lines.append("median rho(T):    n/a")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"Trajectories(kind={self.kind!r}, samples={self.n_samples}, "
            f"tokens={self.n_tokens}, times={self.n_times}, "
            f"exploded={int(self.exploded.sum())})"
        )
