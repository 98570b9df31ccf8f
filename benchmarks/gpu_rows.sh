#!/usr/bin/env bash
# The GPU rows of the operator and inference benchmarks in about 3-6 minutes (one H100/H200), for a machine where
# the package and its CUDA library are already built. Results: $OUT/gpu_ops.json/.md, $OUT/gpu_infer.json/.md
# (benchmarks/report.py reads them as run "gpu"; copied into benchmarks/results/ as <gpu>.json, <gpu>-infer.json).
#
#   OUT=/tmp/out bash benchmarks/gpu_rows.sh            # all operator rows with compile baselines, inference a,r,b,c
#   P2PHD_ROWS_QUICK=1 OUT=/tmp/out bash benchmarks/gpu_rows.sh   # ~3 min: no compile baselines, LocalEnhancer only
#
# Each runner stops starting new cases/set-ups at its --budget-s and rewrites its JSON as it goes, so a step cut
# short by its timeout keeps what it measured.
set -u
PY=${PY:-python3}
OUT=${OUT:?set OUT to the output folder}
HERE=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$OUT"
rc=0
if [[ ${P2PHD_ROWS_QUICK:-0} == 1 ]]; then
  OPS_EXTRA=(--no-compile --budget-s 60)
  INFER_EXTRA=(--only local --budget-s 60)
else
  OPS_EXTRA=(--budget-s 150)
  INFER_EXTRA=(--budget-s 120)
fi
# Operators: every row (norm, fused norm+pad, pool, boundary, encode) against its stock baselines, GB/s and
# x the floor at the GPU's nominal bandwidth; at most 1.5 s of timed rounds per case.
timeout 240 "$PY" "$HERE/run_ops.py" --device cuda --max-seconds 1.5 "${OPS_EXTRA[@]}" \
  --json "$OUT/gpu_ops.json" --markdown "$OUT/gpu_ops.md" || rc=1
# Inference, batch 1: (a) fp32 eager reference ops, (r) bf16 + channels-last eager reference ops, (b) the same with
# our ops, (c) (b) compiled with CUDA graphs (target >= 3x (a)); LocalEnhancer 2048x1024, then global 1024x512.
# The compiled stock rows (rc, ac) cost one compilation each: add them with P2PHD_ROWS_INFER=a,r,b,c,rc,ac.
timeout 300 "$PY" "$HERE/run_infer.py" --device cuda --backends "${P2PHD_ROWS_INFER:-a,r,b,c}" --max-seconds 10 \
  "${INFER_EXTRA[@]}" --json "$OUT/gpu_infer.json" --markdown "$OUT/gpu_infer.md" || rc=1
exit $rc
