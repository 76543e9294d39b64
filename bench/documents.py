#!/usr/bin/python3
"""bench/documents.py - the document store (issue 15) against a plain table
through the same data API: inserts per second (one document / one row per
transaction) and path-filter queries per second on ROWS documents vs the
same query on a plain exposed table with the same data as columns.
A throw-away PostgreSQL 15 cluster (tests/e2e/servers.py) and the release
coredb (in-process cache, no Redis). Queries pick a random city of CITIES
and a random minimum age, so the query cache rarely answers. CLIENTS
threads for SECONDS each, table and documents alternating, ROUNDS rounds;
medians. Appends a section to bench/RESULTS.md.
Usage: make && bench/documents.py"""
import json
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

ROUNDS, SECONDS, CLIENTS, ROWS, CITIES = 3, 3, 4, 5000, 50
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
                errors.append((r.status_code, r.text[:200]))
            n += 1
        counts.append(n)

    threads = [threading.Thread(target=worker) for _ in range(CLIENTS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sum(counts) / SECONDS, errors


def main():
    pg = PgServer("bench-docs")
    inst = None
    try:
        db = pg.create_database("bench")
        email = "root@bench.example.com"
        inst = Coredb({"DATABASE_URL": pg.url(db), "JWT_SECRET": "b" * 64,
                       "COREDB_ADMIN_EMAIL": email, "COREDB_ADMIN_PASSWORD": PASSWORD,
                       "RATE_LIMIT_USER": "0", "RATE_LIMIT_ANON": "0", "DB_POOL_MAX": "10", "LOG_LEVEL": "warn"})
        admin = login(inst, email, PASSWORD)["access_token"]
        ah = {"Authorization": f"Bearer {admin}"}
        u, pw = register(inst)
        sess = login(inst, u["email"], pw)
        token, uid = sess["access_token"], sess["user"]["user_id"]
        r = inst.post("/api/v1/admin/collections", headers=ah, json={"name": "people", "kind": "documents"})
        assert r.status_code == 201, r.text
        pg.query(db, "CREATE TABLE people_t (id text PRIMARY KEY, user_id uuid, name text, city text, age int)")
        r = inst.post("/api/v1/admin/tables/people_t/expose", headers=ah)
        assert r.status_code == 200, r.text
        pg.query(db, f"INSERT INTO people_t SELECT 'p' || g, '{uid}', 'n' || g, 'city' || (g % {CITIES}), g % 90"
                     f" FROM generate_series(1, {ROWS}) g;"
                     f"INSERT INTO coredb.coll_people (id, user_id, doc) SELECT 'p' || g, '{uid}',"
                     f" jsonb_build_object('name', 'n' || g, 'address', jsonb_build_object('city', 'city' || (g % {CITIES})),"
                     f" 'age', g % 90) FROM generate_series(1, {ROWS}) g; ANALYZE")
        seq = iter(range(10**9))

        def q_table(s):
            return s.post(inst.base + QUERY, timeout=30, json={
                "table": "people_t", "filters": {"city": f"city{random.randrange(CITIES)}",
                                                 "age": {"gte": random.randrange(90)}}})

        def q_docs(s):
            return s.post(inst.base + QUERY, timeout=30, json={
                "database": "documents", "collection": "people",
                "filters": {"address.city": f"city{random.randrange(CITIES)}", "age": {"gte": random.randrange(90)}}})

        def i_table(s):
            return s.post(inst.base + TX, timeout=30, json={"operations": [{
                "operation": "insert", "table": "people_t",
                "data": {"id": f"t{next(seq)}", "name": "x", "city": "cityX", "age": 30}}]})

        def i_docs(s):
            return s.post(inst.base + TX, timeout=30, json={"operations": [{
                "database": "documents", "operation": "insert", "collection": "people",
                "document": {"id": f"d{next(seq)}", "name": "x", "address": {"city": "cityX"}, "age": 30}}]})

        res = {k: [] for k in ("query table", "query docs", "insert table", "insert docs")}
        errs = []
        for _ in range(ROUNDS):
            for label, fn in (("query table", q_table), ("query docs", q_docs), ("insert table", i_table),
                              ("insert docs", i_docs)):
                rate, e = hammer(inst, token, fn)
                res[label].append(rate)
                errs += e
        med = {k: statistics.median(v) for k, v in res.items()}
        load = os.getloadavg()
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        out = [f"\n### Documents vs a plain table through the data API — {time.strftime('%Y-%m-%d')} — "
               f"{os.cpu_count()} cores, {mem:.0f} GiB, Linux {platform.release()}",
               f"bench/documents.py: {CLIENTS} client threads (Python requests, same machine), {ROUNDS} rounds x "
               f"{SECONDS} s, medians; release build, in-process cache; {ROWS} rows/documents of one user; "
               f"query = city equality ({CITIES} cities) and age >= random (a path filter for documents), page of 20; "
               f"insert = one row / one document per transaction. Load average after: {load[0]:.2f} {load[1]:.2f} "
               f"{load[2]:.2f}. non-2xx answers: {len(errs)}.",
               "", "| operation | table req/s | documents req/s | documents / table |", "|---|---|---|---|"]
        for kind in ("query", "insert"):
            t, d = med[f"{kind} table"], med[f"{kind} docs"]
            out.append(f"| {kind} | {t:.1f} | {d:.1f} | {d / t:.2f} |")
        text = "\n".join(out) + "\n"
        print(text)
        if errs:
            print("first errors:", json.dumps(errs[:3]))
        with open(os.path.join(ROOT, "bench", "RESULTS.md"), "a") as f:
            f.write(text)
    finally:
        if inst:
            inst.stop()
        pg.destroy()


if __name__ == "__main__":
    main()
