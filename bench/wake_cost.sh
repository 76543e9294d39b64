#!/usr/bin/env bash
# bench/wake_cost.sh - the kernel's price of the exchanges a data-API miss
# is made of, on this machine, without coredb (bench/wake_cost.c): a null
# system call, one request/answer exchange over loopback TCP when both
# sides sleep between messages (a miss) and when 64 are in flight (a hit
# under load), each on an idle machine and with both cores kept busy by two
# spinning shells (as during bench/engine.sh's miss runs, where PostgreSQL
# takes every core). Appends a section to bench/RESULTS.md.
#
# Run:   make bench-wake      (about 20 s)
# Settings: EXCHANGES (per measurement, default 20000).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
EXCHANGES=${EXCHANGES:-20000}
TMP=$(mktemp -d /tmp/coredb-wake.XXXXXX)
HOGS=()
cleanup() { for p in "${HOGS[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$TMP"; }
trap cleanup EXIT
${CC:-cc} -O2 -Wall -Wextra -pthread -o "$TMP/wake_cost" "$ROOT/bench/wake_cost.c"

run() { # label
  echo "#### $1 (load average $(cut -d' ' -f1 /proc/loadavg))"
  echo '```'
  "$TMP/wake_cost" "$EXCHANGES"
  echo '```'
}
{
  echo
  echo "### Wake cost: what the kernel charges for a miss's exchanges (bench/wake_cost.sh) — $(date -u '+%Y-%m-%d %H:%M UTC') — $(nproc) cores, $(uname -sr)"
  run "idle machine"
  # two spinning shells, bounded: they end with this script (and after 60 s regardless)
  for _ in 1 2; do timeout 60 sh -c 'while :; do :; done' & HOGS+=($!); done
  sleep 0.5
  run "both cores busy (two spinning shells)"
} | tee -a "$ROOT/bench/RESULTS.md"
