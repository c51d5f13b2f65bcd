#!/usr/bin/env bash
# The GPU round of benchmarks/README.md ("On a GPU"), as one script: run from the repository
# root on a machine whose JAX sees a GPU (diffrax, equinox and lineax installed; shapedsde is
# imported from the tree). Results go to $OUT (default benchmarks/results/gpu); each part has
# its own time limit and writes what it has finished, so a stopped run still leaves its rows.
set -u
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
python3 -c "import jax, diffrax, equinox, lineax, numpy; print('jax', jax.__version__, \
'diffrax', diffrax.__version__, 'equinox', equinox.__version__, 'lineax', lineax.__version__, \
'numpy', numpy.__version__); print(jax.devices())" || exit 1
nvidia-smi --query-gpu=name,memory.total,clocks.max.sm --format=csv,noheader

# 1. the same key on the GPU and on the host CPU: paths and means (default and highest matmul
#    precision); both processes at once, the CPU one kept off the GPU
JAX_PLATFORMS=cpu timeout 120 python3 benchmarks/backend_agreement.py --out "$OUT/cpu.npz" \
    > "$OUT/agreement_cpu.log" 2>&1 &
timeout 120 python3 benchmarks/backend_agreement.py --out "$OUT/gpu.npz"
wait
cat "$OUT/agreement_cpu.log"
python3 benchmarks/backend_agreement.py --compare "$OUT/cpu.npz" "$OUT/gpu.npz" \
    | tee "$OUT/agreement.txt"

# 2. the table by m: 4096 paths in one chunk, the most telling m first
timeout 270 python3 benchmarks/sde_throughput.py --by-m --ms 8 128 32 2 --paths 4096 \
    --chunk 4096 --repeats 3 --out "$OUT/sde_throughput_by_m_gpu.json"

# 3. the benchmark's own setting (m = 8, 4000 paths, 500 steps): the refinement's share
timeout 100 python3 benchmarks/sde_throughput.py --setting --repeats 3 \
    --out "$OUT/sde_throughput_setting_gpu.json"

# 4. the first call at default arguments at 128 tokens
timeout 90 python3 benchmarks/sde_throughput.py --default-call 128 \
    --out "$OUT/default_call_gpu.json"
rm -f "$OUT/cpu.npz" "$OUT/gpu.npz"
