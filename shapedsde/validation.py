"""Input checks with error messages that name the parameter and its allowed range."""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Mapping
from numbers import Integral, Real
from pathlib import Path
from typing import Any, TypeVar

import jax
import numpy as np

_T = TypeVar("_T")

NORMALIZATIONS = (None, "rms")
MAX_PATHS = 2**32
"""Path (sample) indices are folded into the key as 32-bit words: first + n <= 2**32."""
MEMORY_FRACTION = 0.8
"""A result may take at most this fraction of the memory available when the call starts."""


def check_real(name: str, value: object, *, low: float | None = None, high: float | None = None,
               low_open: bool = True, high_open: bool = False, allow_inf: bool = False) -> float:
    """Return ``float(value)`` after checking it is a finite real in the stated interval."""
    if isinstance(value, bool) or not isinstance(value, Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    v = float(value)
    if math.isnan(v) or (math.isinf(v) and not allow_inf):
        raise ValueError(f"{name} must be finite, got {v}")
    lo_bad = low is not None and (v <= low if low_open else v < low)
    hi_bad = high is not None and (v >= high if high_open else v > high)
    if lo_bad or hi_bad:
        lb = "(" if low_open or low is None else "["
        hb = ")" if high_open or high is None else "]"
        lo = "-inf" if low is None else f"{low:g}"
        hi = "inf" if high is None else f"{high:g}"
        raise ValueError(f"{name} must lie in {lb}{lo}, {hi}{hb}, got {v:g}")
    return v


def from_kind(spec: Mapping[str, Any], name: str, what: str,
              constructors: Mapping[str, Callable[..., _T]], custom_field: str,
              custom: Callable[[Any, tuple[tuple[str, Any], ...]], _T]) -> _T:
    """The object a ``config()`` dict describes: ``{"kind": k, **parameters}`` for a named
    constructor, or ``{"kind": "custom", custom_field: value, **recorded}`` built by
    ``custom(value, recorded items)``; an unknown kind or bad parameters raise a ValueError
    naming ``name`` and the ``what`` it should describe (e.g. "mask")."""
    spec = dict(spec)
    kind = spec.pop("kind", None)
    if kind == "custom":
        return custom(spec.pop(custom_field, None), tuple(spec.items()))
    if kind not in constructors:
        raise ValueError(f"{name}: unknown {what} kind {kind!r}; choose from "
                         f"{', '.join(['custom', *constructors])}")
    try:
        return constructors[kind](**spec)
    except TypeError as err:
        raise ValueError(f"{name}: bad parameters for a {kind} {what}: {err}") from None


def check_int(name: str, value: object, *, low: int) -> int:
    """Return ``int(value)`` after checking it is an integer >= low."""
    if isinstance(value, bool) or not isinstance(value, Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if int(value) < low:
        raise ValueError(f"{name} must be an integer >= {low}, got {int(value)}")
    return int(value)


def check_normalize(normalize: object) -> str | None:
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be None or 'rms', got {normalize!r}")
    return normalize  # type: ignore[return-value]


def check_covariance(V0: object, name: str = "V0", dtype: str | None = None) -> np.ndarray:
    """Return V0 as a float64 (m, m) array after checking it is a valid token covariance.

    Valid means: real (a complex array is accepted only with zero imaginary part), finite,
    square with m >= 2, symmetric, positive semi-definite and with a strictly positive diagonal
    (every token has non-zero norm, so correlations exist). Tolerances are relative to the
    largest diagonal entry. With ``dtype`` ("float32" or "float64", the precision of the
    computation) the diagonal must also lie in [tiny / eps, max * eps] of that type, so that
    V0 neither underflows to zero nor overflows when it is cast.
    """
    if np.iscomplexobj(V0):
        Vc = np.asarray(V0)
        if np.any(Vc.imag != 0):
            raise ValueError(f"{name} must be real: it has a non-zero imaginary part (a complex "
                             "Hermitian matrix is not a token covariance)")
        V0 = Vc.real
    try:
        V = np.asarray(V0, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be an (m, m) array of reals: {err}") from None
    if V.ndim != 2 or V.shape[0] != V.shape[1]:
        raise ValueError(f"{name} must be a square (m, m) matrix, got shape {V.shape}")
    if V.shape[0] < 2:
        raise ValueError(f"{name} must have at least m = 2 tokens, got m = {V.shape[0]}")
    if not np.all(np.isfinite(V)):
        raise ValueError(f"{name} contains NaN or inf")
    scale = float(np.max(np.abs(V)))
    if scale == 0.0 or np.min(np.diag(V)) <= 0.0:
        raise ValueError(f"{name} must have a strictly positive diagonal (non-zero tokens)")
    tol = 1e-7 * scale
    asym = float(np.max(np.abs(V - V.T)))
    if asym > tol:
        raise ValueError(f"{name} must be symmetric, max |V - V^T| = {asym:.3g}")
    lam_min = float(np.linalg.eigvalsh(0.5 * (V + V.T))[0])
    if lam_min < -1e-6 * scale:
        raise ValueError(f"{name} must be positive semi-definite, smallest eigenvalue "
                         f"{lam_min:.3g}")
    if dtype is not None:
        info = np.finfo(check_dtype(dtype))
        low, high = float(info.tiny / info.eps), float(info.max * info.eps)
        diag = np.diag(V)
        if diag.min() < low or diag.max() > high:
            raise ValueError(
                f"{name}'s diagonal must lie in [{low:.3g}, {high:.3g}] to be represented in "
                f"{dtype}, got [{diag.min():.3g}, {diag.max():.3g}]; rescale V0"
                + (" or use dtype='float64'" if dtype == "float32" else ""))
    return 0.5 * (V + V.T)


def check_key(key: object, name: str = "key") -> jax.Array:
    """Return ``key`` after checking it is one JAX PRNG key: a typed key (``jax.random.key``)
    of shape (), or a raw uint32 key (``jax.random.PRNGKey``) of shape (2,)."""
    if isinstance(key, jax.Array):
        typed = jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)
        if (typed and key.shape == ()) or (not typed and key.dtype == np.uint32
                                             and key.ndim == 1):
            return key
        got = f"an array of shape {key.shape} and dtype {key.dtype}"
    else:
        got = type(key).__name__
    raise TypeError(f"{name} must be a single JAX PRNG key such as jax.random.key(0), got {got}")


def check_path_range(first: int, n: int, first_name: str = "first_path",
                     n_name: str = "n_paths") -> None:
    """Path indices first, ..., first + n - 1 must fit in 32 bits (they are folded into the
    key as uint32 words, and larger indices would repeat paths)."""
    if first + n > MAX_PATHS:
        what, got = (n_name, f"{n}") if first == 0 else (f"{first_name} + {n_name}",
                                                         f"{first} + {n} = {first + n}")
        raise ValueError(f"{what} must be <= 2**32 = {MAX_PATHS} (path indices are 32-bit), "
                         f"got {got}")


def available_memory() -> int | None:
    """Bytes of memory available to a new allocation now (MemAvailable of /proc/meminfo, else
    the free physical pages); None where the system does not say."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_result_size(n_paths: int, n_times: int, m: int, dtype: str, *, copies: int = 1,
                      names: tuple[str, str] = ("n_paths", "n_save"),
                      split: str = "split the run over several calls with first_path") -> int:
    """Check that ``copies`` results of n_paths x n_times covariances (m x m of ``dtype``) fit
    in ``MEMORY_FRACTION`` of the available memory; return their size in bytes."""
    need = copies * n_paths * n_times * m * m * np.dtype(check_dtype(dtype)).itemsize
    free = available_memory()
    if free is not None and need > MEMORY_FRACTION * free:
        what = f"{copies} x " if copies > 1 else ""
        raise ValueError(
            f"the result would take {need / 1e9:.3g} GB ({what}{n_paths} paths x {n_times} saved "
            f"times x {m} x {m} {dtype}), more than {MEMORY_FRACTION:.0%} of the "
            f"{free / 1e9:.3g} GB of memory available: use fewer paths ({names[0]}), fewer "
            f"saved times ({names[1]}), or {split}")
    return need


def check_output_file(path: str | Path, name: str, *, create_folder: bool = False) -> Path:
    """Check, before any work, that ``path`` can be written: not a folder, its folder exists
    (or, with ``create_folder``, can be created) and is writable. Returns ``Path(path)``."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{name} {path} is a folder; give a file name")
    check_output_folder(path.parent, name, create=create_folder)
    if path.exists() and not os.access(path, os.W_OK):
        raise ValueError(f"{name}: cannot overwrite {path} (no write permission)")
    return path


def check_output_folder(folder: str | Path, name: str, *, create: bool = False) -> Path:
    """Check that ``folder`` exists and a file can be written in it; with ``create`` a missing
    folder is accepted if its nearest existing ancestor is writable (the caller creates it)."""
    folder = Path(folder)
    probe = folder
    if create:
        while not probe.exists() and probe != probe.parent:
            probe = probe.parent
    if not probe.exists():
        raise ValueError(f"{name}: folder {folder} does not exist")
    if not probe.is_dir():
        raise ValueError(f"{name}: {probe} is not a folder")
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as err:
        raise ValueError(f"{name}: cannot write in folder {probe} ({err.strerror})") from None
    return folder


def check_figure_path(path: str | Path, name: str, *, create_folder: bool = False) -> Path:
    """``check_output_file`` for a figure, whose suffix must be a format matplotlib writes (no
    suffix: PNG)."""
    from matplotlib.backend_bases import FigureCanvasBase

    path = Path(path)
    formats = FigureCanvasBase.get_supported_filetypes()
    if path.suffix and path.suffix[1:].lower() not in formats:
        raise ValueError(f"{name}: cannot write a figure as {path.suffix!r}; use one of "
                         f"{', '.join('.' + f for f in sorted(formats))}")
    return check_output_file(path, name, create_folder=create_folder)


def check_width(width: object, m: int) -> int:
    """The width n must be an integer with n >= m (the tokens must fit in feature space)."""
    n = check_int("width", width, low=1)
    if n < m:
        raise ValueError(f"width must be >= number of tokens m = {m}, got {n}")
    return n


def check_dtype(dtype: object) -> str:
    if dtype not in ("float32", "float64"):
        raise ValueError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
    return dtype  # type: ignore[return-value]
