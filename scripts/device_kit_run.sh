#!/usr/bin/env bash
# Runs the device kit (scripts/device_kit.sh) on the GPU machine: the C API tests (CUDA vs CPU, every
# tuning variant), the native variant benchmark, then compute-sanitizer memcheck over the C API tests
# while time is left. Logs and the benchmark TSV land in $OUT; a summary is printed last.
set -uo pipefail
cd "$(dirname "$0")"
OUT=${OUT:-$PWD/out}
LOG=$OUT/logs  # tarred at the end: only a few files come back from the machine
mkdir -p "$LOG"
export LD_LIBRARY_PATH=$PWD${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
summary=$OUT/summary.txt
: >"$summary"
note() { echo "$*" | tee -a "$summary"; }
note "== kit $(cat commit | tr '\n' ' ') on $(nvidia-smi --query-gpu=name,driver_version,clocks.sm --format=csv,noheader 2>&1)"
tests=${KIT_TESTS:-"test_sm90_primitives test_block_sparse_attention_capi test_block_sparse_attention_dkdv_sm90 test_selective_state_update_capi test_causal_conv1d_capi test_selective_scan_capi test_linear_scan_capi"}
for t in $tests; do
  timeout "${KIT_TEST_TIMEOUT:-60}" "./$t" >"$LOG/$t.log" 2>&1
  note "$t: rc=$? :: $(tail -1 "$LOG/$t.log")"
  grep -m5 FAIL "$LOG/$t.log" | tee -a "$summary"
done
# Straight into the summary, line by line: a run cut off by the machine's time limit keeps its rows.
# KIT_BENCH_CASES: only these native_bench cases (names in bench/native/native_bench.cpp).
timeout "${KIT_BENCH_TIMEOUT:-120}" ./native_bench "$OUT/native_bench.tsv" ${KIT_BENCH_CASES:-} 2>&1 | tee -a "$summary" >/dev/null
note "native_bench: rc=${PIPESTATUS[0]}"
# Where the profiler works (Firecracker machines): the full section set (with the stall breakdown)
# of the default selective_scan forward and backward at the big headline shape.
if [ "${KIT_PROFILE:-1}" = 1 ] && command -v ncu >/dev/null; then
  timeout "${KIT_PROFILE_TIMEOUT:-90}" ncu --clock-control none -k regex:"selective_scan_(fwd|bwd|bwd_carry)_kernel" -c 3 \
    --set full --print-details all ./native_bench - sscan_big_default >"$LOG/ncu.txt" 2>&1
  note "ncu: rc=$? (logs/ncu.txt)"
  grep -E "selective_scan_(fwd|bwd|bwd_carry)_kernel|Duration|Registers Per|Issue Slots Busy|Eligible Warps|Achieved Occupancy|Stall|stalled" \
    "$LOG/ncu.txt" | cut -c1-200 | head -120 >>"$summary"
  # Per-SASS-instruction stall samples of one kernel (KIT_SOURCE_KERNEL: fwd, bwd or bwd_carry).
  src=${KIT_SOURCE_KERNEL:-fwd}
  timeout "${KIT_PROFILE_TIMEOUT:-90}" ncu --clock-control none -k regex:"selective_scan_${src}_kernel" -c 1 \
    --section SourceCounters --section WarpStateStats --page source --print-source sass --csv \
    ./native_bench - sscan_big_default >"$LOG/ncu_${src}_source.csv" 2>&1
  note "ncu source: rc=$? (logs/ncu_${src}_source.csv)"
fi
# KIT_NCU="case:kernel-regex ...": the main sections (speed of light, occupancy, warp states, launch)
# of the first launch of each kernel in that native_bench case (e.g. ssu_mamba2:selective_state_update).
# KIT_NCU_BASE=demangled matches the regex against the demangled name with template arguments (to pick one
# instance of a template kernel, e.g. "bsa_bwd_causal:dkdv_kernel<.*true>").
ncu_base=${KIT_NCU_BASE:-function}
for pair in ${KIT_NCU:-}; do
  case_name=${pair%%:*} kernel=${pair#*:}
  timeout "${KIT_PROFILE_TIMEOUT:-90}" ncu --clock-control none --kernel-name-base "$ncu_base" -k regex:"$kernel" -c 1 --section SpeedOfLight \
    --section Occupancy --section WarpStateStats --section LaunchStats --section SchedulerStats --section MemoryWorkloadAnalysis \
    ./native_bench - "$case_name" >"$LOG/ncu_$case_name.txt" 2>&1
  note "ncu $case_name ($kernel): rc=$?"
  grep -E "^  [a-zA-Z_].*\(|Duration|Registers Per|Issue Slots Busy|Eligible Warps|Achieved Occupancy|Theoretical Occupancy|Memory Throughput|DRAM Throughput|L2 Cache Throughput|Warp Cycles Per Issued|No Eligible|Block Limit" \
    "$LOG/ncu_$case_name.txt" | cut -c1-160 | head -40 >>"$summary"
done
# KIT_NCU_SOURCE="case:kernel-regex ...": per-SASS-instruction stall samples and the warp-state breakdown of the
# first matching launch (CSV in the logs; the stall columns of the hottest instructions go to the summary).
n_src=0
for pair in ${KIT_NCU_SOURCE:-}; do
  case_name=${pair%%:*} kernel=${pair#*:} n_src=$((n_src + 1))
  csv=$LOG/ncu_source_${case_name}_$n_src.csv
  timeout "${KIT_PROFILE_TIMEOUT:-90}" ncu --clock-control none --kernel-name-base "$ncu_base" -k regex:"$kernel" -c 1 \
    --section SourceCounters --section WarpStateStats --page source --print-source sass --csv \
    ./native_bench - "$case_name" >"$csv" 2>&1
  note "ncu source $case_name ($kernel): rc=$? (logs/$(basename "$csv"))"
done
# KIT_SANITIZE_TOOLS: compute-sanitizer tools to run over each test (memcheck; racecheck and synccheck for the
# shared-memory hazards and barrier misuse of the warp-specialised Hopper kernels). ARK_TEST_SANITIZER=1 tells a test
# that it runs under a sanitizer: tests that would outlast the limit there (the forward attention test under racecheck
# did, at 45 s) run a reduced set of cases that still reaches every kernel instance.
if [ "${KIT_SANITIZE:-1}" = 1 ]; then
  for tool in ${KIT_SANITIZE_TOOLS:-memcheck}; do
    san_tests=${KIT_SANITIZE_TESTS:-test_selective_state_update_capi test_selective_scan_capi test_causal_conv1d_capi}
    for t in $san_tests; do
      ARK_TEST_SANITIZER=1 timeout "${KIT_SANITIZE_TIMEOUT:-60}" compute-sanitizer --tool "$tool" --error-exitcode 99 "./$t" \
        >"$LOG/${tool}_$t.log" 2>&1
      note "$tool $t: rc=$? :: $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$LOG/${tool}_$t.log" | tail -1)"
    done
  done
fi
tar -czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$LOG"
cat "$summary"
