#!/usr/bin/env bash
# One-shot GPU check: build the CUDA extension in place, run the GPU tests, then the GPU
# benchmarks: the search step compiled with CUDA graphs, the ops and phases of the seed
# example's step (fast, dense and plain), the search step eager in the pruned regime (sparse
# execution against the dense fast path, the plain-PyTorch anchor and the reference path),
# whole demo-style searches (sparse against dense, end to end), the op library's bandwidth.
#
#   RESULTS_DIR=/some/folder [ARCHIVE=/some/logs.tar.gz] [PHASES="build tests ..."] bash bench/gpu_check.sh
#
# Uses the machine's python3 (with a CUDA build of torch) and nvcc; installs nothing.
# Every phase has its own time limit and writes its log to RESULTS_DIR, so a failing or
# slow phase does not hide the others' results; a phase that would start past DEADLINE
# seconds (default 540) is skipped, and one that would end past it gets what is left.
# PHASES picks phases by name (default: all, in this order): build tests compiled profile
# pruned searches ops; TESTS, COMPILE_WORKLOADS, PRUNED_WORKLOADS and SEARCH_WORKLOADS narrow
# the phases of those names. ARCHIVE, when set, is rewritten after every phase with all logs
# so far (for a caller that can fetch only a few files, or whose call may be cut off).
# Exit status: 0 when every phase run passed.
set -u
cd "$(dirname "$0")/.."
RESULTS_DIR="${RESULTS_DIR:-gpu_results}"
mkdir -p "$RESULTS_DIR"
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
PHASES="${PHASES:-build tests compiled profile pruned searches ops}"
DEADLINE="${DEADLINE:-540}"
STATUS=0
SUMMARY="$RESULTS_DIR/summary.txt"
: >"$SUMMARY"

archive() {
  [ -n "${ARCHIVE:-}" ] && tar -C "$RESULTS_DIR" -czf "$ARCHIVE" .
  return 0
}

wanted() { [[ " $PHASES " == *" $1 "* ]]; }

# phase NAME SECONDS COMMAND...: run COMMAND with a time limit, log to NAME.log
phase() {
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  if [ $((SECONDS + 10)) -ge "$DEADLINE" ]; then
    echo "$name: skipped (${SECONDS} s of DEADLINE=${DEADLINE} s spent)" | tee -a "$SUMMARY"
    STATUS=1
    return
  fi
  [ $((SECONDS + limit)) -le "$DEADLINE" ] || limit=$((DEADLINE - SECONDS))
  echo "=== $name (limit ${limit}s)"
  timeout --kill-after=10 "$limit" "$@" >"$RESULTS_DIR/$name.log" 2>&1
  local rc=$?
  echo "$name: exit $rc in $((SECONDS - start)) s" | tee -a "$SUMMARY"
  tail -n 30 "$RESULTS_DIR/$name.log"
  [ "$rc" -eq 0 ] || STATUS=1
  archive
}

{
  date -u
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
  "$PY" -c "import torch, triton; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__)"
  command -v nvcc && nvcc --version | tail -n 2
  grep -m1 "model name" /proc/cpuinfo
  nproc
} >"$RESULTS_DIR/env.txt" 2>&1
cat "$RESULTS_DIR/env.txt"

CUDA_HOME="${CUDA_HOME:-$(dirname "$(dirname "$(command -v nvcc)")")}"
NV_INCLUDE="$("$PY" -c 'import glob, os, site; print(":".join(glob.glob(os.path.join(site.getsitepackages()[0], "nvidia", "*", "include"))))')"
export CUDA_HOME CPATH="$NV_INCLUDE${CPATH:+:$CPATH}"
STEP=(--device cuda --batch-size 128 --min-seconds 0.5 --repeats 8 --steps-per-round 2 --warmup 3)

wanted build && phase build 240 env FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS="$(nproc)" \
  "$PY" setup.py build_ext --inplace
wanted tests && phase tests_gpu 200 "$PY" -m pytest -q -rfE --maxfail=30 -p no:cacheprovider -m gpu \
  ${TESTS:-tests bench}
wanted compiled && phase search_step_compiled 150 "$PY" bench/search_step.py "${STEP[@]}" --modes soft \
  --compile --compile-only --compile-mode reduce-overhead --workloads "${COMPILE_WORKLOADS:-resnet8,dscnn,tcn}"
if wanted profile; then
  phase profile_seed 60 "$PY" bench/profile_step.py --workload seed --searches fast,dense,plain --device cuda \
    --batch-size 128 --steps 5 --top 15
  phase step_phases_seed 60 "$PY" bench/step_phases.py --workloads seed --prune 0 --batch-sizes 128 \
    --device cuda --repeats 10 --steps-per-round 2
fi
wanted pruned && phase search_step_pruned 150 "$PY" bench/search_step.py "${STEP[@]}" --modes soft \
  --prune 0,0.5,0.75 --workloads "${PRUNED_WORKLOADS:-seed,resnet8,dscnn,mobilenetv1,tcn}"
if wanted searches; then
  for workload in ${SEARCH_WORKLOADS:-dscnn resnet8}; do
    phase "search_time_$workload" 50 "$PY" bench/search_time.py --workload "$workload" --device cuda \
      --configs fast,dense --warmup-epochs 1 --search-epochs 10 --batch-size 128 --repeats 3
  done
fi
if wanted ops; then
  phase bench_ops_cuda 30 "$PY" bench/bench_ops.py --device cuda --backend cuda --repeats 10
  phase bench_ops_triton 30 "$PY" bench/bench_ops.py --device cuda --backend triton --repeats 10
fi
cat "$SUMMARY"
archive
exit $STATUS
