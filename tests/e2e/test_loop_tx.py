"""Data-API transactions run on the event loops (src/http/loop_tx.c over
src/store/pg_async.c's exact jobs, issue 8 item 3): an unkeyed POST
/api/v1/data/transaction is validated by the worker's code, sent by the loop
that admitted it as one pipeline segment (BEGIN ... COMMIT) on its own
PostgreSQL connection, and its outbox (Redis operations and cache generation
bumps) is applied on that loop too, as the worker path applies it.

coredb_http_loop_transactions_total{outcome} counts what the loop did with
each (committed / refused / unknown), so these tests prove a transaction
ran on the loop, and compare its answer with the worker path's (a second
instance on the same database with DB_LOOP_CONNECTIONS=0). Covered: inserts,
updates, upserts, deletes and Redis operations committed on the loop (rows
checked with psycopg2, keys and the tables' generation keys with redis-py);
a read after the write is fresh (no stale cached page); a constraint
violation, a bad value and a permission refusal give exactly the worker's
error with nothing committed (the loop hands them to a worker, once the
refused block is rolled back); Idempotency-Key transactions commit on the
loop in two segments on a claimed connection, their stored answer the one
sent, a retry replayed by a worker, another body under the key 422, a
refused one storing nothing, concurrent twins committing once; a
malformed key and a validation error are the worker's to answer; a
PostgreSQL restart with transactions in flight (each answered 200, a 4xx,
503 TRANSACTION_OUTCOME_UNKNOWN resolved by GET /data/transactions/{id}, or
503, checked against the ledger; every keyed one retried after it, one
row each); Redis killed mid-run (rows stay pending in
the outbox and are applied after Redis is back); hostile bodies and tokens;
a transaction sent while misses are parked parks behind them and commits on
the loop in its turn.

The outbox on the loop (data/tx_loop.c; coredb_http_loop_transaction_finishes_total{where} counts where
each committed transaction finished): answers with Redis results and cache invalidation identical to the
worker path's, the generation bump and the Redis keys in place and the outbox rows gone before the
answer, and no request admitted on a worker (coredb_http_loop_admissions_total{outcome="worker"}); 30
in a row all finished on the loop; a second instance serving the new data on the very next request after
A's answer; a subscriber that never acknowledges (the answer waits 500 ms per bump while the same single
loop keeps answering); the flush job and a competing locker taking rows concurrently (every INCR applied
exactly once, rows another holds answered "pending" and applied later); Redis SIGKILLed while
transactions stream (200 with "success" or "pending", nothing hung, all applied after the restart);
Redis refusing writes (NOREPLICAS: "pending" with the attempt counted, as the worker answers).
"""
import json
import re
import threading
import time
import uuid

import pytest
import requests

from datahelp import (TX, add_project, admin_of, counter, delta, metric, pg_delete, pg_insert, pg_update, pg_upsert,
                      query, query_ok, redis_client, rop, rset, scalar, start_instance, tx, tx_ok, user, wait_for)
from identity import assert_error
from servers import PgServer, RedisServer
from test_loop_query import create_slow_view, wait_table

REDIS_DB = 9
LOOP_ENV = {"HTTP_THREADS": "2", "DB_POOL_MAX": "8", "DB_LOOP_CONNECTIONS": "2",
            "RATE_LIMIT_USER": "0", "RATE_LIMIT_PREMIUM": "0"}
CLIENT_TIMEOUT = 20




def loop_txs(inst, admin):
    got = metric(inst, admin, "coredb_http_loop_transactions_total")
    return {k: got.get(k, 0.0) for k in ("committed", "refused", "unknown")}



def normalized(out):
    """An answer without what differs between two runs of the same transaction."""
    out = dict(out)
    out["transaction_id"] = "T"
    out["execution_time_ms"] = 0
    text = repr(out)
    return re.sub(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", "U",
                  re.sub(r"\d{4}-\d\d-\d\dT[0-9:.+-]+", "TS", text))


def gen_of(rds, table):
    keys = [k for k in rds.keys("coredb:*:gen:" + table)]
    return int(rds.get(keys[0])) if keys else 0


def ledger_has(inst, tid):
    return scalar(inst, "SELECT count(*) FROM coredb.tx_ledger WHERE transaction_id = %s", (tid,)) == 1


@pytest.fixture(scope="module")
def pair(pg, own_redis):
    """An instance running transactions on its loops and one without (the worker path), one database."""
    loop = start_instance(pg, own_redis, REDIS_DB, CACHE_TTL="60", **LOOP_ENV)
    worker = start_instance(pg, own_redis, REDIS_DB, db=loop.db, CACHE_TTL="60",
                            **{**LOOP_ENV, "DB_LOOP_CONNECTIONS": "0"})
    yield loop, worker
    worker.stop_clean()
    loop.stop_clean()


def warm(inst, acct):
    # a caller's first request may find the quota script not loaded yet: the loop then leaves it to a worker
    query_ok(inst, acct, {"table": "projects", "pagination": {"limit": 1}})


def warmed_pair(pair, own_redis):
    """Both instances, the loop's admin, the Redis client, and a caller warmed on both."""
    loop, worker = pair
    a = user(loop)
    warm(loop, a)
    warm(worker, a)
    return loop, worker, admin_of(loop), redis_client(own_redis, REDIS_DB), a


def test_transactions_commit_on_the_loop_like_the_worker(pair, own_redis):
    loop, worker, ladmin, rds, a = warmed_pair(pair, own_redis)
    sessions = []
    for inst in (loop, worker):
        tag = uuid.uuid4().hex[:8]
        p1 = add_project(inst, a.id, title=f"keep-{tag}")
        p2 = add_project(inst, a.id, title=f"drop-{tag}")
        sessions.append((inst, tag, p1, p2))
    answers = []
    before = loop_txs(loop, ladmin)
    wbefore = loop_txs(worker, ladmin)
    gen0 = gen_of(rds, "projects")
    for inst, tag, p1, p2 in sessions:
        ops = [
            pg_insert("projects", {"user_id": a.id, "title": f"new-{tag}", "status": "active"},
                      returning=["title", "status"]),
            pg_update("projects", {"id": p1}, {"status": "archived"}),
            pg_delete("projects", {"id": p2}),
            pg_insert("content_analysis", {"project_id": p1, "analysis_type": "tone", "result": {"x": 1}}),
            rset(f"k-{tag}", "v1", ttl=300),
            rop("incr", f"n-{tag}"),
            rop("incr", f"n-{tag}"),
            rop("expire", f"k-{tag}", ttl=120),
            rop("del", f"gone-{tag}"),
        ]
        out = tx_ok(inst, a, ops)
        assert [r["status"] for r in out["results"]] == ["success"] * len(ops), out
        assert out["results"][5]["data"]["value"] == 1 and out["results"][6]["data"]["value"] == 2, out
        assert ledger_has(inst, out["transaction_id"])
        answers.append(out)
        # effects where they land: PostgreSQL and Redis
        assert scalar(inst, "SELECT status FROM projects WHERE title = %s", (f"new-{tag}",)) == "active"
        assert scalar(inst, "SELECT status FROM projects WHERE id = %s", (p1,)) == "archived"
        assert scalar(inst, "SELECT count(*) FROM projects WHERE id = %s", (p2,)) == 0
        assert scalar(inst, "SELECT count(*) FROM content_analysis WHERE project_id = %s", (p1,)) == 1
        assert rds.get(f"app:user:{a.id}:k-{tag}") == "v1"
        assert 0 < rds.ttl(f"app:user:{a.id}:k-{tag}") <= 120
        assert rds.get(f"app:user:{a.id}:n-{tag}") == "2"
        # the outbox was applied right away, not left for the flush job
        assert scalar(inst, "SELECT count(*) FROM coredb.redis_outbox WHERE transaction_id = %s",
                      (out["transaction_id"],)) == 0
    d = delta(before, loop_txs(loop, ladmin))
    assert d == {"committed": 1, "refused": 0, "unknown": 0}, d
    # the worker instance ran its own on a worker
    assert delta(wbefore, loop_txs(worker, ladmin))["committed"] == 0
    assert normalized(answers[0]).replace(sessions[0][1], "TAG") == normalized(answers[1]).replace(
        sessions[1][1], "TAG")
    # each transaction bumped the tables' generations (the cache invalidation)
    assert gen_of(rds, "projects") >= gen0 + 2
    assert gen_of(rds, "content_analysis") >= 2


def test_many_operations_and_upsert_on_the_loop(pair):
    loop, _ = pair
    ladmin = admin_of(loop)
    a = user(loop)
    warm(loop, a)
    before = loop_txs(loop, ladmin)
    tag = uuid.uuid4().hex[:6]
    ops = [pg_insert("projects", {"user_id": a.id, "title": f"m{tag}-{i:03d}"}) for i in range(90)]
    ops += [rset(f"r{tag}-{i}", str(i)) for i in range(10)]
    out = tx_ok(loop, a, ops)
    assert len(out["results"]) == 100
    assert scalar(loop, "SELECT count(*) FROM projects WHERE title LIKE %s", (f"m{tag}-%",)) == 90
    # an upsert on the primary key, twice: insert, then update
    pid = str(uuid.uuid4())
    for title in ("first", "second"):
        tx_ok(loop, a, [pg_upsert("projects", {"id": pid, "user_id": a.id, "title": title}, ["id"])])
    assert scalar(loop, "SELECT title FROM projects WHERE id = %s", (pid,)) == "second"
    d = delta(before, loop_txs(loop, ladmin))
    assert d["committed"] == 3 and d["refused"] == 0, d


def test_read_after_write_is_fresh(pair):
    loop, worker = pair
    a = user(loop)
    warm(loop, a)
    pid = add_project(loop, a.id, title="fresh-0")
    body = {"table": "projects", "select": ["id", "title"], "filters": {"id": pid}}
    # cached on both instances
    for inst in (loop, worker, loop, worker):
        query_ok(inst, a, body)
    assert query_ok(loop, a, body)["cached"] is True
    for n in range(1, 6):
        tx_ok(loop, a, [pg_update("projects", {"id": pid}, {"title": f"fresh-{n}"})])
        # the writer's own next read, on this instance and on the other one: never the old page
        assert query_ok(loop, a, body)["data"][0]["title"] == f"fresh-{n}"
        assert query_ok(worker, a, body)["data"][0]["title"] == f"fresh-{n}"


def test_refused_transactions_get_the_worker_error_and_commit_nothing(pair):
    loop, worker = pair
    ladmin = admin_of(loop)
    a, b = user(loop), user(loop)
    warm(loop, a)
    warm(worker, a)
    mine = add_project(loop, a.id, title="mine")
    theirs = add_project(loop, b.id, title="theirs")
    cases = [
        # not-null violation (server error on the second op), unknown foreign key
        [pg_insert("projects", {"user_id": a.id, "title": "ok-1"}), pg_insert("projects", {"user_id": a.id})],
        [pg_insert("content_analysis", {"project_id": str(uuid.uuid4()), "analysis_type": "tone"})],
        # a value PostgreSQL refuses (class 22: the worker names the field)
        [pg_insert("projects", {"user_id": a.id, "title": "ok-2"}),
         pg_update("projects", {"id": mine}, {"created_at": "not a time"})],
        # a duplicate primary key
        [pg_insert("projects", {"id": mine, "user_id": a.id, "title": "dup"})],
        # row-level security: inserting a row owned by someone else
        [pg_insert("projects", {"user_id": b.id, "title": "forged"})],
    ]
    for ops in cases:
        before = loop_txs(loop, ladmin)
        outbox0 = scalar(loop, "SELECT count(*) FROM coredb.redis_outbox")
        ledger0 = scalar(loop, "SELECT count(*) FROM coredb.tx_ledger")
        on_loop, on_worker = tx(loop, a, ops), tx(worker, a, ops)
        assert 400 <= on_loop.status_code < 500, (ops, on_loop.status_code, on_loop.text[:300])
        assert on_loop.status_code == on_worker.status_code, (on_loop.text, on_worker.text)
        le, we = on_loop.json()["error"], on_worker.json()["error"]
        assert (le["code"], le["message"], le.get("details")) == (we["code"], we["message"], we.get("details")), \
            (le, we)
        assert "INSERT" not in on_loop.text and "coredb.tx_ledger" not in on_loop.text
        d = delta(before, loop_txs(loop, ladmin))
        assert d["refused"] == 1 and d["committed"] == 0, (ops, d)
        assert scalar(loop, "SELECT count(*) FROM coredb.tx_ledger") == ledger0
        assert scalar(loop, "SELECT count(*) FROM coredb.redis_outbox") == outbox0
    assert scalar(loop, "SELECT count(*) FROM projects WHERE title IN ('ok-1', 'ok-2', 'dup', 'forged')") == 0
    assert scalar(loop, "SELECT title FROM projects WHERE id = %s", (theirs,)) == "theirs"
    # the loop connection is usable again after the rollbacks
    before = loop_txs(loop, ladmin)
    tx_ok(loop, a, [pg_insert("projects", {"user_id": a.id, "title": "after-refusals"})])
    assert delta(before, loop_txs(loop, ladmin))["committed"] == 1


def test_what_stays_on_the_worker(pair):
    loop, _ = pair
    ladmin = admin_of(loop)
    a = user(loop)
    warm(loop, a)
    before = loop_txs(loop, ladmin)
    # validation errors are answered by the worker, exactly as before
    assert_error(tx(loop, a, [{"database": "postgresql", "operation": "insert", "table": "nope",
                               "data": {"x": 1}}]), 404)
    # so is a malformed Idempotency-Key (the loop's plan refuses it before anything is sent)
    ops = [pg_insert("projects", {"user_id": a.id, "title": "bad-key"})]
    assert_error(loop.post(TX, json={"operations": ops}, headers={**a.headers, "Idempotency-Key": "k" * 300}), 400)
    assert delta(before, loop_txs(loop, ladmin)) == {"committed": 0, "refused": 0, "unknown": 0}
    assert scalar(loop, "SELECT count(*) FROM projects WHERE title = 'bad-key' AND user_id = %s", (a.id,)) == 0


def keyed_tx(inst, acct, key, ops):
    return inst.post(TX, json={"operations": ops}, headers={**acct.headers, "Idempotency-Key": key})


def stored_answer(inst, acct, key):
    return scalar(inst, "SELECT response FROM coredb.tx_ledger WHERE scope = %s AND idempotency_key = %s",
                  (acct.id, key))


def test_keyed_transactions_commit_on_the_loop_and_replay_like_the_worker(pair, own_redis):
    """An Idempotency-Key transaction runs on the loop in two segments on one claimed connection (the
    claim and the operations, then the ledger row with the stored answer and COMMIT); its outbox is
    applied on the loop and the ledger's stored answer replaced by the one with the Redis results. The
    retry is refused by the claim on the loop and replayed by a worker: the very same answer. The
    same key with another body: 422 IDEMPOTENCY_KEY_REUSED, nothing run. Both answers match the
    worker instance's."""
    loop, worker, ladmin, rds, a = warmed_pair(pair, own_redis)
    answers = []
    for inst in (loop, worker):
        tag = uuid.uuid4().hex[:8]
        key = "key-" + tag
        ops = [pg_insert("projects", {"user_id": a.id, "title": f"keyed-{tag}", "status": "active"},
                         returning=["title", "status"]),
               rop("incr", f"kn-{tag}")]
        tx0, (fin0, _) = loop_txs(loop, ladmin), snapshot(loop, ladmin)
        first = keyed_tx(inst, a, key, ops)
        assert first.status_code == 200, first.text
        assert first.headers.get("Idempotent-Replayed") != "true"
        out = first.json()
        assert [r["status"] for r in out["results"]] == ["success", "success"], out
        assert out["results"][1]["data"]["value"] == 1, out
        assert rds.get(f"app:user:{a.id}:kn-{tag}") == "1"
        # the stored answer is the one sent, Redis results included (replaced on the loop, step 3)
        assert json.loads(stored_answer(inst, a, key)) == out
        if inst is loop:
            fin = snapshot(loop, ladmin)[0]
            assert delta(tx0, loop_txs(loop, ladmin)) == {"committed": 1, "refused": 0, "unknown": 0}
            assert fin["loop"] - fin0["loop"] == 1 and fin["worker"] == fin0["worker"], (fin0, fin)
        # the retry: refused by the claim (on the loop), replayed by a worker; nothing runs twice
        tx1 = loop_txs(loop, ladmin)
        again = keyed_tx(inst, a, key, ops)
        assert again.status_code == 200, again.text
        assert again.headers.get("Idempotent-Replayed") == "true"
        assert again.json() == out
        assert scalar(inst, "SELECT count(*) FROM projects WHERE title = %s", (f"keyed-{tag}",)) == 1
        assert rds.get(f"app:user:{a.id}:kn-{tag}") == "1"
        if inst is loop:
            assert delta(tx1, loop_txs(loop, ladmin)) == {"committed": 0, "refused": 1, "unknown": 0}
        # the same key, another body
        other = [pg_insert("projects", {"user_id": a.id, "title": f"other-{tag}"})]
        assert_error(keyed_tx(inst, a, key, other), 422, "IDEMPOTENCY_KEY_REUSED")
        assert scalar(inst, "SELECT count(*) FROM projects WHERE title = %s", (f"other-{tag}",)) == 0
        answers.append((out, tag))
    (lo, ltag), (wo, wtag) = answers
    assert normalized(lo).replace(ltag, "TAG") == normalized(wo).replace(wtag, "TAG")


def test_keyed_transaction_refused_by_the_server_stores_nothing(pair):
    """An operation the server refuses (a unique violation): the worker's error, no ledger row for the
    key, no row written; the key stays free, so the corrected request under it commits on the loop."""
    loop, _ = pair
    ladmin = admin_of(loop)
    a = user(loop)
    warm(loop, a)
    tag = uuid.uuid4().hex[:8]
    key = "bad-" + tag
    pid = add_project(loop, a.id, title=f"exists-{tag}")
    dup = [pg_insert("projects", {"user_id": a.id, "title": f"half-{tag}"}),
           pg_insert("projects", {"id": pid, "user_id": a.id, "title": "dup"})]
    tx0 = loop_txs(loop, ladmin)
    err = assert_error(keyed_tx(loop, a, key, dup), 409, "CONFLICT")
    assert err["details"].get("operation") == 2, err
    assert delta(tx0, loop_txs(loop, ladmin)) == {"committed": 0, "refused": 1, "unknown": 0}
    assert stored_answer(loop, a, key) is None
    assert scalar(loop, "SELECT count(*) FROM projects WHERE title = %s", (f"half-{tag}",)) == 0
    fixed = keyed_tx(loop, a, "fixed-" + tag, dup[:1])
    assert fixed.status_code == 200, fixed.text
    assert delta(tx0, loop_txs(loop, ladmin))["committed"] == 1


def test_concurrent_twins_under_one_key_commit_once(pair):
    """Eight requests under one Idempotency-Key at once: exactly one commits; every other is the replay
    of its answer or 409 IDEMPOTENCY_KEY_IN_PROGRESS (the claim's try-lock), never a second row, never
    a 5xx."""
    loop, _ = pair
    a = user(loop)
    warm(loop, a)
    tag = uuid.uuid4().hex[:8]
    key = "twin-" + tag
    ops = [pg_insert("projects", {"user_id": a.id, "title": f"twin-{tag}"})]
    results = [None] * 8
    go = threading.Barrier(len(results))

    def one(i):
        go.wait(timeout=10)
        results[i] = keyed_tx(loop, a, key, ops)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(len(results))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=CLIENT_TIMEOUT)
    assert all(r is not None for r in results)
    assert scalar(loop, "SELECT count(*) FROM projects WHERE title = %s", (f"twin-{tag}",)) == 1
    ok = [r for r in results if r.status_code == 200]
    assert ok and len({r.json()["transaction_id"] for r in ok}) == 1, [r.text for r in results]
    assert sum(r.headers.get("Idempotent-Replayed") != "true" for r in ok) <= 1
    for r in results:
        if r.status_code != 200:
            assert_error(r, 409, "IDEMPOTENCY_KEY_IN_PROGRESS")
    stored = json.loads(stored_answer(loop, a, key))
    assert stored["transaction_id"] == ok[0].json()["transaction_id"]


def test_hostile_bodies_and_tokens(pair):
    loop, worker = pair
    ladmin = admin_of(loop)
    a, b = user(loop), user(loop)
    warm(loop, a)
    theirs = add_project(loop, b.id, title="not-yours")
    ops = [pg_insert("projects", {"user_id": a.id, "title": "x"})]
    assert loop.post(TX, json={"operations": ops}).status_code == 401
    assert loop.post(TX, json={"operations": ops},
                     headers={"Authorization": "Bearer " + a.token[:-4] + "AAAA"}).status_code == 401
    before = loop_txs(loop, ladmin)
    hostile = [b"{", b"[1,2]", b'{"operations": 5}', b'{"operations": []}', b'{"operations": [1]}',
               b'{"operations": [{"database": "postgresql", "operation": "drop", "table": "projects"}]}',
               b'{"operations": [{"database": "postgresql", "operation": "insert", '
               b'"table": "projects\\"; DROP TABLE users; --", "data": {"title": "x"}}]}',
               b'{"operations": [{"database": "postgresql", "operation": "insert", "table": "projects", '
               b'"data": {"title\\"; DROP TABLE users; --": "x"}}]}',
               b'{"operations": [{"database": "postgresql", "operation": "update", "table": "projects", '
               b'"filters": {}, "data": {"title": "all"}}]}',
               b'{"operations": [{"database": "redis", "operation": "set", "key": 5, "value": "x"}]}',
               b'{"operations": [' + b",".join([b'{"database": "redis", "operation": "incr", "key": "k"}'] * 101)
               + b"]}",
               b'{"operations": [{"database": "postgresql", "operation": "insert", "table": "projects", '
               b'"data": {"title": "' + b"x" * 200000 + b'"}}]}',
               b'{"operations": [], "operations": []}']
    for raw in hostile:
        resp = loop.post(TX, data=raw, headers={**a.headers, "Content-Type": "application/json"})
        other = worker.post(TX, data=raw, headers={**a.headers, "Content-Type": "application/json"})
        assert 400 <= resp.status_code < 500, (raw[:60], resp.status_code, resp.text[:200])
        assert resp.status_code == other.status_code, (raw[:60], resp.text[:200], other.text[:200])
        assert resp.json()["error"]["code"] == other.json()["error"]["code"]
        assert "INSERT INTO" not in resp.text and "coredb.tx_ledger" not in resp.text   # no SQL leaks
    # another user's row: row-level security makes it invisible (a count of 0), never changed
    out = tx_ok(loop, a, [pg_update("projects", {"id": theirs}, {"title": "stolen"}),
                          pg_delete("projects", {"id": theirs})])
    assert [r["data"]["count"] for r in out["results"]] == [0, 0], out
    assert scalar(loop, "SELECT title FROM projects WHERE id = %s", (theirs,)) == "not-yours"
    d = delta(before, loop_txs(loop, ladmin))
    assert d["committed"] == 1 and d["unknown"] == 0, d
    assert scalar(loop, "SELECT count(*) FROM users") >= 2


def test_redis_killed_mid_run_leaves_rows_pending_then_applied(pg):
    private = RedisServer()
    inst = start_instance(pg, private, 0, CACHE_TTL="60", **LOOP_ENV)
    try:
        admin = admin_of(inst)
        a = user(inst)
        warm(inst, a)
        rds = redis_client(private, 0)
        tx_ok(inst, a, [rset("before", "1")])
        before = loop_txs(inst, admin)
        private.stop()
        # the loop's Redis is not trusted while it is away: admission goes to the workers, whose
        # transactions commit with the Redis side pending; the ones admitted on the loop just
        # before the kill did the same through the worker's apply_outbox
        tags = [uuid.uuid4().hex[:6] for _ in range(4)]
        outs = []
        for tag in tags:
            resp = tx(inst, a, [pg_insert("projects", {"user_id": a.id, "title": f"down-{tag}"}),
                                rset(f"down-{tag}", tag)])
            assert resp.status_code == 200, resp.text
            out = resp.json()
            assert out["results"][1]["status"] == "pending", out
            outs.append(out)
        for tag in tags:
            assert scalar(inst, "SELECT count(*) FROM projects WHERE title = %s", (f"down-{tag}",)) == 1
        assert scalar(inst, "SELECT count(*) FROM coredb.redis_outbox WHERE transaction_id = ANY(%s::uuid[])",
                      ([o["transaction_id"] for o in outs],)) >= 2 * len(tags)
        private.start()
        rds = redis_client(private, 0)
        assert wait_for(lambda: all(rds.get(f"app:user:{a.id}:down-{t}") == t for t in tags), timeout=20), \
            {t: rds.get(f"app:user:{a.id}:down-{t}") for t in tags}
        assert wait_for(lambda: scalar(inst, "SELECT count(*) FROM coredb.redis_outbox") == 0, timeout=10)
        # and transactions run on the loop again
        assert wait_for(lambda: tx(inst, a, [rset("again", "1")]).status_code == 200 and
                        loop_txs(inst, admin)["committed"] > before["committed"], timeout=20, step=0.3)
        assert rds.get(f"app:user:{a.id}:again") == "1"
    finally:
        inst.stop_clean()
        private.destroy()


def test_postgresql_restart_with_transactions_in_flight(own_redis):
    # commits must survive the crash-restart for the ledger comparison to mean anything
    private = PgServer("pg-looptx", extra_opts="-c synchronous_commit=on")
    inst = start_instance(private, own_redis, REDIS_DB + 1, CACHE_TTL="60", DB_POOL_ACQUIRE_TIMEOUT="3000",
                          **LOOP_ENV)
    stop = threading.Event()
    outcomes = []
    lock = threading.Lock()
    try:
        admin = admin_of(inst)
        accounts = [user(inst) for _ in range(4)]
        for acct in accounts:
            warm(inst, acct)
        before = loop_txs(inst, admin)

        def ops_of(acct, title):
            return [pg_insert("projects", {"user_id": acct.id, "title": title}), rop("incr", "restarts")]

        def client(acct, keyed):
            """keyed: each transaction under an Idempotency-Key (its title): the loop's two segments"""
            session = requests.Session()
            while not stop.is_set():
                title = ("rk-" if keyed else "rs-") + uuid.uuid4().hex
                headers = {**acct.headers, **({"Idempotency-Key": title} if keyed else {})}
                t0 = time.time()
                try:
                    resp = session.post(inst.base + TX, headers=headers, timeout=CLIENT_TIMEOUT,
                                        json={"operations": ops_of(acct, title)})
                    status, body = resp.status_code, resp.json()
                except requests.RequestException as exc:
                    status, body = None, repr(exc)
                with lock:
                    outcomes.append((title, status, body, time.time() - t0, acct))
                time.sleep(0.01)
        threads = [threading.Thread(target=client, args=(accounts[i % 4], i % 2 == 1), daemon=True)
                   for i in range(8)]
        for t in threads:
            t.start()
        time.sleep(1.5)
        private.restart("immediate")
        time.sleep(2.5)
        stop.set()
        for t in threads:
            t.join(CLIENT_TIMEOUT + 5)
        assert not any(t.is_alive() for t in threads), "a client hangs"
        assert len(outcomes) >= 16, len(outcomes)
        assert all(o[1] is not None for o in outcomes), [o for o in outcomes if o[1] is None][:5]
        assert max(o[3] for o in outcomes) < CLIENT_TIMEOUT
        # every answer matches the database: 200 committed, errors not, unknown resolvable
        assert wait_for(lambda: inst.get("/health/ready").status_code == 200, timeout=20)
        # one query each for the rows and the ledger (a connection per outcome took 80 s)
        counts = dict(inst.pg.query(inst.db, "SELECT title, count(*) FROM projects "
                                             "WHERE title LIKE 'rs-%%' OR title LIKE 'rk-%%' GROUP BY title"))
        ledger = {row[0] for row in inst.pg.query(
            inst.db, "SELECT transaction_id::text FROM coredb.tx_ledger WHERE transaction_id::text = ANY(%s)",
            ([body["transaction_id"] for _, status, body, _, _ in outcomes if status == 200],))}
        unknown = 0
        for title, status, body, _, _ in outcomes:
            present = counts.get(title, 0)
            if status == 200:
                assert present == 1, (title, body)
                assert body["transaction_id"] in ledger, body
            elif status == 503 and body["error"]["code"] == "TRANSACTION_OUTCOME_UNKNOWN":
                unknown += 1
                tid = body["error"]["details"]["transaction_id"]
                resolved = None
                for acct in accounts:
                    got = inst.get(f"/api/v1/data/transactions/{tid}", headers=acct.headers)
                    if got.status_code == 200:
                        resolved = got.json()
                assert (resolved is not None) == (present == 1), (title, present, resolved)
            else:
                assert status in (503, 504) or 400 <= status < 500, (status, body)
                assert present == 0, (title, status, body)
        # keyed: a retry of each under its key is safe whatever the first answer was: replayed when it
        # had committed (the same transaction), run once when it had not; never a second row
        keyed = [o for o in outcomes if o[0].startswith("rk-")]
        assert keyed
        for title, status, body, _, acct in keyed:
            again = keyed_tx(inst, acct, title, ops_of(acct, title))
            assert again.status_code == 200, (title, status, again.text)
            if status == 200:
                assert again.headers.get("Idempotent-Replayed") == "true"
                assert again.json()["transaction_id"] == body["transaction_id"]
        counts = dict(inst.pg.query(inst.db, "SELECT title, count(*) FROM projects WHERE title LIKE 'rk-%%' "
                                             "GROUP BY title"))
        assert all(counts.get(o[0]) == 1 for o in keyed), [(o[0], o[1], counts.get(o[0])) for o in keyed]
        after = loop_txs(inst, admin)
        d = delta(before, after)
        assert d["committed"] > 0, d
        print(f"\nrestart: {len(outcomes)} transactions ({len(keyed)} keyed), loop {d}, unknown answered {unknown}")

        # recovery: transactions commit on the loops again
        def on_loop_again():
            ok = tx(inst, accounts[0], [pg_insert("projects", {"user_id": accounts[0].id,
                                                               "title": "back-" + uuid.uuid4().hex})])
            return ok.status_code == 200 and loop_txs(inst, admin)["committed"] > after["committed"]
        assert wait_for(on_loop_again, timeout=20, step=0.3)
    finally:
        stop.set()
        inst.stop_clean()
        private.destroy()


def test_outcome_unknown_is_answered_when_the_connection_dies_after_sending(pair):
    """pg_terminate_backend of the loop's connections while their transactions wait on a lock."""
    loop, _ = pair
    ladmin = admin_of(loop)
    a = user(loop)
    warm(loop, a)
    pid = add_project(loop, a.id, title="locked")
    import psycopg2
    holder = psycopg2.connect(loop.pg.url(loop.db))
    try:
        cur = holder.cursor()
        cur.execute("BEGIN; SELECT 1 FROM projects WHERE id = %s FOR UPDATE", (pid,))
        before = loop_txs(loop, ladmin)
        results = []

        def one():
            results.append(tx(loop, a, [pg_update("projects", {"id": pid}, {"title": "waited"})],
                              timeout=CLIENT_TIMEOUT))
        t = threading.Thread(target=one)
        t.start()
        assert wait_for(lambda: scalar(loop, "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = "
                                             "'Lock' AND application_name = 'coredb'") >= 1, timeout=10)
        scalar(loop, "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE wait_event_type = "
                     "'Lock' AND application_name = 'coredb'")
        time.sleep(0.3)
        holder.rollback()          # a worker that runs it again must not wait on the lock
        t.join(CLIENT_TIMEOUT)
        assert results, "no answer"
        resp = results[0]
        d = delta(before, loop_txs(loop, ladmin))
        # the server's FATAL came as an error result before COMMIT: a known rollback, run again by a
        # worker (200), or the loss without it: 503 unknown, resolvable and not committed
        if resp.status_code == 503:
            err = assert_error(resp, 503, "TRANSACTION_OUTCOME_UNKNOWN")
            tid = err["details"]["transaction_id"]
            assert d["unknown"] == 1, d
            assert tx_status(loop, a, tid) == 404
            assert scalar(loop, "SELECT title FROM projects WHERE id = %s", (pid,)) == "locked"
        else:
            assert resp.status_code == 200, resp.text
            assert d["refused"] == 1, d
            assert scalar(loop, "SELECT title FROM projects WHERE id = %s", (pid,)) == "waited"
    finally:
        holder.close()


def tx_status(inst, acct, tid):
    return inst.get(f"/api/v1/data/transactions/{tid}", headers=acct.headers).status_code


def test_silent_server_after_sending_answers_outcome_unknown(pg, own_redis):
    """The loop connection's backend is stopped (SIGSTOP) while its transaction waits on a lock:
    the job's deadline passes after the COMMIT was sent, so the answer is 503
    TRANSACTION_OUTCOME_UNKNOWN, never a second run; GET /data/transactions/{id} then tells the
    truth, whatever the backend did once resumed."""
    import os
    import signal
    import psycopg2
    inst = start_instance(pg, own_redis, REDIS_DB + 2, CACHE_TTL="60", DB_STATEMENT_TIMEOUT="1000",
                          **{**LOOP_ENV, "HTTP_THREADS": "1", "DB_LOOP_CONNECTIONS": "1"})
    holder = None
    stopped = None
    try:
        admin = admin_of(inst)
        a = user(inst)
        warm(inst, a)
        pid = add_project(inst, a.id, title="locked")
        holder = psycopg2.connect(inst.pg.url(inst.db))
        cur = holder.cursor()
        cur.execute("BEGIN; SELECT 1 FROM projects WHERE id = %s FOR UPDATE", (pid,))
        before = loop_txs(inst, admin)
        results = []
        t = threading.Thread(target=lambda: results.append(
            tx(inst, a, [pg_update("projects", {"id": pid}, {"title": "waited"})], timeout=CLIENT_TIMEOUT)))
        t0 = time.time()
        t.start()
        assert wait_for(lambda: scalar(inst, "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = "
                                             "'Lock' AND application_name = 'coredb'") >= 1, timeout=10)
        stopped = scalar(inst, "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                               "AND application_name = 'coredb'")
        os.kill(stopped, signal.SIGSTOP)
        holder.rollback()
        t.join(CLIENT_TIMEOUT)
        took = time.time() - t0
        assert results, "no answer"
        err = assert_error(results[0], 503, "TRANSACTION_OUTCOME_UNKNOWN")
        tid = err["details"]["transaction_id"]
        assert took < 6, took
        assert delta(before, loop_txs(inst, admin))["unknown"] == 1
        os.kill(stopped, signal.SIGCONT)
        stopped = None
        # resumed, the backend either commits or is cancelled; the status route says which
        time.sleep(1.5)
        title = scalar(inst, "SELECT title FROM projects WHERE id = %s", (pid,))
        status = inst.get(f"/api/v1/data/transactions/{tid}", headers=a.headers)
        assert (status.status_code == 200) == (title == "waited"), (status.status_code, title)
        assert status.status_code in (200, 404)
        # the loop's connection comes back for the next transaction
        assert wait_for(lambda: tx(inst, a, [pg_insert("projects", {"user_id": a.id, "title": "next"})])
                        .status_code == 200 and loop_txs(inst, admin)["committed"] > before["committed"],
                        timeout=20, step=0.3)
    finally:
        if stopped:
            os.kill(stopped, signal.SIGCONT)
        if holder is not None:
            holder.close()
        inst.stop_clean()


# ---- the outbox applied on the loop (no worker after the commit) ----

def finishes(inst, admin):
    got = metric(inst, admin, "coredb_http_loop_transaction_finishes_total", label="where")
    return {k: got.get(k, 0.0) for k in ("loop", "worker")}


def snapshot(inst, admin):
    """Where transactions finished and how requests were admitted, from one GET /metrics (itself an
    admin request, admitted on a worker: counted in its own admissions{worker})."""
    text = inst.get("/metrics", headers=admin.headers).text
    fin = dict(re.findall(r'^coredb_http_loop_transaction_finishes_total\{where="(\w+)"\} (\S+)$', text, re.M))
    adm = dict(re.findall(r'^coredb_http_loop_admissions_total\{outcome="(\w+)"\} (\S+)$', text, re.M))
    return ({k: float(fin.get(k, 0)) for k in ("loop", "worker")},
            {k: float(adm.get(k, 0)) for k in ("worker", "fallback", "transaction")})


def plain_metric(inst, admin, name):
    found = re.search(r"^%s (\S+)$" % name, inst.get("/metrics", headers=admin.headers).text, re.M)
    return float(found.group(1)) if found else 0.0


def test_outbox_applied_on_the_loop_with_cache_invalidation(pair, own_redis):
    """Redis operations and the cache invalidation of a write, applied on the loop: the answer equals the
    worker path's, the cached page is voided before the answer, the outbox rows are gone, and no request
    went to a worker (admissions{worker} and finishes{worker} unchanged)."""
    loop, worker, ladmin, rds, a = warmed_pair(pair, own_redis)
    answers = []
    for inst in (loop, worker):
        tag = uuid.uuid4().hex[:8]
        pid = add_project(inst, a.id, title=f"c0-{tag}")
        body = {"table": "projects", "select": ["id", "title"], "filters": {"id": pid}}
        query_ok(inst, a, body)
        assert query_ok(inst, a, body)["cached"] is True
        rds.set(f"app:user:{a.id}:ex-{tag}", "x")
        (fin0, adm0), gen0 = snapshot(loop, ladmin), gen_of(rds, "projects")
        ops = [pg_update("projects", {"id": pid}, {"title": f"c1-{tag}"}, returning=["title"]),
               rset(f"s-{tag}", "v", ttl=60), rop("incr", f"i-{tag}"), rop("incr", f"i-{tag}"),
               rop("expire", f"ex-{tag}", ttl=30), rop("expire", f"missing-{tag}", ttl=30),
               rop("del", f"s-{tag}"), rop("del", f"never-{tag}"), rset(f"s2-{tag}", "w")]
        out = tx_ok(inst, a, ops)
        assert [r["status"] for r in out["results"]] == ["success"] * len(ops), out
        data = [r["data"] for r in out["results"]]
        assert data[2]["value"] == 1 and data[3]["value"] == 2, data
        assert data[4]["applied"] is True and data[5]["applied"] is False, data
        assert data[6]["deleted"] == 1 and data[7]["deleted"] == 0, data
        # the effects, before any other request: Redis, the generation bump, the outbox, the cached page
        assert rds.get(f"app:user:{a.id}:i-{tag}") == "2"
        assert rds.get(f"app:user:{a.id}:s-{tag}") is None
        assert rds.get(f"app:user:{a.id}:s2-{tag}") == "w"
        assert 0 < rds.ttl(f"app:user:{a.id}:ex-{tag}") <= 30
        assert gen_of(rds, "projects") == gen0 + 1
        assert scalar(inst, "SELECT count(*) FROM coredb.redis_outbox WHERE transaction_id = %s",
                      (out["transaction_id"],)) == 0
        after = query_ok(inst, a, body)
        assert after["data"][0]["title"] == f"c1-{tag}" and after["cached"] is False, after
        fin, adm = snapshot(loop, ladmin)
        if inst is loop:
            assert fin["loop"] - fin0["loop"] == 1 and fin["worker"] == fin0["worker"], (fin0, fin)
            # the one request admitted on a worker since the first snapshot is the second snapshot
            assert adm["worker"] - adm0["worker"] == 1 and adm["transaction"] - adm0["transaction"] == 1, \
                (adm0, adm)
        answers.append((out, tag))
    (lo, ltag), (wo, wtag) = answers
    assert normalized(lo).replace(ltag, "TAG") == normalized(wo).replace(wtag, "TAG")


def test_many_loop_transactions_never_reach_a_worker(pair):
    loop, _ = pair
    ladmin = admin_of(loop)
    a = user(loop)
    warm(loop, a)
    tx0 = loop_txs(loop, ladmin)
    fin0, adm0 = snapshot(loop, ladmin)
    tag = uuid.uuid4().hex[:6]
    for i in range(30):
        tx_ok(loop, a, [pg_insert("projects", {"user_id": a.id, "title": f"w{tag}-{i}"}), rop("incr", f"w{tag}")])
    fin, adm = snapshot(loop, ladmin)
    assert delta(tx0, loop_txs(loop, ladmin))["committed"] == 30
    assert fin["loop"] - fin0["loop"] == 30 and fin["worker"] == fin0["worker"], (fin0, fin)
    assert adm["worker"] - adm0["worker"] == 1 and adm["transaction"] - adm0["transaction"] == 30, (adm0, adm)
    assert scalar(loop, "SELECT count(*) FROM projects WHERE title LIKE %s", (f"w{tag}-%",)) == 30


def test_a_transaction_behind_parked_misses_waits_its_turn_on_the_loop(pg, own_redis):
    """One loop, one loop connection (4 slots): 12 slow misses fill the slots and park 8 behind them.
    A transaction sent then parks behind them (a connection full of misses, not held, frees a slot
    within moments) and commits on the loop in its turn, where before it went to a worker whenever
    misses were parked: loop transactions{committed} +1, and the misses all answered."""
    inst = start_instance(pg, own_redis, REDIS_DB + 3, CACHE_TTL="0",
                          **{**LOOP_ENV, "HTTP_THREADS": "1", "DB_LOOP_CONNECTIONS": "1"})
    try:
        admin = admin_of(inst)
        a = user(inst)
        warm(inst, a)
        # a miss runs the page and the count: 2 x 0.05 s, so a job of the loop ends every 0.1 s,
        # well within the 250 ms after which the parked would go to a worker
        slow = create_slow_view(inst, 0.05)
        wait_table(inst, a, slow)
        tx0, parked0 = loop_txs(inst, admin), counter(inst, admin, "coredb_pool_loop_parked_total")
        statuses = []

        def miss(i):
            statuses.append(query(inst, a, {"table": slow, "filters": {"id": {"gte": -i}}},
                                  timeout=CLIENT_TIMEOUT).status_code)
        misses = [threading.Thread(target=miss, args=(i,)) for i in range(12)]
        for t in misses:
            t.start()
        assert wait_for(lambda: scalar(inst, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE %s "
                                             "AND pid <> pg_backend_pid()", (f"%{slow}%",)) >= 1, timeout=10)
        tag = uuid.uuid4().hex[:8]
        out = tx_ok(inst, a, [pg_insert("projects", {"user_id": a.id, "title": f"behind-{tag}"})])
        for t in misses:
            t.join(CLIENT_TIMEOUT)
        assert statuses == [200] * 12, statuses
        assert delta(tx0, loop_txs(inst, admin))["committed"] == 1, "the transaction went to a worker"
        assert counter(inst, admin, "coredb_pool_loop_parked_total") - parked0 >= 9   # 8 misses and it
        assert scalar(inst, "SELECT count(*) FROM projects WHERE title = %s", (f"behind-{tag}",)) == 1
        assert ledger_has(inst, out["transaction_id"])
    finally:
        inst.stop_clean()


def test_second_instance_serves_fresh_data_at_once(pair):
    """A write committed on A's loop: B (which holds the page in its first-level cache) serves the new
    data on the very next request after A's answer; A waited for B's acknowledgement."""
    loop, other = pair
    ladmin = admin_of(loop)
    a = user(loop)
    warm(loop, a)
    warm(other, a)
    pid = add_project(loop, a.id, title="b-0")
    body = {"table": "projects", "select": ["id", "title"], "filters": {"id": pid}}
    timeouts0 = plain_metric(loop, ladmin, "coredb_cache_invalidation_ack_timeouts_total")
    fin0 = finishes(loop, ladmin)
    for n in range(1, 11):
        for _ in range(3):
            assert query_ok(other, a, body)["data"][0]["title"] == f"b-{n - 1}"
        tx_ok(loop, a, [pg_update("projects", {"id": pid}, {"title": f"b-{n}"})])
        out = query_ok(other, a, body)
        assert out["data"][0]["title"] == f"b-{n}" and out["cached"] is False, (n, out)
    assert finishes(loop, ladmin)["loop"] - fin0["loop"] == 10
    assert plain_metric(loop, ladmin, "coredb_cache_invalidation_ack_timeouts_total") == timeouts0


def test_missing_acknowledgement_is_waited_for_without_blocking_the_loop(pg):
    """A subscriber that never acknowledges: the transaction's answer waits CDB_INVAL_ACK_WAIT_MS (500 ms)
    and counts a timeout, while the same (single) loop keeps answering other requests meanwhile."""
    private = RedisServer()
    inst = start_instance(pg, private, 0, CACHE_TTL="60", **{**LOOP_ENV, "HTTP_THREADS": "1"})
    rds = redis_client(private, 0)
    mute = None
    try:
        admin = admin_of(inst)
        a = user(inst)
        warm(inst, a)
        pid = add_project(inst, a.id, title="m-0")
        body = {"table": "projects", "select": ["id", "title"], "filters": {"id": pid}}
        query_ok(inst, a, body)
        quick = tx_ok(inst, a, [pg_update("projects", {"id": pid}, {"title": "m-1"})])
        assert quick["execution_time_ms"] < 400, quick
        channels = rds.pubsub_channels("coredb:*:inval")
        assert len(channels) == 1, channels
        mute = rds.pubsub()
        mute.subscribe(channels[0])          # hears every message, never pushes an acknowledgement
        assert wait_for(lambda: rds.pubsub_numsub(channels[0])[0][1] == 2)
        timeouts0 = plain_metric(inst, admin, "coredb_cache_invalidation_ack_timeouts_total")
        fin0 = finishes(inst, admin)
        assert query_ok(inst, a, body)["data"][0]["title"] == "m-1"
        result = {}

        def write():
            t0 = time.monotonic()
            result["out"] = tx_ok(inst, a, [pg_update("projects", {"id": pid}, {"title": "m-2"})])
            result["s"] = time.monotonic() - t0
        writer = threading.Thread(target=write)
        writer.start()
        time.sleep(0.1)
        side = []
        while writer.is_alive():
            t0 = time.monotonic()
            assert inst.get("/health/live").status_code == 200
            side.append(time.monotonic() - t0)
            time.sleep(0.02)
        writer.join()
        # one generation bump per table the write may change (projects and the tables its foreign keys
        # cascade into), each waited for in turn, as on the worker path
        waits = plain_metric(inst, admin, "coredb_cache_invalidation_ack_timeouts_total") - timeouts0
        assert waits >= 1
        assert 0.45 * waits <= result["s"] < 0.5 * waits + 2, (result, waits)
        # the loop answered other requests while the transaction waited for the acknowledgements
        assert len(side) >= 5 and max(side) < 0.3, side
        assert finishes(inst, admin)["loop"] - fin0["loop"] == 1
        assert query_ok(inst, a, body)["data"][0]["title"] == "m-2"
        assert not [k for k in rds.keys("coredb:*:inval:ack:*")], "acknowledgement lists left behind"
    finally:
        if mute is not None:
            mute.close()
        inst.stop_clean()
        private.destroy()


def test_flush_job_running_concurrently_applies_nothing_twice(pair, own_redis):
    """Transactions applied on the loop while the flush job runs (every second) and a competing locker
    takes outbox rows FOR UPDATE SKIP LOCKED: every INCR is applied exactly once, a row another holds is
    answered "pending" and applied later, and the outbox ends empty."""
    loop, _ = pair
    rds = redis_client(own_redis, REDIS_DB)
    a = user(loop)
    warm(loop, a)
    stop = threading.Event()

    def competing_locker():
        conn = loop.pg.connect(loop.db)
        conn.autocommit = False
        try:
            while not stop.is_set():
                with conn.cursor() as cur:
                    cur.execute("SELECT id FROM coredb.redis_outbox FOR UPDATE SKIP LOCKED")
                time.sleep(0.005)
                conn.rollback()
        finally:
            conn.close()
    locker = threading.Thread(target=competing_locker)
    locker.start()
    tag = uuid.uuid4().hex[:6]
    statuses, failures = [], []
    try:
        def worker_thread(k):
            for i in range(25):
                try:
                    out = tx_ok(loop, a, [rop("incr", f"x{tag}-{k}-{i}"), rop("incr", f"x{tag}-{k}-{i}")])
                    statuses.append([r["status"] for r in out["results"]])
                    # applied in order before the answer, each once: the n-th INCR answers n. A row the
                    # locker held stops the run there (the rest "pending"), as on the worker path.
                    got = [r["status"] for r in out["results"]]
                    assert got in (["success", "success"], ["success", "pending"], ["pending", "pending"]), out
                    for n, r in enumerate(out["results"], 1):
                        if r["status"] == "success":
                            assert r["data"]["value"] == n, out
                except Exception as e:   # reported below with the thread's details
                    failures.append((k, i, repr(e)[:800]))
        threads = [threading.Thread(target=worker_thread, args=(k,)) for k in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        stop.set()
        locker.join()
    assert not failures, failures
    assert len(statuses) == 75
    assert wait_for(lambda: scalar(loop, "SELECT count(*) FROM coredb.redis_outbox") == 0, timeout=15)
    values = {f"{k}-{i}": rds.get(f"app:user:{a.id}:x{tag}-{k}-{i}") for k in range(3) for i in range(25)}
    assert all(v == "2" for v in values.values()), {k: v for k, v in values.items() if v != "2"}


def test_redis_killed_during_loop_transactions(pg):
    """Redis SIGKILLed while transactions stream through the loop, one stream unkeyed and one under an
    Idempotency-Key each: each answer is 200 with its Redis operations "success" or "pending" (as the
    worker path answers), none hangs; keyed, the answer sent is the one the ledger stores (what a retry
    replays, "pending" included); once Redis is back the pending ones are applied and the outbox
    empties."""
    private = RedisServer()
    inst = start_instance(pg, private, 0, CACHE_TTL="60", **LOOP_ENV)
    try:
        admin = admin_of(inst)
        a = user(inst)
        warm(inst, a)
        tx_ok(inst, a, [rset("warm", "1")])
        fin0 = finishes(inst, admin)
        tag = uuid.uuid4().hex[:6]
        outs, errors = [], []

        def stream(k):
            keyed = {"Idempotency-Key": "%s-%d" % (tag, k)} if k == 1 else {}
            for i in range(40):
                try:
                    resp = inst.post(TX, headers={**a.headers, **{h: f"{v}-{i}" for h, v in keyed.items()}},
                                     timeout=CLIENT_TIMEOUT,
                                     json={"operations": [pg_insert("projects", {"user_id": a.id,
                                                                                 "title": f"k{tag}-{k}-{i}"}),
                                                          rset(f"k{tag}-{k}-{i}", "v")]})
                except requests.RequestException as e:   # a hang would be a timeout here
                    errors.append(repr(e))
                    continue
                outs.append((k, i, resp.status_code, resp.json()))
                time.sleep(0.01)
        threads = [threading.Thread(target=stream, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        time.sleep(0.3)
        private.proc.send_signal(9)
        private.proc.wait(10)
        for t in threads:
            t.join()
        assert not errors, errors
        assert len(outs) == 80
        for k, i, status, out in outs:
            assert status == 200, (status, out)
            assert out["results"][1]["status"] in ("success", "pending"), out
            assert scalar(inst, "SELECT count(*) FROM projects WHERE title = %s", (f"k{tag}-{k}-{i}",)) == 1
            if k == 1:
                assert json.loads(stored_answer(inst, a, f"{tag}-{k}-{i}")) == out, (i, out)
        pending = [(k, i) for k, i, _, out in outs if out["results"][1]["status"] == "pending"]
        assert pending, "Redis died and no answer says pending: the kill came too late to test anything"
        assert any(k == 1 for k, _ in pending), "no keyed answer says pending: nothing keyed was tested"
        fin = finishes(inst, admin)
        assert fin["loop"] > fin0["loop"], (fin0, fin)
        private.start()
        rds = redis_client(private, 0)
        assert wait_for(lambda: all(rds.get(f"app:user:{a.id}:k{tag}-{k}-{i}") == "v" for k, i in pending),
                        timeout=20)
        assert wait_for(lambda: scalar(inst, "SELECT count(*) FROM coredb.redis_outbox") == 0, timeout=15)
        assert inst.get("/health/live").status_code == 200
    finally:
        inst.stop_clean()
        private.destroy()


def test_redis_refusing_writes_leaves_rows_pending_like_the_worker(pair, own_redis):
    """Redis up but refusing writes with a transient error (NOREPLICAS): on the loop the first row is not
    applied, so it and every row after it stay "pending" with the attempt counted, exactly as the worker
    path answers; once Redis takes writes again the flush job applies them."""
    loop, worker, ladmin, rds, a = warmed_pair(pair, own_redis)
    outs = []
    try:
        rds.config_set("min-replicas-to-write", 1)
        for inst in (loop, worker):
            tag = uuid.uuid4().hex[:8]
            fin0, _ = snapshot(loop, ladmin)
            out = tx_ok(inst, a, [pg_insert("projects", {"user_id": a.id, "title": f"nr-{tag}"}),
                                  rset(f"nr-{tag}", "v"), rop("incr", f"nrn-{tag}")])
            assert [r["status"] for r in out["results"]] == ["success", "pending", "pending"], out
            assert scalar(inst, "SELECT count(*) FROM projects WHERE title = %s", (f"nr-{tag}",)) == 1
            rows = loop.pg.query(loop.db, "SELECT seq, attempts, last_error FROM coredb.redis_outbox "
                                          "WHERE transaction_id = %s ORDER BY seq", (out["transaction_id"],))
            assert len(rows) >= 3, rows           # the bumps and both operations, none deleted
            # counted once here (the flush job, every second, may have tried it again since; it stops at
            # the first row too, so the rows after it are never tried)
            assert rows[0][1] >= 1 and rows[0][2].startswith("NOREPLICAS"), rows
            assert all(r[1] == 0 for r in rows[1:]), rows
            if inst is loop:
                fin, _ = snapshot(loop, ladmin)
                assert fin["loop"] - fin0["loop"] == 1 and fin["worker"] == fin0["worker"], (fin0, fin)
            outs.append((out, tag))
    finally:
        rds.config_set("min-replicas-to-write", 0)
    (lo, ltag), (wo, wtag) = outs
    assert normalized(lo).replace(ltag, "TAG") == normalized(wo).replace(wtag, "TAG")
    assert wait_for(lambda: all(rds.get(f"app:user:{a.id}:nr-{t}") == "v" and
                                rds.get(f"app:user:{a.id}:nrn-{t}") == "1" for _, t in outs), timeout=15)
    assert wait_for(lambda: scalar(loop, "SELECT count(*) FROM coredb.redis_outbox WHERE transaction_id = ANY(%s::uuid[])",
                                   ([o["transaction_id"] for o, _ in outs],)) == 0, timeout=10)
