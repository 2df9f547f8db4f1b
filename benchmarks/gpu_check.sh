#!/usr/bin/env bash
# The prepared GPU check: run it first on any machine with a GPU (about 8 minutes on one
# H100-class GPU). It builds aubench's CUDA kernels for the GPU present, runs every `cuda` test,
# then benchmarks/gpu_check.py (ops, every method's paper preset, a torchrun step, resnet on the
# demo's data against the CPU), which writes benchmarks/results/gpu-<device>-<date>.json.
#
#   bash benchmarks/gpu_check.sh             on a machine with a CUDA GPU
#   bash benchmarks/gpu_check.sh --dry-run   every step on the CPU at tiny sizes (CI runs this)
#
# PYTHON: the interpreter with aubench's dependencies (default: .venv/bin/python, else python3).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
dry=""
[ "${1:-}" = "--dry-run" ] && dry="--dry-run"
start=$(date +%s)

if [ -z "$dry" ]; then
  arch=$("$PYTHON" -c "import torch; major, minor = torch.cuda.get_device_capability(); print(f'{major}.{minor}')")
  echo "[gpu_check] building the CUDA kernels for sm_${arch/./} ..."
  AUBENCH_CUDA=1 TORCH_CUDA_ARCH_LIST="$arch" "$PYTHON" setup.py -q build_ext --inplace
fi
echo "[gpu_check] the cuda tests ..."
"$PYTHON" -m pytest -q -p no:cacheprovider -m cuda tests || status=$?
"$PYTHON" benchmarks/gpu_check.py $dry || status=$?
echo "[gpu_check] finished in $(( $(date +%s) - start )) s"
exit "${status:-0}"
