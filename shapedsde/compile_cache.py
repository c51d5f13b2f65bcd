"""An opt-in persistent cache of compiled programs, so that a new process need not compile again.

The first ``solve_sde`` call of a process compiles its solver (XLA: 5-8 s on 2 cores at
m <= 8, most of a short run), and every CLI command or figure script is a new process. JAX can
keep compiled programs on disk (``jax_compilation_cache_dir``) and load them in later
processes: on the machine of ``benchmarks/README.md`` the first cool m = 8 call of a process
took 3.0 s instead of 8.0-8.4 s once the cache held its program.

It is off unless asked for, because JAX's CPU cache is not equally sound everywhere: XLA
compiles for the host's CPU features, on some CPUs its loader rejects every entry (logging an
error at each load, then compiling as without a cache), and a cache shared between machines or
JAX versions could hand a process code built for another CPU (and older JAX versions write
nothing for the CPU: with jax 0.6.2 the folder stays empty). So the folder JAX gets is a
subfolder named after the JAX and jaxlib versions and the host's CPU (architecture and feature
flags): machines sharing a home folder do not share entries. JAX treats the cache as trusted
code: keep it in a folder only you can write to.

Turn it on with ``enable_compilation_cache()`` before the first solve, or, for the CLI and the
figure scripts, by setting ``SHAPEDSDE_CACHE_DIR`` (a folder, or "default" for
``$XDG_CACHE_HOME/shapedsde/jax``, ``~/.cache/shapedsde/jax`` without it).
"""

from __future__ import annotations

import hashlib
import os
import platform
import warnings
from pathlib import Path

import jax
import jaxlib.version

CACHE_ENV = "SHAPEDSDE_CACHE_DIR"
"""Environment variable that turns the cache on for the CLI and the figure scripts."""


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/shapedsde/jax``, or ``~/.cache/shapedsde/jax`` without it."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "shapedsde" / "jax"


def machine_tag() -> str:
    """Name of this host's cache subfolder: the JAX and jaxlib versions, the architecture and a
    hash of the CPU's identity and feature flags (``/proc/cpuinfo`` where there is one)."""
    flags = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as info:
            flags = next((line for line in info if line.startswith(("flags", "Features"))), "")
    except OSError:
        pass
    identity = "|".join([jax.__version__, jaxlib.version.__version__, platform.machine(),
                         platform.processor(), flags.strip()])
    digest = hashlib.sha256(identity.encode()).hexdigest()[:12]
    return f"jax{jax.__version__}-{platform.machine() or 'cpu'}-{digest}"


def enable_compilation_cache(path: str | os.PathLike[str] | None = None) -> Path | None:
    """Let JAX keep this process's compiled programs under ``path`` (default:
    ``default_cache_dir()``), in the subfolder ``machine_tag()``, and load them from there in
    later processes. Call it before the first solve.

    A cache folder already chosen (``jax_compilation_cache_dir``, e.g. by JAX's own environment
    variable ``JAX_COMPILATION_CACHE_DIR``) is left as it is. Returns the folder in use, or None
    if the folder cannot be created or written: the run then compiles as without a cache.
    """
    current = jax.config.jax_compilation_cache_dir
    if current:
        return Path(current)
    target = (default_cache_dir() if path is None else Path(path).expanduser()) / machine_tag()
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError:
        return None
    if not os.access(target, os.W_OK | os.X_OK):
        return None
    jax.config.update("jax_compilation_cache_dir", str(target))
    return target


def cache_from_environment() -> Path | None:
    """``enable_compilation_cache`` on the folder ``SHAPEDSDE_CACHE_DIR`` names ("default":
    ``default_cache_dir()``); None, and nothing done, where it is unset or empty. A folder that
    cannot be used gets a ``RuntimeWarning`` (the run goes on without the cache)."""
    value = os.environ.get(CACHE_ENV, "").strip()
    if not value:
        return None
    folder = enable_compilation_cache(None if value == "default" else value)
    if folder is None:
        warnings.warn(f"{CACHE_ENV}={value!r}: cannot create or write that folder; compiling "
                      "without the cache", RuntimeWarning, stacklevel=2)
    return folder
