"""Client-side deadlines: a PostgreSQL or Redis that stops answering
(every process SIGSTOPped: the kernel still accepts TCP connections and
acknowledges data, the server never answers) must never hang a request.

PostgreSQL: with DB_STATEMENT_TIMEOUT=3000 a round trip is given up after
3 s + 1 s (the server's own statement_timeout cannot fire while it is
stopped), the connection is discarded and the request answers 504
DATABASE_TIMEOUT; a transaction whose COMMIT was already sent answers 503
TRANSACTION_OUTCOME_UNKNOWN with its transaction_id; /health answers DOWN within its own deadline and
/health/live stays instant; after SIGCONT the service recovers by itself.
Redis: commands time out after 1 s and the service keeps serving, DEGRADED.

Every stopped process is continued in a finally block, so a failing test
never leaves a stopped server behind."""
import contextlib
import os
import signal
import threading
import time

from datahelp import admin_of, pg_insert, pg_update, query, start_instance
from identity import assert_error, unique

REDIS_DB = 14
STATEMENT_TIMEOUT_MS = 3000
BOUND_S = 10          # the bound for any request while PostgreSQL is stopped
HEALTH_BOUND_S = 5    # /health: 2 s pool budget + 1 s query budget + the Redis check
RECOVERY_S = 15


def _children(pid):
    """Direct children of pid, from /proc (PostgreSQL renames its processes)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(entry))
    return out


@contextlib.contextmanager
def stopped(postmaster_or_pid, is_pg=True):
    """SIGSTOPs a server (for PostgreSQL: the postmaster first, so it forks
    no new child, then every child) and SIGCONTs all of it on the way out."""
    if is_pg:
        with open(os.path.join(postmaster_or_pid.data, "postmaster.pid")) as f:
            main = int(f.readline())
    else:
        main = postmaster_or_pid
    pids = [main]
    try:
        os.kill(main, signal.SIGSTOP)
        if is_pg:
            time.sleep(0.1)
            for child in _children(main):
                pids.append(child)
                os.kill(child, signal.SIGSTOP)
        yield pids
    finally:
        for pid in reversed(pids):
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass


def timed(fn):
    t0 = time.monotonic()
    resp = fn()
    return resp, time.monotonic() - t0


def parallel(fns):
    """Runs the callables at once; [(response, seconds)] in their order."""
    out = [None] * len(fns)

    def run(i):
        try:
            out[i] = timed(fns[i])
        except Exception as e:  # noqa: BLE001 - reported by the assertion below
            out[i] = (e, None)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(fns))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    for resp, _ in out:
        assert not isinstance(resp, Exception), resp
    return out


def fresh_query(inst, acct):
    """A query no cache can answer: it must reach PostgreSQL."""
    return query(inst, acct, {"table": "projects", "filters": {"title": unique("q")}})


def insert_tx(inst, acct, title):
    return inst.post("/api/v1/data/transaction", headers=acct.headers,
                     json={"operations": [pg_insert("projects", {"title": title, "user_id": acct.id})]})


def wait_until(cond, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if cond():
                return True
        except Exception:  # noqa: BLE001 - a refused or slow request just means "not yet"
            pass
        time.sleep(0.2)
    return False


def waiting_on_locks(pg_server, db):
    rows = pg_server.query(db, "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'coredb'"
                               " AND wait_event_type = 'Lock'")
    return rows[0][0]


def test_postgres_stopped_answers_504_in_time_and_recovers(private_pg, redis_server):
    inst = start_instance(private_pg, redis_server, REDIS_DB,
                          DB_STATEMENT_TIMEOUT=STATEMENT_TIMEOUT_MS, DB_POOL_MIN=5, DB_POOL_MAX=7)
    locker = None
    try:
        admin = admin_of(inst)
        for _ in range(2):
            for resp, _ in parallel([lambda: fresh_query(inst, admin)] * 5):
                assert resp.status_code == 200, resp.text
        created = insert_tx(inst, admin, unique("locked"))
        assert created.status_code == 200, created.text
        project = created.json()["results"][0]["data"]["rows"][0]["id"]

        # Requests in flight when the server stops: a transaction waiting for a
        # row lock (its whole pipeline, COMMIT included, already sent) and a
        # query waiting for a table lock, both held by this test.
        locker = private_pg.connect(inst.db)
        locker.autocommit = False
        with locker.cursor() as cur:
            cur.execute("SELECT 1 FROM projects WHERE id = %s FOR UPDATE", (project,))
            cur.execute("LOCK TABLE media_assets IN ACCESS EXCLUSIVE MODE")
        in_flight = {}

        def run(name, fn):
            in_flight[name] = timed(fn)

        threads = [
            threading.Thread(target=run, args=("tx", lambda: inst.post(
                "/api/v1/data/transaction", headers=admin.headers, json={"operations": [
                    pg_update("projects", {"id": project}, {"title": unique("blocked")})]}))),
            threading.Thread(target=run, args=("query", lambda: query(
                inst, admin, {"table": "media_assets", "filters": {"url": unique("q")}}))),
        ]
        for t in threads:
            t.start()
        assert wait_until(lambda: waiting_on_locks(private_pg, inst.db) >= 2, 5)

        live = []
        stop_live = threading.Event()

        def probe_live():
            while not stop_live.is_set():
                live.append(timed(lambda: inst.get("/health/live", timeout=5)))
                time.sleep(0.2)

        prober = threading.Thread(target=probe_live)
        with stopped(private_pg) as pids:
            assert len(pids) >= 4, pids  # postmaster, checkpointer, writer, ... and the backends
            prober.start()
            try:
                # /health first, while idle pooled connections remain: its
                # SELECT 1 (or the validation) meets the silent server.
                h1, h1t = timed(lambda: inst.get("/health", timeout=30))
                # A query sent after the server stopped: it gets an idle pooled
                # connection, which cannot answer either.
                fq, fqt = timed(lambda: fresh_query(inst, admin))
                for t in threads:
                    t.join(30)
                # Eight at once, while /health/live keeps answering from the loop.
                many = parallel([lambda: fresh_query(inst, admin)] * 8)
                hr, ht = timed(lambda: inst.get("/health", timeout=30))
            finally:
                stop_live.set()
                prober.join()

            err = assert_error(fq, 504, "DATABASE_TIMEOUT")
            assert "SELECT" not in fq.text and "projects" not in err["message"]
            assert STATEMENT_TIMEOUT_MS / 1000 <= fqt < BOUND_S, fqt
            qr, qt = in_flight["query"]
            assert_error(qr, 504, "DATABASE_TIMEOUT")
            assert STATEMENT_TIMEOUT_MS / 1000 <= qt < BOUND_S, qt
            # COMMIT was sent before the server went silent: the outcome is
            # unknown, and the answer says so instead of implying a rollback.
            tr, tt = in_flight["tx"]
            terr = assert_error(tr, 503, "TRANSACTION_OUTCOME_UNKNOWN")
            assert terr["details"]["transaction_id"], terr
            assert STATEMENT_TIMEOUT_MS / 1000 <= tt < BOUND_S, tt

            for resp, secs in many:
                assert secs < BOUND_S, [s for _, s in many]
                assert_error(resp, resp.status_code)
                assert (resp.status_code, resp.json()["error"]["code"]) in (
                    (504, "DATABASE_TIMEOUT"), (503, "DATABASE_UNAVAILABLE"), (503, "POOL_EXHAUSTED")), resp.text

            for resp, secs in ((h1, h1t), (hr, ht)):
                assert resp.status_code == 503, resp.text
                assert resp.json()["status"] == "DOWN"
                assert resp.json()["checks"]["postgresql"]["status"] == "DOWN"
                assert secs < HEALTH_BOUND_S, secs
            assert len(live) >= 10, len(live)
            for resp, secs in live:
                assert resp.status_code == 200 and secs < 1.0, (resp.status_code, secs)
            print(f"\nstopped PostgreSQL: in-flight query {qt:.2f}s, in-flight transaction {tt:.2f}s, "
                  f"query sent after the stop {fqt:.2f}s, "
                  f"8 concurrent {[(r.status_code, round(s, 2)) for r, s in many]}, "
                  f"/health {h1t:.2f}s then {ht:.2f}s, /health/live max {max(s for _, s in live):.3f}s")
        t_cont = time.monotonic()
        locker.rollback()

        # Continued: back by itself, with no restart of coredb.
        assert wait_until(lambda: fresh_query(inst, admin).status_code == 200, RECOVERY_S), inst.log()[-3000:]
        assert wait_until(lambda: inst.get("/health", timeout=10).status_code == 200, RECOVERY_S)
        print(f"recovered {time.monotonic() - t_cont:.2f}s after SIGCONT")
        assert inst.get("/health").json()["checks"]["postgresql"]["status"] == "UP"
        assert insert_tx(inst, admin, unique("after")).status_code == 200
        assert "pg.deadline_expired" in inst.log()
    finally:
        if locker is not None:
            locker.close()
        inst.stop_clean()


def test_redis_stopped_service_keeps_serving_then_recovers(pg, private_redis):
    inst = start_instance(pg, private_redis, 0)
    try:
        admin = admin_of(inst)
        assert fresh_query(inst, admin).status_code == 200
        assert inst.get("/health").json()["status"] == "UP"

        with stopped(private_redis.proc.pid, is_pg=False):
            took = []
            for _ in range(5):
                resp, secs = timed(lambda: fresh_query(inst, admin))
                assert resp.status_code == 200, resp.text
                assert secs < 5, secs  # a Redis command gives up after 1 s
                took.append(round(secs, 2))
            resp, secs = timed(lambda: insert_tx(inst, admin, unique("redis-stopped")))
            assert resp.status_code == 200, resp.text
            assert secs < 5, secs
            hr, ht = timed(lambda: inst.get("/health", timeout=30))
            assert hr.status_code == 200, hr.text
            assert hr.json()["status"] == "DEGRADED"
            assert hr.json()["checks"]["redis"]["status"] == "DOWN"
            assert hr.json()["checks"]["postgresql"]["status"] == "UP"
            assert ht < HEALTH_BOUND_S, ht
            lr, lt = timed(lambda: inst.get("/health/live", timeout=5))
            assert lr.status_code == 200 and lt < 1.0, lt
            print(f"\nstopped Redis: queries {took}s, transaction {secs:.2f}s, /health {ht:.2f}s")

        assert wait_until(lambda: inst.get("/health", timeout=10).json()["status"] == "UP", RECOVERY_S)
        assert inst.get("/health").json()["checks"]["redis"]["status"] == "UP"
        assert fresh_query(inst, admin).status_code == 200
    finally:
        inst.stop_clean()
