#!/usr/bin/env bash
# bench/hit_cost.sh - what one data-API cache hit costs coredb, counted, not
# timed (the machine is shared; no hardware counters in this VM): coredb
# runs under valgrind's callgrind with one event loop, a caller's query is
# warmed into the first-level cache, then callgrind's counters are zeroed,
# N identical hits are sent one at a time on one keep-alive connection
# (hit_cost.py), and the counters dumped: instructions (Ir) and calls to
# malloc/calloc/realloc/free of the whole process during those N hits.
# Run: bash bench/hit_cost.sh [N]   (CDB_BIN: the binary, default build/coredb;
#      CG_KEEP=DIR keeps callgrind's files for callgrind_annotate; HIT_ENV:
#      more settings, e.g. HIT_ENV=CACHE_L1_MB=0 for hits served from Redis)
# Needs valgrind (apt-get install valgrind), PostgreSQL 15 and redis-server.
# callgrind_control is run with HOST=127.0.0.1: valgrind names its control
# pipe after $HOST, and coredb's environment sets it.
# Figures (docs/architecture.md, "An answer's bytes and the request's arena").
set -euo pipefail
source "$(dirname "$0")/lib.sh"
N=${1:-1000}
DURATION=5s
NUSERS=2 NPROJECTS=100
BODY=$BENCH_DIR/data_query.json
CDB=${CDB_BIN:-$ROOT/build/coredb}
data_init
trap data_cleanup EXIT
data_setup CACHE_TTL=300 "${CDB_ENV[@]}"
bench_stop_coredb
token=$(python3 -c 'import re,sys; print(re.search(r"token=\"([^\"]+)\"", open(sys.argv[1]).read()).group(1))' "$BENCH_USERS")
CDB_PORT=$(free_port)
env DATABASE_URL="$PG_URL" REDIS_URL="$REDIS_URL" JWT_SECRET=bench-secret-0123456789abcdef0123456789abcdef \
    PORT=$CDB_PORT HOST=127.0.0.1 PROMETHEUS_PORT=0 LOG_LEVEL=warn HTTP_THREADS=1 CACHE_TTL=300 "${CDB_ENV[@]}" ${HIT_ENV:-} \
    valgrind --tool=callgrind --separate-threads=yes --callgrind-out-file="$BENCH_TMP/cg.out.%p" "$CDB" serve >"$BENCH_TMP/coredb.log" 2>&1 &
CDB_PID=$!
for _ in $(seq 1 600); do
  curl -sf "http://127.0.0.1:$CDB_PORT/health/live" >/dev/null && break
  sleep 0.1
done
python3 "$BENCH_DIR/hit_cost.py" "$CDB_PORT" "$token" "$BODY" 50 >/dev/null   # miss, Redis hit, then L1 hits
HOST=127.0.0.1 callgrind_control -z "$CDB_PID" >/dev/null
hits=$(python3 "$BENCH_DIR/hit_cost.py" "$CDB_PORT" "$token" "$BODY" "$N")
HOST=127.0.0.1 callgrind_control -d "$CDB_PID" >/dev/null
sleep 1
echo "binary: $CDB ${HIT_ENV:-}; $N hits sent ($hits answered cached:true), HTTP_THREADS=1, counted by callgrind (--separate-threads=yes: a line per thread that ran, then the total; per hit = count / $N)"
# the dump's files (callgrind_control -d writes <file>.<dump>-<thread>)
python3 "$BENCH_DIR/callgrind_calls.py" malloc,calloc,realloc,free "$BENCH_TMP"/cg.out.*.1-* |
  awk -v n="$N" '{ printf "%-22s", $1; for (i = 2; i < NF; i += 2) printf "  %s %d (%.1f/hit)", $i, $(i+1), $(i+1) / n; print "" }'
[ -n "${CG_KEEP:-}" ] && mkdir -p "$CG_KEEP" && cp "$BENCH_TMP"/cg.out.*.1-* "$CG_KEEP"/
kill "$CDB_PID"; wait "$CDB_PID" 2>/dev/null || true
