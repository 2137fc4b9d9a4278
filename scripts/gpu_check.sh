#!/usr/bin/env bash
# On the GPU machine (no package registry): build arkernels from this checkout with its python3
# (torch preinstalled), run the GPU tests, compute-sanitizer memcheck over the CUDA tests, and the
# benchmark report. Logs and results land under $OUT (default ./gpu_out):
#   summary.txt   pytest summary, sanitizer summaries, benchmark table
#   logs.tgz      every log of the run
#   bench.tgz     the report (bench/*.md, .json, .png)
# Usage: scripts/gpu_check.sh [stages...]   stages: build test capi sanitize (= sanitize-capi + sanitize-pytest)
#   test-knobs (the test stage again with $TEST_KNOBS set: scripts/tuning_knobs.py; BENCH_KNOBS: the same for bench)
#   sweep bench (default: all but sweep), mamba-src (mamba-ssm's sources on PYTHONPATH, unbuilt: its Triton
#   ops only), ssdsweep (scripts/ssd_chunk_scan_sweep.py $SSD_SWEEP_ARGS), ssutime (scripts/ssu_timing.py),
#   kit (runs the carried device kit), lmprof (profile of a Mamba LM
#   training step, scripts/profile_mamba_lm.py), host (scripts/host_overhead.py cuda),
#   bsasweep (scripts/block_sparse_attention_sweep.py $BSA_SWEEP_ARGS), mamba-peer (starts building mamba-ssm's CUDA scan in the
#   background: later stages that need it wait), sscan (selective_scan quick timing vs that peer)
# Peers: wheels in .whl/ (e.g. accelerated-scan) are installed to /tmp/peers first; mamba-ssm's sdist
# and the build script (../shared/peers/build_mamba_scan.py) are expected in .whl/ too.
# PREBUILT=path/libarkernels.so builds only the torch bindings against that library (device kit).
# TEST_PATHS (default tests) limits the test stage; TEST_K adds a -k filter; TEST_ARGS adds pytest options.
# SANITIZE_PATHS / SANITIZE_K pick the memcheck pytest run (default: linear_scan's CUDA backend cases).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu_out}
LOG=$OUT/logs
mkdir -p "$LOG"
stages=${*:-build test capi sanitize bench}
py=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 ARKERNELS_CUDA_ARCHS=${ARKERNELS_CUDA_ARCHS:-90a} CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-16}
summary=$OUT/summary.txt
: >"$summary"
note() { echo "$*" | tee -a "$summary"; }

note "== $(date -u +%FT%TZ) $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null)"
note "== python $("$py" -c 'import sys, torch; print(sys.version.split()[0], "torch", torch.__version__)' 2>&1)"

if ls .whl/*.whl >/dev/null 2>&1; then
  "$py" -m pip install -q --no-index --no-deps --target /tmp/peers .whl/*.whl >"$LOG/peers.log" 2>&1 \
    && export PYTHONPATH=/tmp/peers${PYTHONPATH:+:$PYTHONPATH}
fi

for stage in $stages; do
  t0=$(date +%s)
  case $stage in
    build)
      # PREBUILT=.kit/libarkernels.so (scripts/device_kit.sh, carried): compile only the torch bindings
      # against it (~20 s instead of minutes for the CUDA kernels); its libgomp comes along on the path.
      prebuilt=()
      if [ -n "${PREBUILT:-}" ]; then
        prebuilt=(-Ccmake.define.ARKERNELS_PREBUILT_LIBRARY="$(realpath "$PREBUILT")" -Cbuild-dir=build/prebuilt)
        export LD_LIBRARY_PATH=$(dirname "$(realpath "$PREBUILT")")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
      fi
      "$py" -m pip install --no-index --no-build-isolation --no-deps -v "${prebuilt[@]}" -e . >"$LOG/build.log" 2>&1
      rc=$?; note "build: rc=$rc ($(grep -m1 'arkernels: CUDA' "$LOG/build.log" | sed 's/^ *//'))"
      [ $rc -eq 0 ] || { tail -30 "$LOG/build.log"; break; } ;;
    mamba-peer)
      ( MAX_JOBS=${PEER_JOBS:-8} "$py" .whl/build_mamba_scan.py .whl/mamba_ssm-*.tar.gz /tmp/mamba_peer \
          >"$LOG/peer_mamba.log" 2>&1; echo "rc=$?" >>"$LOG/peer_mamba.log" ) &
      peer_pid=$!
      # The build extracts the sources first; later stages import the extension and mamba_ssm from here.
      export PYTHONPATH=/tmp/mamba_peer:/tmp/mamba_peer/src/mamba_ssm-2.3.2.post1${PYTHONPATH:+:$PYTHONPATH}
      note "mamba-peer: building in the background (pid $peer_pid)" ;;
    mamba-src)
      # mamba-ssm's Python sources only (its Triton ops: SSD chunk scan, selective_state_update), no build.
      mkdir -p /tmp/mamba_src && tar xzf .whl/mamba_ssm-*.tar.gz -C /tmp/mamba_src \
        && export PYTHONPATH=$(ls -d /tmp/mamba_src/mamba_ssm-*)${PYTHONPATH:+:$PYTHONPATH}
      note "mamba-src: rc=$?" ;;
    ssdsweep|ssutime)
      script=scripts/ssd_chunk_scan_sweep.py; [ "$stage" = ssutime ] && script=scripts/ssu_timing.py
      timeout ${SWEEP_TIMEOUT:-400} "$py" "$script" ${SSD_SWEEP_ARGS:-} >"$LOG/$stage.log" 2>&1
      note "$stage: rc=$?"; grep -v Warning "$LOG/$stage.log" | tail -80 >>"$summary" ;;
    sscan)
      [ -n "${peer_pid:-}" ] && wait "$peer_pid"
      note "mamba-peer build: $(tail -1 "$LOG/peer_mamba.log" 2>/dev/null)"
      peer_arg=; [ -d /tmp/mamba_peer/src ] && grep -q rc=0 "$LOG/peer_mamba.log" 2>/dev/null && peer_arg="--peer-build /tmp/mamba_peer"
      timeout 300 "$py" scripts/selective_scan_timing.py $peer_arg ${SSCAN_ARGS:-} >"$LOG/sscan.log" 2>&1
      note "sscan: rc=$?"; cat "$LOG/sscan.log" | grep -v Warning >>"$summary" ;;
    test)
      # TEST_WAIT_PEER=0: run the tests while the peer builds (its comparisons then skip).
      [ -n "${peer_pid:-}" ] && [ "${TEST_WAIT_PEER:-1}" = 1 ] && wait "$peer_pid"
      # SIGINT first: pytest (and its xdist workers) stop and still print the summary of what ran.
      timeout -s INT -k 30 ${TEST_TIMEOUT:-420} "$py" -m pytest ${TEST_PATHS:-tests} ${TEST_K:+-k "$TEST_K"} ${TEST_ARGS:-} -q -ra -p no:cacheprovider --durations=10 >"$LOG/pytest.log" 2>&1
      note "pytest: rc=$? :: $(tail -1 "$LOG/pytest.log")"
      grep -E '^(FAILED|ERROR)' "$LOG/pytest.log" | head -20 | tee -a "$summary" ;;
    test-knobs)
      # The same tests on the carried tuning build with launch knobs set (TEST_KNOBS, e.g.
      # "sscan_fwd_paired_bc=1,sscan_fwd_reduce=0"): a candidate kernel through the whole torch suite
      # before it becomes a default (scripts/tuning_knobs.py); TEST_KNOBS_PATHS narrows the files.
      ARK_TUNING_KNOBS="${TEST_KNOBS:?test-knobs needs TEST_KNOBS}" PYTHONPATH=scripts${PYTHONPATH:+:$PYTHONPATH} \
        timeout -s INT -k 30 ${TEST_TIMEOUT:-420} "$py" -m pytest ${TEST_KNOBS_PATHS:-${TEST_PATHS:-tests}} ${TEST_K:+-k "$TEST_K"} ${TEST_ARGS:-} \
        -p tuning_knobs -q -ra -p no:cacheprovider --durations=10 >"$LOG/pytest_knobs.log" 2>&1
      note "pytest with knobs $TEST_KNOBS: rc=$? :: $(tail -1 "$LOG/pytest_knobs.log")"
      grep -E '^(FAILED|ERROR)' "$LOG/pytest_knobs.log" | head -20 | tee -a "$summary" ;;
    capi)
      { cmake -S . -B build/capi -G Ninja -DARKERNELS_BUILD_TORCH=OFF -DARKERNELS_CUDA_ARCHS="$ARKERNELS_CUDA_ARCHS" && cmake --build build/capi \
          && (cd build/capi && ctest --output-on-failure); } >"$LOG/capi.log" 2>&1
      note "capi ctest: rc=$? :: $(grep -E 'tests passed|tests failed' "$LOG/capi.log" | tail -1)" ;;
    sanitize|sanitize-capi|sanitize-pytest)
      if [ "$stage" != sanitize-pytest ]; then
      for t in build/capi/tests/capi/test_*_capi; do
        compute-sanitizer --tool memcheck --error-exitcode 99 "$t" >"$LOG/sanitizer_$(basename "$t").log" 2>&1
        note "memcheck $(basename "$t"): rc=$? :: $(grep -E 'ERROR SUMMARY' "$LOG/sanitizer_$(basename "$t").log" | tail -1)"
      done
      fi
      [ "$stage" = sanitize-capi ] && continue
      # The CUDA backend's own tests (every dtype, length, layout, reverse); the C API test above
      # covers padded rows and misaligned starts. Triton and the >2^31 test stay out (time).
      timeout ${SANITIZE_TIMEOUT:-300} compute-sanitizer --tool memcheck --error-exitcode 99 "$py" -m pytest ${SANITIZE_PATHS:-tests/ops/test_linear_scan.py} \
        -q -p no:cacheprovider -m "not slow" -k "${SANITIZE_K:-cuda and not triton and not auto and not compile and not opcheck}" \
        >"$LOG/sanitizer_pytest.log" 2>&1
      note "memcheck pytest (cuda backend): rc=$? :: $(grep -E 'ERROR SUMMARY' "$LOG/sanitizer_pytest.log" | tail -1) :: $(grep -E 'passed|failed' "$LOG/sanitizer_pytest.log" | tail -1)" ;;
    kit)
      # The device kit (scripts/device_kit.sh, carried as .kit): C API tests of every tuning variant,
      # the native variant sweep, ncu of the selective_scan kernels, memcheck; its files under $OUT/kit.
      ( cd .kit && OUT="$OUT/kit" bash run.sh ) >"$LOG/kit.log" 2>&1
      note "kit: rc=$? :: $(grep -c ': rc=0' "$OUT/kit/summary.txt" 2>/dev/null) steps rc=0 (kit/summary.txt)" ;;
    lmprof)
      [ -n "${peer_pid:-}" ] && wait "$peer_pid"
      timeout ${LMPROF_TIMEOUT:-240} "$py" scripts/profile_mamba_lm.py ${LMPROF_ARGS:-} >"$LOG/lmprof.log" 2>&1
      note "lmprof: rc=$?"; grep -v Warning "$LOG/lmprof.log" | tail -60 >>"$summary" ;;
    bsasweep)
      # block_sparse_attention launch configurations per case, with flex and SDPA ($BSA_SWEEP_ARGS).
      timeout ${SWEEP_TIMEOUT:-420} "$py" scripts/block_sparse_attention_sweep.py ${BSA_SWEEP_ARGS:---peers} \
        >"$LOG/bsasweep.log" 2>&1
      note "bsasweep: rc=$?"; grep -v Warning "$LOG/bsasweep.log" >>"$summary" ;;
    host)
      # Host time per call of the decode steps and linear_scan (public function vs torch op).
      timeout 180 "$py" scripts/host_overhead.py cuda >"$LOG/host.log" 2>&1
      note "host: rc=$?"; cat "$LOG/host.log" >>"$summary" ;;
    sweep)
      timeout 300 "$py" scripts/quick_timing.py ${SWEEP_SHAPES:-} >"$LOG/sweep.log" 2>&1
      note "sweep: rc=$?"; cat "$LOG/sweep.log" >>"$summary" ;;
    bench)
      [ -n "${peer_pid:-}" ] && wait "$peer_pid"
      # A peer built by an earlier call on this machine: its extension and sources first on the path
      # (mamba-src's unbuilt copy would shadow them and the scan peers would not import).
      [ -d /tmp/mamba_peer/src ] && export PYTHONPATH=/tmp/mamba_peer:$(ls -d /tmp/mamba_peer/src/mamba_ssm-* | head -1):$PYTHONPATH
      # BENCH_KNOBS: the report with launch knobs set (a candidate default through the carried tuning build).
      report=(-m bench.report); [ -n "${BENCH_KNOBS:-}" ] && report=(scripts/tuning_knobs.py bench.report)
      ARK_TUNING_KNOBS="${BENCH_KNOBS:-}" timeout ${BENCH_TIMEOUT:-540} "$py" "${report[@]}" --out "$OUT/bench" ${BENCH_ARGS:-} >"$LOG/bench.log" 2>&1
      note "bench: rc=$? ${BENCH_KNOBS:+(knobs $BENCH_KNOBS: $(grep -m1 'tuning knobs' "$LOG/bench.log"))}"
      md=$(ls "$OUT"/bench/*.md 2>/dev/null | head -1)
      [ -n "$md" ] && cat "$md" >>"$summary" || tail -30 "$LOG/bench.log" | tee -a "$summary"
      # The device returns at most 8 files: the report's .md, .json and plots travel as one archive.
      [ -d "$OUT/bench" ] && tar -czf "$OUT/bench.tgz" -C "$OUT" bench && rm -rf "$OUT/bench" ;;
    *) note "unknown stage $stage" ;;
  esac
  note "   ($stage took $(( $(date +%s) - t0 )) s)"
done
tar -czf "$OUT/logs.tgz" -C "$OUT" logs && rm -rf "$LOG"
cat "$summary"
