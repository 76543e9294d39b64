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
def own_redis():
    """A Redis of this module's own, so stopping it disturbs no other test."""
    server = RedisServer()
    yield server
    server.destroy()


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


def test_a_lease_header_is_checked_by_the_worker(linst, ladmin):
    a = user(linst)
    pid = add_project(linst, a.id)
    query_ok(linst, a, body_for(pid))
    assert query_ok(linst, a, body_for(pid))["cached"] is True
    before = admissions(linst, ladmin)
    resp = query(linst, a, body_for(pid), headers={"X-Connection-ID": "00000000-0000-4000-8000-000000000000"})
    assert resp.status_code in (403, 404), resp.text
    assert resp.json()["error"]["code"] in ("NOT_FOUND", "FORBIDDEN", "LEASE_NOT_FOUND"), resp.text
    d = delta(before, admissions(linst, ladmin))
    assert d["answered"] == 0 and d["worker"] >= 1, d


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
