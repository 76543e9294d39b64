#!/usr/bin/env bash
# Issue 19's HTTP measurements, in one run on one machine:
#  1. the HTTP floor (GET /health/live, wrk -c64) of this build and, when
#     BASELINE_BIN names an older coredb binary, of that one (interleaved
#     A B A B so machine drift hits both);
#  2. the floor of this build while 1,000 slowloris connections are held
#     (bench/slow_clients.py), against the floor without them.
# Prints Markdown and appends it to bench/RESULTS.md.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
trap bench_cleanup EXIT
DURATION=${DURATION:-10s}
HELD=${HELD:-1000}
ulimit -n 65536 2>/dev/null || true

floor() { # -> "req/s p50 p99"
  wrk -t2 -c64 -d"$DURATION" --latency "http://127.0.0.1:$CDB_PORT/health/live" | wrk_summary | cut -d' ' -f1-3
}

restart_with() { # $1 = binary
  [ -n "${CDB_PID:-}" ] && kill "$CDB_PID" && wait "$CDB_PID" 2>/dev/null || true
  CDB_BIN="$1" bench_start_coredb HTTP_HEADER_TIMEOUT=10
}

load_at_start=$(cut -d' ' -f1-3 /proc/loadavg)
bench_start_pg
rows=""
bins=("$ROOT/build/coredb")
[ -n "${BASELINE_BIN:-}" ] && bins+=("$BASELINE_BIN")
for round in 1 2; do
  for bin in "${bins[@]}"; do
    restart_with "$bin"
    read -r rps p50 p99 <<<"$(floor)"
    label=$([ "$bin" = "$ROOT/build/coredb" ] && echo "this build" || echo "baseline ${BASELINE_LABEL:-$bin}")
    row="| $label, round $round | none | $rps | $p50 | $p99 |"
    echo "$row"; rows+="$row"$'\n'
  done
done

restart_with "$ROOT/build/coredb"
read -r rps0 p50_0 p99_0 <<<"$(floor)"
secs=$(( ${DURATION%s} + 8 ))
python3 "$(dirname "$0")/slow_clients.py" "$CDB_PORT" "$HELD" "$secs" >"$BENCH_TMP/slow.out" &
slow_pid=$!
sleep 3
read -r rps1 p50_1 p99_1 <<<"$(floor)"
wait "$slow_pid"
row0="| this build | none | $rps0 | $p50_0 | $p99_0 |"
row1="| this build | $HELD slowloris held ($(cat "$BENCH_TMP/slow.out")) | $rps1 | $p50_1 | $p99_1 |"
echo "$row0"; echo "$row1"
ratio=$(python3 -c "print(f'{float(\"$rps1\")/float(\"$rps0\"):.2f}')")
echo "req/s with $HELD held ÷ without: $ratio"

{
  echo
  echo "### HTTP layer under hostile clients (issue 19) — $(date -u +%Y-%m-%d) — $(machine_line)"
  echo "wrk -t2 -c64 -d$DURATION on GET /health/live; HTTP_THREADS=$(nproc); wrk and the slow clients share the 2 cores. Load average at start: $load_at_start."
  echo
  echo "| build | slow connections | req/s | p50 ms | p99 ms |"
  echo "|---|---|---|---|---|"
  printf "%s" "$rows"
  echo "$row0"
  echo "$row1"
  echo
  echo "req/s with $HELD slow connections held ÷ without: **$ratio**."
} >>"$(dirname "$0")/RESULTS.md"
