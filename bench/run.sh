#!/usr/bin/env bash
# `make bench`: every benchmark, each appending to bench/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")"
for b in http_floor.sh http_hostile.sh auth.sh data.sh; do
  echo "== $b"
  bash "$b"
done
