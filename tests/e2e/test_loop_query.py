"""Data-API misses run on the event loops (src/http/loop_query.c over
src/store/pg_async.c, issue 8 item 3): an admitted miss is sent by the loop
that parsed it on its own non-blocking PostgreSQL connections
(DB_LOOP_CONNECTIONS per loop, taken out of DB_POOL_MAX) and answered there;
any failure hands it to a worker, which runs it the blocking way.

coredb_http_loop_queries_total{outcome} counts where each miss went, so these
tests prove a miss was answered on the loop, and compare its bytes with the
worker path's (a second instance on the same database with
DB_LOOP_CONNECTIONS=0). Covered: several filters/orders/pages for the user,
premium and admin roles with row-level security checked against psycopg2;
CACHE_TTL=0 and CACHE_TTL>0 (the entry stored in Redis at the generation
read before the query, then served as a hit); a bad filter value (the
worker's 400); a statement past DB_STATEMENT_TIMEOUT (504 on the loop, not
twice the wait); pg_terminate_backend of the loop's connections and a
PostgreSQL restart with misses in flight (each answered 200 or 503/504,
none hangs, then recovery); hits not delayed by 16 clients running slow
queries on the loops; SIGTERM with misses parked on the loops (each
answered); misses beyond the loop connections' slots parked on the loop while
the table is locked (sent as slots free, or after 250 ms handed to workers:
every one answered right either way, counted in
coredb_pool_loop_parked_total / _park_expired_total); DB_LOOP_CONNECTIONS=0
and a pool too small to share (as before). The store layer's unit test
(tests/unit/store/pg_async.c) runs on a real PostgreSQL in test_store_units.py.
"""
import json
import re
import signal
import socket
import threading
import time
import uuid

import pytest
import redis
import requests

from datahelp import (add_projects, admin_of, counter, delta, metric, premium, query, query_ok, start_instance,
                      user, wait_for)
from identity import assert_error
from servers import PgServer
from test_engine import DB_DOWN, Load, bad_outcomes, call, percentile, projects_body

REDIS_DB = 5
CLIENT_TIMEOUT = 15
LOOP_ENV = {"HTTP_THREADS": "2", "DB_POOL_MAX": "8", "DB_LOOP_CONNECTIONS": "2",
            "RATE_LIMIT_USER": "0", "RATE_LIMIT_PREMIUM": "0"}
QUERY = "/api/v1/data/query"




def loop_queries(inst, admin):
    got = metric(inst, admin, "coredb_http_loop_queries_total")
    return {k: got.get(k, 0.0) for k in ("answered", "handed_off", "timeout")}




def without_time(content):
    return re.sub(rb'"execution_time_ms":[0-9.eE+-]+', b'"execution_time_ms":0', content)


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


@pytest.fixture(scope="module")
def pair(pg, own_redis):
    """An instance running misses on its loops and one without (the worker path), one database."""
    loop = start_instance(pg, own_redis, REDIS_DB, CACHE_TTL="0", **LOOP_ENV)
    worker = start_instance(pg, own_redis, REDIS_DB, db=loop.db, CACHE_TTL="0",
                            **{**LOOP_ENV, "DB_LOOP_CONNECTIONS": "0"})
    yield loop, worker
    worker.stop_clean()
    loop.stop_clean()


def test_misses_on_the_loop_equal_the_worker_path(pair):
    loop, worker = pair
    ladmin = admin_of(loop)
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
    before = loop_queries(loop, ladmin)
    n = 0
    for acct in (a, b, p, ladmin):
        for body in bodies:
            on_loop = query(loop, acct, body)
            on_worker = query(worker, acct, body)
            assert on_loop.status_code == on_worker.status_code == 200, (body, on_loop.text[:300])
            assert without_time(on_loop.content) == without_time(on_worker.content), \
                (body, on_loop.content[:400], on_worker.content[:400])
            assert on_loop.json()["cached"] is False
            n += 1
        # row-level security on the loop: exactly the rows PostgreSQL says the caller owns
        got = query_ok(loop, acct, {"table": "projects", "select": ["id"],
                                    "pagination": {"limit": 100}})
        own = {r[0] for r in loop.pg.query(loop.db, "SELECT id::text FROM projects WHERE user_id = %s",
                                          (acct.id,))}
        everyone = {r[0] for r in loop.pg.query(loop.db, "SELECT id::text FROM projects")}
        ids = {r["id"] for r in got["data"]}
        assert ids == (everyone if acct is ladmin else own), acct.user["role"]
        n += 1
    d = delta(before, loop_queries(loop, ladmin))
    # the metrics scrape is an admin call on a worker, not a miss
    assert d["answered"] == n and d["handed_off"] == 0, (d, n)
    ready = metric(loop, ladmin, "coredb_pool_loop_connections", "state")
    assert ready.get("ready", 0) >= 4, ready


def test_bad_filter_value_gets_the_worker_error(pair):
    loop, worker = pair
    ladmin = admin_of(loop)
    a = user(loop)
    before = loop_queries(loop, ladmin)
    for body in ({"table": "projects", "filters": {"created_at": "not a time"}},
                 {"table": "projects", "filters": {"id": "'; DROP TABLE users; --"}}):
        on_loop, on_worker = query(loop, a, body), query(worker, a, body)
        assert on_loop.status_code == 400, on_loop.text
        err = assert_error(on_loop, 400, on_worker.json()["error"]["code"])
        assert err["message"] == on_worker.json()["error"]["message"]
        assert "DROP" not in on_loop.text and "SELECT" not in on_loop.text
    d = delta(before, loop_queries(loop, ladmin))
    assert d["handed_off"] == 2 and d["answered"] == 0, d
    assert loop.pg.query(loop.db, "SELECT count(*) FROM users")[0][0] >= 1


def test_hostile_bodies_and_tokens(pair):
    loop, _ = pair
    a = user(loop)
    assert loop.post(QUERY, json={"table": "projects"}).status_code == 401
    assert loop.post(QUERY, json={"table": "projects"},
                     headers={"Authorization": "Bearer " + a.token[:-4] + "AAAA"}).status_code == 401
    for raw in (b"{", b"[1,2]", b'{"table": 5}', b'{"table": "projects", "pagination": {"limit": -1}}',
                b'{"table": "projects\\"; DROP TABLE users; --"}', b'{"table": "' + b"x" * 100000 + b'"}'):
        resp = loop.post(QUERY, data=raw, headers={**a.headers, "Content-Type": "application/json"})
        assert 400 <= resp.status_code < 500, (raw[:40], resp.status_code, resp.text[:200])
        assert set(resp.json()["error"]) >= {"code", "message"}


def test_cache_on_stores_the_miss_at_its_generation(pg, own_redis):
    inst = start_instance(pg, own_redis, REDIS_DB + 1, CACHE_TTL="60", **LOOP_ENV)
    try:
        admin = admin_of(inst)
        a = user(inst)
        add_projects(inst, a.id, 5)
        r = redis.Redis(host="127.0.0.1", port=own_redis.port, db=REDIS_DB + 1)
        body = {"table": "projects", "select": ["id", "title"], "order_by": [{"column": "title"}]}
        query_ok(inst, a, {"table": "projects", "select": ["id"]})   # the namespace is loaded
        before, stores0 = loop_queries(inst, admin), counter(inst, admin, "coredb_cache_stores_total")
        first = query(inst, a, body)
        assert first.status_code == 200 and first.json()["cached"] is False
        d = delta(before, loop_queries(inst, admin))
        assert d["answered"] == 1, d
        part = without_time(first.content)[1:].split(b',"execution_time_ms"')[0]
        gen_keys = r.keys("coredb:*:gen:projects")
        gen = int(r.get(gen_keys[0])) if gen_keys else 0

        def stored():
            return [k for k in r.keys("coredb:*") if r.type(k) == b"string" and r.get(k) == b"%d\n" % gen + part]
        assert wait_for(lambda: len(stored()) == 1, timeout=5), \
            ("no entry at the read generation", gen, part[:80], {k: r.get(k)[:60] for k in r.keys("coredb:*")
                                                                 if r.type(k) == b"string"})
        assert 0 < r.ttl(stored()[0]) <= 60
        assert counter(inst, admin, "coredb_cache_stores_total") >= stores0 + 1
        again = query_ok(inst, a, body)
        assert again["cached"] is True
        assert without_time(query(inst, a, body).content).replace(b'"cached":true', b'"cached":false') == \
            without_time(first.content)
    finally:
        inst.stop_clean()


def test_concurrent_identical_misses_run_once(pg, own_redis):
    """The loop leads the query cache's single flight; the others (a worker follows) get its bytes."""
    inst = start_instance(pg, own_redis, REDIS_DB + 8, CACHE_TTL="60", **LOOP_ENV)
    try:
        a = user(inst)
        add_projects(inst, a.id, 3)
        slow = create_slow_view(inst, 0.3)
        wait_table(inst, a, slow)
        for round_ in range(3):
            body = {"table": slow, "filters": {"id": {"gte": -round_}}}
            start = threading.Barrier(20)

            def one(_):
                start.wait()
                return query_ok(inst, a, body)
            outs = []
            threads = [threading.Thread(target=lambda: outs.append(one(0))) for _ in range(20)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(CLIENT_TIMEOUT)
            assert len(outs) == 20 and all(o["data"] == [{"id": 1}] for o in outs), outs[:3]
            misses = sum(1 for o in outs if not o["cached"])
            assert misses == 1, f"round {round_}: {misses} of 20 identical reads queried PostgreSQL"
    finally:
        inst.stop_clean()


def test_statement_timeout_answers_504_on_the_loop_once(pg, own_redis):
    inst = start_instance(pg, own_redis, REDIS_DB + 2, CACHE_TTL="0", DB_STATEMENT_TIMEOUT="1000",
                          **LOOP_ENV)
    try:
        admin = admin_of(inst)
        a = user(inst)
        view = create_slow_view(inst, 0)
        wait_table(inst, a, view)
        slow = create_slow_view(inst, 3)
        wait_for(lambda: query(inst, a, {"table": slow}).status_code != 404, timeout=15)
        before = loop_queries(inst, admin)
        t0 = time.time()
        resp = query(inst, a, {"table": slow}, timeout=CLIENT_TIMEOUT)
        took = time.time() - t0
        assert_error(resp, 504, "DATABASE_TIMEOUT")
        assert took < 2.5, f"{took:.2f} s: the statement ran twice"
        d = delta(before, loop_queries(inst, admin))
        assert d["timeout"] == 1 and d["handed_off"] == 0, d
        assert query_ok(inst, a, {"table": view})["data"] == [{"id": 1}]
    finally:
        inst.stop_clean()


def test_terminated_loop_connections_with_misses_in_flight(pg, own_redis):
    inst = start_instance(pg, own_redis, REDIS_DB + 3, CACHE_TTL="0", **LOOP_ENV)
    load = None
    try:
        admin = admin_of(inst)
        accounts = [user(inst) for _ in range(4)]
        for acct in accounts:
            add_projects(inst, acct.id, 3)
        slow = create_slow_view(inst, 0.4)
        wait_table(inst, accounts[0], slow)
        before = loop_queries(inst, admin)
        makers = [(lambda i, a=accounts[j % 4]: ("miss", QUERY, {"table": slow}, a.headers)) for j in range(8)]
        makers += [(lambda i, a=accounts[j % 4]: ("miss", QUERY, projects_body(uuid.uuid4().hex), a.headers))
                   for j in range(8)]
        load = Load(inst, makers, max_each=15).start()
        time.sleep(1.0)
        killed = inst.pg.query(inst.db, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                                        "WHERE datname = current_database() AND application_name = 'coredb' "
                                        "AND pid <> pg_backend_pid()")[0][0]
        time.sleep(1.0)
        outcomes = load.finish()
        load = None
        assert killed >= 4, killed
        bad = bad_outcomes(outcomes, DB_DOWN)
        assert not bad, bad[:8]
        d = delta(before, loop_queries(inst, admin))
        assert d["answered"] > 0 and d["handed_off"] > 0, d
        # recovery: misses are answered on the loops again
        mid = loop_queries(inst, admin)

        def on_loop_again():
            query_ok(inst, accounts[0], projects_body(uuid.uuid4().hex))
            return loop_queries(inst, admin)["answered"] > mid["answered"]
        assert wait_for(on_loop_again, timeout=15, step=0.3)
    finally:
        if load is not None:
            load.stop.set()
        inst.stop_clean()


def test_postgresql_restart_with_misses_on_the_loops(own_redis):
    private = PgServer("pg-loopq")
    inst = start_instance(private, own_redis, REDIS_DB + 4, CACHE_TTL="0", DB_POOL_ACQUIRE_TIMEOUT="3000",
                          **LOOP_ENV)
    load = None
    try:
        admin = admin_of(inst)
        accounts = [user(inst) for _ in range(4)]
        slow = create_slow_view(inst, 0.3)
        wait_table(inst, accounts[0], slow)
        makers = [(lambda i, a=accounts[j % 4]: ("miss", QUERY, {"table": slow}, a.headers)) for j in range(8)]
        makers += [(lambda i, a=accounts[j % 4]: ("miss", QUERY, projects_body(uuid.uuid4().hex), a.headers))
                   for j in range(16)]
        before = loop_queries(inst, admin)
        load = Load(inst, makers, max_each=60).start()
        time.sleep(1.0)
        r0 = time.time()
        private.restart("immediate")
        r1 = time.time()
        time.sleep(2.0)
        outcomes = load.finish()
        load = None
        bad = bad_outcomes(outcomes, DB_DOWN)
        assert not bad, f"{len(bad)} lost, hung or badly answered: {bad[:8]}"
        across = [o for o in outcomes if o.t0 <= r1 and o.t1 >= r0]
        assert len(across) >= 8, len(across)
        assert max(o.t1 - o.t0 for o in outcomes) < CLIENT_TIMEOUT
        mid = loop_queries(inst, admin)
        assert mid["answered"] > before["answered"], (before, mid)

        def on_loop_again():
            ok = query(inst, accounts[0], projects_body(uuid.uuid4().hex)).status_code == 200
            return ok and loop_queries(inst, admin)["answered"] > mid["answered"]
        assert wait_for(on_loop_again, timeout=20, step=0.3), "misses never ran on the loops again"
    finally:
        if load is not None:
            load.stop.set()
        inst.stop_clean()
        private.destroy()


def test_slow_queries_on_the_loops_do_not_delay_hits(pg, own_redis):
    inst = start_instance(pg, own_redis, REDIS_DB + 5, CACHE_TTL="60", **LOOP_ENV)
    load = None
    try:
        admin = admin_of(inst)
        a = user(inst)
        add_projects(inst, a.id, 20)
        slow = create_slow_view(inst, 1)
        wait_table(inst, a, slow)
        # registering users bumps projects' generation (its rows reference users): first
        slow_users = [user(inst) for _ in range(4)]
        query_ok(inst, a, projects_body())
        assert query_ok(inst, a, projects_body())["cached"] is True
        # 16 clients, each a miss of its own (never cached: a new filter value every time)
        load = Load(inst, [(lambda i, u=slow_users[j % 4], j=j: ("slow", QUERY,
                                                                  {"table": slow,
                                                                   "filters": {"id": {"gte": -(i * 100 + j)}}},
                                                                  u.headers)) for j in range(16)],
                    max_each=6).start()
        assert wait_for(lambda: inst.pg.query(inst.db, "SELECT count(*) FROM pg_stat_activity WHERE "
                                                       "query LIKE '%%row_to_json%%' AND state = 'active' "
                                                       "AND pid <> pg_backend_pid()")[0][0] >= 2, timeout=10)
        before = loop_queries(inst, admin)
        session = requests.Session()
        lat = []
        for _ in range(200):
            o = call(session, inst, "hit", QUERY, projects_body(), a.headers)
            assert o.status == 200 and o.cached is True, o
            lat.append(o.t1 - o.t0)
        outcomes = load.finish()
        load = None
        print(f"\nhits behind 16 slow loop queries: p50={percentile(lat, 50) * 1000:.1f} ms "
              f"p99={percentile(lat, 99) * 1000:.1f} ms")
        assert percentile(lat, 99) < 0.100, f"p99 {percentile(lat, 99) * 1000:.0f} ms"
        assert not bad_outcomes(outcomes, {}), bad_outcomes(outcomes, {})[:5]
        # the slow ones really ran on the loops: at least one loop's 8 slots (2 connections x
        # LOOP_PG_INFLIGHT 4) were taken by the first wave, however the 16 clients split over the two
        # loops; a loop's slow ones beyond its slots park and, with no job ending for 250 ms, go to a worker
        assert loop_queries(inst, admin)["answered"] >= before["answered"] + 8
    finally:
        if load is not None:
            load.stop.set()
        inst.stop_clean()


def test_sigterm_with_misses_parked_on_the_loops(pg, own_redis):
    inst = start_instance(pg, own_redis, REDIS_DB + 6, CACHE_TTL="0", **LOOP_ENV)
    admin = admin_of(inst)
    a = user(inst)
    slow = create_slow_view(inst, 1)
    wait_table(inst, a, slow)
    results = []
    lock = threading.Lock()

    def one():
        o = call(requests.Session(), inst, "slow", QUERY, {"table": slow}, a.headers)
        with lock:
            results.append(o)
    threads = [threading.Thread(target=one, daemon=True) for _ in range(12)]
    for t in threads:
        t.start()
    assert wait_for(lambda: inst.pg.query(inst.db, "SELECT count(*) FROM pg_stat_activity WHERE "
                                                   "query LIKE '%%row_to_json%%' AND state = 'active' "
                                                   "AND pid <> pg_backend_pid()")[0][0] >= 4, timeout=10)
    # every client in (the scrape counts itself): one connecting after the signal is refused
    assert wait_for(lambda: counter(inst, admin, "coredb_http_requests_in_flight") >= 13, timeout=10)
    t0 = time.time()
    inst.proc.send_signal(signal.SIGTERM)
    for t in threads:
        t.join(CLIENT_TIMEOUT + 5)
    assert not any(t.is_alive() for t in threads), "a request hung across SIGTERM"
    rc = inst.proc.wait(30)
    assert rc == 0, inst.log()[-2000:]
    assert len(results) == 12
    assert not bad_outcomes(results, {503: {"DATABASE_UNAVAILABLE", "SERVICE_UNAVAILABLE"}}), results
    assert sum(o.status == 200 for o in results) >= 4, results
    assert time.time() - t0 < 20


@pytest.mark.parametrize("extra", [{"DB_LOOP_CONNECTIONS": "0"},
                                   {"DB_POOL_MAX": "5", "DB_POOL_MIN": "1"}])
def test_off_runs_every_miss_on_a_worker(pg, own_redis, extra):
    inst = start_instance(pg, own_redis, REDIS_DB + 7, CACHE_TTL="0", **{**LOOP_ENV, **extra})
    try:
        admin = admin_of(inst)
        a = user(inst)
        add_projects(inst, a.id, 3)
        before = loop_queries(inst, admin)
        for _ in range(5):
            assert len(query_ok(inst, a, {"table": "projects"})["data"]) == 3
        assert delta(before, loop_queries(inst, admin)) == {"answered": 0, "handed_off": 0, "timeout": 0}
        if "DB_POOL_MAX" in extra:
            assert "pool.loop_share_off" in inst.log()
    finally:
        inst.stop_clean()


# one loop, one loop connection: 4 slots (server.c's LOOP_PG_INFLIGHT), the rest park
PARK_ENV = {**LOOP_ENV, "HTTP_THREADS": "1", "DB_LOOP_CONNECTIONS": "1"}
PARK_SLOTS = 4


def raw_post(port, path, body, headers):
    """One HTTP/1.1 request's bytes (sent all at once by the caller, so all arrive together)."""
    data = json.dumps(body).encode()
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n{head}\r\n").encode() + data


def read_answer(sock):
    """Status and JSON body of a Connection: close answer."""
    sock.settimeout(CLIENT_TIMEOUT)
    chunks = []
    while True:
        chunk = sock.recv(65536)
        if not chunk:
            break
        chunks.append(chunk)
    raw = b"".join(chunks)
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body)


@pytest.mark.parametrize("hold", [0.0, 1.0], ids=["released-at-once", "held-past-the-park-wait"])
def test_misses_beyond_the_slots_park_on_the_loop(pg, own_redis, hold):
    inst = start_instance(pg, own_redis, REDIS_DB + 8, CACHE_TTL="0", **PARK_ENV)
    try:
        admin = admin_of(inst)
        a = user(inst)
        titles = [f"k{i:03d}" for i in range(PARK_SLOTS + 16)]
        for t in titles:
            inst.pg.query(inst.db, "INSERT INTO projects (user_id, title) VALUES (%s, %s)", (a.id, t))
        query_ok(inst, a, projects_body(titles[0]))     # the loop connection is up and the shape prepared
        before = loop_queries(inst, admin)
        parked0 = counter(inst, admin, "coredb_pool_loop_parked_total")
        expired0 = counter(inst, admin, "coredb_pool_loop_park_expired_total")
        locker = inst.pg.connect(inst.db)
        socks = []
        try:
            with locker.cursor() as cur:
                cur.execute("BEGIN; LOCK TABLE projects IN ACCESS EXCLUSIVE MODE")
            # distinct misses (no single flight), all sent before any can finish
            wires = [raw_post(inst.port, QUERY, projects_body(t), a.headers) for t in titles]
            socks = [socket.create_connection(("127.0.0.1", inst.port), timeout=CLIENT_TIMEOUT) for _ in titles]
            for sock, wire in zip(socks, wires):
                sock.sendall(wire)
            assert wait_for(lambda: counter(inst, admin, "coredb_pool_loop_parked_total") - parked0 >= 16,
                            timeout=10, step=0.005), inst.log()[-2000:]
            time.sleep(hold)
        finally:
            with locker.cursor() as cur:
                cur.execute("ROLLBACK")
            locker.close()
        answers = [read_answer(sock) for sock in socks]
        for sock in socks:
            sock.close()
        for t, (status, body) in zip(titles, answers):
            assert status == 200, body
            assert [row["title"] for row in body["data"]] == [t], body
            assert body["pagination"]["total"] == 1, body
        parked = counter(inst, admin, "coredb_pool_loop_parked_total") - parked0
        expired = counter(inst, admin, "coredb_pool_loop_park_expired_total") - expired0
        moved = delta(before, loop_queries(inst, admin))
        assert parked == 16
        if hold:
            # held past PARK_WAIT_MS: every parked miss went to a worker, which waited for the lock too
            assert expired == 16
            assert moved == {"answered": PARK_SLOTS, "handed_off": 16, "timeout": 0}
        else:
            # released at once: the parked were sent on the loop as slots freed
            assert expired == 0
            assert moved == {"answered": PARK_SLOTS + 16, "handed_off": 0, "timeout": 0}
    finally:
        inst.stop_clean()
