#!/usr/bin/env bash
# The data API against PostgreSQL itself (issue 4's benchmark): one page
# (limit 20) of the caller's projects, newest first, plus the total, as
#  - pgbench with the exact statements coredb sends for a cache miss,
#    pipelined and prepared the same way (pgbench_coredb.sql, -M prepared),
#    and with faster shapes of the same work (plain rows with and without the
#    role switch, one statement building the JSON); the fastest row is the
#    physical limit;
#  - coredb POST /api/v1/data/query with CACHE_TTL=0 (every request a miss);
#  - coredb with CACHE_TTL=300 after a warm-up pass (every request a hit).
# wrk (data_query.lua) and pgbench use the same connection and thread
# counts and pick among NUSERS users, each owning NPROJECTS projects. Every
# run records where the machine's CPU went per request (coredb, PostgreSQL,
# Redis, the load generator, anything else), so a shortfall can be read
# against its cause. Throw-away PostgreSQL and Redis; rows seeded by
# data_seed.sql, callers logged in by data_setup.py. Prints a Markdown row
# per run and appends the run to bench/RESULTS.md.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
BENCH_DIR=$(cd "$(dirname "$0")" && pwd)
DURATION=${DURATION:-10s}
NUSERS=${BENCH_DATA_USERS:-200}
NPROJECTS=45
CONNS=16
THREADS=2
BODY=$BENCH_DIR/data_query.json
SAMPLER_PID=
data_cleanup() {
  [ -n "$SAMPLER_PID" ] && kill "$SAMPLER_PID" 2>/dev/null
  bench_stop_redis
  bench_cleanup
}
trap data_cleanup EXIT
ulimit -n 65536 2>/dev/null || true
dur_s=${DURATION%s}
[[ "$dur_s" =~ ^[0-9]+$ ]] && [ "$dur_s" -ge 3 ] || { echo "DURATION must be seconds >= 3, e.g. 10s" >&2; exit 2; }
unset REDIS_URL
TCK=$(getconf CLK_TCK)

# Rate limits off; cheap password hashes, so the NUSERS logins of the setup
# take milliseconds (hashing plays no part in a query).
CDB_ENV=(RATE_LIMIT_USER=0 RATE_LIMIT_ANON=0 PASSWORD_HASH_OPSLIMIT=1 PASSWORD_HASH_MEMLIMIT_KIB=8)
declare -A RPS P99 OTHER
rows=""

cdb_ctx_switches() { cat "/proc/$CDB_PID"/task/*/status 2>/dev/null | awk '/ctxt_switches/ {s+=$2} END {print s+0}'; }

# Runs a load generator ("$@") under accounting and appends a table row.
# key: summary name; kind: wrk or pgbench; label, what: the row's text.
accounted_run() { # key kind label what cmd...
  local key=$1 kind=$2 label=$3 what=$4
  shift 4
  local load m0 m1 pg0 pg1 r0 r1 c0=0 c1=0 x0=0 x1=0 out rps p50 p99 errs n
  load=$(cut -d' ' -f1 /proc/loadavg)
  # PostgreSQL's client backends are sampled near the end, while they exist
  # (their context switches: from now, or from their start for pgbench's)
  local pgcs0
  pgcs0=$(pg_backends_mem | awk '{print $4}')
  (sleep $((dur_s - 1)); pg_backends_mem >"$BENCH_TMP/pgmem") &
  SAMPLER_PID=$!
  local mt0 mt1 st0 st1
  read -r m0 mt0 st0 <<<"$(machine_ticks)"
  pg0=$(pg_cpu_ticks) r0=$(cpu_ticks "$REDIS_PID")
  [ -n "${CDB_PID:-}" ] && c0=$(cpu_ticks "$CDB_PID") x0=$(cdb_ctx_switches)
  out=$(/usr/bin/time -f "%U %S" -o "$BENCH_TMP/gen_time" "$@" 2>&1)
  read -r m1 mt1 st1 <<<"$(machine_ticks)"
  pg1=$(pg_cpu_ticks) r1=$(cpu_ticks "$REDIS_PID")
  [ -n "${CDB_PID:-}" ] && c1=$(cpu_ticks "$CDB_PID") x1=$(cdb_ctx_switches)
  wait "$SAMPLER_PID" || true
  SAMPLER_PID=
  if [ "$kind" = wrk ]; then
    read -r rps p50 p99 errs <<<"$(echo "$out" | wrk_summary)"
    n=$(echo "$out" | awk '/requests in/ {print $1}')
    errs=$((errs + $(echo "$out" | awk '/Socket errors/ {gsub(",", ""); print $4+$6+$8+$10; f=1} END {if (!f) print 0}')))
  else
    rps=$(echo "$out" | awk '/^tps = / {printf "%.2f", $3}')
    n=$(echo "$out" | awk '/number of transactions actually processed/ {print $NF}')
    errs=$(echo "$out" | awk '/number of failed transactions/ {print $5; f=1} END {if (!f) print 0}')
    read -r p50 p99 <<<"$(pgbench_pcts "$BENCH_TMP/pgb_$key")"
  fi
  [ -n "$rps" ] && [ "${n:-0}" -gt 0 ] || { echo "$label: no result:"; echo "$out"; exit 1; }
  local gen cdb_rss="-" ctx="-" pgmem
  gen=$(awk -v t="$TCK" '{print ($1 + $2) * t}' "$BENCH_TMP/gen_time")
  read -r pgmem <<<"$(awk '{printf "%s / %s (%d)", $1, $2, $3}' "$BENCH_TMP/pgmem")"
  # requests in the sampled window, taken as evenly spread over the run
  local pgctx
  pgctx=$(awk -v c0="$pgcs0" -v n="$n" -v d="$dur_s" '{printf "%.1f", ($4 - c0) / (n * (d - 1) / d)}' "$BENCH_TMP/pgmem")
  if [ "$kind" = wrk ]; then
    cdb_rss=$(peak_rss_mb "$CDB_PID")
    ctx=$(awk -v a="$x0" -v b="$x1" -v n="$n" 'BEGIN {printf "%.1f", (b - a) / n}')
  fi
  # µs of CPU per request = ticks * 1e6 / TCK / requests
  local cpu
  cpu=$(awk -v t="$TCK" -v n="$n" -v c=$((c1 - c0)) -v p=$((pg1 - pg0)) -v r=$((r1 - r0)) \
            -v g="$gen" -v m=$((m1 - m0)) -v mt=$((mt1 - mt0)) -v st=$((st1 - st0)) 'BEGIN {
    u = 1e6 / t / n; o = m - c - p - r - g; if (o < 0) o = 0
    printf "%.0f | %.0f | %.0f | %.0f | %.0f | %.0f | %.0f%% (%.0f%%) | %.0f", c*u, p*u, r*u, g*u, o*u, m*u, 100*m/mt, 100*st/mt, 100*o/mt }')
  OTHER[$key]=${cpu##*| }
  cpu=${cpu% | *}
  RPS[$key]=$rps P99[$key]=$p99
  local row="| $label | $what | $rps | $p50 | $p99 | $errs | $load | $cpu | $ctx | $pgctx | $cdb_rss | $pgmem |"
  echo "$row"
  rows+="$row"$'\n'
}

pgbench_run() { # key mode script label what
  accounted_run "$1" pgbench "$4" "$5" pgbench -n -h 127.0.0.1 -p "$PG_PORT" -U postgres \
    -c $CONNS -j $THREADS -T "$dur_s" -M "$2" -D nusers="$NUSERS" -D role=user \
    -l --log-prefix="$BENCH_TMP/pgb_$1" -f "$BENCH_DIR/$3" postgres
}

wrk_cmd() { # duration
  echo wrk -t$THREADS -c$CONNS -d"$1" --latency -s "$BENCH_DIR/data_query.lua" "http://127.0.0.1:$CDB_PORT/"
}

# Redis SETs so far: the cache stores one entry per miss (nothing else
# writes with SET while only queries run).
redis_sets() { redis-cli -p "$REDIS_PORT" info commandstats | awk -F'[:=,]' '/^cmdstat_set:/ {print $3; f=1} END {if (!f) print 0}'; }

psql_pg() { as_pg psql -q -X -v ON_ERROR_STOP=1 -h "$BENCH_TMP/pg" -p "$PG_PORT" -U postgres "$@"; }

# --- setup: the rows and the callers ---
bench_start_pg
bench_start_redis
export BENCH_USERS="$BENCH_TMP/data_tokens.lua" BENCH_BODY="$BODY"
bench_start_coredb REDIS_URL="$REDIS_URL" CACHE_TTL=0 "${CDB_ENV[@]}"
curl -sf -o /dev/null -H 'Content-Type: application/json' \
  -d '{"email":"data0@bench.example.com","username":"data0","password":"bench-data-password"}' \
  "http://127.0.0.1:$CDB_PORT/users/" || { echo "registering data0 failed"; exit 1; }
psql_pg -v nusers="$NUSERS" -v nprojects="$NPROJECTS" -f "$BENCH_DIR/data_seed.sql"
python3 "$BENCH_DIR/data_setup.py" "http://127.0.0.1:$CDB_PORT" "$NUSERS" "$BENCH_TMP" "$BODY"
threads=$(env -u JWT_SECRET -u DATABASE_URL "${CDB_ENV[@]}" "$ROOT/build/coredb" config --json |
  python3 -c 'import json,sys; c=json.load(sys.stdin); print(c["HTTP_THREADS"], c["DB_POOL_MAX"], c["REDIS_POOL_SIZE"])')
read -r http_threads pool_max redis_pool <<<"$threads"

# --- the exact SQL in PostgreSQL alone, then the same work through coredb ---
# (no coredb runs while pgbench does: its pool's backends would count as pgbench's)
bench_stop_coredb
pgbench_run exact prepared pgbench_coredb.sql "pgbench -M prepared" "the exact SQL of a miss: role + settings, row_to_json page, count up to one Sync, no BEGIN/COMMIT (pipelined, prepared as coredb does)"
bench_start_coredb REDIS_URL="$REDIS_URL" CACHE_TTL=0 "${CDB_ENV[@]}"
# shellcheck disable=SC2046
$(wrk_cmd 2s) >/dev/null   # untimed: fills the pools, warms PostgreSQL's caches
accounted_run miss wrk "coredb, CACHE_TTL=0" "POST /api/v1/data/query: HTTP, JWT, Redis session GET, worker, pipeline of 3 prepared statements up to one Sync (role + settings, page, count; no BEGIN/COMMIT since issue 8)" $(wrk_cmd "$DURATION")
bench_stop_coredb

# --- coredb, every request a hit ---
bench_start_coredb REDIS_URL="$REDIS_URL" CACHE_TTL=300 "${CDB_ENV[@]}"
# shellcheck disable=SC2046
$(wrk_cmd 2s) >/dev/null   # untimed: stores every user's page
sets0=$(redis_sets)
accounted_run hit wrk "coredb, CACHE_TTL=300" "as above, answered from Redis (session GET, then one MGET of generation + entry)" $(wrk_cmd "$DURATION")
stores=$(( $(redis_sets) - sets0 ))
bench_stop_coredb

# --- faster shapes of the same work in PostgreSQL ---
pgbench_run role prepared pgbench_fast_role.sql "pgbench -M prepared" "the same with plain rows (no row_to_json)"
pgbench_run json prepared pgbench_fast_json.sql "pgbench -M prepared" "one statement building page + total as JSON, owner, no role switch"
pgbench_run plain prepared pgbench_fast_plain.sql "pgbench -M prepared" "two plain statements (pipelined), owner, no transaction or role switch"

limit_key=exact
for k in role json plain; do
  awk -v a="${RPS[$k]}" -v b="${RPS[$limit_key]}" 'BEGIN { exit !(a > b) }' && limit_key=$k
done
other_max=0
for k in "${!OTHER[@]}"; do [ "${OTHER[$k]}" -gt "$other_max" ] && other_max=${OTHER[$k]}; done
shared=""
[ "$other_max" -gt 10 ] && shared=": the machine was shared, read the rows with that in mind"
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'; }
summary="- Physical limit (fastest pgbench row, \`$limit_key\`): ${RPS[$limit_key]} tx/s; the exact SQL of a miss: ${RPS[exact]} tx/s.
- coredb miss ÷ limit = **$(ratio "${RPS[miss]}" "${RPS[$limit_key]}")** (goal ≥ 0.8); coredb miss ÷ exact SQL = **$(ratio "${RPS[miss]}" "${RPS[exact]}")**.
- coredb hit ÷ miss = **$(ratio "${RPS[hit]}" "${RPS[miss]}")** (goal ≥ 5); p99 hit ${P99[hit]} ms vs miss ${P99[miss]} ms. Cache stores during the hit run: $stores (0 = every request was a hit).
- Other processes (other sessions on this machine) took up to $other_max% of all cores during a run$shared."
echo "$summary"

{
  echo
  echo "### Data API vs PostgreSQL: one page + total — $(date -u +%Y-%m-%d) — $(machine_line)"
  echo "The work: POST /api/v1/data/query \`$(tr -d '\n' <"$BODY")\` as a user role caller (row-level security), $NUSERS users × $NPROJECTS projects,"
  echo "users round robin (wrk, data_query.lua) or at random (pgbench \\set, bench.users); answer ≈ 8.8 KB. wrk -t$THREADS -c$CONNS and pgbench -j$THREADS -c$CONNS, -d/-T $DURATION each."
  echo "Release build, HTTP_THREADS=$http_threads, DB_POOL_MAX=$pool_max (workers = pool + 4), REDIS_POOL_SIZE=$redis_pool, RATE_LIMIT_USER=0; PostgreSQL 15 (defaults, max_connections=300) and $(redis-server --version | awk '{print $1, $2, $3}') on the same machine."
  echo "CPU µs/req: CPU time each party used during the run ÷ requests (coredb process; PostgreSQL = postmaster and every backend; Redis; the load generator;"
  echo "\"other\" = every other process, e.g. other sessions' builds and tests; \"machine\" = all busy CPU ÷ requests). \"busy\" = share of all cores in use (in brackets: stolen by the hypervisor). ctx sw/req: context switches per request of coredb and of PostgreSQL's client backends."
  echo "PG backends: largest VmHWM of a client backend (includes shared buffers it touched) / sum of their private RSS (count), sampled 1 s before the end."
  echo "Load average (1 min) is taken just before each run; the previous run's load is still in it."
  echo
  echo "| run | work | req/s | p50 ms | p99 ms | errors | load | CPU µs/req coredb | PG | Redis | load gen | other | machine | busy | ctx sw/req coredb | PG | coredb peak RSS MiB | PG backends MiB |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
  printf "%s" "$rows"
  echo
  echo "$summary"
} >>"$BENCH_DIR/RESULTS.md"
