#!/usr/bin/env bash
# One prepared check for a GPU machine (H100/H200, python3 with torch + CUDA, pytest, pytest-xdist): build the
# extension for this card, every CUDA test with skips turned into failures, compute-sanitizer memcheck + racecheck,
# the training-step suite, the operator and inference rows, and the generated report.
#
#   OUT=/path/to/results bash scripts/gpu_check.sh        # from anywhere; runs in the repo root
#
# Every step is logged under $OUT (default ./gpu_out) and guarded by `timeout`; a failing step does not stop the
# next. The whole script keeps within P2PHD_GPU_BUDGET seconds (default 540). Files written, all directly under
# $OUT, 8 at most (the device tool returns no more):
#   gpu_check.log  every step's output, one "===== step" section each: machine (nvidia-smi, versions), the build,
#                  build_info(), the CUDA tests, compute-sanitizer memcheck and racecheck of
#                  scripts/sanitizer_ops.py, the benchmarks, the report (REPORT.md over the JSON files)
#   summary.txt    one line per step (ok / FAIL / TIMEOUT / SKIPPED, seconds); also printed last
#   gpu_train.json/.md  benchmarks/run_train.py: (n), (a)-(e) and the ablation for global 1024x512 and
#                  LocalEnhancer 2048x1024, peak memory, the conv-FLOP floor
#   gpu_ops.json/.md    benchmarks/run_ops.py: operator rows against the strongest stock baselines, x of the floor
#   gpu_infer.json/.md  benchmarks/run_infer.py: inference latency, eager and compile + CUDA graphs
# For the plots, copy the JSON into benchmarks/results/ as <gpu>.json, <gpu>-train.json, <gpu>-infer.json and run
# `make bench-report`.
# P2PHD_GPU_SKIP="sanitizer rows ..." skips steps by group (machine build tests sanitizer train rows report), e.g.
# to split the check over two calls on a warm machine (whose ignored build outputs, the library included, are kept).
# Exit status: 0 when every step passed, 1 otherwise.
set -u
cd "$(dirname "$0")/.." || exit 1

OUT=${OUT:-./gpu_out}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd) || exit 1
BUDGET=${P2PHD_GPU_BUDGET:-540}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1
unset P2PHD_LIB P2PHD_DISABLE_EXT # test the package's own build

SUMMARY="$OUT/summary.txt"
LOG="$OUT/gpu_check.log"
SCRATCH=$(mktemp -d)
: >"$SUMMARY"
: >"$LOG"
FAILS=0
START=$SECONDS

left() { echo $((BUDGET - (SECONDS - START))); }
want() { [[ " ${P2PHD_GPU_SKIP:-} " != *" $1 "* ]]; }

record() { # NAME STATUS SECONDS [NOTE]
  printf '%-22s %-16s %4ss %s\n' "$1" "$2" "$3" "${4:-}" | tee -a "$SUMMARY"
  [[ $2 == ok ]] || FAILS=$((FAILS + 1))
}

# step NAME LOG MAX_SECONDS CMD...: run CMD under `timeout` (MAX_SECONDS or the time left, whichever is
# smaller), append its output to LOG, record the outcome. Returns CMD's success.
step() {
  local name=$1 log=$2 max=$3
  shift 3
  local t
  t=$(left)
  ((t > max)) && t=$max
  if ((t < 15)); then
    record "$name" SKIPPED 0 "(time budget spent)"
    return 1
  fi
  echo ">>> $name (timeout ${t}s, $((SECONDS - START))s elapsed)"
  local cmd="$*"
  {
    echo
    echo "===== $name  $(date -u '+%F %T') UTC  timeout ${t}s"
    echo "\$ ${cmd:0:240}"
  } >>"$log"
  local t0=$SECONDS rc status=ok
  timeout -k 10 "$t" "$@" >>"$log" 2>&1
  rc=$?
  if ((rc == 124 || rc == 137)); then status=TIMEOUT; elif ((rc != 0)); then status="FAIL(rc=$rc)"; fi
  echo "----- $name: $status in $((SECONDS - t0))s" >>"$log"
  record "$name" "$status" "$((SECONDS - t0))"
  [[ $status == ok ]]
}

skip() { # NAME REASON
  echo ">>> $1 skipped: $2"
  record "$1" SKIPPED 0 "($2)"
}

find_sanitizer() {
  local c
  for c in "$(command -v compute-sanitizer 2>/dev/null)" "${CUDA_HOME:-/usr/local/cuda}/bin/compute-sanitizer" \
    /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda/compute-sanitizer/compute-sanitizer; do
    [[ -n $c && -x $c ]] && { echo "$c"; return 0; }
  done
  ls -d /opt/nvidia/*/compute-sanitizer/compute-sanitizer /usr/local/cuda-*/bin/compute-sanitizer 2>/dev/null | head -1
}

# ---------------------------------------------------------------------------------------------------
# 1. Machine
SAN=$(find_sanitizer)
export PY SAN
MACHINE_SCRIPT=$(
  cat <<'EOF'
nvidia-smi
echo
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm,clocks.mem,power.limit --format=csv
echo
uname -a
echo "cpus: $(nproc)"
free -g | head -2
echo "python: $(command -v "$PY")"
"$PY" - <<'PYEOF'
import sys, torch, numpy, pytest, pytest_benchmark
print("python", sys.version.split()[0], "| torch", torch.__version__, "cuda", torch.version.cuda,
      "| numpy", numpy.__version__, "| pytest", pytest.__version__, "| pytest-benchmark", pytest_benchmark.__version__)
p = torch.cuda.get_device_properties(0)
print(f"gpu: {p.name} cc {p.major}.{p.minor}, {p.multi_processor_count} SMs, {p.total_memory / 2**30:.0f} GiB")
PYEOF
command -v nvcc && nvcc --version | tail -2
echo "compute-sanitizer: ${SAN:-not found}"
EOF
)
if want machine; then
  step machine "$LOG" 60 bash -c "$MACHINE_SCRIPT"
  grep -m1 -E "^gpu:" "$LOG" || true
fi

# 2. Build for this card only, in place (needs only setuptools + torch; no pip, no network)
# A rerun on the same (warm) machine may skip the build group and use the library built before; without one it
# builds all the same.
if want build || ! ls pix2pixhd_fast/_C*.so >/dev/null 2>&1; then
  rm -f pix2pixhd_fast/_C*.so # never test a stale library
  step build "$LOG" 330 env TORCH_CUDA_ARCH_LIST="${TORCH_CUDA_ARCH_LIST:-9.0}" MAX_JOBS="${MAX_JOBS:-16}" \
    "$PY" setup.py build_ext --inplace
fi

# 3. What was built
LIB_OK=0
if step build_info "$LOG" 60 "$PY" -c '
import json, sys, pix2pixhd_fast
info = pix2pixhd_fast.build_info()
print(json.dumps(info, indent=1))
sys.exit(0 if info["ops_loaded"] and info["cuda_kernels"] and info["cuda_available"] else 1)'; then
  LIB_OK=1
fi

# 4. CUDA tests: every test marked cuda or cuda_build (ops, models, trainer with the CUDA-graph step, export with
# the compile + CUDA-graph backend). P2PHD_REQUIRE_CUDA=1 turns a skip of any of them into a failure, so a test that
# silently skips on the GPU is caught. TensorRT is an optional extra: its tests are deselected, and said so, where
# the machine has no tensorrt module. With pytest-xdist, a test that crashes the interpreter fails alone.
PYTEST=("$PY" -m pytest -q -p no:cacheprovider -rfEs)
if "$PY" -c "import xdist" 2>/dev/null; then PYTEST+=(-n "${P2PHD_TEST_WORKERS:-8}"); fi
CUDA_TESTS=(-m "cuda or cuda_build")
if ! "$PY" -c "import tensorrt" 2>/dev/null; then
  CUDA_TESTS+=(-k "not tensorrt")
  echo "tensorrt is not installed: its tests are deselected" | tee -a "$LOG"
fi
if ! want tests; then
  :
elif ((LIB_OK)); then
  step "pytest cuda (required)" "$LOG" 240 env P2PHD_REQUIRE_CUDA=1 "${PYTEST[@]}" "${CUDA_TESTS[@]}" --durations=10 tests
else
  skip "pytest cuda (required)" "no CUDA library"
fi

# 5. compute-sanitizer memcheck and racecheck on every op, the fused norm + pad and the deterministic pooling
# included, fwd + bwd once, small sizes
if ! want sanitizer; then
  :
elif ((!LIB_OK)); then
  skip memcheck "no CUDA library"
  skip racecheck "no CUDA library"
elif [[ -z $SAN ]]; then
  skip memcheck "compute-sanitizer not found"
  skip racecheck "compute-sanitizer not found"
else
  # Without the caching allocator every tensor is its own allocation, so an overrun is caught.
  # rc 3: the sanitizer found errors; rc 1: the script's own comparison with the reference failed.
  step memcheck "$LOG" 120 env PYTORCH_NO_CUDA_MEMORY_CACHING=1 \
    "$SAN" --tool memcheck --error-exitcode 3 "$PY" scripts/sanitizer_ops.py
  step racecheck "$LOG" 120 "$SAN" --tool racecheck --error-exitcode 3 "$PY" scripts/sanitizer_ops.py
  grep -E "ERROR SUMMARY|RACECHECK SUMMARY|sanitizer_ops:" "$LOG" || true
fi

# 6. Training step: (n) the loop pix2pixHD users run, (a) fp32 NCHW, (b) bf16 + channels-last stock, (c) ours (fused
# ops, SAC, cudnn.benchmark, whole-step CUDA graph), (d)/(e) compiled, the ablation rows, peak memory and the
# conv-FLOP floor; global 1024x512 and LocalEnhancer 2048x1024. The runner rewrites its JSON after every part.
if ! want train; then
  :
elif ((LIB_OK)); then
  step train_bench "$LOG" "${P2PHD_GPU_TRAIN_S:-300}" "$PY" benchmarks/run_train.py --device cuda --sizes gpu \
    --only global,local --configs "${P2PHD_GPU_TRAIN_CONFIGS:-n,a,b,c,d,e,ablation}" \
    --compile-problems "${P2PHD_GPU_TRAIN_COMPILE:-global,local}" --max-seconds "${P2PHD_GPU_TRAIN_MAX_S:-20}" \
    --no-nets --budget-s "${P2PHD_GPU_TRAIN_BUDGET_S:-240}" --json "$OUT/gpu_train.json" --markdown "$OUT/gpu_train.md"
else
  skip train_bench "no CUDA library"
fi

# 7. Operator rows against the strongest stock baselines (x of the memory floor) and inference latency (fp32 eager,
# bf16 + channels-last eager reference ops, ours, compile + CUDA graphs of each): benchmarks/gpu_rows.sh
if ! want rows; then
  :
elif ((LIB_OK)); then
  step gpu_rows "$LOG" "${P2PHD_GPU_ROWS_S:-420}" env OUT="$OUT" PY="$PY" bash benchmarks/gpu_rows.sh
else
  skip gpu_rows "no CUDA library"
fi

# 8. The report over the JSON files above, into the log
if want report && ls "$OUT"/gpu_*.json >/dev/null 2>&1; then
  if step report "$LOG" 30 "$PY" benchmarks/report.py --results "$OUT" --out "$SCRATCH/REPORT.md" --no-plots \
    --no-readme; then
    { echo "----- REPORT.md (benchmarks/report.py --results \$OUT)"; cat "$SCRATCH/REPORT.md"; } >>"$LOG"
  fi
fi

# ---------------------------------------------------------------------------------------------------
echo
for f in gpu_train.md gpu_ops.md gpu_infer.md; do [[ -s $OUT/$f ]] && cat "$OUT/$f" && echo; done
rm -rf "$SCRATCH"
# the failures, where the reply shows them
grep -E "^(FAILED|ERROR) |[0-9]+ (passed|failed)|crashed|Fatal Python|ERROR SUMMARY|RACECHECK SUMMARY|mismatches" \
  "$LOG" | tail -25
echo
echo "total: $((SECONDS - START))s of a ${BUDGET}s budget; failed steps: $FAILS" | tee -a "$SUMMARY"
echo "== summary ($OUT/summary.txt)"
cat "$SUMMARY"
((FAILS == 0))
