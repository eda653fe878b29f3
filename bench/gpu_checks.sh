#!/usr/bin/env bash
# The GPU tests and GPU benchmarks in one call of a lent CUDA machine (bench/RESULTS.md, "GPU").
#
#   bash bench/gpu_checks.sh            # writes its logs under $OUT (default ./gpu-out)
#
# It runs with whatever python3 the machine has (PyTorch, Triton, timm, safetensors, PyYAML,
# numba, pytest preinstalled); wheels of anything else (pydicom) may lie in .whl/ beside it.
# TensorRT and DALI are not installed there, so their GPU tests skip with that reason.
set -u
OUT=${OUT:-$PWD/gpu-out}
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
fi
export PYTHONUNBUFFERED=1 PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"

step() { echo; echo "=== $* ($(date -u +%H:%M:%S))"; }

step environment
{
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm --format=csv
    python3 -c "import sys, torch, triton; print(sys.version.split()[0], 'torch', torch.__version__,
'triton', triton.__version__, torch.cuda.get_device_name())"
    python3 -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())"
    nproc
} 2>&1 | tee "$OUT/env.txt"

step "GPU tests (pytest -m gpu)"
timeout 200 python3 -m pytest -q -p no:cacheprovider -m gpu -rs \
    tests/kernels/test_kernels_cuda.py tests/kernels/test_genesis_draw.py \
    tests/train/test_views2d.py tests/train/test_engine.py \
    2>&1 | tee "$OUT/pytest.txt"

step "kernel throughput (python -m kernels.bench)"
timeout 240 python3 -m kernels.bench --repeat 5 2>&1 | tee "$OUT/kernels_bench.txt"

step "training steps (python -m bench.train_gpu)"
timeout 200 python3 -m bench.train_gpu --steps 20 2>&1 | tee "$OUT/train_gpu.txt"
# issue #22: the Genesis step with its parameters drawn on the GPU, and the data path's share
timeout 120 python3 -m bench.train_gpu --steps 20 --methods genesis --draw-on batch 2>&1 \
    | tee "$OUT/train_gpu_draw_on_batch.txt"
step done
