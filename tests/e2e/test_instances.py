"""Many instances behind a load balancer (issue 14, docs/deployment.md):
three coredb processes on one PostgreSQL database and one Redis, Debian's
haproxy in front of them with the configuration docs/deployment.md shows,
read from that file (roundrobin, health checks on GET /health/ready; only
addresses and check timings changed).

Everything an instance knows that another needs lives in PostgreSQL or
Redis, and each test proves one piece of it by sending requests straight to
each instance as well as through the balancer, then reading the effect where
it lands: three instances starting at once apply each migration once
(coredb.schema_migrations, their logs); a login on one works on all; a
logout on one is refused by all (coredb.sessions.revoked_at and the
"revoked" tombstone in Redis); a write through one invalidates the cached
answer on the others (the generation counter in Redis); one user's quota is
one quota whichever instance counts it (coredb:rl:user:<id>); behind
haproxy (option forwardfor, TRUSTED_PROXIES) the client address is the
client's and never one a client chose (coredb.sessions.ip_address, the
per-address login counter); a lease taken on one is listed and released on
the others (coredb.leases, pg_roles); 500 mixed requests through haproxy
have no error and every instance serves some (haproxy's stats); a rolling
restart under load loses no request (SHUTDOWN_DRAIN_MS: /health/ready says
503 while the instance still serves); and the start-up sizing check logs
its headroom, and warns when DB_POOL_MAX alone exceeds what the server
accepts. Scheduled backups running once across instances are proven in
test_backups.py (test_schedule_runs_once_across_two_instances).

Timings are kept short (checks every 300 ms, a 1.5 s drain) so the module
runs in well under two minutes."""
import json
import os
import re
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import redis
import requests

from conftest import base_env
from datahelp import (QUERY, TX, add_project, admin_env, admin_of, pg_insert, pg_update, premium,
                      query_ok)
from identity import Account, assert_error, bearer, login, new_account
from servers import ROOT, Coredb, Haproxy, PgServer, RedisServer

NAMES = ("c1", "c2", "c3")
CHECK_MS = 300           # haproxy inter
DRAIN_MS = 1500          # > fall (2) x inter + a check's own time
USER_QUOTA = 5           # RATE_LIMIT_USER: plain users; the load runs as premium users


# ---- the farm: three instances, one database, one Redis, haproxy in front ----

class Farm:
    def __init__(self, pg, rds_server):
        self.pg = pg
        self.redis_server = rds_server
        self.db = pg.create_database("farm")
        self.admin_extra = admin_env()
        self.env = base_env(pg, self.db, rds_server, RATE_LIMIT_USER=USER_QUOTA,
                            RATE_LIMIT_ANON=100000, RATE_LIMIT_PREMIUM=100000, RATE_LIMIT_ADMIN=0,
                            SHUTDOWN_DRAIN_MS=DRAIN_MS, SHUTDOWN_GRACE_MS=10000,
                            TRUSTED_PROXIES="127.0.0.1",     # haproxy connects from 127.0.0.1
                            **self.admin_extra)
        # all three at once on an empty database: the migration lock decides
        self.insts = [self._spawn(None) for _ in NAMES]
        for inst in self.insts:
            inst.wait_live()
        self.proxy = Haproxy([(n, i.port) for n, i in zip(NAMES, self.insts)], inter_ms=CHECK_MS)
        self.base = self.proxy.base

    def _spawn(self, port):
        env = dict(self.env)
        if port:
            env["PORT"] = port
        inst = Coredb(env, wait=False)
        inst.db, inst.pg, inst.admin_email = self.db, self.pg, self.admin_extra["COREDB_ADMIN_EMAIL"]
        return inst

    def restart(self, k):
        """A new process on instance k's port (the balancer's server line)."""
        inst = self._spawn(self.insts[k].port)
        inst.wait_live()
        self.insts[k] = inst
        return inst

    def via(self, acct):
        """The same account, its requests sent through haproxy."""
        return Account(self.lb, acct.user, acct.password, acct.session)

    @property
    def lb(self):
        return _Endpoint(self.base)

    def on(self, k, acct):
        return Account(self.insts[k], acct.user, acct.password, acct.session)

    def rds(self):
        return redis.Redis(host="127.0.0.1", port=self.redis_server.port, decode_responses=True)

    def q(self, sql, params=None):
        return self.pg.query(self.db, sql, params)

    def stop(self):
        self.proxy.stop()
        for inst in self.insts:
            inst.stop_clean()


class _Endpoint:
    """haproxy's frontend with Coredb's request helpers."""

    def __init__(self, base):
        self.base = base

    def get(self, path, **kw):
        kw.setdefault("timeout", 30)
        return requests.get(self.base + path, **kw)

    def post(self, path, **kw):
        kw.setdefault("timeout", 30)
        return requests.post(self.base + path, **kw)

    def request(self, method, path, **kw):
        kw.setdefault("timeout", 30)
        return requests.request(method, self.base + path, **kw)


@pytest.fixture(scope="module")
def farm(pg):
    rds_server = RedisServer()
    made = None
    try:
        made = Farm(pg, rds_server)
        yield made
    finally:
        if made is not None:
            made.stop()
        rds_server.destroy()


@pytest.fixture(scope="module")
def boss(farm):
    return admin_of(farm.insts[0])


def premium_on(farm, boss, k=0):
    """A premium user (generous quota) made and logged in on instance k."""
    return premium(farm.insts[k], Account(farm.insts[k], boss.user, boss.password, boss.session))


# ---- migrations and the first admin ----

def test_three_instances_starting_at_once_migrate_once(farm):
    files = sorted(re.match(r"(\d{8}_\d{3})_", f).group(1)
                   for f in os.listdir(os.path.join(ROOT, "migrations")) if f.endswith(".sql"))
    rows = farm.q("SELECT version FROM coredb.schema_migrations ORDER BY version")
    assert [r[0] for r in rows] == files
    # each migration applied by exactly one of the three (their logs say who)
    applied = {}
    for inst in farm.insts:
        for line in inst.log().splitlines():
            if "migration_applied" in line:
                version = re.search(r"(\d{8}_\d{3})", line).group(1)
                applied[version] = applied.get(version, 0) + 1
    assert applied == {v: 1 for v in files}, applied
    # the bootstrap admin, named to all three, exists once
    count = farm.q("SELECT count(*) FROM public.users WHERE email = %s",
                   (farm.admin_extra["COREDB_ADMIN_EMAIL"],))[0][0]
    assert count == 1
    # every instance is ready, and haproxy sees all three UP
    for inst in farm.insts:
        assert inst.get("/health/ready").status_code == 200
    assert {n: s["status"] for n, s in farm.proxy.stats().items()} == {n: "UP" for n in NAMES}


# ---- sessions and revocations ----

def test_login_on_one_works_on_all_and_logout_on_one_is_refused_by_all(farm, boss):
    acct = premium_on(farm, boss, 1)
    lb_session = login(farm.lb, acct.email, acct.password)       # a login through the balancer
    tokens = [acct.token, lb_session["access_token"]]
    for token in tokens:
        for inst in farm.insts:
            resp = inst.get(f"/users/{acct.id}", headers=bearer(token))
            assert resp.status_code == 200, resp.text
        for _ in range(3):
            assert farm.lb.get(f"/users/{acct.id}", headers=bearer(token)).status_code == 200
    # logout of the first session on instance 3
    sid = acct.session["session_id"]
    resp = farm.insts[2].post("/api/v1/auth/logout", headers=acct.headers)
    assert resp.status_code == 200, resp.text
    for inst in farm.insts:
        assert_error(inst.get(f"/users/{acct.id}", headers=acct.headers), 401, "TOKEN_REVOKED")
    for _ in range(3):
        assert_error(farm.lb.get(f"/users/{acct.id}", headers=acct.headers), 401, "TOKEN_REVOKED")
    # the refresh token of the ended session is dead everywhere too
    for inst in farm.insts:
        assert_error(inst.post("/api/v1/auth/refresh",
                               json={"refresh_token": acct.session["refresh_token"]}), 401)
    # where it landed: PostgreSQL's row and Redis' tombstone
    assert farm.q("SELECT revoked_at IS NOT NULL FROM coredb.sessions WHERE session_id = %s", (sid,)) == [(True,)]
    assert farm.rds().get(f"coredb:session:{sid}") == "revoked"
    # the other session (made through haproxy) still works on every instance
    for inst in farm.insts:
        assert inst.get(f"/users/{acct.id}", headers=bearer(tokens[1])).status_code == 200
    # forged and expired tokens are refused by every instance alike
    from identity import craft, live_claims
    forged = craft(live_claims(tokens[1]), secret="not-the-secret-0123456789abcdef0123456789")
    expired = craft(live_claims(tokens[1], exp=int(time.time()) - 3600, iat=int(time.time()) - 7200,
                                nbf=int(time.time()) - 7200))
    for inst in farm.insts + [farm.lb]:
        assert_error(inst.get(f"/users/{acct.id}", headers=bearer(forged)), 401)
        assert_error(inst.get(f"/users/{acct.id}", headers=bearer(expired)), 401)
        assert_error(inst.get(f"/users/{acct.id}"), 401)


# ---- cache generations ----

def test_write_through_one_invalidates_the_cached_answer_on_the_others(farm, boss):
    acct = premium_on(farm, boss, 0)
    pid = add_project(farm.insts[0], acct.id, title="gen0", status="draft")
    body = {"table": "projects", "select": ["id", "title", "status"], "filters": {"id": pid}}
    on = [farm.on(k, acct) for k in range(3)]
    first = query_ok(farm.insts[0], on[0], body)
    assert first["cached"] is False and first["data"][0]["status"] == "draft"
    # the entry instance 1 stored serves instances 2 and 3: one shared cache
    for k in (1, 2):
        out = query_ok(farm.insts[k], on[k], body)
        assert out["cached"] is True and out["data"] == first["data"], (k, out)
    rds = farm.rds()
    gen_keys = [k for k in rds.scan_iter("coredb:*:gen:projects", count=1000)]
    assert len(gen_keys) == 1, gen_keys
    before = int(rds.get(gen_keys[0]) or 0)
    for i, status in enumerate(["generating", "done", "archived"]):
        writer, readers = i % 3, [k for k in range(3) if k != i % 3]
        resp = farm.insts[writer].post(TX, headers=on[writer].headers, json={"operations": [
            pg_update("projects", {"id": pid}, {"status": status})]})
        assert resp.status_code == 200, resp.text
        for k in readers:
            out = query_ok(farm.insts[k], on[k], body)
            assert out["data"][0]["status"] == status, (i, k, out)
        # and through the balancer, whichever instance answers
        for _ in range(3):
            out = query_ok(farm.lb, farm.via(acct), body)
            assert out["data"][0]["status"] == status
    assert int(rds.get(gen_keys[0])) >= before + 3


# ---- rate limits ----

def test_one_quota_whichever_instance_counts(farm, boss):
    acct = new_account(farm.insts[0])              # a plain user: RATE_LIMIT_USER=5
    time.sleep(1.2)                                # its bucket is full again
    sessions = [requests.Session() for _ in range(3)]
    urls = [f"{inst.base}/users/{acct.id}" for inst in farm.insts]
    start = time.monotonic()
    codes = []
    for i in range(30):                            # round robin over the three, back to back
        k = i % 3
        codes.append((k, sessions[k].get(urls[k], headers=acct.headers, timeout=10).status_code))
    took = time.monotonic() - start
    allowed = sum(1 for _, c in codes if c == 200)
    assert {c for _, c in codes} <= {200, 429}, codes
    # one bucket of 5 (plus what refills during the burst), not three
    assert USER_QUOTA - 1 <= allowed <= USER_QUOTA + USER_QUOTA * took + 1, (allowed, took, codes)
    for k in range(3):
        assert any(c == 429 for kk, c in codes if kk == k), (k, codes)
    assert farm.rds().exists(f"coredb:rl:user:{acct.id}")
    # through haproxy the same: the bucket is empty, whichever instance answers
    refused = [farm.lb.get(f"/users/{acct.id}", headers=acct.headers) for _ in range(6)]
    assert sum(1 for r in refused if r.status_code == 429) >= 3, [r.status_code for r in refused]
    for r in refused:
        if r.status_code == 429:
            assert_error(r, 429, "RATE_LIMITED")
            assert int(r.headers["Retry-After"]) >= 1


# ---- client addresses behind the balancer (TRUSTED_PROXIES) ----

def raw_request(port, method, path, source, body=None, headers=None):
    """One request from a chosen loopback source address (127.0.0.0/8 is all
    loopback), so haproxy's X-Forwarded-For names a client other than itself."""
    import http.client
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=15, source_address=(source, 0))
    try:
        hdrs = {"Content-Type": "application/json"}
        hdrs.update(headers or {})
        conn.request(method, path, body=json.dumps(body) if body is not None else None, headers=hdrs)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def test_client_address_comes_from_the_balancer_only(farm, boss):
    acct = premium_on(farm, boss, 0)
    creds = {"email": acct.email, "password": acct.password}

    def login_ip(port, source, headers=None):
        status, text = raw_request(port, "POST", "/api/v1/auth/login", source, creds, headers)
        assert status == 200, text
        sid = json.loads(text)["session_id"]
        return farm.q("SELECT ip_address FROM coredb.sessions WHERE session_id = %s", (sid,))[0][0]

    # through haproxy (option forwardfor) from 127.0.0.5: the session records the client
    assert login_ip(farm.proxy.port, "127.0.0.5") == "127.0.0.5"
    # a client cannot choose its address: what it sends is left of haproxy's entry
    assert login_ip(farm.proxy.port, "127.0.0.6", {"X-Forwarded-For": "203.0.113.7"}) == "127.0.0.6"
    assert login_ip(farm.proxy.port, "127.0.0.6",
                    {"X-Forwarded-For": "203.0.113.7, 127.0.0.1"}) == "127.0.0.6"
    # straight to an instance from an address that is not a trusted proxy: the header is ignored
    port = farm.insts[1].port
    assert login_ip(port, "127.0.0.7", {"X-Forwarded-For": "203.0.113.8"}) == "127.0.0.7"
    # from the trusted proxy's address the rightmost untrusted entry counts; garbage, SQL or a
    # port in it stops the walk at the proxy itself
    assert login_ip(port, "127.0.0.1", {"X-Forwarded-For": "198.51.100.1, 203.0.113.9"}) == "203.0.113.9"
    for junk in ("x' OR 1=1 --", "203.0.113.9:443", "[::1]", "", "a" * 300):
        assert login_ip(port, "127.0.0.1", {"X-Forwarded-For": junk}) == "127.0.0.1", junk
    # limits per client address see the client, counted across instances: three failed
    # logins through haproxy (one per instance, roundrobin) from 127.0.0.8 are its three
    rds = farm.rds()
    for _ in range(3):
        status, text = raw_request(farm.proxy.port, "POST", "/api/v1/auth/login", "127.0.0.8",
                                   {"email": acct.email, "password": "wrong-password-1"})
        assert status == 401, text
    key = "coredb:login:addr:127.0.0.8"
    kind = rds.type(key)
    count = rds.zcard(key) if kind == "zset" else rds.llen(key) if kind == "list" else int(rds.get(key))
    assert count == 3, (kind, count)


# ---- connection leases ----

def test_lease_taken_on_one_is_listed_and_released_on_another(farm, boss):
    acct = premium_on(farm, boss, 0)
    resp = farm.insts[0].post("/api/v1/connections/acquire", headers=acct.headers, json={
        "service_name": "farm-svc", "database_type": "postgresql", "operation_type": "read"})
    assert resp.status_code == 201, resp.text
    lease = resp.json()
    lid = lease["connection_id"]
    role = farm.q("SELECT role_name FROM coredb.leases WHERE id = %s", (lid,))[0][0]
    assert farm.q("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)) == [(1,)]
    boss_on = [farm.on(k, boss) for k in range(3)]
    listed = farm.insts[1].get("/api/v1/connections", headers=boss_on[1].headers,
                               params={"service_name": "farm-svc"})
    assert listed.status_code == 200, listed.text
    assert [e["connection_id"] for e in listed.json()["leases"]] == [lid]
    # another user cannot release it on any instance; its owner can, on instance 3
    other = premium_on(farm, boss, 1)
    for k in range(3):
        assert_error(farm.insts[k].post("/api/v1/connections/release", headers=other.headers,
                                        json={"connection_id": lid, "service_name": "farm-svc"}),
                     404, "NOT_FOUND")
    resp = farm.insts[2].post("/api/v1/connections/release", headers=acct.headers,
                              json={"connection_id": lid, "service_name": "farm-svc"})
    assert resp.status_code == 200, resp.text
    assert farm.q("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)) == []
    # the pooled connection the lease held is instance 1's: its reaper (every
    # second) sees the lease ended elsewhere and gives the connection back
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and f"lease {lid} ended" not in farm.insts[0].log():
        time.sleep(0.1)
    assert f"lease {lid} ended: its pooled connection is back" in farm.insts[0].log()
    listed = farm.insts[0].get("/api/v1/connections", headers=boss_on[0].headers,
                               params={"service_name": "farm-svc"})
    assert listed.json()["leases"] == []


# ---- 500 mixed requests through haproxy ----

def test_500_mixed_requests_through_haproxy_without_error(farm, boss):
    """Reads, cached reads, inserts, read-after-write on another instance,
    login/use/logout/refused cycles, and a plain user over its quota, four
    clients at once, all through haproxy: every answer is the expected one."""
    before = {n: s["stot"] for n, s in farm.proxy.stats().items()}
    users = [premium_on(farm, boss, k) for k in range(3)]
    lb_users = [farm.via(u) for u in users]
    pids = [add_project(farm.insts[0], u.id, title="load", status="draft") for u in users]
    # one project per read-after-write unit, so concurrent units never share one
    from datahelp import add_projects
    own = [add_projects(farm.insts[0], u.id, 20, prefix=f"raw{k}-") for k, u in enumerate(users)]
    limited = new_account(farm.insts[1])       # a plain user: RATE_LIMIT_USER=5 across the farm
    time.sleep(1.2)
    inserted = [0] * 3
    lock = threading.Lock()
    http = threading.local()

    def session():
        if not hasattr(http, "s"):
            http.s = requests.Session()
        return http.s

    def call(method, path, **kw):
        kw.setdefault("timeout", 30)
        return session().request(method, farm.base + path, **kw)

    def unit(i):
        """One unit of work: a list of (response, accepted statuses)."""
        k = i % 3
        u, pid = lb_users[k], pids[k]
        kind = i % 10
        if kind in (0, 5):
            return [(call("GET", f"/users/{u.id}", headers=u.headers), {200})]
        if kind in (1, 6):
            return [(call("POST", QUERY, headers=u.headers, json={
                "table": "projects", "select": ["id", "status"], "filters": {"id": pid}}), {200})]
        if kind in (2, 7):
            resp = call("POST", TX, headers=u.headers, json={"operations": [
                pg_insert("projects", {"user_id": u.id, "title": f"mixed-{i}"})]})
            if resp.status_code == 200:
                with lock:
                    inserted[k] += 1
            return [(resp, {200})]
        if kind == 3:
            # read (cached by whichever instance), write, read again: the
            # second read, likely on another instance, sees the write
            mine = own[k][(i // 30) % 20]
            body = {"table": "projects", "select": ["id", "status"], "filters": {"id": mine}}
            r1 = call("POST", QUERY, headers=u.headers, json=body)
            r2 = call("POST", TX, headers=u.headers, json={"operations": [
                pg_update("projects", {"id": mine}, {"status": f"w{i}"})]})
            r3 = call("POST", QUERY, headers=u.headers, json=body)
            assert r3.status_code != 200 or r3.json()["data"][0]["status"] == f"w{i}", (i, r3.text)
            return [(r1, {200}), (r2, {200}), (r3, {200})]
        if kind == 4:
            # a session's whole life, each step wherever haproxy sends it
            acct = users[k]
            r1 = call("POST", "/api/v1/auth/login", json={"email": acct.email, "password": acct.password})
            token = r1.json().get("access_token", "") if r1.status_code == 200 else ""
            r2 = call("GET", f"/users/{acct.id}", headers=bearer(token))
            r3 = call("POST", "/api/v1/auth/logout", headers=bearer(token))
            r4 = call("GET", f"/users/{acct.id}", headers=bearer(token))
            return [(r1, {200}), (r2, {200}), (r3, {200}), (r4, {401})]
        if kind == 8:
            return [(call("POST", QUERY, headers=u.headers, json={
                "table": "projects", "select": ["id"], "filters": {"user_id": u.id},
                "pagination": {"page": 1, "limit": 5}}), {200})]
        return [(call("GET", f"/users/{limited.id}", headers=limited.headers), {200, 429})]

    start = time.monotonic()
    results = []
    with ThreadPoolExecutor(4) as pool:
        i = 0
        # units until 500 requests are made (a unit makes 1 to 4)
        while len(results) < 500:
            batch = list(pool.map(unit, range(i, i + 40)))
            i += 40
            for r in batch:
                results.extend(r)
    took = time.monotonic() - start
    bad = [(r.status_code, r.text[:200]) for r, want in results if r.status_code not in want]
    assert bad == [], bad[:10]
    assert took < 90, took
    # the inserts landed, once each
    for k, u in enumerate(users):
        n = farm.q("SELECT count(*) FROM projects WHERE user_id = %s AND title LIKE 'mixed-%%'", (u.id,))[0][0]
        assert n == inserted[k], (k, n, inserted)
    # the logouts are in PostgreSQL: every session a unit made is revoked
    cycles = sum(1 for r, want in results if want == {401})
    revoked = farm.q("SELECT count(*) FROM coredb.sessions WHERE user_id::text = ANY(%s) "
                     "AND revoked_reason = 'logout' AND revoked_at IS NOT NULL",
                     ([u.id for u in users],))[0][0]
    assert cycles > 0 and revoked == cycles, (cycles, revoked)
    # the plain user had one quota of 5/s across the three instances
    limited_codes = [r.status_code for r, want in results if want == {200, 429}]
    allowed = limited_codes.count(200)
    assert 429 in limited_codes, limited_codes
    assert allowed <= USER_QUOTA + USER_QUOTA * took + 1, (allowed, took)
    # each instance served a share (roundrobin: about a third each)
    after = {n: s["stot"] for n, s in farm.proxy.stats().items()}
    served = {n: after[n] - before.get(n, 0) for n in NAMES}
    assert sum(served.values()) >= len(results) >= 500, served
    for n in NAMES:
        assert served[n] >= len(results) // 4, served
    print(f"{len(results)} mixed requests through haproxy in {took:.2f} s; per instance {served}; "
          f"plain user {allowed} allowed of {len(limited_codes)}")


# ---- rolling restart ----

def test_rolling_restart_under_load_loses_no_request(farm, boss):
    u = farm.via(premium_on(farm, boss, 0))
    pid = add_project(farm.insts[0], u.id, title="rolling", status="draft")
    stop = threading.Event()
    outcomes = []

    def load():
        http = requests.Session()           # keep-alive to haproxy, as a real client
        body = {"table": "projects", "select": ["id", "status"], "filters": {"id": pid}}
        n = 0
        deadline = time.monotonic() + 90
        while not stop.is_set() and time.monotonic() < deadline:
            n += 1
            try:
                if n % 3 == 0:
                    r = http.post(farm.base + TX, headers=u.headers, timeout=15, json={"operations": [
                        pg_update("projects", {"id": pid}, {"status": f"r{n}"})]})
                else:
                    r = http.post(farm.base + QUERY, headers=u.headers, json=body, timeout=15)
                outcomes.append((r.status_code, r.text[:200] if r.status_code != 200 else ""))
            except requests.RequestException as e:
                outcomes.append((None, repr(e)[:200]))
            time.sleep(0.02)

    threads = [threading.Thread(target=load) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        time.sleep(0.5)
        for k, name in enumerate(NAMES):
            old = farm.insts[k]
            old.proc.send_signal(signal.SIGTERM)
            # draining: still serving, but not ready, so haproxy takes it out
            deadline = time.monotonic() + 5
            ready = None
            while time.monotonic() < deadline:
                ready = old.get("/health/ready", timeout=2)
                if ready.status_code == 503:
                    break
                time.sleep(0.05)
            assert ready is not None and ready.status_code == 503, ready.text if ready else None
            body = ready.json()
            assert body["status"] == "DOWN" and body["checks"]["shutdown"]["draining"] is True, body
            farm.proxy.wait_status(name, "DOWN", timeout=5)
            assert old.proc.wait(20) == 0, old.log()[-3000:]
            log = old.log()
            assert "http.draining" in log and "Sanitizer" not in log and "runtime error:" not in log
            farm.restart(k)
            farm.proxy.wait_status(name, "UP", timeout=15)
        time.sleep(0.5)
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    failed = [o for o in outcomes if o[0] != 200]
    assert len(outcomes) >= 50, len(outcomes)
    assert failed == [], (len(failed), len(outcomes), failed[:10])
    print(f"rolling restart of 3 instances: {len(outcomes)} requests, {len(failed)} failed")
    # after the restarts every instance serves again
    for inst in farm.insts:
        assert inst.get("/health/ready").status_code == 200


def test_drain_serves_everything_but_readiness_and_a_second_signal_ends_it(pg):
    """SHUTDOWN_DRAIN_MS on a lone instance: during the drain every route but
    /health/ready answers as before; a second SIGTERM ends a long drain at
    once and the exit is still clean."""
    db = pg.create_database("drain")
    inst = Coredb(base_env(pg, db, None, SHUTDOWN_DRAIN_MS=60000, **admin_env()))
    inst.db, inst.pg = db, pg
    try:
        acct = new_account(inst)
        assert inst.get("/health/ready").status_code == 200
        inst.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and inst.get("/health/ready", timeout=2).status_code != 503:
            time.sleep(0.05)
        ready = inst.get("/health/ready", timeout=2)
        assert ready.status_code == 503 and ready.json()["checks"]["shutdown"] == \
            {"status": "DOWN", "draining": True}, ready.text
        assert ready.json()["checks"]["postgresql"]["status"] == "UP", ready.text
        # still serving: liveness, the full report, an authenticated read, a write
        assert inst.get("/health/live").status_code == 200
        assert inst.get(f"/users/{acct.id}", headers=acct.headers).status_code == 200
        resp = inst.request("PUT", f"/users/{acct.id}", headers=acct.headers, json={"display_name": "draining"})
        assert resp.status_code == 200, resp.text
        assert inst.pg.query(db, "SELECT display_name FROM public.users WHERE user_id = %s",
                             (acct.id,)) == [("draining",)]
        assert inst.proc.poll() is None                  # 60 s drain: still running
        started = time.monotonic()
        inst.proc.send_signal(signal.SIGTERM)
        assert inst.proc.wait(10) == 0
        assert time.monotonic() - started < 10
        assert "ending the drain" in inst.log()
    finally:
        inst.stop_clean()


# ---- sizing ----

def test_start_logs_the_headroom(farm):
    # PgServer: max_connections 200, superuser_reserved_connections 3, reserve 10 -> 187 usable
    for inst in farm.insts:
        log = inst.log()
        line = next((l for l in log.splitlines() if "serve.sizing" in l), None)
        assert line is not None, log[-2000:]
        assert "max_connections 200" in line and "187 usable" in line, line
        assert "room for 37 instances" in line, line          # 187 // DB_POOL_MAX 5
        assert "exceeds" not in log


def test_pool_larger_than_max_connections_warns_at_start():
    server = PgServer("pg-small", extra_opts="-c max_connections=20")
    inst = None
    try:
        db = server.create_database("size")
        inst = Coredb(base_env(server, db, None, DB_POOL_MAX=30, DB_POOL_MIN=1))
        log = inst.log()
        warn = [l for l in log.splitlines() if "serve.sizing" in l and "exceeds" in l]
        assert len(warn) == 1, log[-3000:]
        # 20 - 3 - 10 = 7 usable: the warning names the numbers and the fix
        assert "DB_POOL_MAX 30" in warn[0] and "7 connections" in warn[0], warn[0]
        assert "max_connections 20" in warn[0] and "lower DB_POOL_MAX" in warn[0], warn[0]
        # a warning, not a refusal: the instance serves
        assert inst.get("/health/ready").status_code == 200
        # a pool that fits the server but not what others leave free now
        held = [server.connect() for _ in range(5)]
        try:
            second = Coredb(base_env(server, db, None, DB_POOL_MAX=5, DB_POOL_MIN=1))
            try:
                log = second.log()
                assert not [l for l in log.splitlines() if "serve.sizing" in l and "PostgreSQL has" in l]
                warn = [l for l in log.splitlines() if "serve.sizing" in l and "free now" in l]
                assert len(warn) == 1 and "DB_POOL_MAX 5" in warn[0], log[-3000:]
            finally:
                second.stop_clean()
        finally:
            for c in held:
                c.close()
    finally:
        if inst is not None:
            inst.stop_clean()
        server.destroy()
