#!/usr/bin/env bash
# POST /api/v1/data/transaction on the event loops vs on the workers
# (issue 8 item 3): the same wrk load (tx_loop.lua: one insert + one Redis
# INCR per transaction, the caller's own row, round robin over NUSERS
# callers) against one coredb + PostgreSQL 15 + Redis on loopback, run
#  - loop:   DB_LOOP_CONNECTIONS=2 (the default): the transaction, its
#            outbox (Redis ops, generation bumps, invalidation acks) and the
#            answer all on the loop;
#  - worker: DB_LOOP_CONNECTIONS=0: admission on the loop, the transaction
#            and its outbox on a worker thread (the blocking path);
#  - TX_KEYED=1: each transaction under its own Idempotency-Key (the
#    loop's two segments on a claimed connection, or the worker's two
#    round trips);
#  - and, when PREV_BIN names another build (e.g. the branch before the
#    outbox moved to the loop), that binary with DB_LOOP_CONNECTIONS=2.
# Each run records CPU per transaction by party (coredb, PostgreSQL, Redis,
# wrk, other), via lib.sh's accounted_run. The machine may be shared: the
# "other" column says how much CPU other processes took; read the rows with
# that in mind. Prints a Markdown table (not appended to RESULTS.md).
set -euo pipefail
source "$(dirname "$0")/lib.sh"
DURATION=${DURATION:-10s}
export TX_KEYED=${TX_KEYED:-}
NUSERS=${BENCH_DATA_USERS:-200}
NPROJECTS=45   # data_setup.py checks a full page of the caller's projects
CONNS=${CONNS:-16}
THREADS=2
BODY=$BENCH_DIR/data_query.json
data_init
trap data_cleanup EXIT
raise_nofile
unset REDIS_URL

data_setup CACHE_TTL=300 "${CDB_ENV[@]}"
bench_stop_coredb

tx_wrk() { echo wrk -t"$THREADS" -c"$CONNS" -d"$1" --latency -s "$BENCH_DIR/tx_loop.lua" "http://127.0.0.1:$CDB_PORT/"; }

# Redis commands run so far, by command ("llen=123 blpop=45 ..."), and in all.
redis_calls() { redis-cli -p "$REDIS_PORT" info commandstats | awk -F'[_:=,]' '/^cmdstat_/ {printf "%s=%s ", $2, $4; n += $4} END {print "all=" n}'; }
declare -A REDIS_PER_TX

ADMIN_ENV=(COREDB_ADMIN_EMAIL=bench-admin@bench.example.com COREDB_ADMIN_PASSWORD=bench-admin-password-1)
# Where transactions went (GET /metrics as the bootstrap admin): the loop's counters, or "-" for a build without them.
tx_metrics() {
  local token
  token=$(curl -s -H 'Content-Type: application/json' -d '{"email":"bench-admin@bench.example.com","password":"bench-admin-password-1"}' \
    "http://127.0.0.1:$CDB_PORT/api/v1/auth/login" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("access_token",""))')
  curl -s -H "Authorization: Bearer $token" "http://127.0.0.1:$CDB_PORT/metrics" |
    awk '/^coredb_http_loop_(transactions|transaction_finishes|admissions)_total/ {sub(/^coredb_http_loop_/, ""); printf "%s ", $0}'
}
declare -A WHERE

run() { # key label what bin loop_conns [NAME=value ...]
  local key=$1 label=$2 what=$3 bin=$4 lc=$5
  shift 5
  CDB_BIN=$bin bench_start_coredb REDIS_URL="$REDIS_URL" CACHE_TTL=300 DB_LOOP_CONNECTIONS="$lc" "${ADMIN_ENV[@]}" "${CDB_ENV[@]}" "$@"
  set -- "$key" "$label" "$what"
  # shellcheck disable=SC2046
  $(tx_wrk 2s) >/dev/null   # untimed: fills the pools and the loops' connections
  local c0 c1
  c0=$(redis_calls)
  accounted_run "$1" wrk "$2" "$3" $(tx_wrk "$DURATION")
  c1=$(redis_calls)
  WHERE[$1]=$(tx_metrics)
  # Redis commands per transaction, by command (the counts include the loops' session checks)
  REDIS_PER_TX[$1]=$(python3 -c 'import sys
a = dict(kv.split("=") for kv in sys.argv[1].split())
b = dict(kv.split("=") for kv in sys.argv[2].split())
n = float(sys.argv[3]) * float(sys.argv[4])
print(" ".join("%s %.2f" % (k, (int(v) - int(a.get(k, 0))) / n) for k, v in sorted(b.items(), key=lambda kv: -int(kv[1]))
               if int(v) - int(a.get(k, 0)) > 0))' "$c0" "$c1" "${RPS[$1]}" "$dur_s")
  bench_stop_coredb
}

run loop "loop (DB_LOOP_CONNECTIONS=2)" "transaction + outbox + invalidation acks on the loop" "$ROOT/build/coredb" 2
run loop8 "loop (DB_LOOP_CONNECTIONS=8, DB_POOL_MAX=24)" "as above, a connection per client of each loop" "$ROOT/build/coredb" 8 DB_POOL_MAX=24
run worker "worker (DB_LOOP_CONNECTIONS=0)" "transaction + outbox on a worker thread" "$ROOT/build/coredb" 0
if [ -n "${PREV_BIN:-}" ]; then
  run prev "previous build, DB_LOOP_CONNECTIONS=2" "$PREV_BIN" "$PREV_BIN" 2
  run prev8 "previous build, DB_LOOP_CONNECTIONS=8, DB_POOL_MAX=24" "$PREV_BIN" "$PREV_BIN" 8 DB_POOL_MAX=24
fi

echo
echo "### Transactions on the loops vs the workers — $(date -u +%Y-%m-%d) — $(machine_line)"
echo "wrk -t$THREADS -c$CONNS -d$DURATION, $NUSERS users round robin; each transaction: insert 1 project + Redis INCR${TX_KEYED:+ (TX_KEYED=$TX_KEYED: 1 = each under its own Idempotency-Key)}. HTTP_THREADS=$http_threads, DB_POOL_MAX=$pool_max."
accounted_table_head
printf "%s" "$rows"
for k in "${!REDIS_PER_TX[@]}"; do
  echo "- $k: Redis commands per transaction: ${REDIS_PER_TX[$k]}"
  echo "- $k: counters after the run (warm-up included): ${WHERE[$k]}"
done
echo "- loop ÷ worker tx/s: $(ratio "${RPS[loop]}" "${RPS[worker]}"); coredb CPU µs/tx: loop ${CPU_CDB[loop]}, worker ${CPU_CDB[worker]}${PREV_BIN:+, previous ${CPU_CDB[prev]}}."
