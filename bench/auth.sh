#!/usr/bin/env bash
# What identity costs (issue 3's benchmark): logins per second; the p99 of
# GET /health/live and of an authenticated cheap route (GET /users/{id})
# without and with concurrent login load (argon2id runs on the AUTH_THREADS
# queue and must not stall other traffic); and the per-request cost of the
# token and session check, decomposed by routes that stop at each step, with
# Redis (liveness = one GET) and without it (liveness = one PostgreSQL
# UPDATE). Throw-away PostgreSQL and Redis; users registered by
# auth_setup.py; wrk drives login.lua and auth_get.lua. Prints a Markdown
# row per run and appends the run to bench/RESULTS.md.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
BENCH_DIR=$(cd "$(dirname "$0")" && pwd)
DURATION=${DURATION:-10s}
NUSERS=${BENCH_USERS_N:-50}
CONNS=16        # the measured route
LOGIN_CONNS=8   # the login load
BG_PID=
auth_cleanup() {
  [ -n "$BG_PID" ] && kill "$BG_PID" 2>/dev/null
  bench_stop_redis
  bench_cleanup
}
trap auth_cleanup EXIT
ulimit -n 65536 2>/dev/null || true
dur_s=${DURATION%s}
[[ "$dur_s" =~ ^[0-9]+$ ]] || { echo "DURATION must be in seconds, e.g. 10s" >&2; exit 2; }
unset REDIS_URL   # the no-Redis coredb must not inherit one from the caller

# Limits that would turn the load into 429s are off; hashing is the default.
AUTH_ENV=(RATE_LIMIT_ANON=0 RATE_LIMIT_USER=0 SESSION_MAX_PER_USER=100000
          LOGIN_MAX_FAILURES=100000 LOGIN_MAX_FAILURES_PER_ADDRESS=1000000
          PASSWORD_HASH_OPSLIMIT=2 PASSWORD_HASH_MEMLIMIT_KIB=65536)
declare -A RPS P90 P99
rows=""
INSTANCE=

# Appends one table row from wrk's output; key names it for the summary.
record() { # key route work conns load wrk-output
  local rps p50 p99 non2xx p90
  read -r rps p50 p99 non2xx <<<"$(echo "$6" | wrk_summary)"
  p90=$(echo "$6" | wrk_pct 90)
  RPS[$1]=$rps P90[$1]=$p90 P99[$1]=$p99
  local row="| $INSTANCE | $2 | $3 | $4 | $5 | $rps | $p50 | $p90 | $p99 | $(peak_rss_mb "$CDB_PID") | $non2xx |"
  echo "$row"
  rows+="$row"$'\n'
}

wrk_args() { # conns duration [script]
  local a=(-t2 -c"$1" -d"$2" --latency)
  [ -n "${3:-}" ] && a+=(-s "$BENCH_DIR/$3")
  echo "${a[@]}"
}

measure() { # key route work load path [script users-file]
  local url="http://127.0.0.1:$CDB_PORT$5" out
  [ -n "${6:-}" ] && url="http://127.0.0.1:$CDB_PORT/"   # the script sets the path
  # shellcheck disable=SC2046
  out=$(BENCH_USERS="${7:-}" BENCH_PATH="$5" wrk $(wrk_args $CONNS "$DURATION" "${6:-}") "$url")
  record "$1" "$2" "$3" $CONNS "$4" "$out"
}

# Untimed: fills the connection pools before the first measurement.
warm_up() {
  # shellcheck disable=SC2046
  BENCH_USERS="$BENCH_TMP/tokens.lua" BENCH_PATH="/users/{id}" \
    wrk $(wrk_args $CONNS 2s auth_get.lua) "http://127.0.0.1:$CDB_PORT/" >/dev/null
}

# The login load runs a little longer than the measurement it surrounds.
login_load_start() {
  # shellcheck disable=SC2046
  BENCH_USERS="$BENCH_TMP/login_users.lua" wrk $(wrk_args $LOGIN_CONNS "$((dur_s + 2))s" login.lua) \
    "http://127.0.0.1:$CDB_PORT/" >"$BENCH_TMP/login_bg.out" &
  BG_PID=$!
  sleep 1
}

login_load_finish() { # key, measured route
  wait "$BG_PID"
  BG_PID=
  record "$1" "POST /api/v1/auth/login" "argon2id verify + session INSERT (background load)" \
    $LOGIN_CONNS "during $2" "$(cat "$BENCH_TMP/login_bg.out")"
}

load_before=$(cut -d' ' -f1-3 /proc/loadavg)
bench_start_pg
bench_start_redis
bench_start_coredb REDIS_URL="$REDIS_URL" "${AUTH_ENV[@]}"
python3 "$BENCH_DIR/auth_setup.py" "http://127.0.0.1:$CDB_PORT" "$NUSERS" "$BENCH_TMP"
threads=$(env -u JWT_SECRET -u DATABASE_URL "${AUTH_ENV[@]}" "$ROOT/build/coredb" config |
  python3 -c 'import json,sys; c=json.load(sys.stdin); print(c["HTTP_THREADS"], c["AUTH_THREADS"], c["DB_POOL_MAX"])')
read -r http_threads auth_threads pool_max <<<"$threads"
T=$BENCH_TMP

INSTANCE="Redis"
warm_up
measure live     "GET /health/live" "nothing: answered on the event loop" - /health/live
measure health   "GET /health" "worker hop, PG SELECT 1, Redis PING" - /health
measure forged   "GET /users/{id}" "JWT verify fails on the event loop → 401" - "/users/{id}" auth_get.lua "$T/forged.lua"
measure revoked  "GET /users/{id}" "JWT verify, worker hop, Redis GET finds the tombstone → 401" - "/users/{id}" auth_get.lua "$T/revoked.lua"
measure user     "GET /users/{id}" "JWT verify, worker hop, Redis GET (alive), PG SELECT user → 200" - "/users/{id}" auth_get.lua "$T/tokens.lua"
measure sessions "GET /api/v1/auth/sessions" "JWT verify, worker hop, Redis GET, PG SELECT sessions → 200" - /api/v1/auth/sessions auth_get.lua "$T/tokens.lua"
# shellcheck disable=SC2046
record login "POST /api/v1/auth/login" "argon2id verify + session INSERT" $LOGIN_CONNS - \
  "$(BENCH_USERS="$T/login_users.lua" wrk $(wrk_args $LOGIN_CONNS "$DURATION" login.lua) "http://127.0.0.1:$CDB_PORT/")"
login_load_start
measure live_load "GET /health/live" "as above" "login -c$LOGIN_CONNS" /health/live
login_load_finish login_bg1 "/health/live"
login_load_start
measure user_load "GET /users/{id}" "as above" "login -c$LOGIN_CONNS" "/users/{id}" auth_get.lua "$T/tokens.lua"
login_load_finish login_bg2 "/users/{id}"
rss_redis=$(peak_rss_mb "$CDB_PID")

bench_stop_coredb
bench_start_coredb "${AUTH_ENV[@]}"
INSTANCE="no Redis"
warm_up
measure health_nr   "GET /health" "worker hop, PG SELECT 1" - /health
measure revoked_nr  "GET /users/{id}" "JWT verify, worker hop, PG UPDATE matches no live session → 401" - "/users/{id}" auth_get.lua "$T/revoked.lua"
measure user_nr     "GET /users/{id}" "JWT verify, worker hop, PG UPDATE last_seen (a commit), PG SELECT user → 200" - "/users/{id}" auth_get.lua "$T/tokens.lua"
measure sessions_nr "GET /api/v1/auth/sessions" "JWT verify, worker hop, PG UPDATE (a commit), PG SELECT sessions → 200" - /api/v1/auth/sessions auth_get.lua "$T/tokens.lua"

us() { awk -v r="$1" 'BEGIN { printf "%.0f", (r > 0 ? 1e6 / r : 0) }'; }
summary="- Logins: ${RPS[login]}/s alone (p99 ${P99[login]} ms); ${RPS[login_bg1]}/s and ${RPS[login_bg2]}/s while the other route was measured.
- p99 with / without login load: GET /health/live ${P99[live_load]} / ${P99[live]} ms = **$(ratio "${P99[live_load]}" "${P99[live]}")×**; GET /users/{id} ${P99[user_load]} / ${P99[user]} ms = **$(ratio "${P99[user_load]}" "${P99[user]}")×** (req/s $(ratio "${RPS[user_load]}" "${RPS[user]}")× of unloaded).
- p90 with / without login load: GET /health/live ${P90[live_load]} / ${P90[live]} ms = $(ratio "${P90[live_load]}" "${P90[live]}")×; GET /users/{id} ${P90[user_load]} / ${P90[user]} ms = $(ratio "${P90[user_load]}" "${P90[user]}")×.
- Token + session check, as machine time per request (1/req/s, CPU-bound, all cores shared with wrk, PostgreSQL and Redis): forged token $(us "${RPS[forged]}") µs, revoked via Redis $(us "${RPS[revoked]}") µs, GET /users/{id} with Redis $(us "${RPS[user]}") µs vs without Redis $(us "${RPS[user_nr]}") µs (without/with req/s: $(ratio "${RPS[user_nr]}" "${RPS[user]}")×); GET /health $(us "${RPS[health]}") µs.
- Peak RSS: $rss_redis MiB after the login load (argon2id takes PASSWORD_HASH_MEMLIMIT_KIB per concurrent hash, AUTH_THREADS of them)."
echo "$summary"

{
  echo
  echo "### Identity: logins, auth under login load, cost of the token check — $(date -u +%Y-%m-%d) — $(machine_line)"
  echo "wrk -t2 -d$DURATION; measured routes -c$CONNS, logins -c$LOGIN_CONNS (round robin over $NUSERS users; $NUSERS other users hold one session each and drive the authenticated routes);"
  echo "release build, HTTP_THREADS=$http_threads, AUTH_THREADS=$auth_threads, DB_POOL_MAX=$pool_max, PASSWORD_HASH_OPSLIMIT=2, PASSWORD_HASH_MEMLIMIT_KIB=65536 (defaults),"
  echo "RATE_LIMIT_ANON=0, RATE_LIMIT_USER=0, SESSION_MAX_PER_USER=100000, LOGIN_MAX_FAILURES high; PostgreSQL 15 and $(redis-server --version | awk '{print $1, $2, $3}') on the same machine."
  echo "\"Redis\" rows: coredb with REDIS_URL (liveness = 1 Redis GET); \"no Redis\" rows: a second coredb on the same database without it (liveness = 1 PostgreSQL UPDATE)."
  echo "Rows that stop early (401) isolate a step of the check. Peak RSS is coredb's VmHWM so far in that instance."
  echo "Load average just before the run: $load_before (anything else running on the machine skews every row)."
  echo
  echo "| coredb | route | per-request work | conns | concurrent load | req/s | p50 ms | p90 ms | p99 ms | peak RSS MiB | non-2xx |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|"
  printf "%s" "$rows"
  echo
  echo "$summary"
} >>"$BENCH_DIR/RESULTS.md"
