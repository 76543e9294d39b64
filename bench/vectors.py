#!/usr/bin/python3
"""bench/vectors.py - the vector store's search (issue 15), exact and
approximate (HNSW), against exact references in the same run: for each size
of VEC_NS (default 10000 and 100000) generated vectors of 384 dimensions
(cosine, k=10), in one hnsw collection (m=16, ef_construction=200,
ef_search=100, the defaults):
  - coredb exact: POST /data/query with `exact: true` (the exact scan over
    the in-memory copy; candidates named by PostgreSQL under the caller's role)
  - coredb hnsw: the same query on the index (the first one builds it: timed,
    with the build time coredb reports), recall@10 against numpy's exact answer
  - numpy exact: one matrix-vector product + argpartition, float32, in memory
  - FAISS IndexFlatIP (python3-faiss) on the same normalized vectors, one query
    per call, one OpenMP thread (coredb ranks a query on one thread too)
QPS, p50 and p99 with one client (and coredb QPS with CLIENTS clients); the
ratios coredb-exact / FAISS-flat and coredb-exact / numpy (QPS). Also
upserts/s through /data/transaction (BATCH points per transaction).
A throw-away PostgreSQL 15 cluster (tests/e2e/servers.py) and the release
coredb. Appends a section to bench/RESULTS.md.
Usage: make && bench/vectors.py  (or make bench-vectors); VEC_NS=10000 for the small size only."""
import os
import platform
import statistics
import sys
import threading
import time

import faiss
import numpy as np
import requests

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "tests", "e2e"))
from identity import PASSWORD, login, register  # noqa: E402
from servers import Coredb, PgServer  # noqa: E402

NS = [int(n) for n in os.environ.get("VEC_NS", "10000,100000").split(",")]
# ef_search of the hnsw collection, then of further copies of it (same points, each index built on its own)
EFS = [int(e) for e in os.environ.get("VEC_EF_SEARCH", "100").split(",")]
# lowrank (default): 32 latent dimensions mapped to 384 plus noise, like real embeddings (low intrinsic
# dimension); gauss: i.i.d. normal in all 384, the worst case of any graph index (distances concentrate)
DATA = os.environ.get("VEC_DATA", "lowrank")


def generate(rng, n):
    if DATA == "gauss":
        return rng.normal(size=(n, DIM)).astype(np.float32)
    w = np.random.default_rng(32).normal(size=(32, DIM)).astype(np.float32)
    return (rng.normal(size=(n, 32)).astype(np.float32) @ w + 0.5 * rng.normal(size=(n, DIM))).astype(np.float32)
DIM, K, SECONDS, CLIENTS, BATCH, API_POINTS = 384, 10, 8, 2, 50, 1000
QUERY, TX = "/api/v1/data/query", "/api/v1/data/transaction"


def stats(lat):
    lat = sorted(lat)
    return len(lat) / sum(lat), statistics.median(lat) * 1e3, lat[max(0, int(len(lat) * 0.99) - 1)] * 1e3


def timed_loop(fn, queries, seconds):
    """fn(q) for seconds, one client; per-call latencies."""
    lat, i, stop = [], 0, time.time() + seconds
    while time.time() < stop:
        q = queries[i % len(queries)]
        t = time.perf_counter()
        fn(q, i)
        lat.append(time.perf_counter() - t)
        i += 1
    return lat


def one_size(pg, inst, admin, n, rng):
    xs = generate(rng, n)
    queries = generate(rng, 200)
    name = f"emb{n}"
    u, pw = register(inst)
    sess = login(inst, u["email"], pw)
    token, uid = sess["access_token"], sess["user"]["user_id"]
    r = inst.post("/api/v1/admin/collections", headers={"Authorization": f"Bearer {admin}"},
                  json={"name": name, "kind": "vectors", "dimensions": DIM, "metric": "cosine", "index": "hnsw",
                        "hnsw": {"ef_search": EFS[0]}})
    assert r.status_code == 201, r.text
    s = requests.Session()
    s.headers["Authorization"] = f"Bearer {token}"
    # the first API_POINTS through the API (timed), the rest straight into PostgreSQL
    t0 = time.perf_counter()
    for b in range(0, API_POINTS, BATCH):
        ops = [{"database": "vectors", "operation": "upsert", "collection": name, "id": f"p{i}",
                "vector": xs[i].tolist(), "payload": {"n": i}} for i in range(b, b + BATCH)]
        r = s.post(inst.base + TX, json={"operations": ops}, timeout=60)
        assert r.status_code == 200, r.text[:300]
    upserts = API_POINTS / (time.perf_counter() - t0)
    for b in range(API_POINTS, n, 1000):
        rows = ",".join(f"('p{i}', '{uid}', '{{{','.join(map(str, xs[i].tolist()))}}}',"
                        f" '{{\"n\": {i}}}')" for i in range(b, min(n, b + 1000)))
        pg.query(inst.db, f"INSERT INTO coredb.coll_{name} (id, user_id, vector, payload) VALUES {rows}")
    for ef in EFS[1:]:
        r = inst.post("/api/v1/admin/collections", headers={"Authorization": f"Bearer {admin}"},
                      json={"name": f"{name}_ef{ef}", "kind": "vectors", "dimensions": DIM, "metric": "cosine",
                            "index": "hnsw", "hnsw": {"ef_search": ef}})
        assert r.status_code == 201, r.text
        pg.query(inst.db, f"INSERT INTO coredb.coll_{name}_ef{ef} SELECT * FROM coredb.coll_{name}")
        pg.query(inst.db, f"ANALYZE coredb.coll_{name}_ef{ef}")
    pg.query(inst.db, f"ANALYZE coredb.coll_{name}")
    ids = np.array([f"p{i}" for i in range(n)])
    xn = xs / np.linalg.norm(xs, axis=1, keepdims=True)
    truth = []
    for q in queries:
        sc = xn @ (q / np.linalg.norm(q))
        truth.append(set(ids[np.argpartition(-sc, K)[:K]]))

    res = {"n": n, "upserts": upserts}
    for mode in ["exact"] + [f"hnsw{ef}" for ef in EFS]:
        exact = mode == "exact"
        coll = name if exact or mode == f"hnsw{EFS[0]}" else f"{name}_ef{mode[4:]}"

        def body(q, exact, coll=coll):
            return {"database": "vectors", "collection": coll, "query_type": "search", "vector": q.tolist(),
                    "k": K, "with_payload": False, "exact": exact}
        # the first search fills the exact path's copy / builds the index: timed on its own
        t = time.perf_counter()
        r = s.post(inst.base + QUERY, json=body(queries[-1], exact), timeout=1200)
        res[f"{mode}_cold"] = time.perf_counter() - t
        assert r.status_code == 200, r.text[:300]
        assert r.json()["index"] == ("exact" if exact else "hnsw"), r.json()
        if not exact:
            res[f"{mode}_build_ms"] = r.json().get("index_build_ms", 0)
        hits = [0, 0]

        def call(q, i):
            rr = s.post(inst.base + QUERY, json=body(q, exact), timeout=120)
            assert rr.status_code == 200, rr.text[:300]
            if i < len(queries):
                hits[0] += len(truth[i] & {p["id"] for p in rr.json()["data"]})
                hits[1] += K
        lat = timed_loop(call, queries, SECONDS)
        res[mode] = stats(lat)
        res[f"{mode}_recall"] = (hits[0] / hits[1], hits[1] // K)
        counts = []

        def worker(seed):
            ss = requests.Session()
            ss.headers["Authorization"] = f"Bearer {token}"
            c, end = 0, time.time() + SECONDS
            while time.time() < end:
                rr = ss.post(inst.base + QUERY, json=body(queries[(seed + c) % len(queries)], exact), timeout=120)
                assert rr.status_code == 200
                c += 1
            counts.append(c)
        threads = [threading.Thread(target=worker, args=(c * 37,)) for c in range(CLIENTS)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        res[f"{mode}_qps_n"] = sum(counts) / SECONDS
        if mode == f"hnsw{EFS[0]}":
            # freshness: after one upsert the next search catches the index up (reads every row's id and
            # etag, then the changed vector) before answering
            catch, total = [], []
            for j in range(5):
                r = s.post(inst.base + TX, json={"operations": [
                    {"database": "vectors", "operation": "upsert", "collection": name, "id": f"p{j}",
                     "vector": xs[(j + 1) % n].tolist(), "payload": {"n": j}}]}, timeout=60)
                assert r.status_code == 200, r.text[:300]
                t = time.perf_counter()
                r = s.post(inst.base + QUERY, json=body(queries[j], False), timeout=120)
                total.append((time.perf_counter() - t) * 1e3)
                assert r.status_code == 200 and r.json()["index"] == "hnsw", r.text[:300]
                catch.append(r.json().get("index_build_ms", 0))
            res["catch_up"] = (statistics.median(catch), statistics.median(total))

    # numpy exact search, same vectors, same queries
    def np_search(q, i):
        sc = xn @ (q / np.linalg.norm(q))
        top = np.argpartition(-sc, K)[:K]
        return top[np.argsort(-sc[top])]
    res["numpy"] = stats(timed_loop(np_search, queries, 4))
    # FAISS flat (exact) inner product on the normalized vectors = cosine
    faiss.omp_set_num_threads(1)
    index = faiss.IndexFlatIP(DIM)
    index.add(np.ascontiguousarray(xn))
    qn = (queries / np.linalg.norm(queries, axis=1, keepdims=True)).astype(np.float32)
    hits = 0
    for i in range(len(qn)):
        _, found = index.search(qn[i:i + 1], K)
        hits += len(truth[i] & set(ids[found[0]]))
    res["faiss_recall"] = hits / (len(qn) * K)
    res["faiss"] = stats(timed_loop(lambda q, i: index.search(qn[i % len(qn)][None, :], K), qn, 4))
    return res


def report(results):
    load = os.getloadavg()
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    out = [f"\n### Vector search: coredb exact and HNSW vs numpy and FAISS flat — "
           f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} — {os.cpu_count()} cores, {mem:.0f} GiB, "
           f"Linux {platform.release()}",
           f"bench/vectors.py: {', '.join(str(r['n']) for r in results)} vectors of {DIM} dimensions (VEC_DATA={DATA}: "
           + ("i.i.d. normal" if DATA == "gauss" else "32 normal latent dimensions x a fixed 32x384 normal matrix "
              "+ N(0, 0.5) noise") + f", float32), cosine, k={K}, one user owning all; per size one hnsw collection per ef_search "
           f"({', '.join(map(str, EFS))}; m=16, ef_construction=200, the defaults; same points); coredb exact = the same collection searched with `exact: true`. Release build; "
           f"coredb, PostgreSQL and the client share the machine. One client unless said; numpy (reference BLAS) and "
           f"FAISS IndexFlatIP (1 OpenMP thread, one query per call) rank in-memory normalized float32 matrices, "
           f"without HTTP or PostgreSQL. Recall@10 against numpy's exact top 10. Load average after: "
           f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}.",
           "", "| measure | " + " | ".join(f"{r['n']:,}" for r in results) + " |",
           "|---|" + "---|" * len(results)]

    def row(label, fn):
        out.append(f"| {label} | " + " | ".join(fn(r) for r in results) + " |")
    row("coredb exact: first search (copy filled from PostgreSQL) ms", lambda r: f"{r['exact_cold'] * 1e3:.0f}")
    row("coredb exact: QPS / p50 / p99 ms", lambda r: "{:.1f} / {:.1f} / {:.1f}".format(*r["exact"]))
    row(f"coredb exact, {CLIENTS} clients: QPS", lambda r: f"{r['exact_qps_n']:.1f}")
    row("coredb exact: recall@10", lambda r: f"{r['exact_recall'][0]:.3f} ({r['exact_recall'][1]} q)")
    for ef in EFS:
        m = f"hnsw{ef}"
        row(f"coredb hnsw ef_search={ef}: first search (index build) ms / build ms reported", lambda r, m=m:
            f"{r[m + '_cold'] * 1e3:.0f} / {r[m + '_build_ms']:.0f}")
        row(f"coredb hnsw ef_search={ef}: QPS / p50 / p99 ms", lambda r, m=m:
            "{:.1f} / {:.1f} / {:.1f}".format(*r[m]))
        row(f"coredb hnsw ef_search={ef}, {CLIENTS} clients: QPS", lambda r, m=m: f"{r[m + '_qps_n']:.1f}")
        row(f"coredb hnsw ef_search={ef}: **recall@10**", lambda r, m=m:
            f"**{r[m + '_recall'][0]:.3f}** ({r[m + '_recall'][1]} q)")
    row(f"coredb hnsw ef_search={EFS[0]}: search after one upsert: catch-up ms / whole search ms (median of 5)",
        lambda r: "{:.0f} / {:.0f}".format(*r["catch_up"]))
    row("numpy exact: QPS / p50 / p99 ms", lambda r: "{:.0f} / {:.2f} / {:.2f}".format(*r["numpy"]))
    row("FAISS IndexFlatIP: QPS / p50 / p99 ms (recall@10)", lambda r:
        "{:.0f} / {:.2f} / {:.2f}".format(*r["faiss"]) + f" ({r['faiss_recall']:.3f})")
    row("**ratio coredb exact / FAISS flat (QPS)**", lambda r: f"**{r['exact'][0] / r['faiss'][0]:.4f}**")
    row("ratio coredb exact / numpy (QPS)", lambda r: f"{r['exact'][0] / r['numpy'][0]:.4f}")
    for ef in EFS:
        m = f"hnsw{ef}"
        row(f"ratio coredb hnsw ef_search={ef} / FAISS flat (QPS)", lambda r, m=m: f"{r[m][0] / r['faiss'][0]:.4f}")
        row(f"ratio coredb hnsw ef_search={ef} / coredb exact (QPS)", lambda r, m=m: f"{r[m][0] / r['exact'][0]:.2f}")
    row(f"upserts/s through /data/transaction ({BATCH} points per transaction)", lambda r: f"{r['upserts']:.0f}")
    text = "\n".join(out) + "\n"
    print(text)
    with open(os.path.join(ROOT, "bench", "RESULTS.md"), "a") as f:
        f.write(text)


def main():
    rng = np.random.default_rng(384)
    pg = PgServer("bench-vec")
    inst = None
    try:
        db = pg.create_database("bench")
        email = "root@bench.example.com"
        inst = Coredb({"DATABASE_URL": pg.url(db), "JWT_SECRET": "b" * 64,
                       "COREDB_ADMIN_EMAIL": email, "COREDB_ADMIN_PASSWORD": PASSWORD,
                       "RATE_LIMIT_USER": "0", "RATE_LIMIT_ANON": "0", "DB_POOL_MAX": "10", "LOG_LEVEL": "warn"})
        inst.db = db
        admin = login(inst, email, PASSWORD)["access_token"]
        results = []
        for n in NS:
            results.append(one_size(pg, inst, admin, n, rng))
            print(results[-1], flush=True)
        report(results)
    finally:
        if inst:
            inst.stop()
        pg.destroy()


if __name__ == "__main__":
    main()
