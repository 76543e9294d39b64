#!/usr/bin/env bash
# The cost of recording metrics on the hot path (issue 12): req/s of the
# data API's cache-hit path (POST /api/v1/data/query answered from Redis,
# data.sh's "hit" run) with the release build against the same build with
# every recording call compiled out (-DCDB_NO_METRICS, build-nometrics/).
# Both run in turns (ROUNDS pairs, on/off alternating so drift of a shared
# machine hits both alike) against one PostgreSQL, one Redis, one seeded
# database; the ratio of the medians is the cost. Short on purpose: the
# machine is shared. Appends the run to bench/RESULTS.md.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
DURATION=${DURATION:-5s}
ROUNDS=${ROUNDS:-3}
NUSERS=${BENCH_DATA_USERS:-50}
NPROJECTS=45
CONNS=16
THREADS=2
BODY=$BENCH_DIR/data_query.json
trap 'bench_stop_redis; bench_cleanup' EXIT
ulimit -n 65536 2>/dev/null || true

make -s -C "$ROOT" all
make -s -C "$ROOT" BUILD=build-nometrics EXTRA_CFLAGS=-DCDB_NO_METRICS build-nometrics/coredb
ON=$ROOT/build/coredb OFF=$ROOT/build-nometrics/coredb
# the direct cost of the recording calls, on one thread
cc -O2 -std=c11 -D_GNU_SOURCE -I"$ROOT/include" -I"$ROOT/src" $(pkg-config --cflags jansson) \
  -o "$BENCH_TMP/metrics_micro" "$BENCH_DIR/metrics_micro.c" "$ROOT/build/libcoredb.a" \
  $(pkg-config --libs libpq libevent_pthreads libevent hiredis jansson libsodium libjwt libcrypt) -lh2o -lpthread -lm
micro=$("$BENCH_TMP/metrics_micro")
CDB_ENV=(RATE_LIMIT_USER=0 RATE_LIMIT_ANON=0 PASSWORD_HASH_OPSLIMIT=1 PASSWORD_HASH_MEMLIMIT_KIB=8 CACHE_TTL=300)

wrk_run() { wrk -t$THREADS -c$CONNS -d"$1" --latency -s "$BENCH_DIR/data_query.lua" "http://127.0.0.1:$CDB_PORT/"; }

bench_start_pg
bench_start_redis
export BENCH_USERS="$BENCH_TMP/data_tokens.lua" BENCH_BODY="$BODY"
CDB_BIN=$ON bench_start_coredb REDIS_URL="$REDIS_URL" "${CDB_ENV[@]}"
curl -sf -o /dev/null -H 'Content-Type: application/json' \
  -d '{"email":"data0@bench.example.com","username":"data0","password":"bench-data-password"}' \
  "http://127.0.0.1:$CDB_PORT/users/" || { echo "registering data0 failed"; exit 1; }
psql_pg -v nusers="$NUSERS" -v nprojects="$NPROJECTS" -f "$BENCH_DIR/data_seed.sql"
python3 "$BENCH_DIR/data_setup.py" "http://127.0.0.1:$CDB_PORT" "$NUSERS" "$BENCH_TMP" "$BODY"
bench_stop_coredb

declare -a on_rps off_rps
rows=""
for round in $(seq 1 "$ROUNDS"); do
  for build in on off; do
    bin=$ON; [ $build = off ] && bin=$OFF
    CDB_BIN=$bin bench_start_coredb REDIS_URL="$REDIS_URL" "${CDB_ENV[@]}"
    wrk_run 2s >/dev/null   # untimed: stores every user's page, so the timed run only hits
    load=$(cut -d' ' -f1 /proc/loadavg)
    read -r rps p50 p99 errs <<<"$(wrk_run "$DURATION" | wrk_summary)"
    bench_stop_coredb
    [ $build = on ] && on_rps+=("$rps") || off_rps+=("$rps")
    row="| $round | $build | $rps | $p50 | $p99 | $errs | $load |"
    echo "$row"
    rows+="$row"$'\n'
  done
done
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print (NR % 2 ? a[(NR+1)/2] : (a[NR/2] + a[NR/2+1]) / 2)}'; }
m_on=$(median "${on_rps[@]}") m_off=$(median "${off_rps[@]}")
summary=$(awk -v a="$m_on" -v b="$m_off" 'BEGIN { printf "- Median req/s with metrics %.2f, compiled out %.2f: ratio on ÷ off = **%.3f** (cost %.1f%%).", a, b, a / b, 100 * (1 - a / b) }')
summary+=$'\n'"- Direct cost (bench/metrics_micro.c, one thread, 10 M iterations): $micro."
echo "$summary"
{
  echo
  echo "### Metrics cost on the data API's cache-hit path — $(date -u +%Y-%m-%d) — $(machine_line)"
  echo "POST /api/v1/data/query \`$(tr -d '\n' <"$BODY")\` answered from Redis (CACHE_TTL=300, warmed 2 s untimed before each run), $NUSERS users round robin;"
  echo "wrk -t$THREADS -c$CONNS -d$DURATION per run, $ROUNDS rounds alternating the release build (\`on\`) and the same sources built with -DCDB_NO_METRICS (\`off\`: every recording call compiled out);"
  echo "same PostgreSQL 15, Redis and database for all. Load generator and servers share the machine with other sessions' work (load = 1-min load average before the run), so read the ratio of medians, not single rows."
  echo
  echo "| round | metrics | req/s | p50 ms | p99 ms | non-2xx | load |"
  echo "|---|---|---|---|---|---|---|"
  printf "%s" "$rows"
  echo
  echo "$summary"
} >>"$BENCH_DIR/RESULTS.md"
