"""Row-level security, schema grants and ownership (issue 10, part 3):
POST /api/v1/admin/rls, PUT /api/v1/admin/schemas/{schema}/permissions,
POST /api/v1/admin/ownership and `coredb admin rls | schema-permissions |
ownership`, against the real binary, PostgreSQL and Redis.

Effects are read where they land: pg_policies, pg_class, has_schema_privilege,
has_table_privilege, the owners in pg_class / pg_namespace / pg_proc /
pg_database. A policy made here is enforced for a data-API caller at once
(query cache and catalog refreshed) and for a direct login that is a member
of the policy's role. Hostile input (SQL in every identifier and in the
policy expression, wrong types, oversized bodies) is a 4xx that leaves the
database as it was; coredb's own objects and roles are 403; every route is
401 without a valid token and 403 for user and premium."""
import json
import time
import urllib.parse

import psycopg2
import pytest

from datahelp import assert_error, pg_insert, premium, query_ok, scalar, tx_ok, user
from hostile import HOSTILE_NAMES, WRONG_TYPES, no_sql_in
from identity import bearer, cli_env, craft, live_claims, unique
from servers import run_cli

# the module fixtures inst, admin and rds (conftest.py) use this Redis database
REDIS_DB = 9

RLS = "/api/v1/admin/rls"
OWNERSHIP = "/api/v1/admin/ownership"


def perms_path(schema):
    return f"/api/v1/admin/schemas/{urllib.parse.quote(schema, safe='')}/permissions"


# ---- helpers ----

def select_body(table):
    return {"database": "postgresql", "query_type": "select", "table": table}


def sql(inst, text, params=None):
    return inst.pg.query(inst.db, text, params)


def make_table(inst, name=None, schema="public"):
    """A table as an application's migration would create it (owned by coredb's login)."""
    name = name or unique("acc")
    sql(inst, f"CREATE TABLE {schema}.{name} (id bigserial PRIMARY KEY, user_id uuid,"
              f" body text NOT NULL, label text)")
    return name


def make_role(inst, prefix="app", login=False):
    name = unique(prefix).lower()
    sql(inst, f"CREATE ROLE {name} {'LOGIN' if login else 'NOLOGIN'}")
    return name


def rls(inst, admin, body, status=200):
    resp = inst.post(RLS, json=body, headers=admin.headers)
    assert resp.status_code == status, resp.text
    return resp.json()


def put_perms(inst, admin, schema, body, status=200):
    resp = inst.request("PUT", perms_path(schema), json=body, headers=admin.headers)
    assert resp.status_code == status, resp.text
    return resp.json()


def transfer(inst, admin, body, status=200):
    resp = inst.post(OWNERSHIP, json=body, headers=admin.headers)
    assert resp.status_code == status, resp.text
    return resp.json()


def policy_rows(inst, table, schema="public"):
    return sql(inst, "SELECT policyname, permissive, roles::text[], cmd, qual, with_check FROM pg_policies"
                     " WHERE schemaname = %s AND tablename = %s ORDER BY policyname", (schema, table))


def rowsec(inst, table, schema="public"):
    return sql(inst, "SELECT relrowsecurity, relforcerowsecurity FROM pg_class c"
                     " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %s AND c.relname = %s",
               (schema, table))[0]


def snapshot(inst):
    """What a refused call must not change: tables, their ACLs, RLS, policies, owners; roles; namespaces."""
    rels = sql(inst, "SELECT n.nspname || '.' || c.relname, c.relkind, coalesce(c.relacl::text, ''),"
                     " c.relrowsecurity, c.relforcerowsecurity, pg_get_userbyid(c.relowner),"
                     " (SELECT string_agg(polname || ':' || coalesce(pg_get_expr(polqual, polrelid), ''), ','"
                     "   ORDER BY polname) FROM pg_policy WHERE polrelid = c.oid)"
                     " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                     " WHERE n.nspname NOT LIKE 'pg\\_%%' AND n.nspname <> 'information_schema'"
                     " AND c.relkind IN ('r', 'p', 'v', 'm', 'S') ORDER BY 1")
    spaces = sql(inst, "SELECT nspname, pg_get_userbyid(nspowner), coalesce(nspacl::text, '')"
                       " FROM pg_namespace ORDER BY 1")
    roles = sql(inst, "SELECT rolname, rolsuper FROM pg_roles ORDER BY 1")
    members = sql(inst, "SELECT roleid::regrole::text, member::regrole::text FROM pg_auth_members ORDER BY 1, 2")
    defaults = sql(inst, "SELECT coalesce(defaclacl::text, '') FROM pg_default_acl ORDER BY 1")
    funcs = sql(inst, "SELECT p.oid::regprocedure::text, pg_get_userbyid(p.proowner) FROM pg_proc p"
                      " JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname NOT LIKE 'pg\\_%%'"
                      " AND n.nspname <> 'information_schema' ORDER BY 1")
    dbs = sql(inst, "SELECT datname, pg_get_userbyid(datdba) FROM pg_database ORDER BY 1")
    return rels, spaces, roles, members, defaults, funcs, dbs


def check_refused(resp, body, status, field):
    """status with the code it stands for and details.field; a NUL anywhere is INVALID_JSON (jansson)."""
    if "\\u0000" in json.dumps(body):
        assert_error(resp, 400, "INVALID_JSON")
        return
    code = {400: "VALIDATION_FAILED", 403: "FORBIDDEN", 404: "NOT_FOUND"}[status]
    err = assert_error(resp, status, code)
    assert err["details"].get("field") == field, err


@pytest.fixture(scope="module")
def canary(inst):
    """A table that must survive every hostile request, with one row."""
    sql(inst, "CREATE TABLE canary (id int PRIMARY KEY, note text)")
    sql(inst, "INSERT INTO canary VALUES (1, 'alive')")
    return "canary"


def canary_alive(inst):
    assert sql(inst, "SELECT note FROM canary") == [("alive",)]
    assert policy_rows(inst, "canary") == []
    assert rowsec(inst, "canary") == (False, False)


# ---- RLS: what lands in the catalog ----

def test_rls_creates_the_policy_as_asked(inst, admin):
    t = make_table(inst)
    reader = make_role(inst, "reader")
    out = rls(inst, admin, {"table_name": t, "policy_name": "visible_rows", "policy": "label <> 'hidden'",
                            "roles": [reader, "coredb_user"], "command": "select"})
    assert out["status"] == "success" and out["error"] is None and out["timestamp"], out
    assert out["table"] == t and out["schema"] == "public" and out["policy"] == "visible_rows", out
    assert out["command"] == "SELECT" and out["permissive"] is True and out["replaced"] is False, out
    assert out["roles"] == [reader, "coredb_user"] and out["row_security"] is True, out
    assert out["force_row_security"] is False, out
    rows = policy_rows(inst, t)
    assert len(rows) == 1, rows
    name, permissive, roles, cmd, qual, check = rows[0]
    assert (name, permissive, cmd, check) == ("visible_rows", "PERMISSIVE", "SELECT", None), rows
    assert sorted(roles) == sorted([reader, "coredb_user"]), roles
    assert qual == "(label <> 'hidden'::text)", qual
    assert out["expression"] == qual, out
    assert rowsec(inst, t) == (True, False)


def test_rls_defaults_force_restrictive_and_insert(inst, admin):
    t = make_table(inst)
    out = rls(inst, admin, {"table_name": f"public.{t}", "policy_name": "everyone", "policy": "id > 0",
                            "force": True, "restrictive": True})
    assert out["roles"] == ["public"] and out["command"] == "ALL" and out["permissive"] is False, out
    assert out["force_row_security"] is True
    assert rowsec(inst, t) == (True, True)
    rls(inst, admin, {"table_name": t, "policy_name": "ins_only", "policy": "body <> ''", "command": "INSERT"})
    rows = {r[0]: r for r in policy_rows(inst, t)}
    assert rows["everyone"][1:5] == ("RESTRICTIVE", ["public"], "ALL", "(id > 0)"), rows
    # INSERT takes WITH CHECK only: the expression became that clause and no USING
    assert rows["ins_only"][3:] == ("INSERT", None, "(body <> ''::text)"), rows


def test_rls_in_another_schema(inst, admin):
    sql(inst, "CREATE SCHEMA IF NOT EXISTS acc_other")
    t = make_table(inst, schema="acc_other")
    out = rls(inst, admin, {"table_name": f"acc_other.{t}", "policy_name": "p1", "policy": "true"})
    assert out["schema"] == "acc_other", out
    assert [r[0] for r in policy_rows(inst, t, "acc_other")] == ["p1"]
    assert rowsec(inst, t, "acc_other") == (True, False)


def test_rls_same_name_is_409_unless_replace(inst, admin):
    t = make_table(inst)
    rls(inst, admin, {"table_name": t, "policy_name": "only", "policy": "id < 10"})
    before = policy_rows(inst, t)
    err = assert_error(inst.post(RLS, json={"table_name": t, "policy_name": "only", "policy": "id < 20"},
                                 headers=admin.headers), 409, "CONFLICT")
    assert err["details"]["field"] == "policy_name", err
    assert policy_rows(inst, t) == before
    out = rls(inst, admin, {"table_name": t, "policy_name": "only", "policy": "id < 20", "replace": True})
    assert out["replaced"] is True, out
    assert [(r[0], r[4]) for r in policy_rows(inst, t)] == [("only", "(id < 20)")]
    # replace of a policy that does not exist yet is simply a create
    out = rls(inst, admin, {"table_name": t, "policy_name": "second", "policy": "true", "replace": True})
    assert out["replaced"] is False


# ---- RLS: enforced ----

def test_rls_is_enforced_for_the_data_api_at_once(inst, admin, rds):
    t = make_table(inst)
    resp = inst.post(f"/api/v1/admin/tables/{t}/expose", headers=admin.headers)
    assert resp.status_code == 200, resp.text
    alice = user(inst)
    tx_ok(inst, alice, [pg_insert(t, {"body": "a", "label": "shown"}),
                        pg_insert(t, {"body": "b", "label": "hidden"})])
    first = query_ok(inst, alice, select_body(t))
    assert sorted(r["label"] for r in first["data"]) == ["hidden", "shown"], first
    again = query_ok(inst, alice, select_body(t))   # cached now (Redis)
    assert len(again["data"]) == 2
    # the exposed table lets coredb_user see its own rows (permissive coredb_rows);
    # a restrictive policy narrows that further
    rls(inst, admin, {"table_name": t, "policy_name": "no_hidden", "policy": "label IS DISTINCT FROM 'hidden'",
                      "roles": ["coredb_user"], "restrictive": True})
    after = query_ok(inst, alice, select_body(t))
    assert [r["label"] for r in after["data"]] == ["shown"], after
    assert after["cached"] is False, after
    # the admin's role is not named by the policy: still sees both
    assert len(query_ok(inst, admin, select_body(t))["data"]) == 2


def test_rls_is_enforced_for_a_direct_login(inst, admin):
    t = make_table(inst)
    sql(inst, f"INSERT INTO {t} (body, label) VALUES ('x', 'shown'), ('y', 'hidden'), ('z', 'shown')")
    group = make_role(inst, "grp")
    sql(inst, f"GRANT SELECT ON {t} TO {group}")
    login_role = make_role(inst, "login", login=True)
    sql(inst, f"GRANT {group} TO {login_role}")
    rls(inst, admin, {"table_name": t, "policy_name": "shown_only", "policy": "label = 'shown'",
                      "roles": [group], "command": "SELECT"})
    conn = psycopg2.connect(host="127.0.0.1", port=inst.pg.port, user=login_role, dbname=inst.db)
    try:
        with conn.cursor() as cur:
            cur.execute(f"SELECT body FROM {t} ORDER BY body")
            assert cur.fetchall() == [("x",), ("z",)]
    finally:
        conn.close()


# ---- RLS: hostile input ----

EXPRESSIONS = [
    "true); DROP TABLE canary; --",
    "true) OR (true",
    "true) WITH CHECK (true",
    "true)) OR ((true",
    "1=1; DELETE FROM canary",
    "true /* */",
    "/* */ true",
    "true -- comment",
    "true\n--",
    "'unterminated",
    "\"unterminated",
    "note = 'a''",
    "E'\\'' ) OR ( 'x' = 'x'",
    "'\\' ) OR (true --'",
    "true\u0000) OR (true",
    "$$x$$ = 'x'",
    "id = $1",
    "(true",
    "true)",
    "true\uff09 OR \uff08true",            # fullwidth look-alike parentheses
    "id = 1 \u037e DROP TABLE canary",      # Greek question mark, looks like ';'
    "nosuch_column = 1",
    "1",                                   # not boolean
    "count(*) > 0",                        # aggregates are not allowed
    "",
    "true AND " * 600 + "true",            # over 4096 bytes
]


@pytest.mark.parametrize("expr", EXPRESSIONS)
def test_rls_hostile_expression_changes_nothing(inst, admin, canary, expr):
    before = snapshot(inst)
    resp = inst.post(RLS, json={"table_name": "canary", "policy_name": "evil", "policy": expr},
                     headers=admin.headers)
    if "\u0000" in expr:   # jansson refuses NUL in a JSON string: the body never reaches the library
        err = assert_error(resp, 400, "INVALID_JSON")
    else:
        err = assert_error(resp, 400, "VALIDATION_FAILED")
        assert err["details"]["field"] == "policy", err
    assert "DROP" not in err["message"] and "SELECT 1 FROM" not in json.dumps(err), err
    canary_alive(inst)
    assert snapshot(inst) == before


@pytest.mark.parametrize("body,status,field", [
    ({"table_name": "canary; DROP TABLE canary", "policy_name": "p", "policy": "true"}, 404, "table_name"),
    ({"table_name": "\"canary\"", "policy_name": "p", "policy": "true"}, 404, "table_name"),
    ({"table_name": "CANARY", "policy_name": "p", "policy": "true"}, 404, "table_name"),
    ({"table_name": "canary\u0000", "policy_name": "p", "policy": "true"}, 400, "table_name"),
    ({"table_name": "c\u0430nary", "policy_name": "p", "policy": "true"}, 404, "table_name"),  # Cyrillic a
    ({"table_name": "c" * 64, "policy_name": "p", "policy": "true"}, 400, "table_name"),
    ({"table_name": "public.", "policy_name": "p", "policy": "true"}, 400, "table_name"),
    ({"table_name": 5, "policy_name": "p", "policy": "true"}, 400, "table_name"),
    ({"table_name": ["canary"], "policy_name": "p", "policy": "true"}, 400, "table_name"),
    ({"policy_name": "p", "policy": "true"}, 400, "table_name"),
    ({"table_name": "canary", "policy_name": "p; DROP TABLE canary", "policy": "true"}, 400, "policy_name"),
    ({"table_name": "canary", "policy_name": "P", "policy": "true"}, 400, "policy_name"),
    ({"table_name": "canary", "policy_name": "p" * 64, "policy": "true"}, 400, "policy_name"),
    ({"table_name": "canary", "policy_name": "pg_x", "policy": "true"}, 400, "policy_name"),
    ({"table_name": "canary", "policy_name": "p\u0430", "policy": "true"}, 400, "policy_name"),  # Cyrillic a
    ({"table_name": "canary", "policy_name": None, "policy": "true"}, 400, "policy_name"),
    ({"table_name": "canary", "policy": "true"}, 400, "policy_name"),
    ({"table_name": "canary", "policy_name": "coredb_rows", "policy": "true"}, 403, "policy_name"),
    ({"table_name": "canary", "policy_name": "p", "policy": True}, 400, "policy"),
    ({"table_name": "canary", "policy_name": "p"}, 400, "policy"),
    ({"table_name": "canary", "policy_name": "p", "policy": "true", "roles": "coredb_user"}, 400, "roles"),
    ({"table_name": "canary", "policy_name": "p", "policy": "true", "roles": []}, 400, "roles"),
    ({"table_name": "canary", "policy_name": "p", "policy": "true", "roles": ["a"] * 17}, 400, "roles"),
    ({"table_name": "canary", "policy_name": "p", "policy": "true", "roles": ["x; DROP ROLE y"]}, 400, "roles"),
    ({"table_name": "canary", "policy_name": "p", "policy": "true", "roles": [7]}, 400, "roles"),
    ({"table_name": "canary", "policy_name": "p", "policy": "true", "roles": ["nosuch_role_x"]}, 404, "roles"),
    ({"table_name": "canary", "policy_name": "p", "policy": "true", "roles": ["postgres"]}, 403, "roles"),
    ({"table_name": "canary", "policy_name": "p", "policy": "true", "roles": ["coredb_lease_x"]}, 403, "roles"),
    ({"table_name": "canary", "policy_name": "p", "policy": "true", "command": "TRUNCATE"}, 400, "command"),
    ({"table_name": "canary", "policy_name": "p", "policy": "true", "command": "ALL; DROP"}, 400, "command"),
    ({"table_name": "canary", "policy_name": "p", "policy": "true", "command": 1}, 400, "command"),
    ({"table_name": "canary", "policy_name": "p", "policy": "true", "force": "yes"}, 400, "force"),
    ({"table_name": "canary", "policy_name": "p", "policy": "true", "replace": 1}, 400, "replace"),
    ({"table_name": "canary", "policy_name": "p", "policy": "true", "restrictive": None}, 400, "restrictive"),
    ({"table_name": "canary", "policy_name": "p", "policy": "true", "with_check": "true"}, 400, "with_check"),
])
def test_rls_hostile_fields_change_nothing(inst, admin, canary, body, status, field):
    before = snapshot(inst)
    check_refused(inst.post(RLS, json=body, headers=admin.headers), body, status, field)
    canary_alive(inst)
    assert snapshot(inst) == before


@pytest.mark.parametrize("table", ["users", "public.users", "projects", "media_assets", "coredb.sessions",
                                   "coredb.audit_log", "pg_catalog.pg_class", "information_schema.tables"])
def test_rls_on_coredbs_own_tables_is_403(inst, admin, table):
    before = snapshot(inst)
    err = assert_error(inst.post(RLS, json={"table_name": table, "policy_name": "p", "policy": "true"},
                                 headers=admin.headers), 403, "FORBIDDEN")
    assert "belongs to coredb" in err["message"], err
    assert snapshot(inst) == before


def test_rls_bodies_that_are_not_objects(inst, admin, canary):
    before = snapshot(inst)
    for raw in ("[]", "\"text\"", "42", "null"):
        resp = inst.post(RLS, data=raw, headers={**admin.headers, "Content-Type": "application/json"})
        assert assert_error(resp, 400)["code"] in ("VALIDATION_FAILED", "INVALID_JSON"), raw
    resp = inst.post(RLS, data="{\"table_name\": ", headers={**admin.headers, "Content-Type": "application/json"})
    assert_error(resp, 400, "INVALID_JSON")
    big = json.dumps({"table_name": "canary", "policy_name": "p", "policy": "true", "pad": "x" * (2 << 20)})
    for method, path in (("POST", RLS), ("PUT", perms_path("public")), ("POST", OWNERSHIP)):
        resp = inst.request(method, path, data=big, headers={**admin.headers, "Content-Type": "application/json"})
        assert_error(resp, 413, "PAYLOAD_TOO_LARGE")
        resp = inst.request(method, path, data="{\"role\": [", headers={**admin.headers,
                                                                        "Content-Type": "application/json"})
        assert_error(resp, 400, "INVALID_JSON")
        resp = inst.request(method, path, data="[1]", headers={**admin.headers, "Content-Type": "application/json"})
        assert_error(resp, 400, "VALIDATION_FAILED")
    canary_alive(inst)
    assert snapshot(inst) == before


# ---- schema permissions ----

def schema_privs(inst, role, schema):
    return [p for p in ("USAGE", "CREATE") if scalar(inst, "SELECT has_schema_privilege(%s, %s, %s)",
                                                       (role, schema, p))]


def own_schema_grants(inst, role, schema):
    """The privileges granted to role itself on schema (not through PUBLIC)."""
    rows = sql(inst, "SELECT a.privilege_type FROM pg_namespace n, aclexplode(n.nspacl) a"
                     " WHERE n.nspname = %s AND a.grantee = %s::regrole ORDER BY 1 DESC", (schema, role))
    return [r[0] for r in rows]


TABLE_PRIVS = ["SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER"]


def table_privs(inst, role, table):
    return [p for p in TABLE_PRIVS if scalar(inst, "SELECT has_table_privilege(%s, %s, %s)", (role, table, p))]


def test_schema_permissions_are_exact_and_follow_new_tables(inst, admin):
    schema = unique("sch").lower()
    sql(inst, f"CREATE SCHEMA {schema}")
    a, b = make_table(inst, schema=schema), make_table(inst, schema=schema)
    sql(inst, f"CREATE VIEW {schema}.v_{a} AS SELECT id, body FROM {schema}.{a}")
    role = make_role(inst, "granted")
    out = put_perms(inst, admin, schema, {"role": role, "permissions": ["usage", "SELECT"]})
    assert out["status"] == "success" and out["schema"] == schema and out["role"] == role, out
    assert out["schema_privileges"] == ["USAGE"] and out["table_privileges"] == ["SELECT"], out
    assert out["default_privileges"] == ["SELECT"], out
    assert sorted(out["tables"]) == sorted([a, b, f"v_{a}"]), out
    assert table_privs(inst, role, f"{schema}.v_{a}") == ["SELECT"]
    assert schema_privs(inst, role, schema) == ["USAGE"]
    for t in (a, b):
        assert table_privs(inst, role, f"{schema}.{t}") == ["SELECT"]
    # a table coredb's login creates afterwards follows (default privileges)
    c = make_table(inst, schema=schema)
    assert table_privs(inst, role, f"{schema}.{c}") == ["SELECT"]

    # PUT is exact: what is not listed any more is revoked
    every = ["INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER", "SELECT"]
    out = put_perms(inst, admin, schema, {"role": role, "permissions": ["USAGE", "CREATE"] + every})
    assert out["table_privileges"] == TABLE_PRIVS, out
    for t in (a, b, c, f"v_{a}"):
        assert table_privs(inst, role, f"{schema}.{t}") == TABLE_PRIVS
    out = put_perms(inst, admin, schema, {"role": role, "permissions": ["CREATE", "INSERT", "UPDATE"]})
    assert schema_privs(inst, role, schema) == ["CREATE"]
    for t in (a, b, c, f"v_{a}"):
        assert table_privs(inst, role, f"{schema}.{t}") == ["INSERT", "UPDATE"]
    d = make_table(inst, schema=schema)
    assert table_privs(inst, role, f"{schema}.{d}") == ["INSERT", "UPDATE"]

    out = put_perms(inst, admin, schema, {"role": role, "permissions": []})
    assert out["schema_privileges"] == [] and out["table_privileges"] == [], out
    assert schema_privs(inst, role, schema) == []
    for t in (a, b, c, d):
        assert table_privs(inst, role, f"{schema}.{t}") == []
    e = make_table(inst, schema=schema)
    assert table_privs(inst, role, f"{schema}.{e}") == []
    assert scalar(inst, "SELECT count(*) FROM pg_default_acl WHERE defaclnamespace = %s::regnamespace"
                        " AND defaclacl::text LIKE %s", (schema, f"%{role}=%")) == 0


def test_schema_permissions_on_public_skip_coredbs_tables(inst, admin):
    t = make_table(inst)
    role = make_role(inst, "pubreader")
    out = put_perms(inst, admin, "public", {"role": role, "permissions": ["USAGE", "SELECT"]})
    assert t in out["tables"], out
    for own in ("users", "projects", "content_analysis", "media_assets"):
        assert own not in out["tables"], out
        assert table_privs(inst, role, f"public.{own}") == []
    assert table_privs(inst, role, f"public.{t}") == ["SELECT"]
    put_perms(inst, admin, "public", {"role": role, "permissions": []})
    assert table_privs(inst, role, f"public.{t}") == []


@pytest.mark.parametrize("schema,body,status,field", [
    ("coredb", {"role": "ROLE", "permissions": ["USAGE"]}, 403, "schema_name"),
    ("information_schema", {"role": "ROLE", "permissions": ["USAGE"]}, 403, "schema_name"),
    ("pg_catalog", {"role": "ROLE", "permissions": ["USAGE"]}, 400, "schema_name"),
    ("public; DROP TABLE canary", {"role": "ROLE", "permissions": ["USAGE"]}, 400, "schema_name"),
    ("Public", {"role": "ROLE", "permissions": ["USAGE"]}, 400, "schema_name"),
    ("s" * 64, {"role": "ROLE", "permissions": ["USAGE"]}, 400, "schema_name"),
    ("nosuch_schema_x", {"role": "ROLE", "permissions": ["USAGE"]}, 404, "schema_name"),
    ("public", {"role": "coredb_user", "permissions": ["USAGE"]}, 403, "role"),
    ("public", {"role": "coredb_admin", "permissions": ["USAGE"]}, 403, "role"),
    ("public", {"role": "postgres", "permissions": ["USAGE"]}, 403, "role"),
    ("public", {"role": "nosuch_role_x", "permissions": ["USAGE"]}, 404, "role"),
    ("public", {"role": "x; DROP ROLE y", "permissions": ["USAGE"]}, 400, "role"),
    ("public", {"role": 1, "permissions": ["USAGE"]}, 400, "role"),
    ("public", {"permissions": ["USAGE"]}, 400, "role"),
    ("public", {"role": "ROLE", "permissions": ["ALL"]}, 400, "permissions"),
    ("public", {"role": "ROLE", "permissions": ["SELECT; DROP TABLE canary"]}, 400, "permissions"),
    ("public", {"role": "ROLE", "permissions": "SELECT"}, 400, "permissions"),
    ("public", {"role": "ROLE", "permissions": [None]}, 400, "permissions"),
    ("public", {"role": "ROLE"}, 400, "permissions"),
    ("public", {"role": "ROLE", "permissions": ["USAGE"], "grant_option": True}, 400, "grant_option"),
])
def test_schema_permissions_hostile_input_changes_nothing(inst, admin, canary, schema, body, status, field):
    role = make_role(inst, "victim")
    body = {k: (role if v == "ROLE" else v) for k, v in body.items()}
    before = snapshot(inst)
    check_refused(inst.request("PUT", perms_path(schema), json=body, headers=admin.headers), body, status, field)
    canary_alive(inst)
    assert snapshot(inst) == before


# ---- ownership ----

def owner_of(inst, kind, name):
    q = {"rel": "SELECT pg_get_userbyid(relowner) FROM pg_class WHERE oid = %s::regclass",
         "function": "SELECT pg_get_userbyid(proowner) FROM pg_proc WHERE oid = %s::regprocedure",
         "schema": "SELECT pg_get_userbyid(nspowner) FROM pg_namespace WHERE nspname = %s",
         "database": "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = %s"}[kind]
    return scalar(inst, q, (name,))


def test_ownership_of_every_object_type(inst, admin):
    owner = make_role(inst, "owner")
    schema = unique("own").lower()
    sql(inst, f"CREATE SCHEMA {schema}")
    t = make_table(inst, schema=schema)
    sql(inst, f"CREATE VIEW {schema}.v_{t} AS SELECT id FROM {schema}.{t}")
    sql(inst, f"CREATE SEQUENCE {schema}.seq_{t}")
    sql(inst, f"CREATE FUNCTION {schema}.add_{t}(a integer, b text) RETURNS text LANGUAGE sql"
              f" AS $$ SELECT b || a $$")
    db = inst.pg.create_database("own")
    cases = [("table", f"{schema}.{t}", "rel", f"{schema}.{t}"),
             ("view", f"{schema}.v_{t}", "rel", f"{schema}.v_{t}"),
             ("sequence", f"{schema}.seq_{t}", "rel", f"{schema}.seq_{t}"),
             ("function", f"{schema}.add_{t}(int, text)", "function", f"{schema}.add_{t}(integer, text)"),
             ("schema", schema, "schema", schema),
             ("database", db, "database", db)]
    for object_type, name, kind, canonical in cases:
        previous = owner_of(inst, kind, canonical)
        assert previous != owner
        out = transfer(inst, admin, {"object_type": object_type, "object_name": name, "new_owner": owner})
        assert out["status"] == "success", out
        assert out["object_type"] == object_type and out["new_owner"] == owner, out
        assert out["previous_owner"] == previous, out
        assert owner_of(inst, kind, canonical) == owner, (object_type, name)
    # the table in the default schema by its bare name, and its serial sequence followed it
    t2 = make_table(inst)
    out = transfer(inst, admin, {"object_type": "table", "object_name": t2, "new_owner": owner})
    assert out["object_name"] == f"public.{t2}", out
    assert owner_of(inst, "rel", f"public.{t2}") == owner
    assert owner_of(inst, "rel", f"public.{t2}_id_seq") == owner
    # coredb's login is not left a member of the role it handed objects to
    assert scalar(inst, "SELECT pg_has_role(current_user, %s, 'MEMBER')", (owner,)) is True  # superuser here
    assert sql(inst, "SELECT count(*) FROM pg_auth_members WHERE roleid = %s::regrole", (owner,)) == [(0,)]


@pytest.mark.parametrize("object_type,name", [
    ("table", "users"), ("table", "public.projects"), ("table", "coredb.sessions"),
    ("table", "coredb.audit_log"), ("table", "pg_catalog.pg_class"), ("view", "information_schema.tables"),
    ("view", "pg_catalog.pg_roles"), ("schema", "coredb"), ("schema", "public"),
    ("schema", "information_schema"), ("function", "coredb.current_user_id()"), ("function", "now()"),
    ("function", "pg_catalog.lower(text)"), ("database", "CURRENT"),
])
def test_ownership_of_coredbs_objects_is_403(inst, admin, object_type, name):
    owner = make_role(inst, "thief")
    if name == "CURRENT":
        name = inst.db
    before = snapshot(inst)
    err = assert_error(inst.post(OWNERSHIP, json={"object_type": object_type, "object_name": name,
                                                  "new_owner": owner}, headers=admin.headers), 403, "FORBIDDEN")
    assert err["details"]["field"] == "object_name", err
    assert snapshot(inst) == before


def test_ownership_of_own_sequences_is_403(inst, admin):
    seqs = sql(inst, "SELECT n.nspname || '.' || s.relname FROM pg_class s JOIN pg_namespace n"
                     " ON n.oid = s.relnamespace JOIN pg_depend d ON d.objid = s.oid"
                     " JOIN pg_class t ON t.oid = d.refobjid WHERE s.relkind = 'S' AND d.deptype IN ('a', 'i')"
                     " AND n.nspname = 'coredb'")
    assert seqs, "coredb's migrations own serial sequences"
    owner = make_role(inst, "thief")
    err = assert_error(inst.post(OWNERSHIP, json={"object_type": "sequence", "object_name": seqs[0][0],
                                                  "new_owner": owner}, headers=admin.headers), 403, "FORBIDDEN")
    assert err["details"]["field"] == "object_name", err


@pytest.mark.parametrize("body,status,field", [
    ({"object_type": "table", "object_name": "canary", "new_owner": "coredb_user"}, 403, "new_owner"),
    ({"object_type": "table", "object_name": "canary", "new_owner": "coredb_admin"}, 403, "new_owner"),
    ({"object_type": "table", "object_name": "canary", "new_owner": "postgres"}, 403, "new_owner"),
    ({"object_type": "table", "object_name": "canary", "new_owner": "coredb_lease_1"}, 403, "new_owner"),
    ({"object_type": "table", "object_name": "canary", "new_owner": "nosuch_role_x"}, 404, "new_owner"),
    ({"object_type": "table", "object_name": "canary", "new_owner": "x; DROP ROLE y"}, 400, "new_owner"),
    ({"object_type": "table", "object_name": "canary", "new_owner": ["r"]}, 400, "new_owner"),
    ({"object_type": "table", "object_name": "canary"}, 400, "new_owner"),
    ({"object_type": "TABLE", "object_name": "canary", "new_owner": "OWNER"}, 400, "object_type"),
    ({"object_type": "type", "object_name": "canary", "new_owner": "OWNER"}, 400, "object_type"),
    ({"object_type": "table; DROP TABLE canary", "object_name": "canary", "new_owner": "OWNER"}, 400,
     "object_type"),
    ({"object_name": "canary", "new_owner": "OWNER"}, 400, "object_type"),
    ({"object_type": "table", "object_name": "canary; DROP TABLE canary", "new_owner": "OWNER"}, 404,
     "object_name"),
    ({"object_type": "table", "object_name": "canary\u0000", "new_owner": "OWNER"}, 400, "object_name"),
    ({"object_type": "view", "object_name": "canary", "new_owner": "OWNER"}, 404, "object_name"),
    ({"object_type": "sequence", "object_name": "canary", "new_owner": "OWNER"}, 404, "object_name"),
    ({"object_type": "table", "object_name": 3, "new_owner": "OWNER"}, 400, "object_name"),
    ({"object_type": "table", "new_owner": "OWNER"}, 400, "object_name"),
    ({"object_type": "function", "object_name": "f(integer); DROP TABLE canary", "new_owner": "OWNER"}, 400,
     "object_name"),
    ({"object_type": "function", "object_name": "nosuch_fn_x(integer)", "new_owner": "OWNER"}, 404,
     "object_name"),
    ({"object_type": "function", "object_name": "((((", "new_owner": "OWNER"}, 400, "object_name"),
    ({"object_type": "function", "object_name": "f" * 2000, "new_owner": "OWNER"}, 400, "object_name"),
    ({"object_type": "schema", "object_name": "public; DROP TABLE canary", "new_owner": "OWNER"}, 400,
     "object_name"),
    ({"object_type": "schema", "object_name": "nosuch_schema_x", "new_owner": "OWNER"}, 404, "object_name"),
    ({"object_type": "database", "object_name": "template1", "new_owner": "OWNER"}, 403, "object_name"),
    ({"object_type": "database", "object_name": "nosuch_db_x", "new_owner": "OWNER"}, 404, "object_name"),
    ({"object_type": "table", "object_name": "canary", "new_owner": "OWNER", "cascade": True}, 400, "cascade"),
])
def test_ownership_hostile_input_changes_nothing(inst, admin, canary, body, status, field):
    owner = make_role(inst, "victim")
    body = {k: (owner if v == "OWNER" else v) for k, v in body.items()}
    before = snapshot(inst)
    check_refused(inst.post(OWNERSHIP, json=body, headers=admin.headers), body, status, field)
    canary_alive(inst)
    assert snapshot(inst) == before


# ---- the shared hostile-name corpus (hostile.py) over every identifier field ----

def check_hostile(resp, value, field, in_body=True):
    """A 400 (or a 404 where the name is looked up in the catalog) naming field, without SQL; a NUL in
    a JSON body is INVALID_JSON (jansson refuses it before any field is read)."""
    assert resp.status_code in (400, 404), resp.text[:500]
    err = assert_error(resp, resp.status_code)
    no_sql_in(err)
    if in_body and isinstance(value, str) and "\u0000" in value:
        assert err["code"] == "INVALID_JSON", err
        return
    assert err["code"] == ("VALIDATION_FAILED" if resp.status_code == 400 else "NOT_FOUND"), err
    assert err["details"].get("field") == field, err


def refused_whole(inst, before, resp, value, field, in_body=True):
    check_hostile(resp, value, field, in_body)
    canary_alive(inst)
    assert snapshot(inst) == before


@pytest.mark.parametrize("value", [v for v in HOSTILE_NAMES if v])
def test_hostile_schema_path_changes_nothing(inst, admin, canary, value):
    role = make_role(inst, "victim")
    before = snapshot(inst)
    resp = inst.request("PUT", perms_path(value), json={"role": role, "permissions": ["USAGE"]},
                        headers=admin.headers)
    refused_whole(inst, before, resp, value, "schema_name", in_body=False)


def test_empty_schema_path_matches_no_route(inst, admin, canary):
    before = snapshot(inst)
    resp = inst.request("PUT", perms_path(""), json={"role": "nobody_x", "permissions": ["USAGE"]},
                        headers=admin.headers)
    assert resp.status_code in (400, 404, 405), resp.text
    no_sql_in(assert_error(resp, resp.status_code))
    assert snapshot(inst) == before


@pytest.mark.parametrize("value", HOSTILE_NAMES + WRONG_TYPES)
def test_hostile_schema_permission_role_changes_nothing(inst, admin, canary, value):
    before = snapshot(inst)
    resp = inst.request("PUT", perms_path("public"), json={"role": value, "permissions": ["USAGE"]},
                        headers=admin.headers)
    refused_whole(inst, before, resp, value, "role")


@pytest.mark.parametrize("value", HOSTILE_NAMES + WRONG_TYPES)
def test_hostile_new_owner_changes_nothing(inst, admin, canary, value):
    before = snapshot(inst)
    resp = inst.post(OWNERSHIP, json={"object_type": "table", "object_name": "canary", "new_owner": value},
                     headers=admin.headers)
    refused_whole(inst, before, resp, value, "new_owner")


@pytest.mark.parametrize("object_type", ["table", "view", "sequence", "function", "schema", "database"])
@pytest.mark.parametrize("value", HOSTILE_NAMES + WRONG_TYPES)
def test_hostile_object_name_changes_nothing(inst, admin, canary, object_type, value):
    owner = make_role(inst, "victim")
    before = snapshot(inst)
    resp = inst.post(OWNERSHIP, json={"object_type": object_type, "object_name": value, "new_owner": owner},
                     headers=admin.headers)
    refused_whole(inst, before, resp, value, "object_name")


@pytest.mark.parametrize("value", HOSTILE_NAMES + WRONG_TYPES[1:])
def test_hostile_rls_roles_change_nothing(inst, admin, canary, value):
    before = snapshot(inst)
    resp = inst.post(RLS, json={"table_name": "canary", "policy_name": "p", "policy": "true", "roles": [value]},
                     headers=admin.headers)
    refused_whole(inst, before, resp, value, "roles")


# ---- who may call ----

def route_calls():
    return [("POST", RLS, {"table_name": "canary", "policy_name": "p", "policy": "true"}),
            ("PUT", perms_path("public"), {"role": "nobody_x", "permissions": ["USAGE"]}),
            ("POST", OWNERSHIP, {"object_type": "table", "object_name": "canary", "new_owner": "nobody_x"})]


def test_every_route_is_admin_only(inst, admin, canary):
    u, p = user(inst), premium(inst, admin)
    expired = craft(live_claims(admin.token, exp=int(time.time()) - 60, iat=int(time.time()) - 120,
                                nbf=int(time.time()) - 120))
    forged = craft(live_claims(admin.token), secret="not-the-secret")
    before = snapshot(inst)
    for method, path, body in route_calls():
        assert_error(inst.request(method, path, json=body), 401)
        assert_error(inst.request(method, path, json=body, headers=bearer(expired)), 401)
        assert_error(inst.request(method, path, json=body, headers=bearer(forged)), 401)
        assert_error(inst.request(method, path, json=body, headers=bearer("garbage")), 401)
        for acct in (u, p):
            assert_error(inst.request(method, path, json=body, headers=acct.headers), 403, "FORBIDDEN")
    canary_alive(inst)
    assert snapshot(inst) == before


# ---- command line ----

def cli(inst, *args):
    proc = run_cli(["admin", *args], cli_env(inst))
    # under `make san` a leak or undefined behaviour of a one-shot command shows here
    assert "Sanitizer" not in proc.stderr and "runtime error:" not in proc.stderr, proc.stderr[-3000:]
    return proc


def test_cli_verbs(inst, canary):
    t = make_table(inst)
    proc = cli(inst, "rls", t, "cli_policy", "--using", "label = 'x'", "--role", "coredb_premium",
               "--command", "UPDATE", "--force", "--json")
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    out = json.loads(proc.stdout)
    assert out["status"] == "success" and out["policy"] == "cli_policy", out
    assert [(r[0], r[2], r[3], r[4]) for r in policy_rows(inst, t)] == [
        ("cli_policy", ["coredb_premium"], "UPDATE", "(label = 'x'::text)")]
    assert rowsec(inst, t) == (True, True)
    proc = cli(inst, "rls", t, "cli_policy", "--using", "true", "--json")
    assert proc.returncode == 1 and json.loads(proc.stdout)["error"]["code"] == "CONFLICT", proc
    proc = cli(inst, "rls", t, "cli_policy", "--using", "true", "--replace", "--json")
    assert proc.returncode == 0, proc
    proc = cli(inst, "rls", "canary", "evil", "--using", "true) OR (true", "--json")
    assert proc.returncode == 1 and json.loads(proc.stdout)["error"]["code"] == "VALIDATION_FAILED", proc
    canary_alive(inst)

    role = make_role(inst, "clirole")
    proc = cli(inst, "schema-permissions", "public", "--role", role, "--permission", "USAGE",
               "--permission", "SELECT", "--json")
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert schema_privs(inst, role, "public") == ["USAGE"]
    assert table_privs(inst, role, f"public.{t}") == ["SELECT"]
    assert own_schema_grants(inst, role, "public") == ["USAGE"]
    proc = cli(inst, "schema-permissions", "public", "--role", role, "--json")   # none: revoke all
    assert proc.returncode == 0, proc
    # (PUBLIC keeps USAGE on schema public: has_schema_privilege would still say yes)
    assert own_schema_grants(inst, role, "public") == [] and table_privs(inst, role, f"public.{t}") == []

    proc = cli(inst, "ownership", "table", t, "--to", role, "--json")
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert json.loads(proc.stdout)["previous_owner"] == "postgres"
    assert owner_of(inst, "rel", f"public.{t}") == role
    proc = cli(inst, "ownership", "table", "users", "--to", role, "--json")
    assert proc.returncode == 1 and json.loads(proc.stdout)["error"]["code"] == "FORBIDDEN", proc
    # human output
    proc = cli(inst, "ownership", "table", t, "--to", role)
    assert proc.returncode == 0 and "new_owner" in proc.stdout, proc


@pytest.mark.parametrize("args", [
    ["rls"], ["rls", "t"], ["rls", "t", "p"], ["rls", "t", "p", "--using"], ["rls", "t", "p", "x", "--using", "e"],
    ["rls", "t", "p", "--using", "e", "--bogus"], ["schema-permissions"], ["schema-permissions", "s"],
    ["schema-permissions", "s", "--role", "a", "--role", "b"], ["ownership", "table", "t"],
    ["ownership", "table", "--to", "r"], ["ownership", "table", "t", "u", "--to", "r"], ["frobnicate"],
])
def test_cli_usage_errors(args):
    proc = run_cli(["admin", *args, "--json"], {})
    assert "Sanitizer" not in proc.stderr, proc.stderr[-3000:]
    assert proc.returncode == 2, (args, proc)
    assert json.loads(proc.stdout)["error"]["code"] == "VALIDATION_FAILED"


def test_cli_help_names_the_verbs():
    proc = run_cli(["admin", "--help"], {})
    assert proc.returncode == 0, proc
    for verb in ("coredb admin VERB", "rls TABLE POLICY --using EXPR", "schema-permissions SCHEMA --role R",
                 "ownership TYPE NAME --to ROLE"):
        assert verb in proc.stdout, proc.stdout


# ---- audit ----

def audit_rows(inst, action, after_id):
    return sql(inst, "SELECT id, actor, actor_role, target, params, outcome, request_id FROM coredb.audit_log"
                     " WHERE action = %s AND id > %s ORDER BY id", (action, after_id))


def test_audit_entries_for_successes_and_failures(inst, admin, canary):
    start = scalar(inst, "SELECT coalesce(max(id), 0) FROM coredb.audit_log")
    t = make_table(inst)
    role = make_role(inst, "audited")
    rls(inst, admin, {"table_name": t, "policy_name": "aud", "policy": "true"})
    assert_error(inst.post(RLS, json={"table_name": "canary", "policy_name": "aud", "policy": "true) OR (true"},
                           headers=admin.headers), 400, "VALIDATION_FAILED")
    put_perms(inst, admin, "public", {"role": role, "permissions": ["USAGE"]})
    assert_error(inst.request("PUT", perms_path("coredb"), json={"role": role, "permissions": ["USAGE"]},
                              headers=admin.headers), 403, "FORBIDDEN")
    transfer(inst, admin, {"object_type": "table", "object_name": t, "new_owner": role})
    assert_error(inst.post(OWNERSHIP, json={"object_type": "table", "object_name": "users", "new_owner": role},
                           headers=admin.headers), 403, "FORBIDDEN")

    rows = audit_rows(inst, "rls.create", start)
    assert [(r[3], r[5]) for r in rows] == [(t, "success"), ("canary", "VALIDATION_FAILED")], rows
    assert rows[0][1] == admin.id and rows[0][2] == "admin" and rows[0][6], rows
    assert rows[0][4]["policy"] == "true" and rows[1][4]["policy"] == "true) OR (true", rows
    rows = audit_rows(inst, "schema.permissions", start)
    assert [(r[3], r[5]) for r in rows] == [("public", "success"), ("coredb", "FORBIDDEN")], rows
    assert rows[0][4] == {"role": role, "permissions": ["USAGE"]}, rows
    rows = audit_rows(inst, "ownership.transfer", start)
    assert [(r[3], r[5]) for r in rows] == [(f"public.{t}", "success"), ("users", "FORBIDDEN")], rows
    # the chain still verifies with the entries written inside the operations' transactions
    resp = inst.get("/api/v1/admin/audit/verify", headers=admin.headers)
    assert resp.status_code == 200 and resp.json()["valid"] is True, resp.text


def test_audit_entry_of_the_cli_names_cli(inst):
    start = scalar(inst, "SELECT coalesce(max(id), 0) FROM coredb.audit_log")
    t = make_table(inst)
    proc = run_cli(["admin", "rls", t, "by_cli", "--using", "true", "--json"], cli_env(inst))
    assert proc.returncode == 0, proc
    rows = audit_rows(inst, "rls.create", start)
    assert [(r[1], r[3], r[5]) for r in rows] == [("cli", t, "success")], rows


# ---- ownership under a production login (not a superuser) ----

def test_ownership_with_a_non_superuser_login_borrows_membership_in_one_transaction(pg, redis_server):
    """PostgreSQL 15: ALTER ... OWNER TO needs membership in the new owner. coredb's
    login (made by `coredb setup-sql` without --administration: NOCREATEROLE) cannot
    take it: 503 DATABASE_PRIVILEGE_MISSING naming the fix, and nothing changes. Given CREATEROLE, the membership is granted for the statement and
    revoked in the same transaction: the login is not left a member."""
    import test_defaults_prod as prod
    from conftest import base_env
    from datahelp import admin_env, admin_of
    from servers import Coredb

    tag = time.strftime("%H%M%S") + str(int(time.time() * 1000) % 1000)
    login, db, password = f"cdbown_{tag}", f"cdbowndb_{tag}", f"pw_{tag}"
    prod.run_setup_sql(pg, prod.setup_sql("--role", login, "--database", db, password=password))
    env = base_env(pg, db, None, **admin_env())
    env["DATABASE_URL"] = prod.role_url(pg, login, password, db)
    inst = Coredb(env)
    inst.db, inst.pg = db, pg
    inst.admin_email = env["COREDB_ADMIN_EMAIL"]
    try:
        adm = admin_of(inst)
        owner = f"newowner_{tag}"
        pg.query(db, f"CREATE ROLE {owner} NOLOGIN")
        conn = psycopg2.connect(host="127.0.0.1", port=pg.port, user=login, password=password, dbname=db)
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("CREATE TABLE handed (id int)")
        conn.close()
        members = "SELECT count(*) FROM pg_auth_members WHERE roleid = %s::regrole AND member = %s::regrole"

        body = {"object_type": "table", "object_name": "handed", "new_owner": owner}
        err = assert_error(inst.post(OWNERSHIP, json=body, headers=adm.headers), 503,
                           "DATABASE_PRIVILEGE_MISSING")
        assert "member" in err["message"] and "setup-sql --administration" in err["message"], err
        assert pg.query(db, "SELECT tableowner FROM pg_tables WHERE tablename = 'handed'") == [(login,)]
        assert pg.query(db, members, (owner, login)) == [(0,)]

        pg.query(db, f"ALTER ROLE {login} CREATEROLE")
        # the membership is granted, then ALTER fails (a non-superuser's new owner needs CREATE on
        # the schema): the whole transaction rolls back, grant included
        err = assert_error(inst.post(OWNERSHIP, json=body, headers=adm.headers), 403, "FORBIDDEN")
        assert "member of the new owner" not in err["message"] and err["details"].get("sqlstate") == "42501", err
        assert pg.query(db, "SELECT tableowner FROM pg_tables WHERE tablename = 'handed'") == [(login,)]
        assert pg.query(db, members, (owner, login)) == [(0,)]

        put_perms(inst, adm, "public", {"role": owner, "permissions": ["USAGE", "CREATE"]})
        out = transfer(inst, adm, body)
        assert out["previous_owner"] == login and out["new_owner"] == owner, out
        assert pg.query(db, "SELECT tableowner FROM pg_tables WHERE tablename = 'handed'") == [(owner,)]
        assert pg.query(db, members, (owner, login)) == [(0,)]
        # the login's own objects stay protected under this login too
        assert_error(inst.post(OWNERSHIP, json={"object_type": "table", "object_name": "users",
                                                "new_owner": owner}, headers=adm.headers), 403, "FORBIDDEN")
        assert_error(inst.post(OWNERSHIP, json={"object_type": "table", "object_name": "handed",
                                                "new_owner": login}, headers=adm.headers), 403, "FORBIDDEN")
    finally:
        inst.stop_clean()


def test_concurrent_schema_permissions_serialize(inst, admin):
    """Parallel PUTs on one schema each take effect whole: the last one's list is the state."""
    from concurrent.futures import ThreadPoolExecutor
    schema = unique("par").lower()
    sql(inst, f"CREATE SCHEMA {schema}")
    tables = [make_table(inst, schema=schema) for _ in range(3)]
    roles = [make_role(inst, "par") for _ in range(3)]
    lists = [["USAGE", "SELECT"], ["USAGE", "INSERT"], ["CREATE", "DELETE"]]

    def put(i):
        return inst.request("PUT", perms_path(schema), json={"role": roles[i % 3], "permissions": lists[i % 3]},
                            headers=admin.headers)

    with ThreadPoolExecutor(3) as pool:   # within DB_POOL_MAX=5 (the pool answers 503 beyond it)
        answers = list(pool.map(put, range(12)))
    assert [r.status_code for r in answers] == [200] * 12, [r.text for r in answers if r.status_code != 200]
    for role, wanted in zip(roles, lists):
        for t in tables:
            assert table_privs(inst, role, f"{schema}.{t}") == [p for p in TABLE_PRIVS if p in wanted]


def test_concurrent_transfers_and_policies_all_succeed(inst, admin):
    """Parallel transfers of one schema to alternating owners and parallel replaces of one
    policy: every call answers 200 (no "tuple concurrently updated" 500) and the end state is
    one of the requested ones."""
    from concurrent.futures import ThreadPoolExecutor
    schema = unique("cc").lower()
    sql(inst, f"CREATE SCHEMA {schema}")
    owners = [make_role(inst, "cc"), make_role(inst, "cc")]
    t = make_table(inst)

    def call(i):
        if i % 2:
            return inst.post(OWNERSHIP, json={"object_type": "schema", "object_name": schema,
                                              "new_owner": owners[i % 4 // 2]}, headers=admin.headers)
        return inst.post(RLS, json={"table_name": t, "policy_name": "cc", "policy": f"id <> {i}",
                                    "replace": True}, headers=admin.headers)

    with ThreadPoolExecutor(3) as pool:   # within DB_POOL_MAX=5
        answers = list(pool.map(call, range(12)))
    assert [r.status_code for r in answers] == [200] * 12, [r.text for r in answers if r.status_code != 200]
    assert owner_of(inst, "schema", schema) in owners
    rows = policy_rows(inst, t)
    assert len(rows) == 1 and rows[0][0] == "cc", rows
