#!/usr/bin/env bash
# bench/ab_miss.sh - two coredb binaries on the same data-API miss, in
# alternated runs on one world (one PostgreSQL, one Redis, the same 1,000
# users and 100,000 rows of data.sh), so that the drift of a shared machine
# falls on both alike: per run req/s, p50, p99 and coredb's CPU per miss,
# all of it and the user part alone (utime: what a change of coredb's own
# code moves, without the kernel's wake-ups that dominate the total).
#
# Run:   A=/path/old/coredb B=build/coredb bash bench/ab_miss.sh
# Settings: ROUNDS (alternations, default 4), DURATION (per run, 8s),
# C (wrk connections, 64), CACHE_TTL (0: every request a miss),
# RESULTS_TITLE. Appends a section to bench/RESULTS.md.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
A=${A:?A=<the first coredb binary>} B=${B:?B=<the second coredb binary>}
DURATION=${DURATION:-8s} ROUNDS=${ROUNDS:-4} C=${C:-64}
NUSERS=${BENCH_DATA_USERS:-1000} NPROJECTS=${BENCH_DATA_PROJECTS:-100} BODY=$BENCH_DIR/data_query.json
TITLE=${RESULTS_TITLE:-A/B of two binaries}
data_init
trap data_cleanup EXIT
raise_nofile
unset REDIS_URL
CDB_ENV+=(HTTP_MAX_CONNECTIONS_PER_IP=0 HTTP_IDLE_TIMEOUT=300 CACHE_TTL=${CACHE_TTL:-0})
CDB_BIN=$A data_setup "${CDB_ENV[@]}"
bench_stop_coredb
utime() { sed 's/.*) //' "/proc/$1/stat" | awk '{print $12}'; }
per_req() { awk -v t="$1" -v n="$2" -v k="$TCK" 'BEGIN { printf "%.0f", t * 1e6 / k / n }'; }
started=$(date -u '+%Y-%m-%d %H:%M UTC')
rows=""
declare -A SUM_CPU SUM_USER
for _ in $(seq 1 "$ROUNDS"); do
  for side in A B; do
    bin=${!side}
    CDB_BIN=$bin bench_start_coredb REDIS_URL="$REDIS_URL" "${CDB_ENV[@]}"
    W=(wrk -t2 -c"$C" --latency -s "$BENCH_DIR/data_query.lua" "http://127.0.0.1:$CDB_PORT/")
    "${W[@]}" -d3s >/dev/null
    load=$(cut -d' ' -f1 /proc/loadavg)
    u0=$(utime "$CDB_PID") t0=$(cpu_ticks "$CDB_PID")
    "${W[@]}" -d"$DURATION" >"$BENCH_TMP/wrk.txt"
    u1=$(utime "$CDB_PID") t1=$(cpu_ticks "$CDB_PID")
    n=$(awk '/requests in/ {print $1}' "$BENCH_TMP/wrk.txt")
    read -r rps p50 p99 non2xx <<<"$(wrk_summary <"$BENCH_TMP/wrk.txt")"
    cpu=$(per_req $((t1 - t0)) "$n") user=$(per_req $((u1 - u0)) "$n")
    SUM_CPU[$side]=$(( ${SUM_CPU[$side]:-0} + cpu )) SUM_USER[$side]=$(( ${SUM_USER[$side]:-0} + user ))
    rows+="| $side | $rps | $p50 | $p99 | $non2xx | $load | $cpu | $user |"$'\n'
    bench_stop_coredb
  done
done
{
  echo
  echo "### $TITLE — $started — $(machine_line)"
  echo "\`bash bench/ab_miss.sh\`: A = \`$A\`, B = \`$B\`; POST /api/v1/data/query (data.sh's page of 20 + total, $NUSERS users),"
  echo "CACHE_TTL=${CACHE_TTL:-0}, wrk -t2 -c$C -d$DURATION after a 3 s warm-up, $ROUNDS alternations on one PostgreSQL and Redis. CPU µs/req: coredb's utime+stime ÷ requests; user: utime alone."
  echo
  echo "| binary | req/s | p50 ms | p99 ms | non-2xx | load | coredb CPU µs/req | of it user µs/req |"
  echo "|---|---|---|---|---|---|---|---|"
  printf '%s' "$rows"
  echo
  echo "Averages: A $(( SUM_CPU[A] / ROUNDS )) µs/req ($(( SUM_USER[A] / ROUNDS )) user), B $(( SUM_CPU[B] / ROUNDS )) µs/req ($(( SUM_USER[B] / ROUNDS )) user)."
} | tee -a "$ROOT/bench/RESULTS.md"
