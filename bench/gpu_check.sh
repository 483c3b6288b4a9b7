#!/usr/bin/env bash
# One-shot GPU check: build the CUDA extension in place, run the GPU tests, then the GPU
# benchmarks (op library bandwidth, search step eager, eager in the pruned regime with sparse
# execution against the dense fast path, search step compiled).
#
#   RESULTS_DIR=/some/folder bash bench/gpu_check.sh
#
# Uses the machine's python3 (with a CUDA build of torch) and nvcc; installs nothing.
# Every phase has its own time limit and writes its log to RESULTS_DIR, so a failing or
# slow phase does not hide the others' results; the compiled benchmark gets whatever is left
# of DEADLINE seconds (default 540). Exit status: 0 when every phase passed.
set -u
cd "$(dirname "$0")/.."
RESULTS_DIR="${RESULTS_DIR:-gpu_results}"
mkdir -p "$RESULTS_DIR"
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
STATUS=0
SUMMARY="$RESULTS_DIR/summary.txt"
: >"$SUMMARY"

# phase NAME SECONDS COMMAND...: run COMMAND with a time limit, log to NAME.log
phase() {
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  echo "=== $name (limit ${limit}s)"
  timeout --kill-after=10 "$limit" "$@" >"$RESULTS_DIR/$name.log" 2>&1
  local rc=$?
  echo "$name: exit $rc in $((SECONDS - start)) s" | tee -a "$SUMMARY"
  tail -n 40 "$RESULTS_DIR/$name.log"
  [ "$rc" -eq 0 ] || STATUS=1
}

{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  "$PY" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
  command -v nvcc && nvcc --version | tail -n 2
} >"$RESULTS_DIR/env.txt" 2>&1
cat "$RESULTS_DIR/env.txt"

CUDA_HOME="${CUDA_HOME:-$(dirname "$(dirname "$(command -v nvcc)")")}"
NV_INCLUDE="$("$PY" -c 'import glob, os, site; print(":".join(glob.glob(os.path.join(site.getsitepackages()[0], "nvidia", "*", "include"))))')"
export CUDA_HOME CPATH="$NV_INCLUDE${CPATH:+:$CPATH}"
phase build 200 env FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS="$(nproc)" \
  "$PY" setup.py build_ext --inplace
phase tests_gpu 180 "$PY" -m pytest -q --maxfail=20 -p no:cacheprovider -m gpu tests
phase bench_ops_cuda 45 "$PY" bench/bench_ops.py --device cuda --backend cuda --repeats 10
phase bench_ops_triton 45 "$PY" bench/bench_ops.py --device cuda --backend triton --repeats 10
phase search_step_eager 100 "$PY" bench/search_step.py --device cuda --batch-size 128 \
  --min-seconds 1 --repeats 10 --steps-per-round 2 --warmup 3
phase search_step_pruned 90 "$PY" bench/search_step.py --device cuda --batch-size 128 --modes soft \
  --prune 0,0.5,0.75 --min-seconds 1 --repeats 5 --steps-per-round 2 --warmup 3
LEFT=$(( ${DEADLINE:-540} - SECONDS - 5 ))
phase search_step_compiled "$(( LEFT > 30 ? LEFT : 30 ))" "$PY" bench/search_step.py --device cuda \
  --batch-size 128 --modes soft --compile --compile-only --compile-mode reduce-overhead \
  --min-seconds 1 --repeats 10 --steps-per-round 2 --warmup 3 --workloads "${COMPILE_WORKLOADS:-seed,resnet8,dscnn,mobilenetv1,tcn}"
cat "$SUMMARY"
exit $STATUS
