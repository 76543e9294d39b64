"""The data API's read cache end to end: a repeat is a hit, the cache is per
caller and canonical query, and no read ever returns data older than a write
that completed before it started — on the same instance, on a second
instance sharing the Redis, under concurrent readers, with the in-process
cache, and across a Redis outage (including Redis coming back with its old
snapshot)."""
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from datahelp import (add_project, add_projects, admin_of, pg_delete, pg_insert, pg_update,
                      query_ok, redis_client, start_instance, tx_ok, user, wait_for)
from identity import Account

# the module fixtures inst, admin, rds (conftest.py) use this Redis database
# the module fixtures inst, admin, rds (conftest.py) use this Redis database
REDIS_DB = 13
SHARED_DB = 14


def body_for(pid):
    return {"table": "projects", "select": ["id", "title", "status"], "filters": {"id": pid}}


def hit_then_fresh_after_write(inst, writer=None, reader=None):
    """The core property on one or two instances: miss, hit, write, fresh."""
    reader = reader or inst
    writer = writer or inst
    a = user(writer)
    acct_r = Account(reader, a.user, a.password, a.session)
    pid = add_project(writer, a.id, title="t0", status="draft")
    body = body_for(pid)
    first = query_ok(reader, acct_r, body)
    assert first["cached"] is False and first["data"][0]["status"] == "draft"
    second = query_ok(reader, acct_r, body)
    assert second["cached"] is True, second
    assert second["data"] == first["data"] and second["pagination"] == first["pagination"]
    for i, status in enumerate(["generating", "done", "archived"]):
        tx_ok(writer, a, [pg_update("projects", {"id": pid}, {"status": status})])
        after = query_ok(reader, acct_r, body)
        assert after["cached"] is False, (i, after)
        assert after["data"][0]["status"] == status, (i, after)
        again = query_ok(reader, acct_r, body)
        assert again["cached"] is True and again["data"][0]["status"] == status
    tx_ok(writer, a, [pg_delete("projects", {"id": pid})])
    gone = query_ok(reader, acct_r, body)
    assert gone["data"] == [] and gone["pagination"]["total"] == 0 and gone["cached"] is False
    return a


def test_repeat_is_a_hit_and_canonical(inst, redis_server):
    a = user(inst)
    add_projects(inst, a.id, 3)
    body = {"table": "projects", "select": ["title"],
            "order_by": [{"column": "title", "direction": "asc"}],
            "pagination": {"page": 1, "limit": 2}}
    first = query_ok(inst, a, body)
    assert first["cached"] is False
    second = query_ok(inst, a, body)
    assert second["cached"] is True
    assert second["data"] == first["data"] and second["pagination"] == first["pagination"]
    # the same request with its keys in another order is the same query
    reordered = {"pagination": {"limit": 2, "page": 1}, "select": ["title"],
                 "order_by": [{"direction": "asc", "column": "title"}], "table": "projects"}
    assert query_ok(inst, a, reordered)["cached"] is True
    # anything that changes the answer is another entry
    for change in ({"pagination": {"page": 2, "limit": 2}}, {"select": ["title", "id"]},
                   {"order_by": [{"column": "title", "direction": "desc"}]},
                   {"filters": {"title": "p000"}}):
        other = query_ok(inst, a, {**body, **change})
        assert other["cached"] is False, change
    rds = redis_client(redis_server, REDIS_DB)
    assert any(True for _ in rds.scan_iter("coredb:*:q:projects:*", count=1000))


def test_cache_is_per_caller(inst):
    a, b = user(inst), user(inst)
    pa = add_project(inst, a.id, title="a-secret")
    pb = add_project(inst, b.id, title="b-secret")
    body = {"table": "projects", "select": ["id", "title"]}
    assert query_ok(inst, a, body)["data"] == [{"id": pa, "title": "a-secret"}]
    assert query_ok(inst, a, body)["cached"] is True
    out_b = query_ok(inst, b, body)
    assert out_b["cached"] is False and out_b["data"] == [{"id": pb, "title": "b-secret"}]
    admin = admin_of(inst)
    both = {"table": "projects", "select": ["id"], "filters": {"id": {"in": [pa, pb]}}}
    query_ok(inst, a, both)
    assert query_ok(inst, a, both)["data"] == [{"id": pa}]
    out_admin = query_ok(inst, admin, both)
    assert out_admin["cached"] is False and len(out_admin["data"]) == 2


def test_no_stale_read_after_write(inst):
    hit_then_fresh_after_write(inst)


def test_insert_invalidates_list_and_total(inst):
    a = user(inst)
    body = {"table": "projects", "select": ["title"]}
    assert query_ok(inst, a, body)["pagination"]["total"] == 0
    assert query_ok(inst, a, body)["cached"] is True
    tx_ok(inst, a, [pg_insert("projects", {"title": "fresh", "user_id": a.id})])
    out = query_ok(inst, a, body)
    assert out["cached"] is False
    assert out["pagination"]["total"] == 1 and out["data"] == [{"title": "fresh"}]


def test_users_write_invalidates_admin_view(inst):
    a = user(inst)
    admin = admin_of(inst)
    pid = add_project(inst, a.id, status="draft")
    body = body_for(pid)
    assert query_ok(inst, admin, body)["data"][0]["status"] == "draft"
    assert query_ok(inst, admin, body)["cached"] is True
    tx_ok(inst, a, [pg_update("projects", {"id": pid}, {"status": "seen-by-admin"})])
    out = query_ok(inst, admin, body)
    assert out["cached"] is False and out["data"][0]["status"] == "seen-by-admin"


def test_writes_through_the_users_api_invalidate(inst):
    """PUT /users and DELETE /users (cascading to projects) are writes
    through coredb too: no cached read may outlive them."""
    a = user(inst)
    admin = admin_of(inst)
    own = {"table": "users", "select": ["display_name"]}
    assert query_ok(inst, a, own)["data"] == [{"display_name": None}]
    assert query_ok(inst, a, own)["cached"] is True
    resp = inst.request("PUT", f"/users/{a.id}", json={"display_name": "Renamed"},
                        headers=a.headers)
    assert resp.status_code == 200, resp.text
    assert query_ok(inst, a, own)["data"] == [{"display_name": "Renamed"}], \
        "stale users row after PUT /users"
    add_project(inst, a.id)
    theirs = {"table": "projects", "select": ["id"], "filters": {"user_id": a.id}}
    assert query_ok(inst, admin, theirs)["pagination"]["total"] == 1
    assert query_ok(inst, admin, theirs)["cached"] is True
    resp = inst.request("DELETE", f"/users/{a.id}", headers=admin.headers)
    assert resp.status_code == 204, resp.text
    assert query_ok(inst, admin, theirs)["pagination"]["total"] == 0, \
        "projects of a deleted user still served from the cache"


def test_failed_write_keeps_serving_correct_data(inst):
    a = user(inst)
    pid = add_project(inst, a.id, status="draft")
    body = body_for(pid)
    query_ok(inst, a, body)
    resp = inst.post("/api/v1/data/transaction", headers=a.headers, json={"operations": [
        pg_update("projects", {"id": pid}, {"status": "rolled-back"}),
        pg_insert("projects", {"user_id": a.id})]})
    assert resp.status_code == 400, resp.text
    out = query_ok(inst, a, body)
    assert out["data"][0]["status"] == "draft"


def test_concurrent_readers_never_see_older_than_completed_write(inst):
    a = user(inst)
    pid = add_project(inst, a.id, title="v000")
    body = {"table": "projects", "select": ["title"], "filters": {"id": pid}}
    done = []            # (monotonic time the write's response arrived, version)
    reads = []           # (monotonic time the read was sent, version seen)
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            t = time.monotonic()
            out = query_ok(inst, a, body)
            reads.append((t, int(out["data"][0]["title"][1:])))

    threads = [threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for i in range(1, 26):
            tx_ok(inst, a, [pg_update("projects", {"id": pid}, {"title": f"v{i:03d}"})])
            done.append((time.monotonic(), i))
            time.sleep(0.01)
    finally:
        stop.set()
        for t in threads:
            t.join()
    stale = []
    for sent, seen in reads:
        floor = max([v for (t, v) in done if t < sent], default=0)
        if seen < floor:
            stale.append((round(sent, 4), seen, floor))
    assert len(reads) > 25
    assert not stale, f"{len(stale)} stale reads of {len(reads)}: {stale[:10]}"


def test_concurrent_identical_misses_run_one_query(inst):
    a = user(inst)
    pid = add_project(inst, a.id)
    body = {"table": "media_assets", "select": ["id"], "filters": {"project_id": pid}}
    start = threading.Barrier(20)

    def one(_):
        start.wait()
        return query_ok(inst, a, body)

    with ThreadPoolExecutor(20) as pool:
        outs = list(pool.map(one, range(20)))
    assert all(o["data"] == [] for o in outs)
    # the one that queried says so; the others were served its result
    misses = sum(1 for o in outs if not o["cached"])
    assert misses == 1, f"{misses} of 20 concurrent identical reads queried PostgreSQL"


# ---- two instances sharing PostgreSQL and Redis ----

def test_second_instance_sees_writes_at_once(pg, redis_server):
    first = start_instance(pg, redis_server, SHARED_DB)
    second = None
    try:
        second = start_instance(pg, redis_server, SHARED_DB, db=first.db)
        a = user(first)
        a_on_b = Account(second, a.user, a.password, a.session)
        pid = add_project(first, a.id, status="draft")
        body = body_for(pid)
        assert query_ok(second, a_on_b, body)["cached"] is False
        assert query_ok(second, a_on_b, body)["cached"] is True
        # the entry B stored is shared: A hits it too
        assert query_ok(first, a, body)["cached"] is True
        for i in range(10):
            status = f"s{i}"
            # alternate the writer, always read on the other one
            writer, wacct, reader, racct = (first, a, second, a_on_b) if i % 2 == 0 else \
                (second, a_on_b, first, a)
            tx_ok(writer, wacct, [pg_update("projects", {"id": pid}, {"status": status})])
            out = query_ok(reader, racct, body)
            assert out["data"][0]["status"] == status, (i, out)
            assert out["cached"] is False
            assert query_ok(writer, wacct, body)["data"][0]["status"] == status
        hit_then_fresh_after_write(first, writer=first, reader=second)
    finally:
        if second is not None:
            second.stop_clean()
        first.stop_clean()


# ---- the in-process cache (no Redis) ----

def test_in_process_cache(pg):
    inst = start_instance(pg, None, CACHE_TTL=2)
    try:
        a = hit_then_fresh_after_write(inst)
        pid = add_project(inst, a.id, title="ttl")
        body = body_for(pid)
        assert query_ok(inst, a, body)["cached"] is False
        assert query_ok(inst, a, body)["cached"] is True
        time.sleep(2.6)
        assert query_ok(inst, a, body)["cached"] is False, "CACHE_TTL not honoured"
    finally:
        inst.stop_clean()


# ---- Redis down ----

def test_redis_down_answers_stay_correct(pg, private_redis):
    inst = start_instance(pg, private_redis, 0)
    try:
        rds = redis_client(private_redis, 0)
        a = user(inst)
        pid = add_project(inst, a.id, status="draft")
        body = body_for(pid)
        assert query_ok(inst, a, body)["cached"] is False
        assert query_ok(inst, a, body)["cached"] is True
        # Redis goes away, keeping a snapshot of the cached entry and the old
        # generation that it will load when it comes back
        rds.save()
        private_redis.stop()
        down = query_ok(inst, a, body)
        assert down["cached"] is False and down["data"][0]["status"] == "draft"
        t0 = time.time()
        tx_ok(inst, a, [pg_update("projects", {"id": pid}, {"status": "written-while-down"})])
        assert time.time() - t0 < 5
        for _ in range(3):
            out = query_ok(inst, a, body)
            assert out["cached"] is False
            assert out["data"][0]["status"] == "written-while-down"
        private_redis.start()
        assert rds.dbsize() > 0, \
            "snapshot did not restore the old entry (test setup)"
        # Redis is back with the old entry: no read may return it
        stale = []
        deadline = time.time() + 4
        while time.time() < deadline:
            out = query_ok(inst, a, body)
            if out["data"][0]["status"] != "written-while-down":
                stale.append(out)
            time.sleep(0.05)
        assert not stale, f"{len(stale)} stale reads after Redis came back: {stale[0]}"
        # and the cache works again
        assert wait_for(lambda: query_ok(inst, a, body)["cached"], timeout=10)
    finally:
        if private_redis.proc.poll() is not None:
            private_redis.start()
        inst.stop_clean()
