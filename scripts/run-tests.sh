#!/usr/bin/env bash
# The README's test command (`make test`) and what CI runs.
#
# Installs what is missing, builds, runs the cmocka unit tests, then the
# pytest end-to-end suite against the real coredb binary. The suite starts
# its own PostgreSQL 15 and Redis on free loopback ports under a temp dir
# (tests/e2e/servers.py) and stops them; the trap below is the backstop that
# kills anything still running under that dir, also when tests fail.
# In CI (CI=true) a part of the end-to-end suite (SAN_SHORT below) runs a
# second time on the ASan+UBSan binary; with COREDB_TEST_SAN=1 (make
# test-san) all of it does, and COREDB_TEST_RELEASE=0 leaves out the pass
# on the release binary.
set -uo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh || exit 1
make -s all unit-bins || exit 1
# a new upward or circular dependency between layers fails the run here
make -s lint || exit 1

export COREDB_TEST_TMP
COREDB_TEST_TMP=$(mktemp -d /tmp/coredb-test.XXXXXX)
chmod 755 "$COREDB_TEST_TMP"
cleanup() {
  # Redis rewrites its command line, so servers are found by their pid files
  # (redis.pid, postmaster.pid), the rest by the temp dir in their arguments.
  local pidfile
  while IFS= read -r pidfile; do
    kill -KILL "$(head -n 1 "$pidfile")" 2>/dev/null
  done < <(find "$COREDB_TEST_TMP" \( -name redis.pid -o -name postmaster.pid \) 2>/dev/null)
  pkill -KILL -f "$COREDB_TEST_TMP" 2>/dev/null
  sleep 0.2
  rm -rf "$COREDB_TEST_TMP"
}
trap cleanup EXIT

passed=0
failed=0
failures=() # one line per failed test, printed again just above the total
count() { # $1 = passed, $2 = failed
  passed=$((passed + $1)); failed=$((failed + $2))
}

echo "== unit tests"
# tests/unit/<layer>/<file>.c -> build/tests/<layer>/<file>
for t in $(find build/tests -type f -perm -u+x | sort); do
  out=$("$t" 2>&1); rc=$?
  echo "$out" | grep -E "^\[  (PASSED|FAILED) |^\[==========\]" | sed "s|^|${t#build/tests/}: |"
  p=$(echo "$out" | sed -n 's/^\[  PASSED  \] \([0-9]*\) test.*/\1/p' | tail -1)
  f=$(echo "$out" | sed -n 's/^\[  FAILED  \] \([0-9]*\) test.*/\1/p' | tail -1)
  [ $rc -ne 0 ] && [ -z "$f" ] && f=1
  count "${p:-0}" "${f:-0}"
  [ "${f:-0}" -ne 0 ] && failures+=("unit ${t#build/tests/}: $(echo "$out" | grep -E '^\[  FAILED  \] [^0-9]' | sed 's/^\[  FAILED  \] //' | tr '\n' ' ')")
done

# run_pytest LABEL SECONDS ARGS...: one pytest run under a timeout, its
# result line added to the totals and its failed tests to the failures
run_pytest() {
  local label=$1 limit=$2 log="$COREDB_TEST_TMP/pytest-$1.log"
  shift 2
  timeout "$limit" /usr/bin/python3 -m pytest -q -p no:cacheprovider "$@" 2>&1 | tee "$log"
  local line p f e name
  line=$(grep -E "[0-9]+ (passed|failed)" "$log" | tail -1)
  p=$(echo "$line" | grep -oE "[0-9]+ passed" | grep -oE "[0-9]+")
  f=$(echo "$line" | grep -oE "[0-9]+ failed" | grep -oE "[0-9]+")
  e=$(echo "$line" | grep -oE "[0-9]+ error" | grep -oE "[0-9]+")
  if [ -z "$line" ]; then   # killed by the timeout, or pytest never ran
    f=1
    failures+=("$label: no pytest result (timeout $limit s?)")
  fi
  count "${p:-0}" "$(( ${f:-0} + ${e:-0} ))"
  while IFS= read -r name; do failures+=("$label $name"); done < <(grep -E "^(FAILED|ERROR) " "$log")
}

run_e2e() { # $1 = label, $2 = binary, then the test files (all of tests/e2e when none)
  local label=$1 bin=$2
  shift 2
  echo "== end-to-end ($label: $bin${1:+, $# files})"
  COREDB_BIN="$PWD/$bin" run_pytest "$label" 3600 "${@:-tests/e2e}" -o junit_family=xunit2 \
    --junitxml="$COREDB_TEST_TMP/$label.xml"
}

# The sanitizer pass in CI: the whole suite on the ASan build takes about as
# long as on the release build (25 minutes on the slow 2-core machine of
# 2026-12-01, where the whole CI run then took 64), so CI runs these files
# (about a third of the release pass's time), which reach the code most
# exposed to memory errors: the HTTP layer and its hostile clients, the
# request engine's loop paths (queries, transactions, leases, admission, the
# store layer's units on a real PostgreSQL), the data API with documents and
# vectors, auth and users, and the administration routes' hostile inputs.
# Left to `make test-san` (docs/reliability.md, "The sanitizer build"):
# among others test_encryption.py, four minutes that are mostly the key
# snapshot's waits. A file that proves a fix of a memory error belongs here.
SAN_SHORT=(
  tests/e2e/test_http.py tests/e2e/test_http_hostile.py tests/e2e/test_zero_copy.py
  tests/e2e/test_engine.py tests/e2e/test_loop_query.py tests/e2e/test_loop_plan_memo.py tests/e2e/test_loop_tx.py
  tests/e2e/test_loop_lease.py tests/e2e/test_loop_admission.py tests/e2e/test_store_units.py
  tests/e2e/test_data_query.py tests/e2e/test_data_transaction.py tests/e2e/test_data_cache.py
  tests/e2e/test_documents.py tests/e2e/test_vectors.py tests/e2e/test_auth.py tests/e2e/test_users.py
  tests/e2e/test_admin_access.py tests/e2e/test_admin_dbauth.py
)

if [ "${COREDB_TEST_RELEASE:-1}" != "0" ]; then
  run_e2e release build/coredb
fi
if [ "${COREDB_TEST_SAN:-}" = "1" ] || [ "${CI:-}" = "true" ]; then
  make -s san || exit 1
  san_files=()
  [ "${COREDB_TEST_SAN:-}" = "1" ] || san_files=("${SAN_SHORT[@]}")
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=0:exitcode=66 \
  UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    run_e2e sanitizer build-san/coredb "${san_files[@]}"
fi

# The libFuzzer harnesses of fuzz/ (make fuzz), briefly: 5 s each, about
# 2.5 minutes with the build from a clean build-fuzz/ (15 harnesses on the
# shared 2-core machine); a crash fails the run and keeps its input in
# build-fuzz/crashes/. In CI or with COREDB_TEST_FUZZ=1
# (COREDB_FUZZ_SECONDS sets the time per harness).
if [ "${CI:-}" = "true" ] || [ "${COREDB_TEST_FUZZ:-}" = "1" ]; then
  echo "== fuzz (${COREDB_FUZZ_SECONDS:-5} s per harness)"
  if make -s -j2 fuzz-bins; then
    fuzz_log="$COREDB_TEST_TMP/fuzz.log"
    FUZZ_SECONDS=${COREDB_FUZZ_SECONDS:-5} bash scripts/fuzz.sh 2>&1 | tee "$fuzz_log"
    fuzz_ok=$(grep -cE " ok$" "$fuzz_log")
    fuzz_bad=$(grep -cE "  (CRASH|FAILED|NOT BUILT)" "$fuzz_log")
    [ "$fuzz_ok" -eq 0 ] && [ "$fuzz_bad" -eq 0 ] && fuzz_bad=1
    while IFS= read -r line; do
      failures+=("fuzz: $line")
    done < <(grep -E "  (CRASH|FAILED|NOT BUILT)" "$fuzz_log")
    count "$fuzz_ok" "$fuzz_bad"
  else
    failures+=("fuzz: make fuzz-bins failed")
    count 0 1
  fi
fi

# faults under load (tests/chaos, make chaos) in short: in CI or with COREDB_TEST_CHAOS=1
if [ "${CI:-}" = "true" ] || [ "${COREDB_TEST_CHAOS:-}" = "1" ]; then
  echo "== chaos (faults under load, 3 s steady phases)"
  CHAOS_SECONDS=3 COREDB_BIN="$PWD/build/coredb" run_pytest chaos 290 -s tests/chaos
fi

# soak and resource bounds, short (tests/soak, issue 16): the connection
# bounds and a 3-minute soak, about 4 minutes
if [ "${CI:-}" = "true" ] || [ "${COREDB_TEST_SOAK:-}" = "1" ]; then
  echo "== soak (tests/soak: connection bounds, SOAK_MINUTES=${SOAK_MINUTES:-3})"
  SOAK_MINUTES=${SOAK_MINUTES:-3} COREDB_BIN="$PWD/build/coredb" run_pytest soak 420 -s tests/soak
fi

echo
# the failures again, so that the last lines of a long log name them
for line in "${failures[@]}"; do echo "failed: $line"; done
echo "total: $passed passed, $failed failed"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
