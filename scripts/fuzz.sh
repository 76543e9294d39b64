#!/usr/bin/env bash
# make fuzz: runs every libFuzzer harness of fuzz/ (built in build-fuzz/fuzz/
# by `make fuzz-bins`) for FUZZ_SECONDS (default 60) each, one after the
# other, and prints per harness its executions, coverage (cov: edges, ft:
# features, from -print_final_stats and the DONE line) and whether it
# crashed. Exits 1 when any harness crashed, leaked, timed out (CRASH: an
# input broke it, kept as build-fuzz/crashes/<harness>-crash-*; reproduce:
# build-fuzz/fuzz/<harness> FILE) or did not run (FAILED, NOT BUILT).
#
# The seeds of fuzz/corpus/<harness>/ are read, never written: what a run
# finds goes to build-fuzz/corpus/<harness>/, which the next run starts from.
# FUZZ_TARGETS="a b" runs only those. Every run is bounded by FUZZ_SECONDS
# (and -timeout per input), nothing listens on a port.
set -uo pipefail
cd "$(dirname "$0")/.."

SECONDS_EACH=${FUZZ_SECONDS:-60}
TARGETS=${FUZZ_TARGETS:-$(ls fuzz/*.c | xargs -n1 basename | sed 's/\.c$//' | sort)}
mkdir -p build-fuzz/crashes build-fuzz/logs
status=0
printf '%-16s %12s %8s %8s %8s  %s\n' harness executions exec/s cov ft result
for name in $TARGETS; do
  bin=build-fuzz/fuzz/$name
  log=build-fuzz/logs/$name.log
  if [ ! -x "$bin" ]; then
    printf '%-16s %12s %8s %8s %8s  %s\n' "$name" - - - - "NOT BUILT"
    status=1
    continue
  fi
  mkdir -p "build-fuzz/corpus/$name"
  dict=()
  [ -f "fuzz/$name.dict" ] && dict=(-dict="fuzz/$name.dict")
  # a hard wall-clock bound besides libFuzzer's own: a wedged harness is a failure too
  timeout --kill-after=10 $((SECONDS_EACH + 60)) \
    "$bin" -max_total_time="$SECONDS_EACH" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
      -artifact_prefix="build-fuzz/crashes/$name-" "${dict[@]}" \
      "build-fuzz/corpus/$name" "fuzz/corpus/$name" >"$log" 2>&1
  rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  speed=$(sed -n 's/^stat::average_exec_per_sec: *//p' "$log" | tail -1)
  cov=$(grep -oE '(DONE|INITED) +cov: [0-9]+' "$log" | tail -1 | grep -oE '[0-9]+$')
  ft=$(grep -oE '(DONE|INITED) +cov: [0-9]+ ft: [0-9]+' "$log" | tail -1 | grep -oE '[0-9]+$')
  crash=$(grep -oE "Test unit written to [^ ]+" "$log" | tail -1 | sed 's/Test unit written to //')
  if [ $rc -eq 0 ] && [ -z "$crash" ]; then
    result=ok
  else
    if [ -n "$crash" ]; then result="CRASH (exit $rc) $crash"; else result="FAILED (exit $rc) see $log"; fi
    status=1
    # the sanitizer's or the oracle's own words, so CI's log says what broke
    grep -aE "ERROR: |SUMMARY: |oracle|runtime error" "$log" | head -5 | sed "s|^|  $name: |"
  fi
  printf '%-16s %12s %8s %8s %8s  %s\n' "$name" "${execs:--}" "${speed:--}" "${cov:--}" "${ft:--}" "$result"
done
exit $status
