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
DURATION=${DURATION:-10s}
NUSERS=${BENCH_DATA_USERS:-200}
NPROJECTS=45
CONNS=16
THREADS=2
BODY=$BENCH_DIR/data_query.json
data_init
trap data_cleanup EXIT
ulimit -n 65536 2>/dev/null || true
unset REDIS_URL

# --- setup: the rows and the callers ---
data_setup CACHE_TTL=0 "${CDB_ENV[@]}"

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
  accounted_table_head
  printf "%s" "$rows"
  echo
  echo "$summary"
} >>"$BENCH_DIR/RESULTS.md"
