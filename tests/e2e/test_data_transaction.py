"""POST /api/v1/data/transaction end to end: insert/update/delete/upsert
returning their rows, Redis set/del/expire/incr in the caller's namespace,
atomic rollback naming the failing operation with nothing written,
PostgreSQL errors mapped to contract errors, isolation between users (their
policies refuse foreign inserts, foreign updates/deletes touch nothing), the
Redis outbox surviving a Redis outage, concurrency, and an injection corpus
in every identifier position."""
import json
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from datahelp import (UUID_RE, add_analysis, add_project, admin_of, assert_error, counts,
                      pg_delete, pg_insert, pg_update, pg_upsert, premium, query, query_ok,
                      redis_client, rop, rset, scalar, start_instance, tx, tx_fail, tx_ok, user,
                      wait_for)
from identity import unique

# the module fixtures inst, admin, rds (conftest.py) use this Redis database
REDIS_DB = 12


def project_row(inst, pid):
    rows = inst.pg.query(inst.db, "SELECT user_id::text, title, status FROM projects "
                                  "WHERE id = %s", (pid,))
    return rows[0] if rows else None


def n_projects(inst, user_id):
    return scalar(inst, "SELECT count(*) FROM projects WHERE user_id = %s", (user_id,))


@pytest.fixture(scope="module")
def labels(inst, admin):
    """A table of the module's own with a unique and a check constraint,
    writable by admin, for the constraint-violation tests."""
    name = "labels_" + uuid.uuid4().hex[:8]
    inst.pg.query(inst.db, f"CREATE TABLE public.{name} (id uuid PRIMARY KEY DEFAULT "
                           f"gen_random_uuid(), name varchar(50) NOT NULL UNIQUE, "
                           f"kind text NOT NULL CHECK (kind IN ('a', 'b')))")
    inst.pg.query(inst.db, f"GRANT SELECT, INSERT, UPDATE, DELETE ON public.{name} TO coredb_admin")
    assert wait_for(lambda: query(inst, admin, {"table": name}).status_code == 200, timeout=8), \
        "the granted table did not appear in the catalog"
    return name


# ---- the four PostgreSQL operations ----

def test_insert_returns_rows(inst):
    a = user(inst)
    title = unique("ins")
    out = tx_ok(inst, a, [pg_insert("projects", {"title": title, "user_id": a.id,
                                                 "settings": {"k": [1, 2]}})])
    assert UUID_RE.match(out["transaction_id"]), out
    assert isinstance(out["execution_time_ms"], (int, float))
    res, = out["results"]
    assert res == {"operation": 1, "status": "success", "data": res["data"]}, res
    assert res["data"]["count"] == 1
    row, = res["data"]["rows"]
    assert UUID_RE.match(row["id"]) and row["title"] == title and row["user_id"] == a.id
    assert row["settings"] == {"k": [1, 2]} and row["status"] == "draft"
    assert project_row(inst, row["id"]) == (a.id, title, "draft")


def test_insert_several_rows_in_one_transaction(inst):
    a = user(inst)
    ops = [pg_insert("projects", {"title": f"many{i}", "user_id": a.id}) for i in range(5)]
    out = tx_ok(inst, a, ops)
    assert [r["data"]["count"] for r in out["results"]] == [1] * 5
    assert n_projects(inst, a.id) == 5


def test_update_returns_rows(inst):
    a = user(inst)
    pid = add_project(inst, a.id, title="before")
    before = scalar(inst, "SELECT updated_at FROM projects WHERE id = %s", (pid,))
    out = tx_ok(inst, a, [pg_update("projects", {"id": pid},
                                    {"status": "generating", "title": "after"})])
    data = out["results"][0]["data"]
    assert data["count"] == 1
    assert data["rows"][0]["id"] == pid and data["rows"][0]["status"] == "generating"
    assert project_row(inst, pid) == (a.id, "after", "generating")
    assert scalar(inst, "SELECT updated_at FROM projects WHERE id = %s", (pid,)) > before


def test_update_with_operator_filters(inst):
    a = user(inst)
    for i in range(4):
        add_project(inst, a.id, title=f"op{i}", status="draft" if i % 2 else "active")
    out = tx_ok(inst, a, [pg_update("projects", {"status": {"in": ["active"]},
                                                 "title": {"like": "op%"}},
                                    {"status": "archived"})])
    assert out["results"][0]["data"]["count"] == 2
    assert scalar(inst, "SELECT count(*) FROM projects WHERE user_id = %s AND status = "
                        "'archived'", (a.id,)) == 2


def test_delete_returns_rows(inst):
    a = user(inst)
    keep = add_project(inst, a.id)
    gone = add_project(inst, a.id)
    out = tx_ok(inst, a, [pg_delete("projects", {"id": gone})])
    data = out["results"][0]["data"]
    assert data["count"] == 1 and data["rows"][0]["id"] == gone
    assert project_row(inst, gone) is None and project_row(inst, keep) is not None


def test_update_delete_matching_nothing(inst):
    a = user(inst)
    out = tx_ok(inst, a, [pg_update("projects", {"id": str(uuid.uuid4())}, {"title": "x"}),
                          pg_delete("projects", {"id": str(uuid.uuid4())})])
    assert [r["data"]["count"] for r in out["results"]] == [0, 0]
    assert [r["data"]["rows"] for r in out["results"]] == [[], []]


def test_upsert_inserts_then_updates(inst):
    a = user(inst)
    pid = str(uuid.uuid4())
    first = tx_ok(inst, a, [pg_upsert("projects", {"id": pid, "user_id": a.id, "title": "v1"},
                                      ["id"])])
    assert first["results"][0]["data"]["count"] == 1
    assert first["results"][0]["data"]["rows"][0]["title"] == "v1"
    second = tx_ok(inst, a, [pg_upsert("projects", {"id": pid, "user_id": a.id, "title": "v2"},
                                       ["id"])])
    assert second["results"][0]["data"]["rows"][0]["title"] == "v2"
    assert n_projects(inst, a.id) == 1 and project_row(inst, pid)[1] == "v2"


@pytest.mark.parametrize("op", [
    pg_update("projects", None, {"title": "x"}),
    pg_update("projects", {}, {"title": "x"}),
    pg_delete("projects", None),
    pg_delete("projects", {}),
    {"database": "postgresql", "operation": "upsert", "table": "projects",
     "data": {"title": "x"}},
    pg_upsert("projects", {"title": "x"}, []),
    pg_upsert("projects", {"title": "x"}, ["nope"]),
    pg_insert("projects", {}),
    pg_insert("projects", None),
    pg_insert("projects", ["title"]),
    pg_update("projects", {"title": "x"}, {}),
    {"database": "postgresql", "operation": "merge", "table": "projects", "data": {}},
    {"database": "postgresql", "operation": "select", "table": "projects"},
    {"database": "postgresql", "operation": "insert", "data": {"title": "x"}},
    {"database": "mongodb", "operation": "insert", "table": "projects", "data": {"title": "x"}},
    {"operation": "insert", "table": "projects", "data": {"title": "x"}, "database": 5},
    rop("flushall", "x"),
    rop("get", "x"),
    {"database": "redis", "operation": "set", "value": "v"},
    rset("", "v"),
    rset("k" * 513, "v"),
    rset("a\u0000b", "v"),
    {"database": "redis", "operation": "set", "key": "k"},
    rset("k", "v", ttl=-1),
    rset("k", "v", ttl="60"),
    rop("expire", "k"),
    "insert",
    None,
])
def test_operation_validation_before_anything_runs(inst, op):
    """Operation 1 is valid; operation 2 is not: 4xx naming index 2, and the
    valid first operation left no trace."""
    a = user(inst)
    ops = [pg_insert("projects", {"title": "first", "user_id": a.id}), op]
    resp = tx(inst, a, ops)
    assert 400 <= resp.status_code < 500, resp.text
    err = assert_error(resp, resp.status_code)
    if err["code"] == "INVALID_JSON":     # a NUL byte refused by the JSON parser
        assert "\\u0000" in json.dumps(op), err
    else:
        assert err["code"] in ("VALIDATION_FAILED", "UNKNOWN_COLUMN", "UNKNOWN_TABLE",
                               "INVALID_FILTER", "FORBIDDEN"), err
        assert err["details"].get("operation") == 2, err
    assert n_projects(inst, a.id) == 0


@pytest.mark.parametrize("body", [{}, {"operations": []}, {"operations": "x"},
                                  {"operations": {"0": {}}}, [], {"operations": None}])
def test_body_validation(inst, body):
    a = user(inst)
    resp = inst.post("/api/v1/data/transaction", json=body, headers=a.headers)
    err = assert_error(resp, 400)
    assert err["code"] in ("VALIDATION_FAILED", "INVALID_JSON"), err


def test_unknown_table_and_column(inst):
    a = user(inst)
    err = tx_fail(inst, a, [pg_insert("nope", {"x": 1})], 404, "UNKNOWN_TABLE", operation=1)
    assert err["details"].get("table") == "nope"
    tx_fail(inst, a, [pg_insert("sessions", {"user_id": a.id})], 404, "UNKNOWN_TABLE", 1)
    tx_fail(inst, a, [pg_insert("redis_outbox", {"key": "x"})], 404, "UNKNOWN_TABLE", 1)
    err = tx_fail(inst, a, [pg_insert("projects", {"title": "t", "user_id": a.id, "nope": 1})],
                  400, "UNKNOWN_COLUMN", operation=1)
    assert err["details"].get("column") == "nope"
    tx_fail(inst, a, [pg_update("projects", {"nope": 1}, {"title": "t"})], 400,
            "UNKNOWN_COLUMN", 1)
    assert n_projects(inst, a.id) == 0


# ---- atomicity and error mapping ----

def test_rollback_names_failing_operation_and_writes_nothing(inst, rds):
    a = user(inst)
    pid = add_project(inst, a.id, title="stay", status="draft")
    key = unique("rk")
    ops = [pg_insert("projects", {"title": "ghost1", "user_id": a.id}),
           pg_update("projects", {"id": pid}, {"status": "changed"}),
           rset(key, "must not appear"),
           pg_delete("projects", {"id": pid}),
           pg_insert("projects", {"user_id": a.id})]          # title is NOT NULL
    err = tx_fail(inst, a, ops, 400, "VALIDATION_FAILED", operation=5)
    assert err["details"].get("field") == "title", err
    assert n_projects(inst, a.id) == 1
    assert project_row(inst, pid) == (a.id, "stay", "draft")
    time.sleep(1.2)     # longer than one background outbox pass
    assert rds.get(f"app:user:{a.id}:{key}") is None
    assert scalar(inst, "SELECT count(*) FROM coredb.redis_outbox WHERE key LIKE %s",
                  (f"%{key}",)) == 0


def test_unique_violation_is_conflict(inst, admin, labels):
    a = user(inst)
    pid = add_project(inst, a.id)
    err = tx_fail(inst, a, [pg_insert("projects", {"title": "new", "user_id": a.id}),
                            pg_insert("projects", {"id": pid, "title": "dup", "user_id": a.id})],
                  409, "CONFLICT", operation=2)
    details = err["details"]
    assert details.get("field") == "id" or "id" in (details.get("fields") or []), err
    assert n_projects(inst, a.id) == 1
    # a taken value of a unique column names the column (admin on a table of
    # the test's own: public.users takes no writes through the data API)
    taken = unique()
    tx_ok(inst, admin, [pg_insert(labels, {"name": taken, "kind": "a"})])
    err = tx_fail(inst, admin, [pg_insert(labels, {"name": taken, "kind": "b"})],
                  409, "CONFLICT", operation=1)
    assert err["details"].get("field") == "name" or \
        "name" in (err["details"].get("fields") or []), err
    assert "INSERT" not in err["message"] and "Key (" not in err["message"], err


def test_check_and_foreign_key_violations(inst, admin, labels):
    err = tx_fail(inst, admin, [pg_insert(labels, {"name": unique(), "kind": "superuser"})],
                  400, "VALIDATION_FAILED", operation=1)
    assert err["details"].get("field") in (None, "kind"), err
    err = tx_fail(inst, admin, [pg_insert("content_analysis",
                                          {"project_id": str(uuid.uuid4()),
                                           "analysis_type": "tone"})],
                  400, "VALIDATION_FAILED", operation=1)
    assert err["details"].get("field") in (None, "project_id"), err
    err = tx_fail(inst, admin, [pg_insert("projects", {"title": "orphan"})],
                  400, "VALIDATION_FAILED", operation=1)
    assert err["details"].get("field") == "user_id", err


@pytest.mark.parametrize("data", [
    {"id": "not-a-uuid"},
    {"settings": "{not json"},
    {"created_at": "yesterday-ish"},
    {"title": "x" * 256},
    {"title": {"an": "object"}},
    {"title": ["a"]},
    {"title": "nul\u0000byte"},
])
def test_bad_values_are_validation_failed(inst, data):
    a = user(inst)
    row = {"title": "ok", "user_id": a.id}
    row.update(data)
    resp = tx(inst, a, [pg_insert("projects", {"title": "first", "user_id": a.id}),
                        pg_insert("projects", row)])
    err = assert_error(resp, 400)
    if err["code"] == "INVALID_JSON":     # a NUL byte refused by the JSON parser
        assert "\\u0000" in json.dumps(data), err
    else:
        assert err["code"] == "VALIDATION_FAILED", err
        assert err["details"].get("operation") == 2, err
        assert err["details"].get("field") in (None, next(iter(data))), err
    assert "ERROR:" not in err["message"] and "invalid input syntax" not in err["message"], err
    assert n_projects(inst, a.id) == 0


# ---- isolation ----

def test_insert_for_another_user_is_forbidden(inst):
    a, b = user(inst), user(inst)
    tx_fail(inst, a, [pg_insert("projects", {"title": "mine", "user_id": a.id}),
                      pg_insert("projects", {"title": "theirs", "user_id": b.id})],
            403, "FORBIDDEN", operation=2)
    assert n_projects(inst, a.id) == 0 and n_projects(inst, b.id) == 0
    # a child row under someone else's project, too
    pb = add_project(inst, b.id)
    tx_fail(inst, a, [pg_insert("content_analysis", {"project_id": pb, "analysis_type": "x"})],
            403, "FORBIDDEN", operation=1)
    assert scalar(inst, "SELECT count(*) FROM content_analysis WHERE project_id = %s",
                  (pb,)) == 0


def test_update_delete_of_foreign_rows_touch_nothing(inst):
    a, b = user(inst), user(inst)
    pb = add_project(inst, b.id, title="b-owned", status="draft")
    ab = add_analysis(inst, pb, confidence=0.3)
    out = tx_ok(inst, a, [pg_update("projects", {"id": pb}, {"title": "stolen"}),
                          pg_update("projects", {"user_id": b.id}, {"status": "hacked"}),
                          pg_delete("projects", {"id": pb}),
                          pg_delete("content_analysis", {"id": ab}),
                          pg_update("content_analysis", {"project_id": pb}, {"confidence": 0})])
    assert [r["data"]["count"] for r in out["results"]] == [0] * 5
    assert project_row(inst, pb) == (b.id, "b-owned", "draft")
    assert scalar(inst, "SELECT confidence::float FROM content_analysis WHERE id = %s",
                  (ab,)) == 0.3


def test_cannot_move_own_row_to_another_user(inst):
    a, b = user(inst), user(inst)
    pa = add_project(inst, a.id)
    tx_fail(inst, a, [pg_update("projects", {"id": pa}, {"user_id": b.id})], 403, "FORBIDDEN", 1)
    assert project_row(inst, pa)[0] == a.id


def test_upsert_onto_foreign_row_is_refused(inst):
    a, b = user(inst), user(inst)
    pb = add_project(inst, b.id, title="b-row")
    resp = tx(inst, a, [pg_upsert("projects", {"id": pb, "user_id": a.id, "title": "taken"},
                                  ["id"])])
    assert resp.status_code in (403, 409), resp.text
    assert resp.json()["error"]["details"].get("operation") == 1
    assert project_row(inst, pb) == (b.id, "b-row", "draft")


def test_users_table_privileges(inst, admin):
    """public.users is written only through the users API (migration 009):
    user and premium hold no write privilege on it at all, not even on
    display_name or profile_picture_url, whose rules only the users API
    checks."""
    a = user(inst)
    before = scalar(inst, "SELECT row_to_json(u)::text FROM users u WHERE user_id = %s", (a.id,))
    for data in ({"display_name": "Me"}, {"profile_picture_url": "javascript:alert(1)"},
                 {"role": "admin"}, {"is_active": False}, {"user_id": str(uuid.uuid4())},
                 {"email": "NOT AN EMAIL AT ALL"}, {"username": "X Y <script>"},
                 {"password_hash": "x"}, {"updated_at": "2000-01-01T00:00:00Z"}):
        err = tx_fail(inst, a, [pg_update("users", {"user_id": a.id}, data)], 403, "FORBIDDEN", 1)
        assert err["details"].get("table") == "users", err
    assert scalar(inst, "SELECT row_to_json(u)::text FROM users u WHERE user_id = %s",
                  (a.id,)) == before
    # no inserting users through the data API, as a user or as an admin
    for acct in (a, admin):
        resp = tx(inst, acct, [pg_insert("users", {"email": "x@example.com", "username": unique(),
                                                   "password_hash": "x", "role": "admin"})])
        assert_error(resp, 403, "FORBIDDEN")
    assert scalar(inst, "SELECT count(*) FROM users WHERE email = 'x@example.com'") == 0
    # deleting the own row stays allowed (and is tested with the users API)
    assert "DELETE" in scalar(inst, "SELECT string_agg(privilege_type, ',') FROM "
                                    "information_schema.table_privileges WHERE grantee = "
                                    "'coredb_user' AND table_name = 'users'")


def test_admin_writes_anyones_rows(inst, admin):
    b = user(inst)
    pb = add_project(inst, b.id, title="b")
    out = tx_ok(inst, admin, [pg_update("projects", {"id": pb}, {"status": "reviewed"}),
                              pg_insert("projects", {"title": "for b", "user_id": b.id})])
    assert [r["data"]["count"] for r in out["results"]] == [1, 1]
    assert n_projects(inst, b.id) == 2
    assert project_row(inst, pb)[2] == "reviewed"


def test_premium_confined_like_user(inst, admin):
    p, b = premium(inst, admin), user(inst)
    pb = add_project(inst, b.id)
    tx_fail(inst, p, [pg_insert("projects", {"title": "x", "user_id": b.id})], 403,
            "FORBIDDEN", 1)
    out = tx_ok(inst, p, [pg_delete("projects", {"id": pb})])
    assert out["results"][0]["data"]["count"] == 0 and project_row(inst, pb) is not None


# ---- Redis operations ----

def test_redis_operations_in_own_namespace(inst, admin, rds):
    a = user(inst)
    ns = f"app:user:{a.id}:"
    out = tx_ok(inst, a, [rset("plain", "v1"), rset("short", "v2", ttl=60),
                          rop("incr", "ctr"), rop("incr", "ctr"),
                          rset("gone", "x"), rop("del", "gone"),
                          rset("later", "y"), rop("expire", "later", ttl=30)])
    assert all(r["status"] == "success" for r in out["results"]), out
    assert rds.get(ns + "plain") == "v1" and rds.ttl(ns + "plain") == -1
    assert rds.get(ns + "short") == "v2" and 0 < rds.ttl(ns + "short") <= 60
    assert rds.get(ns + "ctr") == "2"
    assert rds.exists(ns + "gone") == 0
    assert 0 < rds.ttl(ns + "later") <= 30
    # the query side reads the same namespace
    got = query_ok_redis(inst, a, "plain")
    assert got == "v1"
    # admin keys live under app:
    key = unique("adm")
    tx_ok(inst, admin, [rset(key, "A")])
    assert rds.get("app:" + key) == "A"


def query_ok_redis(inst, acct, key):
    resp = inst.post("/api/v1/data/query", json={"database": "redis", "query_type": "get",
                                                 "key": key}, headers=acct.headers)
    assert resp.status_code == 200, resp.text
    return resp.json()["data"]["value"]


def test_redis_writes_cannot_reach_service_or_foreign_keys(inst, rds):
    a, b = user(inst), user(inst)
    rds.set(f"app:user:{b.id}:k", "B")
    rds.set("coredb:probe", "SERVICE")
    keys = ["coredb:probe", f"app:user:{b.id}:k", f"../{b.id}:k", "../../coredb:probe",
            "k\r\n*1\r\n$8\r\nFLUSHALL\r\n", "*", "coredb:session:" + str(uuid.uuid4())]
    ops = [rset(k, "overwritten") for k in keys] + [rop("del", k) for k in keys] + \
        [rop("expire", k, ttl=1) for k in keys] + [rop("incr", "coredb:probe")]
    resp = tx(inst, a, ops)
    assert resp.status_code in (200, 400), resp.text
    time.sleep(1.3)
    assert rds.get("coredb:probe") == "SERVICE"
    assert rds.get(f"app:user:{b.id}:k") == "B"
    assert rds.ttl("coredb:probe") == -1
    if resp.status_code == 200:
        assert rds.get(f"app:user:{a.id}:coredb:probe") is not None


def test_redis_rollback_with_pg_failure(inst, rds):
    a = user(inst)
    key = unique("rb")
    tx_fail(inst, a, [rset(key, "no"), rop("incr", key + "n"),
                      pg_insert("projects", {"title": "x", "user_id": str(uuid.uuid4())})],
            403, "FORBIDDEN", operation=3)
    time.sleep(1.2)
    assert rds.get(f"app:user:{a.id}:{key}") is None
    assert rds.get(f"app:user:{a.id}:{key}n") is None


# ---- concurrency ----

def test_concurrent_incr_is_exact(inst, rds):
    a = user(inst)
    key = unique("ctr")

    def one(_):
        return tx(inst, a, [rop("incr", key)]).status_code

    with ThreadPoolExecutor(20) as pool:
        codes = list(pool.map(one, range(20)))
    assert codes == [200] * 20, codes
    assert wait_for(lambda: rds.get(f"app:user:{a.id}:{key}") == "20", timeout=5), \
        rds.get(f"app:user:{a.id}:{key}")
    time.sleep(1.2)   # a retried outbox entry must not apply twice
    assert rds.get(f"app:user:{a.id}:{key}") == "20"


def test_concurrent_pg_writes(inst):
    a = user(inst)
    pid = str(uuid.uuid4())

    def insert(i):
        return tx(inst, a, [pg_insert("projects", {"title": f"c{i}", "user_id": a.id})])

    def upsert(i):
        return tx(inst, a, [pg_upsert("projects", {"id": pid, "user_id": a.id,
                                                   "title": f"u{i}"}, ["id"])])

    with ThreadPoolExecutor(20) as pool:
        ins = list(pool.map(insert, range(20)))
        ups = list(pool.map(upsert, range(20)))
    assert [r.status_code for r in ins] == [200] * 20, [r.text for r in ins if r.status_code != 200]
    assert [r.status_code for r in ups] == [200] * 20, [r.text for r in ups if r.status_code != 200]
    assert n_projects(inst, a.id) == 21
    assert project_row(inst, pid)[1] in {f"u{i}" for i in range(20)}


# ---- the outbox across a Redis outage ----

def test_outbox_applies_after_redis_returns(pg, private_redis):
    inst = start_instance(pg, private_redis, 0)
    try:
        a = user(inst)
        rds = redis_client(private_redis, 0)
        ns = f"app:user:{a.id}:"
        private_redis.stop()
        t0 = time.time()
        out = tx_ok(inst, a, [pg_insert("projects", {"title": "during outage", "user_id": a.id}),
                              rset("k1", "survives", ttl=600), rop("incr", "n"),
                              rop("incr", "n")])
        assert time.time() - t0 < 5, "Redis down must not stall a transaction"
        assert out["results"][0]["status"] == "success"
        assert [r["status"] for r in out["results"][1:]] == ["pending"] * 3, out
        assert n_projects(inst, a.id) == 1
        backlog = scalar(inst, "SELECT count(*) FROM coredb.redis_outbox")
        assert backlog >= 3, backlog
        # still pending while Redis stays down, and the backlog is visible
        time.sleep(1.5)
        assert scalar(inst, "SELECT count(*) FROM coredb.redis_outbox") >= 3
        admin = admin_of(inst)
        shown = inst.get("/health").text + inst.get("/metrics", headers=admin.headers).text
        private_redis.start()
        assert wait_for(lambda: rds.get(ns + "k1") == "survives", timeout=10), \
            "outbox never applied the set"
        assert wait_for(lambda: scalar(inst, "SELECT count(*) FROM coredb.redis_outbox") == 0,
                        timeout=10)
        assert rds.get(ns + "n") == "2"
        assert 0 < rds.ttl(ns + "k1") <= 600
        # and after recovery new transactions apply at once
        out = tx_ok(inst, a, [rset("k2", "now")])
        assert out["results"][0]["status"] == "success"
        assert rds.get(ns + "k2") == "now"
        assert "outbox" in shown, "the outbox backlog is in neither /health nor /metrics"
    finally:
        if private_redis.proc.poll() is not None:
            private_redis.start()
        inst.stop_clean()


def test_flush_leaves_fresh_rows_to_their_committer(inst, rds):
    """A committed row nobody has tried yet (attempts 0) belongs to the request that committed it for
    CDB_OUTBOX_COMMITTER_GRACE (5 s): the flush job, which runs every second, takes it only after that,
    so it never makes a committer answer "pending" for an operation applied a moment later. A row its
    committer already failed to apply (attempts > 0) is taken by the next flush."""
    tag = uuid.uuid4().hex[:8]
    probe, fresh, retried = (f"app:outbox-test:{tag}:{name}" for name in ("probe", "fresh", "retried"))
    ins = ("INSERT INTO coredb.redis_outbox (transaction_id, seq, op, key, value, ttl, attempts, created_at)"
           " VALUES (%s::uuid, 1, 'set', %s, 'v', 60, %s, clock_timestamp())")
    # the job's first run is 5 s after start (core/jobs.h): wait for it with a row it takes
    scalar(inst, ins, (str(uuid.uuid4()), probe, 1))
    assert wait_for(lambda: rds.get(probe) == "v", timeout=12), "the flush job never ran"
    scalar(inst, ins, (str(uuid.uuid4()), fresh, 0))
    scalar(inst, ins, (str(uuid.uuid4()), retried, 1))
    t0 = time.time()
    assert wait_for(lambda: rds.get(retried) == "v", timeout=4), "a retried row waited past the next flush"
    time.sleep(max(0.0, 3.0 - (time.time() - t0)))
    assert rds.get(fresh) is None, f"the flush took a fresh row after {time.time() - t0:.1f} s"
    assert scalar(inst, "SELECT count(*) FROM coredb.redis_outbox WHERE key = %s", (fresh,)) == 1
    assert wait_for(lambda: rds.get(fresh) == "v", timeout=10), "an orphaned row was never applied"
    assert time.time() - t0 >= 4.5, "the grace is 5 s"
    assert wait_for(lambda: scalar(inst, "SELECT count(*) FROM coredb.redis_outbox WHERE key LIKE %s",
                                   (f"app:outbox-test:{tag}:%",)) == 0, timeout=5)


# ---- injection corpus ----

CORPUS = ["'", '"', ";", "--", "/* */", "projects; DROP TABLE users; --",
          "'; DROP TABLE users; --", '"; DROP TABLE users; --', 'title" = \'x\' --',
          "title) VALUES ('x'); DROP TABLE users; --", "pröjects", "\u202e", "🙂",
          "title\u0000", "\u0000", "x" * 100000, "TITLE", " title", "*", "$1"]


def test_injection_corpus_transaction(inst, admin):
    a = user(inst)
    pid = add_project(inst, a.id, title="victim")
    before = counts(inst)
    failures = []
    for payload in CORPUS:
        bodies = [
            ("table", [pg_insert(payload, {"title": "x", "user_id": a.id})]),
            ("data key", [pg_insert("projects", {"title": "x", "user_id": a.id, payload: "v"})]),
            ("update data key", [pg_update("projects", {"id": pid}, {payload: "v"})]),
            ("filter key", [pg_delete("projects", {payload: "v"})]),
            ("filter op", [pg_delete("projects", {"title": {payload: "v"}})]),
            ("filter uuid value", [pg_delete("projects", {"id": payload})]),
            ("conflict column", [pg_upsert("projects", {"title": "x", "user_id": a.id},
                                           [payload])]),
            ("operation", [{"database": "postgresql", "operation": payload,
                            "table": "projects", "data": {"title": "x"}}]),
            ("database", [{"database": payload, "operation": "insert", "table": "projects",
                           "data": {"title": "x"}}]),
            ("uuid data", [pg_insert("projects", {"title": "x", "user_id": payload})]),
        ]
        for where, ops in bodies:
            resp = tx(inst, a, ops)
            if not 400 <= resp.status_code < 500:
                failures.append((where, payload[:50], resp.status_code, resp.text[:200]))
            elif "syntax error" in resp.text or "RETURNING" in resp.text:
                failures.append((where, payload[:50], "leaks SQL", resp.text[:200]))
        # as a value it is data (except NUL): stored verbatim, then removed
        if "\u0000" not in payload and len(payload) <= 255:
            out = tx_ok(inst, a, [pg_insert("projects", {"title": payload, "user_id": a.id})])
            new_id = out["results"][0]["data"]["rows"][0]["id"]
            assert project_row(inst, new_id)[1] == payload
            tx_ok(inst, a, [pg_delete("projects", {"id": new_id})])
    assert not failures, failures[:20]
    assert counts(inst) == before
    assert project_row(inst, pid) == (a.id, "victim", "draft")
    assert query_ok(inst, a, {"table": "projects", "filters": {"id": pid}})["data"]
