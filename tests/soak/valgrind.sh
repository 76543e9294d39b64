#!/usr/bin/env bash
# `make valgrind`: the end-to-end tests with the coredb binary under
# valgrind's memcheck, and a summary of the errors and definite leaks it found.
#
# Builds a debug binary without sanitizers (build-vg/, -O0 -g: ASan and
# memcheck cannot share a process), and points COREDB_BIN at a wrapper that
# runs it under memcheck, so every coredb the tests start (serve, and every
# CLI call) is checked, each into its own log (build-vg/valgrind/vg.<pid>.log).
# An error or a definite leak makes that process exit 99 (--error-exitcode),
# which the tests' clean-stop check (servers.py stop_clean) also reports.
# Logs of processes that exited clean are kept too (they end in a zero
# ERROR SUMMARY), so the summary can tell them from killed ones.
#
# Memcheck slows coredb 20-50x, so the whole suite does not fit a sitting;
# VALGRIND_TESTS names the subset (default below: the HTTP parser and
# hostile requests, auth, users, data query/transaction, health). Tests with
# tight timing (test_deadlines, test_ratelimit, test_signals, ...) would fail
# on the slowness alone, not on memory. Not run in CI (too slow).
set -uo pipefail
cd "$(dirname "$0")/../.."

COREDB_DEPS_VALGRIND=1 bash scripts/install-deps.sh || exit 1
make -s BUILD=build-vg CFLAGS="-O0 -g" all || exit 1

VGDIR="$PWD/build-vg/valgrind"
rm -rf "$VGDIR"
mkdir -p "$VGDIR"
chmod 755 "$PWD/build-vg" "$VGDIR"
cat > build-vg/coredb-vg <<EOF
#!/bin/sh
# coredb under memcheck (written by tests/soak/valgrind.sh)
exec valgrind --tool=memcheck --error-exitcode=99 --leak-check=full \\
  --show-leak-kinds=definite --errors-for-leak-kinds=definite --num-callers=30 \\
  --log-file="$VGDIR/vg.%p.log" "$PWD/build-vg/coredb" "\$@"
EOF
chmod 755 build-vg/coredb-vg

TESTS=${VALGRIND_TESTS:-"tests/e2e/test_health.py tests/e2e/test_http.py tests/e2e/test_http_hostile.py
  tests/e2e/test_auth.py tests/e2e/test_users.py tests/e2e/test_data_query.py tests/e2e/test_data_transaction.py"}
export COREDB_TEST_TMP
COREDB_TEST_TMP=$(mktemp -d /tmp/coredb-vg.XXXXXX)
chmod 755 "$COREDB_TEST_TMP"
cleanup() { # the servers the tests started and left behind on failure, found by their pid files
  local pidfile
  while IFS= read -r pidfile; do
    kill -KILL "$(head -n 1 "$pidfile")" 2>/dev/null
  done < <(find "$COREDB_TEST_TMP" \( -name redis.pid -o -name postmaster.pid \) 2>/dev/null)
  rm -rf "$COREDB_TEST_TMP"
}
trap cleanup EXIT

start=$(date +%s)
# shellcheck disable=SC2086
COREDB_BIN="$PWD/build-vg/coredb-vg" /usr/bin/python3 -m pytest -q -p no:cacheprovider $TESTS 2>&1 |
  tee "$VGDIR/pytest.log"
secs=$(( $(date +%s) - start ))

# The summary. A process that ran to its exit ends its log with memcheck's
# ERROR SUMMARY (the leak check runs just before it). A log without one is
# either a child coredb forked to exec another program (pg_ctl, pg_dump:
# its parent is a logged coredb) or a coredb killed with SIGKILL (by a
# test, or by the stop timeout), which was not checked for leaks: both are
# counted apart rather than as clean.
procs=0
checked=0
children=0
bad=0
for log in "$VGDIR"/vg.*.log; do
  [ -e "$log" ] || continue
  procs=$((procs + 1))
  summary=$(grep -E "ERROR SUMMARY: [0-9]+ errors" "$log" | tail -1)
  if [ -z "$summary" ]; then
    parent=$(sed -n -E 's/^==[0-9]+== Parent PID: ([0-9]+)$/\1/p' "$log" | head -1)
    [ -n "$parent" ] && [ -e "$VGDIR/vg.$parent.log" ] && children=$((children + 1))
    continue
  fi
  checked=$((checked + 1))
  errors=$(echo "$summary" | sed -E 's/.*ERROR SUMMARY: ([0-9]+) errors.*/\1/')
  if [ "$errors" -ne 0 ] || grep -q "definitely lost in" "$log"; then
    bad=$((bad + 1))
    echo "== $log ($errors errors)"
    grep -vE "^==[0-9]+== (Memcheck|Copyright|Using Valgrind|Command|Parent PID|$)" "$log" | head -n 80
  fi
done
result=$(grep -E "[0-9]+ (passed|failed)" "$VGDIR/pytest.log" | tail -1)
echo
echo "valgrind: $((procs - children)) coredb processes under memcheck, $checked ran to exit and" \
  "were checked, $((procs - children - checked)) killed before their leak check;" \
  "$bad with errors or definite leaks ($children forked children that exec'd another program" \
  "not counted); pytest: $result; ${secs} s"
[ "$checked" -gt 0 ] && [ "$bad" -eq 0 ] && ! echo "$result" | grep -qE "failed|error"
