"""Monitoring and detailed health (issue 12, part 2).

GET /api/v1/admin/metrics/tables | performance | errors | all read
PostgreSQL's statistics views (pg_stat_user_tables, pg_statio_user_tables,
pg_class, pg_stat_database, pg_stat_database_conflicts, pg_stat_statements)
and answer the result form; GET /api/v1/admin/health[/connection | query |
resource] judge pool and backends, a probe and the longest-running
statements, and the process's memory, descriptors and disks as healthy /
degraded / unhealthy with the reasons. The same calls back `coredb monitor`
and `coredb health`.

The numbers are checked where they come from: a table that received 10
inserts, 3 updates and 1 delete shows exactly that, a deadlock provoked
between two sessions is counted, a pg_sleep running in another session is
listed with its pid, resource numbers match /proc and statvfs. Admin only:
401 without or with a bad token, 403 for user and premium."""
import os
import socket
import threading
import time
import uuid

import psycopg2
import pytest

from datahelp import admin_of, assert_error, premium, redis_url, start_instance, user, wait_for
from identity import craft, cli_env, live_claims
from servers import COREDB_BIN, Coredb, PgServer, RedisServer, run_cli, scratch_dir

REDIS_DB = 9
M = "/api/v1/admin/metrics"
H = "/api/v1/admin/health"
ROUTES = [f"{M}/tables", f"{M}/performance", f"{M}/errors", f"{M}/all", H, f"{H}/connection",
          f"{H}/query", f"{H}/resource"]
ISO = r"^\d{4}-\d\d-\d\dT"
HEALTH_KEYS = {"health", "reason", "reasons"}


# ---- fixtures: a PostgreSQL with pg_stat_statements preloaded, and one without ----

@pytest.fixture(scope="module")
def pgs():
    server = PgServer("pg-monitor", extra_opts="-c shared_preload_libraries=pg_stat_statements")
    yield server
    server.destroy()


@pytest.fixture(scope="module")
def mon(pgs, redis_server):
    db = pgs.create_database("mon")
    # in a schema of its own, as docs/operations.md advises (not the data API's schema)
    pgs.query(db, "CREATE SCHEMA monitoring; CREATE EXTENSION pg_stat_statements SCHEMA monitoring")
    var = os.path.join(scratch_dir(), f"monvar-{uuid.uuid4().hex[:8]}")
    os.makedirs(os.path.join(var, "backups"))
    inst = start_instance(pgs, redis_server, REDIS_DB, db=db, COREDB_VAR_DIR=var,
                          BACKUP_DIR=os.path.join(var, "backups"))
    inst.var = var
    yield inst
    inst.stop_clean()


@pytest.fixture(scope="module")
def root(mon):
    return admin_of(mon)


@pytest.fixture(scope="module")
def plain(pg):
    """On the shared PostgreSQL, which does not preload pg_stat_statements."""
    inst = start_instance(pg)
    yield inst
    inst.stop_clean()


def disk_verdict(*paths):
    """What the resource check must say of these directories' disks, from
    statvfs here: this machine's disk is shared and may really be nearly
    full, so the tests derive the expected verdict instead of assuming one."""
    worst = "healthy"
    for p in paths:
        st = os.statvfs(p)
        ratio = st.f_bavail / st.f_blocks
        if ratio < 0.02:
            return "unhealthy"
        if ratio < 0.10:
            worst = "degraded"
    return worst


def assert_resource_verdict(body, *paths):
    expect = disk_verdict(*paths)
    assert body["health"] == expect, body
    assert all(r.startswith("disk: ") for r in body["reasons"]), body["reasons"]
    return expect


def get_ok(inst, acct, path, timeout=30):
    r = inst.get(path, headers=acct.headers, timeout=timeout)
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "success" and body["error"] is None, body
    assert __import__("re").match(ISO, body["timestamp"]), body
    return body


def table_of(body, name, schema="public"):
    rows = [t for t in body["tables"] if t["schema"] == schema and t["name"] == name]
    assert len(rows) == 1, [(t["schema"], t["name"]) for t in body["tables"]]
    return rows[0]


def flushed(conn):
    """Makes this session's statistics visible now (PostgreSQL 15)."""
    with conn.cursor() as cur:
        cur.execute("SELECT pg_stat_force_next_flush()")
        cur.execute("SELECT 1")


def direct(inst, sql):
    return inst.pg.query(inst.db, sql)[0]


# ---- who may ask ----

def test_every_route_is_admin_only(mon, root):
    u = user(mon)
    p = premium(mon, root)
    expired = craft(live_claims(root.token, exp=int(time.time()) - 3600, iat=int(time.time()) - 7200,
                                nbf=int(time.time()) - 7200))
    forged = craft(live_claims(root.token), secret="not-the-secret-" + uuid.uuid4().hex)
    for path in ROUTES:
        assert_error(mon.get(path), 401, "UNAUTHORIZED")
        assert_error(mon.get(path, headers={"Authorization": "Bearer garbage"}), 401)
        assert_error(mon.get(path, headers={"Authorization": f"Bearer {forged}"}), 401)
        assert_error(mon.get(path, headers={"Authorization": f"Bearer {expired}"}), 401)
        assert_error(mon.get(path, headers=u.headers), 403, "FORBIDDEN")
        assert_error(mon.get(path, headers=p.headers), 403, "FORBIDDEN")
        assert_error(mon.request("POST", path, headers=root.headers, json={}), 405)
        assert_error(mon.request("DELETE", path, headers=root.headers), 405)
    assert_error(mon.get(f"{M}/nothing", headers=root.headers), 404)
    assert_error(mon.get(f"{H}/nothing", headers=root.headers), 404)


def test_hostile_query_strings_and_bodies_change_nothing(mon, root):
    base = get_ok(mon, root, f"{M}/tables")
    names = sorted((t["schema"], t["name"]) for t in base["tables"])
    for qs in ["?schema=pg_catalog", "?schema=x';DROP TABLE users;--", "?limit=-1&limit=abc",
               "?" + "a" * 6000, "?%00%ff"]:
        r = mon.get(f"{M}/tables{qs}", headers=root.headers)
        assert r.status_code in (200, 414, 431, 400), r.text
        if r.status_code == 200:
            assert sorted((t["schema"], t["name"]) for t in r.json()["tables"]) == names
        else:
            assert "error" in r.json()
    # a body on a GET: malformed or oversized is refused, valid JSON is ignored
    for body, status, code in [(b"{", 400, "INVALID_JSON"), (b"[" * 10000, 400, "INVALID_JSON"),
                               (b"\x00\xff", 400, "INVALID_JSON"),
                               (b"x" * 2_000_000, 413, "PAYLOAD_TOO_LARGE")]:
        r = mon.request("GET", f"{M}/tables", headers=dict(root.headers, **{"Content-Type": "application/json"}),
                        data=body)
        assert_error(r, status, code)
    r = mon.request("GET", f"{M}/tables", headers=root.headers, json={"schema": "pg_catalog", "limit": 1})
    assert r.status_code == 200 and {t["schema"] for t in r.json()["tables"]} == {"public", "coredb"}
    assert direct(mon, "SELECT count(*) FROM public.users")[0] >= 1   # nothing dropped


# ---- metrics/tables: the numbers are real ----

def test_tables_show_inserts_updates_deletes(mon, root):
    name = "mon_items_" + uuid.uuid4().hex[:6]
    conn = mon.pg.connect(mon.db)
    try:
        with conn.cursor() as cur:
            cur.execute(f"CREATE TABLE {name} (id serial PRIMARY KEY, v text)")
            for i in range(10):
                cur.execute(f"INSERT INTO {name} (v) VALUES (%s)", (f"v{i}",))
            cur.execute(f"UPDATE {name} SET v = v || '!' WHERE id <= 3")
            cur.execute(f"DELETE FROM {name} WHERE id = 10")
            cur.execute(f"SELECT v FROM {name} WHERE id = 5")
        flushed(conn)
    finally:
        conn.close()

    t = wait_for(lambda: next((x for x in get_ok(mon, root, f"{M}/tables")["tables"]
                               if x["name"] == name and x["n_tup_ins"] == 10), None), timeout=10)
    assert t, "the table's statistics never showed"
    assert t["schema"] == "public" and t["coredb_own"] is False
    assert (t["n_tup_ins"], t["n_tup_upd"], t["n_tup_del"]) == (10, 3, 1), t
    assert t["live_rows"] == 9, t
    dead, idx_scan, total, tbl, idx = direct(
        mon, f"SELECT n_dead_tup, idx_scan, pg_total_relation_size('{name}'), pg_table_size('{name}'),"
             f" pg_indexes_size('{name}') FROM pg_stat_user_tables WHERE relname = '{name}'")
    assert t["dead_rows"] == dead and 1 <= dead <= 4, t
    assert t["idx_scan"] >= 1 and t["idx_scan"] == idx_scan, t   # the lookup by primary key
    assert (t["total_bytes"], t["table_bytes"], t["index_bytes"]) == (total, tbl, idx), t
    assert t["index_bytes"] > 0 and t["total_bytes"] == t["table_bytes"] + t["index_bytes"]
    for key in ("seq_scan", "seq_tup_read", "n_tup_hot_upd", "heap_blks_read", "heap_blks_hit",
                "vacuum_count", "autovacuum_count", "analyze_count", "autoanalyze_count"):
        assert isinstance(t[key], int) and not isinstance(t[key], bool), (key, t)
    assert t["rows_estimate"] is None and t["last_analyze"] is None and t["last_vacuum"] is None

    mon.pg.query(mon.db, f"VACUUM ANALYZE {name}")
    t = wait_for(lambda: next((x for x in get_ok(mon, root, f"{M}/tables")["tables"]
                               if x["name"] == name and x["last_vacuum"]), None), timeout=15)
    assert t, "VACUUM never showed"
    assert t["rows_estimate"] == 9 and t["dead_rows"] == 0, t
    assert t["vacuum_count"] == 1 and t["analyze_count"] == 1, t
    import re
    assert re.match(ISO, t["last_vacuum"]) and re.match(ISO, t["last_analyze"]), t


def test_tables_scope_is_the_schema_and_coredbs_own(mon, root):
    mon.pg.query(mon.db, "CREATE SCHEMA IF NOT EXISTS elsewhere")
    mon.pg.query(mon.db, "CREATE TABLE IF NOT EXISTS elsewhere.hidden_t (id int)")
    body = get_ok(mon, root, f"{M}/tables")
    assert body["schema"] == "public" and body["coredb_schema"] == "coredb"
    assert body["count"] == len(body["tables"])
    schemas = {t["schema"] for t in body["tables"]}
    assert schemas == {"public", "coredb"}, schemas
    assert table_of(body, "users")["coredb_own"] is False
    assert table_of(body, "sessions", "coredb")["coredb_own"] is True
    assert table_of(body, "schema_migrations", "coredb")["coredb_own"] is True
    # every table of the two schemas, as PostgreSQL lists them
    expect = {tuple(r) for r in mon.pg.query(
        mon.db, "SELECT schemaname, relname FROM pg_stat_user_tables WHERE schemaname IN ('public', 'coredb')")}
    assert {(t["schema"], t["name"]) for t in body["tables"]} == expect


# ---- metrics/performance ----

def test_performance_shape_and_transactions_grow(mon, root):
    body = get_ok(mon, root, f"{M}/performance")
    db = body["database"]
    assert db["name"] == mon.db
    for key in ("size_bytes", "backends", "xact_commit", "xact_rollback", "blks_read", "blks_hit",
                "tup_returned", "tup_fetched", "tup_inserted", "tup_updated", "tup_deleted",
                "temp_files", "temp_bytes", "deadlocks", "conflicts"):
        assert isinstance(db[key], int) and db[key] >= 0, (key, db)
    assert 0 <= db["cache_hit_ratio"] <= 1
    assert abs(db["cache_hit_ratio"] - db["blks_hit"] / (db["blks_hit"] + db["blks_read"])) < 1e-5
    assert db["size_bytes"] == pytest.approx(direct(mon, "SELECT pg_database_size(current_database())")[0],
                                             rel=0.05)
    assert set(body["pool"]) == {"active", "idle", "waiting", "total", "max", "acquired_total"}
    assert body["pool"]["max"] == 3     # DB_POOL_MAX 5 minus the loops' 2 (conftest)
    lat = body["coredb"]["latency"]
    assert isinstance(lat, dict) and lat, lat   # this process's own requests (the module made some)

    # known transactions from a session of our own, flushed: counted exactly (at least)
    conn = mon.pg.connect(mon.db)
    try:
        conn.autocommit = False
        for _ in range(7):
            with conn.cursor() as cur:
                cur.execute("SELECT 1")
            conn.commit()
        conn.autocommit = True
        flushed(conn)
    finally:
        conn.close()
    after = get_ok(mon, root, f"{M}/performance")["database"]
    assert after["xact_commit"] >= db["xact_commit"] + 7, (db["xact_commit"], after["xact_commit"])

    # and requests served through coredb show up once the pool's sessions flush (<= 10 s idle)
    before = after["xact_commit"]
    route = "/users/{user_id}"
    seen = get_ok(mon, root, f"{M}/performance")["coredb"]["latency"].get(route, {"count": 0})["count"]
    for _ in range(5):
        assert root.me().status_code == 200
    assert wait_for(lambda: get_ok(mon, root, f"{M}/performance")["database"]["xact_commit"] >= before + 5,
                    timeout=15)
    # coredb's own latency percentiles count exactly those five requests of the route
    lat = get_ok(mon, root, f"{M}/performance")["coredb"]["latency"][route]
    assert lat["count"] == seen + 5, lat
    assert 0 < lat["p50_ms"] <= lat["p90_ms"] <= lat["p99_ms"] < 30000, lat


def test_performance_lists_slowest_statements(mon, root):
    conn = mon.pg.connect(mon.db)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_sleep(0.6)")
            cur.execute("SELECT 42 AS my_password_column")
    finally:
        conn.close()
    st = get_ok(mon, root, f"{M}/performance")["statements"]
    assert st["status"] == "available", st
    assert 1 <= len(st["by_total_time"]) <= 10 and 1 <= len(st["by_mean_time"]) <= 10
    for row in st["by_total_time"] + st["by_mean_time"]:
        assert set(row) == {"queryid", "query", "calls", "total_ms", "mean_ms", "max_ms", "rows"}, row
        assert isinstance(row["queryid"], str) and row["calls"] >= 1 and len(row["query"]) <= 200
    totals = [r["total_ms"] for r in st["by_total_time"]]
    assert totals == sorted(totals, reverse=True)
    sleep = [r for r in st["by_mean_time"] if "pg_sleep" in r["query"]]
    assert sleep and sleep[0]["mean_ms"] >= 600, st["by_mean_time"]
    # its views are not offered to the data API (they live outside POSTGRES_SCHEMA)
    from datahelp import query
    for acct in (root, user(mon)):
        assert_error(query(mon, acct, {"table": "pg_stat_statements", "select": ["query"]}), 404,
                     "UNKNOWN_TABLE")
    everything = get_ok(mon, root, f"{M}/all")["performance"]["statements"]
    texts = [r["query"] for r in everything["by_total_time"] + everything["by_mean_time"]]
    assert not any("my_password_column" in q for q in texts)


def test_statements_unavailable_without_the_extension(plain, pg):
    admin = admin_of(plain)
    st = get_ok(plain, admin, f"{M}/performance")["statements"]
    assert st == {"status": "unavailable",
                  "reason": st["reason"]} and "not installed" in st["reason"], st
    # installed but not preloaded: still an answer, saying so
    pg.query(plain.db, "CREATE EXTENSION pg_stat_statements")
    try:
        st = get_ok(plain, admin, f"{M}/performance")["statements"]
        assert st["status"] == "unavailable" and "not loaded" in st["reason"], st
        assert get_ok(plain, admin, f"{M}/all")["performance"]["statements"]["status"] == "unavailable"
        # the failed read is undone to a savepoint and the monitoring transaction
        # committed: asking counts no rollback in the statistics it reports
        q = "SELECT xact_commit, xact_rollback FROM pg_stat_database WHERE datname = current_database()"
        commits, rollbacks = pg.query(plain.db, q)[0]
        for _ in range(5):
            assert get_ok(plain, admin, f"{M}/all")["performance"]["statements"]["status"] == "unavailable"
        assert wait_for(lambda: pg.query(plain.db, q)[0][0] >= commits + 5, timeout=15)
        assert pg.query(plain.db, q)[0][1] == rollbacks
    finally:
        pg.query(plain.db, "DROP EXTENSION pg_stat_statements")


# ---- metrics/errors ----

def test_errors_count_a_real_deadlock(mon, root):
    before = get_ok(mon, root, f"{M}/errors")
    pgx = before["postgresql"]
    assert set(pgx["conflicts_by_type"]) == {"tablespace", "lock", "snapshot", "bufferpin", "deadlock"}
    assert all(v == 0 for v in pgx["conflicts_by_type"].values())   # a primary has none
    assert set(before["pool"]) == {"acquire_timeouts_total", "connect_failures_total", "server_up"}
    assert before["pool"]["server_up"] is True

    # coredb's own error answers: three known 401s show up by code and route, and as the
    # newest recent events with their request ids
    def count_of(body, code, route):
        return sum(e["count"] for e in body["coredb"]["by_code"] if e["code"] == code and e["route"] == route)
    n = count_of(before, "UNAUTHORIZED", f"{M}/errors")
    ids = [mon.get(f"{M}/errors").headers["X-Request-ID"] for _ in range(3)]
    now = get_ok(mon, root, f"{M}/errors")
    assert count_of(now, "UNAUTHORIZED", f"{M}/errors") == n + 3, now["coredb"]["by_code"]
    recent = now["coredb"]["recent"][:3]
    assert [e["request_id"] for e in recent] == ids[::-1], recent
    assert all(e["status"] == 401 and e["method"] == "GET" and e["route"] == f"{M}/errors" for e in recent)

    name = "mon_dl_" + uuid.uuid4().hex[:6]
    mon.pg.query(mon.db, f"CREATE TABLE {name} (id int PRIMARY KEY, v int); INSERT INTO {name} VALUES (1, 0), (2, 0)")
    a, b = mon.pg.connect(mon.db), mon.pg.connect(mon.db)
    a.autocommit = b.autocommit = False
    errors = []

    def second():
        try:
            with b.cursor() as cur:
                cur.execute(f"UPDATE {name} SET v = 1 WHERE id = 2")
                time.sleep(0.5)
                cur.execute(f"UPDATE {name} SET v = 1 WHERE id = 1")
            b.commit()
        except psycopg2.Error as e:
            errors.append(e.pgcode)
            b.rollback()
    try:
        with a.cursor() as cur:
            cur.execute(f"UPDATE {name} SET v = 2 WHERE id = 1")
        t = threading.Thread(target=second)
        t.start()
        time.sleep(0.2)
        try:
            with a.cursor() as cur:
                cur.execute(f"UPDATE {name} SET v = 2 WHERE id = 2")
            a.commit()
        except psycopg2.Error as e:
            errors.append(e.pgcode)
            a.rollback()
        t.join(10)
        assert errors == ["40P01"], errors
        for c in (a, b):
            c.autocommit = True
            flushed(c)
    finally:
        a.close()
        b.close()
    after = wait_for(lambda: (lambda e: e if e["postgresql"]["deadlocks"] >= pgx["deadlocks"] + 1 else None)(
        get_ok(mon, root, f"{M}/errors")), timeout=10)
    assert after, "the deadlock was never counted"
    assert after["postgresql"]["deadlocks"] == direct(
        mon, "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()")[0]
    assert after["postgresql"]["xact_rollback"] >= pgx["xact_rollback"] + 1


def test_all_holds_the_three(mon, root):
    body = get_ok(mon, root, f"{M}/all")
    assert {"tables", "performance", "errors"} <= set(body)
    assert body["tables"]["count"] == len(body["tables"]["tables"]) > 0
    assert body["performance"]["database"]["name"] == mon.db
    assert "deadlocks" in body["errors"]["postgresql"]
    for part in ("tables", "performance", "errors"):
        assert "status" not in body[part] and "timestamp" not in body[part]


# ---- detailed health ----

def test_health_connection_healthy(mon, root):
    body = get_ok(mon, root, f"{H}/connection")
    assert body["health"] == "healthy" and body["reason"] is None and body["reasons"] == [], body
    pgx = body["postgresql"]
    assert pgx["reachable"] is True and 0 < pgx["latency_ms"] < 5000
    assert pgx["server_version"].startswith("15") and pgx["max_connections"] == 200
    assert 1 <= pgx["backends"] < 200
    assert body["pool"]["server_up"] is True and body["pool"]["max"] == 3
    assert body["pool"]["total"] >= 1 and body["pool"]["acquired_total"] >= 1
    rd = body["redis"]
    assert rd["configured"] is True and rd["reachable"] is True and rd["latency_ms"] > 0


def test_health_query_lists_a_running_statement(mon, root):
    conn = mon.pg.connect(mon.db)
    pid = conn.get_backend_pid()
    long_sql = "SELECT pg_sleep(3) /* " + "x" * 400 + " */"
    t = threading.Thread(target=lambda: conn.cursor().execute(long_sql))
    t.start()
    try:
        time.sleep(1.2)
        body = get_ok(mon, root, f"{H}/query")
    finally:
        t.join(10)
        conn.close()
    assert body["health"] == "healthy", body
    assert body["probe"]["ok"] is True and 0 < body["probe"]["latency_ms"] < 5000
    mine = [s for s in body["longest_running"] if s["pid"] == pid]
    assert mine, body["longest_running"]
    s = mine[0]
    assert s["query"].startswith("SELECT pg_sleep(3) /* xxx") and len(s["query"]) == 200
    assert s["duration_ms"] >= 1000 and s["state"] == "active" and s["wait_event"] == "PgSleep"
    assert s["user"] == "postgres"
    durations = [x["duration_ms"] for x in body["longest_running"]]
    assert durations == sorted(durations, reverse=True) and len(durations) <= 10


def test_health_resource_numbers_match_the_system(mon, root):
    body = get_ok(mon, root, f"{H}/resource")
    assert_resource_verdict(body, mon.var)
    proc = body["process"]
    assert proc["pid"] == mon.proc.pid
    with open(f"/proc/{mon.proc.pid}/status") as f:
        status = dict(line.split(":", 1) for line in f)
    rss = int(status["VmRSS"].split()[0]) * 1024
    assert proc["rss_bytes"] > 0 and proc["rss_bytes"] == pytest.approx(rss, rel=0.5)
    assert proc["rss_peak_bytes"] >= proc["rss_bytes"] and proc["threads"] > 2
    fds = len(os.listdir(f"/proc/{mon.proc.pid}/fd"))
    assert proc["fds_open"] > 5 and abs(proc["fds_open"] - fds) <= 10
    assert proc["fds_limit"] > proc["fds_open"] and 0 < proc["fds_ratio"] < 0.8
    disks = {d["name"]: d for d in body["disks"]}
    assert disks["var_dir"]["path"] == mon.var and disks["backup_dir"]["path"] == os.path.join(mon.var, "backups")
    for d in disks.values():
        st = os.statvfs(d["path"])
        assert d["exists"] is True and d["total_bytes"] == st.f_blocks * st.f_frsize
        assert d["free_bytes"] > 0 and d["free_bytes"] == pytest.approx(st.f_bavail * st.f_frsize, rel=0.05)
        assert 0 < d["free_ratio"] <= 1
    size = direct(mon, "SELECT pg_database_size(current_database())")[0]
    assert body["database"]["size_bytes"] == pytest.approx(size, rel=0.05)


def test_health_all_parts(mon, root):
    body = get_ok(mon, root, H)
    expect = assert_resource_verdict(body["resource"], mon.var)
    assert body["health"] == expect
    assert body["reasons"] == ["resource: " + r for r in body["resource"]["reasons"]]
    for part in ("connection", "query", "resource"):
        assert HEALTH_KEYS <= set(body[part])
    assert body["connection"]["health"] == body["query"]["health"] == "healthy"


def test_missing_backup_dir_is_reported_not_fatal(pg):
    inst = start_instance(pg, BACKUP_DIR=os.path.join(scratch_dir(), "no-such-" + uuid.uuid4().hex))
    try:
        body = get_ok(inst, admin_of(inst), f"{H}/resource")
        disk = [d for d in body["disks"] if d["name"] == "backup_dir"][0]
        assert disk["exists"] is False and disk["free_bytes"] is None and disk["free_ratio"] is None
    finally:
        inst.stop_clean()


def test_a_full_backup_disk_is_degraded_then_unhealthy(pg):
    """BACKUP_DIR on a 4 MiB tmpfs filled to 95 % and then 99 %: degraded,
    then unhealthy (HTTP 200 with the verdict; the CLI exits 1)."""
    import json
    import subprocess
    mnt = os.path.join(scratch_dir(), "smalldisk-" + uuid.uuid4().hex[:8])
    os.makedirs(mnt)
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", mnt],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    inst = None
    try:
        inst = start_instance(pg, BACKUP_DIR=mnt)
        admin = admin_of(inst)
        body = get_ok(inst, admin, f"{H}/resource")
        disk = [d for d in body["disks"] if d["name"] == "backup_dir"][0]
        assert disk["total_bytes"] == 4 * 1024 * 1024 and disk["free_ratio"] > 0.99, disk
        assert not any(r.startswith("disk: backup_dir") for r in body["reasons"])

        def fill(name, kib):
            with open(os.path.join(mnt, name), "wb") as f:
                f.write(b"\0" * (kib * 1024))
        fill("a", 4096 * 95 // 100)
        body = get_ok(inst, admin, f"{H}/resource")
        # the instance's ./var does not exist, so the small disk is the only finding
        assert [d["exists"] for d in body["disks"] if d["name"] == "var_dir"] == [False]
        assert body["health"] == "degraded", body
        assert len(body["reasons"]) == 1 and body["reasons"][0].startswith("disk: backup_dir has ")
        assert body["reasons"][0].endswith("% free") and body["reason"] == body["reasons"][0]
        fill("b", 4096 * 4 // 100)
        body = get_ok(inst, admin, f"{H}/resource")
        assert body["health"] == "unhealthy", body
        assert any(r.startswith("disk: backup_dir has ") for r in body["reasons"]), body
        disk = [d for d in body["disks"] if d["name"] == "backup_dir"][0]
        assert disk["free_ratio"] < 0.02
        assert get_ok(inst, admin, H)["health"] == "unhealthy"
        r = run_cli(["health", "resource", "--json"], cli_env(inst, BACKUP_DIR=mnt))
        assert r.returncode == 1 and json.loads(r.stdout)["health"] == "unhealthy", r.stdout
    finally:
        if inst:
            inst.stop_clean()
        subprocess.run(["umount", mnt])


def test_descriptors_near_the_limit_are_degraded(pg):
    """Held client connections take coredb's descriptors: past 80 % of its
    open-file limit, /resource says degraded and names them. (The limit is
    set far above what an idle instance holds; the test then fills it, so it
    does not depend on how many descriptors an instance happens to hold.)"""
    probe = start_instance(pg)
    try:
        idle_fds = get_ok(probe, admin_of(probe), f"{H}/resource")["process"]["fds_open"]
    finally:
        probe.stop_clean()
    limit = 2 * idle_fds + 40
    db = pg.create_database()
    from datahelp import admin_env
    from conftest import base_env
    env = admin_env()
    inst = Coredb(base_env(pg, db, None, **env), max_files=limit)
    inst.db, inst.pg, inst.admin_email = db, pg, env["COREDB_ADMIN_EMAIL"]
    held = []
    try:
        admin = admin_of(inst)
        body = get_ok(inst, admin, f"{H}/resource")
        assert body["process"]["fds_limit"] == limit
        assert body["process"]["fds_ratio"] < 0.8 and body["health"] == "healthy", body
        for _ in range(int(0.87 * limit) - body["process"]["fds_open"]):
            held.append(socket.create_connection(("127.0.0.1", inst.port), timeout=5))
        deadline = time.monotonic() + 10
        while body["process"]["fds_ratio"] < 0.85 and time.monotonic() < deadline:
            time.sleep(0.1)  # until the loops have accepted them all
            body = get_ok(inst, admin, f"{H}/resource")
        proc = body["process"]
        assert 0.8 <= proc["fds_ratio"] < 0.95, body
        assert body["health"] == "degraded", body
        assert body["reason"].startswith("fds: ") and f"of {limit} open" in body["reason"], body
    finally:
        for sock in held:
            sock.close()
        inst.stop(timeout=30)


def test_postgresql_stopped_is_unhealthy_in_bounded_time(redis_server):
    server = PgServer("pg-monitor-stop")
    inst = None
    try:
        # with Redis: an admin's session is then known alive without PostgreSQL
        # (liveness copy), so the request reaches the report at all
        inst = start_instance(server, redis_server, REDIS_DB, DB_STATEMENT_TIMEOUT="3000")
        admin = admin_of(inst)
        assert get_ok(inst, admin, f"{H}/connection")["health"] == "healthy"
        server.stop("immediate")
        t0 = time.monotonic()
        body = get_ok(inst, admin, f"{H}/connection", timeout=20)
        assert time.monotonic() - t0 < 8
        assert body["health"] == "unhealthy", body
        assert body["reason"].startswith("postgresql: unreachable (DATABASE_"), body
        assert body["postgresql"]["reachable"] is False and body["postgresql"]["error"].startswith("DATABASE_")
        t0 = time.monotonic()
        q = get_ok(inst, admin, f"{H}/query", timeout=20)
        assert time.monotonic() - t0 < 8
        assert q["health"] == "unhealthy" and q["probe"]["ok"] is False and q["longest_running"] is None
        res = get_ok(inst, admin, f"{H}/resource", timeout=20)
        assert res["health"] == "degraded" and res["database"]["size_bytes"] is None, res
        assert get_ok(inst, admin, H, timeout=30)["health"] == "unhealthy"
        for path in (f"{M}/tables", f"{M}/performance", f"{M}/errors", f"{M}/all"):
            t0 = time.monotonic()
            r = inst.get(path, headers=admin.headers, timeout=20)
            assert time.monotonic() - t0 < 8
            err = assert_error(r, r.status_code)
            assert r.status_code in (503, 504) and err["code"].startswith("DATABASE_"), r.text
        server.start()
        assert wait_for(lambda: get_ok(inst, admin, f"{H}/connection")["health"] == "healthy", timeout=20)
    finally:
        if inst:
            inst.stop_clean()
        server.destroy()


def test_postgresql_hung_is_unhealthy_in_bounded_time(redis_server):
    """Every PostgreSQL process SIGSTOPped (the kernel still accepts
    connections, nothing answers): the detailed health answers unhealthy
    within its budgets, the metrics with an error, never a hang; after
    SIGCONT all is healthy again without a restart."""
    from test_deadlines import stopped
    server = PgServer("pg-monitor-hang")
    inst = None
    try:
        inst = start_instance(server, redis_server, REDIS_DB, DB_STATEMENT_TIMEOUT="3000")
        admin = admin_of(inst)
        assert get_ok(inst, admin, f"{H}/connection")["health"] == "healthy"
        with stopped(server):
            t0 = time.monotonic()
            body = get_ok(inst, admin, f"{H}/connection", timeout=30)
            took = time.monotonic() - t0
            print(f"health/connection with PostgreSQL hung: {took:.2f} s")
            assert took < 6, took   # 2 s pool + 1 s query, and the facts query skipped
            assert body["health"] == "unhealthy" and body["reason"].startswith("postgresql: unreachable"), body
            t0 = time.monotonic()
            q = get_ok(inst, admin, f"{H}/query", timeout=30)
            assert time.monotonic() - t0 < 6 and q["health"] == "unhealthy", q
            t0 = time.monotonic()
            r = inst.get(f"{M}/tables", headers=admin.headers, timeout=30)
            assert time.monotonic() - t0 < 10
            assert r.status_code in (503, 504) and r.json()["error"]["code"] in (
                "DATABASE_UNAVAILABLE", "DATABASE_TIMEOUT", "POOL_EXHAUSTED"), r.text
            assert inst.get("/health/live", timeout=2).status_code == 200
        assert wait_for(lambda: get_ok(inst, admin, f"{H}/connection")["health"] == "healthy", timeout=20)
        assert get_ok(inst, admin, f"{M}/tables")["count"] > 0
    finally:
        if inst:
            inst.stop_clean()
        server.destroy()


def test_redis_down_is_degraded(pg):
    rs = RedisServer()
    inst = None
    try:
        inst = start_instance(pg, rs, 0)
        admin = admin_of(inst)
        assert get_ok(inst, admin, f"{H}/connection")["health"] == "healthy"
        rs.stop()
        body = get_ok(inst, admin, f"{H}/connection", timeout=20)
        assert body["health"] == "degraded", body
        assert body["reason"].startswith("redis: unreachable"), body
        assert body["redis"]["reachable"] is False and body["postgresql"]["reachable"] is True
        assert get_ok(inst, admin, H, timeout=20)["reason"].startswith("connection: redis: unreachable")
    finally:
        if inst:
            inst.stop_clean()
        rs.stop()


# ---- the CLI ----

def cli(inst, *args, **env):
    return run_cli(list(args), cli_env(inst, **env))


def test_cli_monitor_json_and_human(mon, root):
    r = cli(mon, "monitor", "tables", "--json")
    assert r.returncode == 0, r.stderr
    import json
    body = json.loads(r.stdout)
    assert body["status"] == "success" and body["error"] is None
    assert table_of(body, "users")["coredb_own"] is False
    for verb in ("performance", "errors", "all"):
        r = cli(mon, "monitor", verb, "--json")
        assert r.returncode == 0, r.stderr
        body = json.loads(r.stdout)
        assert body["status"] == "success", body
    assert body["performance"]["statements"]["status"] == "available"

    r = cli(mon, "monitor", "tables")
    assert r.returncode == 0, r.stderr
    assert "n_tup_ins" in r.stdout and "users" in r.stdout and "sessions" in r.stdout
    r = cli(mon, "monitor", "performance")
    assert r.returncode == 0 and "cache_hit_ratio" in r.stdout and "pg_stat_statements" in r.stdout, r.stdout
    r = cli(mon, "monitor", "errors")
    assert r.returncode == 0 and "deadlocks" in r.stdout, r.stdout
    r = cli(mon, "monitor", "all")
    assert r.returncode == 0 and "== tables ==" in r.stdout and "== errors ==" in r.stdout


def test_cli_health_json_and_human(mon, root):
    import json
    # directories that do not exist are no finding: the verdict does not depend on this disk
    nowhere = os.path.join(scratch_dir(), "nowhere-" + uuid.uuid4().hex)
    here = {"COREDB_VAR_DIR": nowhere, "BACKUP_DIR": nowhere}
    r = cli(mon, "health", "--json", **here)
    assert r.returncode == 0, r.stderr
    body = json.loads(r.stdout)
    expect = "healthy"
    assert body["status"] == "success" and body["health"] == expect, body
    assert {"connection", "query", "resource"} <= set(body)
    for part in ("connection", "query", "resource"):
        r = cli(mon, "health", part, "--json", **here)
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout)["health"] == expect
    # pointed at the instance's directories, it judges their disk
    r = cli(mon, "health", "resource", COREDB_VAR_DIR=mon.var, BACKUP_DIR=os.path.join(mon.var, "backups"))
    expect = disk_verdict(mon.var)
    assert r.returncode == (1 if expect == "unhealthy" else 0)
    assert r.stdout.startswith(f"resource health: {expect}"), r.stdout
    assert "rss_bytes" in r.stdout and mon.var in r.stdout
    r = cli(mon, "health", **here)
    assert r.returncode == 0 and r.stdout.startswith("health: healthy"), r.stdout
    assert "connection health: healthy" in r.stdout and "query health: healthy" in r.stdout


def test_cli_usage_errors(mon):
    import json
    for args in (["monitor"], ["monitor", "bogus"], ["monitor", "tables", "extra"], ["health", "bogus"],
                 ["health", "query", "resource"], ["monitor", "--nope"]):
        r = cli(mon, *args)
        assert r.returncode == 2, (args, r.stdout, r.stderr)
        assert "usage: coredb" in r.stderr
        r = cli(mon, *args, "--json")
        assert r.returncode == 2
        assert json.loads(r.stdout)["error"]["code"] == "VALIDATION_FAILED"
    for cmd in ("monitor", "health"):
        r = cli(mon, cmd, "--help")
        assert r.returncode == 0 and r.stdout.startswith(f"usage: coredb {cmd}")


def test_cli_health_unhealthy_exits_1(redis_server):
    import json
    server = PgServer("pg-monitor-cli")
    try:
        db = server.create_database()
        inst = type("I", (), {"pg": server, "db": db})()
        assert cli(inst, "migrate", "up").returncode == 0
        server.stop("immediate")
        t0 = time.monotonic()
        r = cli(inst, "health", "connection", "--json")
        assert time.monotonic() - t0 < 20
        assert r.returncode == 1, (r.stdout, r.stderr)
        body = json.loads(r.stdout)
        assert body["status"] == "success" and body["health"] == "unhealthy", body
        r = cli(inst, "monitor", "tables", "--json")
        assert r.returncode == 1 and json.loads(r.stdout)["error"]["code"].startswith("DATABASE_")
    finally:
        server.destroy()


# ---- embedded mode: pg_stat_statements on by default ----

def test_embedded_cluster_has_pg_stat_statements():
    cwd = os.path.join(scratch_dir(), f"monemb-{uuid.uuid4().hex[:8]}")
    os.makedirs(cwd)
    inst = Coredb({}, cwd=cwd, wait=False)
    try:
        inst.wait_live(timeout=120)
        r = run_cli(["monitor", "performance", "--json"], {}, cwd=cwd)
        import json
        assert r.returncode == 0, r.stderr
        st = json.loads(r.stdout)["statements"]
        assert st["status"] == "available", st
        assert st["by_total_time"], st
        # created in a schema of its own, where the data API does not look
        conn = psycopg2.connect(host=os.path.join(cwd, "var", "run"), port=5432, user="postgres",
                                dbname="coredb")
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT n.nspname FROM pg_extension e JOIN pg_namespace n"
                            " ON n.oid = e.extnamespace WHERE e.extname = 'pg_stat_statements'")
                assert cur.fetchall() == [("coredb_stats",)]
        finally:
            conn.close()
    finally:
        inst.stop_clean()
