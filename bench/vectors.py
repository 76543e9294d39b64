#!/usr/bin/python3
"""bench/vectors.py - the vector store's exact search (issue 15): search
QPS and p99 latency through POST /data/query on N generated vectors of DIM
dimensions (cosine, k=10), against numpy's exact search (one matrix-vector
product and argpartition, float32) on the same vectors and queries in the
same run; the ratio coredb / numpy. Also upserts/s through
/data/transaction (BATCH points per transaction) and recall@10 of coredb's
answers against numpy's (exact search: should be 1.0).
A throw-away PostgreSQL 15 cluster (tests/e2e/servers.py) and the release
coredb; one client thread (latency), then CLIENTS threads (throughput).
Appends a section to bench/RESULTS.md.
Usage: make && bench/vectors.py  (or make bench-vectors); VEC_N=100000 for 100k vectors."""
import os
import platform
import statistics
import sys
import threading
import time

import numpy as np
import requests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
from identity import PASSWORD, login, register  # noqa: E402
from servers import Coredb, PgServer  # noqa: E402

N, DIM, K, SECONDS, CLIENTS, BATCH, API_POINTS = int(os.environ.get("VEC_N", "10000")), 384, 10, 10, 2, 50, 1000
QUERY, TX = "/api/v1/data/query", "/api/v1/data/transaction"


def main():
    rng = np.random.default_rng(384)
    xs = rng.normal(size=(N, DIM)).astype(np.float32)
    queries = rng.normal(size=(200, DIM)).astype(np.float32)
    pg = PgServer("bench-vec")
    inst = None
    try:
        db = pg.create_database("bench")
        email = "root@bench.example.com"
        inst = Coredb({"DATABASE_URL": pg.url(db), "JWT_SECRET": "b" * 64,
                       "COREDB_ADMIN_EMAIL": email, "COREDB_ADMIN_PASSWORD": PASSWORD,
                       "RATE_LIMIT_USER": "0", "RATE_LIMIT_ANON": "0", "DB_POOL_MAX": "10", "LOG_LEVEL": "warn"})
        admin = login(inst, email, PASSWORD)["access_token"]
        u, pw = register(inst)
        sess = login(inst, u["email"], pw)
        token, uid = sess["access_token"], sess["user"]["user_id"]
        r = inst.post("/api/v1/admin/collections", headers={"Authorization": f"Bearer {admin}"},
                      json={"name": "emb", "kind": "vectors", "dimensions": DIM, "metric": "cosine"})
        assert r.status_code == 201, r.text
        s = requests.Session()
        s.headers["Authorization"] = f"Bearer {token}"
        # the first API_POINTS through the API (timed), the rest straight into PostgreSQL
        t0 = time.perf_counter()
        for b in range(0, API_POINTS, BATCH):
            ops = [{"database": "vectors", "operation": "upsert", "collection": "emb", "id": f"p{i}",
                    "vector": xs[i].tolist(), "payload": {"n": i}} for i in range(b, b + BATCH)]
            r = s.post(inst.base + TX, json={"operations": ops}, timeout=60)
            assert r.status_code == 200, r.text[:300]
        upserts = API_POINTS / (time.perf_counter() - t0)
        for b in range(API_POINTS, N, 1000):
            rows = ",".join(f"('p{i}', '{uid}', '{{{','.join(map(str, xs[i].tolist()))}}}',"
                            f" '{{\"n\": {i}}}')" for i in range(b, min(N, b + 1000)))
            pg.query(db, f"INSERT INTO coredb.coll_emb (id, user_id, vector, payload) VALUES {rows}")
        pg.query(db, "ANALYZE coredb.coll_emb")
        ids = np.array([f"p{i}" for i in range(N)])

        def body(q):
            return {"database": "vectors", "collection": "emb", "query_type": "search", "vector": q.tolist(),
                    "k": K, "with_payload": False}

        # the first search reads every vector from PostgreSQL into coredb's copy: timed on its own
        t = time.perf_counter()
        r = s.post(inst.base + QUERY, json=body(queries[-1]), timeout=600)
        cold = time.perf_counter() - t
        assert r.status_code == 200, r.text[:300]
        # recall@10 against numpy, and the single-client latency (warm copy)
        xn = xs / np.linalg.norm(xs, axis=1, keepdims=True)
        hits, lat = 0, []
        stop, i = time.time() + SECONDS, 0
        while time.time() < stop:
            q = queries[i % len(queries)]
            t = time.perf_counter()
            r = s.post(inst.base + QUERY, json=body(q), timeout=60)
            lat.append(time.perf_counter() - t)
            assert r.status_code == 200, r.text[:300]
            if i < len(queries):
                sc = xn @ (q / np.linalg.norm(q))
                ref = set(ids[np.argpartition(-sc, K)[:K]])
                hits += len(ref & {p["id"] for p in r.json()["data"]})
            i += 1
        n_checked = min(i, len(queries))
        recall = hits / (n_checked * K)
        qps1 = len(lat) / sum(lat)
        p50, p99 = statistics.median(lat) * 1e3, sorted(lat)[int(len(lat) * 0.99) - 1] * 1e3

        counts = []

        def worker(seed):
            ss = requests.Session()
            ss.headers["Authorization"] = f"Bearer {token}"
            n, end = 0, time.time() + SECONDS
            while time.time() < end:
                rr = ss.post(inst.base + QUERY, json=body(queries[(seed + n) % len(queries)]), timeout=60)
                assert rr.status_code == 200
                n += 1
            counts.append(n)

        threads = [threading.Thread(target=worker, args=(c * 37,)) for c in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        qps_n = sum(counts) / SECONDS

        # numpy exact search, same vectors, same queries, one thread of Python
        nlat, j = [], 0
        stop = time.time() + 3
        while time.time() < stop:
            q = queries[j % len(queries)]
            t = time.perf_counter()
            sc = xn @ (q / np.linalg.norm(q))
            top = np.argpartition(-sc, K)[:K]
            top = top[np.argsort(-sc[top])]
            nlat.append(time.perf_counter() - t)
            j += 1
        np_qps = len(nlat) / sum(nlat)
        np_p99 = sorted(nlat)[int(len(nlat) * 0.99) - 1] * 1e3

        load = os.getloadavg()
        mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
        out = [f"\n### Vector search, exact (coredb vs numpy) — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
               f" — {os.cpu_count()} cores, {mem:.0f} GiB, Linux {platform.release()}",
               f"bench/vectors.py: {N} vectors of {DIM} dimensions (normal random, float32), cosine, k={K}, one "
               f"user owning all; release build. Each coredb search reads the visible points' ids and etags from "
               f"PostgreSQL under the caller's role and takes their vectors from its in-memory copy (warm after "
               f"the first search), ranking in C; numpy ranks a float32 matrix already in memory "
               f"(pre-normalized), so the ratio includes coredb's whole HTTP + PostgreSQL round trip. "
               f"Load average after: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}.",
               "", "| measure | value |", "|---|---|",
               f"| coredb first search (cold copy: every vector read from PostgreSQL) ms | {cold * 1e3:.0f} |",
               f"| coredb search, 1 client: QPS | {qps1:.1f} |",
               f"| coredb search, 1 client: p50 / p99 ms | {p50:.1f} / {p99:.1f} |",
               f"| coredb search, {CLIENTS} clients: QPS | {qps_n:.1f} |",
               f"| numpy exact search: QPS / p99 ms | {np_qps:.0f} / {np_p99:.2f} |",
               f"| ratio coredb (1 client) / numpy QPS | {qps1 / np_qps:.4f} |",
               f"| recall@10 of coredb vs numpy ({n_checked} queries) | {recall:.3f} |",
               f"| upserts/s through /data/transaction ({BATCH} points per transaction) | {upserts:.0f} |"]
        text = "\n".join(out) + "\n"
        print(text)
        with open(os.path.join(ROOT, "bench", "RESULTS.md"), "a") as f:
            f.write(text)
    finally:
        if inst:
            inst.stop()
        pg.destroy()


if __name__ == "__main__":
    main()
