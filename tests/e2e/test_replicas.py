"""Read replicas and read-your-writes (issue 14, docs/replicas.md), against a
real PostgreSQL primary, a real streaming hot standby made by pg_basebackup
-R (servers.PgReplica) and a real Redis shared by two coredb instances.

Where a read was served is proven where it lands: with replay paused on the
standby, a row written on the primary is invisible to a read the standby
answered and visible to one the primary answered; the standby's own
pg_stat_activity shows coredb's read pool; the metrics count reads by
target. Every wait is bounded."""
import json
import re
import time

import psycopg2
import pytest

from datahelp import (QUERY, add_project, admin_env, admin_of, assert_error, pg_insert, query, query_ok,
                      tx_ok, unique, user, wait_for)
from conftest import base_env
from identity import bearer
from servers import Coredb, PgReplica, PgServer, RedisServer, free_port

FAST = {"DB_REPLICA_SAMPLE_MS": "200", "DB_REPLICA_MAX_LAG": "120", "DB_POOL_MIN": "1"}


# ---- fixtures: one primary, one standby, one Redis, two instances on one database ----

@pytest.fixture(scope="module")
def primary():
    server = PgServer("pg-primary")
    # lease logins authenticate by password (as in test_leases); coredb itself stays postgres/trust
    hba = server.query("postgres", "SHOW hba_file")[0][0]
    with open(hba) as f:
        original = f.read()
    with open(hba, "w") as f:
        f.write("host all postgres 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 scram-sha-256\n" + original)
    server.query("postgres", "SELECT pg_reload_conf()")
    yield server
    server.destroy()


@pytest.fixture(scope="module")
def replica(primary):
    server = PgReplica(primary)
    yield server
    server.destroy()


@pytest.fixture(scope="module")
def rserver():
    server = RedisServer()
    yield server
    server.destroy()


def start(primary, replica_url, db, rserver, admin=None, **extra):
    env = dict(admin or admin_env())
    env.update(FAST)
    env["DATABASE_READ_URLS"] = replica_url
    env["REDIS_URL"] = rserver.url
    env.update({k: str(v) for k, v in extra.items()})
    inst = Coredb(base_env(primary, db, None, **env))
    inst.db, inst.pg, inst.admin_email = db, primary, env["COREDB_ADMIN_EMAIL"]
    return inst


@pytest.fixture(scope="module")
def pair(primary, replica, rserver):
    """Two instances over the same database, the same replica and the same Redis."""
    db = primary.create_database("rep")
    admin = admin_env()
    a = start(primary, replica.url(db), db, rserver, admin)
    b = start(primary, replica.url(db), db, rserver, admin)
    yield a, b
    a.stop_clean()
    b.stop_clean()


@pytest.fixture(scope="module")
def admin(pair):
    return admin_of(pair[0])


# ---- helpers ----

def health(inst):
    resp = inst.get("/health")
    assert resp.status_code in (200, 503), resp.text
    return resp.json()


def admin_health(inst, admin):
    """The admin's detailed connection health (replica addresses and reasons)."""
    resp = inst.get("/api/v1/admin/health/connection", headers=admin.headers, timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.json()


def replica_state(inst):
    return health(inst)["checks"]["replicas"]["replicas"][0]


def wait_state(inst, state, timeout=15):
    ok = wait_for(lambda: replica_state(inst)["state"] == state, timeout=timeout, step=0.1)
    assert ok, health(inst)


def metrics(inst, admin):
    resp = inst.get("/metrics", headers=admin.headers)
    assert resp.status_code == 200, resp.text
    return resp.text


def metric(text, name, labels=""):
    m = re.search(r"^" + re.escape(name + (("{" + labels + "}") if labels else "")) + r" (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


def titles(inst, acct, page=1):
    # a different page each time is a different cache key: a cache miss, i.e. a routed read
    out = query_ok(inst, acct, {"database": "postgresql", "query_type": "select", "table": "projects",
                                "pagination": {"page": page, "limit": 100}})
    return {r["title"] for r in out["data"]}, out


_page = [0]


def fresh_titles(inst, acct):
    """The caller's project titles through a cache miss (pages 1 of distinct limits)."""
    _page[0] += 1
    out = query_ok(inst, acct, {"database": "postgresql", "query_type": "select", "table": "projects",
                                "pagination": {"page": 1, "limit": 100 - (_page[0] % 90)}})
    assert out["cached"] is False, out
    return {r["title"] for r in out["data"]}


# ---- tests ----

def test_reads_are_served_by_the_replica(pair, admin, replica):
    a, _ = pair
    wait_state(a, "up")
    carol = user(a)
    before = metrics(a, admin)
    for _ in range(5):
        fresh_titles(a, carol)
    after = metrics(a, admin)
    assert metric(after, "coredb_db_reads_total", 'target="replica"') - \
        metric(before, "coredb_db_reads_total", 'target="replica"') == 5, after
    assert metric(after, "coredb_db_reads_total", 'target="primary"') == \
        metric(before, "coredb_db_reads_total", 'target="primary"'), after
    assert metric(after, "coredb_replica_up", 'replica="0"') == 1
    # the standby itself sees coredb's read pool on this database
    rows = replica.query("postgres", "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'coredb-read'"
                                     " AND datname = %s", (a.db,))
    assert rows[0][0] >= 1
    h = health(a)
    assert h["status"] == "UP", h
    rep = h["checks"]["replicas"]["replicas"][0]
    assert rep["state"] == "up" and re.match(r"^[0-9A-F]+/[0-9A-F]+$", rep["replay_lsn"]), rep
    # the address only for admins, never on the public /health
    assert "target" not in rep and str(replica.port) not in json.dumps(h), rep
    det = admin_health(a, admin)
    assert det["replicas"]["replicas"][0]["target"] == f"127.0.0.1:{replica.port}", det
    assert det["health"] == "healthy", det


def test_read_your_writes_across_instances_with_replay_paused(pair, admin, replica, primary):
    a, b = pair
    wait_state(a, "up")
    wait_state(b, "up")
    alice = user(a)      # writes through a, reads through b
    bob = user(a)        # never writes through coredb
    replica.wait_caught_up()
    replica.pause()
    try:
        before = metrics(b, admin)
        title = unique("ryw")
        tx_ok(a, alice, [pg_insert("projects", {"user_id": alice.id, "title": title})])
        # bob's row lands on the primary only (written as the owner, not through coredb)
        hidden = unique("hidden")
        add_project(a, bob.id, title=hidden)
        # the sampler sees the standby fall behind (so its answers are not cached)
        assert wait_for(lambda: replica_state(b)["lag_bytes"] > 0, timeout=5), health(b)

        assert title in fresh_titles(b, alice)              # read-your-writes, other instance
        assert hidden not in fresh_titles(b, bob)           # bob never wrote: the paused standby answered
        after = metrics(b, admin)
        assert metric(after, "coredb_read_your_writes_primary_total") - \
            metric(before, "coredb_read_your_writes_primary_total") == 1, after
        assert metric(after, "coredb_db_reads_total", 'target="primary"') - \
            metric(before, "coredb_db_reads_total", 'target="primary"') == 1, after
        assert metric(after, "coredb_db_reads_total", 'target="replica"') - \
            metric(before, "coredb_db_reads_total", 'target="replica"') == 1, after
        # the standby really lacks alice's row: only the primary could have answered her
        assert not replica.query(a.db, "SELECT 1 FROM projects WHERE title = %s", (title,))
    finally:
        replica.resume()
    replica.wait_caught_up()
    assert wait_for(lambda: hidden in fresh_titles(b, bob), timeout=5)
    # caught up again (and sampled): alice's reads go back to the replica
    def served_by_replica():
        before = metric(metrics(b, admin), "coredb_db_reads_total", 'target="replica"')
        assert title in fresh_titles(b, alice)
        return metric(metrics(b, admin), "coredb_db_reads_total", 'target="replica"') == before + 1
    assert wait_for(served_by_replica, timeout=5, step=0.2)


def test_users_api_writes_are_read_back_across_instances(pair, replica):
    """A profile change through the users API counts as a write too."""
    a, b = pair
    wait_state(b, "up")
    kim = user(a)
    replica.wait_caught_up()
    replica.pause()
    try:
        name = unique("Kim")
        resp = a.request("PUT", f"/users/{kim.id}", json={"display_name": name}, headers=kim.headers)
        assert resp.status_code == 200, resp.text
        out = query_ok(b, kim, {"table": "users", "select": ["user_id", "display_name"]})
        assert [r["display_name"] for r in out["data"]] == [name], out
        assert replica.query(a.db, "SELECT display_name FROM users WHERE user_id = %s", (kim.id,))[0][0] != name
    finally:
        replica.resume()


def test_stale_replica_answers_are_not_cached(pair, admin, replica):
    """A replica that has not replayed the last write anyone made must not
    fill the query cache: its stale answer would outlive its lag."""
    a, b = pair
    wait_state(b, "up")
    ivy, jack = user(a), user(a)
    body = {"database": "postgresql", "query_type": "select", "table": "projects",
            "filters": {"status": "draft"}, "pagination": {"page": 1, "limit": 7}}
    replica.wait_caught_up()
    replica.pause()
    try:
        hidden = unique("late")
        add_project(a, jack.id, title=hidden)                 # on the primary only
        tx_ok(a, ivy, [pg_insert("projects", {"user_id": ivy.id, "title": unique("w")})])  # bumps the generation
        for _ in range(2):
            out = query_ok(b, jack, body)
            assert out["cached"] is False, out                # served by the paused replica, never stored
            assert hidden not in {r["title"] for r in out["data"]}
    finally:
        replica.resume()
    replica.wait_caught_up()
    assert wait_for(lambda: replica_state(b)["lag_bytes"] == 0, timeout=5), health(b)
    time.sleep(0.5)                                           # one more sample after the catch-up
    first = query_ok(b, jack, body)
    assert hidden in {r["title"] for r in first["data"]}, first
    again = query_ok(b, jack, body)
    assert again["cached"] is True and again["data"] == first["data"], again


def test_replica_down_reads_keep_working_and_health_degraded(pair, admin, replica):
    a, _ = pair
    wait_state(a, "up")
    dave = user(a)
    tx_ok(a, dave, [pg_insert("projects", {"user_id": dave.id, "title": "d1"})])
    replica.stop("immediate")
    try:
        for _ in range(4):                     # the first may meet a dead connection: the primary answers
            assert "d1" in fresh_titles(a, dave)
        wait_state(a, "down", timeout=10)
        h = health(a)
        assert h["status"] == "DEGRADED", h
        assert h["checks"]["replicas"]["status"] == "DOWN" and h["checks"]["replicas"]["in_rotation"] == 0, h
        assert h["checks"]["postgresql"]["status"] == "UP", h
        assert a.get("/health/ready").status_code == 200      # still serving: the balancer keeps it
        before = metric(metrics(a, admin), "coredb_db_reads_total", 'target="primary"')
        assert "d1" in fresh_titles(a, dave)
        m = metrics(a, admin)
        assert metric(m, "coredb_db_reads_total", 'target="primary"') == before + 1
        assert metric(m, "coredb_replica_up", 'replica="0"') == 0
    finally:
        replica.start()
    wait_state(a, "up", timeout=20)
    assert health(a)["status"] == "UP"
    before = metric(metrics(a, admin), "coredb_db_reads_total", 'target="replica"')
    erin = user(a)
    fresh_titles(a, erin)
    assert metric(metrics(a, admin), "coredb_db_reads_total", 'target="replica"') == before + 1


def test_read_lease_connects_to_the_replica(pair, replica):
    a, _ = pair
    frank = user(a)
    resp = a.post("/api/v1/connections/acquire", headers=frank.headers,
                  json={"service_name": "svc-r", "database_type": "postgresql", "operation_type": "read"})
    assert resp.status_code == 201, resp.text
    out = resp.json()
    assert f":{replica.port}/" in out["database_url"], "read lease not on the replica"
    # handed out once the standby has replayed the lease's role: usable at once
    conn = psycopg2.connect(out["database_url"], connect_timeout=5)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT pg_is_in_recovery(), current_user")
            in_recovery, who = cur.fetchone()
            assert in_recovery is True and who.startswith("coredb_lease_"), who
        rel = a.post("/api/v1/connections/release", headers=frank.headers,
                     json={"connection_id": out["connection_id"], "service_name": "svc-r"})
        assert rel.status_code == 200, rel.text
        # the release ends the lease's sessions on the standby too
        def ended():
            try:
                with conn.cursor() as cur:
                    cur.execute("SELECT 1")
                return False
            except psycopg2.Error:
                return True
        assert wait_for(ended, timeout=5, step=0.2)
    finally:
        conn.close()


def test_read_lease_falls_back_to_the_primary_while_the_replica_lags(pair, replica, primary):
    a, _ = pair
    wait_state(a, "up")
    lena = user(a)
    replica.pause()
    try:
        resp = a.post("/api/v1/connections/acquire", headers=lena.headers,
                      json={"service_name": "svc-r2", "database_type": "postgresql", "operation_type": "read"})
        assert resp.status_code == 201, resp.text
        out = resp.json()
        assert f"@127.0.0.1:{primary.port}/" in out["database_url"], "lease handed to a replica without its role"
        conn = psycopg2.connect(out["database_url"], connect_timeout=5)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT pg_is_in_recovery()")
                assert cur.fetchone()[0] is False
        finally:
            conn.close()
        assert "lease.replica_behind" in a.log()
    finally:
        replica.resume()
    rel = a.post("/api/v1/connections/release", headers=lena.headers,
                 json={"connection_id": out["connection_id"], "service_name": "svc-r2"})
    assert rel.status_code == 200, rel.text


def test_unreachable_replica_at_start_does_not_prevent_start(primary, rserver):
    db = primary.create_database("repdown")
    secret = "s3cretReplicaPw"
    dead = f"postgresql://postgres:{secret}@127.0.0.1:{free_port()}/{db}"
    inst = start(primary, dead, db, rserver)
    try:
        adm = admin_of(inst)
        wait_state(inst, "down", timeout=10)
        h = health(inst)
        assert h["status"] == "DEGRADED", h
        assert h["checks"]["replicas"]["replicas"][0]["state"] == "down", h
        assert "reason" not in h["checks"]["replicas"]["replicas"][0], h
        det = admin_health(inst, adm)
        assert det["replicas"]["replicas"][0]["reason"] == "unreachable", det
        assert det["health"] == "degraded" and any("replicas" in r for r in det["reasons"]), det
        gina = user(inst)
        tx_ok(inst, gina, [pg_insert("projects", {"user_id": gina.id, "title": "g1"})])
        assert "g1" in fresh_titles(inst, gina)
        m = metrics(inst, adm)
        assert metric(m, "coredb_db_reads_total", 'target="primary"') >= 1
        assert metric(m, "coredb_db_reads_total", 'target="replica"') == 0
        # the replica's password never shows: not in health, metrics or the log
        assert secret not in inst.get("/health").text and secret not in m
        assert secret not in json.dumps(admin_health(inst, adm))
    finally:
        inst.stop_clean()
    assert secret not in inst.log()


def test_hostile_queries_on_replicas_keep_their_errors(pair):
    a, _ = pair
    wait_state(a, "up")
    hank = user(a)
    # a bad filter value is the caller's fault: 400 from the replica, not retried into a 5xx
    resp = query(a, hank, {"database": "postgresql", "query_type": "select", "table": "projects",
                           "filters": {"created_at": "not-a-date'; DROP TABLE projects; --"}})
    err = assert_error(resp, 400)
    assert err["code"] in ("INVALID_FILTER", "VALIDATION_FAILED"), err
    resp = query(a, hank, {"database": "postgresql", "query_type": "select", "table": "projects\"; --"})
    assert resp.status_code in (400, 404), resp.text
    # no token, forged token: refused before any routing
    body = {"database": "postgresql", "query_type": "select", "table": "projects"}
    assert a.post(QUERY, json=body).status_code == 401
    assert a.post(QUERY, json=body, headers=bearer("x.y.z")).status_code == 401
    assert_error(a.post(QUERY, data=b"{not json", headers={**hank.headers, "Content-Type": "application/json"}), 400)


@pytest.mark.parametrize("name,value", [("DB_REPLICA_SAMPLE_MS", "0"), ("DB_REPLICA_MAX_LAG", "-5"),
                                        ("DB_READ_POOL_MAX", "lots"), ("DATABASE_READ_URLS", "mysql://x@h/db")])
def test_bad_replica_settings_stop_start(primary, rserver, name, value):
    db = primary.create_database("repbad")
    env = base_env(primary, db, None, **{"DATABASE_READ_URLS": f"postgresql://postgres@127.0.0.1:1/{db}",
                                         "REDIS_URL": rserver.url, name: value})
    inst = Coredb(env, wait=False)
    code = inst.proc.wait(timeout=30)
    assert code == 2, inst.log()
    assert name in inst.log()
