"""The SQL shape of a data-API read (issue 8, item 4): a cache miss of POST
/api/v1/data/query (tables and documents) is ONE pipeline on a pooled
connection: the caller's role + settings (set_config(..., true)), the page,
the count, then a Sync: no BEGIN, no COMMIT.

What must hold, checked here against the real binary and PostgreSQL:
- the claim it rests on, in libpq itself (ctypes, pipeline mode): up to
  the Sync the pipeline is one implicit transaction, so transaction-local
  settings and role hold for the next statement and are gone after the
  Sync, whether it succeeded or failed;
- through coredb with one pooled connection (DB_POOL_MAX=1) and two users:
  each sees exactly its own rows (the role and id held for the page: coredb
  logs in as a superuser, who would see every row), and after each answer
  coredb's backend is idle with no transaction open, so nothing the request
  set survives into the next one;
- a page past the end still carries the right total (tables, filters,
  documents);
- a bad filter value fails mid-pipeline with 400 INVALID_FILTER and leaves
  the one connection idle and usable for the next caller;
- what the next request on that connection sees before it sets anything
  (an Idempotency-Key claim, probed by a trigger): the login role, no user
  id, no app role;
- the rows come back in the page's order."""
import ctypes
import ctypes.util

import pytest

from datahelp import (add_project, add_projects, admin_of, assert_error, query, query_ok, scalar, start_instance,
                      tx_ok, user, wait_for)
from identity import unique

# the module fixture rds (conftest.py) uses this Redis database; the instance
# here is the module's own (DB_POOL_MAX=1, no query cache)
REDIS_DB = 13


@pytest.fixture(scope="module")
def one(pg, redis_server):
    """An instance whose pool has exactly one connection and no query cache, so
    every query is a miss and every request runs on the same backend."""
    inst = start_instance(pg, redis_server, REDIS_DB, DB_POOL_MIN="1", DB_POOL_MAX="1", CACHE_TTL="0")
    yield inst
    inst.stop_clean()


def backends(inst):
    """(state, xact_start is null, query) of coredb's client backends on its database, but the
    encrypted columns' snapshot refresh (its own connection, reading every 500 ms in autocommit)."""
    return inst.pg.query(inst.db, "SELECT state, xact_start IS NULL, query FROM pg_stat_activity"
                                  " WHERE datname = current_database() AND pid <> pg_backend_pid()"
                                  " AND backend_type = 'client backend'"
                                  " AND application_name <> 'coredb-snapshot'")


def assert_all_idle(inst):
    """Every coredb backend idle, outside any transaction: transaction-local
    role and settings cannot have outlived the request."""
    assert wait_for(lambda: all(r[0] == "idle" and r[1] for r in backends(inst)), timeout=3), backends(inst)
    rows = backends(inst)
    assert rows, "coredb has no connection to its database"
    assert all(r[0] == "idle" and r[1] for r in rows), rows


# ---- the PostgreSQL claim, in libpq's pipeline mode ----

class _Libpq:
    """The few libpq calls the claim needs, through ctypes."""

    def __init__(self):
        lib = ctypes.CDLL(ctypes.util.find_library("pq") or "libpq.so.5")
        lib.PQconnectdb.restype = ctypes.c_void_p
        lib.PQconnectdb.argtypes = [ctypes.c_char_p]
        for name in ("PQstatus", "PQenterPipelineMode", "PQexitPipelineMode", "PQpipelineSync",
                     "PQtransactionStatus"):
            getattr(lib, name).argtypes = [ctypes.c_void_p]
            getattr(lib, name).restype = ctypes.c_int
        lib.PQsendQueryParams.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_void_p,
                                          ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int]
        lib.PQsendQueryParams.restype = ctypes.c_int
        lib.PQgetResult.argtypes = [ctypes.c_void_p]
        lib.PQgetResult.restype = ctypes.c_void_p
        lib.PQresultStatus.argtypes = [ctypes.c_void_p]
        lib.PQresultStatus.restype = ctypes.c_int
        lib.PQntuples.argtypes = [ctypes.c_void_p]
        lib.PQntuples.restype = ctypes.c_int
        lib.PQgetvalue.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_int]
        lib.PQgetvalue.restype = ctypes.c_char_p
        lib.PQresultErrorField.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.PQresultErrorField.restype = ctypes.c_char_p
        lib.PQclear.argtypes = [ctypes.c_void_p]
        lib.PQfinish.argtypes = [ctypes.c_void_p]
        self.lib = lib

    # ExecStatusType values of libpq-fe.h
    TUPLES_OK, FATAL_ERROR, PIPELINE_SYNC, PIPELINE_ABORTED = 2, 7, 10, 11
    TRANS_IDLE = 0

    def pipeline(self, conn, statements):
        """Sends statements then one Sync; [(status, first row or SQLSTATE)] per
        statement, and the sync's status last."""
        lib = self.lib
        assert lib.PQenterPipelineMode(conn) == 1
        for sql in statements:
            assert lib.PQsendQueryParams(conn, sql.encode(), 0, None, None, None, None, 0) == 1
        assert lib.PQpipelineSync(conn) == 1
        out = []
        for _ in statements:
            res = lib.PQgetResult(conn)
            st = lib.PQresultStatus(res)
            if st == self.TUPLES_OK and lib.PQntuples(res) == 1:
                out.append((st, [lib.PQgetvalue(res, 0, i).decode() for i in range(2)]))
            elif st == self.FATAL_ERROR:
                out.append((st, lib.PQresultErrorField(res, ord("C")).decode()))
            else:
                out.append((st, None))
            lib.PQclear(res)
            assert lib.PQgetResult(conn) is None  # each statement's results end with a NULL
        res = lib.PQgetResult(conn)
        out.append(lib.PQresultStatus(res))
        lib.PQclear(res)
        assert lib.PQexitPipelineMode(conn) == 1
        return out


PROBE = "SELECT current_setting('app.current_user_id', true), current_user::text"


def test_pipeline_up_to_sync_is_one_transaction(pg):
    """PostgreSQL 15 docs 55.2.4 (Pipelining): without BEGIN the statements up
    to a Sync run in one implicit transaction, committed (or rolled back) at
    the Sync. So set_config(..., true) lasts for the rest of the pipeline and
    not one statement longer."""
    pq = _Libpq()
    db = pg.create_database()
    conn = pq.lib.PQconnectdb(pg.url(db).encode())
    assert pq.lib.PQstatus(conn) == 0
    try:
        pg.query(db, "DO $$ BEGIN CREATE ROLE coredb_probe NOLOGIN; EXCEPTION WHEN duplicate_object THEN END $$")
        setting = ("SELECT set_config('role', 'coredb_probe', true),"
                   " set_config('app.current_user_id', 'caller-a', true)")
        out = pq.pipeline(conn, [setting, PROBE, PROBE])
        assert out[1] == (pq.TUPLES_OK, ["caller-a", "coredb_probe"]), out
        assert out[2] == (pq.TUPLES_OK, ["caller-a", "coredb_probe"]), out
        assert out[3] == pq.PIPELINE_SYNC
        assert pq.lib.PQtransactionStatus(conn) == pq.TRANS_IDLE
        # after the Sync: the login's own role, the setting gone
        out = pq.pipeline(conn, [PROBE])
        assert out[0] == (pq.TUPLES_OK, ["", "postgres"]), out
        # a statement failing mid-pipeline: the rest is skipped, the Sync
        # rolls the implicit transaction back, the settings go with it
        out = pq.pipeline(conn, [setting, "SELECT 'not-a-uuid'::uuid::text, ''", PROBE])
        assert out[1] == (pq.FATAL_ERROR, "22P02"), out
        assert out[2][0] == pq.PIPELINE_ABORTED, out
        assert out[3] == pq.PIPELINE_SYNC
        assert pq.lib.PQtransactionStatus(conn) == pq.TRANS_IDLE
        out = pq.pipeline(conn, [PROBE])
        assert out[0] == (pq.TUPLES_OK, ["", "postgres"]), out
    finally:
        pq.lib.PQfinish(conn)


# ---- through coredb, one pooled connection ----

def test_callers_on_one_connection_see_only_their_rows(one):
    a, b = user(one), user(one)
    add_projects(one, a.id, 3, prefix="a")
    add_projects(one, b.id, 2, prefix="b")
    for _ in range(3):      # alternate on the one connection
        for acct, mine, n in ((a, "a", 3), (b, "b", 2)):
            out = query_ok(one, acct, {"table": "projects", "select": ["title", "user_id"],
                                       "order_by": [{"column": "title", "direction": "asc"}]})
            assert [r["user_id"] for r in out["data"]] == [acct.id] * n, out
            assert all(r["title"].startswith(mine) for r in out["data"]), out
            assert out["pagination"]["total"] == n and out["cached"] is False, out
            assert_all_idle(one)
    # the count was the last statement on the pool's backend: no COMMIT followed it
    last = [r[2] for r in backends(one)]
    assert 'SELECT count(*) FROM "public"."projects"' in last and "COMMIT" not in last, last


PROBE_SQL = """
CREATE TABLE IF NOT EXISTS public.shape_probe (seen_at timestamptz DEFAULT clock_timestamp(), who text,
                                               uid text, app_role text);
CREATE OR REPLACE FUNCTION public.shape_probe_fn() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO public.shape_probe (who, uid, app_role)
    VALUES (current_user, current_setting('app.current_user_id', true), current_setting('app.current_role', true));
    RETURN NULL;
END $$;
DROP TRIGGER IF EXISTS shape_probe ON coredb.tx_ledger;
CREATE TRIGGER shape_probe AFTER DELETE ON coredb.tx_ledger FOR EACH STATEMENT EXECUTE FUNCTION public.shape_probe_fn();
"""


def test_nothing_a_read_sets_is_left_on_the_connection(one):
    """What the next request on the connection sees BEFORE it sets anything.
    An Idempotency-Key transaction runs its key's claim right after BEGIN as
    coredb's login role, before the caller's role is set; the claim DELETEs
    from coredb.tx_ledger, and a statement trigger put there by this test
    records the role and settings it ran with. On the one pooled connection,
    after user A's reads, user B's claim must run as the login (postgres)
    with no user id and no app role: a setting or role a read had left at
    session level would show here (the first block shows the probe sees a
    session setting)."""
    conn = one.pg.connect(one.db)
    try:
        with conn.cursor() as cur:
            cur.execute(PROBE_SQL)
            # the probe itself: a session-level setting is what it records
            cur.execute("SELECT set_config('app.current_user_id', 'leaked', false)")
            cur.execute("DELETE FROM coredb.tx_ledger WHERE false")
            cur.execute("SELECT uid FROM public.shape_probe")
            assert cur.fetchall() == [("leaked",)]
            cur.execute("TRUNCATE public.shape_probe")
        a, b = user(one), user(one)
        add_projects(one, a.id, 2, prefix="k")
        for i in range(3):
            out = query_ok(one, a, {"table": "projects", "select": ["user_id"]})
            assert out["pagination"]["total"] == 2, out
            # a failed read too: its implicit transaction is rolled back at the Sync
            assert_error(query(one, a, {"table": "projects", "filters": {"id": "nope"}}), 400, "INVALID_FILTER")
            resp = one.post("/api/v1/data/transaction", headers={**b.headers, "Idempotency-Key": unique("k")},
                            json={"operations": [{"database": "postgresql", "operation": "insert", "table": "projects",
                                                  "data": {"user_id": b.id, "title": f"b{i}"}}]})
            assert resp.status_code == 200, resp.text
        with conn.cursor() as cur:
            cur.execute("SELECT who, coalesce(uid, ''), coalesce(app_role, '') FROM public.shape_probe")
            seen = cur.fetchall()
        assert len(seen) == 3 and set(seen) == {("postgres", "", "")}, seen
        # B's rows were written as B (its own role came after the claim)
        assert scalar(one, "SELECT count(*) FROM projects WHERE user_id = %s", (b.id,)) == 3
    finally:
        with conn.cursor() as cur:
            cur.execute("DROP TRIGGER IF EXISTS shape_probe ON coredb.tx_ledger")
        conn.close()


def test_page_past_the_end_keeps_the_total(one):
    a = user(one)
    add_projects(one, a.id, 7, prefix="p")
    add_project(one, a.id, title="other", status="active")
    body = {"table": "projects", "select": ["title"], "order_by": [{"column": "title", "direction": "asc"}]}
    out = query_ok(one, a, dict(body, pagination={"page": 50, "limit": 3}))
    assert out["data"] == [] and out["pagination"] == {"page": 50, "limit": 3, "total": 8, "pages": 3}, out
    out = query_ok(one, a, dict(body, filters={"status": "active"}, pagination={"page": 2, "limit": 1}))
    assert out["data"] == [] and out["pagination"]["total"] == 1 and out["pagination"]["pages"] == 1, out
    # the last partial page: its rows in order, with the same total
    every = [r["title"] for r in query_ok(one, a, dict(body, pagination={"limit": 100}))["data"]]
    assert every == sorted(every) and len(every) == 8
    out = query_ok(one, a, dict(body, pagination={"page": 3, "limit": 3}))
    assert [r["title"] for r in out["data"]] == every[6:], out
    assert out["pagination"]["total"] == 8, out
    # nothing matches: no rows, total 0
    out = query_ok(one, a, dict(body, filters={"title": "none such"}))
    assert out["data"] == [] and out["pagination"]["total"] == 0, out
    assert_all_idle(one)


def test_rows_keep_the_page_order(one):
    a = user(one)
    add_projects(one, a.id, 12, prefix="r")
    asc = query_ok(one, a, {"table": "projects", "select": ["title"], "pagination": {"limit": 100},
                            "order_by": [{"column": "title", "direction": "asc"}]})
    desc = query_ok(one, a, {"table": "projects", "select": ["title"], "pagination": {"limit": 100},
                             "order_by": [{"column": "title", "direction": "desc"}]})
    titles = [r["title"] for r in asc["data"]]
    assert titles == sorted(titles) and len(titles) == 12
    assert [r["title"] for r in desc["data"]] == titles[::-1]
    pages = [query_ok(one, a, {"table": "projects", "select": ["title"],
                               "order_by": [{"column": "title", "direction": "asc"}],
                               "pagination": {"page": p, "limit": 5}})["data"] for p in (1, 2, 3)]
    assert [r["title"] for page in pages for r in page] == titles


def test_bad_filter_value_mid_pipeline_leaves_the_connection_usable(one):
    a, b = user(one), user(one)
    add_projects(one, a.id, 2, prefix="x")
    add_projects(one, b.id, 1, prefix="y")
    for bad in ({"id": "not-a-uuid"}, {"created_at": {"gt": "yesterday-ish"}}, {"id": {"in": ["1", "2"]}}):
        err = assert_error(query(one, a, {"table": "projects", "filters": bad}), 400, "INVALID_FILTER")
        assert "SELECT" not in str(err) and "string_agg" not in str(err), err   # no SQL leaks
        assert_all_idle(one)
        # the same (only) connection answers the next caller, under its own role
        out = query_ok(one, b, {"table": "projects", "select": ["user_id"]})
        assert [r["user_id"] for r in out["data"]] == [b.id] and out["pagination"]["total"] == 1, out
    out = query_ok(one, a, {"table": "projects", "select": ["user_id"]})
    assert out["pagination"]["total"] == 2 and {r["user_id"] for r in out["data"]} == {a.id}, out
    assert_all_idle(one)


def test_hostile_values_are_data(one):
    a = user(one)
    add_project(one, a.id, title="t'); SELECT set_config('role', 'postgres', false); --")
    for v in ("') OR true --", "x'); RESET ROLE; --", "\u0000", "$1", "%s"):
        resp = query(one, a, {"table": "projects", "filters": {"title": v}})
        assert resp.status_code in (200, 400), resp.text
        if resp.status_code == 200:
            assert resp.json()["data"] == [] and resp.json()["pagination"]["total"] == 0, resp.text
    out = query_ok(one, a, {"table": "projects", "select": ["title"],
                            "filters": {"title": "t'); SELECT set_config('role', 'postgres', false); --"}})
    assert out["pagination"]["total"] == 1 and len(out["data"]) == 1, out
    assert_all_idle(one)


# ---- documents use the same read ----

def test_documents_page_past_the_end_and_callers(one):
    admin = admin_of(one)
    name = unique("shape")
    resp = one.post("/api/v1/admin/collections", json={"name": name, "kind": "documents"}, headers=admin.headers)
    assert resp.status_code == 201, resp.text
    a, b = user(one), user(one)
    tx_ok(one, a, [{"database": "documents", "operation": "insert", "collection": name,
                    "document": {"id": f"a{i}", "n": i}} for i in range(5)])
    tx_ok(one, b, [{"database": "documents", "operation": "insert", "collection": name,
                    "document": {"id": "b0", "n": 0}}])
    body = {"database": "documents", "collection": name, "order_by": {"path": "n", "direction": "asc"}}
    out = query_ok(one, a, dict(body, pagination={"page": 9, "limit": 2}))
    assert out["data"] == [] and out["pagination"] == {"page": 9, "limit": 2, "total": 5, "pages": 3}, out
    out = query_ok(one, a, dict(body, pagination={"page": 2, "limit": 2}))
    assert [d["id"] for d in out["data"]] == ["a2", "a3"] and out["pagination"]["total"] == 5, out
    out = query_ok(one, b, body)
    assert [d["id"] for d in out["data"]] == ["b0"] and out["pagination"]["total"] == 1, out
    assert_all_idle(one)
