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

# utime+stime of the given pids, in clock ticks.
cpu_ticks() {
  local p t=0
  for p in "$@"; do
    [ -r "/proc/$p/stat" ] || continue
    t=$((t + $(sed 's/.*) //' "/proc/$p/stat" | awk '{print $12 + $13}')))
  done
  echo "$t"
}

postmaster_pid() { head -1 "$BENCH_TMP/pg/data/postmaster.pid"; }

# Client backends of the throw-away PostgreSQL (not its auxiliary processes).
pg_backend_pids() {
  local pm p
  pm=$(postmaster_pid)
  for p in $(pgrep -P "$pm"); do
    tr '\0' ' ' 2>/dev/null <"/proc/$p/cmdline" | grep -q '127\.0\.0\.1(\|\[local\]' && echo "$p"
  done
  return 0
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
  local p hwm=0 anon=0 n=0 cs=0 h a c
  for p in $(pg_backend_pids); do
    read -r h a c < <(awk '/VmHWM/ {h=$2} /RssAnon/ {a=$2} /ctxt_switches/ {c+=$2}
      END {print h+0, a+0, c+0}' "/proc/$p/status" 2>/dev/null)
    [ "${h:-0}" -gt "$hwm" ] && hwm=$h
    anon=$((anon + ${a:-0})) n=$((n + 1)) cs=$((cs + ${c:-0}))
  done
  awk -v h="$hwm" -v a="$anon" -v n="$n" -v c="$cs" 'BEGIN { printf "%.1f %.1f %d %d\n", h/1024, a/1024, n, c }'
}

# p50 and p99 in ms from pgbench per-transaction logs (-l --log-prefix=PREFIX).
pgbench_pcts() {
  cat "$1".* | awk '{print $3}' | sort -n |
    awk '{ v[NR]=$1 } END { if (NR == 0) { print "0 0"; exit }
      i50=int(NR*0.50); if (i50 < 1) i50=1; i99=int(NR*0.99); if (i99 < 1) i99=1
      printf "%.2f %.2f\n", v[i50]/1000, v[i99]/1000 }'
}
