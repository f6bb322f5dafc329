#!/usr/bin/env bash
# The checks that need a GPU, in one run (a lent GPU machine's time is short): build the native kernels with their
# CUDA half, run every CUDA test (each CUDA op against its plain-PyTorch reference; GPU training against its CPU
# twin), then the GPU figures: bench_cuda (CUDA ops vs the CPU build) and bench_lego --device cuda.
#
#   FIELDS_DATA=/path/to/nerf_synthetic_200 bash scripts/gpu_check.sh [seconds of lego training, default 60]
#
# Needs torch with CUDA, nvcc and the project's Python dependencies (on a machine that has torch but lacks kornia,
# install kornia's wheels first). Logs go to $OUT when set (the device tool's output folder), else to gpu-check/.
set -o pipefail
cd "$(dirname "$0")/.."
out=${OUT:-gpu-check}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 MAX_JOBS=${MAX_JOBS:-16}
command -v nvcc >/dev/null || export PATH=/usr/local/cuda/bin:$PATH
nvidia-smi -L
python3 -c "from renderers.native import loader; ops = loader._build(); print('native build, CUDA:', ops.has_cuda())" \
    2>&1 | tee "$out/build.log" | tail -5
timeout 300 python3 -m pytest -q -p no:cacheprovider -rfEs tests/test_native.py tests/test_splatting.py \
    "tests/test_train.py::test_training_on_each_device_learns_and_the_run_loads_on_the_cpu" \
    tests/test_train.py::test_device_option_errors_name_the_problem 2>&1 | tee "$out/tests.log" | tail -25
timeout 120 python3 scripts/bench_cuda.py 2>&1 | tee "$out/bench_cuda.log" | tail -12
seconds=${1:-60}
timeout $((seconds * 2 + 60)) python3 scripts/bench_lego.py --device cuda --marks $((seconds / 2)) "$seconds" \
    --output-dir /tmp/fields-gpu-bench 2>&1 | grep -v "━" | tee "$out/bench_lego.log" | tail -12
cp BENCHMARKS.md docs/bench_lego_hashgrid_cuda.png "$out/" 2>/dev/null
