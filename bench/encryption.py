#!/usr/bin/python3
"""bench/encryption.py - the cost of column encryption (issue 11) through the
data API: the same read and the same write on an encrypted column and on a
plain one (requests per second and their ratio), and the rows per second a
key rotation re-encrypts.

A throw-away PostgreSQL 15 cluster (tests/e2e/servers.py) and the release
coredb (in-process cache, no Redis); two exposed tables of ROWS rows owned by
one user, identical but for `ssn` being encrypted in one. Reads: a page of 20
rows picked by `id IN (20 random ids)` (random, so the query cache rarely
answers). Writes: one update of `ssn` by primary key. CLIENTS threads for
SECONDS each, plain and encrypted alternating, ROUNDS rounds; medians. The
rotation row: POST /encryption/columns/rotate on a ROTATE_ROWS table; its
job includes a fixed 2.5 s wait for other instances' key snapshots
(docs/http.md), shown apart. Appends a section to bench/RESULTS.md.
Usage: make && bench/encryption.py (or make bench-encryption)"""
import base64
import os
import platform
import random
import statistics
import sys
import threading
import time

import requests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
from identity import PASSWORD, login, register  # noqa: E402
from servers import Coredb, PgServer  # noqa: E402

ROUNDS, SECONDS, CLIENTS, ROWS, ROTATE_ROWS = 3, 4, 4, 5000, 50000
QUERY, TX = "/api/v1/data/query", "/api/v1/data/transaction"


def hammer(inst, token, fn):
    stop = time.time() + SECONDS
    counts, errors = [], []

    def worker():
        s = requests.Session()
        s.headers["Authorization"] = f"Bearer {token}"
        n = 0
        while time.time() < stop:
            r = fn(s)
            if r.status_code != 200:
                errors.append(r.status_code)
            n += 1
        counts.append(n)

    threads = [threading.Thread(target=worker) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / SECONDS, len(errors)


def main():
    pg = PgServer("bench-enc")
    inst = None
    try:
        db = pg.create_database("bench")
        email = "root@bench.example.com"
        inst = Coredb({"DATABASE_URL": pg.url(db), "JWT_SECRET": "b" * 64,
                       "DB_ENCRYPTION_KEY": base64.b64encode(os.urandom(32)).decode(),
                       "COREDB_ADMIN_EMAIL": email, "COREDB_ADMIN_PASSWORD": PASSWORD,
                       "RATE_LIMIT_USER": "0", "RATE_LIMIT_ANON": "0", "DB_POOL_MAX": "10", "LOG_LEVEL": "warn"})
        admin = login(inst, email, PASSWORD)["access_token"]
        ah = {"Authorization": f"Bearer {admin}"}
        u, pw = register(inst)
        sess = login(inst, u["email"], pw)
        token, uid = sess["access_token"], sess["user"]["user_id"]
        for name in ("plain_t", "enc_t", "rot_t"):
            n = ROTATE_ROWS if name == "rot_t" else ROWS
            pg.query(db, f"CREATE TABLE {name} (id bigint PRIMARY KEY, user_id uuid, name text, ssn text);"
                         f"INSERT INTO {name} SELECT g, '{uid}', 'n' || g, '123-45-' || g FROM generate_series(1, {n}) g")
            r = inst.post(f"/api/v1/admin/tables/{name}/expose", headers=ah)
            assert r.status_code == 200, r.text
        for name in ("enc_t", "rot_t"):
            r = inst.post("/api/v1/admin/encryption/columns", headers=ah, json={"table_name": name, "column_name": "ssn"})
            assert r.status_code == 200, r.text
        pg.query(db, "ANALYZE")

        def read(table):
            return lambda s: s.post(inst.base + QUERY, timeout=30, json={
                "database": "postgresql", "query_type": "select", "table": table,
                "filters": {"id": {"in": random.sample(range(1, ROWS + 1), 20)}}})

        def write(table):
            return lambda s: s.post(inst.base + TX, timeout=30, json={"operations": [{
                "database": "postgresql", "operation": "update", "table": table,
                "filters": {"id": random.randint(1, ROWS)}, "data": {"ssn": f"999-{random.randint(0, 10**6)}"}}]})

        res = {k: [] for k in ("read plain", "read enc", "write plain", "write enc")}
        errs = 0
        for _ in range(ROUNDS):
            for kind, fn in (("read", read), ("write", write)):
                for label, table in (("plain", "plain_t"), ("enc", "enc_t")):
                    rate, e = hammer(inst, token, fn(table))
                    res[f"{kind} {label}"].append(rate)
                    errs += e
        med = {k: statistics.median(v) for k, v in res.items()}

        t0 = time.time()
        r = inst.post("/api/v1/admin/encryption/columns/rotate", headers=ah,
                      json={"table_name": "rot_t", "column_name": "ssn"}, timeout=600)
        took = time.time() - t0
        assert r.status_code == 200, r.text
        rows = r.json()["job"]["rows_done"]
        assert rows == ROTATE_ROWS, r.text
        work = took - 2.5
        load = os.getloadavg()
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        out = [f"\n### Column encryption: data API on an encrypted vs a plain column, rotation — "
               f"{time.strftime('%Y-%m-%d')} — {os.cpu_count()} cores, {mem:.0f} GiB, Linux {platform.release()}",
               f"bench/encryption.py: {CLIENTS} client threads (Python requests, same machine), {ROUNDS} rounds x "
               f"{SECONDS} s, medians; release build, in-process cache, tables of {ROWS} rows; reads = 20 rows by "
               f"`id IN (20 random ids)`, writes = one update of `ssn` by primary key. Load average before the "
               f"rotation: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}. non-2xx answers: {errs}.",
               "", "| operation | plain req/s | encrypted req/s | encrypted / plain |", "|---|---|---|---|"]
        for kind in ("read", "write"):
            p, e = med[f"{kind} plain"], med[f"{kind} enc"]
            out.append(f"| {kind} | {p:.1f} | {e:.1f} | {e / p:.2f} |")
        out += ["", "| rotation of | wall s | rows/s (wall) | rows/s (without the fixed 2.5 s wait) |", "|---|---|---|---|",
                f"| {rows} rows | {took:.2f} | {rows / took:.0f} | {rows / work:.0f} |", ""]
        text = "\n".join(out)
        print(text)
        with open(os.path.join(ROOT, "bench", "RESULTS.md"), "a") as f:
            f.write(text)
    finally:
        if inst:
            inst.stop()
        pg.destroy()


if __name__ == "__main__":
    main()
