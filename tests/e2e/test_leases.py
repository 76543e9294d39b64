"""Connection leases (issue 9): POST /api/v1/connections/acquire|release,
/connections/{id}/renew, GET /api/v1/connections, X-Connection-ID on the
data API, and the reaper, against the real binary and a PostgreSQL cluster
of this module's own that asks every login but the superuser for a SCRAM
password over TCP (so the returned database_url is a real credential).

Every effect is read where it lands: pg_roles / pg_authid /
pg_auth_members / pg_stat_activity as the superuser, and psycopg2 sessions
opened with the database_url exactly as returned."""
import concurrent.futures
import re
import signal
import time
import uuid

import psycopg2
import psycopg2.errors
import pytest

from conftest import base_env
from datahelp import admin_env, admin_of, new_account, pg_update, tx, wait_for
from identity import PASSWORD, assert_error, bearer, craft, live_claims
from servers import Coredb, PgServer

ACQ = "/api/v1/connections/acquire"
REL = "/api/v1/connections/release"
LIST = "/api/v1/connections"
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$")
ROLE_RE = re.compile(r"^coredb_lease_[0-9a-f]{32}$")


# ---- fixtures ----

@pytest.fixture(scope="module")
def cluster():
    server = PgServer("pg-leases")
    hba = server.query("postgres", "SHOW hba_file")[0][0]
    with open(hba) as f:
        original = f.read()
    with open(hba, "w") as f:
        f.write("host all postgres 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 scram-sha-256\n" + original)
    server.query("postgres", "SELECT pg_reload_conf()")
    yield server
    server.destroy()


def start(cluster, db=None, redis=None, **extra):
    name = db or cluster.create_database("lease")
    env = admin_env()
    env.update({k: str(v) for k, v in extra.items()})
    inst = Coredb(base_env(cluster, name, redis, **env))
    inst.db, inst.pg, inst.admin_email = name, cluster, env["COREDB_ADMIN_EMAIL"]
    return inst


@pytest.fixture(scope="module")
def inst(cluster):
    # LEASE_MAX_PER_USER=16: test_fifty_concurrent_pairs_leave_nothing_behind runs its pairs 8 at a
    # time for one user (alice), over the default cap of 4; the cap itself is tested on instances
    # of its own below
    server = start(cluster, DB_POOL_MAX=20, LEASE_MAX_PER_USER=16)
    yield server
    server.stop_clean()


@pytest.fixture(scope="module")
def admin(inst):
    return admin_of(inst)


@pytest.fixture(scope="module")
def alice(inst):
    return new_account(inst)


@pytest.fixture(scope="module")
def bob(inst):
    return new_account(inst)


# ---- helpers ----

def q(inst, sql, params=None):
    return inst.pg.query(inst.db, sql, params)


def acquire(inst, acct, mode="write", status=201, **extra):
    body = {"service_name": "svc-a", "database_type": "postgresql", "operation_type": mode}
    body.update(extra)
    resp = inst.post(ACQ, json=body, headers=acct.headers)
    assert resp.status_code == status, resp.text
    return resp.json()


def release(inst, acct, lease_id, service="svc-a"):
    return inst.post(REL, json={"connection_id": lease_id, "service_name": service}, headers=acct.headers)


def role_of(inst, lease_id):
    rows = q(inst, "SELECT role_name FROM coredb.leases WHERE id = %s", (lease_id,))
    return rows[0][0]


def role_exists(inst, role):
    return bool(q(inst, "SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)))


def connect(url):
    conn = psycopg2.connect(url, connect_timeout=5)
    conn.autocommit = True
    return conn


def rows(conn, sql, params=None):
    with conn.cursor() as cur:
        cur.execute(sql, params)
        return cur.fetchall() if cur.description else cur.rowcount


def project(inst, owner, title):
    q(inst, "INSERT INTO public.projects (user_id, title) VALUES (%s, %s)", (owner.id, title))


def session_alive(conn):
    try:
        rows(conn, "SELECT 1")
        return True
    except psycopg2.Error:
        return False


# ---- acquire ----

def test_acquire_shape_and_the_role_it_creates(inst, alice):
    before = time.time()
    out = acquire(inst, alice, ttl_seconds=120)
    assert out["status"] == "success" and out["error"] is None, out
    assert UUID_RE.match(out["connection_id"]), out
    assert set(out["pool_stats"]) == {"active", "idle", "waiting"}, out
    assert out["pool_stats"]["active"] >= 1, out
    assert out["service_name"] == "svc-a" and out["operation_type"] == "write"
    url = out["database_url"]
    m = re.match(r"^postgresql://(coredb_lease_[0-9a-f]{32}):([0-9a-f]{64})@127\.0\.0\.1:(\d+)/(\w+)$", url)
    assert m, url
    role, password = m.group(1), m.group(2)
    assert int(m.group(3)) == inst.pg.port and m.group(4) == inst.db
    expires = time.mktime(time.strptime(out["expires_at"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
    assert before + 110 < expires < before + 130, out
    login, limit, until, pw = q(inst, "SELECT rolcanlogin, rolconnlimit, extract(epoch FROM rolvaliduntil),"
                                      " rolpassword FROM pg_authid WHERE rolname = %s", (role,))[0]
    assert login and limit == 5 and abs(float(until) - expires) < 1.5
    assert pw.startswith("SCRAM-SHA-256$") and password not in pw
    member = q(inst, "SELECT r.rolname FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid "
                     "JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = %s", (role,))
    assert member == [("coredb_user",)]
    assert q(inst, "SELECT user_id::text, mode, state FROM coredb.leases WHERE role_name = %s", (role,)) == \
        [(alice.id, "write", "active")]
    # the credential works as it is, and a wrong password does not
    conn = connect(url)
    assert rows(conn, "SELECT session_user")[0][0] == role
    conn.close()
    with pytest.raises(psycopg2.OperationalError):
        connect(url.replace(password, "0" * 64))
    assert release(inst, alice, out["connection_id"]).status_code == 200


def test_read_lease_reads_and_cannot_write(inst, alice, bob):
    project(inst, alice, "alice-read")
    project(inst, bob, "bob-read")
    out = acquire(inst, alice, mode="read")
    role = role_of(inst, out["connection_id"])
    assert q(inst, "SELECT r.rolname FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid "
                   "JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = %s", (role,)) == [("coredb_user_ro",)]
    conn = connect(out["database_url"])
    titles = {r[0] for r in rows(conn, "SELECT title FROM public.projects")}
    assert "alice-read" in titles and "bob-read" not in titles
    for sql in ["INSERT INTO public.projects (user_id, title) VALUES ('%s', 'x')" % alice.id,
                "UPDATE public.projects SET title = 'y'",
                "DELETE FROM public.projects",
                "CREATE TABLE public.lease_t (id int)",
                "CREATE SCHEMA lease_s"]:
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            rows(conn, sql)
    assert q(inst, "SELECT count(*) FROM public.projects WHERE title = 'y'")[0][0] == 0
    conn.close()
    assert release(inst, alice, out["connection_id"]).status_code == 200


def test_admin_leases_cannot_read_password_hashes(inst, admin, alice):
    # migration 016: 013 had granted coredb_admin_ro SELECT on the whole of public.users
    for mode in ("read", "write"):
        out = acquire(inst, admin, mode=mode)
        role = role_of(inst, out["connection_id"])
        member = q(inst, "SELECT r.rolname FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid "
                         "JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = %s", (role,))
        assert member == [("coredb_admin_ro" if mode == "read" else "coredb_admin",)], member
        conn = connect(out["database_url"])
        for sql in ["SELECT password_hash FROM public.users",
                    "SELECT * FROM public.users",
                    "SELECT count(*) FROM public.users WHERE password_hash LIKE '$argon2%%'",
                    "SELECT user_id FROM public.users ORDER BY password_hash"]:
            with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                rows(conn, sql)
        # the admin policy still shows every user, without the hash
        emails = {r[0] for r in rows(conn, "SELECT email FROM public.users")}
        assert {alice.email, inst.admin_email} <= emails, emails
        conn.close()
        assert release(inst, admin, out["connection_id"]).status_code == 200


def test_write_lease_writes_within_rls(inst, alice, bob):
    project(inst, bob, "bob-write")
    out = acquire(inst, alice)
    conn = connect(out["database_url"])
    assert rows(conn, "INSERT INTO public.projects (user_id, title) VALUES (%s, 'alice-w')", (alice.id,)) == 1
    with pytest.raises(psycopg2.errors.InsufficientPrivilege):   # WITH CHECK: not as someone else
        rows(conn, "INSERT INTO public.projects (user_id, title) VALUES (%s, 'forged')", (bob.id,))
    assert rows(conn, "UPDATE public.projects SET title = 'hijacked' WHERE title = 'bob-write'") == 0
    assert rows(conn, "DELETE FROM public.projects WHERE user_id = %s", (bob.id,)) == 0
    for sql in ["CREATE TABLE public.lease_w (id int)", "CREATE SCHEMA lease_w",
                "CREATE FUNCTION public.f() RETURNS int LANGUAGE sql AS 'SELECT 1'"]:
        with pytest.raises(psycopg2.errors.InsufficientPrivilege):
            rows(conn, sql)
    conn.close()
    assert q(inst, "SELECT user_id::text FROM public.projects WHERE title = 'alice-w'") == [(alice.id,)]
    assert q(inst, "SELECT count(*) FROM public.projects WHERE title = 'bob-write'")[0][0] == 1
    assert q(inst, "SELECT count(*) FROM public.projects WHERE title IN ('forged', 'hijacked')")[0][0] == 0
    assert release(inst, alice, out["connection_id"]).status_code == 200


SPOOFS = [
    ("SET app.current_user_id = '{bob}'", None),
    ("SELECT set_config('app.current_user_id', '{bob}', false)", None),
    ("SET ROLE coredb_user", None),
    ("RESET ROLE", None),
    ("SET search_path = pg_temp, public", None),
    ("CREATE TEMP TABLE projects (id uuid, user_id uuid, title text)", None),
    ("SET ROLE coredb_admin", psycopg2.errors.InsufficientPrivilege),
    ("SET ROLE postgres", psycopg2.errors.InsufficientPrivilege),
    ("SET SESSION AUTHORIZATION postgres", psycopg2.errors.InsufficientPrivilege),
    ("SET SESSION AUTHORIZATION coredb_user", psycopg2.errors.InsufficientPrivilege),
    ("CREATE FUNCTION public.current_user_id() RETURNS uuid LANGUAGE sql AS $$ SELECT '{bob}'::uuid $$",
     psycopg2.errors.InsufficientPrivilege),
    ("CREATE OR REPLACE FUNCTION coredb.current_user_id() RETURNS uuid LANGUAGE sql AS $$ SELECT '{bob}'::uuid $$",
     psycopg2.errors.InsufficientPrivilege),
    ("SELECT coredb.lease_user_id()", None),
]


def test_spoofing_attempts_see_nothing_of_another_user(inst, alice, bob):
    project(inst, bob, "bob-secret")
    out = acquire(inst, alice)
    conn = connect(out["database_url"])
    for sql, refused in SPOOFS:
        sql = sql.format(bob=bob.id)
        if refused:
            with pytest.raises(refused):
                rows(conn, sql)
        else:
            rows(conn, sql)
        # after each step, and all of them together: nothing of bob's, by any way of asking
        assert rows(conn, "SELECT count(*) FROM public.projects WHERE user_id = %s", (bob.id,))[0][0] == 0, sql
        assert rows(conn, "SELECT count(*) FROM public.projects WHERE title = 'bob-secret'")[0][0] == 0, sql
        assert rows(conn, "SELECT count(*) FROM public.users WHERE user_id = %s", (bob.id,))[0][0] == 0, sql
        assert rows(conn, "UPDATE public.projects SET title = 'x' WHERE user_id = %s", (bob.id,)) == 0, sql
        assert str(rows(conn, "SELECT coredb.current_user_id()")[0][0]) == alice.id, sql
    with pytest.raises(psycopg2.errors.InsufficientPrivilege):
        rows(conn, "SELECT * FROM coredb.leases")
    conn.close()
    assert q(inst, "SELECT count(*) FROM public.projects WHERE title = 'bob-secret'")[0][0] == 1
    assert release(inst, alice, out["connection_id"]).status_code == 200


def test_api_path_is_unchanged_by_the_binding(inst, alice):
    # coredb's own login is not a lease role: the setting still decides
    assert q(inst, "SELECT set_config('app.current_user_id', %s, false), coredb.current_user_id()::text",
             (alice.id,))[0][1] == alice.id


# ---- release and expiry ----

def test_release_kills_sessions_and_drops_the_role(inst, alice):
    out = acquire(inst, alice)
    lid, url = out["connection_id"], out["database_url"]
    role = role_of(inst, lid)
    conn = connect(url)
    rows(conn, "CREATE TEMP TABLE mine (id int)")
    resp = release(inst, alice, lid)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["status"] == "released" and body["connection_id"] == lid
    assert isinstance(body["duration_ms"], int) and body["duration_ms"] >= 0
    assert not session_alive(conn)
    assert not role_exists(inst, role)
    with pytest.raises(psycopg2.OperationalError):
        connect(url)
    assert q(inst, "SELECT state FROM coredb.leases WHERE id = %s", (lid,)) == [("released",)]
    assert_error(release(inst, alice, lid), 404, "NOT_FOUND")


def test_release_of_another_users_lease_is_not_found(inst, alice, bob):
    out = acquire(inst, alice)
    a = assert_error(release(inst, bob, out["connection_id"]), 404, "NOT_FOUND")
    b = assert_error(release(inst, bob, str(uuid.uuid4())), 404, "NOT_FOUND")
    assert a["message"] == b["message"]
    assert_error(release(inst, alice, out["connection_id"], service="other-svc"), 404, "NOT_FOUND")
    assert role_exists(inst, role_of(inst, out["connection_id"]))
    assert release(inst, alice, out["connection_id"]).status_code == 200


def expiries(inst, admin):
    text = inst.get("/metrics", headers=admin.headers).text
    return float(re.search(r"^coredb_lease_expiries_total (\S+)$", text, re.M).group(1))


def test_expiry_ends_sessions_within_the_reaper_delay(inst, admin, alice):
    expired_before = expiries(inst, admin)
    out = acquire(inst, alice, ttl_seconds=2)
    role = role_of(inst, out["connection_id"])
    conn = connect(out["database_url"])
    t0 = time.time()
    assert wait_for(lambda: not role_exists(inst, role), timeout=2 + 5 + 1)
    assert time.time() - t0 < 2 + 5 + 1
    assert not session_alive(conn)
    with pytest.raises(psycopg2.OperationalError):
        connect(out["database_url"])
    assert q(inst, "SELECT state FROM coredb.leases WHERE id = %s", (out["connection_id"],)) == [("expired",)]
    assert_error(release(inst, alice, out["connection_id"]), 404, "NOT_FOUND")
    assert expiries(inst, admin) >= expired_before + 1      # this module's only instance reaped it
    audit = q(inst, "SELECT actor, outcome, params->>'reason' FROM coredb.audit_log"
                    " WHERE action = 'lease.release' AND target = %s ORDER BY id", (out["connection_id"],))
    # the reaper's release, then the refused second one (refusals are audited too)
    assert audit == [("reaper", "success", "expired"), (alice.id, "NOT_FOUND", None)], audit


@pytest.mark.parametrize("change", ["deactivate", "role", "delete"])
def test_lease_ends_when_its_user_loses_the_rights(inst, admin, change):
    """A lease is cut from its user's rights at acquire: deactivating the
    user, changing their role or deleting them ends it within the reaper's
    tick, as the users API ends their sessions (a lease of an old admin
    kept admin's rights until expiry before)."""
    holder = new_account(inst)
    out = acquire(inst, holder, ttl_seconds=600)
    role = role_of(inst, out["connection_id"])
    conn = connect(out["database_url"])
    assert session_alive(conn)
    if change == "deactivate":
        resp = tx(inst, admin, [pg_update("users", {"user_id": holder.id}, {"is_active": False})])
    elif change == "role":
        resp = inst.request("PUT", f"/users/{holder.id}", headers=admin.headers, json={"role": "premium"})
    else:
        resp = inst.request("DELETE", f"/users/{holder.id}", headers=admin.headers)
    assert resp.status_code in (200, 204), resp.text
    t0 = time.time()
    assert wait_for(lambda: not role_exists(inst, role), timeout=1 + 5 + 1), change
    assert time.time() - t0 < 1 + 5 + 1
    assert not session_alive(conn)
    with pytest.raises(psycopg2.OperationalError):
        connect(out["database_url"])
    assert q(inst, "SELECT state FROM coredb.leases WHERE id = %s", (out["connection_id"],)) == [("expired",)]


def test_renew_extends_up_to_the_max(cluster):
    inst = start(cluster, LEASE_TTL=2, LEASE_MAX_TTL=30)
    try:
        a = new_account(inst)
        out = acquire(inst, a)
        lid = out["connection_id"]
        resp = inst.post(f"{LIST}/{lid}/renew", json={"ttl_seconds": 20}, headers=a.headers)
        assert resp.status_code == 200, resp.text
        new_exp = resp.json()["expires_at"]
        assert new_exp > out["expires_at"]
        role = role_of(inst, lid)
        until = q(inst, "SELECT to_char(rolvaliduntil AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"
                        " FROM pg_roles WHERE rolname = %s", (role,))[0][0]
        assert until == new_exp
        time.sleep(3)                      # past the first expiry: still alive
        assert role_exists(inst, role)
        assert_error(inst.post(f"{LIST}/{lid}/renew", json={"ttl_seconds": 31}, headers=a.headers), 400,
                     "VALIDATION_FAILED")
        resp = inst.post(f"{LIST}/{lid}/renew", json={"ttl_seconds": 30}, headers=a.headers)
        capped = q(inst, "SELECT extract(epoch FROM (created_at + interval '30 s') - expires_at) FROM coredb.leases"
                         " WHERE id = %s", (lid,))[0][0]
        assert resp.status_code == 200 and abs(float(capped)) < 1, (resp.text, capped)
        b = new_account(inst)
        assert_error(inst.post(f"{LIST}/{lid}/renew", json={}, headers=b.headers), 404, "NOT_FOUND")
        assert release(inst, a, lid).status_code == 200
        assert_error(inst.post(f"{LIST}/{lid}/renew", json={}, headers=a.headers), 404, "NOT_FOUND")
    finally:
        inst.stop_clean()


# ---- X-Connection-ID ----

def test_x_connection_id_routes_and_refuses(inst, alice, bob):
    project(inst, alice, "alice-x")
    out = acquire(inst, alice)
    lid = out["connection_id"]
    body = {"table": "projects", "filters": {"title": "alice-x"}}
    hdr = dict(alice.headers, **{"X-Connection-ID": lid})
    resp = inst.post("/api/v1/data/query", json=body, headers=hdr)
    assert resp.status_code == 200, resp.text
    assert [r["title"] for r in resp.json()["data"]] == ["alice-x"]
    resp = inst.post("/api/v1/data/transaction", headers=hdr, json={"operations": [
        {"database": "postgresql", "operation": "insert", "table": "projects",
         "data": {"user_id": alice.id, "title": "alice-x-tx"}}]})
    assert resp.status_code == 200, resp.text
    assert q(inst, "SELECT count(*) FROM public.projects WHERE title = 'alice-x-tx'")[0][0] == 1
    # the call ran on the reserved backend: still one lease connection, and pool counts unchanged
    errs = []
    for other, lease in [(bob, lid), (alice, str(uuid.uuid4())), (alice, "not-a-uuid"), (alice, "' OR 1=1 --")]:
        h = dict(other.headers, **{"X-Connection-ID": lease})
        errs.append(assert_error(inst.post("/api/v1/data/query", json=body, headers=h), 404, "NOT_FOUND"))
    assert len({e["message"] for e in errs}) == 1
    assert release(inst, alice, lid).status_code == 200
    assert_error(inst.post("/api/v1/data/query", json=body, headers=hdr), 404, "NOT_FOUND")
    # expired
    out = acquire(inst, alice, ttl_seconds=1)
    time.sleep(1.5)
    h = dict(alice.headers, **{"X-Connection-ID": out["connection_id"]})
    assert_error(inst.post("/api/v1/data/query", json=body, headers=h), 404, "NOT_FOUND")


def test_pool_max_two_exhausted_while_holder_is_served(cluster, redis_server):
    # with Redis, a caller's session check is served from there: it needs no pooled connection
    inst = start(cluster, redis=redis_server, DB_POOL_MAX=2, DB_POOL_MIN=1, DB_POOL_ACQUIRE_TIMEOUT="1s")
    try:
        a = new_account(inst)
        other = new_account(inst)
        first = acquire(inst, a)
        # one lease held: another caller's queries are served on the connection that is left
        # (a fresh filter each time, so no answer can come from the cache)
        for _ in range(5):
            resp = inst.post("/api/v1/data/query", headers=other.headers,
                             json={"table": "projects", "filters": {"title": uuid.uuid4().hex}})
            assert resp.status_code == 200, resp.text
            assert resp.json()["data"] == []
        second = acquire(inst, a)
        t0 = time.time()
        err = assert_error(inst.post(ACQ, json={"service_name": "s", "database_type": "postgresql",
                                                "operation_type": "read"}, headers=a.headers), 503,
                           "POOL_EXHAUSTED")
        assert time.time() - t0 < 3
        assert err["details"]["retry_after"] >= 1
        for lease in (first, second):
            h = dict(a.headers, **{"X-Connection-ID": lease["connection_id"]})
            resp = inst.post("/api/v1/data/query", json={"table": "projects"}, headers=h)
            assert resp.status_code == 200, resp.text
        assert release(inst, a, first["connection_id"], service="svc-a").status_code == 200
        third = acquire(inst, a)
        for lease in (second, third):
            assert release(inst, a, lease["connection_id"]).status_code == 200
    finally:
        inst.stop_clean()


# ---- the per-user cap (LEASE_MAX_PER_USER) ----

def lease_roles(inst):
    return q(inst, "SELECT count(*) FROM pg_roles WHERE rolname LIKE 'coredb\\_lease\\_%%'")[0][0]


def test_cap_default_four_then_429_with_retry_after(cluster):
    inst = start(cluster, DB_POOL_MAX=10)          # LEASE_MAX_PER_USER left at its default
    try:
        a, b = new_account(inst), new_account(inst)
        held = [acquire(inst, a, ttl_seconds=ttl) for ttl in (60, 300, 600, 900)]
        roles, rows_before = lease_roles(inst), q(inst, "SELECT count(*) FROM coredb.leases")[0][0]
        body = {"service_name": "svc-a", "database_type": "postgresql", "operation_type": "read"}
        resp = inst.post(ACQ, json=body, headers=a.headers)
        err = assert_error(resp, 429, "RATE_LIMITED")
        assert err["details"]["limit"] == 4, err
        # seconds until the earliest live lease (ttl 60) ends
        assert 50 <= err["details"]["retry_after"] <= 60, err
        assert resp.headers["Retry-After"] == str(err["details"]["retry_after"]), resp.headers
        assert "SELECT" not in resp.text and "coredb.leases" not in resp.text
        # nothing was created for the refused acquire, and its connection went back to the pool
        assert lease_roles(inst) == roles
        assert q(inst, "SELECT count(*) FROM coredb.leases")[0][0] == rows_before
        assert wait_for(lambda: inst.get(LIST, headers=admin_of(inst).headers).json()["pool_stats"]["active"]
                        == 4, timeout=5)
        # the cap is per user: another caller still gets one
        other = acquire(inst, b)
        # release one: the next acquire works again, and the one after is refused again
        assert release(inst, a, held[0]["connection_id"]).status_code == 200
        held[0] = acquire(inst, a)
        err = assert_error(inst.post(ACQ, json=body, headers=a.headers), 429, "RATE_LIMITED")
        assert 1 <= err["details"]["retry_after"] <= 300, err
        # the refusal is audited like any other
        assert q(inst, "SELECT count(*) FROM coredb.audit_log WHERE action = 'lease.acquire' AND actor = %s"
                       " AND outcome = 'RATE_LIMITED'", (a.id,))[0][0] == 2
        for lease in held:
            assert release(inst, a, lease["connection_id"]).status_code == 200
        assert release(inst, b, other["connection_id"]).status_code == 200
    finally:
        inst.stop_clean()


def test_cap_counts_expired_leases_out(cluster):
    inst = start(cluster, DB_POOL_MAX=10, LEASE_MAX_PER_USER=1)
    try:
        a = new_account(inst)
        # expires_at is whole seconds: a ttl of 2 lives between 1 and 2 s
        short = acquire(inst, a, ttl_seconds=2)
        err = assert_error(inst.post(ACQ, json={"service_name": "s", "database_type": "postgresql",
                                                "operation_type": "write"}, headers=a.headers), 429, "RATE_LIMITED")
        assert err["details"]["limit"] == 1 and err["details"]["retry_after"] in (1, 2), err
        time.sleep(2.2)
        # past its expiry the lease no longer counts, reaped or not
        again = acquire(inst, a)
        assert_error(release(inst, a, short["connection_id"]), 404, "NOT_FOUND")
        assert release(inst, a, again["connection_id"]).status_code == 200
    finally:
        inst.stop_clean()


def test_cap_holds_across_instances_under_concurrent_acquires(cluster):
    one = start(cluster, DB_POOL_MAX=10, LEASE_MAX_PER_USER=2)
    two = start(cluster, db=one.db, DB_POOL_MAX=10, LEASE_MAX_PER_USER=2)
    try:
        a = new_account(one)
        body = {"service_name": "race", "database_type": "postgresql", "operation_type": "write"}
        barrier = __import__("threading").Barrier(8)

        def attempt(i):
            barrier.wait()
            server = one if i % 2 else two
            return server.post(ACQ, json=body, headers=a.headers)

        with concurrent.futures.ThreadPoolExecutor(8) as ex:
            answers = list(ex.map(attempt, range(8)))
        codes = sorted(r.status_code for r in answers)
        assert codes == [201, 201] + [429] * 6, [(r.status_code, r.text[:200]) for r in answers]
        for r in answers:
            if r.status_code == 429:
                assert_error(r, 429, "RATE_LIMITED")
                assert int(r.headers["Retry-After"]) >= 1
        live = q(one, "SELECT count(*) FROM coredb.leases WHERE user_id = %s AND state = 'active'", (a.id,))
        assert live == [(2,)], live
        won = [r.json()["connection_id"] for r in answers if r.status_code == 201]
        assert q(one, "SELECT count(*) FROM pg_roles WHERE rolname IN (SELECT role_name FROM coredb.leases"
                      " WHERE user_id = %s)", (a.id,)) == [(2,)]
        for lid in won:                   # either instance may release
            assert release(two, a, lid, service="race").status_code == 200
        assert acquire(one, a, service_name="race")["connection_id"]
    finally:
        two.stop_clean()
        one.stop_clean()


def test_cap_zero_is_off(cluster):
    inst = start(cluster, DB_POOL_MAX=10, LEASE_MAX_PER_USER=0)
    try:
        a = new_account(inst)
        held = [acquire(inst, a) for _ in range(6)]
        assert q(inst, "SELECT count(*) FROM coredb.leases WHERE user_id = %s AND state = 'active'",
                 (a.id,)) == [(6,)]
        for lease in held:
            assert release(inst, a, lease["connection_id"]).status_code == 200
    finally:
        inst.stop_clean()


def test_cap_setting_is_validated(cluster):
    from servers import run_cli
    db = cluster.create_database("lease")
    for bad in ("-1", "many", "100001"):
        env = base_env(cluster, db, None, LEASE_MAX_PER_USER=bad)
        run = run_cli(["config"], env)
        assert run.returncode != 0 and "LEASE_MAX_PER_USER" in run.stdout + run.stderr, (bad, run.stdout, run.stderr)


# ---- NOTIFY coredb_catalog from a lease ----

def reloads(inst, admin, reason="notified"):
    text = inst.get("/metrics", headers=admin.headers).text
    m = re.search(r'^coredb_catalog_reloads_total\{reason="%s"\} (\S+)$' % reason, text, re.M)
    assert m, text[-2000:]
    return float(m.group(1))


def test_notify_flood_from_a_lease_is_rate_bounded(cluster):
    import threading
    inst = start(cluster, DB_POOL_MAX=10)
    try:
        admin, a = admin_of(inst), new_account(inst)
        out = acquire(inst, a, mode="read")           # a read lease: NOTIFY needs no privilege
        conn = connect(out["database_url"])
        before = reloads(inst, admin)
        answers, stop = [], threading.Event()

        def serve():
            while not stop.is_set():
                t = time.time()
                resp = inst.post("/api/v1/data/query", headers=a.headers,
                                 json={"table": "projects", "filters": {"title": uuid.uuid4().hex}})
                answers.append((resp.status_code, time.time() - t))

        reader = threading.Thread(target=serve)
        reader.start()
        t0 = time.time()
        try:
            for i in range(300):          # a burst in a tight loop
                rows(conn, "NOTIFY coredb_catalog, %s", (str(i),))
            # then a stream spaced by 2 ms: long enough that, unbounded, each note would reload on its own
            for i in range(300):
                rows(conn, "NOTIFY coredb_catalog, %s", (f"s{i}",))
                time.sleep(0.002)
            flood = time.time() - t0
            # the last notes reload at most one gap after the flood; let that happen
            last, settled_at = reloads(inst, admin), time.time()
            while time.time() - settled_at < 0.5:
                time.sleep(0.1)
                now = reloads(inst, admin)
                if now != last:
                    last, settled_at = now, time.time()
        finally:
            stop.set()
            reader.join(30)
        elapsed = settled_at - t0
        count = last - before
        assert count >= 1, "the notifications never reached coredb"
        assert count <= elapsed / 0.1 + 3, (count, elapsed, flood)
        assert answers and all(code == 200 for code, _ in answers), answers
        assert max(took for _, took in answers) < 5, max(answers, key=lambda x: x[1])
        conn.close()
        assert release(inst, a, out["connection_id"]).status_code == 200
    finally:
        inst.stop_clean()


# ---- many at once, crash ----

def test_fifty_concurrent_pairs_leave_nothing_behind(inst, admin, alice):
    def pair(i):
        out = acquire(inst, alice, mode="read" if i % 2 else "write", service_name=f"burst-{i}")
        resp = release(inst, alice, out["connection_id"], service=f"burst-{i}")
        assert resp.status_code == 200, resp.text
        return out["connection_id"]

    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        ids = list(ex.map(pair, range(50)))
    assert len(set(ids)) == 50
    assert q(inst, "SELECT count(*) FROM coredb.leases WHERE service_name LIKE 'burst-%%' AND state <> 'released'"
             )[0][0] == 0
    roles = q(inst, "SELECT role_name FROM coredb.leases WHERE service_name LIKE 'burst-%%'")
    assert len(roles) == 50
    assert q(inst, "SELECT count(*) FROM pg_roles WHERE rolname = ANY(%s)", ([r[0] for r in roles],))[0][0] == 0
    resp = inst.get(LIST, headers=admin.headers)
    assert resp.status_code == 200, resp.text
    assert resp.json()["pool_stats"]["active"] == 0, resp.json()
    metrics = inst.get("/metrics", headers=admin.headers).text
    assert re.search(r"^coredb_leases_active 0$", metrics, re.M), metrics[-2000:]
    acquired = float(re.search(r"^coredb_lease_acquires_total (\S+)$", metrics, re.M).group(1))
    released = float(re.search(r"^coredb_lease_releases_total (\S+)$", metrics, re.M).group(1))
    assert acquired >= 50 and released >= 50


def test_crash_leaves_no_role_after_restart(cluster):
    inst = start(cluster)
    db = inst.db
    a = new_account(inst)
    leases = [acquire(inst, a) for _ in range(2)]
    roles = [role_of(inst, x["connection_id"]) for x in leases]
    conn = connect(leases[0]["database_url"])
    inst.stop(sig=signal.SIGKILL)
    assert all(role_exists(inst, r) for r in roles)
    again = start(cluster, db=db)
    try:
        assert wait_for(lambda: not any(role_exists(again, r) for r in roles), timeout=15)
        assert not session_alive(conn)
        assert q(again, "SELECT count(*) FROM coredb.leases WHERE state IN ('active', 'releasing')")[0][0] == 0
    finally:
        again.stop_clean()


# ---- listing, audit, hostile input ----

def test_admin_list_and_filter(inst, admin, alice):
    x = acquire(inst, alice, service_name="list-one")
    y = acquire(inst, alice, service_name="list-two")
    resp = inst.get(LIST, headers=admin.headers)
    assert resp.status_code == 200, resp.text
    ids = {e["connection_id"] for e in resp.json()["leases"]}
    assert {x["connection_id"], y["connection_id"]} <= ids
    assert set(resp.json()["pool_stats"]) >= {"active", "idle", "waiting"}
    resp = inst.get(LIST, params={"service_name": "list-one"}, headers=admin.headers)
    entries = resp.json()["leases"]
    assert [e["connection_id"] for e in entries] == [x["connection_id"]]
    e = entries[0]
    assert set(e) == {"connection_id", "service_name", "user_id", "mode", "created_at", "expires_at", "state"}
    assert e["user_id"] == alice.id and e["mode"] == "write" and e["state"] == "active"
    assert inst.get(LIST, params={"service_name": "' OR 1=1 --"}, headers=admin.headers).json()["leases"] == []
    assert_error(inst.get(LIST, headers=alice.headers), 403, "FORBIDDEN")
    assert_error(inst.get(LIST), 401)
    # an admin may release anyone's lease, without service_name
    resp = inst.post(REL, json={"connection_id": x["connection_id"]}, headers=admin.headers)
    assert resp.status_code == 200, resp.text
    assert release(inst, alice, y["connection_id"], service="list-two").status_code == 200


def test_audit_trail_without_the_password(inst, admin, alice):
    out = acquire(inst, alice, service_name="audited")
    lid = out["connection_id"]
    password = out["database_url"].split(":")[2].split("@")[0]
    inst.post(f"{LIST}/{lid}/renew", json={"ttl_seconds": 60}, headers=alice.headers)
    release(inst, alice, lid, service="audited")
    resp = inst.get("/api/v1/admin/audit", params={"action": "lease."}, headers=admin.headers)
    assert resp.status_code == 200, resp.text
    mine = [e for e in resp.json()["entries"] if e["target"] == lid]
    assert {e["action"] for e in mine} == {"lease.acquire", "lease.renew", "lease.release"}, mine
    assert all(e["actor"] == alice.id and e["outcome"] == "success" for e in mine), mine
    assert password not in resp.text
    assert q(inst, "SELECT count(*) FROM coredb.audit_log WHERE params::text LIKE %s", (f"%{password}%",))[0][0] == 0


BAD = [
    ({}, "service_name"),
    ({"database_type": "postgresql", "operation_type": "read"}, "service_name"),
    ({"service_name": "", "database_type": "postgresql", "operation_type": "read"}, "service_name"),
    ({"service_name": "x" * 129, "database_type": "postgresql", "operation_type": "read"}, "service_name"),
    ({"service_name": 5, "database_type": "postgresql", "operation_type": "read"}, "service_name"),
    ({"service_name": "a'; DROP TABLE users; --", "database_type": "postgresql", "operation_type": "read"},
     "service_name"),
    ({"service_name": "s", "database_type": "mysql", "operation_type": "read"}, "database_type"),
    ({"service_name": "s", "operation_type": "read"}, "database_type"),
    ({"service_name": "s", "database_type": "postgresql", "operation_type": "admin"}, "operation_type"),
    ({"service_name": "s", "database_type": "postgresql", "operation_type": ["read"]}, "operation_type"),
    ({"service_name": "s", "database_type": "postgresql", "operation_type": "read", "ttl_seconds": 0},
     "ttl_seconds"),
    ({"service_name": "s", "database_type": "postgresql", "operation_type": "read", "ttl_seconds": 3601},
     "ttl_seconds"),
    ({"service_name": "s", "database_type": "postgresql", "operation_type": "read", "ttl_seconds": "60"},
     "ttl_seconds"),
    ({"service_name": "s", "database_type": "postgresql", "operation_type": "read", "extra": 1}, "extra"),
]


def test_hostile_inputs(inst, alice):
    leases_before = q(inst, "SELECT count(*) FROM coredb.leases")[0][0]
    for body, field in BAD:
        err = assert_error(inst.post(ACQ, json=body, headers=alice.headers), 400, "VALIDATION_FAILED")
        assert err["details"].get("field") == field, (body, err)
    for raw in [b"{", b"[]", b'"x"', b"null", b'{"service_name": "' + b"a" * 2_000_000 + b'"}']:
        resp = inst.post(ACQ, data=raw, headers=dict(alice.headers, **{"Content-Type": "application/json"}))
        assert 400 <= resp.status_code < 500, (raw[:20], resp.status_code)
    assert q(inst, "SELECT count(*) FROM coredb.leases")[0][0] == leases_before
    ok = {"service_name": "s", "database_type": "postgresql", "operation_type": "read"}
    assert_error(inst.post(ACQ, json=ok), 401)
    forged = craft(live_claims(alice.token, sub=str(uuid.uuid4())), secret="wrong-secret")
    assert_error(inst.post(ACQ, json=ok, headers=bearer(forged)), 401)
    expired = craft(live_claims(alice.token, exp=int(time.time()) - 3600, iat=int(time.time()) - 7200))
    assert_error(inst.post(ACQ, json=ok, headers=bearer(expired)), 401)
    for body in [{}, {"connection_id": 5, "service_name": "s"}, {"connection_id": str(uuid.uuid4())},
                 {"connection_id": "x", "service_name": "s", "more": 1}]:
        resp = inst.post(REL, json=body, headers=alice.headers)
        assert resp.status_code in (400, 404), (body, resp.text)
    assert_error(inst.post(REL, json={"connection_id": "'; DROP ROLE postgres; --", "service_name": "s"},
                           headers=alice.headers), 404, "NOT_FOUND")
    assert_error(inst.post(f"{LIST}/{uuid.uuid4()}/renew", json={"ttl_seconds": "x"}, headers=alice.headers), 400,
                 "VALIDATION_FAILED")
    assert q(inst, "SELECT count(*) FROM coredb.leases")[0][0] == leases_before


def test_exposed_table_read_and_write_leases(inst, admin, alice, bob):
    q(inst, "CREATE TABLE lease_notes (id bigserial PRIMARY KEY, user_id uuid, body text NOT NULL)")
    resp = inst.post("/api/v1/admin/tables/lease_notes/expose", json={"owner_column": "user_id"},
                     headers=admin.headers)
    assert resp.status_code == 200, resp.text
    q(inst, "INSERT INTO lease_notes (user_id, body) VALUES (%s, 'alice-note'), (%s, 'bob-note')",
      (alice.id, bob.id))
    read = acquire(inst, alice, mode="read")
    conn = connect(read["database_url"])
    assert [r[0] for r in rows(conn, "SELECT body FROM lease_notes")] == ["alice-note"]
    with pytest.raises(psycopg2.errors.InsufficientPrivilege):
        rows(conn, "INSERT INTO lease_notes (user_id, body) VALUES (%s, 'x')", (alice.id,))
    conn.close()
    write = acquire(inst, alice)
    conn = connect(write["database_url"])
    rows(conn, "SET app.current_user_id = %s", (bob.id,))
    assert rows(conn, "INSERT INTO lease_notes (body) VALUES ('alice-2')") == 1   # owner default: alice
    assert [r[0] for r in rows(conn, "SELECT body FROM lease_notes ORDER BY id")] == ["alice-note", "alice-2"]
    conn.close()
    assert q(inst, "SELECT user_id::text FROM lease_notes WHERE body = 'alice-2'") == [(alice.id,)]
    for lease in (read, write):
        assert release(inst, alice, lease["connection_id"]).status_code == 200
    resp = inst.post("/api/v1/admin/tables/lease_notes/unexpose", headers=admin.headers)
    assert resp.status_code == 200, resp.text
    assert q(inst, "SELECT has_table_privilege('coredb_user_ro', 'public.lease_notes', 'SELECT')") == [(False,)]


def test_login_without_createrole_gets_an_error_naming_the_fix(cluster):
    from test_defaults_prod import role_url, run_setup_sql, setup_sql
    tag = uuid.uuid4().hex[:8]
    role, db, password = f"cdbla_{tag}", f"cdbladb_{tag}", f"pw-{tag}"
    run_setup_sql(cluster, setup_sql("--role", role, "--database", db, password=password))
    env = base_env(cluster, db, None, **admin_env())
    env["DATABASE_URL"] = role_url(cluster, role, password, db)
    server = Coredb(env)
    server.db, server.pg = db, cluster
    try:
        a = new_account(server)
        before = q(server, "SELECT count(*) FROM pg_roles")[0][0]
        err = assert_error(server.post(ACQ, json={"service_name": "s", "database_type": "postgresql",
                                                  "operation_type": "write"}, headers=a.headers),
                           503, "DATABASE_PRIVILEGE_MISSING")
        assert "coredb setup-sql --administration" in err["message"]
        assert q(server, "SELECT count(*) FROM pg_roles")[0][0] == before
        assert q(server, "SELECT count(*) FROM coredb.leases")[0][0] == 0
        # the fix: the same calls work for a non-superuser login, release included
        cluster.query("postgres", f'ALTER ROLE "{role}" CREATEROLE')
        cluster.query("postgres", f'GRANT pg_signal_backend TO "{role}"')
        out = acquire(server, a)
        conn = connect(out["database_url"])
        rows(conn, "CREATE TEMP TABLE t (id int)")
        resp = server.post(REL, json={"connection_id": out["connection_id"], "service_name": "svc-a"},
                           headers=a.headers)
        assert resp.status_code == 200, resp.text
        assert not session_alive(conn)
        assert q(server, "SELECT count(*) FROM pg_roles")[0][0] == before
    finally:
        server.stop_clean()


def test_x_connection_id_runs_on_the_reserved_backend(inst, alice):
    out = acquire(inst, alice)
    pid = q(inst, "SELECT backend_pid FROM coredb.leases WHERE id = %s", (out["connection_id"],))[0][0]

    def last_change():
        return q(inst, "SELECT state_change FROM pg_stat_activity WHERE pid = %s", (pid,))[0][0]

    body = {"table": "projects", "filters": {"title": uuid.uuid4().hex}}   # never cached: a fresh filter
    before = last_change()
    assert inst.post("/api/v1/data/query", json=body, headers=alice.headers).status_code == 200
    assert last_change() == before                         # without the header: not that backend
    hdr = dict(alice.headers, **{"X-Connection-ID": out["connection_id"]})
    body = {"table": "projects", "filters": {"title": uuid.uuid4().hex}}
    assert inst.post("/api/v1/data/query", json=body, headers=hdr).status_code == 200
    assert last_change() > before
    assert release(inst, alice, out["connection_id"]).status_code == 200


def test_another_instance_refuses_the_header_but_may_release(inst, alice):
    other = start(inst.pg, db=inst.db)
    try:
        out = acquire(inst, alice)
        lid = out["connection_id"]
        hdr = dict(alice.headers, **{"X-Connection-ID": lid})
        assert_error(other.post("/api/v1/data/query", json={"table": "projects"}, headers=hdr), 404, "NOT_FOUND")
        active = lambda: inst.get(LIST, headers=admin_of(inst).headers).json()["pool_stats"]["active"]  # noqa: E731
        assert active() >= 1
        resp = other.post(REL, json={"connection_id": lid, "service_name": "svc-a"}, headers=alice.headers)
        assert resp.status_code == 200, resp.text
        assert not role_exists(inst, role_of(inst, lid))
        # the acquiring instance notices on its reaper's next tick and gives the connection back
        assert wait_for(lambda: active() == 0, timeout=5)
        assert_error(inst.post("/api/v1/data/query", json={"table": "projects"}, headers=hdr), 404, "NOT_FOUND")
    finally:
        other.stop_clean()


def test_read_leases_point_at_a_read_url(cluster):
    # a "replica" that is the primary under another name is no standby, so never in rotation
    # (docs/replicas.md): the read lease falls back to the primary, as routed reads do; a real
    # standby is tested in test_replicas.py
    db = cluster.create_database("lease")
    inst = start(cluster, db=db, DATABASE_READ_URLS=f"postgresql://postgres@localhost:{cluster.port}/{db}")
    try:
        a = new_account(inst)
        assert wait_for(lambda: inst.get("/health").json()["checks"]["replicas"]["replicas"][0]["state"] == "down",
                        timeout=5)
        read = acquire(inst, a, mode="read")
        write = acquire(inst, a, mode="write")
        assert f"@127.0.0.1:{cluster.port}/{db}" in read["database_url"], read["database_url"]
        assert f"@127.0.0.1:{cluster.port}/{db}" in write["database_url"], write["database_url"]
        conn = connect(read["database_url"])
        assert rows(conn, "SELECT count(*) FROM public.projects")[0][0] == 0
        for lease in (read, write):
            assert release(inst, a, lease["connection_id"]).status_code == 200
        assert not session_alive(conn)
        assert "lease.replica_sessions" not in inst.log()
    finally:
        inst.stop_clean()


def test_cli_lease_list_and_release(inst, alice):
    import json
    from identity import cli_env
    from servers import run_cli
    out = acquire(inst, alice, service_name="cli-svc")
    lid = out["connection_id"]
    conn = connect(out["database_url"])
    run = run_cli(["lease", "list", "--service-name", "cli-svc", "--json"], cli_env(inst))
    assert run.returncode == 0, run.stderr
    listed = json.loads(run.stdout)
    assert listed["status"] == "success" and [e["connection_id"] for e in listed["leases"]] == [lid]
    run = run_cli(["lease", "list"], cli_env(inst))
    assert run.returncode == 0 and lid in run.stdout, run.stdout + run.stderr
    run = run_cli(["lease", "release", lid, "--json"], cli_env(inst))
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["connection_id"] == lid
    assert not session_alive(conn)
    assert not role_exists(inst, role_of(inst, lid))
    run = run_cli(["lease", "release", lid, "--json"], cli_env(inst))
    assert run.returncode != 0 and json.loads(run.stdout)["error"]["code"] == "NOT_FOUND", run.stdout
    run = run_cli(["lease", "frobnicate"], cli_env(inst))
    assert run.returncode != 0
    assert run_cli(["lease", "--help"], cli_env(inst)).returncode == 0
    actors = q(inst, "SELECT actor FROM coredb.audit_log WHERE action = 'lease.release' AND target = %s"
                     " AND outcome = 'success'", (lid,))
    assert actors == [("cli",)]


def test_concurrent_calls_on_one_lease_are_refused_not_shared(inst, alice):
    out = acquire(inst, alice)
    hdr = dict(alice.headers, **{"X-Connection-ID": out["connection_id"]})

    def call(i):
        body = {"table": "projects", "filters": {"title": f"c-{i}-{uuid.uuid4().hex}"}}
        return inst.post("/api/v1/data/query", json=body, headers=hdr).status_code

    with concurrent.futures.ThreadPoolExecutor(12) as ex:
        codes = list(ex.map(call, range(120)))
    assert set(codes) <= {200, 409}, codes
    assert 200 in codes and 409 in codes, codes         # 12 callers at once: some must meet a busy lease
    # still usable, and only by one call at a time: afterwards it answers again
    assert call("after") == 200
    assert release(inst, alice, out["connection_id"]).status_code == 200


def test_migration_013_upgrades_tables_exposed_before_it(cluster):
    from servers import run_cli
    from servers import TEST_JWT_SECRET
    db = cluster.create_database("lease")
    env = {"DATABASE_URL": cluster.url(db), "JWT_SECRET": TEST_JWT_SECRET}
    for args in (["migrate", "up", "--target", "20261130_012"], ["table", "expose", "old_notes", "--owner-column",
                                                                 "user_id"], ["migrate", "up"]):
        if args[0] == "table":
            cluster.query(db, "CREATE TABLE old_notes (id serial PRIMARY KEY, user_id uuid, body text)")
        run = run_cli(args, env)
        assert run.returncode == 0, run.stdout + run.stderr
    assert cluster.query(db, "SELECT has_table_privilege('coredb_user_ro', 'public.old_notes', 'SELECT'),"
                             " has_table_privilege('coredb_user_ro', 'public.old_notes', 'INSERT')") == [(True, False)]
    policies = dict(cluster.query(db, "SELECT policyname, roles::text FROM pg_policies WHERE tablename = 'old_notes'"))
    assert policies == {"coredb_admin": "{coredb_admin,coredb_admin_ro}",
                        "coredb_rows": "{coredb_premium,coredb_premium_ro,coredb_user,coredb_user_ro}",
                        "coredb_own_user_id": "{coredb_premium,coredb_premium_ro,coredb_user,coredb_user_ro}"}
