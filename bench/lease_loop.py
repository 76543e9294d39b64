#!/usr/bin/python3
"""bench/lease_loop.py - what running data reads with X-Connection-ID on the
event loop (http/loop_lease.c) saves against the worker path: two instances
on one throw-away PostgreSQL 15 and Redis 7 (tests/e2e/servers.py), one with
DB_LOOP_CONNECTIONS=2 (lease reads on the loop) and one with 0 (on a worker,
as before), CACHE_TTL=0 so every read runs on the lease's connection. One
user with 20 projects, one lease per instance; wrk -t1 -c1 (a lease takes
one call at a time) for SECONDS, ROUNDS rounds alternating. Reports req/s,
p50/p99, coredb's CPU per request and the lease backend's (/proc/PID/stat,
user + system).
Usage: make && bench/lease_loop.py"""
import os
import re
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
from identity import PASSWORD, login  # noqa: E402
from servers import Coredb, PgServer, RedisServer  # noqa: E402

ROUNDS, SECONDS = 3, 8
SECONDS = int(os.environ.get("BENCH_SECONDS", SECONDS))
BODY = '{"table":"projects","select":["id","title","status"],"order_by":[{"column":"title"}]}'
TICK = os.sysconf("SC_CLK_TCK")


def cpu_s(pid):
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def run(inst, token, lease, backend):
    env = dict(os.environ, BENCH_TOKEN=token, BENCH_LEASE=lease, BENCH_BODY=BODY)
    c0, b0 = cpu_s(inst.proc.pid), cpu_s(backend)
    out = subprocess.run(["wrk", "-t1", "-c1", f"-d{SECONDS}s", "--latency", "-s",
                          os.path.join(ROOT, "bench", "lease_query.lua"), inst.base],
                         env=env, capture_output=True, text=True, check=True).stdout
    cpu, pg_cpu = cpu_s(inst.proc.pid) - c0, cpu_s(backend) - b0
    n = int(re.search(r"(\d+) requests in", out).group(1))
    non200 = int(re.search(r"non200 (\d+)", out).group(1))
    assert non200 == 0, out

    def ms(label):
        v, unit = re.search(r"^\s+%s\s+([\d.]+)(us|ms|s)" % label, out, re.M).groups()
        return float(v) * {"us": 0.001, "ms": 1, "s": 1000}[unit]
    return n / SECONDS, ms("50%"), ms("99%"), cpu / n * 1e6, pg_cpu / n * 1e6


def main():
    pg, redis = PgServer("bench-lease-loop"), RedisServer()
    insts = []
    try:
        db = pg.create_database("bench")
        email = "root@bench.example.com"
        common = {"DATABASE_URL": pg.url(db), "JWT_SECRET": "b" * 64, "REDIS_URL": redis.url,
                  "COREDB_ADMIN_EMAIL": email, "COREDB_ADMIN_PASSWORD": PASSWORD, "CACHE_TTL": "0",
                  "RATE_LIMIT_USER": "0", "RATE_LIMIT_ANON": "0", "DB_POOL_MAX": "10", "HTTP_THREADS": "2",
                  "LOG_LEVEL": "warn"}
        loop = Coredb(dict(common, DB_LOOP_CONNECTIONS="2"))
        insts.append(loop)
        worker = Coredb(dict(common, DB_LOOP_CONNECTIONS="0"))
        insts.append(worker)
        token = login(loop, email, PASSWORD)["access_token"]
        uid = pg.query(db, "SELECT user_id::text FROM users WHERE email = %s", (email,))[0][0]
        pg.query(db, "INSERT INTO projects (user_id, title) SELECT %s, 'p' || g FROM generate_series(1, 20) g",
                 (uid,))
        leases = {}
        for name, inst in (("loop", loop), ("worker", worker)):
            resp = inst.post("/api/v1/connections/acquire", headers={"Authorization": "Bearer " + token},
                             json={"service_name": "bench", "database_type": "postgresql",
                                   "operation_type": "read", "ttl_seconds": 3600})
            assert resp.status_code == 201, resp.text
            lid = resp.json()["connection_id"]
            leases[name] = (lid, pg.query(db, "SELECT backend_pid FROM coredb.leases WHERE id = %s", (lid,))[0][0])
        results = {"loop": [], "worker": []}
        for _ in range(ROUNDS):
            for name, inst in (("worker", worker), ("loop", loop)):
                results[name].append(run(inst, token, *leases[name]))
        print("| lease reads (CACHE_TTL=0, wrk -t1 -c1) | req/s | p50 ms | p99 ms | coredb CPU µs/request "
              "| lease backend CPU µs/request |")
        print("|---|---|---|---|---|---|")
        for name, label in (("worker", "on a worker (DB_LOOP_CONNECTIONS=0)"), ("loop", "on the loop")):
            rs = results[name]
            med = [statistics.median(r[i] for r in rs) for i in range(5)]
            rng = [(min(r[i] for r in rs), max(r[i] for r in rs)) for i in range(5)]
            print(f"| {label} | {med[0]:.0f} ({rng[0][0]:.0f}–{rng[0][1]:.0f}) | {med[1]:.2f} | {med[2]:.2f} "
                  f"| {med[3]:.0f} ({rng[3][0]:.0f}–{rng[3][1]:.0f}) | {med[4]:.0f} ({rng[4][0]:.0f}–{rng[4][1]:.0f}) |")
    finally:
        for inst in insts:
            inst.stop()
        redis.destroy()
        pg.destroy()


if __name__ == "__main__":
    main()
