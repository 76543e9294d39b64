#!/usr/bin/env bash
# bench/sql_shapes.sh - issue 8 item 4: the SQL shapes of a data-API miss
# (one page of 20 + total of a user-role caller's projects under row-level
# security) side by side under pgbench, pipelined (\startpipeline) and
# prepared (-M prepared) as coredb sends them: tx/s and PostgreSQL CPU per
# transaction for each shape, at -c16 and -c64 (-j2), same run. Before the
# runs every shape is executed once by psql for one caller and its total
# checked: a shape that loses row-level security shows the wrong total and
# is marked UNSOUND. Throw-away PostgreSQL (lib.sh); coredb runs once to
# migrate and register the first user, rows seeded by data_seed.sql. Then
# PostgreSQL's instructions per transaction of each shape under callgrind
# (load-independent; IR=0 skips) and the profile of one shape (IR_PROFILE).
# Knobs: DURATION (s per run), ROUNDS, CLIENTS ("16 64"; "" = no timed
# runs), ONLY ("a b": those shapes), IR_N1/IR_N2 (transactions of the two
# callgrind runs). Prints the table and appends it to bench/RESULTS.md.
set -euo pipefail
source "$(dirname "$0")/lib.sh"
BENCH_DIR=$(cd "$(dirname "$0")" && pwd)
DURATION=${DURATION:-10}
NUSERS=${BENCH_DATA_USERS:-200}
NPROJECTS=45
CLIENTS=${CLIENTS-"16 64"}
ROUNDS=${ROUNDS:-3}
# bench_cleanup stops at its first step that fails under set -e (no coredb
# left, or a PostgreSQL this script stopped itself): the directory goes anyway
trap 'bench_cleanup || true; rm -rf "$BENCH_TMP"' EXIT
TCK=$(getconf CLK_TCK)

# key | script | what | PGOPTIONS
SHAPES=(
  "a|pgbench_shape_begin.sql|(a) coredb before issue 8: BEGIN, role + settings, page (row_to_json), count, COMMIT|"
  "b|pgbench_coredb.sql|(b) coredb since issue 8, no BEGIN/COMMIT: role + settings, page, count (one implicit transaction up to the Sync)|"
  "c|pgbench_shape_one.sql|(c) no BEGIN/COMMIT, page + total in one statement (scalar subquery total, string_agg of row_to_json)|"
  "d|pgbench_shape_one_jsonagg.sql|(d) as (c) with json_agg building the page|"
  "c1|pgbench_shape_rows_total.sql|(c') rows + the total as a scalar subquery column (empty page loses the total)|"
  "c2|pgbench_shape_window.sql|(c'') rows + count(*) OVER () (empty page loses the total)|"
  "e|pgbench_shape_folded.sql|(e) settings folded into the page statement (one statement in all)|"
  "p|pgbench_shape_pinned.sql|(p) connection pinned to the role (per-role sub-pool): user id settings + (c)|-c role=coredb_user"
  "fj|pgbench_fast_json.sql|reference (data.sh): one statement building page + total as JSON as the table owner, no role, no RLS|"
  "fp|pgbench_fast_plain.sql|reference (data.sh): two plain statements as the table owner, no role, no RLS|"
)

# lib.sh's pg_cpu_ticks, tolerant of a backend that exits while it is read
# (pgbench's connections come and go between runs)
pg_cpu_ticks() {
  local pm p v t
  pm=$(postmaster_pid)
  t=$(sed 's/.*) //' "/proc/$pm/stat" | awk '{print $12 + $13 + $14 + $15}')
  for p in $(pgrep -P "$pm"); do
    v=$(sed 's/.*) //' "/proc/$p/stat" 2>/dev/null | awk '{print $12 + $13}')
    t=$((t + ${v:-0}))
  done
  echo "$t"
}

# ONLY="a b": just those shapes
if [ -n "${ONLY:-}" ]; then
  kept=()
  for s in "${SHAPES[@]}"; do [[ " $ONLY " == *" ${s%%|*} "* ]] && kept+=("$s"); done
  SHAPES=("${kept[@]}")
fi

psql_pg() { as_pg psql -q -X -v ON_ERROR_STOP=1 -h "$BENCH_TMP/pg" -p "$PG_PORT" -U postgres "$@"; }

bench_start_pg
bench_start_coredb "PASSWORD_HASH_OPSLIMIT=1" "PASSWORD_HASH_MEMLIMIT_KIB=8" "RATE_LIMIT_ANON=0"
curl -sf -o /dev/null -H 'Content-Type: application/json' \
  -d '{"email":"data0@bench.example.com","username":"data0","password":"bench-data-password"}' \
  "http://127.0.0.1:$CDB_PORT/users/" || { echo "registering data0 failed"; exit 1; }
bench_stop_coredb
psql_pg -v nusers="$NUSERS" -v nprojects="$NPROJECTS" -f "$BENCH_DIR/data_seed.sql" >/dev/null

# --- the guarantee check: caller n=1 must see its own 45 projects, no more ---
declare -A SOUND
for s in "${SHAPES[@]}"; do
  IFS='|' read -r key script what opts <<<"$s"
  # the script's SQL for psql: meta-commands dropped, variables given, one
  # transaction (-1) standing in for the pipeline's implicit one
  out=$(grep -v '^\\\|^--' "$BENCH_DIR/$script" | grep -vi '^BEGIN;\|^COMMIT;' |
        PGOPTIONS="$opts" psql_pg -At -1 -v n=1 -v lim=20 -v off=0 -v role="'user'" -f - 2>&1) || true
  if [[ "$key" == f* ]]; then
    SOUND[$key]="n/a: owner, no RLS"   # the references filter by user id themselves
  elif grep -qw "$NPROJECTS" <<<"$out" && ! grep -qw "$((NUSERS * NPROJECTS))" <<<"$out" &&
     grep -q 'of user 1"' <<<"$out" && ! grep -q 'of user 2"' <<<"$out"; then
    SOUND[$key]=yes
  else
    SOUND[$key]="**UNSOUND**"
  fi
done

# --- the runs: ROUNDS rounds, the shapes in a rotated order each round (so
# a burst of load from elsewhere does not fall on one shape), medians kept ---
declare -A TPS PGUS LAT LOADS
median() { tr ' ' '\n' | grep . | sort -n | awk '{ v[NR]=$1 } END { print (NR % 2 ? v[(NR+1)/2] : (v[NR/2] + v[NR/2+1]) / 2) }'; }
range() { tr ' ' '\n' | grep . | sort -n | awk 'NR==1 {lo=$1} {hi=$1} END {print lo "–" hi}'; }
nshapes=${#SHAPES[@]}
for ((r = 0; r < ROUNDS; r++)); do
  for c in $CLIENTS; do
    for ((i = 0; i < nshapes; i++)); do
      IFS='|' read -r key script what opts <<<"${SHAPES[$(((i + r * 3) % nshapes))]}"
      load=$(cut -d' ' -f1 /proc/loadavg)
      pg0=$(pg_cpu_ticks)
      out=$(PGOPTIONS="$opts" pgbench -n -h 127.0.0.1 -p "$PG_PORT" -U postgres -c "$c" -j 2 -T "$DURATION" \
            -M prepared -D nusers="$NUSERS" -D role=user -f "$BENCH_DIR/$script" postgres 2>&1) ||
        { echo "$script failed:"; echo "$out"; exit 1; }
      # pgbench's backends exit after it does: their CPU counts once reaped
      for _ in $(seq 1 50); do [ -z "$(pg_backend_pids)" ] && break; sleep 0.1; done
      pg1=$(pg_cpu_ticks)
      n=$(awk '/number of transactions actually processed/ {print $NF}' <<<"$out")
      fails=$(awk '/number of failed transactions/ {print $5; f=1} END {if (!f) print 0}' <<<"$out")
      [ "$fails" = 0 ] || { echo "$script: $fails failed transactions"; echo "$out"; exit 1; }
      TPS[$key.$c]+=" $(awk '/^tps = / {printf "%.0f", $3}' <<<"$out")"
      LAT[$key.$c]+=" $(awk '/^latency average/ {print $4}' <<<"$out")"
      PGUS[$key.$c]+=" $(awk -v t="$TCK" -v n="$n" -v p=$((pg1 - pg0)) 'BEGIN { printf "%.0f", p * 1e6 / t / n }')"
      LOADS[$key.$c]+=" $load"
      echo "round $r -c$c $key: tps${TPS[$key.$c]##* } PG µs/tx${PGUS[$key.$c]##* } load $load" >&2
    done
  done
done
# --- instructions per transaction (IR=0 skips): CPU time on a shared machine
# swings with everyone else's load, instructions do not. PostgreSQL runs
# under valgrind's callgrind (its backends are forks: each writes its own
# count at exit), and each shape runs twice on one connection (-c1), N1 and
# N2 transactions: (Ir(N2) - Ir(N1)) / (N2 - N1) is the cost of one
# transaction, the connection's start and prepares cancelled out. ---
declare -A IRTX
if [ "${IR:-1}" = 1 ] && command -v valgrind >/dev/null; then
  N1=${IR_N1:-100} N2=${IR_N2:-600}
  as_pg "$PG_BIN/pg_ctl" -D "$BENCH_TMP/pg/data" -m fast -w stop >/dev/null
  mkdir -p "$BENCH_TMP/cg"
  [ "$(id -u)" = 0 ] && chown postgres "$BENCH_TMP/cg"
  as_pg valgrind --tool=callgrind --callgrind-out-file="$BENCH_TMP/cg/cg.%p" "$PG_BIN/postgres" \
    -D "$BENCH_TMP/pg/data" -p "$PG_PORT" -k "$BENCH_TMP/pg" -c listen_addresses=127.0.0.1 -c autovacuum=off \
    >"$BENCH_TMP/cg/log" 2>&1 &
  VG_PID=$!
  for _ in $(seq 1 600); do pg_isready -q -h 127.0.0.1 -p "$PG_PORT" && break; sleep 0.2; done
  ir_of_run() { # script opts n -> Ir of the backends pgbench used for n transactions
    local before sum last=-1
    before=$(ls "$BENCH_TMP/cg")
    PGOPTIONS="$2" pgbench -n -h 127.0.0.1 -p "$PG_PORT" -U postgres -c 1 -j 1 -t "$3" -M prepared \
      -D nusers="$NUSERS" -D role=user -f "$BENCH_DIR/$1" postgres >/dev/null 2>&1 || { echo "valgrind run of $1 failed" >&2; return 1; }
    # pgbench opens a short connection of its own besides the client's: sum
    # every backend that ended since, once their counts stop changing
    local files n
    for _ in $(seq 1 120); do
      sleep 1
      files=$(comm -13 <(echo "$before") <(ls "$BENCH_TMP/cg") | sed "s#^#$BENCH_TMP/cg/#")
      n=$(echo "$files" | grep -c . || true)
      # a file's count is its "totals:" (or older valgrinds' "summary:") line, once
      sum=$(echo "$files" | xargs -r awk '/^(totals|summary):/ {s += $2; nextfile} END {printf "%.0f", s}')
      [ "$n" -ge 2 ] && [ "$sum" = "$last" ] && break
      last=$sum
    done
    echo "$files" >"$BENCH_TMP/cg_last"
    echo "$sum"
  }
  # the first backends after a start build the relation cache files: not counted
  ir_of_run pgbench_shape_begin.sql "" 20 >/dev/null
  for s in "${SHAPES[@]}"; do
    IFS='|' read -r key script what opts <<<"$s"
    i1=$(ir_of_run "$script" "$opts" "$N1") && i2=$(ir_of_run "$script" "$opts" "$N2") &&
      IRTX[$key]=$(awk -v a="$i1" -v b="$i2" -v n=$((N2 - N1)) 'BEGIN { printf "%.0f", (b - a) / n / 1000 }')
    # the profile of one shape's backend (IR_PROFILE, default b): its top
    # functions by own instructions
    if [ "$key" = "${IR_PROFILE:-b}" ]; then
      big=$(xargs -r ls -S <"$BENCH_TMP/cg_last" | head -1)
      PROFILE=$(callgrind_annotate --threshold=100 "$big" 2>/dev/null |
        awk '/file:function/ {f = 1; next} f && /^ *[0-9,]+ \(/ && n < 25 {sub(/ \[.*\]$/, ""); print; n++}')
    fi
    echo "Ir $key: ${IRTX[$key]:-?} k instructions/tx" >&2
  done
  as_pg "$PG_BIN/pg_ctl" -D "$BENCH_TMP/pg/data" -m fast -w stop >/dev/null || kill "$VG_PID" 2>/dev/null
  wait "$VG_PID" 2>/dev/null || true
fi
rows=""
for c in $CLIENTS; do
  for s in "${SHAPES[@]}"; do
    IFS='|' read -r key script what opts <<<"$s"
    rows+="| $what | ${SOUND[$key]} | ${IRTX[$key]:--} | $c | $(median <<<"${TPS[$key.$c]}") | $(median <<<"${LAT[$key.$c]}") | $(median <<<"${PGUS[$key.$c]}") | $(range <<<"${PGUS[$key.$c]}") | $(range <<<"${LOADS[$key.$c]}") |"$'\n'
  done
done

{
  echo
  echo "### SQL shapes of a data-API miss under pgbench — $(date -u +%Y-%m-%d) — $(machine_line)"
  echo "bench/sql_shapes.sh: pgbench -n -M prepared -j2 -T$DURATION (no failed transaction allowed), each script pipelined (\\\\startpipeline/\\\\endpipeline = one Sync, as coredb sends it),"
  echo "$NUSERS users × $NPROJECTS projects, a random user-role caller per transaction (row-level security as coredb_user), page of 20 newest + total."
  echo "PostgreSQL 15 (defaults, max_connections=300), throw-away, same machine. PG µs/tx = CPU of the postmaster and all its processes during the run ÷ transactions."
  echo "\"sound\": the shape run once by psql for caller 1 shows its own $NPROJECTS projects and no one else's. $ROUNDS rounds, shapes in rotated order: medians, with the range of PG µs/tx and of the 1-min load average before each run (the machine is shared)."
  echo "PG k instr/tx: thousands of instructions PostgreSQL executes per transaction (callgrind, one connection, see the script): independent of the machine's load."
  echo
  echo "| shape | sound | PG k instr/tx | clients | tx/s | latency ms | PG µs/tx | PG µs/tx range | load range |"
  echo "|---|---|---|---|---|---|---|---|---|"
  printf "%s" "$rows"
  if [ -n "${PROFILE:-}" ]; then
    echo
    echo "Where a backend's instructions go, shape (${IR_PROFILE:-b}), $N2 transactions + the connection's start (callgrind_annotate, own instructions, top 25):"
    echo
    echo '```'
    echo "$PROFILE"
    echo '```'
  fi
} | tee -a "$BENCH_DIR/RESULTS.md"
