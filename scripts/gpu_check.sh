#!/usr/bin/env bash
# One prepared check for a GPU machine (H100/H200, python3 with torch + CUDA, pytest, pytest-benchmark):
# build the extension for this card, CUDA tests, compute-sanitizer memcheck + racecheck, operator
# benchmarks, the end-to-end training benchmark, scaling, inference latency per backend, pytest-benchmark, the
# generated report, then the full test suite with the time that is left.
#
#   OUT=/path/to/results bash scripts/gpu_check.sh        # from anywhere; runs in the repo root
#
# Every step is logged under $OUT (default ./gpu_out) and guarded by `timeout`; a failing step does not
# stop the next. The whole script keeps within P2PHD_GPU_BUDGET seconds (default 480). Files written, all
# directly under $OUT, 8 at most (the device tool returns no more):
#   gpu_check.log  every step's output, one "===== step" section each: machine (nvidia-smi, versions), the
#                  build, build_info(), pytest -m cuda, compute-sanitizer memcheck and racecheck of
#                  scripts/sanitizer_ops.py, the benchmarks, the report, the full suite
#   summary.txt    one line per step (ok / FAIL / TIMEOUT / SKIPPED, seconds); also printed last
#   gpu_ops.json   benchmarks/run_ops.py (operator ratios, GB/s, x floor)
#   gpu_call_overhead.json  benchmarks/call_overhead.py (host cost per norm fwd+bwd call)
#   gpu_train.json benchmarks/run_train.py (training step of global 1024x512, LocalEnhancer 2048x1024, global +
#                  features: images/s, peak memory; G/D rows; profile). P2PHD_GPU_TRAIN_COMPILE=1 adds
#                  torch.compile of the global problem (its compile time counts against the step's 150 s).
#   gpu_scaling.json  benchmarks/run_scaling.py (time vs resolution 256x512..1024x2048, pool vs 1..1000 instances)
#   gpu_infer.json benchmarks/run_infer.py (generator latency per inference backend: LocalEnhancer 2048x1024, then
#                  global 1024x512; eager fp32 / eager bf16 channels-last / torch.compile + CUDA graphs / TensorRT)
#   gpu_pytest_benchmark.json  the pytest-benchmark suite benchmarks/test_bench_ops.py at GPU sizes
# benchmarks/report.py's REPORT.md over these JSON files (tables only) is not a file of its own (the 8 are taken):
# it is appended to gpu_check.log's "report" section. For the plots, copy the JSON into benchmarks/results/ as
# <gpu>.json, <gpu>-train.json, <gpu>-infer.json, ... and run `make bench-report`.
# The markdown tables of run_ops/run_train/run_infer go to a scratch folder and are printed at the end.
# P2PHD_GPU_SKIP="sanitizer bench ..." skips steps by group (machine build tests sanitizer bench train report full),
# e.g. to rerun only the failing part on a warm machine (whose ignored build outputs are kept).
# Exit status: 0 when every step passed, 1 otherwise.
set -u
cd "$(dirname "$0")/.." || exit 1

OUT=${OUT:-./gpu_out}
mkdir -p "$OUT" && OUT=$(cd "$OUT" && pwd) || exit 1
BUDGET=${P2PHD_GPU_BUDGET:-480}
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
if want build; then
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

# 4. CUDA tests. With pytest-xdist, a test that crashes the interpreter (a segfault in a kernel wrapper)
# fails alone: its worker is replaced and the session goes on; it also spreads the suite over the cores.
PYTEST=("$PY" -m pytest -q -p no:cacheprovider -rfEs)
if "$PY" -c "import xdist" 2>/dev/null; then PYTEST+=(-n "${P2PHD_TEST_WORKERS:-4}"); fi
if ! want tests; then
  :
elif ((LIB_OK)); then
  step "pytest -m cuda" "$LOG" 180 "${PYTEST[@]}" -m cuda --durations=10 tests
else
  skip "pytest -m cuda" "no CUDA library"
fi

# 5. compute-sanitizer on every op, fwd + bwd once, small sizes
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

# 6. Operator benchmarks (ratios vs baselines, GB/s vs the measured copy bandwidth)
if ! want bench; then
  :
elif ((LIB_OK)); then
  step benchmarks "$LOG" 200 "$PY" benchmarks/run_ops.py --device cuda \
    --json "$OUT/gpu_ops.json" --markdown "$SCRATCH/gpu_ops.md"
else
  skip benchmarks "no CUDA library"
fi

# 6a. Host cost per call of the norm's autograd (C++ kernel vs a Python autograd.Function over the same kernels)
if want bench && ((LIB_OK)); then
  step call_overhead "$LOG" 60 "$PY" benchmarks/call_overhead.py --device cuda --reps 30 \
    --json "$OUT/gpu_call_overhead.json"
fi

# 6b. End-to-end training benchmark: (a) fp32 NCHW reference ops, (b) bf16 AMP + channels-last reference ops,
# (c) the same with our ops (+ (d) torch.compile when asked). --budget-s: start no new part after 110 s, so
# the step ends inside its 150 s; the results files are rewritten after every part.
if ! want train; then
  :
elif ((LIB_OK)); then
  TRAIN_ARGS=(--device cuda --sizes gpu --profile --budget-s 110)
  [[ ${P2PHD_GPU_TRAIN_COMPILE:-0} == 1 ]] && TRAIN_ARGS+=(--compile --compile-problems global)
  step train_bench "$LOG" 150 "$PY" benchmarks/run_train.py "${TRAIN_ARGS[@]}" \
    --json "$OUT/gpu_train.json" --markdown "$SCRATCH/gpu_train.md"
else
  skip train_bench "no CUDA library"
fi

# 6c. Scaling: op time vs resolution (256x512 .. 1024x2048) and the pooling vs 1 .. 1000 instances. The instance
# series runs first; --budget-s: no new case after 45 s (the JSON is rewritten after every case).
if want bench && ((LIB_OK)); then
  step scaling "$LOG" 60 "$PY" benchmarks/run_scaling.py --device cuda --budget-s 45 --json "$OUT/gpu_scaling.json"
fi

# 6d. Inference latency per backend (benchmarks/run_infer.py): the LocalEnhancer at 2048x1024 first (the
# target: TensorRT or torch.compile + CUDA graphs >= 3x the fp32 eager latency), then the global generator at 1024x512.
# TensorRT is recorded as skipped where it is not installed; onnxruntime runs only in the CPU benchmark. Compilation
# counts against the step's 90 s: --budget-s starts no new problem or backend set-up after 45 s (the JSON is
# rewritten after every problem).
if want bench && ((LIB_OK)); then
  step infer_bench "$LOG" 90 "$PY" benchmarks/run_infer.py --device cuda --budget-s 45 \
    --json "$OUT/gpu_infer.json" --markdown "$SCRATCH/gpu_infer.md"
fi

# 6e. The pytest-benchmark suite at GPU sizes (what `make bench` runs on the CPU), short rounds
if want bench && ((LIB_OK)); then
  step pytest_benchmark "$LOG" 90 env P2PHD_BENCH_DEVICE=cuda "$PY" -m pytest benchmarks/test_bench_ops.py -q \
    -p no:cacheprovider -o addopts= --benchmark-only --benchmark-json="$OUT/gpu_pytest_benchmark.json" \
    --benchmark-max-time=0.2 --benchmark-columns=median,iqr,rounds
fi

# 6f. The GPU report from the JSON files above (plots are made where the JSON is copied; see the header), into
# the log: $OUT holds the 8 files the device tool returns
if want report && ls "$OUT"/gpu_*.json >/dev/null 2>&1; then
  if step report "$LOG" 30 "$PY" benchmarks/report.py --results "$OUT" --out "$SCRATCH/REPORT.md" --no-plots \
    --no-readme; then
    { echo "----- REPORT.md (benchmarks/report.py --results \$OUT)"; cat "$SCRATCH/REPORT.md"; } >>"$LOG"
  fi
fi

# 7. Full suite (CPU + CUDA) with the time that is left
if ! want full; then
  :
elif ((LIB_OK)); then
  step "pytest (all)" "$LOG" 600 "${PYTEST[@]}" --durations=15 tests
else
  skip "pytest (all)" "no CUDA library"
fi

# ---------------------------------------------------------------------------------------------------
echo
[[ -s $SCRATCH/gpu_ops.md ]] && cat "$SCRATCH/gpu_ops.md" && echo
[[ -s $SCRATCH/gpu_train.md ]] && cat "$SCRATCH/gpu_train.md" && echo
[[ -s $SCRATCH/gpu_infer.md ]] && cat "$SCRATCH/gpu_infer.md" && echo
rm -rf "$SCRATCH"
# the failures, where the reply shows them
grep -E "^(FAILED|ERROR) |[0-9]+ (passed|failed)|crashed|Fatal Python|ERROR SUMMARY|RACECHECK SUMMARY|mismatches" \
  "$LOG" | tail -25
echo
echo "total: $((SECONDS - START))s of a ${BUDGET}s budget; failed steps: $FAILS" | tee -a "$SUMMARY"
echo "== summary ($OUT/summary.txt)"
cat "$SUMMARY"
((FAILS == 0))
