"""What the document and vector fuzzers (fuzz/doc_query.c, fuzz/vec_search.c)
found, reproduced through the real binary with PostgreSQL and Redis.

1. A JSON path segment spelled NULL (any case) was bound as an unquoted
   text[] element, which PostgreSQL reads as SQL NULL: `doc #> '{null}'` is
   NULL, so a document key "null" could not be filtered on, selected,
   ordered by or used as a partition key (the filter silently matched
   nothing). Fixed in src/store/jsonpath.c: such a segment is quoted.
2. The vector search's real[] text parser took NaN and Infinity (which a
   real[] column holds when written by SQL, not through coredb) into the
   in-memory copy; a search over such a row failed with a 500 (the score
   cannot be JSON). Fixed in src/data/vec_query.c: a vector that is not
   all finite float32 is left out of the ranking like an unreadable one.
"""
import urllib.parse

import pytest

from datahelp import query, query_ok, scalar, tx_ok, user
from identity import unique

REDIS_DB = 3

ADMIN_PATH = "/api/v1/admin/collections"


def create(inst, admin, body):
    resp = inst.post(ADMIN_PATH, json=body, headers=admin.headers)
    assert resp.status_code == 201, resp.text


def drop(inst, admin, name):
    resp = inst.request("DELETE", f"{ADMIN_PATH}/{urllib.parse.quote(name, safe='')}", headers=admin.headers)
    assert resp.status_code == 200, resp.text


def dins(coll, document):
    return {"database": "documents", "operation": "insert", "collection": coll, "document": document}


def ids(out):
    return [r["id"] for r in out["data"]]


@pytest.mark.parametrize("key", ["null", "NULL", "Null"])
def test_a_key_spelled_null_is_a_key(inst, admin, key):
    coll = unique("nullkey")
    create(inst, admin, {"name": coll, "kind": "documents", "partition_key": f"meta.{key}"})
    owner = user(inst)
    tx_ok(inst, owner, [dins(coll, {"id": "a", key: "x", "meta": {key: "p1"}, "n": 2}),
                        dins(coll, {"id": "b", key: "y", "meta": {key: "p2"}, "n": 1}),
                        dins(coll, {"id": "c", "other": "x", "n": 3})])
    body = {"database": "documents", "collection": coll}
    # eq (containment + equality), neq, in, exists, gt: the key is read, not a NULL path
    assert ids(query_ok(inst, owner, dict(body, filters={key: "x"}))) == ["a"]
    assert ids(query_ok(inst, owner, dict(body, filters={key: {"neq": "x"}}))) == ["b", "c"]
    assert ids(query_ok(inst, owner, dict(body, filters={key: {"in": ["y", "z"]}}))) == ["b"]
    assert ids(query_ok(inst, owner, dict(body, filters={key: {"exists": True}}))) == ["a", "b"]
    assert ids(query_ok(inst, owner, dict(body, filters={f"meta.{key}": {"gt": "p1"}}))) == ["b"]
    # projection and ordering by such a path
    out = query_ok(inst, owner, dict(body, select=[key], order_by={"path": key, "direction": "desc"},
                                     filters={"n": {"lte": 2}}))
    assert [(r["id"], r[key]) for r in out["data"]] == [("b", "y"), ("a", "x")], out
    # the partition key column generated from meta.<key>
    rows = inst.pg.query(inst.db, f"SELECT id, partition_key FROM coredb.coll_{coll} ORDER BY id")
    assert rows == [("a", "p1"), ("b", "p2"), ("c", None)], rows
    drop(inst, admin, coll)


@pytest.mark.parametrize("bad", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_stored_vectors_do_not_break_search(inst, admin, bad):
    coll = unique("nanvec")
    create(inst, admin, {"name": coll, "kind": "vectors", "dimensions": 3, "metric": "l2"})
    owner = user(inst)
    ops = [{"database": "vectors", "operation": "upsert", "collection": coll, "id": pid, "vector": v}
           for pid, v in (("p1", [1, 0, 0]), ("p2", [0, 1, 0]))]
    tx_ok(inst, owner, ops)
    # a row written by SQL, not through coredb: real[] takes NaN and infinities
    inst.pg.query(inst.db, f"INSERT INTO coredb.coll_{coll} (id, user_id, vector) VALUES"
                           f" ('p3', %s, ARRAY[1, '{bad}', 0]::real[])", (owner.id,))
    assert scalar(inst, f"SELECT count(*) FROM coredb.coll_{coll}") == 3
    for with_vector in (False, True):
        resp = query(inst, owner, {"database": "vectors", "collection": coll, "query_type": "search",
                                   "vector": [1, 0, 0], "k": 10, "with_vector": with_vector})
        assert resp.status_code == 200, resp.text
        out = resp.json()
        # the unusable row is left out; the others are ranked as before
        assert [p["id"] for p in out["data"]] == ["p1", "p2"], out
        assert out["data"][0]["score"] == 0.0, out
    drop(inst, admin, coll)


BIG = 3.0e38   # finite in float32 (FLT_MAX is 3.4028235e38): accepted, but sums of two squares overflow


@pytest.mark.parametrize("metric", ["cosine", "l2", "dot"])
def test_vectors_near_float32_max_score_finitely(inst, admin, metric):
    """3. Found by fuzz/vec_search.c: the float32 kernels overflowed on vectors
    with components near FLT_MAX (which the API accepts), and an infinite or
    NaN score failed the whole search with a 500. Fixed in vec_query.c: such a
    score is computed again in double and clamped to float32."""
    coll = unique("bigvec")
    create(inst, admin, {"name": coll, "kind": "vectors", "dimensions": 3, "metric": metric})
    owner = user(inst)
    pts = {"big": [BIG, BIG, 0], "neg": [-BIG, -BIG, 0], "unit": [0, 0, 1]}
    tx_ok(inst, owner, [{"database": "vectors", "operation": "upsert", "collection": coll, "id": pid,
                         "vector": v} for pid, v in pts.items()])
    top = 3.4028234663852886e38   # FLT_MAX: a score past it is clamped there
    expected = {
        # query -> {id: score}, the answer's order being by score then id
        "cosine": {(BIG, BIG, 0): {"big": 1.0, "unit": 0.0, "neg": -1.0},
                   (1, 1, 0): {"big": 1.0, "unit": 0.0, "neg": -1.0}},
        "l2": {(BIG, BIG, 0): {"big": 0.0, "neg": -top, "unit": -top},
               (1, 1, 0): {"unit": -(3 ** 0.5), "big": -top, "neg": -top}},
        "dot": {(BIG, BIG, 0): {"big": top, "unit": 0.0, "neg": -top},
                (1, 1, 0): {"big": top, "unit": 0.0, "neg": -top}},
    }[metric]
    for q, want in expected.items():
        resp = query(inst, owner, {"database": "vectors", "collection": coll, "query_type": "search",
                                   "vector": list(q), "k": 3})
        assert resp.status_code == 200, resp.text
        data = resp.json()["data"]
        assert [p["id"] for p in data] == list(want), data
        for p in data:
            assert p["score"] == pytest.approx(want[p["id"]], rel=1e-6, abs=1e-6), data
    drop(inst, admin, coll)
