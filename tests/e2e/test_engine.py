"""The request engine under faults (issue 8): properties of the request path
that must hold whether admission and cache hits run on worker threads (today)
or on the event loops with asynchronous Redis (the engine of issue 8).

- slow work (pg_sleep on every pooled connection) does not delay data-API
  cache hits served by the same single loop;
- a PostgreSQL restart (immediate: backends die mid-statement) while 64
  clients run hits, misses and slow statements: every request is answered
  (200, or 503/504 in the error envelope), none hangs, none gets a 500 or a
  closed connection; queries succeed again soon after;
- Redis killed and restarted from its snapshot under load: every request
  answered, no page older than a write made during the outage, hits resume,
  and a session ended while Redis was down is refused after Redis comes back
  with its old positive copy of that session (test_ended_session_is_not_
  revived_... proves the very next request is refused);
- SIGTERM with 32 requests in flight (slow statements, hits, misses): each
  gets an answer (completed, or 503 in the envelope), the process exits 0;
- two instances sharing PostgreSQL and Redis: a logout on one is refused on
  the very next request on the other, and a write through one is seen by the
  next read of a query the other had cached (20 rounds each, both ways);
  the same with the subscriptions cut (CLIENT KILL TYPE pubsub: the
  first-level caches' weak spot) and with Redis killed under both instances.

Two tests failed before the engine of issue 8 (they were xfail until it
landed): hits behind slow work (they waited for a worker), and an ended
session revived by a Redis snapshot before the outbox wrote its mark (session
copies are now trusted only once the outbox is applied after a recovery).

Every load loop is bounded in count and in time; every request has a client
timeout, and a timeout is a failure (a hang), never a pass.
"""
import http.client
import json
import signal
import threading
import time
import uuid

import pytest
import requests

from datahelp import (QUERY, add_projects, pg_insert, pg_update, query, query_ok, redis_client,
                      start_instance, tx_ok, user, wait_for)
from identity import Account, PASSWORD, assert_error, login

# Redis database of this module on the shared Redis (no other module uses 2)
REDIS_DB = 2

CLIENT_TIMEOUT = 15          # s: an answer later than this counts as a hang
# what a data request may answer while PostgreSQL is away (docs/http.md,
# "Errors from the database layer")
DB_DOWN = {503: {"DATABASE_UNAVAILABLE", "POOL_EXHAUSTED", "TRANSACTION_OUTCOME_UNKNOWN"},
           504: {"DATABASE_TIMEOUT"}}


def percentile(values, p):
    ordered = sorted(values)
    if not ordered:
        return float("inf")
    k = min(len(ordered) - 1, max(0, int(round(p / 100.0 * len(ordered) + 0.5)) - 1))
    return ordered[k]


def projects_body(title=None, limit=20):
    """A page of the caller's projects; with title, a query nothing else asks (a miss)."""
    body = {"table": "projects", "select": ["id", "title"],
            "order_by": [{"column": "title", "direction": "asc"}],
            "pagination": {"page": 1, "limit": limit}}
    if title is not None:
        body["filters"] = {"title": title}
    return body


class Outcome:
    """One request: when it started and ended, and what came back."""
    __slots__ = ("kind", "t0", "t1", "status", "code", "cached", "error", "who", "titles")

    def __init__(self, kind, t0, t1, status=None, code=None, cached=None, error=None):
        self.kind, self.t0, self.t1 = kind, t0, t1
        self.status, self.code, self.cached, self.error = status, code, cached, error
        self.who, self.titles = None, None

    def __repr__(self):
        return (f"<{self.kind} {self.status} {self.code} cached={self.cached} "
                f"{self.t1 - self.t0:.3f}s {self.error or ''}>")


def call(session, inst, kind, path, body, headers=None):
    """POST path; an Outcome whatever happens (a client exception is recorded, not raised)."""
    t0 = time.time()
    try:
        resp = session.post(inst.base + path, json=body, headers=headers or {},
                            timeout=(5, CLIENT_TIMEOUT))
    except requests.RequestException as exc:
        return Outcome(kind, t0, time.time(), error=f"{type(exc).__name__}: {exc}")
    t1 = time.time()
    out = Outcome(kind, t0, t1, status=resp.status_code)
    out.who = (headers or {}).get("Authorization")
    try:
        doc = resp.json()
    except ValueError:
        out.error = f"not JSON: {resp.text[:200]!r}"
        return out
    if resp.status_code == 200:
        out.cached = doc.get("cached") if isinstance(doc, dict) else None
        if isinstance(doc, dict) and isinstance(doc.get("data"), list):
            out.titles = {r.get("title") for r in doc["data"] if isinstance(r, dict)}
    else:
        err = doc.get("error") if isinstance(doc, dict) else None
        if not isinstance(err, dict) or set(err) != {"code", "message", "details", "timestamp",
                                                     "request_id"}:
            out.error = f"no error envelope: {resp.text[:200]!r}"
        else:
            out.code = err["code"]
    return out


def bad_outcomes(outcomes, allowed):
    """Outcomes that are neither 200 nor an allowed {status: {codes}} error."""
    bad = []
    for o in outcomes:
        if o.error is not None:
            bad.append(o)
        elif o.status == 200:
            continue
        elif o.code not in allowed.get(o.status, ()):
            bad.append(o)
    return bad


class Load:
    """Client threads, each with its own keep-alive session, looping over a
    request maker until stopped, at most max_each requests each."""

    def __init__(self, inst, makers, max_each=400):
        self.inst = inst
        self.stop = threading.Event()
        self.outcomes = []
        self.lock = threading.Lock()
        self.threads = [threading.Thread(target=self._run, args=(m, max_each), daemon=True)
                        for m in makers]

    def _run(self, maker, max_each):
        session = requests.Session()
        mine = []
        try:
            for i in range(max_each):
                if self.stop.is_set():
                    break
                kind, path, body, headers = maker(i)
                mine.append(call(session, self.inst, kind, path, body, headers))
        finally:
            session.close()
            with self.lock:
                self.outcomes.extend(mine)

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def finish(self, timeout=CLIENT_TIMEOUT + 10):
        self.stop.set()
        deadline = time.time() + timeout
        for t in self.threads:
            t.join(max(0.1, deadline - time.time()))
        alive = sum(t.is_alive() for t in self.threads)
        assert alive == 0, f"{alive} client threads still waiting for an answer (a hang)"
        return self.outcomes


def hit_miss_makers(accounts, n, sleepers=0, sleep_s=0.3):
    """n request makers over the accounts: even ones repeat their account's warm
    page (hits), odd ones ask a title never asked before (misses); the first
    `sleepers` run /test/sleep instead (statements in PostgreSQL)."""
    makers = []
    for j in range(n):
        acct = accounts[j % len(accounts)]
        if j < sleepers:
            makers.append(lambda i: ("sleep", "/test/sleep", {"seconds": sleep_s}, {}))
        elif j % 2 == 0:
            makers.append(lambda i, a=acct: ("hit", QUERY, projects_body(), a.headers))
        else:
            makers.append(lambda i, a=acct: ("miss", QUERY, projects_body(uuid.uuid4().hex),
                                             a.headers))
    return makers


def warm(inst, accounts):
    for a in accounts:
        query_ok(inst, a, projects_body())
        assert query_ok(inst, a, projects_body())["cached"] is True


def sleeping_statements(pg_server, db):
    rows = pg_server.query(db, "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' "
                               "AND query LIKE '%pg_sleep%' AND pid <> pg_backend_pid()")
    return rows[0][0]


def ended_session_answers(checks, since, seconds=3.0):
    """Runs every check (label, callable -> Response) in turn for `seconds`:
    [(label, s after `since`, status)] of every answer, in order."""
    seen = []
    deadline = time.time() + seconds
    while time.time() < deadline:
        for label, check in checks:
            r = check()
            code = r.json().get("error", {}).get("code") if r.status_code != 200 else None
            seen.append((label, round(time.time() - since, 2), r.status_code, code))
        time.sleep(0.05)
    return seen


def assert_ended_session_refused(seen):
    """Every answer 401 TOKEN_REVOKED: a Redis back from an old snapshot is not
    trusted until the outbox has written the ended session's mark."""
    served = [x for x in seen if x[2:] != (401, "TOKEN_REVOKED")]
    assert not served, f"an ended session served after Redis returned (instance, s, status): {served}"
    assert len(seen) >= 5, "too few checks"


# ---- 1. cache hits are not delayed by slow work on the same loop ----

HIT_P99_BOUND = 0.100    # s; unloaded hits measure ~2-4 ms here, today's loaded hits ~1 s


def test_hits_are_not_delayed_by_slow_work_on_the_same_loop(pg, redis_server):
    inst = start_instance(pg, redis_server, REDIS_DB, HTTP_THREADS=1, DB_POOL_MIN=4,
                          DB_POOL_MAX=4, DB_POOL_ACQUIRE_TIMEOUT=10000)
    load = None
    try:
        a = user(inst)
        add_projects(inst, a.id, 20)
        warm(inst, [a])
        session = requests.Session()

        def hits(count, budget):
            lat = []
            deadline = time.time() + budget
            for _ in range(count):
                if time.time() > deadline:
                    break
                o = call(session, inst, "hit", QUERY, projects_body(), a.headers)
                assert o.status == 200 and o.error is None, o
                assert o.cached is True, o
                lat.append(o.t1 - o.t0)
            return lat

        quiet = hits(200, 20)
        # 16 clients keep every pooled connection (4) and every worker (DB_POOL_MAX + 4 = 8)
        # busy with 1 s statements, and the worker queue non-empty
        load = Load(inst, [lambda i: ("sleep", "/test/sleep", {"seconds": 1}, {})] * 16,
                    max_each=12).start()
        assert wait_for(lambda: sleeping_statements(pg, inst.db) >= 4, timeout=10), \
            "the slow clients never held the pool: nothing is tested"
        busy = hits(200, 5)
        still = sleeping_statements(pg, inst.db)
        slow = load.finish()
        print(f"\nhits alone: n={len(quiet)} p50={percentile(quiet, 50) * 1000:.1f} ms "
              f"p99={percentile(quiet, 99) * 1000:.1f} ms; with 16 slow clients: n={len(busy)} "
              f"p50={percentile(busy, 50) * 1000:.1f} ms p99={percentile(busy, 99) * 1000:.1f} ms")
        assert still >= 4, "the slow load ended before the hits did: nothing is tested"
        # the slow requests themselves are served or refused in the envelope, never lost
        assert not bad_outcomes(slow, {503: {"POOL_EXHAUSTED"}}), bad_outcomes(slow, {})[:5]
        assert sum(o.status == 200 for o in slow) >= 4, slow[:10]
        assert len(busy) == 200, f"only {len(busy)} of 200 hits answered in 5 s behind slow work"
        assert percentile(busy, 99) < HIT_P99_BOUND, \
            f"p99 of hits {percentile(busy, 99) * 1000:.0f} ms behind slow work"
    finally:
        if load is not None:
            load.stop.set()
        inst.stop_clean()


# ---- 2. PostgreSQL restart with requests in flight ----

def test_postgresql_restart_with_requests_in_flight(private_pg, redis_server):
    inst = start_instance(private_pg, redis_server, REDIS_DB, HTTP_THREADS=2, DB_POOL_MAX=8,
                          DB_POOL_ACQUIRE_TIMEOUT=3000)
    load = None
    try:
        accounts = [user(inst) for _ in range(8)]
        for a in accounts:
            add_projects(inst, a.id, 5)
        warm(inst, accounts)
        load = Load(inst, hit_miss_makers(accounts, 64, sleepers=6)).start()
        time.sleep(1.0)
        assert wait_for(lambda: sleeping_statements(private_pg, inst.db) >= 1, timeout=5), \
            "no statement in PostgreSQL before the restart: nothing is tested"
        r0 = time.time()
        private_pg.restart("immediate")     # every backend dies mid-statement
        r1 = time.time()
        time.sleep(2.0)
        outcomes = load.finish()
        load = None

        bad = bad_outcomes(outcomes, DB_DOWN)
        assert not bad, f"{len(bad)} requests lost, hung or badly answered: {bad[:8]}"
        across = [o for o in outcomes if o.t0 <= r1 and o.t1 >= r0]
        refused = [o for o in outcomes if o.status != 200]
        print(f"\n{len(outcomes)} requests, {len(across)} in flight across the restart "
              f"({r1 - r0:.2f} s), {len(refused)} refused: "
              f"{sorted({(o.status, o.code) for o in refused})}; slowest "
              f"{max(o.t1 - o.t0 for o in outcomes):.2f} s")
        assert len(across) >= 32, f"only {len(across)} requests overlapped the restart"
        assert any(o.status != 200 for o in across), \
            "no request felt the restart: nothing is tested"
        assert sum(o.status == 200 for o in outcomes) > len(outcomes) // 4, refused[:8]

        # after PostgreSQL is back, a fresh miss succeeds within a bound, then every kind does
        a = accounts[0]
        t0 = time.time()
        back = wait_for(lambda: query(inst, a, projects_body(uuid.uuid4().hex),
                                      timeout=CLIENT_TIMEOUT).status_code == 200, timeout=15)
        assert back, f"queries still fail {time.time() - t0:.1f} s after PostgreSQL returned"
        for acct in accounts:
            out = query_ok(inst, acct, projects_body(limit=50))
            assert len(out["data"]) == 5 and out["pagination"]["total"] == 5, out
            assert query_ok(inst, acct, projects_body(uuid.uuid4().hex))["data"] == []
        assert inst.post("/test/sleep", json={"seconds": 0}).status_code == 200
    finally:
        if load is not None:
            load.stop.set()
        inst.stop_clean()


# ---- 3. Redis goes away mid-run ----

def test_redis_killed_and_restarted_under_load(pg, private_redis):
    inst = start_instance(pg, private_redis, 0, HTTP_THREADS=2, DB_POOL_MAX=8)
    rds = redis_client(private_redis, 0)
    load = None
    try:
        accounts = [user(inst) for _ in range(4)]
        for a in accounts:
            add_projects(inst, a.id, 3)
        warm(inst, accounts)
        victim = user(inst)
        writer = accounts[0]
        sid_key = f"coredb:session:{victim.session['session_id']}"
        assert victim.me().status_code == 200
        assert rds.get(sid_key) == victim.id, "no positive copy of the session: nothing is tested"

        load = Load(inst, hit_miss_makers(accounts, 32)).start()
        time.sleep(0.8)
        # the snapshot keeps the positive session copy and the cached pages as they are now
        rds.save()
        private_redis.proc.send_signal(signal.SIGKILL)
        private_redis.proc.wait(10)
        k0 = time.time()
        # while Redis is away: the session ends and a cached page goes stale
        resp = inst.post("/api/v1/auth/logout", headers=victim.headers)
        assert resp.status_code == 200, resp.text
        assert_error(victim.me(), 401, "TOKEN_REVOKED")
        new_title = "written-while-redis-was-down"
        tx_ok(inst, writer, [pg_insert("projects", {"user_id": writer.id, "title": new_title})])
        w1 = time.time()
        down = query_ok(inst, writer, projects_body())
        assert new_title in [r["title"] for r in down["data"]], down
        time.sleep(1.5)
        private_redis.start()               # same port and directory: the old snapshot
        k1 = time.time()
        assert rds.dbsize() > 0, "Redis came back empty: nothing stale to guard against"
        restored = rds.get(sid_key)      # the old positive copy, unless the outbox already ran
        assert restored in (victim.id, "revoked"), restored

        # once Redis is back, the ended session is refused from the very next request
        assert_ended_session_refused(ended_session_answers(
            [("A", lambda: query(inst, victim, projects_body(), timeout=CLIENT_TIMEOUT))], k1))
        assert wait_for(lambda: rds.get(sid_key) == "revoked", timeout=8), rds.get(sid_key)
        assert_error(query(inst, victim, projects_body()), 401, "TOKEN_REVOKED")

        # hits resume, and none of them is older than the write made during the outage
        def fresh_hit():
            out = query_ok(inst, writer, projects_body())
            assert new_title in [r["title"] for r in out["data"]], out
            return out["cached"]
        assert wait_for(fresh_hit, timeout=10), "no cache hit 10 s after Redis returned"
        time.sleep(0.5)
        outcomes = load.finish()
        load = None

        bad = bad_outcomes(outcomes, {503: {"POOL_EXHAUSTED"}})
        assert not bad, f"{len(bad)} requests lost, hung or badly answered: {bad[:8]}"
        during = [o for o in outcomes if o.t0 >= k0 and o.t1 <= k1]
        hits_after = [o for o in outcomes if o.kind == "hit" and o.t0 > k1 + 3 and o.cached]
        print(f"\nsession copy restored as {restored!r}; "
              f"{len(outcomes)} requests, {len(during)} while Redis was down "
              f"({k1 - k0:.2f} s), {sum(o.status != 200 for o in outcomes)} refused, "
              f"{len(hits_after)} hits after it returned")
        assert len(during) >= 20, f"only {len(during)} requests while Redis was down"
        # no page of the writer asked after its write returned misses the write
        pages = [o for o in outcomes if o.kind == "hit" and o.who == writer.headers["Authorization"]
                 and o.t0 > w1 and o.status == 200]
        assert len(pages) >= 10, f"only {len(pages)} reads of the written page after the write"
        stale = [o for o in pages if new_title not in o.titles]
        assert not stale, f"{len(stale)} answers older than the write: {stale[:5]}"
        assert hits_after, "the load saw no cache hit after Redis returned"
    finally:
        if load is not None:
            load.stop.set()
        inst.stop_clean()


# ---- 4. shutdown with requests in flight ----

def send_request(port, path, body, headers):
    """Opens a connection and sends one whole request; the connection, to read the answer."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=CLIENT_TIMEOUT)
    data = json.dumps(body)
    hdrs = {"Content-Type": "application/json", "Connection": "close"}
    hdrs.update(headers)
    conn.request("POST", path, body=data, headers=hdrs)
    return conn


def read_answer(conn):
    try:
        resp = conn.getresponse()
        text = resp.read().decode(errors="replace")
        return resp.status, text
    except (OSError, http.client.HTTPException) as exc:
        return None, f"{type(exc).__name__}: {exc}"
    finally:
        conn.close()


def test_sigterm_with_hits_misses_and_slow_requests_in_flight(pg, redis_server):
    inst = start_instance(pg, redis_server, REDIS_DB, HTTP_THREADS=2, DB_POOL_MIN=4,
                          DB_POOL_MAX=4, SHUTDOWN_GRACE_MS=10000, DB_POOL_ACQUIRE_TIMEOUT=8000)
    try:
        accounts = [user(inst) for _ in range(4)]
        for a in accounts:
            add_projects(inst, a.id, 3)
        warm(inst, accounts)
        answers = {}

        def client(n, kind, path, body, headers, sent):
            try:
                conn = send_request(inst.port, path, body, headers)
            except OSError as exc:
                answers[n] = (kind, None, f"send: {exc}")
                sent.set()
                return
            sent.set()
            status, text = read_answer(conn)
            answers[n] = (kind, status, text)

        jobs = [("sleep", "/test/sleep", {"seconds": 1.5}, {})] * 8
        for j in range(24):
            a = accounts[j % 4]
            jobs.append(("hit", QUERY, projects_body(), a.headers) if j % 2 == 0 else
                        ("miss", QUERY, projects_body(uuid.uuid4().hex), a.headers))
        threads, sent = [], []
        for n, (kind, path, body, headers) in enumerate(jobs):
            ev = threading.Event()
            t = threading.Thread(target=client, args=(n, kind, path, body, headers, ev), daemon=True)
            t.start()
            threads.append(t)
            sent.append(ev)
            if n == 7:   # the slow ones hold every pooled connection before the rest arrive
                assert wait_for(lambda: sleeping_statements(pg, inst.db) >= 4, timeout=10)
        for ev in sent:
            assert ev.wait(10), "a request could not be sent"
        time.sleep(0.3)   # read by the server
        in_flight = 32 - len(answers)
        t0 = time.time()
        inst.proc.send_signal(signal.SIGTERM)
        try:
            code = inst.proc.wait(20)
        except Exception:
            raise AssertionError(f"coredb still running 20 s after SIGTERM:\n{inst.log()[-3000:]}")
        took = time.time() - t0
        for t in threads:
            t.join(CLIENT_TIMEOUT + 5)
        assert not any(t.is_alive() for t in threads), "a client still waits for its answer"
        print(f"\n{in_flight} of 32 requests in flight at SIGTERM; exit {code} after {took:.2f} s; "
              f"answers {sorted((k, s) for k, s, _ in answers.values())}")
        assert code == 0, inst.log()[-3000:]
        assert took < 12, f"exit took {took:.1f} s"
        assert in_flight >= 8, f"only {in_flight} requests in flight at SIGTERM: nothing is tested"
        assert len(answers) == 32
        for n, (kind, status, text) in sorted(answers.items()):
            assert status in (200, 503), f"request {n} ({kind}): {status} {text[:300]}"
            doc = json.loads(text)
            if status == 503:
                assert set(doc) == {"error"} and doc["error"]["code"], (n, kind, doc)
            elif kind != "sleep":
                assert isinstance(doc.get("data"), list), (n, kind, doc)
        assert sum(1 for k, s, _ in answers.values() if k == "sleep" and s == 200) >= 4
        log = inst.log()
        assert "AddressSanitizer" not in log and "runtime error:" not in log, log[-3000:]
        assert "http.stopping" in log
    finally:
        inst.stop_clean()


# ---- 5. revocation and freshness across two instances ----

@pytest.fixture
def two_instances(pg, redis_server):
    name = pg.create_database()
    a = start_instance(pg, redis_server, REDIS_DB, db=name)
    b = start_instance(pg, redis_server, REDIS_DB, db=name)
    yield a, b
    b.stop_clean()
    a.stop_clean()


def on(inst, acct):
    """The same account and session, spoken to through another instance."""
    return Account(inst, acct.user, acct.password, acct.session)


def test_logout_on_one_instance_is_refused_at_once_on_the_other(two_instances):
    a, b = two_instances
    acct = user(a)
    add_projects(a, acct.id, 3)
    for i in range(20):
        x, y = (a, b) if i % 2 == 0 else (b, a)
        session = login(x, acct.email, PASSWORD)
        mine = Account(x, acct.user, PASSWORD, session)
        # both instances have just accepted the session (and cached the page)
        for inst in (y, x, y):
            query_ok(inst, on(inst, mine), projects_body())
        assert on(y, mine).me().status_code == 200
        resp = x.post("/api/v1/auth/logout", headers=mine.headers)
        assert resp.status_code == 200, resp.text
        assert_error(query(y, mine, projects_body()), 401, "TOKEN_REVOKED")
        assert_error(on(y, mine).me(), 401, "TOKEN_REVOKED")
        assert_error(query(x, mine, projects_body()), 401, "TOKEN_REVOKED")


def test_write_on_one_instance_is_read_fresh_on_the_other(two_instances):
    a, b = two_instances
    acct = user(a)
    tx_ok(a, acct, [pg_insert("projects", {"user_id": acct.id, "title": "v-init"})])
    rows = a.pg.query(a.db, "SELECT id::text FROM projects WHERE user_id = %s", (acct.id,))
    assert len(rows) == 1, rows
    pid = rows[0][0]
    body = {"table": "projects", "select": ["id", "title"], "filters": {"id": pid}}
    title = "v-init"
    for i in range(20):
        writer, reader = (a, b) if i % 2 == 0 else (b, a)
        query_ok(reader, on(reader, acct), body)
        before = query_ok(reader, on(reader, acct), body)
        assert before["cached"] is True and before["data"][0]["title"] == title, (i, before)
        title = f"v{i}-{uuid.uuid4().hex[:6]}"
        tx_ok(writer, on(writer, acct), [pg_update("projects", {"id": pid}, {"title": title})])
        after = query_ok(reader, on(reader, acct), body)
        assert after["data"] == [{"id": pid, "title": title}], (i, after)


def test_lost_subscription_never_serves_a_revoked_session_or_a_stale_page(two_instances,
                                                                          redis_server):
    """An instance whose Redis subscriptions are cut (CLIENT KILL TYPE pubsub: Redis
    itself stays up, so an invalidation published meanwhile is lost for it) must
    neither accept a session ended on the other instance nor serve a page older
    than a write made there. Today nothing subscribes and the kill is a no-op;
    with a first-level cache kept by pub/sub, this is where it would go stale."""
    a, b = two_instances
    rds = redis_client(redis_server, REDIS_DB)
    acct = user(a)
    tx_ok(a, acct, [pg_insert("projects", {"user_id": acct.id, "title": "s-init"})])
    pid = a.pg.query(a.db, "SELECT id::text FROM projects WHERE user_id = %s", (acct.id,))[0][0]
    body = {"table": "projects", "select": ["id", "title"], "filters": {"id": pid}}
    title = "s-init"
    for i in range(10):
        writer, reader = (a, b) if i % 2 == 0 else (b, a)
        session = login(writer, acct.email, PASSWORD)
        mine = Account(writer, acct.user, PASSWORD, session)
        # the reader has accepted the session and cached the page
        query_ok(reader, on(reader, mine), body)
        before = query_ok(reader, on(reader, mine), body)
        assert before["cached"] is True and before["data"][0]["title"] == title, (i, before)
        rds.client_kill_filter(_type="pubsub")
        title = f"s{i}-{uuid.uuid4().hex[:6]}"
        tx_ok(writer, mine, [pg_update("projects", {"id": pid}, {"title": title})])
        after = query_ok(reader, on(reader, mine), body)
        assert after["data"] == [{"id": pid, "title": title}], (i, after)
        rds.client_kill_filter(_type="pubsub")
        assert writer.post("/api/v1/auth/logout", headers=mine.headers).status_code == 200
        assert_error(query(reader, mine, body), 401, "TOKEN_REVOKED")
    # a fresh session still works on both: the kills left no instance refusing everything
    session = login(a, acct.email, PASSWORD)
    mine = Account(a, acct.user, PASSWORD, session)
    for inst in (a, b):
        assert query_ok(inst, on(inst, mine), body)["data"][0]["title"] == title


def test_two_instances_while_redis_is_away(pg, private_redis):
    """Redis killed under two instances (its snapshot brought back afterwards, with
    the positive session copy and the cached page as they were): a logout and a
    write on A during the outage hold on B during the outage and after Redis
    returns."""
    name = pg.create_database()
    a = start_instance(pg, private_redis, 0, db=name)
    b = start_instance(pg, private_redis, 0, db=name)
    rds = redis_client(private_redis, 0)
    try:
        acct = user(a)
        tx_ok(a, acct, [pg_insert("projects", {"user_id": acct.id, "title": "r-init"})])
        pid = pg.query(name, "SELECT id::text FROM projects WHERE user_id = %s", (acct.id,))[0][0]
        body = {"table": "projects", "select": ["id", "title"], "filters": {"id": pid}}
        other = user(a)          # a second session, ended during the outage
        for inst in (a, b):
            query_ok(inst, on(inst, acct), body)
            assert query_ok(inst, on(inst, acct), body)["cached"] is True
            assert query_ok(inst, on(inst, other), projects_body())["data"] == []
        assert rds.get(f"coredb:session:{other.session['session_id']}") == other.id

        rds.save()
        private_redis.proc.send_signal(signal.SIGKILL)
        private_redis.proc.wait(10)
        assert a.post("/api/v1/auth/logout", headers=other.headers).status_code == 200
        assert_error(query(b, other, projects_body()), 401, "TOKEN_REVOKED")
        tx_ok(a, acct, [pg_update("projects", {"id": pid}, {"title": "r-down"})])
        assert query_ok(b, on(b, acct), body)["data"] == [{"id": pid, "title": "r-down"}]
        assert query_ok(a, acct, body)["data"] == [{"id": pid, "title": "r-down"}]

        private_redis.start()    # the old snapshot: a live copy of the session, the old page
        assert rds.dbsize() > 0, "Redis came back empty: nothing stale to guard against"
        k1 = time.time()
        stale = []

        def page_of(label, inst):
            page = query_ok(inst, on(inst, acct), body)
            if page["data"] != [{"id": pid, "title": "r-down"}]:
                stale.append((label, round(time.time() - k1, 2), page["data"]))
            return query(inst, other, projects_body())
        assert_ended_session_refused(ended_session_answers(
            [("B", lambda: page_of("B", b)), ("A", lambda: page_of("A", a))], k1))
        assert not stale, f"pages older than the write (instance, s after, data): {stale}"
        assert wait_for(lambda: query_ok(b, on(b, acct), body)["cached"], timeout=10), \
            "B serves no hit 10 s after Redis returned"
    finally:
        b.stop_clean()
        a.stop_clean()


def test_ended_session_is_not_revived_by_a_redis_snapshot(pg, private_redis):
    """The promise of issue 8, deterministically: a session ended while Redis was
    away is refused on the very next request after Redis returns, even when Redis
    comes back with a snapshot holding the session's live copy and the outbox has
    not written the tombstone yet. The test holds the queued tombstone's row lock
    (the outbox job takes rows FOR UPDATE SKIP LOCKED, so it skips it, as it
    would while PostgreSQL is slow or its pool busy): today the live copy is
    trusted for as long as that lasts."""
    inst = start_instance(pg, private_redis, 0)
    rds = redis_client(private_redis, 0)
    holder = None
    try:
        victim = user(inst)
        sid_key = f"coredb:session:{victim.session['session_id']}"
        assert victim.me().status_code == 200
        assert rds.get(sid_key) == victim.id
        rds.save()
        private_redis.proc.send_signal(signal.SIGKILL)
        private_redis.proc.wait(10)
        assert inst.post("/api/v1/auth/logout", headers=victim.headers).status_code == 200
        holder = pg.connect(inst.db)
        holder.autocommit = False
        with holder.cursor() as cur:
            cur.execute("SELECT id FROM coredb.redis_outbox WHERE key = %s FOR UPDATE", (sid_key,))
            assert cur.rowcount == 1, "the tombstone was not queued in the outbox"
        private_redis.start()
        assert rds.get(sid_key) == victim.id, "the snapshot lost the live copy: nothing is tested"
        assert wait_for(lambda: inst.get("/health").json()["checks"]["redis"]["status"] == "UP",
                        timeout=10), "coredb did not see Redis come back"
        seen = ended_session_answers([("A", lambda: query(inst, victim, projects_body()))],
                                     time.time(), seconds=2)
        served = [x for x in seen if x[2:] != (401, "TOKEN_REVOKED")]
        assert not served, f"the ended session was served after Redis returned: {served[:5]}"
    finally:
        if holder is not None:
            holder.rollback()
            holder.close()
        inst.stop_clean()
