"""Collections and the document store (issue 15, first half).

The registry: POST/GET/DELETE /api/v1/admin/collections create, list and
drop a collection of kind "documents" or "vectors": one row of
coredb.collections and one table coredb.coll_<name> with the layout
include/coredb/collections.h documents, checked here in PostgreSQL's
catalogs (columns, CHECK on the vector length, generated partition key,
GIN index, row-level security policies), audited, admin only, and hostile
names and bodies refused with a 400 that changes nothing.

The document store through the data API (database "documents", alias
"cosmosdb"): CRUD, each path filter operator, projection and ordering,
ETag conditions (409 PRECONDITION_FAILED), JSON merge patch, one atomic
transaction with a table row, documents and a Redis key, row-level
security between users, the query cache's invalidation, and hostile
paths, ids and bodies. Effects are checked in PostgreSQL and Redis."""
import json
import urllib.parse

import psycopg2
import pytest

from datahelp import (assert_error, pg_insert, query, query_ok, rset, scalar, tx, tx_fail, tx_ok, user,
                      wait_for)
from identity import unique

# the module fixtures inst, admin and rds (conftest.py) use this Redis database
REDIS_DB = 7

ADMIN_PATH = "/api/v1/admin/collections"


def create(inst, admin, body, status=201):
    resp = inst.post(ADMIN_PATH, json=body, headers=admin.headers)
    assert resp.status_code == status, resp.text
    return resp.json()


def drop(inst, admin, name, status=200):
    resp = inst.request("DELETE", f"{ADMIN_PATH}/{urllib.parse.quote(name, safe='')}", headers=admin.headers)
    assert resp.status_code == status, resp.text
    return resp.json()


def columns(inst, table):
    rows = inst.pg.query(inst.db, "SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attgenerated"
                                  " FROM pg_attribute a WHERE a.attrelid = %s::regclass AND a.attnum > 0"
                                  " AND NOT a.attisdropped ORDER BY a.attnum", (table,))
    return {r[0]: (r[1], r[2]) for r in rows}


def policies(inst, table):
    rows = inst.pg.query(inst.db, "SELECT polname, polpermissive FROM pg_policy"
                                  " WHERE polrelid = %s::regclass ORDER BY polname", (table,))
    return [(r[0], r[1]) for r in rows]


def registry(inst):
    return inst.pg.query(inst.db, "SELECT name, kind, table_name, partition_key, dimensions, metric"
                                  " FROM coredb.collections ORDER BY name")


def table_exists(inst, table):
    return scalar(inst, "SELECT to_regclass(%s) IS NOT NULL", (table,))


def audit_actions(inst, target):
    rows = inst.pg.query(inst.db, "SELECT action FROM coredb.audit_log WHERE target = %s ORDER BY id",
                         (target,))
    return [r[0] for r in rows]


# ---- the registry ----

def test_create_documents_collection_layout_and_rls(inst, admin):
    name = unique("orders")
    out = create(inst, admin, {"name": name, "kind": "documents", "partition_key": "customer.id"})
    data = out
    assert data["status"] == "success" and data["error"] is None, out
    assert data["name"] == name and data["kind"] == "documents", out
    assert data["table"] == f"coll_{name}" and data["schema"] == "coredb", out
    assert data["partition_key"] == "customer.id" and data["dimensions"] is None, out
    table = f"coredb.coll_{name}"
    cols = columns(inst, table)
    assert list(cols) == ["id", "user_id", "partition_key", "doc", "etag", "created_at", "updated_at"], cols
    assert cols["doc"][0] == "jsonb" and cols["user_id"][0] == "uuid", cols
    assert cols["partition_key"][1] == "s", cols          # generated, stored
    assert scalar(inst, "SELECT relrowsecurity FROM pg_class WHERE oid = %s::regclass", (table,))
    assert policies(inst, table) == [("coredb_admin", True), ("coredb_own_user_id", False),
                                     ("coredb_rows", True)]
    assert scalar(inst, "SELECT count(*) FROM pg_indexes WHERE schemaname = 'coredb' AND tablename = %s"
                        " AND indexdef LIKE '%%USING gin%%'", (f"coll_{name}",)) == 1
    for role in ("coredb_admin", "coredb_user", "coredb_premium"):
        assert scalar(inst, "SELECT has_table_privilege(%s, %s, 'SELECT, INSERT, UPDATE, DELETE')",
                      (role, table)), role
    # the partition key is computed by PostgreSQL from the document
    inst.pg.query(inst.db, f"INSERT INTO {table} (id, user_id, doc) VALUES ('a', %s, %s)",
                  (admin.id, json.dumps({"customer": {"id": "c-7"}})))
    assert scalar(inst, f"SELECT partition_key FROM {table} WHERE id = 'a'") == "c-7"
    assert (name, "documents", f"coll_{name}", "customer.id", None, None) in registry(inst)
    assert audit_actions(inst, name) == ["collection.create"]


def test_create_vectors_collection_records_dimensions_and_checks_length(inst, admin):
    name = unique("emb")
    data = create(inst, admin, {"name": name, "kind": "vectors", "dimensions": 3, "metric": "l2"})
    assert data["dimensions"] == 3 and data["metric"] == "l2" and data["kind"] == "vectors", data
    table = f"coredb.coll_{name}"
    cols = columns(inst, table)
    assert list(cols) == ["id", "user_id", "vector", "payload", "etag", "created_at", "updated_at"], cols
    assert cols["vector"][0] == "real[]", cols
    inst.pg.query(inst.db, f"INSERT INTO {table} (id, user_id, vector) VALUES ('ok', %s, '{{1,2,3}}')",
                  (admin.id,))
    for bad in ("{1,2}", "{1,2,3,4}", "{{1,2,3},{4,5,6}}"):
        with pytest.raises(psycopg2.errors.CheckViolation):
            inst.pg.query(inst.db, f"INSERT INTO {table} (id, user_id, vector) VALUES ('x', %s, %s)",
                          (admin.id, bad))
    # the default metric is cosine
    other = unique("emb")
    assert create(inst, admin, {"name": other, "kind": "vectors", "dimensions": 4096})["metric"] == "cosine"


def test_list_and_drop(inst, admin):
    name = unique("notes")
    create(inst, admin, {"name": name, "kind": "documents"})
    listed = inst.get(ADMIN_PATH, headers=admin.headers)
    assert listed.status_code == 200, listed.text
    names = [c["name"] for c in listed.json()["collections"]]
    assert name in names and names == sorted(names), names
    dropped = drop(inst, admin, name)
    assert dropped["name"] == name and dropped["dropped"] is True, dropped
    assert not table_exists(inst, f"coredb.coll_{name}")
    assert name not in [r[0] for r in registry(inst)]
    assert audit_actions(inst, name)[-1] == "collection.drop"
    assert_error(inst.request("DELETE", f"{ADMIN_PATH}/{name}", headers=admin.headers), 404, "NOT_FOUND")


def test_duplicate_name_conflicts_and_changes_nothing(inst, admin):
    name = unique("dup")
    create(inst, admin, {"name": name, "kind": "documents"})
    before = registry(inst)
    resp = inst.post(ADMIN_PATH, json={"name": name, "kind": "vectors", "dimensions": 2}, headers=admin.headers)
    assert_error(resp, 409, "CONFLICT")
    assert registry(inst) == before
    assert columns(inst, f"coredb.coll_{name}")["doc"][0] == "jsonb"


BAD_NAMES = ["x; DROP TABLE users --", "a\"b", "A", "1abc", "pg_x", "", "a" * 59, "coll'", "a b",
             "users.projects", "naïve", None, 5, ["a"], {"a": 1}]


@pytest.mark.parametrize("bad", BAD_NAMES, ids=range(len(BAD_NAMES)))
def test_hostile_collection_names_are_refused(inst, admin, bad):
    before = registry(inst)
    tables = scalar(inst, "SELECT count(*) FROM pg_class WHERE relnamespace = 'coredb'::regnamespace")
    err = assert_error(inst.post(ADMIN_PATH, json={"name": bad, "kind": "documents"}, headers=admin.headers),
                       400, "VALIDATION_FAILED")
    assert err["details"]["field"] == "name", err
    assert registry(inst) == before
    assert scalar(inst, "SELECT count(*) FROM pg_class WHERE relnamespace = 'coredb'::regnamespace") == tables
    if isinstance(bad, str) and bad:
        resp = inst.request("DELETE", f"{ADMIN_PATH}/{urllib.parse.quote(bad, safe='')}", headers=admin.headers)
        assert resp.status_code in (404, 405), resp.text
        assert scalar(inst, "SELECT to_regclass('public.users') IS NOT NULL")


BAD_BODIES = [
    ({"name": "ok_a", "kind": "tables"}, "kind"),
    ({"name": "ok_a"}, "kind"),
    ({"name": "ok_a", "kind": 1}, "kind"),
    ({"name": "ok_a", "kind": "documents", "partition_key": "a..b"}, "partition_key"),
    ({"name": "ok_a", "kind": "documents", "partition_key": "a') || pg_sleep(1) --"}, "partition_key"),
    ({"name": "ok_a", "kind": "documents", "partition_key": ".".join(["a"] * 17)}, "partition_key"),
    ({"name": "ok_a", "kind": "documents", "partition_key": 5}, "partition_key"),
    ({"name": "ok_a", "kind": "documents", "dimensions": 3}, "dimensions"),
    ({"name": "ok_a", "kind": "vectors"}, "dimensions"),
    ({"name": "ok_a", "kind": "vectors", "dimensions": 0}, "dimensions"),
    ({"name": "ok_a", "kind": "vectors", "dimensions": 4097}, "dimensions"),
    ({"name": "ok_a", "kind": "vectors", "dimensions": "3"}, "dimensions"),
    ({"name": "ok_a", "kind": "vectors", "dimensions": 3.5}, "dimensions"),
    ({"name": "ok_a", "kind": "vectors", "dimensions": 3, "metric": "manhattan"}, "metric"),
    ({"name": "ok_a", "kind": "vectors", "dimensions": 3, "partition_key": "a"}, "partition_key"),
    ({"name": "ok_a", "kind": "documents", "owner": "x"}, "owner"),
]


@pytest.mark.parametrize("body,field", BAD_BODIES, ids=range(len(BAD_BODIES)))
def test_bad_bodies_name_the_field(inst, admin, body, field):
    err = assert_error(inst.post(ADMIN_PATH, json=body, headers=admin.headers), 400, "VALIDATION_FAILED")
    assert err["details"]["field"] == field, err
    assert "ok_a" not in [r[0] for r in registry(inst)]


def test_malformed_and_wrong_type_bodies(inst, admin):
    h = dict(admin.headers, **{"Content-Type": "application/json"})
    assert_error(inst.post(ADMIN_PATH, data="{not json", headers=h), 400, "INVALID_JSON")
    assert_error(inst.post(ADMIN_PATH, json=["documents"], headers=admin.headers), 400, "VALIDATION_FAILED")
    resp = inst.post(ADMIN_PATH, data="{\"name\": \"" + "a" * (3 << 20) + "\"}", headers=h)
    assert resp.status_code == 413, resp.status_code


def test_admin_routes_need_an_admin(inst, admin):
    u = user(inst)
    name = unique("priv")
    create(inst, admin, {"name": name, "kind": "documents"})
    body = {"name": unique("x"), "kind": "documents"}
    assert_error(inst.post(ADMIN_PATH, json=body), 401, "UNAUTHORIZED")
    assert_error(inst.get(ADMIN_PATH), 401, "UNAUTHORIZED")
    assert_error(inst.request("DELETE", f"{ADMIN_PATH}/{name}"), 401, "UNAUTHORIZED")
    assert_error(inst.post(ADMIN_PATH, json=body, headers=u.headers), 403, "FORBIDDEN")
    assert_error(inst.get(ADMIN_PATH, headers=u.headers), 403, "FORBIDDEN")
    assert_error(inst.request("DELETE", f"{ADMIN_PATH}/{name}", headers=u.headers), 403, "FORBIDDEN")
    forged = {"Authorization": "Bearer " + admin.token[:-4] + "AAAA"}
    assert inst.post(ADMIN_PATH, json=body, headers=forged).status_code == 401
    assert table_exists(inst, f"coredb.coll_{name}")
    assert body["name"] not in [r[0] for r in registry(inst)]


# ---- documents through the data API ----

def dins(coll, document, **extra):
    op = {"database": "documents", "operation": "insert", "collection": coll, "document": document}
    op.update(extra)
    return op


def dop(operation, coll, **extra):
    op = {"database": "documents", "operation": operation, "collection": coll}
    op.update(extra)
    return op


def dq(inst, acct, coll, **body):
    body.update({"database": "documents", "collection": coll})
    return query_ok(inst, acct, body)


def ids(out):
    return [r["id"] for r in out["data"]]


def stored(inst, coll, doc_id):
    rows = inst.pg.query(inst.db, f"SELECT doc, etag, user_id::text FROM coredb.coll_{coll} WHERE id = %s",
                         (doc_id,))
    return rows[0] if rows else None


@pytest.fixture(scope="module")
def people(inst, admin):
    """A collection of six documents owned by one user."""
    name = unique("people")
    create(inst, admin, {"name": name, "kind": "documents", "partition_key": "address.country"})
    owner = user(inst)
    docs = [
        {"id": "p1", "name": "Ann", "age": 31, "address": {"city": "Lyon", "country": "FR"}, "tags": ["a", "b"]},
        {"id": "p2", "name": "Bob", "age": 25, "address": {"city": "Paris", "country": "FR"}, "tags": ["b"]},
        {"id": "p3", "name": "Cid", "age": 40, "address": {"city": "Lyon", "country": "FR"}, "vip": None},
        {"id": "p4", "name": "Dee", "age": 19, "address": {"city": "Berlin", "country": "DE"}, "tags": []},
        {"id": "p5", "name": "Eve", "age": "unknown", "address": {"city": "Rome", "country": "IT"}},
        {"id": "p6", "name": "Fay", "age": 52.5, "address": {"city": "Lyon", "country": "FR"}, "tags": ["c"]},
    ]
    tx_ok(inst, owner, [dins(name, d) for d in docs])
    return name, owner


def test_insert_stores_document_owner_etag_and_partition(inst, people):
    coll, owner = people
    doc, etag, uid = stored(inst, coll, "p1")
    assert doc["address"]["city"] == "Lyon" and uid == owner.id and len(etag) == 32
    assert scalar(inst, f"SELECT partition_key FROM coredb.coll_{coll} WHERE id = 'p4'") == "DE"
    out = tx_ok(inst, owner, [dins(coll, {"x": 1}), dins(coll, {"y": 2}, id="given")])
    gen_id = out["results"][0]["data"]["rows"][0]["id"]
    assert len(gen_id) == 36 and stored(inst, coll, gen_id)[0] == {"x": 1}
    row = out["results"][1]["data"]["rows"][0]
    assert row["id"] == "given" and row["doc"] == {"y": 2} and row["etag"] == stored(inst, coll, "given")[1]
    tx_ok(inst, owner, [dop("delete", coll, id=gen_id), dop("delete", coll, id="given")])
    assert stored(inst, coll, gen_id) is None


def test_duplicate_insert_conflicts(inst, people):
    coll, owner = people
    tx_fail(inst, owner, [dins(coll, {"id": "p1", "dup": True})], 409, "CONFLICT", operation=1)
    assert "dup" not in stored(inst, coll, "p1")[0]


@pytest.mark.parametrize("filters,expected", [
    ({"address.city": "Lyon"}, ["p1", "p3", "p6"]),
    ({"address.city": {"eq": "Lyon"}, "age": {"gt": 35}}, ["p3", "p6"]),
    ({"address.city": {"neq": "Lyon"}}, ["p2", "p4", "p5"]),
    ({"age": {"gt": 31}}, ["p3", "p6"]),
    ({"age": {"gte": 31}}, ["p1", "p3", "p6"]),
    ({"age": {"lt": 25}}, ["p4"]),
    ({"age": {"lte": 25}}, ["p2", "p4"]),
    ({"age": {"gte": 20, "lt": 45}}, ["p1", "p2", "p3"]),
    ({"name": {"gt": "Dee"}}, ["p5", "p6"]),
    ({"address.country": {"in": ["DE", "IT"]}}, ["p4", "p5"]),
    ({"age": {"in": [19, 40, "31"]}}, ["p3", "p4"]),
    ({"tags": {"exists": True}}, ["p1", "p2", "p4", "p6"]),
    ({"tags": {"exists": False}}, ["p3", "p5"]),
    ({"vip": {"exists": True}}, ["p3"]),
    ({"tags": {"contains": "b"}}, ["p1", "p2"]),
    ({"tags": {"contains": ["a", "b"]}}, ["p1"]),
    ({"address": {"contains": {"country": "FR", "city": "Lyon"}}}, ["p1", "p3", "p6"]),
    ({"address": {"eq": {"city": "Rome", "country": "IT"}}}, ["p5"]),
    ({"no.such.path": "x"}, []),
    ({"tags.0": "b"}, ["p2"]),                          # an array index in the path
    ({"tags": "b"}, []),                                # eq is exact: an element of an array is not equal
    ({"age": 31}, ["p1"]),
    ({"age": "31"}, []),                                # JSON types differ
])
def test_each_filter_operator(inst, people, filters, expected):
    coll, owner = people
    assert ids(dq(inst, owner, coll, filters=filters)) == expected


def test_projection_order_and_pagination(inst, people):
    coll, owner = people
    out = dq(inst, owner, coll, select=["name", "address.city"], filters={"age": {"gte": 0}},
             order_by={"path": "age", "direction": "desc"}, pagination={"page": 1, "limit": 2})
    assert out["data"] == [{"id": "p6", "etag": out["data"][0]["etag"], "name": "Fay", "address.city": "Lyon"},
                           {"id": "p3", "etag": out["data"][1]["etag"], "name": "Cid", "address.city": "Lyon"}]
    assert out["pagination"] == {"page": 1, "limit": 2, "total": 5, "pages": 3}
    page3 = dq(inst, owner, coll, filters={"age": {"gte": 0}}, order_by=[{"path": "age"}],
               pagination={"page": 3, "limit": 2})
    assert ids(page3) == ["p6"] and page3["pagination"]["total"] == 5
    whole = dq(inst, owner, coll, filters={"name": "Ann"})["data"][0]
    assert set(whole) == {"id", "partition_key", "doc", "etag", "created_at", "updated_at"}
    assert whole["partition_key"] == "FR" and whole["doc"]["age"] == 31
    # the alias
    alias = query_ok(inst, owner, {"database": "cosmosdb", "collection": coll, "filters": {"name": "Bob"}})
    assert ids(alias) == ["p2"]


def test_replace_patch_delete_with_etags(inst, admin):
    coll = unique("etag")
    create(inst, admin, {"name": coll, "kind": "documents"})
    u = user(inst)
    e1 = tx_ok(inst, u, [dins(coll, {"id": "d", "a": {"b": 1, "c": 2}, "keep": True})])["results"][0]["data"]["rows"][0]["etag"]
    # replace with the right etag
    e2 = tx_ok(inst, u, [dop("replace", coll, id="d", document={"a": {"b": 5}}, if_match=e1)])["results"][0]["data"]["rows"][0]["etag"]
    assert e2 != e1 and stored(inst, coll, "d")[:2] == ({"a": {"b": 5}}, e2)
    # a stale etag: 409 PRECONDITION_FAILED and nothing changes
    for op in (dop("replace", coll, id="d", document={"z": 1}, if_match=e1),
               dop("patch", coll, id="d", patch={"z": 1}, if_match=e1),
               dop("delete", coll, id="d", if_match=e1)):
        err = tx_fail(inst, u, [op], 409, "PRECONDITION_FAILED", operation=1)
        assert err["details"]["field"] == "if_match", err
        assert stored(inst, coll, "d")[:2] == ({"a": {"b": 5}}, e2)
    # merge patch: objects merge, null removes, arrays and scalars replace
    tx_ok(inst, u, [dop("replace", coll, id="d", document={"a": {"b": 1, "c": 2}, "l": [1, 2], "s": "x"})])
    out = tx_ok(inst, u, [dop("patch", coll, id="d", patch={"a": {"c": None, "d": {"e": 3}}, "l": [9], "s": None,
                                                              "n": 1})])
    assert out["results"][0]["data"]["rows"][0]["doc"] == {"a": {"b": 1, "d": {"e": 3}}, "l": [9], "n": 1}
    assert stored(inst, coll, "d")[0] == {"a": {"b": 1, "d": {"e": 3}}, "l": [9], "n": 1}
    # unknown ids
    for op in (dop("replace", coll, id="nope", document={}), dop("patch", coll, id="nope", patch={}),
               dop("delete", coll, id="nope")):
        tx_fail(inst, u, [op], 404, "NOT_FOUND", operation=1)
    # upsert overwrites by id, and creates
    tx_ok(inst, u, [dop("upsert", coll, id="d", document={"fresh": True}), dop("upsert", coll, document={"id": "n2"})])
    assert stored(inst, coll, "d")[0] == {"fresh": True} and stored(inst, coll, "n2")[0] == {"id": "n2"}
    etag = stored(inst, coll, "d")[1]
    tx_ok(inst, u, [dop("delete", coll, id="d", if_match=etag)])
    assert stored(inst, coll, "d") is None


def test_atomic_transaction_with_table_row_document_and_redis(inst, admin, rds):
    coll = unique("atomic")
    create(inst, admin, {"name": coll, "kind": "documents"})
    u = user(inst)
    key = unique("k")
    title = unique("t")
    ops = [pg_insert("projects", {"title": title, "user_id": u.id}), dins(coll, {"id": "one", "v": 1}),
           rset(key, "set"), dins(coll, {"id": "two", "v": 2})]
    out = tx_ok(inst, u, ops)
    assert stored(inst, coll, "one") and stored(inst, coll, "two")
    assert scalar(inst, "SELECT count(*) FROM projects WHERE title = %s", (title,)) == 1
    assert wait_for(lambda: rds.get(f"app:user:{u.id}:{key}") == "set"), out
    # a failing document op (duplicate id) rolls back the table row, the other document and the Redis key
    title2, key2 = unique("t"), unique("k")
    ops = [pg_insert("projects", {"title": title2, "user_id": u.id}), dins(coll, {"id": "three"}),
           rset(key2, "never"), dins(coll, {"id": "one"})]
    tx_fail(inst, u, ops, 409, "CONFLICT", operation=4)
    # a failing table op after document writes rolls them back too
    ops = [dop("patch", coll, id="one", patch={"v": 100}), dins(coll, {"id": "four"}),
           pg_insert("projects", {"user_id": u.id})]               # title is NOT NULL
    tx_fail(inst, u, ops, 400, "VALIDATION_FAILED", operation=3)
    # and a stale etag in the middle
    ops = [pg_insert("projects", {"title": title2, "user_id": u.id}), dins(coll, {"id": "five"}),
           dop("replace", coll, id="one", document={}, if_match="0" * 32)]
    tx_fail(inst, u, ops, 409, "PRECONDITION_FAILED", operation=3)
    assert scalar(inst, "SELECT count(*) FROM projects WHERE title = %s", (title2,)) == 0
    for gone in ("three", "four", "five"):
        assert stored(inst, coll, gone) is None
    assert stored(inst, coll, "one")[0] == {"id": "one", "v": 1}
    import time
    time.sleep(1.2)       # longer than one background outbox pass
    assert rds.get(f"app:user:{u.id}:{key2}") is None


def test_other_users_documents_are_invisible_and_unwritable(inst, people):
    coll, owner = people
    other = user(inst)
    assert dq(inst, other, coll)["data"] == []
    assert dq(inst, other, coll, filters={"address.city": "Lyon"})["pagination"]["total"] == 0
    etag = stored(inst, coll, "p1")[1]
    for op in (dop("replace", coll, id="p1", document={"stolen": True}),
               dop("replace", coll, id="p1", document={"stolen": True}, if_match=etag),
               dop("patch", coll, id="p1", patch={"stolen": True}),
               dop("delete", coll, id="p1")):
        tx_fail(inst, other, [op], 404, "NOT_FOUND", operation=1)
    # upsert onto someone else's id is refused by the policy, not turned into a takeover
    err = tx_fail(inst, other, [dop("upsert", coll, id="p1", document={"stolen": True})], 403, "FORBIDDEN",
                  operation=1)
    assert "user_id" in err["message"] or err["details"].get("policy") == "coredb_own_user_id", err
    doc, etag2, uid = stored(inst, coll, "p1")
    assert "stolen" not in doc and etag2 == etag and uid == owner.id
    # the other user's own documents are theirs alone; the admin sees all
    tx_ok(inst, other, [dins(coll, {"id": "o1", "address": {"city": "Lyon"}})])
    assert ids(dq(inst, other, coll)) == ["o1"]
    assert "o1" not in ids(dq(inst, owner, coll, pagination={"limit": 100}))
    tx_ok(inst, other, [dop("delete", coll, id="o1")])


def test_query_cache_is_invalidated_by_document_writes(inst, admin):
    coll = unique("cache")
    create(inst, admin, {"name": coll, "kind": "documents"})
    u = user(inst)
    tx_ok(inst, u, [dins(coll, {"id": "c1", "n": 1})])
    first = dq(inst, u, coll, filters={"n": {"gte": 1}})
    second = dq(inst, u, coll, filters={"n": {"gte": 1}})
    assert ids(first) == ids(second) == ["c1"]
    assert second["cached"] is True, second
    tx_ok(inst, u, [dop("upsert", coll, id="c2", document={"n": 2})])
    third = dq(inst, u, coll, filters={"n": {"gte": 1}})
    assert third["cached"] is False and ids(third) == ["c1", "c2"], third
    tx_ok(inst, u, [dop("patch", coll, id="c1", patch={"n": 0})])
    assert ids(dq(inst, u, coll, filters={"n": {"gte": 1}})) == ["c2"]


BAD_PATHS = ["a..b", ".a", "a.", "a b", "a'b", "a\"b", "a;DROP TABLE users", "a)--", "$.a", "a[0]",
             "{a,b}", ".".join(["x"] * 17), "x" * 65, "", "ä"]


@pytest.mark.parametrize("path", BAD_PATHS, ids=range(len(BAD_PATHS)))
def test_hostile_paths_are_refused_naming_the_field(inst, people, path):
    coll, owner = people
    before = scalar(inst, f"SELECT count(*) FROM coredb.coll_{coll}")
    err = assert_error(query(inst, owner, {"database": "documents", "collection": coll, "filters": {path: 1}}),
                       400, "VALIDATION_FAILED")
    assert err["details"]["field"] == "filters", err
    err = assert_error(query(inst, owner, {"database": "documents", "collection": coll, "select": [path]}),
                       400, "VALIDATION_FAILED")
    assert err["details"]["field"] == "select", err
    err = assert_error(query(inst, owner, {"database": "documents", "collection": coll,
                                           "order_by": {"path": path}}), 400, "VALIDATION_FAILED")
    assert err["details"]["field"] == "order_by", err
    assert scalar(inst, f"SELECT count(*) FROM coredb.coll_{coll}") == before
    assert scalar(inst, "SELECT to_regclass('public.users') IS NOT NULL")


HOSTILE_COLLECTIONS = ["x'; DROP TABLE users --", "coll_x", "../users", "users", "PEOPLE", "a\"b", "", 7, None,
                       ["a"]]


@pytest.mark.parametrize("name", HOSTILE_COLLECTIONS, ids=range(len(HOSTILE_COLLECTIONS)))
def test_hostile_collection_names_in_the_data_api(inst, people, name):
    _, owner = people
    resp = query(inst, owner, {"database": "documents", "collection": name})
    assert resp.status_code in (400, 404), resp.text
    assert resp.json()["error"]["code"] in ("VALIDATION_FAILED", "UNKNOWN_TABLE")
    resp = tx(inst, owner, [dins(name, {"a": 1})])
    assert resp.status_code in (400, 404), resp.text
    assert scalar(inst, "SELECT to_regclass('public.users') IS NOT NULL")


def test_vector_collection_is_not_a_document_collection(inst, admin, people):
    _, owner = people
    name = unique("vec")
    create(inst, admin, {"name": name, "kind": "vectors", "dimensions": 2})
    assert_error(query(inst, owner, {"database": "documents", "collection": name}), 404, "UNKNOWN_TABLE")


@pytest.mark.parametrize("filters", [
    {"age": {"gt": [1]}}, {"age": {"gt": None}}, {"age": {"in": []}}, {"age": {"in": 3}},
    {"age": {"exists": "yes"}}, {"age": {"like": "x"}}, {"age": {}}, ["age"],
], ids=range(8))
def test_bad_filter_values(inst, people, filters):
    coll, owner = people
    resp = query(inst, owner, {"database": "documents", "collection": coll, "filters": filters})
    err = assert_error(resp, 400)
    assert err["code"] in ("INVALID_FILTER", "VALIDATION_FAILED"), err


def test_hostile_document_bodies(inst, people):
    coll, owner = people
    deep = {}
    cur = deep
    for _ in range(40):
        cur["d"] = {}
        cur = cur["d"]
    cases = [
        (dins(coll, deep), "document"),
        (dins(coll, ["not", "an", "object"]), "document"),
        (dins(coll, "text"), "document"),
        (dop("insert", coll), "document"),
        (dins(coll, {"a": 1}, id=5), "id"),
        (dins(coll, {"a": 1}, id="x" * 256), "id"),
        (dop("replace", coll, document={"a": 1}), "id"),
        (dop("patch", coll, id="p1", patch=[1]), "patch"),
        (dop("delete", coll, id="p1", if_match=7), "if_match"),
        (dins(coll, {"a": 1}, filters={}), "filters"),
        (dop("merge", coll, id="p1"), "operation"),
    ]
    before = scalar(inst, f"SELECT count(*) FROM coredb.coll_{coll}")
    for op, field in cases:
        resp = tx(inst, owner, [op])
        err = assert_error(resp, 400, "VALIDATION_FAILED")
        assert err["details"]["field"] == field, (op.get("operation"), err)
    # a body over the HTTP limit (1 MiB, below the 2 MiB document limit, which the
    # library enforces: tests/unit/data/doc_common.c) never reaches the store
    assert_error(tx(inst, owner, [dins(coll, {"big": "x" * (1024 * 1024 + 10)})]), 413, "PAYLOAD_TOO_LARGE")
    assert scalar(inst, f"SELECT count(*) FROM coredb.coll_{coll}") == before
    assert_error(query(inst, None, {"database": "documents", "collection": coll}), 401, "UNAUTHORIZED")
    assert_error(inst.post("/api/v1/data/transaction", json={"operations": [dins(coll, {"a": 1})]}), 401,
                 "UNAUTHORIZED")


def test_patch_cannot_grow_a_document_past_the_size_limit(inst, admin):
    """Each request is within the HTTP limit; only the merged document is too large."""
    coll = unique("grow")
    create(inst, admin, {"name": coll, "kind": "documents"})
    u = user(inst)
    chunk = "x" * (900 * 1024)
    tx_ok(inst, u, [dins(coll, {"id": "g", "a": chunk})])
    tx_ok(inst, u, [dop("patch", coll, id="g", patch={"b": chunk})])
    before = stored(inst, coll, "g")
    err = tx_fail(inst, u, [dop("patch", coll, id="g", patch={"c": chunk})], 400, "VALIDATION_FAILED", operation=1)
    assert err["details"]["field"] == "patch" and "DOC_MAX_BYTES" in err["message"], err
    assert stored(inst, coll, "g") == before and set(before[0]) == {"id", "a", "b"}
    # a patch that shrinks it is fine
    tx_ok(inst, u, [dop("patch", coll, id="g", patch={"a": None})])
    assert set(stored(inst, coll, "g")[0]) == {"id", "b"}


def test_a_collection_table_dropped_behind_coredb_is_unknown_not_an_error(inst, admin):
    """The registry row stays but the table is gone (dropped by hand): the
    statement fails in PostgreSQL with undefined_table, which the data API
    answers as 404 UNKNOWN_TABLE, never 500."""
    coll = unique("gone")
    create(inst, admin, {"name": coll, "kind": "documents"})
    u = user(inst)
    tx_ok(inst, u, [dins(coll, {"id": "a"})])
    assert ids(dq(inst, u, coll)) == ["a"]
    inst.pg.query(inst.db, f"DROP TABLE coredb.coll_{coll}")
    # (a query answered before stays in the query cache until its TTL, like any
    # change made behind coredb's back: this one was never asked)
    assert_error(query(inst, u, {"database": "documents", "collection": coll, "filters": {"id": "a"}}), 404,
                 "UNKNOWN_TABLE")
    resp = tx(inst, u, [dins(coll, {"id": "b"})])
    assert_error(resp, 404, "UNKNOWN_TABLE")
    inst.pg.query(inst.db, "DELETE FROM coredb.collections WHERE name = %s", (coll,))
    err = assert_error(query(inst, u, {"database": "documents", "collection": coll, "filters": {"id": "b"}}), 404,
                       "UNKNOWN_TABLE")
    assert "coll_" not in json.dumps(err)


def test_doc_max_bytes_is_configurable(pg):
    """DOC_MAX_BYTES lowers the limit for documents, patches and vector payloads alike."""
    from datahelp import admin_of, start_instance
    small = start_instance(pg, DOC_MAX_BYTES="2048")
    try:
        adm = admin_of(small)
        docs, vecs = unique("small"), unique("smallv")
        create(small, adm, {"name": docs, "kind": "documents"})
        create(small, adm, {"name": vecs, "kind": "vectors", "dimensions": 2, "metric": "l2"})
        u = user(small)
        tx_ok(small, u, [dins(docs, {"id": "s", "v": "x" * 1500})])
        err = tx_fail(small, u, [dins(docs, {"id": "t", "v": "x" * 2100})], 400, "VALIDATION_FAILED", operation=1)
        assert err["details"]["field"] == "document" and "DOC_MAX_BYTES" in err["message"], err
        err = tx_fail(small, u, [dop("patch", docs, id="s", patch={"w": "y" * 1000})], 400, "VALIDATION_FAILED",
                      operation=1)
        assert err["details"]["field"] == "patch", err
        assert small.pg.query(small.db, f"SELECT doc->>'w' FROM coredb.coll_{docs} WHERE id = 's'") == [(None,)]
        err = tx_fail(small, u, [{"database": "vectors", "operation": "upsert", "collection": vecs, "id": "p",
                                  "vector": [1, 2], "payload": {"v": "x" * 2100}}], 400, "VALIDATION_FAILED",
                      operation=1)
        assert err["details"]["field"] == "payload", err
    finally:
        small.stop_clean()


# ---- CLI and health ----

def test_cli_collections_create_list_drop(inst):
    from identity import cli_env
    from servers import run_cli
    env = cli_env(inst)
    name = unique("clicoll")
    proc = run_cli(["collections", "create", name, "--kind", "vectors", "--dimensions", "8", "--metric", "dot",
                    "--json"], env)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["status"] == "success" and out["name"] == name and out["dimensions"] == 8, out
    assert scalar(inst, "SELECT metric FROM coredb.collections WHERE name = %s", (name,)) == "dot"
    proc = run_cli(["collections", "list", "--json"], env)
    assert proc.returncode == 0 and name in [c["name"] for c in json.loads(proc.stdout)["collections"]]
    proc = run_cli(["collections", "list"], env)
    assert proc.returncode == 0 and name in proc.stdout
    proc = run_cli(["collections", "create", name, "--kind", "documents", "--json"], env)
    assert proc.returncode != 0 and json.loads(proc.stdout)["error"]["code"] == "CONFLICT", proc.stdout
    proc = run_cli(["collections", "create", "bad name", "--kind", "documents", "--json"], env)
    assert proc.returncode != 0 and json.loads(proc.stdout)["error"]["code"] == "VALIDATION_FAILED"
    proc = run_cli(["collections", "drop", name, "--json"], env)
    assert proc.returncode == 0 and json.loads(proc.stdout)["dropped"] is True, proc.stdout
    assert not table_exists(inst, f"coredb.coll_{name}")
    # the refused create is audited too (as a failure)
    assert audit_actions(inst, name) == ["collection.create", "collection.create", "collection.drop"]
    proc = run_cli(["collections", "frobnicate", "--json"], env)
    assert proc.returncode != 0
    proc = run_cli(["collections", "--help"], {})
    assert proc.returncode == 0 and "coredb collections create NAME" in proc.stdout


def test_health_shows_documents_backed_by_postgresql(inst, admin):
    resp = inst.get("/health")
    assert resp.status_code == 200, resp.text
    doc = resp.json()["checks"]["documents"]
    assert doc["status"] == "UP" and doc["backend"] == "postgresql", doc
    n = scalar(inst, "SELECT count(*) FROM coredb.collections WHERE kind = 'documents'")
    assert doc["collections"] == n, doc
