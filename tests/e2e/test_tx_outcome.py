"""Transaction outcomes end to end: Idempotency-Key on POST /data/transaction
and on user creation (replay of the byte-identical answer, 422 for another
body, 409 while the first still runs, keys per caller, key validation),
GET /data/transactions/{id} (own, foreign, absent, garbage, no token), the
ledger's 24 h expiry, and a crash test: PostgreSQL restarted in immediate
mode under 16 concurrent writers keeping a ledger of every answer, then
every 503 checked against what PostgreSQL really committed."""
import socket
import threading
import time
import uuid
from collections import Counter

import psycopg2
import pytest
import requests

from datahelp import (ISO_RE, TX, UUID_RE, add_project, admin_of, assert_error, pg_insert,
                      pg_update, query, redis_client, rop, rset, scalar, start_instance, tx, tx_ok,
                      user, wait_for)
from identity import assert_user, bearer, user_body
from servers import PgServer

# the module fixtures inst, admin, rds (conftest.py) use this Redis database
REDIS_DB = 14
STATUS = "/api/v1/data/transactions/"


def keyed(inst, acct, operations, key, raw=None):
    """POST /transaction with an Idempotency-Key; raw: the body as text instead."""
    headers = dict(acct.headers, **{"Idempotency-Key": key})
    if raw is not None:
        return inst.post(TX, data=raw, headers=dict(headers, **{"Content-Type": "application/json"}))
    return inst.post(TX, json={"operations": operations}, headers=headers)


def titles(inst, title):
    return scalar(inst, "SELECT count(*) FROM projects WHERE title = %s", (title,))


def ledger_rows(inst, key):
    return scalar(inst, "SELECT count(*) FROM coredb.tx_ledger WHERE idempotency_key = %s", (key,))


# ---- Idempotency-Key on transactions ----

def test_same_key_same_body_replays_the_answer(inst, rds):
    a = user(inst)
    title, key = f"idem-{uuid.uuid4().hex}", str(uuid.uuid4())
    ops = [pg_insert("projects", {"title": title, "user_id": a.id}), rop("incr", "idem-n")]
    first = keyed(inst, a, ops, key)
    assert first.status_code == 200, first.text
    assert "Idempotent-Replayed" not in first.headers
    out = first.json()
    assert UUID_RE.match(out["transaction_id"]) and out["status"] == "committed"
    assert out["results"][1] == {"operation": 2, "status": "success",
                                 "data": {"key": "idem-n", "value": 1}}, out
    again = keyed(inst, a, ops, key)
    assert again.status_code == 200, again.text
    assert again.headers.get("Idempotent-Replayed") == "true"
    # byte for byte the first answer: same transaction_id, same rows, same Redis results
    assert again.content == first.content
    assert titles(inst, title) == 1
    assert rds.get(f"app:user:{a.id}:idem-n") == "1", "the replay ran the Redis operation again"
    assert ledger_rows(inst, key) == 1
    # the same request with its keys in another order and other spacing is the same request
    key2 = str(uuid.uuid4())
    r1 = keyed(inst, a, None, key2, raw=(
        '{"operations": [{"database": "postgresql", "operation": "insert", "table": "projects",'
        ' "data": {"title": "%s-2", "user_id": "%s"}}]}' % (title, a.id)))
    r2 = keyed(inst, a, None, key2, raw=(
        '{"operations":[{"table":"projects","data":{"user_id":"%s","title":"%s-2"},'
        '"operation":"insert","database":"postgresql"}]}' % (a.id, title)))
    assert r1.status_code == 200 and r2.status_code == 200, (r1.text, r2.text)
    assert r2.headers.get("Idempotent-Replayed") == "true" and r2.content == r1.content
    assert titles(inst, f"{title}-2") == 1


def test_same_key_other_body_is_422(inst):
    a = user(inst)
    title, key = f"idem-{uuid.uuid4().hex}", str(uuid.uuid4())
    assert keyed(inst, a, [pg_insert("projects", {"title": title, "user_id": a.id})],
                 key).status_code == 200
    err = assert_error(keyed(inst, a, [pg_insert("projects", {"title": title + "x",
                                                              "user_id": a.id})], key),
                       422, "IDEMPOTENCY_KEY_REUSED")
    assert err["details"]["field"] == "Idempotency-Key", err
    assert titles(inst, title + "x") == 0 and titles(inst, title) == 1


def test_failed_transaction_stores_nothing(inst):
    a, b = user(inst), user(inst)
    key = str(uuid.uuid4())
    # refused by row-level security: rolled back, so the key stays free
    assert_error(keyed(inst, a, [pg_insert("projects", {"title": "x", "user_id": b.id})], key),
                 403, "FORBIDDEN")
    assert ledger_rows(inst, key) == 0
    title = f"idem-{uuid.uuid4().hex}"
    resp = keyed(inst, a, [pg_insert("projects", {"title": title, "user_id": a.id})], key)
    assert resp.status_code == 200 and "Idempotent-Replayed" not in resp.headers, resp.text
    assert titles(inst, title) == 1


def test_keys_are_per_caller(inst):
    a, b = user(inst), user(inst)
    key = "shared-" + uuid.uuid4().hex
    title = f"idem-{uuid.uuid4().hex}"
    ra = keyed(inst, a, [pg_insert("projects", {"title": title, "user_id": a.id})], key)
    rb = keyed(inst, b, [pg_insert("projects", {"title": title, "user_id": b.id})], key)
    assert ra.status_code == 200 and rb.status_code == 200, (ra.text, rb.text)
    assert "Idempotent-Replayed" not in rb.headers
    assert ra.json()["transaction_id"] != rb.json()["transaction_id"]
    assert titles(inst, title) == 2


@pytest.mark.parametrize("bad", ["", "x" * 256, "x" * 300, "a\x01b", "a\x7fb", "a b", "\u00e9t\u00e9"])
def test_invalid_keys_are_400(inst, bad):
    a = user(inst)
    title = f"idem-{uuid.uuid4().hex}"
    headers = dict(a.headers, **{"Idempotency-Key": bad.encode("latin-1")})
    resp = inst.post(TX, json={"operations": [pg_insert("projects", {"title": title,
                                                                     "user_id": a.id})]},
                     headers=headers)
    # A control character makes the whole header field invalid (RFC 9110 §5.5):
    # the HTTP layer refuses the request before any route reads the key.
    field = None if any(ord(c) < 0x20 or ord(c) == 0x7f for c in bad) else "Idempotency-Key"
    err = assert_error(resp, 400, "VALIDATION_FAILED")
    assert err["details"].get("field") == field, err
    assert titles(inst, title) == 0
    body = user_body()
    err = assert_error(inst.post("/users/", json=body, headers={"Idempotency-Key": bad.encode("latin-1")}),
                       400, "VALIDATION_FAILED")
    assert err["details"].get("field") == field, err
    assert scalar(inst, "SELECT count(*) FROM users WHERE email = %s", (body["email"],)) == 0


def test_longest_key_is_accepted(inst):
    a = user(inst)
    key = "k" * 255
    resp = keyed(inst, a, [pg_insert("projects", {"title": "long key", "user_id": a.id})], key)
    assert resp.status_code == 200, resp.text
    assert keyed(inst, a, [pg_insert("projects", {"title": "long key", "user_id": a.id})],
                 key).headers.get("Idempotent-Replayed") == "true"


def test_second_request_while_first_runs_is_409(inst):
    a = user(inst)
    pid = add_project(inst, a.id, title="locked")
    key = str(uuid.uuid4())
    ops = [pg_update("projects", {"id": pid}, {"title": "updated once"})]
    holder = psycopg2.connect(host="127.0.0.1", port=inst.pg.port, user="postgres", dbname=inst.db)
    first = {}
    try:
        with holder.cursor() as cur:
            cur.execute("SELECT 1 FROM projects WHERE id = %s FOR UPDATE", (pid,))
        thread = threading.Thread(target=lambda: first.update(resp=keyed(inst, a, ops, key)))
        thread.start()
        # the first request is inside its transaction, waiting for the row lock
        assert wait_for(lambda: scalar(inst, "SELECT count(*) FROM pg_stat_activity WHERE "
                                              "wait_event_type = 'Lock' AND datname = %s",
                                       (inst.db,)) >= 1, timeout=10)
        t0 = time.time()
        err = assert_error(keyed(inst, a, ops, key), 409, "IDEMPOTENCY_KEY_IN_PROGRESS")
        assert time.time() - t0 < 2, "the second request waited instead of answering 409"
        assert err["details"]["field"] == "Idempotency-Key", err
        assert "resp" not in first, "the first request finished while its row was locked"
    finally:
        holder.rollback()
        holder.close()
    thread.join(30)
    assert first["resp"].status_code == 200, first["resp"].text
    replay = keyed(inst, a, ops, key)
    assert replay.status_code == 200 and replay.headers.get("Idempotent-Replayed") == "true"
    assert replay.content == first["resp"].content
    assert ledger_rows(inst, key) == 1


# ---- Idempotency-Key on user creation ----

def test_user_creation_with_key(inst, admin):
    body, key = user_body(), str(uuid.uuid4())
    first = inst.post("/users/", json=body, headers={"Idempotency-Key": key})
    assert first.status_code == 201, first.text
    assert_user(first.json())
    # the retry may use the other spelling of the route: same request
    again = inst.post("/api/v1/users", json=body, headers={"Idempotency-Key": key})
    assert again.status_code == 201, again.text
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert again.content == first.content
    assert scalar(inst, "SELECT count(*) FROM users WHERE email = %s", (body["email"],)) == 1
    # anonymous callers share one key space: another body with this key is refused
    other = user_body()
    assert_error(inst.post("/users/", json=other, headers={"Idempotency-Key": key}),
                 422, "IDEMPOTENCY_KEY_REUSED")
    assert scalar(inst, "SELECT count(*) FROM users WHERE email = %s", (other["email"],)) == 0
    # ... and an authenticated caller has its own
    resp = inst.post("/users/", json=other, headers=dict(admin.headers, **{"Idempotency-Key": key}))
    assert resp.status_code == 201 and "Idempotent-Replayed" not in resp.headers, resp.text
    # without a key a retry is a duplicate, as before
    assert_error(inst.post("/users/", json=body), 409, "CONFLICT")
    # a creation that failed (duplicate email) stores nothing: the key stays free
    key2 = str(uuid.uuid4())
    assert_error(inst.post("/users/", json=dict(user_body(), email=body["email"]),
                           headers={"Idempotency-Key": key2}), 409, "CONFLICT")
    assert ledger_rows(inst, key2) == 0


# ---- GET /data/transactions/{id} ----

def test_transaction_status(inst, admin):
    a, b = user(inst), user(inst)
    out = tx_ok(inst, a, [pg_insert("projects", {"title": "status", "user_id": a.id})])
    tid = out["transaction_id"]
    resp = inst.get(STATUS + tid, headers=a.headers)
    assert resp.status_code == 200, resp.text
    st = resp.json()
    assert set(st) == {"transaction_id", "status", "committed_at"}, st
    assert st["transaction_id"] == tid and st["status"] == "committed"
    assert ISO_RE.match(st["committed_at"]), st
    assert inst.get(STATUS + tid.upper(), headers=a.headers).json() == st
    # someone else's is as absent as one that never was; an admin sees any
    err = assert_error(inst.get(STATUS + tid, headers=b.headers), 404, "NOT_FOUND")
    assert "did not commit" in err["message"], err
    assert inst.get(STATUS + tid, headers=admin.headers).json() == st
    assert_error(inst.get(STATUS + str(uuid.uuid4()), headers=a.headers), 404, "NOT_FOUND")
    for garbage in ["not-a-uuid", "1", tid[:-1], tid + "0", "%27%3B--"]:
        assert_error(inst.get(STATUS + garbage, headers=a.headers), 404, "NOT_FOUND")
    assert_error(inst.get(STATUS + tid), 401, "UNAUTHORIZED")
    # a rolled-back transaction leaves nothing behind
    before = scalar(inst, "SELECT count(*) FROM coredb.tx_ledger")
    assert_error(tx(inst, a, [pg_insert("projects", {"title": "x", "user_id": b.id})]), 403)
    assert scalar(inst, "SELECT count(*) FROM coredb.tx_ledger") == before


def test_ledger_is_not_reachable_through_the_data_api(inst, admin):
    for acct in (user(inst), admin):
        assert_error(query(inst, acct, {"table": "tx_ledger"}), 404, "UNKNOWN_TABLE")
        assert_error(tx(inst, acct, [pg_insert("tx_ledger", {"scope": "x"})]), 404, "UNKNOWN_TABLE")


def test_records_expire_after_24_hours(pg, redis_server):
    inst = start_instance(pg, redis_server, REDIS_DB)
    try:
        a = user(inst)
        key = str(uuid.uuid4())
        ops = [pg_insert("projects", {"title": "expiring", "user_id": a.id})]
        first = keyed(inst, a, ops, key).json()
        kept = tx_ok(inst, a, [pg_insert("projects", {"title": "kept", "user_id": a.id})])
        inst.pg.query(inst.db, "UPDATE coredb.tx_ledger SET created_at = now() - interval '25 hours'"
                               " WHERE transaction_id = %s", (first["transaction_id"],))
        # expired: the status is gone at once, and the key is free again
        assert_error(inst.get(STATUS + first["transaction_id"], headers=a.headers), 404)
        again = keyed(inst, a, ops, key)
        assert again.status_code == 200 and "Idempotent-Replayed" not in again.headers
        assert again.json()["transaction_id"] != first["transaction_id"]
        assert titles(inst, "expiring") == 2
        # the job deletes old rows in batches (more than one batch here) and keeps the others
        inst.pg.query(inst.db, "INSERT INTO coredb.tx_ledger (transaction_id, user_id, created_at)"
                               " SELECT gen_random_uuid(), %s, now() - interval '2 days'"
                               " FROM generate_series(1, 2500)", (a.id,))
        assert wait_for(lambda: scalar(inst, "SELECT count(*) FROM coredb.tx_ledger WHERE "
                                             "created_at < now() - interval '24 hours'") == 0,
                        timeout=75, step=0.5)
        assert inst.get(STATUS + kept["transaction_id"], headers=a.headers).status_code == 200
        assert "jobs.ledger_expired" in inst.log()
    finally:
        inst.stop_clean()


# ---- a connection cut exactly around COMMIT ----

class CutProxy:
    """A TCP proxy between coredb and PostgreSQL that, once armed, cuts the
    connection carrying a transaction's pipeline (it holds the ledger
    INSERT and COMMIT) at one of two points: "after_commit" drops the
    server's answer, so PostgreSQL committed and coredb never hears it;
    "before_commit" drops the request, so nothing reached PostgreSQL. Both
    look the same to coredb: COMMIT sent, connection lost."""

    def __init__(self, target_port):
        self.target = target_port
        self.armed = None
        self.cuts = 0
        self.lock = threading.Lock()
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", 0))
        self.listener.listen(64)
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def arm(self, where):
        with self.lock:
            self.armed = where

    def _fire(self, where, data):
        with self.lock:
            hit = self.armed == where and b"COMMIT\x00" in data and (
                b"INSERT 0 1\x00" in data if where == "after_commit" else b"tx_ledger" in data)
            if hit:
                self.armed = None
                self.cuts += 1
            return hit

    def _accept(self):
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.target))
            for src, dst, where in ((client, server, "before_commit"),
                                    (server, client, "after_commit")):
                threading.Thread(target=self._pump, args=(src, dst, where, (client, server)),
                                 daemon=True).start()

    def _pump(self, src, dst, where, pair):
        try:
            while True:
                data = src.recv(65536)
                if not data or self._fire(where, data):
                    break
                dst.sendall(data)
        except OSError:
            pass
        for s in pair:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def close(self):
        self.listener.close()


def test_connection_lost_around_commit(pg, redis_server):
    proxy = CutProxy(pg.port)
    name = pg.create_database()
    inst = start_instance(pg, redis_server, REDIS_DB, db=name,
                          DATABASE_URL=f"postgresql://postgres@127.0.0.1:{proxy.port}/{name}")
    try:
        a = user(inst)
        rds = redis_client(redis_server, REDIS_DB)

        def ops(marker):
            return [pg_insert("projects", {"title": marker, "user_id": a.id}), rset(marker, "1")]

        def unknown(resp):
            err = assert_error(resp, 503, "TRANSACTION_OUTCOME_UNKNOWN")
            assert UUID_RE.match(err["details"]["transaction_id"]), err
            return err["details"]["transaction_id"]

        def status(tid):
            resp = inst.get(STATUS + tid, headers=a.headers)
            assert resp.status_code in (200, 404), resp.text
            return resp.status_code == 200

        # committed, answer lost: 503 OUTCOME_UNKNOWN, never DATABASE_UNAVAILABLE
        m1 = f"cut-{uuid.uuid4().hex}"
        proxy.arm("after_commit")
        tid = unknown(tx(inst, a, ops(m1)))
        assert proxy.cuts == 1
        assert titles(inst, m1) == 1 and status(tid)
        # its Redis operation was left to the outbox job, which applies it since it committed
        assert wait_for(lambda: rds.get(f"app:user:{a.id}:{m1}") == "1", timeout=10)

        # not committed (the pipeline never reached PostgreSQL): same answer, status 404
        m2 = f"cut-{uuid.uuid4().hex}"
        proxy.arm("before_commit")
        tid = unknown(tx(inst, a, ops(m2)))
        assert proxy.cuts == 2
        assert titles(inst, m2) == 0 and not status(tid)
        time.sleep(2.5)            # two runs of the outbox job: nothing to apply
        assert rds.get(f"app:user:{a.id}:{m2}") is None

        # keyed, committed: the retry replays the commit instead of writing twice
        m3, key = f"cut-{uuid.uuid4().hex}", str(uuid.uuid4())
        proxy.arm("after_commit")
        tid = unknown(keyed(inst, a, ops(m3), key))
        retry = keyed(inst, a, ops(m3), key)
        assert retry.status_code == 200 and retry.headers.get("Idempotent-Replayed") == "true"
        out = retry.json()
        assert out["transaction_id"] == tid
        assert out["results"][0]["data"]["rows"][0]["title"] == m3
        assert titles(inst, m3) == 1 and status(tid)

        # keyed, not committed: the retry runs it (once)
        m4, key = f"cut-{uuid.uuid4().hex}", str(uuid.uuid4())
        proxy.arm("before_commit")
        tid = unknown(keyed(inst, a, ops(m4), key))
        assert titles(inst, m4) == 0 and not status(tid)
        retry = keyed(inst, a, ops(m4), key)
        assert retry.status_code == 200 and "Idempotent-Replayed" not in retry.headers
        assert retry.json()["transaction_id"] != tid
        assert titles(inst, m4) == 1
        assert proxy.cuts == 4
    finally:
        inst.stop_clean()
        proxy.close()


# ---- the crash ----

WRITERS = 16
RUN_S = 14.0
RETRY_S = 60.0


def test_immediate_restart_under_concurrent_writers(redis_server):
    # synchronous_commit on: an immediate shutdown must not lose an answered commit
    server = PgServer("pg-crash", extra_opts="-c synchronous_commit=on")
    inst = None
    try:
        inst = start_instance(server, redis_server, REDIS_DB, DB_POOL_MAX="20",
                              RATE_LIMIT_USER="0", RATE_LIMIT_ANON="0")
        rds = redis_client(redis_server, REDIS_DB)
        accounts = [user(inst) for _ in range(4)]
        ledger, lock = [], threading.Lock()   # one entry per marker
        restarts = []
        stop_at = time.time() + RUN_S

        def attempt(acct, marker, key):
            ops = [pg_insert("projects", {"title": marker, "user_id": acct.id}),
                   rset(f"mk:{marker}", "1")]
            headers = dict(acct.headers)
            if key:
                headers["Idempotency-Key"] = key
            t0 = time.time()
            try:
                resp = requests.post(inst.base + TX, json={"operations": ops}, headers=headers,
                                     timeout=30)
            except requests.RequestException as exc:
                return {"t0": t0, "t1": time.time(), "status": None, "error": repr(exc)}
            body = resp.json()
            got = {"t0": t0, "t1": time.time(), "status": resp.status_code,
                   "replayed": resp.headers.get("Idempotent-Replayed") == "true"}
            if resp.status_code == 200:
                got["tid"] = body["transaction_id"]
            else:
                got["code"] = body["error"]["code"]
                got["tid"] = body["error"]["details"].get("transaction_id")
            return got

        def writer(i):
            acct = accounts[i % len(accounts)]
            use_key = i % 4 != 3    # a quarter sends no key and never retries: the control group
            n = 0
            while time.time() < stop_at and n < 400:
                marker = f"crash-{i}-{n}-{uuid.uuid4().hex[:8]}"
                key = str(uuid.uuid4()) if use_key else None
                entry = {"marker": marker, "keyed": use_key, "attempts": [], "acct": acct}
                give_up = time.time() + RETRY_S
                while True:
                    got = attempt(acct, marker, key)
                    entry["attempts"].append(got)
                    retry = got["status"] is None or got["status"] == 503
                    if not use_key or not retry or time.time() > give_up:
                        break
                    time.sleep(0.1)
                with lock:
                    ledger.append(entry)
                n += 1

        def crasher():
            for delay in (3.0, 4.0):
                time.sleep(delay)
                t0 = time.time()
                server.restart("immediate")
                restarts.append((t0, time.time()))

        threads = [threading.Thread(target=writer, args=(i,)) for i in range(WRITERS)]
        threads.append(threading.Thread(target=crasher))
        for t in threads:
            t.start()
        for t in threads:
            t.join(RUN_S + RETRY_S + 60)
        assert not any(t.is_alive() for t in threads), "a writer never finished"
        assert len(restarts) == 2
        assert wait_for(lambda: inst.get("/health/ready").status_code == 200, timeout=30)

        present = dict(server.query(inst.db, "SELECT title, count(*) FROM projects "
                                             "WHERE title LIKE 'crash-%%' GROUP BY title"))
        attempts = [a for e in ledger for a in e["attempts"]]
        assert not [a for a in attempts if a["status"] is None], \
            [a for a in attempts if a["status"] is None][:5]
        overlapped = [a for a in attempts
                      if any(a["t0"] <= r1 and a["t1"] >= r0 for r0, r1 in restarts)]
        assert overlapped, "no request was in flight during a restart: nothing was tested"

        def status_of(acct, tid):
            resp = inst.get(STATUS + tid, headers=acct.headers)
            assert resp.status_code in (200, 404), resp.text
            return resp.status_code == 200

        counts = Counter()
        for e in ledger:
            marker, acct, tries = e["marker"], e["acct"], e["attempts"]
            # never a duplicate, whatever happened
            assert present.get(marker, 0) <= 1, (marker, tries)
            for a in tries:
                counts[(a["status"], a.get("code"), a.get("replayed", False))] += 1
                assert a["status"] in (200, 503), (marker, a)
                if a["status"] == 503:
                    assert a["code"] in ("TRANSACTION_OUTCOME_UNKNOWN", "DATABASE_UNAVAILABLE",
                                         "POOL_EXHAUSTED"), a
            final = tries[-1]
            unknown = [a for a in tries if a.get("code") == "TRANSACTION_OUTCOME_UNKNOWN"]
            for a in unknown:
                assert a["tid"] and UUID_RE.match(a["tid"]), a
            if final["status"] == 200:
                assert present.get(marker) == 1, (marker, tries)
                # the committing attempt: this one, or (a replay) an earlier OUTCOME_UNKNOWN
                if final["replayed"]:
                    assert final["tid"] in [a["tid"] for a in unknown], (marker, tries)
                committed_tid = final["tid"]
                assert status_of(acct, committed_tid)
            elif not e["keyed"] and final.get("code") != "TRANSACTION_OUTCOME_UNKNOWN":
                # a 503 that is not OUTCOME_UNKNOWN must not have committed
                assert marker not in present, (marker, tries)
                committed_tid = None
            else:
                committed_tid = None
            for a in unknown:
                committed = status_of(acct, a["tid"])
                counts["unknown_committed" if committed else "unknown_not_committed"] += 1
                if committed_tid is not None or e["keyed"]:
                    assert committed == (a["tid"] == committed_tid), (marker, tries)
                else:
                    assert committed == (marker in present), (marker, tries)
            if e["keyed"]:
                assert final["status"] == 200, ("retries never got a definitive answer", marker, tries)
        # Redis: the outbox applied every committed marker's set (here or by the job),
        # and none of a transaction that did not commit
        assert wait_for(lambda: scalar(inst, "SELECT count(*) FROM coredb.redis_outbox") == 0,
                        timeout=20)
        for e in ledger:
            applied = rds.get(f"app:user:{e['acct'].id}:mk:{e['marker']}") is not None
            assert applied == (e["marker"] in present), e
        counts["markers"] = len(ledger)
        counts["attempts"] = len(attempts)
        counts["overlapped"] = len(overlapped)
        print("\ncrash test counts:", dict(counts))
    finally:
        if inst is not None:
            inst.stop_clean()
        server.destroy()
