"""The vector store (issue 15, second half), through the real binary.

Points are upserted and deleted with /data/transaction (database
"vectors") and checked in PostgreSQL (coredb.coll_<name>: real[] vector,
payload, owner); /data/query search results are compared with an exact
brute-force reference computed here with numpy for each metric (cosine
similarity, negative L2 distance, dot product), with and without payload
filters and min_score. Row-level security between users, one atomic
transaction mixing a vector, a table row and a Redis key, the /health
check, and hostile input (wrong dimension, non-numbers, out-of-float32
numbers, k out of range, injection in names and paths, no token)."""
import time

import numpy as np
import pytest

from datahelp import assert_error, pg_insert, query, rset, scalar, tx_fail, tx_ok, user, wait_for
from identity import unique

REDIS_DB = 4

ADMIN_PATH = "/api/v1/admin/collections"
DIMS = 16
N = 300


def create(inst, admin, name, dims=DIMS, metric="cosine"):
    resp = inst.post(ADMIN_PATH, json={"name": name, "kind": "vectors", "dimensions": dims, "metric": metric},
                     headers=admin.headers)
    assert resp.status_code == 201, resp.text


def vup(coll, vec, pid=None, payload=None):
    op = {"database": "vectors", "operation": "upsert", "collection": coll, "vector": vec}
    if pid is not None:
        op["id"] = pid
    if payload is not None:
        op["payload"] = payload
    return op


def vdel(coll, pid):
    return {"database": "vectors", "operation": "delete", "collection": coll, "id": pid}


def search(inst, acct, coll, vec, **kw):
    body = {"database": "vectors", "collection": coll, "query_type": "search", "vector": vec}
    body.update(kw)
    resp = query(inst, acct, body)
    assert resp.status_code == 200, f"{resp.status_code} {resp.text[:800]}"
    out = resp.json()
    assert out["count"] == len(out["data"]) and out["cached"] is False, out
    assert out["index"] == "exact", out  # these collections have no hnsw index
    return out


def stored(inst, coll, pid):
    rows = inst.pg.query(inst.db, f"SELECT vector, payload, user_id::text FROM coredb.coll_{coll} WHERE id = %s",
                         (pid,))
    return rows[0] if rows else None


def reference(metric, xs, q):
    """Exact scores, higher = closer, as coredb/vectors.h defines them (float32)."""
    xs = xs.astype(np.float32)
    q = q.astype(np.float32)
    if metric == "dot":
        return xs @ q
    if metric == "l2":
        return -np.sqrt(((xs - q) ** 2).sum(axis=1))
    norms = np.linalg.norm(xs, axis=1) * np.linalg.norm(q)
    return np.where(norms > 0, (xs @ q) / np.where(norms > 0, norms, 1), 0)


def top_k(ids, scores, k, mask=None, min_score=None):
    order = [i for i in np.argsort(-scores, kind="stable")
             if (mask is None or mask[i]) and (min_score is None or scores[i] >= min_score)]
    return [(ids[i], float(scores[i])) for i in order[:k]]


def assert_same(out, expected, tol=1e-4):
    got = [(p["id"], p["score"]) for p in out["data"]]
    assert [g[0] for g in got] == [e[0] for e in expected], (got[:5], expected[:5])
    for (_, gs), (_, es) in zip(got, expected):
        assert abs(gs - es) <= tol * max(1.0, abs(es)), (gs, es)


@pytest.fixture(scope="module")
def points(inst, admin):
    """One collection per metric, N random points owned by one user; payload {"g": i % 3, "n": i}."""
    rng = np.random.default_rng(15)
    xs = rng.normal(size=(N, DIMS)).astype(np.float32)
    ids = [f"p{i:04d}" for i in range(N)]
    owner = user(inst)
    colls = {}
    for metric in ("cosine", "l2", "dot"):
        name = unique(f"v{metric}")
        create(inst, admin, name, metric=metric)
        for s in range(0, N, 100):
            tx_ok(inst, owner, [vup(name, [float(v) for v in xs[i]], ids[i], {"g": i % 3, "n": i})
                                for i in range(s, min(N, s + 100))])
        colls[metric] = name
    return colls, owner, xs, ids, rng


def test_upsert_stores_vector_payload_and_owner(inst, points):
    colls, owner, xs, ids, _ = points
    vec, payload, uid = stored(inst, colls["l2"], "p0007")
    assert np.allclose(np.array(vec, dtype=np.float32), xs[7]) and payload == {"g": 1, "n": 7}
    assert uid == owner.id
    assert scalar(inst, f"SELECT count(*) FROM coredb.coll_{colls['l2']}") == N


def test_upsert_overwrites_by_id_and_delete_removes(inst, admin):
    coll = unique("vover")
    create(inst, admin, coll, dims=3, metric="l2")
    u = user(inst)
    out = tx_ok(inst, u, [vup(coll, [1, 2, 3], "a", {"v": 1})])
    etag = out["results"][0]["data"]["rows"][0]["etag"]
    out = tx_ok(inst, u, [vup(coll, [4, 5, 6.5], "a", {"v": 2})])
    row = out["results"][0]["data"]["rows"][0]
    assert row["id"] == "a" and row["payload"] == {"v": 2} and row["etag"] != etag
    vec, payload, _ = stored(inst, coll, "a")
    assert vec == [4.0, 5.0, 6.5] and payload == {"v": 2}
    assert scalar(inst, f"SELECT count(*) FROM coredb.coll_{coll}") == 1
    # without an id: a new uuid
    out = tx_ok(inst, u, [vup(coll, [0, 0, 1])])
    new_id = out["results"][0]["data"]["rows"][0]["id"]
    assert len(new_id) == 36 and stored(inst, coll, new_id)[1] == {}
    tx_ok(inst, u, [vdel(coll, "a")])
    assert stored(inst, coll, "a") is None
    tx_fail(inst, u, [vdel(coll, "a")], 404, "NOT_FOUND", operation=1)


@pytest.mark.parametrize("metric", ["cosine", "l2", "dot"])
def test_search_equals_numpy_reference(inst, points, metric):
    colls, owner, xs, ids, rng = points
    for _ in range(3):
        q = rng.normal(size=DIMS).astype(np.float32)
        scores = reference(metric, xs, q)
        for k in (1, 10, 57):
            out = search(inst, owner, colls[metric], [float(v) for v in q], k=k)
            assert_same(out, top_k(ids, scores, k))
    # default k is 10, payload by default, vector on request
    out = search(inst, owner, colls[metric], [float(v) for v in q], with_vector=True)
    assert len(out["data"]) == 10
    first = out["data"][0]
    i = ids.index(first["id"])
    assert first["payload"] == {"g": i % 3, "n": i}
    assert np.allclose(np.array(first["vector"], dtype=np.float32), xs[i])
    out = search(inst, owner, colls[metric], [float(v) for v in q], k=3, with_payload=False)
    assert all(set(p) == {"id", "score"} for p in out["data"]), out
    # k larger than the collection: every point, ranked
    out = search(inst, owner, colls[metric], [float(v) for v in q], k=1000)
    assert_same(out, top_k(ids, scores, 1000))
    assert len(out["data"]) == N


@pytest.mark.parametrize("metric", ["cosine", "l2", "dot"])
def test_search_with_filters_and_min_score(inst, points, metric):
    colls, owner, xs, ids, rng = points
    q = rng.normal(size=DIMS).astype(np.float32)
    scores = reference(metric, xs, q)
    g = np.array([i % 3 for i in range(N)])
    n = np.arange(N)
    vec = [float(v) for v in q]
    # the filter applies before ranking: k results of the filtered set, not a filtered top k
    out = search(inst, owner, colls[metric], vec, k=20, filter={"g": 2})
    assert_same(out, top_k(ids, scores, 20, mask=g == 2))
    assert all(p["payload"]["g"] == 2 for p in out["data"])
    out = search(inst, owner, colls[metric], vec, k=15, filter={"n": {"gte": 100, "lt": 150}, "g": {"neq": 0}})
    assert_same(out, top_k(ids, scores, 15, mask=(n >= 100) & (n < 150) & (g != 0)))
    threshold = float(np.sort(scores)[-25])
    out = search(inst, owner, colls[metric], vec, k=100, min_score=threshold)
    expected = top_k(ids, scores, 100, min_score=threshold)
    assert 20 <= len(expected) <= 30
    assert_same(out, expected)
    assert all(p["score"] >= threshold - 1e-5 for p in out["data"])
    out = search(inst, owner, colls[metric], vec, k=100, min_score=threshold, filter={"g": {"in": [0, 1]}})
    assert_same(out, top_k(ids, scores, 100, mask=g != 2, min_score=threshold))
    # nothing matches
    assert search(inst, owner, colls[metric], vec, filter={"g": 9})["data"] == []


def test_other_users_vectors_are_invisible_and_unwritable(inst, points):
    colls, owner, xs, ids, _ = points
    coll = colls["dot"]
    other = user(inst)
    assert search(inst, other, coll, [1.0] * DIMS, k=1000)["data"] == []
    tx_fail(inst, other, [vdel(coll, "p0001")], 404, "NOT_FOUND", operation=1)
    tx_fail(inst, other, [vup(coll, [0.0] * DIMS, "p0001", {"stolen": True})], 403, "FORBIDDEN", operation=1)
    vec, payload, uid = stored(inst, coll, "p0001")
    assert uid == owner.id and payload == {"g": 1, "n": 1}
    assert np.allclose(np.array(vec, dtype=np.float32), xs[1])
    # the other user's own point is theirs alone
    tx_ok(inst, other, [vup(coll, [100.0] * DIMS, "mine")])
    assert [p["id"] for p in search(inst, other, coll, [1.0] * DIMS, k=1000)["data"]] == ["mine"]
    assert "mine" not in [p["id"] for p in search(inst, owner, coll, [1.0] * DIMS, k=1000)["data"]]
    tx_ok(inst, other, [vdel(coll, "mine")])


def test_admin_sees_every_owners_points(inst, admin, points):
    colls, owner, xs, ids, _ = points
    out = search(inst, admin, colls["l2"], [0.0] * DIMS, k=1000)
    assert len(out["data"]) == N


def test_atomic_transaction_with_vector_table_row_and_redis(inst, admin, rds):
    coll = unique("vatomic")
    create(inst, admin, coll, dims=2, metric="dot")
    u = user(inst)
    key, title = unique("k"), unique("t")
    tx_ok(inst, u, [pg_insert("projects", {"title": title, "user_id": u.id}), vup(coll, [1, 0], "one"),
                    rset(key, "set")])
    assert stored(inst, coll, "one") and wait_for(lambda: rds.get(f"app:user:{u.id}:{key}") == "set")
    assert scalar(inst, "SELECT count(*) FROM projects WHERE title = %s", (title,)) == 1
    # a bad table op after vector writes rolls everything back
    title2, key2 = unique("t"), unique("k")
    tx_fail(inst, u, [vup(coll, [2, 2], "two"), pg_insert("projects", {"title": title2, "user_id": u.id}),
                      rset(key2, "never"), vdel(coll, "one"), pg_insert("projects", {"user_id": u.id})],
            400, "VALIDATION_FAILED", operation=5)
    # a failing vector op (delete of a missing id) rolls back the table row
    tx_fail(inst, u, [pg_insert("projects", {"title": title2, "user_id": u.id}), vup(coll, [3, 3], "three"),
                      vdel(coll, "nope")], 404, "NOT_FOUND", operation=3)
    assert stored(inst, coll, "two") is None and stored(inst, coll, "three") is None
    assert stored(inst, coll, "one") is not None
    assert scalar(inst, "SELECT count(*) FROM projects WHERE title = %s", (title2,)) == 0
    time.sleep(1.2)       # longer than one background outbox pass
    assert rds.get(f"app:user:{u.id}:{key2}") is None


@pytest.mark.parametrize("vec,why", [
    ([1, 2], "dimension"),
    ([1, 2, 3, 4], "dimension"),
    ([1, "2", 3], "string"),
    ([1, None, 3], "null"),
    ([1, [2], 3], "nested"),
    ([1, True, 3], "bool"),
    ([1, 1e39, 3], "beyond float32"),
    ("1,2,3", "not an array"),
    ({"0": 1}, "object"),
    ([], "empty"),
])
def test_bad_vectors_name_the_field(inst, admin, vec, why):
    coll = unique("vbad")
    create(inst, admin, coll, dims=3, metric="l2")
    u = user(inst)
    err = tx_fail(inst, u, [vup(coll, vec, "x")], 400, "VALIDATION_FAILED", operation=1)
    assert err["details"]["field"] == "vector", (why, err)
    assert scalar(inst, f"SELECT count(*) FROM coredb.coll_{coll}") == 0
    resp = query(inst, u, {"database": "vectors", "collection": coll, "query_type": "search", "vector": vec})
    assert assert_error(resp, 400, "VALIDATION_FAILED")["details"]["field"] == "vector", why


def test_nan_and_infinity_literals_are_refused(inst, admin):
    coll = unique("vnan")
    create(inst, admin, coll, dims=2, metric="dot")
    u = user(inst)
    for lit in ("NaN", "Infinity", "-Infinity", "1e400"):
        body = ('{"operations": [{"database": "vectors", "operation": "upsert", "collection": "%s",'
                ' "id": "n", "vector": [1, %s]}]}' % (coll, lit))
        resp = inst.post("/api/v1/data/transaction", data=body,
                         headers={**u.headers, "Content-Type": "application/json"})
        assert resp.status_code == 400, (lit, resp.text)
        assert resp.json()["error"]["code"] in ("VALIDATION_FAILED", "INVALID_JSON", "BAD_REQUEST"), resp.text
    assert scalar(inst, f"SELECT count(*) FROM coredb.coll_{coll}") == 0


@pytest.mark.parametrize("extra,field", [
    ({"k": 0}, "k"), ({"k": 1001}, "k"), ({"k": "10"}, "k"), ({"k": 2.5}, "k"), ({"k": -1}, "k"),
    ({"min_score": "high"}, "min_score"), ({"with_payload": "yes"}, "with_payload"),
    ({"with_vector": 1}, "with_vector"), ({"query_type": "select"}, "query_type"),
    ({"query_type": None}, "query_type"), ({"limit": 3}, "limit"),
])
def test_bad_search_bodies_name_the_field(inst, points, extra, field):
    colls, owner, *_ = points
    body = {"database": "vectors", "collection": colls["l2"], "query_type": "search", "vector": [0.0] * DIMS}
    body.update(extra)
    err = assert_error(query(inst, owner, body), 400, "VALIDATION_FAILED")
    assert err["details"]["field"] == field, err


def test_cosine_zero_query_and_bad_filters(inst, points):
    colls, owner, *_ = points
    body = {"database": "vectors", "collection": colls["cosine"], "query_type": "search", "vector": [0.0] * DIMS}
    assert assert_error(query(inst, owner, body), 400, "VALIDATION_FAILED")["details"]["field"] == "vector"
    for bad in ({"a'; DROP TABLE coredb.collections; --": 1}, {"g": {"regex": ".*"}}, {"g": {}}, [1, 2],
                {"g": {"in": []}}, {"a..b": 1}):
        body = {"database": "vectors", "collection": colls["l2"], "query_type": "search",
                "vector": [0.0] * DIMS, "filter": bad}
        err = assert_error(query(inst, owner, body), 400)
        assert err["code"] in ("INVALID_FILTER", "VALIDATION_FAILED"), err
    assert scalar(inst, "SELECT count(*) FROM coredb.collections") >= 3


@pytest.mark.parametrize("name", ["nope", "x\"; DROP TABLE coredb.collections; --", "A", "../etc", "",
                                  "a" * 300, 7, None])
def test_hostile_collection_names(inst, points, name):
    colls, owner, *_ = points
    body = {"database": "vectors", "collection": name, "query_type": "search", "vector": [0.0] * DIMS}
    err = assert_error(query(inst, owner, body), 404 if isinstance(name, str) and name else 400)
    assert err["code"] in ("UNKNOWN_TABLE", "VALIDATION_FAILED"), err
    err = tx_fail(inst, owner, [vup(name, [0.0] * DIMS, "x")], err_status(name))
    assert err["details"].get("operation") == 1, err
    assert scalar(inst, "SELECT count(*) FROM coredb.collections") >= 3


def err_status(name):
    return 404 if isinstance(name, str) and name else 400


def test_document_collection_is_not_a_vector_collection(inst, admin):
    name = unique("vdocs")
    resp = inst.post(ADMIN_PATH, json={"name": name, "kind": "documents"}, headers=admin.headers)
    assert resp.status_code == 201
    u = user(inst)
    body = {"database": "vectors", "collection": name, "query_type": "search", "vector": [1.0]}
    assert assert_error(query(inst, u, body), 404, "UNKNOWN_TABLE")["details"]["collection"] == name
    tx_fail(inst, u, [vup(name, [1.0], "x")], 404, "UNKNOWN_TABLE", operation=1)


def test_hostile_ops_and_tokens(inst, points):
    colls, owner, *_ = points
    coll = colls["l2"]
    for op, field in ((dict(vup(coll, [0.0] * DIMS, "x"), operation="insert"), "operation"),
                      (dict(vup(coll, [0.0] * DIMS, "x"), extra=1), "extra"),
                      (dict(vdel(coll, "x"), vector=[0.0] * DIMS), "vector"),
                      ({"database": "vectors", "operation": "delete", "collection": coll}, "id"),
                      (vup(coll, [0.0] * DIMS, "x" * 300), "id"),
                      (vup(coll, [0.0] * DIMS, 5), "id"),
                      (vup(coll, [0.0] * DIMS, "x", payload=[1, 2]), "payload"),
                      (vup(coll, [0.0] * DIMS, "x", payload="p"), "payload")):
        err = tx_fail(inst, owner, [op], 400, "VALIDATION_FAILED", operation=1)
        assert err["details"]["field"] == field, (op, err)
    assert stored(inst, coll, "x") is None
    body = {"database": "vectors", "collection": coll, "query_type": "search", "vector": [0.0] * DIMS}
    assert_error(query(inst, None, body), 401)
    assert_error(query(inst, None, body, headers={"Authorization": "Bearer forged.token.value"}), 401)
    resp = inst.post("/api/v1/data/query", data='{"database": "vectors", "vector": [1,',
                     headers={**owner.headers, "Content-Type": "application/json"})
    assert resp.status_code == 400, resp.text
    big = {"database": "vectors", "collection": coll, "query_type": "search", "vector": [0.5] * 5000}
    assert assert_error(query(inst, owner, big), 400, "VALIDATION_FAILED")["details"]["field"] == "vector"


def test_health_shows_vectors_backed_by_postgresql(inst, points):
    resp = inst.get("/health")
    body = resp.json()
    checks = body.get("checks") or body.get("data", {}).get("checks")
    vec = checks["vectors"]
    assert vec["status"] == "UP" and vec["backend"] == "postgresql", vec
    assert vec["collections"] == scalar(inst, "SELECT count(*) FROM coredb.collections WHERE kind = 'vectors'")


def test_in_memory_copy_follows_every_write(inst, admin):
    """Searches reuse coredb's in-memory copy of the vectors only while each row's etag is unchanged:
    an overwrite, a delete, a new point and a write straight into PostgreSQL show at once."""
    coll = unique("vfresh")
    create(inst, admin, coll, dims=2, metric="l2")
    u = user(inst)
    odd = ['q"uote', "back\\slash", "com,ma", "{brace}", "späce é", "NULL"]
    tx_ok(inst, u, [vup(coll, [float(i), 0.0], pid) for i, pid in enumerate(odd)])
    got = search(inst, u, coll, [0.0, 0.0], k=10)
    assert [p["id"] for p in got["data"]] == odd
    assert search(inst, u, coll, [0.0, 0.0], k=10)["data"] == got["data"]      # from the copy now
    tx_ok(inst, u, [vup(coll, [-0.5, 0.0], "NULL")])
    assert [p["id"] for p in search(inst, u, coll, [-1.0, 0.0], k=1)["data"]] == ["NULL"]
    assert search(inst, u, coll, [-1.0, 0.0], k=1)["data"][0]["score"] == pytest.approx(-0.5)
    tx_ok(inst, u, [vdel(coll, "NULL"), vup(coll, [-9.0, 0.0], "new")])
    ids = [p["id"] for p in search(inst, u, coll, [-9.0, 0.0], k=10)["data"]]
    assert ids[0] == "new" and "NULL" not in ids and len(ids) == 6
    inst.pg.query(inst.db, f"UPDATE coredb.coll_{coll} SET vector = '{{100,100}}', etag = md5(random()::text)"
                           " WHERE id = 'new'")
    out = search(inst, u, coll, [100.0, 100.0], k=1, with_vector=True)["data"][0]
    assert out["id"] == "new" and out["vector"] == [100.0, 100.0] and out["score"] == 0.0
    # another user meanwhile: the copy is shared, what is visible is not
    other = user(inst)
    assert search(inst, other, coll, [0.0, 0.0], k=10)["data"] == []


def test_concurrent_searches_and_writes(inst, admin):
    """Searches in several threads while points are overwritten: every answer is 200 and ranked,
    and once the writes stop the answer equals the numpy reference (the shared copy holds up)."""
    import threading
    coll = unique("vconc")
    create(inst, admin, coll, dims=8, metric="dot")
    u = user(inst)
    rng = np.random.default_rng(8)
    xs = rng.normal(size=(200, 8)).astype(np.float32)
    ids = [f"c{i:03d}" for i in range(200)]
    tx_ok(inst, u, [vup(coll, xs[i].tolist(), ids[i]) for i in range(100)])
    tx_ok(inst, u, [vup(coll, xs[i].tolist(), ids[i]) for i in range(100, 200)])
    errors, stop = [], time.time() + 2.0

    def reader():
        while time.time() < stop:
            r = query(inst, u, {"database": "vectors", "collection": coll, "query_type": "search",
                                "vector": [1.0] * 8, "k": 5})
            if r.status_code != 200:
                errors.append(r.text)
                continue
            scores = [p["score"] for p in r.json()["data"]]
            if scores != sorted(scores, reverse=True) or len(scores) != 5:
                errors.append(scores)

    def writer():
        i = 0
        while time.time() < stop:
            j = i % 200
            xs[j] = rng.normal(size=8).astype(np.float32)
            tx_ok(inst, u, [vup(coll, xs[j].tolist(), ids[j])])
            i += 1

    threads = [threading.Thread(target=reader) for _ in range(3)] + [threading.Thread(target=writer)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    q = np.ones(8, dtype=np.float32)
    assert_same(search(inst, u, coll, q.tolist(), k=20), top_k(ids, reference("dot", xs, q), 20))
