"""Paths are split over all local devices, with the same result as on one device.

The number of CPU devices is fixed when JAX starts, so the two-device run happens in a child
process started with ``XLA_FLAGS=--xla_force_host_platform_device_count=2``.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import jax
import numpy as np
import pytest

import shapedsde as sd

V0 = sd.default_covariance(3)
SDE_KW = dict(T=0.25, dt=1 / 64, n_paths=7, chunk_size=3, n_save=3, progress=False)
NET_KW = dict(width=16, depth=8, n_samples=5, chunk_size=2, n_save=3, method="full",
              progress=False)

CHILD = textwrap.dedent("""
    import sys
    import jax, jax.numpy as jnp, numpy as np
    import shapedsde as sd
    from shapedsde import sde
    assert jax.local_device_count() == 2, jax.devices()
    V0 = sd.default_covariance(3)
    block = sd.ShapedAttention()
    traj = sd.solve_sde(block, V0, key=jax.random.key(0), **{sde_kw})
    net = sd.simulate_network(block, V0, key=jax.random.key(0), **{net_kw})
    # the compiled solver's outputs live on both devices, half the paths each
    from shapedsde._batching import on_devices
    from shapedsde.blocks import traced_parameters
    from shapedsde.sde._driver import _integrate
    stepped = traced_parameters(block, jnp.float32)
    V0j = jnp.asarray(V0, jnp.float32)
    solver = sde.make_solver("euler", stepped, V0j, normalized=False, bound=jnp.float32(1e3))
    keys = on_devices(jax.random.split(jax.random.key(0), 4))
    save_ts = jnp.linspace(0.0, 0.25, 3)
    Vs, _, _ = _integrate(solver, stepped, keys, V0j, save_ts, jnp.int32(8),
                          jnp.float32(1 / 32))
    shards = Vs.addressable_shards
    assert len(Vs.sharding.device_set) == 2 and [s.data.shape[0] for s in shards] == [2, 2]
    np.savez(sys.argv[1], sde=traj.V, net=net.V)
""")


def test_two_devices_give_the_single_device_result(tmp_path: Path):
    script = tmp_path / "child.py"
    script.write_text(CHILD.format(sde_kw=SDE_KW, net_kw=NET_KW))
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2",
               JAX_PLATFORMS="cpu")
    out = tmp_path / "two.npz"
    proc = subprocess.run([sys.executable, str(script), str(out)], env=env, text=True,
                          capture_output=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    two = np.load(out)
    block = sd.ShapedAttention()
    one_sde = sd.solve_sde(block, V0, key=jax.random.key(0), **SDE_KW).V
    one_net = sd.simulate_network(block, V0, key=jax.random.key(0), **NET_KW).V
    np.testing.assert_allclose(two["sde"], one_sde, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(two["net"], one_net, rtol=1e-6, atol=1e-6)


WORKER = textwrap.dedent("""
    import sys
    import jax
    process_id, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2,
                               process_id=process_id)
    import shapedsde as sd
    # the README's recipe: process p of P simulates its share of the paths
    n_paths, P, p = 10, jax.process_count(), jax.process_index()
    share = -(-n_paths // P)
    first = p * share
    traj = sd.solve_sde(sd.ShapedAttention(), sd.default_covariance(3), 0.25, dt=1 / 64,
                        key=jax.random.key(0), n_paths=min(share, n_paths - first),
                        first_path=first, progress=False)
    traj.save(f"{out}/part{p}.npz")
""")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_processes_with_jax_distributed_split_a_run(tmp_path: Path):
    """Two processes joined by ``jax.distributed`` (the README's multi-host recipe) return
    together exactly the paths of one process."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    port = str(_free_port())
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    procs = [subprocess.Popen([sys.executable, str(script), str(i), port, str(tmp_path)],
                              env=env, stderr=subprocess.PIPE, text=True) for i in range(2)]
    for proc in procs:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
    parts = [sd.Trajectories.load(tmp_path / f"part{p}.npz") for p in range(2)]
    one = sd.solve_sde(sd.ShapedAttention(), V0, 0.25, dt=1 / 64, key=jax.random.key(0),
                       n_paths=10, progress=False)
    np.testing.assert_allclose(np.concatenate([t.V for t in parts]), one.V, rtol=1e-6,
                               atol=1e-6)
    assert [t.config["first_path"] for t in parts] == [0, 5]
