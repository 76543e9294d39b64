"""The approximate (HNSW) vector index (issue 15), through the real binary.

An hnsw collection is created with its options (checked in the registry,
coredb.collections, and by GET), filled with ~3000 random points, and
searched: recall@10 against an exact numpy reference computed here, scores
of the returned ids equal numpy's, `exact: true` equals numpy exactly.
Freshness follows the registry's version (a statement-level trigger, seen in
pg_trigger): an upsert moving a point onto the query, a delete, a write by
direct SQL and a write through a second coredb instance are all seen by the
next search. Row-level security and filters are decided by PostgreSQL: user
A's nearest points never reach user B, who still gets k of his own.
Hostile options are 400 naming the field."""
import numpy as np
import pytest

from datahelp import assert_error, query, scalar, start_instance, tx_ok, user, admin_of
from identity import Account, login, unique

REDIS_DB = 9

ADMIN_PATH = "/api/v1/admin/collections"
DIMS = 32
N = 3000
K = 10


def vup(coll, vec, pid=None, payload=None):
    op = {"database": "vectors", "operation": "upsert", "collection": coll, "vector": [float(v) for v in vec]}
    if pid is not None:
        op["id"] = pid
    if payload is not None:
        op["payload"] = payload
    return op


def search(inst, acct, coll, vec, **kw):
    body = {"database": "vectors", "collection": coll, "query_type": "search", "vector": [float(v) for v in vec]}
    body.update(kw)
    resp = query(inst, acct, body)
    assert resp.status_code == 200, f"{resp.status_code} {resp.text[:800]}"
    out = resp.json()
    assert out["count"] == len(out["data"]) and out["cached"] is False, out
    return out


def cosine(xs, q):
    xs = xs.astype(np.float32)
    q = q.astype(np.float32)
    return (xs @ q) / (np.linalg.norm(xs, axis=1) * np.linalg.norm(q))


def top_ids(ids, scores, k, mask=None):
    order = [i for i in np.argsort(-scores, kind="stable") if mask is None or mask[i]]
    return [ids[i] for i in order[:k]]


def create(inst, admin, name, **kw):
    body = {"name": name, "kind": "vectors", "dimensions": DIMS, "metric": "cosine", "index": "hnsw"}
    body.update(kw)
    resp = inst.post(ADMIN_PATH, json=body, headers=admin.headers)
    assert resp.status_code == 201, resp.text
    return resp.json()


@pytest.fixture(scope="module")
def coll(inst, admin):
    """An hnsw cosine collection of N points owned by user A; payload {"g": i % 4}."""
    rng = np.random.default_rng(1515)
    xs = rng.normal(size=(N, DIMS)).astype(np.float32)
    ids = [f"h{i:05d}" for i in range(N)]
    name = unique("hnsw")
    create(inst, admin, name, hnsw={"m": 16, "ef_construction": 100, "ef_search": 64})
    a = user(inst)
    for s in range(0, N, 100):
        tx_ok(inst, a, [vup(name, xs[i], ids[i], {"g": i % 4}) for i in range(s, min(N, s + 100))])
    return {"name": name, "a": a, "xs": xs, "ids": ids, "rng": rng}


def test_registry_get_and_trigger(inst, admin, coll):
    name = coll["name"]
    row = inst.pg.query(inst.db, "SELECT vector_index, hnsw_m, hnsw_ef_construction, hnsw_ef_search, version"
                                 " FROM coredb.collections WHERE name = %s", (name,))[0]
    assert row[:4] == ("hnsw", 16, 100, 64)
    assert row[4] >= N // 100  # one bump per write statement at least
    listed = [c for c in inst.get(ADMIN_PATH, headers=admin.headers).json()["collections"] if c["name"] == name]
    assert listed[0]["index"] == "hnsw"
    assert listed[0]["hnsw"] == {"m": 16, "ef_construction": 100, "ef_search": 64}
    trig = inst.pg.query(inst.db, "SELECT t.tgname, p.proname, p.prosecdef FROM pg_trigger t"
                                  " JOIN pg_proc p ON p.oid = t.tgfoid"
                                  " WHERE t.tgrelid = %s::regclass AND NOT t.tgisinternal",
                         (f"coredb.coll_{name}",))
    assert trig == [("coredb_version", "collection_version_bump", True)]
    # defaults, and an exact collection has no trigger and no hnsw options
    d = unique("hdef")
    out = create(inst, admin, d)
    assert out["index"] == "hnsw" and out["hnsw"] == {"m": 16, "ef_construction": 200, "ef_search": 100}
    e = unique("hexact")
    out = create(inst, admin, e, index="exact")
    assert out["index"] == "exact" and out["hnsw"] is None
    assert scalar(inst, "SELECT count(*) FROM pg_trigger WHERE tgrelid = %s::regclass AND NOT tgisinternal",
                  (f"coredb.coll_{e}",)) == 0
    v0 = scalar(inst, "SELECT version FROM coredb.collections WHERE name = %s", (name,))
    tx_ok(inst, coll["a"], [vup(name, coll["xs"][0], "bump-me")])
    v1 = scalar(inst, "SELECT version FROM coredb.collections WHERE name = %s", (name,))
    assert v1 > v0  # an upsert (INSERT ... ON CONFLICT) fires the INSERT and the UPDATE statement triggers
    tx_ok(inst, coll["a"], [{"database": "vectors", "operation": "delete", "collection": name, "id": "bump-me"}])


def test_recall_and_exact_scores(inst, coll):
    xs, ids, a, name = coll["xs"], coll["ids"], coll["a"], coll["name"]
    rng = np.random.default_rng(7)
    hits = 0
    for t in range(30):
        q = rng.normal(size=DIMS).astype(np.float32)
        ref = cosine(xs, q)
        truth = top_ids(ids, ref, K)
        out = search(inst, a, name, q, k=K, with_payload=False)
        assert out["index"] == "hnsw", out
        got = [p["id"] for p in out["data"]]
        assert len(got) == K and len(set(got)) == K
        hits += len(set(got) & set(truth))
        by_id = dict(zip(ids, ref))
        for p in out["data"]:
            assert abs(p["score"] - float(by_id[p["id"]])) <= 1e-4, (p, by_id[p["id"]])
        scores = [p["score"] for p in out["data"]]
        assert scores == sorted(scores, reverse=True)
        if t < 5:
            ex = search(inst, a, name, q, k=K, exact=True, with_payload=False)
            assert ex["index"] == "exact"
            assert [p["id"] for p in ex["data"]] == truth
            for p in ex["data"]:
                assert abs(p["score"] - float(by_id[p["id"]])) <= 1e-4
    recall = hits / (30 * K)
    print(f"recall@10 = {recall:.3f}")
    assert recall >= 0.9, recall


def test_fresh_after_upsert_delete_and_direct_sql(inst, coll):
    xs, a, name = coll["xs"], coll["a"], coll["name"]
    q = coll["rng"].normal(size=DIMS).astype(np.float32)
    search(inst, a, name, q)  # the index is current
    # a point moved onto the query ranks first
    tx_ok(inst, a, [vup(name, q, "h00042", {"g": 2})])
    out = search(inst, a, name, q, k=K)
    assert out["index"] == "hnsw" and out["data"][0]["id"] == "h00042"
    assert abs(out["data"][0]["score"] - 1.0) <= 1e-5
    # deleted: gone
    tx_ok(inst, a, [{"database": "vectors", "operation": "delete", "collection": name, "id": "h00042"}])
    out = search(inst, a, name, q, k=K)
    assert "h00042" not in [p["id"] for p in out["data"]]
    # written behind coredb's back (the trigger bumps the version, the etag changes)
    inst.pg.query(inst.db, f"UPDATE coredb.coll_{name} SET vector = %s::real[],"
                           " etag = md5(random()::text) WHERE id = 'h00043'", ([float(v) for v in q],))
    out = search(inst, a, name, q, k=K)
    assert out["data"][0]["id"] == "h00043" and abs(out["data"][0]["score"] - 1.0) <= 1e-5
    # restore h00042, h00043
    tx_ok(inst, a, [vup(name, xs[42], "h00042", {"g": 42 % 4}), vup(name, xs[43], "h00043", {"g": 43 % 4})])


def test_write_through_second_instance(inst, pg, redis_server, coll):
    a, name = coll["a"], coll["name"]
    q = coll["rng"].normal(size=DIMS).astype(np.float32)
    search(inst, a, name, q)
    other = start_instance(pg, redis_server, REDIS_DB, db=inst.db)
    try:
        acct = Account(other, a.user, a.password, login(other, a.email, a.password))
        tx_ok(other, acct, [vup(name, q, "second-instance", {"g": 1})])
    finally:
        other.stop_clean()
    out = search(inst, a, name, q, k=K)
    assert out["data"][0]["id"] == "second-instance"
    tx_ok(inst, a, [{"database": "vectors", "operation": "delete", "collection": name, "id": "second-instance"}])


def test_rls_other_users_points_never_returned(inst, coll):
    a, name = coll["a"], coll["name"]
    b = user(inst)
    rng = np.random.default_rng(99)
    # B owns 50 points far from the query; A's 3000 include the nearest ones
    q = rng.normal(size=DIMS).astype(np.float32)
    bx = -q + rng.normal(scale=0.8, size=(50, DIMS)).astype(np.float32)
    tx_ok(inst, b, [vup(name, bx[i], f"b{i:03d}", {"g": 0}) for i in range(50)])
    out = search(inst, b, name, q, k=K)
    got = [p["id"] for p in out["data"]]
    assert len(got) == K and all(g.startswith("b") for g in got), got
    ref = cosine(bx, q)
    assert got == top_ids([f"b{i:03d}" for i in range(50)], ref, K)
    # A does not see B's
    out = search(inst, a, name, -q, k=K)
    assert not any(p["id"].startswith("b") for p in out["data"])
    tx_ok(inst, b, [{"database": "vectors", "operation": "delete", "collection": name, "id": f"b{i:03d}"}
                    for i in range(50)])


def test_filter_and_min_score(inst, coll):
    xs, ids, a, name = coll["xs"], coll["ids"], coll["a"], coll["name"]
    rng = np.random.default_rng(5)
    hits = 0
    for _ in range(10):
        q = rng.normal(size=DIMS).astype(np.float32)
        ref = cosine(xs, q)
        mask = np.array([i % 4 == 3 for i in range(N)])
        truth = top_ids(ids, ref, K, mask)
        out = search(inst, a, name, q, k=K, filter={"g": 3})
        got = [p["id"] for p in out["data"]]
        assert len(got) == K and all(int(g[1:]) % 4 == 3 for g in got), got
        hits += len(set(got) & set(truth))
        assert all(p["payload"]["g"] == 3 for p in out["data"])
        # min_score: only points at least that close, none missing among the returned ranks
        thr = float(sorted(ref, reverse=True)[4])
        out = search(inst, a, name, q, k=K, min_score=thr)
        assert 1 <= out["count"] <= 5 and all(p["score"] >= thr - 1e-6 for p in out["data"])
    assert hits / (10 * K) >= 0.9


def test_very_selective_filter_falls_back_to_exact(inst, admin, coll):
    # ef_search 10: at most 10 x 4^3 = 640 candidates, fewer than the 1000 points
    name = unique("hsel")
    create(inst, admin, name, hnsw={"ef_search": 10})
    a, xs = coll["a"], coll["xs"]
    for s in range(0, 1000, 100):
        tx_ok(inst, a, [vup(name, xs[i], f"s{i:04d}", {"g": 0}) for i in range(s, s + 100)])
    tx_ok(inst, a, [vup(name, xs[7] * -1, "rare", {"rare": True})])
    q = xs[7]
    out = search(inst, a, name, q, k=3, filter={"rare": True})
    # one point passes: the index's candidates cannot give 3, the exact scan answers
    assert [p["id"] for p in out["data"]] == ["rare"] and out["index"] == "exact"
    assert abs(out["data"][0]["score"] + 1.0) <= 1e-5
    # an unselective search on the same collection stays on the index
    out = search(inst, a, name, q, k=3)
    assert out["index"] == "hnsw" and out["data"][0]["id"] == "s0007"
    # on the big collection, 64 x 4^3 candidates cover all its points: the index answers, complete
    out = search(inst, a, coll["name"], q, k=3, filter={"g": 99})
    assert out["data"] == [] and out["index"] == "hnsw"


def test_drop_and_recreate_with_other_dimensions(inst, admin):
    name = unique("hrec")
    create(inst, admin, name)
    u = user(inst)
    rng = np.random.default_rng(3)
    xs = rng.normal(size=(200, DIMS)).astype(np.float32)
    for s in range(0, 200, 100):
        tx_ok(inst, u, [vup(name, xs[i], f"x{i}") for i in range(s, s + 100)])
    assert search(inst, u, name, xs[0], k=1)["data"][0]["id"] == "x0"
    assert inst.request("DELETE", f"{ADMIN_PATH}/{name}", headers=admin.headers).status_code == 200
    resp = inst.post(ADMIN_PATH, json={"name": name, "kind": "vectors", "dimensions": 8, "metric": "l2",
                                       "index": "hnsw"}, headers=admin.headers)
    assert resp.status_code == 201, resp.text
    tx_ok(inst, u, [vup(name, [float(i)] * 8, f"y{i}") for i in range(20)])
    out = search(inst, u, name, [3.0] * 8, k=3)
    # l2 on the new 8-dimension points only (none of the old 32-dimension index)
    assert out["index"] == "hnsw" and [p["id"] for p in out["data"]] == ["y3", "y2", "y4"]
    assert out["data"][0]["score"] == 0.0


@pytest.mark.parametrize("body,field", [
    ({"index": "ivf"}, "index"),
    ({"index": 1}, "index"),
    ({"index": "exact", "hnsw": {"m": 8}}, "hnsw"),
    ({"index": "hnsw", "hnsw": []}, "hnsw"),
    ({"index": "hnsw", "hnsw": {"m": 3}}, "hnsw.m"),
    ({"index": "hnsw", "hnsw": {"m": 65}}, "hnsw.m"),
    ({"index": "hnsw", "hnsw": {"m": "16"}}, "hnsw.m"),
    ({"index": "hnsw", "hnsw": {"m": 16.5}}, "hnsw.m"),
    ({"index": "hnsw", "hnsw": {"ef_construction": 7}}, "hnsw.ef_construction"),
    ({"index": "hnsw", "hnsw": {"ef_construction": 1001}}, "hnsw.ef_construction"),
    ({"index": "hnsw", "hnsw": {"ef_search": 9}}, "hnsw.ef_search"),
    ({"index": "hnsw", "hnsw": {"ef_search": 2001}}, "hnsw.ef_search"),
    ({"index": "hnsw", "hnsw": {"ef_search": 1e30}}, "hnsw.ef_search"),
    ({"index": "hnsw", "hnsw": {"m'; DROP TABLE coredb.collections; --": 1}},
     "hnsw.m'; DROP TABLE coredb.collections; --"),
])
def test_bad_options_400_naming_field(inst, admin, body, field):
    full = {"name": unique("hbad"), "kind": "vectors", "dimensions": 4}
    full.update(body)
    err = assert_error(inst.post(ADMIN_PATH, json=full, headers=admin.headers), 400, "VALIDATION_FAILED")
    assert err["details"]["field"] == field, err
    assert scalar(inst, "SELECT count(*) FROM coredb.collections WHERE name = %s", (full["name"],)) == 0


def test_index_options_on_documents_and_hostile(inst, admin, coll):
    for extra, field in (({"index": "hnsw"}, "index"), ({"hnsw": {"m": 8}}, "hnsw")):
        body = {"name": unique("hdoc"), "kind": "documents"}
        body.update(extra)
        err = assert_error(inst.post(ADMIN_PATH, json=body, headers=admin.headers), 400, "VALIDATION_FAILED")
        assert err["details"]["field"] == field
    # non-admin 403, no token 401, malformed JSON 400
    u = user(inst)
    body = {"name": unique("hx"), "kind": "vectors", "dimensions": 4, "index": "hnsw"}
    assert_error(inst.post(ADMIN_PATH, json=body, headers=u.headers), 403)
    assert_error(inst.post(ADMIN_PATH, json=body), 401)
    assert_error(inst.post(ADMIN_PATH, data=b'{"name": "x", "index": "hnsw", ', headers={
        **admin.headers, "Content-Type": "application/json"}), 400)
    # search: exact must be a boolean
    body = {"database": "vectors", "collection": coll["name"], "query_type": "search",
            "vector": [0.5] * DIMS, "exact": "yes"}
    err = assert_error(query(inst, coll["a"], body), 400, "VALIDATION_FAILED")
    assert err["details"]["field"] == "exact"


def test_cli_create_hnsw(inst):
    import json
    from identity import cli_env
    from servers import run_cli
    env = cli_env(inst)
    name = unique("clihnsw")
    proc = run_cli(["collections", "create", name, "--kind", "vectors", "--dimensions", "8", "--index", "hnsw",
                    "--hnsw-m", "8", "--ef-construction", "64", "--ef-search", "40", "--json"], env)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["status"] == "success" and out["index"] == "hnsw", out
    assert out["hnsw"] == {"m": 8, "ef_construction": 64, "ef_search": 40}, out
    row = inst.pg.query(inst.db, "SELECT vector_index, hnsw_m, hnsw_ef_construction, hnsw_ef_search"
                                 " FROM coredb.collections WHERE name = %s", (name,))
    assert row == [("hnsw", 8, 64, 40)]
    for args, field in ((["--index", "hnsw", "--hnsw-m", "99"], "hnsw.m"),
                        (["--index", "hnsw", "--ef-search", "x"], "hnsw.ef_search"),
                        (["--hnsw-m", "8"], "hnsw"),
                        (["--index", "annoy"], "index")):
        proc = run_cli(["collections", "create", unique("clibad"), "--kind", "vectors", "--dimensions", "8"]
                       + args + ["--json"], env)
        assert proc.returncode != 0
        err = json.loads(proc.stdout)["error"]
        assert err["code"] == "VALIDATION_FAILED" and err["details"]["field"] == field, err
    proc = run_cli(["collections", "--help"], {})
    assert proc.returncode == 0 and "--ef-search N" in proc.stdout


def test_searches_during_a_build_take_the_exact_path(inst, admin):
    """One request builds the index; searches meanwhile do not wait for it: the exact path answers them."""
    import threading
    name = unique("hbusy")
    create(inst, admin, name, dimensions=64, hnsw={"ef_construction": 400, "m": 16})
    u = user(inst)
    rng = np.random.default_rng(11)
    n = 12000  # a build of a second or two (much longer under ASan)
    xs = rng.normal(size=(n, 64)).astype(np.float32)
    tx_ok(inst, u, [vup(name, xs[0], "x0")])
    for s in range(1, n, 2000):
        rows = ",".join(f"('x{i}', '{u.id}', '{{{','.join(map(str, xs[i].tolist()))}}}')"
                        for i in range(s, min(n, s + 2000)))
        inst.pg.query(inst.db, f"INSERT INTO coredb.coll_{name} (id, user_id, vector) VALUES {rows}")
    q = xs[5]
    first = {}

    def slow_search():
        resp = query(inst, u, {"database": "vectors", "collection": name, "query_type": "search",
                               "vector": [float(v) for v in q], "k": 3}, timeout=600)
        assert resp.status_code == 200, resp.text
        return resp.json()

    def build():
        try:
            first["out"] = slow_search()
        except AssertionError as e:  # reported below, from the test's thread
            first["error"] = str(e)
    t = threading.Thread(target=build)
    t.start()
    during = []
    while t.is_alive():
        during.append(slow_search())
    t.join()
    assert "error" not in first, first
    answers = [first["out"]] + during
    # whichever request came first built the index (in the request); every other one was answered
    # by the exact path meanwhile, none waited
    built = [o for o in answers if "index_build_ms" in o]
    assert len(built) == 1 and built[0]["index"] == "hnsw", [(o["index"], "index_build_ms" in o) for o in answers]
    assert sum(o["index"] == "exact" for o in answers) >= 1, [(o["index"], o["execution_time_ms"]) for o in answers]
    assert all(o["data"][0]["id"] == "x5" for o in answers)
    out = search(inst, u, name, q, k=3)
    assert out["index"] == "hnsw" and "index_build_ms" not in out and out["data"][0]["id"] == "x5"


def test_with_vector_and_empty_collection(inst, admin, coll):
    xs, a, name = coll["xs"], coll["a"], coll["name"]
    out = search(inst, a, name, xs[100], k=3, with_vector=True, with_payload=True)
    assert out["index"] == "hnsw" and out["data"][0]["id"] == "h00100"
    # the stored vector itself (not the index's normalized copy), as float32
    assert np.array_equal(np.array(out["data"][0]["vector"], dtype=np.float32), xs[100])
    assert out["data"][0]["payload"] == {"g": 0}
    empty = unique("hempty")
    create(inst, admin, empty)
    out = search(inst, a, empty, xs[0], k=5)
    assert out["data"] == [] and out["index"] == "hnsw"
