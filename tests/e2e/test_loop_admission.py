"""Admission on the event loops (src/http/loop_admit.c, issue 8): the session
check, the quota and a data-API cache hit answered on the loop that parsed
the request, with one pipelined asynchronous Redis round trip, and every
other case handed to a worker exactly as before. The metric
coredb_http_loop_admissions_total{outcome} says where each request went, so
these tests can prove a hit never reached a worker, and that the promises
(revocation, freshness, quotas, leases, errors after authentication) hold
on the loop as they do on the workers."""
import re
import time

import pytest

from datahelp import (add_project, admin_of, pg_update, query, query_ok, start_instance, tx_ok,
                      user, wait_for)
from identity import assert_error, bearer
from servers import RedisServer

REDIS_DB = 2



@pytest.fixture(scope="module")
def linst(pg, own_redis):
    server = start_instance(pg, own_redis, REDIS_DB, HTTP_THREADS="2", RATE_LIMIT_USER="0")
    yield server
    server.stop_clean()


@pytest.fixture(scope="module")
def ladmin(linst):
    return admin_of(linst)


def admissions(inst, admin):
    """{outcome: count} of coredb_http_loop_admissions_total."""
    resp = inst.get("/metrics", headers=admin.headers)
    assert resp.status_code == 200, resp.text[:300]
    found = dict(re.findall(r'^coredb_http_loop_admissions_total\{outcome="(\w+)"\} (\S+)$', resp.text, re.M))
    return {k: float(found.get(k, 0)) for k in ("answered", "worker", "fallback")}


def delta(before, after):
    return {k: after[k] - before[k] for k in before}


def body_for(pid):
    return {"table": "projects", "select": ["id", "title", "status"], "filters": {"id": pid}}


def test_hits_are_answered_on_the_loop(linst, ladmin):
    a = user(linst)
    pid = add_project(linst, a.id, title="loop", status="draft")
    first = query_ok(linst, a, body_for(pid))
    assert first["cached"] is False
    before = admissions(linst, ladmin)
    for _ in range(20):
        hit = query_ok(linst, a, body_for(pid))
        assert hit["cached"] is True and hit["data"] == first["data"], hit
    d = delta(before, admissions(linst, ladmin))
    # the metrics scrape itself is an admin request admitted on the loop and run on a worker
    assert d["answered"] == 20, d
    assert d["worker"] == 1 and d["fallback"] == 0, d


def test_a_write_is_seen_by_the_next_read(linst, ladmin):
    a = user(linst)
    pid = add_project(linst, a.id, title="fresh", status="draft")
    query_ok(linst, a, body_for(pid))
    assert query_ok(linst, a, body_for(pid))["cached"] is True
    for status in ("generating", "done", "archived"):
        tx_ok(linst, a, [pg_update("projects", {"id": pid}, {"status": status})])
        after = query_ok(linst, a, body_for(pid))
        assert after["cached"] is False and after["data"][0]["status"] == status, after
        again = query_ok(linst, a, body_for(pid))
        assert again["cached"] is True and again["data"][0]["status"] == status, again


def test_a_revoked_session_is_refused_on_the_loop(linst, ladmin):
    a = user(linst)
    pid = add_project(linst, a.id)
    query_ok(linst, a, body_for(pid))
    assert query_ok(linst, a, body_for(pid))["cached"] is True
    token = a.token
    out = linst.post("/api/v1/auth/logout", headers=bearer(token))
    assert out.status_code in (200, 204), out.text
    before = admissions(linst, ladmin)
    err = assert_error(query(linst, a, body_for(pid)), 401, "TOKEN_REVOKED")
    assert "data" not in err
    # a body that is not JSON: authentication is still checked first
    bad = linst.post("/api/v1/data/query", data=b"{not json", headers={**bearer(token),
                                                                      "Content-Type": "application/json"})
    assert_error(bad, 401, "TOKEN_REVOKED")
    d = delta(before, admissions(linst, ladmin))
    assert d["answered"] == 2, d


def test_errors_after_admission_come_from_the_worker(linst, ladmin):
    a = user(linst)
    before = admissions(linst, ladmin)
    bad = linst.post("/api/v1/data/query", data=b"{not json", headers={**a.headers,
                                                                      "Content-Type": "application/json"})
    assert_error(bad, 400, "INVALID_JSON")
    assert_error(query(linst, a, {"table": "projects; DROP TABLE users", "select": ["id"]}), 404,
                 "UNKNOWN_TABLE")
    assert_error(query(linst, a, {"table": "projects", "select": ["id"], "bogus": 1}), 400,
                 "VALIDATION_FAILED")
    assert_error(query(linst, a, {"table": "projects", "pagination": {"limit": "x"}}), 400,
                 "VALIDATION_FAILED")
    d = delta(before, admissions(linst, ladmin))
    assert d["worker"] >= 4 and d["answered"] == 0, d


def test_other_users_entries_are_not_served(linst, ladmin):
    a, b = user(linst), user(linst)
    pa = add_project(linst, a.id, title="a-only")
    assert query_ok(linst, a, body_for(pa))["data"][0]["title"] == "a-only"
    assert query_ok(linst, a, body_for(pa))["cached"] is True
    # the same request by another user is another key: a miss, and RLS hides the row
    other = query_ok(linst, b, body_for(pa))
    assert other["data"] == [] and other["cached"] is False, other


def test_a_lease_header_is_checked_before_a_hit(linst, ladmin):
    # the loop checks the lease itself (loop_lease.c) and refuses an unknown one there, before any hit
    a = user(linst)
    pid = add_project(linst, a.id)
    query_ok(linst, a, body_for(pid))
    assert query_ok(linst, a, body_for(pid))["cached"] is True
    before = admissions(linst, ladmin)
    resp = query(linst, a, body_for(pid), headers={"X-Connection-ID": "00000000-0000-4000-8000-000000000000"})
    assert resp.status_code in (403, 404), resp.text
    assert resp.json()["error"]["code"] in ("NOT_FOUND", "FORBIDDEN", "LEASE_NOT_FOUND"), resp.text
    assert "data" not in resp.json()
    d = delta(before, admissions(linst, ladmin))
    # answered: the refusal; worker: the metrics scrape
    assert d["answered"] == 1 and d["worker"] == 1, d


def test_quota_on_the_loop(pg, own_redis):
    inst = start_instance(pg, own_redis, REDIS_DB + 1, HTTP_THREADS="1", RATE_LIMIT_USER="3")
    try:
        adm = admin_of(inst)
        a = user(inst)
        pid = add_project(inst, a.id)
        statuses, limited = [], None
        deadline = time.monotonic() + 20
        while len(statuses) < 12 and time.monotonic() < deadline:
            resp = query(inst, a, body_for(pid))
            statuses.append(resp.status_code)
            if resp.status_code == 200:
                assert resp.headers["X-RateLimit-Limit"] == "3", resp.headers
                assert int(resp.headers["X-RateLimit-Remaining"]) >= 0
            elif resp.status_code == 429:
                limited = resp
        assert 200 in statuses and limited is not None, statuses
        err = assert_error(limited, 429, "RATE_LIMITED")
        assert int(limited.headers["Retry-After"]) >= 1 and err["details"]["limit"] == 3
        # refusals were decided on the loop and counted by role
        d = admissions(inst, adm)
        assert d["answered"] >= statuses.count(429), (d, statuses)
        text = inst.get("/metrics", headers=adm.headers).text
        refused = re.search(r'^coredb_ratelimit_refusals_total\{role="user"\} (\S+)$', text, re.M)
        assert refused and float(refused.group(1)) >= statuses.count(429)
    finally:
        inst.stop_clean()


def test_redis_outage_falls_back_then_recovers(pg):
    own = RedisServer()
    inst = start_instance(pg, own, 0, HTTP_THREADS="1", RATE_LIMIT_USER="0")
    try:
        adm = admin_of(inst)
        a = user(inst)
        pid = add_project(inst, a.id, title="outage")
        query_ok(inst, a, body_for(pid))
        assert query_ok(inst, a, body_for(pid))["cached"] is True
        own.stop()
        before = admissions(inst, adm)
        # every request is still answered, from PostgreSQL, by a worker
        for _ in range(5):
            out = query_ok(inst, a, body_for(pid))
            assert out["data"][0]["title"] == "outage"
        d = delta(before, admissions(inst, adm))
        assert d["fallback"] >= 5 and d["answered"] == 0, d
        own.start()
        # the loop's connection comes back by itself (backoff at most 2 s)
        query_ok(inst, a, body_for(pid))

        def answered_on_loop():
            was = admissions(inst, adm)["answered"]
            out = query_ok(inst, a, body_for(pid))
            return out["cached"] and admissions(inst, adm)["answered"] == was + 1
        wait_for(answered_on_loop, timeout=15, step=0.3)
    finally:
        inst.stop_clean()
        own.destroy()


# ---- the first-level cache (store/l1cache.h) and its invalidation through pub/sub ----

def l1_hits(inst, admin):
    text = inst.get("/metrics", headers=admin.headers).text
    found = dict(re.findall(r'^coredb_cache_l1_hits_total\{kind="(\w+)"\} (\S+)$', text, re.M))
    return {k: float(found.get(k, 0)) for k in ("answer", "session")}


def mgets(redis_server):
    """How many MGET commands the Redis server has run (the loops' cache lookups)."""
    import redis
    stats = redis.Redis(host="127.0.0.1", port=redis_server.port).info("commandstats")
    return stats.get("cmdstat_mget", {}).get("calls", 0)


def test_first_level_cache_answers_without_redis(linst, ladmin, own_redis):
    a = user(linst)
    pid = add_project(linst, a.id, title="l1")
    first = query_ok(linst, a, body_for(pid))
    before, calls = l1_hits(linst, ladmin), mgets(own_redis)
    for _ in range(20):
        hit = query_ok(linst, a, body_for(pid))
        assert hit["cached"] is True and hit["data"] == first["data"]
    after = l1_hits(linst, ladmin)
    # each of the 2 loops reads Redis once, then answers from its first-level cache
    assert mgets(own_redis) - calls <= 2
    assert after["answer"] - before["answer"] >= 18, (before, after)
    assert after["session"] - before["session"] >= 18, (before, after)


@pytest.fixture(scope="module")
def pair(pg, own_redis):
    """Two instances on one database and one Redis: the first-level caches of
    both must learn of each other's writes and logouts."""
    a = start_instance(pg, own_redis, REDIS_DB + 2, HTTP_THREADS="2", RATE_LIMIT_USER="0")
    b = start_instance(pg, own_redis, REDIS_DB + 2, db=a.db, HTTP_THREADS="2", RATE_LIMIT_USER="0")
    b.admin_email = a.admin_email
    yield a, b
    b.stop_clean()
    a.stop_clean()


def as_on(inst, acct):
    from identity import Account
    return Account(inst, acct.user, acct.password, acct.session)


def test_write_on_one_instance_is_seen_on_the_other(pair):
    a_inst, b_inst = pair
    b_admin = admin_of(b_inst)
    owner = user(a_inst)
    on_b = as_on(b_inst, owner)
    pid = add_project(a_inst, owner.id, title="v0")
    before = l1_hits(b_inst, b_admin)
    for i in range(1, 21):
        # B serves the page from its first-level cache ...
        for _ in range(3):
            assert query_ok(b_inst, on_b, body_for(pid))["data"][0]["title"] == f"v{i - 1}"
        # ... until A's write, published through Redis, voids it
        tx_ok(a_inst, owner, [pg_update("projects", {"id": pid}, {"title": f"v{i}"})])
        out = query_ok(b_inst, on_b, body_for(pid))
        assert out["data"][0]["title"] == f"v{i}" and out["cached"] is False, (i, out)
    assert l1_hits(b_inst, b_admin)["answer"] - before["answer"] >= 20


def test_logout_on_one_instance_is_refused_on_the_other(pair):
    a_inst, b_inst = pair
    for i in range(20):
        acct = user(a_inst)
        pid = add_project(a_inst, acct.id)
        on_b = as_on(b_inst, acct)
        for _ in range(3):   # B knows the session alive (first-level cache)
            query_ok(b_inst, on_b, body_for(pid))
        out = a_inst.post("/api/v1/auth/logout", headers=acct.headers)
        assert out.status_code in (200, 204), out.text
        assert_error(query(b_inst, on_b, body_for(pid)), 401, "TOKEN_REVOKED")


def test_without_a_subscription_the_first_level_cache_is_bypassed(pair, own_redis):
    import redis
    a_inst, b_inst = pair
    b_admin = admin_of(b_inst)
    owner = user(a_inst)
    on_b = as_on(b_inst, owner)
    pid = add_project(a_inst, owner.id, title="s0")
    for _ in range(3):
        query_ok(b_inst, on_b, body_for(pid))
    rds = redis.Redis(host="127.0.0.1", port=own_redis.port)
    # no instance may subscribe again while this lasts
    rds.execute_command("ACL", "SETUSER", "default", "-subscribe")
    try:
        rds.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        # a write B cannot hear of: its first-level cache must not answer
        tx_ok(a_inst, owner, [pg_update("projects", {"id": pid}, {"title": "s1"})])
        before, calls = l1_hits(b_inst, b_admin), mgets(own_redis)
        for _ in range(10):
            assert query_ok(b_inst, on_b, body_for(pid))["data"][0]["title"] == "s1"
        after = l1_hits(b_inst, b_admin)
        assert after == before, (before, after)
        assert mgets(own_redis) - calls >= 10
        losses = re.search(r"^coredb_cache_invalidation_subscription_losses_total (\S+)$",
                           b_inst.get("/metrics", headers=b_admin.headers).text, re.M)
        assert losses and float(losses.group(1)) >= 1
    finally:
        rds.execute_command("ACL", "SETUSER", "default", "+subscribe")
    # subscribed again (backoff at most 2 s): the first-level cache serves again

    def served_from_l1():
        was = l1_hits(b_inst, b_admin)["answer"]
        query_ok(b_inst, on_b, body_for(pid))
        query_ok(b_inst, on_b, body_for(pid))
        return l1_hits(b_inst, b_admin)["answer"] > was
    wait_for(served_from_l1, timeout=15, step=0.3)
    tx_ok(a_inst, owner, [pg_update("projects", {"id": pid}, {"title": "s2"})])
    assert query_ok(b_inst, on_b, body_for(pid))["data"][0]["title"] == "s2"
