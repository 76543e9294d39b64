#!/usr/bin/env bash
# The HTTP floor: GET /health/live (answered on the event loop, no database)
# with wrk at 64 and 1,000 connections. Prints a Markdown table row per run
# and appends the run to bench/RESULTS.md. Later data-path numbers are read
# against this.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
trap bench_cleanup EXIT
DURATION=${DURATION:-10s}
ulimit -n 65536 2>/dev/null || true

bench_start_pg
bench_start_coredb
rows=""
for conns in 64 1000; do
  threads=2
  out=$(wrk -t$threads -c$conns -d"$DURATION" --latency "http://127.0.0.1:$CDB_PORT/health/live")
  read -r rps p50 p99 non2xx <<<"$(echo "$out" | wrk_summary)"
  row="| GET /health/live | $conns | $rps | $p50 | $p99 | $(peak_rss_mb $CDB_PID) | $non2xx |"
  echo "$row"
  rows+="$row"$'\n'
done

{
  echo
  echo "### HTTP floor — $(date -u +%Y-%m-%d) — $(machine_line)"
  echo "wrk -t2 -d$DURATION, coredb HTTP_THREADS=$(nproc) (default), release build; wrk shares the 2 cores."
  echo
  echo "| route | connections | req/s | p50 ms | p99 ms | peak RSS MiB | non-2xx |"
  echo "|---|---|---|---|---|---|---|"
  printf "%s" "$rows"
} >>"$(dirname "$0")/RESULTS.md"
