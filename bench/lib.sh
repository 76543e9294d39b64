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
      "$ROOT/build/coredb" serve >"$BENCH_TMP/coredb.log" 2>&1 &
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
