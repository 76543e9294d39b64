"""Collections and the document store (issue 15, first half).

The registry: POST/GET/DELETE /api/v1/admin/collections create, list and
drop a collection of kind "documents" or "vectors": one row of
coredb.collections and one table coredb.coll_<name> with the layout
include/coredb/collections.h documents, checked here in PostgreSQL's
catalogs (columns, CHECK on the vector length, generated partition key,
GIN index, row-level security policies), audited, admin only, and hostile
names and bodies refused with a 400 that changes nothing."""
import json
import urllib.parse

import psycopg2
import pytest

from datahelp import admin_of, assert_error, scalar, user
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
