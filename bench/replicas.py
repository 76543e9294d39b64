#!/usr/bin/python3
"""bench/replicas.py - read replicas (issue 14, docs/replicas.md): cache-miss
/data/query throughput and latency with 0 and 1 replica, and the cost of the
read-your-writes check per request.

Primary and replica run on THIS machine (tests/e2e/servers.py: PgServer and
a PgReplica made by pg_basebackup -R) and share its cores with coredb, Redis
and the load generator, so a replica cannot add capacity here: the numbers
show what routing costs, not what a replica on its own host would gain.

Rows (CACHE_TTL=0: every query is a cache miss, i.e. a routed read):
  0 replicas            - coredb without DATABASE_READ_URLS: no LSN look-up, primary
  1 replica, no LSN     - a caller who never wrote: the session check's Redis GET becomes
                          an MGET with the caller's LSN key (nil), replica
  1 replica, LSN        - a caller with a recorded commit LSN the replica has replayed
                          (the MGET brings a value), replica
  1 replica, LSN ahead  - replay paused after the caller's write: the replica is behind
                          the caller, primary
Throughput: CLIENTS threads for SECONDS; latency: one client, LAT_N requests,
p50/p90. ROUNDS rounds, medians. Appends a section to bench/RESULTS.md.
Usage: make && bench/replicas.py"""
import os
import platform
import statistics
import sys
import threading
import time

import requests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
from identity import PASSWORD, login, register  # noqa: E402
from servers import Coredb, PgReplica, PgServer, RedisServer  # noqa: E402

ROUNDS, SECONDS, CLIENTS, LAT_N, ROWS = 3, 3, 4, 300, 2000
QUERY, TX = "/api/v1/data/query", "/api/v1/data/transaction"
BODY = {"database": "postgresql", "query_type": "select", "table": "projects",
        "filters": {"status": "draft"}, "pagination": {"page": 2, "limit": 20}}


def hammer(base, token):
    stop = time.time() + SECONDS
    counts, errors = [], []

    def worker():
        s = requests.Session()
        s.headers["Authorization"] = f"Bearer {token}"
        n = 0
        while time.time() < stop:
            r = s.post(base + QUERY, json=BODY, timeout=30)
            if r.status_code != 200:
                errors.append(r.status_code)
            n += 1
        counts.append(n)

    threads = [threading.Thread(target=worker) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / SECONDS, errors


def latency(base, token):
    s = requests.Session()
    s.headers["Authorization"] = f"Bearer {token}"
    times, errors = [], []
    for _ in range(LAT_N):
        t0 = time.perf_counter()
        r = s.post(base + QUERY, json=BODY, timeout=30)
        times.append((time.perf_counter() - t0) * 1e6)
        if r.status_code != 200:
            errors.append(r.status_code)
    times.sort()
    return times[len(times) // 2], times[int(len(times) * 0.9)], errors


def metric(inst, admin_token, name):
    text = inst.get("/metrics", headers={"Authorization": f"Bearer {admin_token}"}).text
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def main():
    pg = PgServer("bench-primary")
    replica = redis = None
    insts = []
    try:
        replica = PgReplica(pg, "bench-replica")
        redis = RedisServer()
        db = pg.create_database("bench")
        email = "root@bench.example.com"
        common = {"DATABASE_URL": pg.url(db), "JWT_SECRET": "b" * 64, "REDIS_URL": redis.url,
                  "COREDB_ADMIN_EMAIL": email, "COREDB_ADMIN_PASSWORD": PASSWORD, "CACHE_TTL": "0",
                  "RATE_LIMIT_USER": "0", "RATE_LIMIT_ANON": "0", "DB_POOL_MAX": "10", "LOG_LEVEL": "warn"}
        plain = Coredb(dict(common))
        insts.append(plain)
        routed = Coredb(dict(common, DATABASE_READ_URLS=replica.url(db), DB_REPLICA_SAMPLE_MS="200",
                             DB_REPLICA_MAX_LAG="600"))
        insts.append(routed)
        admin = login(plain, email, PASSWORD)["access_token"]
        accounts = {}
        for who in ("reader", "writer"):
            u, pw = register(plain)
            accounts[who] = (login(plain, u["email"], pw)["access_token"], u["user_id"])
        for _, uid in accounts.values():
            pg.query(db, "INSERT INTO projects (user_id, title) SELECT %s, 'p' || g FROM generate_series(1, %s) g",
                     (uid, ROWS))
        pg.query(db, "ANALYZE projects")
        wtoken, wid = accounts["writer"]
        r = routed.post(TX, headers={"Authorization": f"Bearer {wtoken}"},
                        json={"operations": [{"operation": "insert", "table": "projects",
                                              "data": {"user_id": wid, "title": "w"}}]})
        assert r.status_code == 200, r.text
        replica.wait_caught_up()
        time.sleep(1)   # a sample after the catch-up

        rows = [("0 replicas", plain, "reader", "primary"),
                ("1 replica, caller never wrote (LSN key: nil)", routed, "reader", "replica"),
                ("1 replica, caller's LSN replayed (LSN key: a value)", routed, "writer", "replica")]
        res = {label: {"rps": [], "p50": [], "p90": []} for label, *_ in rows}
        ahead = "1 replica, caller's LSN ahead of the paused replica (primary)"
        res[ahead] = {"rps": [], "p50": [], "p90": []}
        errs = []
        targets = {}
        for _ in range(ROUNDS):
            for label, inst, who, _target in rows:
                before = (metric(inst, admin, 'coredb_db_reads_total{target="replica"}'),)
                rate, e = hammer(inst.base, accounts[who][0])
                p50, p90, e2 = latency(inst.base, accounts[who][0])
                after = (metric(inst, admin, 'coredb_db_reads_total{target="replica"}'),)
                targets[label] = "replica" if before[0] is not None and after[0] > before[0] else "primary"
                res[label]["rps"].append(rate)
                res[label]["p50"].append(p50)
                res[label]["p90"].append(p90)
                errs += e + e2
            # the caller's last write is past what the paused replica replayed
            replica.pause()
            try:
                r = routed.post(TX, headers={"Authorization": f"Bearer {wtoken}"},
                                json={"operations": [{"operation": "insert", "table": "projects",
                                                      "data": {"user_id": wid, "title": "w2"}}]})
                assert r.status_code == 200, r.text
                ryw0 = metric(routed, admin, "coredb_read_your_writes_primary_total")
                rate, e = hammer(routed.base, wtoken)
                p50, p90, e2 = latency(routed.base, wtoken)
                ryw1 = metric(routed, admin, "coredb_read_your_writes_primary_total")
                targets[ahead] = "primary" if ryw1 > ryw0 else "replica"
                res[ahead]["rps"].append(rate)
                res[ahead]["p50"].append(p50)
                res[ahead]["p90"].append(p90)
                errs += e + e2
            finally:
                replica.resume()
            replica.wait_caught_up()
            time.sleep(1)
        med = {k: {m: statistics.median(v[m]) for m in v} for k, v in res.items()}
        base = med["0 replicas"]
        load = os.getloadavg()
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        out = [f"\n### Read replicas: routing and the read-your-writes check — {time.strftime('%Y-%m-%d')} — "
               f"{os.cpu_count()} cores, {mem:.0f} GiB, Linux {platform.release()}",
               f"bench/replicas.py: primary, streaming replica (pg_basebackup -R), Redis, coredb and the client on the "
               f"same machine, so this measures the OVERHEAD of routing, not a gain from a replica. Release build, "
               f"CACHE_TTL=0 (every query a cache miss), DB_POOL_MAX=10; query: {ROWS} projects of the caller, "
               f"status filter, page 2 of 20. Throughput: {CLIENTS} client threads (Python requests) x {SECONDS} s; "
               f"latency: 1 client, {LAT_N} requests. {ROUNDS} rounds, medians. Load average after: {load[0]:.2f} "
               f"{load[1]:.2f} {load[2]:.2f}. non-2xx answers: {len(errs)}.",
               "", "| setup | served by | req/s | vs 0 replicas | p50 µs (1 client) | p90 µs | p50 − p50(0 replicas) µs |",
               "|---|---|---|---|---|---|---|"]
        for label in [r[0] for r in rows] + [ahead]:
            m = med[label]
            out.append(f"| {label} | {targets.get(label, '?')} | {m['rps']:.1f} | {m['rps'] / base['rps']:.2f} | "
                       f"{m['p50']:.0f} | {m['p90']:.0f} | {m['p50'] - base['p50']:+.0f} |")
        text = "\n".join(out) + "\n"
        print(text)
        with open(os.path.join(ROOT, "bench", "RESULTS.md"), "a") as f:
            f.write(text)
    finally:
        for inst in insts:
            inst.stop()
        if redis:
            redis.destroy()
        if replica:
            replica.destroy()
        pg.destroy()


if __name__ == "__main__":
    main()
