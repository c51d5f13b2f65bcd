r"""Euler-Maruyama integration of the covariance SDE with diffrax, batched over paths.

    dV = b(V) dt + noise(V, L, dW),   L L^T = V,   dW: ``block.n_noise`` m x m Brownian matrices

The noise is the block's "cheap noise" (O(m^3) per step, no m^2 x m^2 square root). A chunk of
paths is integrated as one diffrax system whose state holds every path's V (B, m, m), so the
per-step machinery of ``diffeqsolve`` is paid once per chunk, not once per path. After each
Euler step the solver (``_GuardedEuler``) keeps every path on the state space:

* takes the Cholesky factor L (used by the next step's noise) of the lower triangle of V + dV.
  The state keeps V + dV as computed; the symmetric matrix it stands for is its lower triangle
  mirrored (``linalg.mirror_lower``), formed at the start of the next step and when saving. The
  increment is symmetric up to rounding, and reading one triangle instead of averaging V + dV
  with its transpose spares XLA a second evaluation of the whole increment (measured 13% of a
  step at m = 8). Where V is not positive definite the solver falls back to one ``eigh``:
  projection onto the PSD cone when the step left it (counted per path in
  ``Trajectories.psd_repairs``) and the eigen square root;
* ``normalize="rms"``, scheme "project": applies f(V) = D^{-1/2} V D^{-1/2} after the step, as
  the network does after every block (consistent with the Ito-transformed SDE to O(dt));
  scheme "ito": integrates the Ito-transformed coefficients of ``shapedsde.normalize``;
* blow-up (SPEC section 3): a step that leaves a non-finite entry, or after which (and after the
  PSD repair) some variance V_aa exceeds ``blowup_bound * max_a V0_aa`` (= max_ab |V_ab| for
  the PSD state), freezes the path at its last state and records the explosion time.

Randomness is per path: path i's Brownian increment on grid step k is a pure function of
(``fold_in(key, i)``, k) (``shapedsde._random``), so a path does not depend on the chunk, the
batch or the number of devices it runs on. Chunks are split over the local JAX devices
(``shapedsde._batching.over_devices``).
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

from ._batching import over_devices, run_chunked
from ._precision import resolve_dtype
from ._random import path_key_words, standard_normal
from .blocks.base import Block
from .linalg import cholesky, mirror_lower, psd_parts, sym
from .normalize import ito_drift, ito_noise, rms
from .trajectories import Trajectories
from .validation import check_covariance, check_int, check_normalize, check_real

SCHEMES = ("project", "ito")
_MAX_STEPS = {"float32": 2**22, "float64": 2**50}  # t0 * steps_per_time rounds to the step


class SDEState(NamedTuple):
    """State of a batch of B paths (the solver integrates the batch as one system)."""

    V: Array  # (B, m, m) covariance: its lower triangle (mirror_lower gives the matrix)
    L: Array  # (B, m, m) square root of V, L L^T = V
    LT: Array  # (B, m, m) L^T, stored: the noise's last product then needs no transpose
    t_explode: Array  # (B,) time of blow-up, -1 while the path is alive
    repairs: Array  # (B,) number of steps that left the PSD cone


class _DriftTerm(diffrax.AbstractTerm):
    """Drift term acting on the covariance part of the state: control dt, product b(V) dt."""

    sde: CovarianceSDE

    def vf(self, t, y: SDEState, args) -> Array:
        return jax.vmap(self.sde.drift)(y)

    def contr(self, t0, t1, **kwargs):
        return t1 - t0

    def prod(self, vf: Array, control) -> Array:
        return vf * control


def standard_normal_matrices(words: Array, step: Array, n: int, m: int,
                             dtype: jnp.dtype) -> Array:
    """The n iid standard normal m x m matrices (B, n, m, m) of grid step ``step`` for paths
    with Threefry keys ``words`` (B, 2). Drawn in the (m, n, m) layout that
    ``linalg.congruence`` multiplies, so its transposes and this one cancel."""
    z = jax.vmap(lambda w: standard_normal(w, step, n * m * m, dtype))(words)
    return jnp.moveaxis(z.reshape(-1, m, n, m), 2, 1)


class _NoiseTerm(diffrax.AbstractTerm):
    """Matrix-Brownian noise term: control dW (B, n_noise, m, m), product noise(V, L, dW).

    Path i's increment over the grid step k (t0 = k / steps_per_time) is sqrt(t1 - t0) times the
    normals of stream k under path i's Threefry key ``words[i]`` (``shapedsde._random``): a pure
    function of (path key, step), so a path does not depend on the batch it is solved in."""

    sde: CovarianceSDE
    words: Array  # (B, 2) uint32
    steps_per_time: Array  # grid steps per unit time

    def vf(self, t, y: SDEState, args) -> SDEState:
        return y

    def contr(self, t0, t1, **kwargs) -> Array:
        step = jnp.round(t0 * self.steps_per_time).astype(jnp.uint32)
        z = standard_normal_matrices(self.words, step, self.sde.block.n_noise, self.sde.m,
                                     self.sde.dtype)
        return z * jnp.sqrt(t1 - t0)

    def prod(self, vf: SDEState, control: Array) -> Array:
        return jax.vmap(self.sde.noise)(vf, control)


class CovarianceSDE(eqx.Module):
    """The SDE of one block under one normalisation: drift and noise of one path's state."""

    block: Block
    normalize: str | None = eqx.field(static=True)
    scheme: str = eqx.field(static=True)
    m: int = eqx.field(static=True)
    dtype: str = eqx.field(static=True)

    def drift(self, y: SDEState) -> Array:
        if self.normalize == "rms" and self.scheme == "ito":
            b, Sigma = self.block.drift(y.V), self.block.diffusion_cov(y.V)
            return ito_drift(rms, b, Sigma, y.V)
        return self.block.drift(y.V)

    def noise(self, y: SDEState, dW: Array) -> Array:
        dV = self.block.noise(y.V, y.L, dW, y.LT)
        if self.normalize == "rms" and self.scheme == "ito":
            return ito_noise(rms, y.V, dV)
        return dV


class _GuardedEuler(diffrax.Euler):
    """Euler-Maruyama step followed by the Cholesky factor, PSD repair, optional normalisation
    and the blow-up freeze described in the module docstring (all per path, on a batch). The
    state's V is symmetric only in its lower triangle (``mirror_lower`` gives the matrix)."""

    sde: CovarianceSDE
    bound: Array  # blow-up threshold on max_a V_aa

    def step(self, terms, t0, t1, y0: SDEState, args, solver_state, made_jump):
        del solver_state, made_jump
        drift_term, noise_term = terms.terms
        y = y0._replace(V=mirror_lower(y0.V))
        V1 = y.V + drift_term.vf_prod(t0, y, args, drift_term.contr(t0, t1)) \
            + noise_term.vf_prod(t0, y, args, noise_term.contr(t0, t1))
        alive = y0.t_explode < 0
        V1, L1, left_cone, broken = _onto_state_space(V1, self.sde.normalize, alive)
        # on the repaired (PSD) state max_a V_aa = max_ab |V_ab|, and reads m entries, not m^2
        too_big = ~(jnp.max(jnp.diagonal(V1, axis1=1, axis2=2), axis=1) <= self.bound)
        bad = too_big | broken
        keep = alive & ~bad
        y1 = SDEState(
            V=jnp.where(keep[:, None, None], V1, y0.V),
            L=jnp.where(keep[:, None, None], L1, y0.L),
            LT=jnp.where(keep[:, None, None], jnp.swapaxes(L1, 1, 2), y0.LT),
            t_explode=jnp.where(alive & bad, jnp.asarray(t1, y0.V.dtype), y0.t_explode),
            repairs=y0.repairs + (keep & left_cone).astype(y0.repairs.dtype),
        )
        return y1, None, dict(y0=y0, y1=y1), None, diffrax.RESULTS.successful


_REPAIR_GROUP = 8  # paths repaired per eigh call


def _onto_state_space(V: Array, normalize: str | None,
                      active: Array) -> tuple[Array, Array, Array, Array]:
    """Project a symmetric batch V (B, m, m) onto the PSD cone where needed and normalise;
    return (V, L, left_cone, broken). ``active`` (B,) marks the paths whose result is used;
    ``broken`` flags active paths whose V has an entry that is not finite.

    L is the Cholesky factor. Where it does not exist (V singular, outside the cone or not
    finite) an ``eigh`` gives the projection (if the step left the cone) and the symmetric
    square root. Such paths are rare, so they are gathered in groups of ``_REPAIR_GROUP`` and
    only those are decomposed (a ``while_loop`` until none is left) instead of the whole batch;
    inactive (frozen or exploding) paths are skipped. Each path's result depends on that path
    only.
    """
    L, ok = cholesky(V)

    def repair_group(state: tuple[Array, ...]) -> tuple[Array, ...]:
        V, L, need, left, broken = state
        idx = jax.lax.top_k(need.astype(jnp.int32), min(_REPAIR_GROUP, need.shape[0]))[1]
        todo = need[idx]  # the group may hold paths that need nothing
        finite = jnp.all(jnp.isfinite(V[idx]), axis=(1, 2))
        eye = jnp.eye(V.shape[1], dtype=V.dtype)
        V_psd, L_eig, lam = psd_parts(jnp.where(finite[:, None, None], mirror_lower(V[idx]), eye))
        tol = 100 * jnp.finfo(V.dtype).eps * jnp.max(jnp.abs(lam), axis=1)
        out = (todo & (lam[:, 0] < -tol))[:, None, None]
        return (V.at[idx].set(jnp.where(out, V_psd, V[idx])),
                L.at[idx].set(jnp.where(todo[:, None, None], L_eig, L[idx])),
                need.at[idx].set(False), left.at[idx].set(left[idx] | out[:, 0, 0]),
                broken.at[idx].set(broken[idx] | (todo & ~finite)))

    no = jnp.zeros_like(ok)
    V, L, _, left_cone, broken = jax.lax.while_loop(
        lambda state: jnp.any(state[2]), repair_group, (V, L, ~ok & active, no, no))
    if normalize == "rms":
        s = jax.lax.rsqrt(jnp.clip(jnp.diagonal(V, axis1=1, axis2=2), jnp.finfo(V.dtype).tiny))
        V = V * s[:, :, None] * s[:, None, :]
        V = jnp.where(jnp.eye(V.shape[1], dtype=bool), jnp.ones((), V.dtype), V)
        L = s[:, :, None] * L
    return V, L, left_cone, broken


def initial_state(V0: Array, n_paths: int, normalize: str | None) -> SDEState:
    V, L, _, _ = _onto_state_space(sym(V0[None]), normalize, jnp.ones((1,), bool))
    zeros = jnp.zeros((n_paths,), V.dtype)
    shape = (n_paths,) + V0.shape
    return SDEState(V=jnp.broadcast_to(V, shape), L=jnp.broadcast_to(L, shape),
                    LT=jnp.broadcast_to(jnp.swapaxes(L, 1, 2), shape), t_explode=zeros - 1,
                    repairs=jnp.zeros((n_paths,), jnp.int32))


def time_grid(T: float, dt: float, n_save: int) -> tuple[np.ndarray, np.ndarray]:
    """Step grid with step <= dt that contains the n_save evenly spaced save times exactly."""
    per_save = max(1, math.ceil(T / (n_save - 1) / dt - 1e-9))
    grid = np.linspace(0.0, T, (n_save - 1) * per_save + 1)
    return grid, grid[::per_save]


def _solve_batch(sde: CovarianceSDE, words: Array, V0: Array, grid: Array, save_ts: Array,
                 bound: Array, steps_per_time: Array) -> tuple[Array, Array, Array]:
    """Integrate the paths of keys ``words`` (B, 2) as one diffrax system."""
    terms = diffrax.MultiTerm(_DriftTerm(sde), _NoiseTerm(sde, words, steps_per_time))
    saveat = diffrax.SaveAt(subs=[
        diffrax.SubSaveAt(ts=save_ts, fn=lambda t, y, args: mirror_lower(y.V)),
        diffrax.SubSaveAt(t1=True, fn=lambda t, y, args: (y.t_explode, y.repairs)),
    ])
    sol = diffrax.diffeqsolve(
        terms, _GuardedEuler(sde, bound), grid[0], grid[-1], dt0=None,
        y0=initial_state(V0, words.shape[0], sde.normalize), saveat=saveat,
        stepsize_controller=diffrax.StepTo(ts=grid), max_steps=grid.shape[0] - 1,
        adjoint=diffrax.ForwardMode())
    Vs, (t_exp, repairs) = sol.ys
    return jnp.swapaxes(Vs, 0, 1), t_exp[0], repairs[0]


@eqx.filter_jit
def _solve_paths(sde: CovarianceSDE, keys: Array, *args: Array) -> tuple[Array, Array, Array]:
    """Solve the paths of ``keys``, split over the local devices; args as ``_solve_batch``."""
    words = jax.vmap(path_key_words)(keys)
    return over_devices(lambda w, *args: _solve_batch(sde, w, *args), words, *args)


def solve_sde(block: Block, V0: object, T: float, *, key: Array, dt: float = 2.0**-8,
              n_paths: int = 1000, n_save: int = 11, normalize: str | None = None,
              scheme: str = "project", blowup_bound: float = 1e3, dtype: str = "float32",
              chunk_size: int = 1024, first_path: int = 0,
              progress: bool = True) -> Trajectories:
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
        blowup_bound: a path whose max_a V_aa (= max_ab |V_ab| for PSD V) exceeds
            ``blowup_bound * max(diag V0)`` is frozen and flagged as exploded (the
            un-normalised SDE may explode in finite time).
        dtype: "float32" or "float64" (the latter enables ``jax_enable_x64``).
        chunk_size: paths integrated per compiled call (bounds memory; results unchanged),
            rounded up to a multiple of the local device count; each chunk is split over the
            local devices (``jax.local_devices()``).
        first_path: index of the first path: the call returns paths first_path, ...,
            first_path + n_paths - 1, exactly as part of a larger call would (to split a run
            over processes or hosts).
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
    first_path = check_int("first_path", first_path, low=0)
    n_save = check_int("n_save", n_save, low=2)
    normalize = check_normalize(normalize)
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    blowup_bound = check_real("blowup_bound", blowup_bound, low=1.0)
    chunk_size = check_int("chunk_size", chunk_size, low=1)
    jdtype = resolve_dtype(dtype)

    grid, save_ts = time_grid(T, dt, n_save)
    scale = 1.0 if normalize == "rms" else float(np.max(np.diag(V0)))
    n_steps = len(grid) - 1
    if n_steps > _MAX_STEPS[dtype]:
        raise ValueError(f"T / dt = {n_steps} steps exceeds {_MAX_STEPS[dtype]} (the step "
                         f"index must be exact in {dtype}); increase dt or use float64")
    sde = CovarianceSDE(block, normalize, scheme, V0.shape[0], dtype)
    args = (jnp.asarray(V0, jdtype), jnp.asarray(grid, jdtype), jnp.asarray(save_ts, jdtype),
            jnp.asarray(blowup_bound * scale, jdtype), jnp.asarray(n_steps / T, jdtype))
    Vs, t_exp, repairs = run_chunked(
        lambda keys: _solve_paths(sde, keys, *args),
        key, n_paths, chunk_size, first=first_path, progress=progress, desc="SDE paths")
    exploded = t_exp >= 0
    return Trajectories(
        t=np.asarray(save_ts), V=Vs, exploded=exploded,
        explosion_time=np.where(exploded, t_exp, np.inf), psd_repairs=repairs,
        config={"kind": "sde", "block": block.config(), "T": T, "dt": float(grid[1]),
                "n_paths": n_paths, "first_path": first_path, "normalize": normalize,
                "scheme": scheme, "blowup_bound": blowup_bound, "dtype": dtype, "V0": V0.tolist()})
