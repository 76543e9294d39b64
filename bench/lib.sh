# bench/lib.sh - shared by the bench scripts: a throw-away PostgreSQL and
# coredb on free loopback ports, peak RSS, wrk output parsing.
# Sourced, not run. Everything lives under $BENCH_TMP and is stopped by
# bench_cleanup (install it with trap).

PG_BIN=${PG_BINDIR:-/usr/lib/postgresql/15/bin}
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BENCH_TMP=$(mktemp -d /tmp/coredb-bench.XXXXXX)
chmod 755 "$BENCH_TMP"

as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

bench_start_pg() {
  PG_PORT=$(free_port)
  mkdir -p "$BENCH_TMP/pg"
  [ "$(id -u)" = 0 ] && chown postgres "$BENCH_TMP/pg"
  as_pg "$PG_BIN/initdb" -D "$BENCH_TMP/pg/data" -U postgres -A trust -E UTF8 --locale=C.UTF-8 >/dev/null
  as_pg "$PG_BIN/pg_ctl" -D "$BENCH_TMP/pg/data" -l "$BENCH_TMP/pg/log" -w \
    -o "-p $PG_PORT -k $BENCH_TMP/pg -c listen_addresses=127.0.0.1 -c max_connections=300" start >/dev/null
  PG_URL="postgresql://postgres@127.0.0.1:$PG_PORT/postgres"
}

bench_start_coredb() { # extra env as NAME=value arguments
  CDB_PORT=$(free_port)
  env DATABASE_URL="$PG_URL" JWT_SECRET=bench-secret-0123456789abcdef0123456789abcdef \
      PORT=$CDB_PORT HOST=127.0.0.1 PROMETHEUS_PORT=0 LOG_LEVEL=warn "$@" \
      "${CDB_BIN:-$ROOT/build/coredb}" serve >"$BENCH_TMP/coredb.log" 2>&1 &
  CDB_PID=$!
  for _ in $(seq 1 200); do
    curl -sf "http://127.0.0.1:$CDB_PORT/health/live" >/dev/null && return 0
    sleep 0.05
  done
  echo "coredb did not start:"; cat "$BENCH_TMP/coredb.log"; return 1
}

peak_rss_mb() { awk '/VmHWM/ {printf "%.1f", $2/1024}' "/proc/$1/status"; }

# wrk's summary -> "req/s p50 p99" (latencies in ms); needs --latency.
wrk_summary() {
  awk '
    function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return v*1000; return v }
    /Requests\/sec/ { rps=$2 }
    $1=="50%" { p50=ms($2) }
    $1=="99%" { p99=ms($2) }
    /Non-2xx/ { non2xx=$NF }
    /Socket errors/ { errs=$0 }
    END { printf "%s %.2f %.2f %s\n", rps, p50, p99, (non2xx==""?0:non2xx) }'
}

machine_line() {
  echo "$(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(uname -sr), $(. /etc/os-release; echo "$PRETTY_NAME")"
}

bench_cleanup() {
  [ -n "${CDB_PID:-}" ] && kill "$CDB_PID" 2>/dev/null && wait "$CDB_PID" 2>/dev/null
  [ -d "$BENCH_TMP/pg/data" ] && as_pg "$PG_BIN/pg_ctl" -D "$BENCH_TMP/pg/data" -m immediate stop >/dev/null 2>&1
  rm -rf "$BENCH_TMP"
}

# A throw-away Redis on a free port (no persistence); sets REDIS_URL.
bench_start_redis() {
  REDIS_PORT=$(free_port)
  mkdir -p "$BENCH_TMP/redis"
  redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --dir "$BENCH_TMP/redis" \
    --save "" --appendonly no --logfile "$BENCH_TMP/redis/log" &
  REDIS_PID=$!
  for _ in $(seq 1 100); do
    if [ "$(redis-cli -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]; then
      REDIS_URL="redis://127.0.0.1:$REDIS_PORT/0"
      return 0
    fi
    sleep 0.05
  done
  echo "redis did not start:"; cat "$BENCH_TMP/redis/log"; return 1
}

bench_stop_redis() {
  [ -n "${REDIS_PID:-}" ] && kill "$REDIS_PID" 2>/dev/null && wait "$REDIS_PID" 2>/dev/null
  REDIS_PID=
  return 0
}

# Stops the coredb of bench_start_coredb, so another can start with other settings.
bench_stop_coredb() {
  [ -n "${CDB_PID:-}" ] && kill "$CDB_PID" 2>/dev/null && wait "$CDB_PID" 2>/dev/null
  CDB_PID=
  return 0
}

# One latency percentile of wrk's --latency distribution in ms, e.g. wrk_pct 90.
wrk_pct() {
  awk -v p="$1%" '
    function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return v*1000; return v }
    $1==p { printf "%.2f\n", ms($2) }'
}

# --- CPU and memory accounting of a run (data.sh) ---

# utime+stime of the given pids, in clock ticks. One cat and one awk for
# all of them (a fork per pid took seconds for 64 backends on a loaded
# machine); a pid that exited meanwhile is skipped.
cpu_ticks() {
  [ $# -gt 0 ] || { echo 0; return 0; }
  { (cd /proc && cat $(printf '%s/stat ' "$@") 2>/dev/null) || true; } |
    sed 's/.*) //' | awk '{ t += $12 + $13 } END { print t + 0 }'
}

postmaster_pid() { head -1 "$BENCH_TMP/pg/data/postmaster.pid"; }

# Client backends of the throw-away PostgreSQL (not its auxiliary processes).
pg_backend_pids() {
  ps -o pid=,args= --ppid "$(postmaster_pid)" | awk '/127\.0\.0\.1\(|\[local\]/ { print $1 }'
}

# All CPU PostgreSQL used so far, in ticks: the postmaster with its reaped
# children (cutime+cstime, so backends that exited count) plus live children.
pg_cpu_ticks() {
  local pm t
  pm=$(postmaster_pid)
  t=$(sed 's/.*) //' "/proc/$pm/stat" | awk '{print $12 + $13 + $14 + $15}')
  echo $((t + $(cpu_ticks $(pgrep -P "$pm"))))
}

# Busy, total and steal ticks of the whole machine (every process, other
# sessions too; steal = time the hypervisor gave our vCPUs to someone else).
machine_ticks() { awk '/^cpu / { print $2+$3+$4+$7+$8, $2+$3+$4+$5+$6+$7+$8+$9, $9 }' /proc/stat; }

# "<max VmHWM MiB of a client backend> <sum of their RssAnon MiB> <count>
# <sum of their context switches>".
pg_backends_mem() {
  local pids
  pids=$(pg_backend_pids)
  { [ -n "$pids" ] && (cd /proc && cat $(printf '%s/status ' $pids) 2>/dev/null) || true; } |
    awk '/^Name:/ { n++ } /^VmHWM/ { if ($2 > h) h = $2 } /^RssAnon/ { a += $2 } /ctxt_switches/ { c += $2 }
      END { printf "%.1f %.1f %d %d\n", h/1024, a/1024, n, c }'
}

# p50 and p99 in ms from pgbench per-transaction logs (-l --log-prefix=PREFIX).
pgbench_pcts() {
  cat "$1".* | awk '{print $3}' | sort -n |
    awk '{ v[NR]=$1 } END { if (NR == 0) { print "0 0"; exit }
      i50=int(NR*0.50); if (i50 < 1) i50=1; i99=int(NR*0.99); if (i99 < 1) i99=1
      printf "%.2f %.2f\n", v[i50]/1000, v[i99]/1000 }'
}

# --- data-path runs under CPU accounting (data.sh, engine.sh) ---
# The caller sets NUSERS, NPROJECTS, CONNS, THREADS, DURATION and BODY, then
# calls data_init. accounted_run appends a Markdown row to $rows and keeps
# per-run figures in RPS, P50, P99, CPU_CDB, CPU_PG, CPU_REDIS, OTHER
# (keyed by the run's key).
BENCH_DIR=$ROOT/bench

data_init() {
  dur_s=${DURATION%s}
  [[ "$dur_s" =~ ^[0-9]+$ ]] && [ "$dur_s" -ge 3 ] || { echo "DURATION must be seconds >= 3, e.g. 10s" >&2; exit 2; }
  TCK=$(getconf CLK_TCK)
  declare -gA RPS P50 P99 OTHER CPU_CDB CPU_PG CPU_REDIS
  rows="" SAMPLER_PID=
  # Rate limits off; cheap password hashes, so the NUSERS logins of the setup
  # take milliseconds (hashing plays no part in a query).
  CDB_ENV=(RATE_LIMIT_USER=0 RATE_LIMIT_ANON=0 PASSWORD_HASH_OPSLIMIT=1 PASSWORD_HASH_MEMLIMIT_KIB=8)
}

data_cleanup() {
  [ -n "${SAMPLER_PID:-}" ] && kill "$SAMPLER_PID" 2>/dev/null
  bench_stop_redis
  bench_cleanup
}

# The open-file limit as high as the hard limit allows (wrk -c1000, idle clients).
raise_nofile() { ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)" 2>/dev/null || true; }

cdb_ctx_switches() { cat "/proc/$CDB_PID"/task/*/status 2>/dev/null | awk '/ctxt_switches/ {s+=$2} END {print s+0}'; }

# Runs a load generator ("$@") under accounting and appends a table row.
# key: summary name; kind: wrk or pgbench; label, what: the row's text.
accounted_run() { # key kind label what cmd...
  local key=$1 kind=$2 label=$3 what=$4
  shift 4
  local load m0 m1 pg0 pg1 r0 r1 c0=0 c1=0 x0=0 x1=0 out rps p50 p99 errs n
  load=$(cut -d' ' -f1 /proc/loadavg)
  # PostgreSQL's client backends are sampled 5 s before the end (the middle
  # of a run of 6 s or less), while they surely exist: on a loaded machine
  # reading 64 backends' /proc takes a second or more, and pgbench's exit
  # with it (their context switches: from now, or from their start for
  # pgbench's)
  local pgcs0 sample_s=$(( dur_s > 6 ? dur_s - 5 : (dur_s + 1) / 2 ))
  pgcs0=$(pg_backends_mem | awk '{print $4}')
  (sleep "$sample_s"; pg_backends_mem >"$BENCH_TMP/pgmem") &
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
    rm -f "$BENCH_TMP/pgb_$key".*
  fi
  [ -n "$rps" ] && [ "${n:-0}" -gt 0 ] || { echo "$label: no result:"; echo "$out"; exit 1; }
  local gen cdb_rss="-" ctx="-" pgmem
  gen=$(awk -v t="$TCK" '{print ($1 + $2) * t}' "$BENCH_TMP/gen_time")
  read -r pgmem <<<"$(awk '{printf "%s / %s (%d)", $1, $2, $3}' "$BENCH_TMP/pgmem")"
  # requests in the sampled window, taken as evenly spread over the run
  local pgctx
  pgctx=$(awk -v c0="$pgcs0" -v n="$n" -v d="$dur_s" -v s="$sample_s" '{printf "%.1f", ($4 - c0) / (n * s / d)}' "$BENCH_TMP/pgmem")
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
  IFS='|' read -r CPU_CDB[$key] CPU_PG[$key] CPU_REDIS[$key] _ <<<"${cpu// /}"
  RPS[$key]=$rps P50[$key]=$p50 P99[$key]=$p99
  local row="| $label | $what | $rps | $p50 | $p99 | $errs | $load | $cpu | $ctx | $pgctx | $cdb_rss | $pgmem |"
  echo "$row"
  rows+="$row"$'\n'
}

# The column heads of accounted_run's rows and what they mean.
accounted_table_head() {
  echo "CPU µs/req: CPU time each party used during the run ÷ requests (coredb process; PostgreSQL = postmaster and every backend; Redis; the load generator;"
  echo "\"other\" = every other process, e.g. other sessions' builds and tests; \"machine\" = all busy CPU ÷ requests). \"busy\" = share of all cores in use (in brackets: stolen by the hypervisor). ctx sw/req: context switches per request of coredb and of PostgreSQL's client backends."
  echo "PG backends: largest VmHWM of a client backend (includes shared buffers it touched) / sum of their private RSS (count), sampled 5 s before the end (in the middle of runs of 6 s or less)."
  echo "Load average (1 min) is taken just before each run; the previous run's load is still in it."
  echo
  echo "| run | work | req/s | p50 ms | p99 ms | errors | load | CPU µs/req coredb | PG | Redis | load gen | other | machine | busy | ctx sw/req coredb | PG | coredb peak RSS MiB | PG backends MiB |"
  echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
}

pgbench_run() { # key mode script label what
  accounted_run "$1" pgbench "$4" "$5" pgbench -n -h 127.0.0.1 -p "$PG_PORT" -U postgres \
    -c "$CONNS" -j "$THREADS" -T "$dur_s" -M "$2" -D nusers="$NUSERS" -D role=user \
    -l --log-prefix="$BENCH_TMP/pgb_$1" -f "$BENCH_DIR/$3" postgres
}

wrk_cmd() { # duration
  echo wrk -t"$THREADS" -c"$CONNS" -d"$1" --latency -s "$BENCH_DIR/data_query.lua" "http://127.0.0.1:$CDB_PORT/"
}

# Redis SETs so far: the cache stores one entry per miss (nothing else
# writes with SET while only queries run).
redis_sets() { redis-cli -p "$REDIS_PORT" info commandstats | awk -F'[:=,]' '/^cmdstat_set:/ {print $3; f=1} END {if (!f) print 0}'; }

psql_pg() { as_pg psql -q -X -v ON_ERROR_STOP=1 -h "$BENCH_TMP/pg" -p "$PG_PORT" -U postgres "$@"; }

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", (b > 0 ? a / b : 0) }'; }

# Throw-away PostgreSQL and Redis, NUSERS users × NPROJECTS projects
# (data_seed.sql) and their access tokens for wrk (data_setup.py); leaves a
# coredb with "$@" as extra settings running (stop it before pgbench runs).
data_setup() {
  bench_start_pg
  bench_start_redis
  export BENCH_USERS="$BENCH_TMP/data_tokens.lua" BENCH_BODY="$BODY"
  bench_start_coredb REDIS_URL="$REDIS_URL" "$@"
  curl -sf -o /dev/null -H 'Content-Type: application/json' \
    -d '{"email":"data0@bench.example.com","username":"data0","password":"bench-data-password"}' \
    "http://127.0.0.1:$CDB_PORT/users/" || { echo "registering data0 failed"; exit 1; }
  psql_pg -v nusers="$NUSERS" -v nprojects="$NPROJECTS" -f "$BENCH_DIR/data_seed.sql"
  python3 "$BENCH_DIR/data_setup.py" "http://127.0.0.1:$CDB_PORT" "$NUSERS" "$BENCH_TMP" "$BODY"
  local t
  t=$(env -u JWT_SECRET -u DATABASE_URL "$@" "${CDB_BIN:-$ROOT/build/coredb}" config --json |
    python3 -c 'import json,sys; c=json.load(sys.stdin); print(c["HTTP_THREADS"], c["DB_POOL_MAX"], c["REDIS_POOL_SIZE"])')
  read -r http_threads pool_max redis_pool <<<"$t"
}
