#!/usr/bin/env bash
# bench/miss_tail.sh - where the p99 of a data-API miss comes from (issue 8):
# on one world (data.sh's 1,000 users x 100 projects, CACHE_TTL=0, wrk
# -t2 -c64), ROUNDS alternations of
#  - the miss under lib.sh's accounted_run (engine.sh's /proc sampling and
#    /usr/bin/time), then the same wrk plain: does the accounting lengthen
#    the tail?
#  - the same wrk under `perf sched record -a`, then `perf sched latency`:
#    the longest and the mean wait from runnable to running of each party
#    (PostgreSQL's backends, coredb's threads, wrk, Redis).
# Prints the rows; nothing is appended to RESULTS.md.
# Run: ROUNDS=3 DURATION=10s bash bench/miss_tail.sh   (root, for perf)
set -euo pipefail
source "$(dirname "$0")/lib.sh"
DURATION=${DURATION:-10s} ROUNDS=${ROUNDS:-3}
NUSERS=${BENCH_DATA_USERS:-1000} NPROJECTS=${BENCH_DATA_PROJECTS:-100} BODY=$BENCH_DIR/data_query.json
CONNS=64 THREADS=2
data_init                          # also declares accounted_run's RPS, P50, P99 ... arrays
trap data_cleanup EXIT
raise_nofile
unset REDIS_URL
CDB_ENV+=(HTTP_MAX_CONNECTIONS_PER_IP=0 HTTP_IDLE_TIMEOUT=300)
data_setup CACHE_TTL=0 "${CDB_ENV[@]}"
W=(wrk -t"$THREADS" -c"$CONNS" --latency -s "$BENCH_DIR/data_query.lua" "http://127.0.0.1:$CDB_PORT/")
"${W[@]}" -d3s >/dev/null
PERF=$(command -v perf || true)
# wrk's output on stdin -> "req/s | p50 | p99"
cells() { wrk_summary | awk '{print $1 " | " $2 " | " $3}'; }
echo "| round | run | req/s | p50 ms | p99 ms |"
echo "|---|---|---|---|---|"
for i in $(seq 1 "$ROUNDS"); do
  accounted_run "a$i" wrk "accounted" "" "${W[@]}" -d"$DURATION" >/dev/null
  echo "| $i | accounted | ${RPS[a$i]} | ${P50[a$i]} | ${P99[a$i]} |"
  echo "| $i | plain | $("${W[@]}" -d"$DURATION" | cells) |"
  if [ -n "$PERF" ]; then
    "$PERF" sched record -a -o "$BENCH_TMP/sched.data" -- "${W[@]}" -d"$DURATION" >"$BENCH_TMP/sched_wrk.txt" 2>/dev/null
    echo "| $i | under perf sched | $(cells <"$BENCH_TMP/sched_wrk.txt") |"
    "$PERF" sched latency -i "$BENCH_TMP/sched.data" --sort max 2>/dev/null |
      awk -F'|' '$1 ~ /(postgres|coredb|wrk|redis-server)/ { gsub(/ +/, " "); print "  wait for a core:" $1 "mean" $4 "max" $5 }' |
      sed 's/avg://; s/max: //' >&2
    rm -f "$BENCH_TMP/sched.data"
  fi
done
