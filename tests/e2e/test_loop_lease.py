"""Data-API reads with X-Connection-ID run on the event loop (src/http/loop_lease.c
over src/store/pg_borrow.c, issue 8 item 3): the loop that admitted the read
checks the lease's reserved connection out, runs the worker's statements on
it in non-blocking pipeline mode, hands it back blocking and idle, and
answers there; refusals (404, 409) are answered there too, and any failure
goes to a worker after the connection is checked in.

Every comparison is with the worker path: a second instance on the same
database with DB_LOOP_CONNECTIONS=0 (the loops run no PostgreSQL, so a
lease read goes to a worker as before). coredb_http_loop_lease_queries_total
{outcome} and coredb_http_loop_admissions_total{outcome="lease"} prove where
a read ran; pg_stat_activity (psycopg2) proves it ran on the lease's own
backend and left it idle. Covered: identical bytes for user, premium and
admin leases; identical caching (miss, hit, write, miss, hit); the lease's
committed writes seen; 404 for foreign, forged, malformed, SQL, expired and
released ids, 401 without or with a forged token, malformed/oversized/
wrong-type bodies, all as the worker answers them; 409 while a read runs on
the lease; release while a read runs; the lease's backend terminated
mid-read (the same answers as the worker path's, nothing hangs); the
server's statement_timeout (504 on the loop, connection clean after);
SIGTERM with lease reads in flight; the reaper ending a lease while a read
runs on it; many callers on one lease (200 or 409 only); read replicas
configured (lease reads stay on the loop); prepared statement names shared
with the worker path on one connection and past the table's 64 (unnamed);
and (test_store_units.py) tests/unit/store/pg_borrow.c on this real PostgreSQL.
"""
import re
import signal
import threading
import time
import uuid

import pytest
import requests

from datahelp import (add_projects, admin_of, delta, metric, pg_insert, premium, query, query_ok, start_instance, tx,
                      user, wait_for)
from identity import assert_error

REDIS_DB = 3
CLIENT_TIMEOUT = 20
LOOP_ENV = {"HTTP_THREADS": "2", "DB_POOL_MAX": "14", "DB_LOOP_CONNECTIONS": "2",
            "RATE_LIMIT_USER": "0", "RATE_LIMIT_PREMIUM": "0", "LEASE_MAX_PER_USER": "8"}
WORKER_ENV = {**LOOP_ENV, "DB_LOOP_CONNECTIONS": "0"}
QUERY = "/api/v1/data/query"
ACQ = "/api/v1/connections/acquire"
REL = "/api/v1/connections/release"



@pytest.fixture(scope="module")
def pair(pg, own_redis):
    """An instance running lease reads on its loops and one running them on workers, one database,
    sharing Redis (caching off: each answer is PostgreSQL's)."""
    loop = start_instance(pg, own_redis, REDIS_DB, CACHE_TTL="0", **LOOP_ENV)
    worker = start_instance(pg, own_redis, REDIS_DB, db=loop.db, CACHE_TTL="0", **WORKER_ENV)
    worker.admin_email = loop.admin_email        # one database: the first instance's admin
    yield loop, worker
    worker.stop_clean()
    loop.stop_clean()


# ---- helpers ----


def lease_reads(inst, admin):
    got = metric(inst, admin, "coredb_http_loop_lease_queries_total")
    adm = metric(inst, admin, "coredb_http_loop_admissions_total")
    out = {k: got.get(k, 0.0) for k in ("answered", "handed_off", "timeout", "refused")}
    out.update({"adm_" + k: adm.get(k, 0.0) for k in ("lease", "worker", "answered")})
    return out



def without_time(content):
    return re.sub(rb'"execution_time_ms":[0-9.eE+-]+', b'"execution_time_ms":0', content)


def acquire(inst, acct, ttl=None):
    body = {"service_name": "svc-loop", "database_type": "postgresql", "operation_type": "write"}
    if ttl:
        body["ttl_seconds"] = ttl
    resp = inst.post(ACQ, json=body, headers=acct.headers)
    assert resp.status_code == 201, resp.text
    return resp.json()["connection_id"]


def release(inst, acct, lid):
    return inst.post(REL, json={"connection_id": lid, "service_name": "svc-loop"}, headers=acct.headers)


def on_lease(acct, lid):
    return dict(acct.headers, **{"X-Connection-ID": lid})


def lq(inst, acct, lid, body, **kw):
    return inst.post(QUERY, json=body, headers=on_lease(acct, lid), **kw)


def backend_of(inst, lid):
    return inst.pg.query(inst.db, "SELECT backend_pid FROM coredb.leases WHERE id = %s", (lid,))[0][0]


def backend_state(inst, pid):
    rows = inst.pg.query(inst.db, "SELECT state, state_change, backend_xid IS NULL, query FROM pg_stat_activity "
                                  "WHERE pid = %s", (pid,))
    return rows[0] if rows else None


def create_slow_view(inst, seconds):
    """A view every role may read whose page and count each sleep `seconds` in PostgreSQL."""
    name = f"slow_{uuid.uuid4().hex[:8]}"
    inst.pg.query(inst.db, f"CREATE VIEW {name} AS SELECT g AS id FROM generate_series(1, 1) g, "
                           f"LATERAL (SELECT pg_sleep({seconds}) AS z OFFSET 0) s")
    inst.pg.query(inst.db, f"GRANT SELECT ON {name} TO coredb_user, coredb_premium, coredb_admin")
    return name


def wait_table(inst, acct, table):
    assert wait_for(lambda: query(inst, acct, {"table": table}).status_code == 200, timeout=15), \
        query(inst, acct, {"table": table}).text


def running_on(inst, pid):
    """True once the lease's backend runs a statement (the pg_sleep of a slow view)."""
    st = backend_state(inst, pid)
    return st is not None and st[0] == "active"


def in_thread(fn):
    out = {}

    def run():
        try:
            out["resp"] = fn()
        except Exception as exc:          # recorded, asserted on by the test
            out["error"] = exc
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, out


# ---- answers ----

def test_lease_reads_on_the_loop_equal_the_worker_path(pair):
    loop, worker = pair
    ladmin, wadmin = admin_of(loop), admin_of(worker)
    a, b = user(loop), user(loop)
    p = premium(loop, ladmin)
    add_projects(loop, a.id, 30, prefix="a")
    add_projects(loop, b.id, 7, prefix="b")
    add_projects(loop, p.id, 4, prefix="p")
    bodies = [
        {"table": "projects"},
        {"table": "projects", "select": ["id", "title"], "order_by": {"column": "title", "direction": "desc"}},
        {"table": "projects", "select": ["title", "status"], "filters": {"status": "draft"},
         "order_by": [{"column": "title"}], "pagination": {"page": 2, "limit": 7}},
        {"table": "projects", "select": ["title"], "filters": {"title": {"like": "a01%"}},
         "order_by": [{"column": "title", "direction": "asc"}]},
        {"table": "projects", "select": ["title"], "filters": {"title": {"in": ["a001", "b002", "p003"]}},
         "order_by": [{"column": "title"}]},
        {"table": "projects", "select": ["id"], "pagination": {"page": 9, "limit": 5}},
        {"table": "content_analysis"},
    ]
    # one request each first: a caller's first request may find the quota script not loaded in
    # Redis yet, and the loop then leaves the whole request to a worker (loop_admit.c)
    for acct in (a, b, p, ladmin):
        query_ok(loop, acct, {"table": "projects", "pagination": {"limit": 1}})
    leases = {}
    for acct in (a, b, p, ladmin):
        leases[acct.id] = (acquire(loop, acct), acquire(worker, acct))
    before, wbefore = lease_reads(loop, ladmin), lease_reads(worker, wadmin)
    n = 0
    for acct in (a, b, p, ladmin):
        llid, wlid = leases[acct.id]
        pid = backend_of(loop, llid)
        for body in bodies:
            changed = backend_state(loop, pid)[1]
            on_loop = lq(loop, acct, llid, body)
            on_worker = lq(worker, acct, wlid, body)
            assert on_loop.status_code == on_worker.status_code == 200, (body, on_loop.text[:300])
            assert without_time(on_loop.content) == without_time(on_worker.content), \
                (body, on_loop.content[:400], on_worker.content[:400])
            # it ran on the lease's own backend, which is idle again, outside any transaction
            state, after, no_xid, _ = backend_state(loop, pid)
            assert after > changed and state == "idle" and no_xid, (state, after, changed)
            n += 1
        # row-level security on the lease's connection: exactly the rows PostgreSQL says the caller owns
        got = query_ok_on(loop, acct, llid, {"table": "projects", "select": ["id"], "pagination": {"limit": 100}})
        own = {r[0] for r in loop.pg.query(loop.db, "SELECT id::text FROM projects WHERE user_id = %s", (acct.id,))}
        everyone = {r[0] for r in loop.pg.query(loop.db, "SELECT id::text FROM projects")}
        assert {r["id"] for r in got["data"]} == (everyone if acct is ladmin else own), acct.user["role"]
        n += 1
    d = delta(before, lease_reads(loop, ladmin))
    # the metrics scrape is an admin call on a worker, not a lease read
    assert d["answered"] == n and d["handed_off"] == 0 and d["adm_lease"] == n, (d, n)
    w = delta(wbefore, lease_reads(worker, wadmin))
    assert w["answered"] == 0 and w["adm_lease"] == 0 and w["adm_worker"] >= len(bodies) * 4, w
    for acct in (a, b, p, ladmin):
        assert release(loop, acct, leases[acct.id][0]).status_code == 200
        assert release(worker, acct, leases[acct.id][1]).status_code == 200


def query_ok_on(inst, acct, lid, body):
    resp = lq(inst, acct, lid, body)
    assert resp.status_code == 200, resp.text[:500]
    return resp.json()


def test_lease_sees_its_own_committed_writes_and_stays_clean(pair):
    loop, worker = pair
    a = user(loop)
    query_ok(loop, a, {"table": "projects", "pagination": {"limit": 1}})
    lid = acquire(loop, a)
    pid = backend_of(loop, lid)
    title = "tx-" + uuid.uuid4().hex
    resp = loop.post("/api/v1/data/transaction", headers=on_lease(a, lid), json={"operations": [
        pg_insert("projects", {"user_id": a.id, "title": title})]})
    assert resp.status_code == 200, resp.text
    got = query_ok_on(loop, a, lid, {"table": "projects", "select": ["title"], "filters": {"title": title}})
    assert got["data"] == [{"title": title}], got
    # the transaction-local role and settings ended with the read: the backend is coredb's login again
    state, _, no_xid, _ = backend_state(loop, pid)
    assert state == "idle" and no_xid
    assert loop.pg.query(loop.db, "SELECT usename FROM pg_stat_activity WHERE pid = %s", (pid,))[0][0] != "coredb_user"
    assert release(loop, a, lid).status_code == 200


def test_caching_of_lease_reads_equals_the_worker_path(pg, own_redis):
    loop = start_instance(pg, own_redis, REDIS_DB + 2, CACHE_TTL="60", **LOOP_ENV)
    # a Redis database each: each instance has a cache of its own, and their behaviour is compared
    worker = start_instance(pg, own_redis, REDIS_DB + 3, db=loop.db, CACHE_TTL="60", **WORKER_ENV)
    worker.admin_email = loop.admin_email
    try:
        ladmin = admin_of(loop)
        a = user(loop)
        pid = add_projects(loop, a.id, 3, prefix="c")[0]
        for inst in (loop, worker):
            query_ok(inst, a, {"table": "projects", "select": ["id"]})   # namespace loaded, quota script
        llid, wlid = acquire(loop, a), acquire(worker, a)
        body = {"table": "projects", "select": ["id", "title", "status"], "order_by": [{"column": "title"}]}
        before = lease_reads(loop, ladmin)
        seen = {"loop": [], "worker": []}
        for step in range(3):
            for name, inst, lid in (("loop", loop, llid), ("worker", worker, wlid)):
                for _ in range(2):
                    out = lq(inst, a, lid, body)
                    assert out.status_code == 200, out.text
                    seen[name].append((out.json()["cached"], without_time(out.content).replace(b"true", b"false")))
                    # the worker instance's entry appears in its own Redis only after its answer
                    time.sleep(0.05)
            # through both instances: each bumps the table's generation in its own Redis
            for inst in (loop, worker):
                upd = tx(inst, a, [{"database": "postgresql", "operation": "update", "table": "projects",
                                    "filters": {"id": pid}, "data": {"status": ["draft", "done", "archived"][step]}}])
                assert upd.status_code == 200, upd.text
        assert [c for c, _ in seen["loop"]] == [c for c, _ in seen["worker"]] == [False, True] * 3, seen
        assert [x for _, x in seen["loop"]] == [x for _, x in seen["worker"]]
        d = delta(before, lease_reads(loop, ladmin))
        # each miss ran on the lease's connection on the loop; each hit was answered on the loop
        assert d["answered"] == 3 and d["adm_lease"] == 3 and d["handed_off"] == 0, d
        assert d["adm_answered"] >= 3, d
        assert release(loop, a, llid).status_code == 200 and release(worker, a, wlid).status_code == 200
    finally:
        worker.stop_clean()
        loop.stop_clean()


# ---- refusals and hostile input ----

def test_refusals_and_hostile_input_as_the_worker_answers_them(pair):
    loop, worker = pair
    ladmin = admin_of(loop)
    alice, bob = user(loop), user(loop)
    for acct in (alice, bob):
        query_ok(loop, acct, {"table": "projects", "pagination": {"limit": 1}})
    l_alice, w_alice = acquire(loop, alice), acquire(worker, alice)
    l_bob = acquire(loop, bob)
    body = {"table": "projects"}
    before = lease_reads(loop, ladmin)

    def both(acct, lid_loop, lid_worker, status, code, b=body):
        on_loop, on_worker = lq(loop, acct, lid_loop, b), lq(worker, acct, lid_worker, b)
        err = assert_error(on_loop, status, code)
        werr = assert_error(on_worker, status, code)
        assert err["message"] == werr["message"], (err, werr)
        assert "SELECT" not in on_loop.text and "DROP" not in on_loop.text
        return err

    refused = 0
    # other users' ids (bob's lease by alice; alice's by the admin: a lease is its owner's)
    both(alice, l_bob, acquire(worker, bob), 404, "NOT_FOUND")
    both(ladmin, l_alice, w_alice, 404, "NOT_FOUND")
    refused += 2
    # forged, malformed, SQL, over-long ids
    for bad in (str(uuid.uuid4()), "not-a-uuid", "' OR 1=1 --", "00000000-0000-0000-0000-000000000000'; "
                "DROP TABLE users; --", "x" * 4000, l_alice.upper() + "0"):
        both(alice, bad, bad, 404, "NOT_FOUND")
        refused += 1
    # no token, a forged token: 401 before anything about the lease
    for hdrs in ({"X-Connection-ID": l_alice},
                 {"X-Connection-ID": l_alice, "Authorization": "Bearer " + alice.token[:-4] + "AAAA"}):
        assert_error(loop.post(QUERY, json=body, headers=hdrs), 401, None)
    # bodies the worker refuses: the same error (the lease is checked out, then given back)
    for raw in (b"{", b"[1,2]", b'{"table": 5}', b'{"table": "projects", "pagination": {"limit": -1}}',
                b'{"table": "projects\\"; DROP TABLE users; --"}', b'{"table": "' + b"x" * 100000 + b'"}',
                b'{"table": "projects", "filters": {"created_at": "not a time"}}',
                b'{"table": "projects", "filters": {"id": "\'; DROP TABLE users; --"}}'):
        hl, hw = on_lease(alice, l_alice), on_lease(alice, w_alice)
        hl["Content-Type"] = hw["Content-Type"] = "application/json"
        on_loop, on_worker = loop.post(QUERY, data=raw, headers=hl), worker.post(QUERY, data=raw, headers=hw)
        assert 400 <= on_loop.status_code < 500, (raw[:40], on_loop.status_code, on_loop.text[:200])
        assert on_loop.status_code == on_worker.status_code, (raw[:40], on_loop.text[:200], on_worker.text[:200])
        assert on_loop.json()["error"]["code"] == on_worker.json()["error"]["code"]
        assert on_loop.json()["error"]["message"] == on_worker.json()["error"]["message"]
    # the lease is not left checked out by any of that
    assert query_ok_on(loop, alice, l_alice, body)["cached"] is False
    # released and expired leases
    assert release(loop, alice, l_alice).status_code == 200
    assert release(worker, alice, w_alice).status_code == 200
    both(alice, l_alice, w_alice, 404, "NOT_FOUND")
    refused += 1
    short_l, short_w = acquire(loop, alice, ttl=1), acquire(worker, alice, ttl=1)
    time.sleep(1.5)
    both(alice, short_l, short_w, 404, "NOT_FOUND")
    refused += 1
    d = delta(before, lease_reads(loop, ladmin))
    assert d["refused"] == refused, (d, refused)
    assert release(loop, bob, l_bob).status_code == 200


def test_a_second_read_on_a_busy_lease_is_refused_409(pair):
    loop, worker = pair
    ladmin = admin_of(loop)
    a = user(loop)
    slow = create_slow_view(loop, 1.5)
    wait_table(loop, a, slow)
    for inst in (loop, worker):
        lid = acquire(inst, a)
        pid = backend_of(inst, lid)
        t, out = in_thread(lambda: lq(inst, a, lid, {"table": slow}, timeout=CLIENT_TIMEOUT))
        assert wait_for(lambda: running_on(inst, pid), timeout=10)
        t0 = time.time()
        err = assert_error(lq(inst, a, lid, {"table": "projects"}), 409, "CONFLICT")
        assert time.time() - t0 < 1.0, "the refusal waited for the running read"
        assert "lease" in err["message"]
        t.join(CLIENT_TIMEOUT)
        assert out["resp"].status_code == 200 and out["resp"].json()["data"] == [{"id": 1}], out
        assert query_ok_on(inst, a, lid, {"table": "projects"})["cached"] is False
        assert release(inst, a, lid).status_code == 200
    # on the loop instance both the read and the refusal were the loop's
    m = lease_reads(loop, ladmin)
    assert m["refused"] >= 1 and m["answered"] >= 2, m


def settled(read, tries=30, step=0.1):
    """read()'s value once two reads step seconds apart agree (the last one read after tries)."""
    prev = read()
    for _ in range(tries):
        time.sleep(step)
        cur = read()
        if cur == prev:
            return cur
        prev = cur
    return prev


def test_release_while_a_read_runs_on_the_lease(pair):
    loop, _ = pair
    ladmin = admin_of(loop)
    a = user(loop)
    slow = create_slow_view(loop, 1.5)
    wait_table(loop, a, slow)
    active = lambda: loop.get("/api/v1/connections", headers=ladmin.headers).json()["pool_stats"]["active"]  # noqa
    # the count at rest: a connection the steps above used may still be on its way back (the
    # sanitizer build once read 1 here, then 1 again with the lease taken)
    base = settled(active)
    lid = acquire(loop, a)
    pid = backend_of(loop, lid)
    assert settled(active) == base + 1
    before = lease_reads(loop, ladmin)
    t, out = in_thread(lambda: lq(loop, a, lid, {"table": slow}, timeout=CLIENT_TIMEOUT))
    assert wait_for(lambda: running_on(loop, pid), timeout=10)
    resp = release(loop, a, lid)
    assert resp.status_code == 200, resp.text
    t.join(CLIENT_TIMEOUT)
    # the running read completes as on a worker; its checkin gives the connection to the pool
    assert out["resp"].status_code == 200, out
    assert wait_for(lambda: active() == base, timeout=5), (active(), base)
    assert_error(lq(loop, a, lid, {"table": "projects"}), 404, "NOT_FOUND")
    st = backend_state(loop, pid)
    assert st is None or (st[0] == "idle" and st[2]), st   # back in the pool idle (or closed by it)
    d = delta(before, lease_reads(loop, ladmin))
    assert d["answered"] == 1 and d["refused"] == 1, d


def killed_mid_read(inst, acct, slow):
    """Acquire, start a slow read, terminate the lease's backend mid-read, then read twice more."""
    lid = acquire(inst, acct)
    pid = backend_of(inst, lid)
    t, out = in_thread(lambda: lq(inst, acct, lid, {"table": slow}, timeout=CLIENT_TIMEOUT))
    assert wait_for(lambda: running_on(inst, pid), timeout=10)
    t0 = time.time()
    assert inst.pg.query(inst.db, "SELECT pg_terminate_backend(%s)", (pid,))[0][0] is True
    t.join(CLIENT_TIMEOUT)
    assert not t.is_alive(), "the read hung after its backend was terminated"
    took = time.time() - t0
    first = out["resp"]
    after = [lq(inst, acct, lid, {"table": "projects"}, timeout=CLIENT_TIMEOUT) for _ in range(2)]
    rel = release(inst, acct, lid)
    return lid, took, [first] + after, rel


def test_backend_killed_mid_read_answers_as_the_worker_path(pair):
    loop, worker = pair
    ladmin = admin_of(loop)
    a = user(loop)
    query_ok(loop, a, {"table": "projects", "pagination": {"limit": 1}})
    slow = create_slow_view(loop, 3)
    wait_table(loop, a, slow)
    before = lease_reads(loop, ladmin)
    _, took, got, rel = killed_mid_read(loop, a, slow)
    _, wtook, wgot, wrel = killed_mid_read(worker, a, slow)
    d = delta(before, lease_reads(loop, ladmin))
    assert took < 5 and wtook < 5, (took, wtook)
    summary = [(r.status_code, r.json().get("error", {}).get("code") if r.status_code != 200 else None)
               for r in got]
    wsummary = [(r.status_code, r.json().get("error", {}).get("code") if r.status_code != 200 else None)
                for r in wgot]
    # a clear answer, never a 500, and the same as the worker path's, read after read
    assert summary == wsummary, (summary, wsummary, [r.text[:200] for r in got], [r.text[:200] for r in wgot])
    for status, code in summary:
        assert status != 500 and status < 600, summary
        assert status == 200 or (status, code) in ((503, "DATABASE_UNAVAILABLE"), (504, "DATABASE_TIMEOUT")), summary
    assert summary[0][0] == 503, summary
    print("killed mid-read, then two reads:", summary, "release:", rel.status_code)
    # releasing such a lease answers as on the worker path
    assert rel.status_code == wrel.status_code, (rel.text, wrel.text)
    # the killed read left the loop for a worker once, after its connection was checked in
    assert d["handed_off"] >= 1, d
    # the instance is fine: a new lease reads on the loop
    lid = acquire(loop, a)
    assert query_ok_on(loop, a, lid, {"table": "projects"})["cached"] is False
    assert release(loop, a, lid).status_code == 200


def test_statement_timeout_answers_504_on_the_loop(pg, own_redis):
    inst = start_instance(pg, own_redis, REDIS_DB + 4, CACHE_TTL="0", DB_STATEMENT_TIMEOUT="1000", **LOOP_ENV)
    try:
        admin = admin_of(inst)
        a = user(inst)
        view = create_slow_view(inst, 0)
        wait_table(inst, a, view)
        slow = create_slow_view(inst, 3)
        wait_for(lambda: query(inst, a, {"table": slow}).status_code != 404, timeout=15)
        lid = acquire(inst, a)
        pid = backend_of(inst, lid)
        before = lease_reads(inst, admin)
        t0 = time.time()
        resp = lq(inst, a, lid, {"table": slow}, timeout=CLIENT_TIMEOUT)
        took = time.time() - t0
        err = assert_error(resp, 504, "DATABASE_TIMEOUT")
        assert err["message"] == "Database statement timed out"
        assert took < 2.5, f"{took:.2f} s: the statement ran twice"
        d = delta(before, lease_reads(inst, admin))
        assert d["timeout"] == 1 and d["handed_off"] == 0, d
        # the server cancelled the statement: the connection is clean and the lease reads again on it
        state, _, no_xid, _ = backend_state(inst, pid)
        assert state == "idle" and no_xid
        assert query_ok_on(inst, a, lid, {"table": view})["data"] == [{"id": 1}]
        assert backend_of(inst, lid) == pid
        assert release(inst, a, lid).status_code == 200
    finally:
        inst.stop_clean()


def test_sigterm_with_lease_reads_in_flight(pg, own_redis):
    inst = start_instance(pg, own_redis, REDIS_DB + 5, CACHE_TTL="0", SHUTDOWN_GRACE_MS="3000", **LOOP_ENV)
    a = user(inst)
    stuck = create_slow_view(inst, 20)
    quick = create_slow_view(inst, 1)
    wait_table(inst, a, quick)             # the catalog that knows quick knows stuck, created before it
    lids = [acquire(inst, a) for _ in range(4)]
    threads, outs = [], []
    for i, lid in enumerate(lids):
        view = quick if i < 2 else stuck
        t, out = in_thread(lambda lid=lid, view=view: lq(inst, a, lid, {"table": view}, timeout=CLIENT_TIMEOUT + 10))
        threads.append(t)
        outs.append(out)
    assert wait_for(lambda: sum(running_on(inst, backend_of(inst, lid)) for lid in lids) == 4, timeout=10)
    t0 = time.time()
    inst.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(CLIENT_TIMEOUT + 10)
    assert not any(t.is_alive() for t in threads), "a lease read hung across SIGTERM"
    rc = inst.proc.wait(30)
    assert rc == 0, inst.log()[-2000:]
    assert time.time() - t0 < 15
    statuses = [o["resp"].status_code if "resp" in o else repr(o.get("error")) for o in outs]
    # within the grace period: answered on the loop
    assert statuses[:2] == [200, 200], statuses
    # past it the loop's teardown ends the jobs (their connections broken, nothing waits on them);
    # as for every request still running at the grace deadline (server.c), the client gets a 503
    # or the connection closed without an answer: never a hang
    for o in outs[2:]:
        if "resp" in o:
            assert_error(o["resp"], 503, None)
        else:
            assert isinstance(o["error"], requests.ConnectionError), statuses
    log = inst.log()
    assert "requests still running at the deadline" in log, log[-2000:]
    assert "AddressSanitizer" not in log and "LeakSanitizer" not in log and "runtime error:" not in log, log[-4000:]


def test_the_reaper_ends_a_lease_while_a_read_runs_on_it(pair):
    loop, worker = pair
    ladmin = admin_of(loop)
    a = user(loop)
    slow = create_slow_view(loop, 4)
    wait_table(loop, a, slow)
    active = lambda inst: inst.get("/api/v1/connections", headers=ladmin.headers).json()["pool_stats"]["active"]  # noqa
    answers = {}
    for name, inst in (("loop", loop), ("worker", worker)):
        base = active(inst)
        lid = acquire(inst, a, ttl=2)
        pid = backend_of(inst, lid)
        t, out = in_thread(lambda: lq(inst, a, lid, {"table": slow}, timeout=CLIENT_TIMEOUT))
        assert wait_for(lambda: running_on(inst, pid), timeout=10)
        # the lease expires and the reaper ends it while the read still runs
        assert wait_for(lambda: inst.pg.query(inst.db, "SELECT state FROM coredb.leases WHERE id = %s",
                                              (lid,))[0][0] != "active", timeout=8)
        assert t.is_alive(), "the read ended before the reaper: make the view slower"
        t.join(CLIENT_TIMEOUT)
        answers[name] = (out["resp"].status_code, out["resp"].content.count(b'"id":1'))
        # its checkin gave the connection back to the pool; the id is refused from then on
        assert wait_for(lambda: active(inst) == base, timeout=5), (name, active(inst), base)
        assert_error(lq(inst, a, lid, {"table": "projects"}), 404, "NOT_FOUND")
    assert answers["loop"] == answers["worker"], answers


def test_many_callers_on_one_lease_get_200_or_409_only(pair):
    loop, _ = pair
    ladmin = admin_of(loop)
    a = user(loop)
    query_ok(loop, a, {"table": "projects", "pagination": {"limit": 1}})
    lid = acquire(loop, a)
    before = lease_reads(loop, ladmin)

    def call(i):
        body = {"table": "projects", "filters": {"title": f"c-{i}-{uuid.uuid4().hex}"}}
        return lq(loop, a, lid, body).status_code
    import concurrent.futures
    with concurrent.futures.ThreadPoolExecutor(12) as ex:
        codes = list(ex.map(call, range(150)))
    assert set(codes) <= {200, 409}, codes
    assert 200 in codes, codes
    d = delta(before, lease_reads(loop, ladmin))
    # every 200 ran on the loop, every 409 was refused there; nothing reached a worker
    assert d["answered"] == codes.count(200) and d["refused"] == codes.count(409) and d["handed_off"] == 0, d
    assert call("after") == 200
    assert release(loop, a, lid).status_code == 200


def test_read_replicas_configured_a_lease_read_still_runs_on_the_loop(pg, own_redis):
    """A lease's connection never reads a replica (query_run.c), so DATABASE_READ_URLS does not send its
    reads to a worker as it does plain misses. The "replica" is the primary under another name: no standby,
    never in rotation (docs/replicas.md), which is enough to configure replicas."""
    db = pg.create_database()
    inst = start_instance(pg, own_redis, REDIS_DB + 6, db=db, CACHE_TTL="0",
                          DATABASE_READ_URLS=f"postgresql://postgres@localhost:{pg.port}/{db}", **LOOP_ENV)
    try:
        admin = admin_of(inst)
        a = user(inst)
        add_projects(inst, a.id, 4, prefix="r")
        query_ok(inst, a, {"table": "projects", "pagination": {"limit": 1}})
        lid = acquire(inst, a)
        before, plain = lease_reads(inst, admin), metric(inst, admin, "coredb_http_loop_queries_total")
        body = {"table": "projects", "select": ["title"], "order_by": [{"column": "title"}]}
        on_lease_resp = lq(inst, a, lid, body)
        without = query(inst, a, body)
        assert on_lease_resp.status_code == without.status_code == 200, on_lease_resp.text
        assert without_time(on_lease_resp.content) == without_time(without.content)
        assert [r["title"] for r in on_lease_resp.json()["data"]] == ["r000", "r001", "r002", "r003"]
        d = delta(before, lease_reads(inst, admin))
        assert d["answered"] == 1 and d["adm_lease"] == 1, d
        # the plain miss went to a worker (replicas configured), as before
        after = metric(inst, admin, "coredb_http_loop_queries_total")
        assert after.get("answered", 0) == plain.get("answered", 0), (plain, after)
        assert release(inst, a, lid).status_code == 200
    finally:
        inst.stop_clean()


def test_prepared_names_are_shared_with_the_worker_path_and_the_table_can_fill(pair):
    """The loop prepares a lease read's statements under names of the connection's own table
    (store/pool.h), which the worker path uses on the same connection too: interleaving loop reads,
    worker transactions and worker reads on one lease never reuses a name (PostgreSQL would refuse it:
    "prepared statement already exists"), and past CDB_POOL_MAX_STATEMENTS (64) shapes the loop runs
    the rest unnamed; every answer equals the worker instance's."""
    import itertools
    loop, worker = pair
    ladmin = admin_of(loop)
    a = user(loop)
    add_projects(loop, a.id, 3, prefix="n")
    query_ok(loop, a, {"table": "projects", "pagination": {"limit": 1}})
    llid, wlid = acquire(loop, a), acquire(worker, a)
    cols = ["id", "title", "status", "description", "settings", "created_at", "updated_at", "user_id"]
    shapes = [list(c) for k in (1, 2, 3) for c in itertools.combinations(cols, k)][:80]
    before = lease_reads(loop, ladmin)
    handed = 0
    for i, sel in enumerate(shapes):
        body = {"table": "projects", "select": sel, "order_by": [{"column": "title"}]}
        on_loop, on_worker = lq(loop, a, llid, body), lq(worker, a, wlid, body)
        assert on_loop.status_code == on_worker.status_code == 200, (sel, on_loop.text[:300])
        assert without_time(on_loop.content) == without_time(on_worker.content), sel
        if i % 10 == 3:
            # a transaction on the lease (a worker: it prepares its own statements on the connection)
            resp = loop.post("/api/v1/data/transaction", headers=on_lease(a, llid), json={"operations": [
                pg_insert("projects", {"user_id": a.id, "title": f"zz-{i}"})]})
            assert resp.status_code == 200, resp.text
            resp = worker.post("/api/v1/data/transaction", headers=on_lease(a, wlid), json={"operations": [
                {"database": "postgresql", "operation": "delete", "table": "projects",
                 "filters": {"title": f"zz-{i}"}}]})
            assert resp.status_code == 200, resp.text
        if i % 10 == 6:
            # a read the loop hands to a worker (a bad filter value): the worker runs it by the names
            # the loop recorded, on the same connection
            bad = {"table": "projects", "select": sel, "filters": {"created_at": "not a time"}}
            err = assert_error(lq(loop, a, llid, bad), 400)
            assert err["code"] == assert_error(lq(worker, a, wlid, bad), 400)["code"]
            handed += 1
    d = delta(before, lease_reads(loop, ladmin))
    assert d["answered"] == len(shapes) and d["handed_off"] == handed, (d, len(shapes), handed)
    assert release(loop, a, llid).status_code == 200 and release(worker, a, wlid).status_code == 200
