r"""Euler-Maruyama integration of the covariance SDE with diffrax, batched over paths.

    dV = b(V) dt + noise(V, L, dW),   L L^T = V,   dW: ``block.n_noise`` m x m Brownian matrices

The noise is the block's "cheap noise" (O(m^3) per step, no m^2 x m^2 square root). After each
Euler step the solver (``_GuardedEuler``) keeps V on the state space:

* symmetrises V and projects it back onto the PSD cone when the step left it (counted per path
  in ``Trajectories.psd_repairs``); the eigendecomposition also gives the square root L used by
  the next step, so one ``eigh`` per step is the whole linear-algebra cost;
* ``normalize="rms"``, scheme "project": applies f(V) = D^{-1/2} V D^{-1/2} after the step, as
  the network does after every block (consistent with the Ito-transformed SDE to O(dt));
  scheme "ito": integrates the Ito-transformed coefficients of ``shapedsde.normalize``;
* blow-up (SPEC section 3): a step that leaves ``|V_ab| <= blowup_bound * max_a V0_aa`` or is
  not finite freezes the path at its last state and records the explosion time.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jax import Array

from ._batching import run_chunked
from ._precision import resolve_dtype
from .blocks.base import Block
from .linalg import psd_parts, sym
from .normalize import ito_drift, ito_noise, rms
from .trajectories import Trajectories
from .validation import check_covariance, check_int, check_normalize, check_real

SCHEMES = ("project", "ito")


class SDEState(NamedTuple):
    V: Array  # (m, m) covariance
    L: Array  # (m, m) square root of V, L L^T = V
    t_explode: Array  # time of blow-up, -1 while the path is alive
    repairs: Array  # number of steps that left the PSD cone


class _DriftTerm(diffrax.AbstractTerm):
    """Drift term acting on the covariance part of the state: control dt, product b(V) dt."""

    sde: CovarianceSDE

    def vf(self, t, y: SDEState, args) -> Array:
        return self.sde.drift(y)

    def contr(self, t0, t1, **kwargs):
        return t1 - t0

    def prod(self, vf: Array, control) -> Array:
        return vf * control


class _NoiseTerm(diffrax.AbstractTerm):
    """Matrix-Brownian noise term: control dW (n_noise, m, m), product noise(V, L, dW)."""

    sde: CovarianceSDE
    path: diffrax.AbstractBrownianPath

    def vf(self, t, y: SDEState, args) -> SDEState:
        return y

    def contr(self, t0, t1, **kwargs) -> Array:
        return self.path.evaluate(t0, t1)

    def prod(self, vf: SDEState, control: Array) -> Array:
        return self.sde.noise(vf, control)


class CovarianceSDE(eqx.Module):
    """The SDE of one block under one normalisation: drift and noise of the state V."""

    block: Block
    normalize: str | None = eqx.field(static=True)
    scheme: str = eqx.field(static=True)

    def drift(self, y: SDEState) -> Array:
        if self.normalize == "rms" and self.scheme == "ito":
            b, Sigma = self.block.drift(y.V), self.block.diffusion_cov(y.V)
            return ito_drift(rms, b, Sigma, y.V)
        return self.block.drift(y.V)

    def noise(self, y: SDEState, dW: Array) -> Array:
        dV = self.block.noise(y.V, y.L, dW)
        if self.normalize == "rms" and self.scheme == "ito":
            return ito_noise(rms, y.V, dV)
        return dV


class _GuardedEuler(diffrax.Euler):
    """Euler-Maruyama step followed by symmetrisation, PSD repair, optional normalisation and
    the blow-up freeze described in the module docstring."""

    sde: CovarianceSDE
    bound: float

    def step(self, terms, t0, t1, y0: SDEState, args, solver_state, made_jump):
        del solver_state, made_jump
        drift_term, noise_term = terms.terms
        dV = drift_term.vf_prod(t0, y0, args, drift_term.contr(t0, t1)) \
            + noise_term.vf_prod(t0, y0, args, noise_term.contr(t0, t1))
        V1, L1, left_cone = _onto_state_space(y0.V + dV, self.sde.normalize)
        alive = y0.t_explode < 0
        bad = ~jnp.all(jnp.isfinite(V1)) | (jnp.max(jnp.abs(V1)) > self.bound)
        keep = alive & ~bad
        y1 = SDEState(
            V=jnp.where(keep, V1, y0.V),
            L=jnp.where(keep, L1, y0.L),
            t_explode=jnp.where(alive & bad, jnp.asarray(t1, y0.V.dtype), y0.t_explode),
            repairs=y0.repairs + (keep & left_cone).astype(y0.repairs.dtype),
        )
        return y1, None, dict(y0=y0, y1=y1), None, diffrax.RESULTS.successful


def _onto_state_space(V: Array, normalize: str | None) -> tuple[Array, Array, Array]:
    """Symmetrise, project onto the PSD cone if needed, normalise; return (V, L, left_cone)."""
    V = sym(V)
    V_psd, L, lam = psd_parts(V)
    left_cone = lam[0] < -100 * jnp.finfo(V.dtype).eps * jnp.max(jnp.abs(lam))
    V = jnp.where(left_cone, V_psd, V)
    if normalize == "rms":
        s = jax.lax.rsqrt(jnp.clip(jnp.diagonal(V), jnp.finfo(V.dtype).tiny))
        V = V * s[:, None] * s[None, :]
        V = V.at[jnp.diag_indices(V.shape[0])].set(1.0)
        L = s[:, None] * L
    return V, L, left_cone


def initial_state(V0: Array, normalize: str | None) -> SDEState:
    V, L, _ = _onto_state_space(V0, normalize)
    zero = jnp.zeros((), V.dtype)
    return SDEState(V=V, L=L, t_explode=zero - 1, repairs=jnp.zeros((), jnp.int32))


def time_grid(T: float, dt: float, n_save: int) -> tuple[np.ndarray, np.ndarray]:
    """Step grid with step <= dt that contains the n_save evenly spaced save times exactly."""
    per_save = max(1, math.ceil(T / (n_save - 1) / dt - 1e-9))
    grid = np.linspace(0.0, T, (n_save - 1) * per_save + 1)
    return grid, grid[::per_save]


@eqx.filter_jit
def _solve_paths(sde: CovarianceSDE, keys: Array, y0: SDEState, grid: Array, save_ts: Array,
                 bound: float) -> tuple[Array, Array, Array]:
    m = y0.V.shape[0]
    shape = jax.ShapeDtypeStruct((sde.block.n_noise, m, m), y0.V.dtype)

    def one(key: Array) -> tuple[Array, Array, Array]:
        terms = diffrax.MultiTerm(_DriftTerm(sde),
                                  _NoiseTerm(sde, diffrax.UnsafeBrownianPath(shape, key)))
        saveat = diffrax.SaveAt(subs=[
            diffrax.SubSaveAt(ts=save_ts, fn=lambda t, y, args: y.V),
            diffrax.SubSaveAt(t1=True, fn=lambda t, y, args: (y.t_explode, y.repairs)),
        ])
        sol = diffrax.diffeqsolve(
            terms, _GuardedEuler(sde, bound), grid[0], grid[-1], dt0=None, y0=y0,
            saveat=saveat, stepsize_controller=diffrax.StepTo(ts=grid),
            max_steps=grid.shape[0] - 1, adjoint=diffrax.ForwardMode())
        Vs, (t_exp, repairs) = sol.ys
        return Vs, t_exp[0], repairs[0]

    return jax.vmap(one)(keys)


def solve_sde(block: Block, V0: object, T: float, *, key: Array, dt: float = 2.0**-8,
              n_paths: int = 1000, n_save: int = 11, normalize: str | None = None,
              scheme: str = "project", blowup_bound: float = 1e3, dtype: str = "float32",
              chunk_size: int = 1024, progress: bool = True) -> Trajectories:
    """Integrate the covariance SDE of ``block`` from ``V0`` to time ``T`` for ``n_paths`` paths.

    Args:
        block: a block with an SDE limit, e.g. ``ShapedAttention()``.
        V0: initial covariance (m, m), symmetric PSD with positive diagonal. With
            ``normalize="rms"`` it is first mapped to its correlation matrix.
        T: final time (depth / width of the network it describes), > 0.
        key: JAX PRNG key; path i uses ``fold_in(key, i)``, so results do not depend on
            ``n_paths`` or ``chunk_size``.
        dt: largest Euler step; the grid is refined so that the save times lie on it
            (dt = 1/width is one step per layer).
        n_save: number of evenly spaced saved times, including 0 and T.
        normalize: None or "rms" (the normalised SDE on correlation matrices).
        scheme: for "rms", "project" (step, then apply f) or "ito" (Ito-transformed SDE).
        blowup_bound: a path whose |V_ab| exceeds ``blowup_bound * max(diag V0)`` is frozen
            and flagged as exploded (the un-normalised SDE may explode in finite time).
        dtype: "float32" or "float64" (the latter enables ``jax_enable_x64``).
        chunk_size: paths integrated per compiled call (bounds memory; results unchanged).
        progress: show a progress bar.

    Returns:
        ``Trajectories`` with ``t`` (n_save,), ``V`` (n_paths, n_save, m, m) and blow-up flags.
    """
    if not isinstance(block, Block):
        raise TypeError(f"block must be a shapedsde Block, got {type(block).__name__}")
    block.require_sde()
    V0 = check_covariance(V0)
    T = check_real("T", T, low=0.0)
    dt = check_real("dt", dt, low=0.0)
    n_paths = check_int("n_paths", n_paths, low=1)
    n_save = check_int("n_save", n_save, low=2)
    normalize = check_normalize(normalize)
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    blowup_bound = check_real("blowup_bound", blowup_bound, low=1.0)
    chunk_size = check_int("chunk_size", chunk_size, low=1)
    jdtype = resolve_dtype(dtype)

    grid, save_ts = time_grid(T, dt, n_save)
    scale = 1.0 if normalize == "rms" else float(np.max(np.diag(V0)))
    sde = CovarianceSDE(block, normalize, scheme)
    y0 = initial_state(jnp.asarray(V0, jdtype), normalize)
    grid_j, save_j = jnp.asarray(grid, jdtype), jnp.asarray(save_ts, jdtype)
    Vs, t_exp, repairs = run_chunked(
        lambda keys: _solve_paths(sde, keys, y0, grid_j, save_j, blowup_bound * scale),
        key, n_paths, chunk_size, progress=progress, desc="SDE paths")
    exploded = t_exp >= 0
    return Trajectories(
        t=np.asarray(save_ts), V=Vs, exploded=exploded,
        explosion_time=np.where(exploded, t_exp, np.inf), psd_repairs=repairs,
        config={"kind": "sde", "block": block.config(), "T": T, "dt": float(grid[1]),
                "n_paths": n_paths, "normalize": normalize, "scheme": scheme,
                "blowup_bound": blowup_bound, "dtype": dtype, "V0": V0.tolist()})
