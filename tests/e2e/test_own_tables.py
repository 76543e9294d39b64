"""An application's own tables through the data API (issue 18, item 2).

A table created by the application (here straight through psycopg2, as a
migration would) answers 404 UNKNOWN_TABLE even to an admin until it is
exposed. `POST /api/v1/admin/tables/{name}/expose` (and `coredb table
expose`) grants the three application roles, enables row-level security and
creates the admin, rows and own-rows policies in one transaction: a user's
insert without user_id then owns the row, another user sees none of it and
cannot write a row in someone else's name (403 naming the rule), read-only
roles read but do not write, `unexpose` takes it all back. Hostile names
(SQL, quotes, catalogs, other schemas, coredb's own tables) change nothing.
GET /api/v1/data/tables lists what a caller may use; `coredb table list`
lists the whole schema for the operator; `coredb migrate new` shows the
same statements commented."""
import json
import re
import os
import urllib.parse

import pytest

from datahelp import (admin_of, assert_error, pg_insert, pg_update, premium, query, query_ok,
                      scalar, start_instance, tx_fail, tx_ok, user, wait_for)
from identity import cli_env, unique
from servers import COREDB_BIN, run_cli, scratch_dir

# the module fixtures inst, admin and rds (conftest.py) use this Redis database
REDIS_DB = 12

ROLES = ["coredb_admin", "coredb_user", "coredb_premium"]
PRIVS = ["SELECT", "INSERT", "UPDATE", "DELETE"]


def expose_path(name, action="expose"):
    return f"/api/v1/admin/tables/{urllib.parse.quote(name, safe='')}/{action}"


def create_notes(inst, name=None, owner_type="uuid"):
    """A table as an application's migration would create it: no grants, no RLS."""
    name = name or unique("notes")
    inst.pg.query(inst.db, f"CREATE TABLE {name} (id bigserial PRIMARY KEY, user_id {owner_type},"
                           f" body text NOT NULL, label text)")
    return name


def expose(inst, admin, name, body=None, status=200):
    kw = {"json": body} if body is not None else {}
    resp = inst.post(expose_path(name), headers=admin.headers, **kw)
    assert resp.status_code == status, resp.text
    return resp.json()


def unexpose(inst, admin, name):
    resp = inst.post(expose_path(name, "unexpose"), headers=admin.headers)
    assert resp.status_code == 200, resp.text
    return resp.json()


def privileges(inst, table):
    """{role: [privileges]} from PostgreSQL itself."""
    out = {}
    for role in ROLES:
        out[role] = [p for p in PRIVS
                     if scalar(inst, "SELECT has_table_privilege(%s, %s, %s)", (role, table, p))]
    return out


def policies(inst, table):
    rows = inst.pg.query(inst.db, "SELECT polname, polpermissive FROM pg_policy "
                                  "WHERE polrelid = %s::regclass ORDER BY polname", (table,))
    return [(r[0], r[1]) for r in rows]


def rls(inst, table):
    return scalar(inst, "SELECT relrowsecurity FROM pg_class WHERE oid = %s::regclass", (table,))


def state(inst):
    """What a hostile call must not change: every table's grants, RLS and
    policies in the schemas involved, the roles, the default of columns."""
    rows = inst.pg.query(
        inst.db,
        "SELECT n.nspname || '.' || c.relname, coalesce(c.relacl::text, ''), c.relrowsecurity,"
        " (SELECT string_agg(polname, ',' ORDER BY polname) FROM pg_policy WHERE polrelid = c.oid),"
        " (SELECT string_agg(a.attname || '=' || pg_get_expr(d.adbin, d.adrelid), ',' ORDER BY a.attname)"
        "    FROM pg_attrdef d JOIN pg_attribute a ON a.attrelid = d.adrelid AND a.attnum = d.adnum"
        "   WHERE d.adrelid = c.oid)"
        " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname IN ('public', 'coredb', 'other') AND c.relkind IN ('r', 'p')"
        " ORDER BY 1")
    roles = inst.pg.query(inst.db, "SELECT count(*) FROM pg_roles")[0][0]
    return rows, roles


def select(table, **extra):
    body = {"database": "postgresql", "query_type": "select", "table": table}
    body.update(extra)
    return body


# ---- before: invisible ----

def test_a_new_table_is_invisible_until_exposed(inst, admin):
    name = create_notes(inst)
    for acct in (admin, user(inst)):
        err = assert_error(query(inst, acct, select(name)), 404, "UNKNOWN_TABLE")
        assert err["details"]["table"] == name, err
    listed = inst.get("/api/v1/data/tables", headers=admin.headers).json()
    assert name not in [t["name"] for t in listed["tables"]], listed


# ---- the walk-through ----

def test_expose_then_own_rows_only(inst, admin):
    name = create_notes(inst)
    out = expose(inst, admin, name)
    assert out["status"] == "success" and out["error"] is None, out
    assert out["table"] == name and out["exposed"] is True, out
    assert out["owner_column"] == "user_id" and out["owner_default"] == "set", out
    assert out["grants"] == {r: PRIVS for r in ("user", "premium", "admin")}, out
    assert sorted(out["policies"]) == ["coredb_admin", "coredb_own_user_id", "coredb_rows"], out
    # PostgreSQL agrees
    assert privileges(inst, name) == {r: PRIVS for r in ROLES}
    assert rls(inst, name) is True
    assert policies(inst, name) == [("coredb_admin", True), ("coredb_own_user_id", False),
                                    ("coredb_rows", True)]

    a, b = user(inst), user(inst)
    # at once (no wait): A inserts without user_id and owns the row
    res = tx_ok(inst, a, [pg_insert(name, {"body": "a's note"}, returning=["id", "user_id"])])
    row, = res["results"][0]["data"]["rows"]
    assert row["user_id"] == a.id, res
    assert scalar(inst, f"SELECT user_id::text FROM {name} WHERE body = 'a''s note'") == a.id
    assert query_ok(inst, a, select(name))["data"][0]["body"] == "a's note"

    # B sees nothing of A's rows, and cannot change them
    assert query_ok(inst, b, select(name))["data"] == []
    res = tx_ok(inst, b, [pg_update(name, {"user_id": a.id}, {"label": "b was here"})])
    assert res["results"][0]["data"]["count"] == 0, res
    assert scalar(inst, f"SELECT count(*) FROM {name} WHERE label IS NOT NULL") == 0

    # B writing a row in A's name: 403 naming the rule, nothing written
    err = tx_fail(inst, b, [pg_insert(name, {"body": "forged", "user_id": a.id})], 403, "FORBIDDEN",
                  operation=1)
    assert "user_id must be your own" in err["message"], err
    assert err["details"]["field"] == "user_id", err
    assert scalar(inst, f"SELECT count(*) FROM {name} WHERE body = 'forged'") == 0
    # ... nor move its own row to A
    tx_ok(inst, b, [pg_insert(name, {"body": "b's note"})])
    err = tx_fail(inst, b, [pg_update(name, {"body": "b's note"}, {"user_id": a.id})], 403, "FORBIDDEN")
    assert "user_id must be your own" in err["message"], err

    # admin sees every row
    bodies = sorted(r["body"] for r in query_ok(inst, admin, select(name))["data"])
    assert bodies == ["a's note", "b's note"]


def test_read_only_for_premium(inst, admin):
    name = create_notes(inst)
    out = expose(inst, admin, name, {"read_only_for": ["premium"]})
    assert out["read_only_for"] == ["premium"] and out["grants"]["premium"] == ["SELECT"], out
    assert privileges(inst, name) == {"coredb_admin": PRIVS, "coredb_user": PRIVS,
                                      "coredb_premium": ["SELECT"]}
    p = premium(inst, admin)
    inst.pg.query(inst.db, f"INSERT INTO {name} (user_id, body) VALUES (%s, 'p row')", (p.id,))
    assert [r["body"] for r in query_ok(inst, p, select(name))["data"]] == ["p row"]
    tx_fail(inst, p, [pg_insert(name, {"body": "nope"})], 403, "FORBIDDEN")
    assert scalar(inst, f"SELECT count(*) FROM {name} WHERE body = 'nope'") == 0
    u = user(inst)
    tx_ok(inst, u, [pg_insert(name, {"body": "user may"})])
    # GET /data/tables tells each what it may do
    for acct, can_insert in ((p, False), (u, True)):
        tables = {t["name"]: t for t in inst.get("/api/v1/data/tables", headers=acct.headers).json()["tables"]}
        assert tables[name]["read"] is True and tables[name]["insert"] is can_insert, tables[name]


def test_expose_is_idempotent_and_unexpose_reverses_it(inst, admin):
    name = create_notes(inst)
    first = expose(inst, admin, name)
    before = (privileges(inst, name), policies(inst, name), rls(inst, name))
    second = expose(inst, admin, name)
    assert second["policies"] == first["policies"] and second["grants"] == first["grants"]
    assert (privileges(inst, name), policies(inst, name), rls(inst, name)) == before
    u = user(inst)
    tx_ok(inst, u, [pg_insert(name, {"body": "x"})])

    out = unexpose(inst, admin, name)
    assert out["status"] == "success" and out["exposed"] is False, out
    for acct in (admin, u):
        assert_error(query(inst, acct, select(name)), 404, "UNKNOWN_TABLE")
    assert privileges(inst, name) == {r: [] for r in ROLES}
    seq = f"{name}_id_seq"
    for role in ROLES:
        assert not scalar(inst, "SELECT has_sequence_privilege(%s, %s, 'USAGE')", (role, seq))
    assert rls(inst, name) is False and policies(inst, name) == []
    assert scalar(inst, "SELECT column_default FROM information_schema.columns "
                        "WHERE table_name = %s AND column_name = 'user_id'", (name,)) is None
    # the rows stay
    assert scalar(inst, f"SELECT count(*) FROM {name}") == 1
    # unexpose again: still fine
    unexpose(inst, admin, name)


def test_owner_default_of_its_own_is_kept(inst, admin):
    name = unique("notes")
    inst.pg.query(inst.db, f"CREATE TABLE {name} (id serial PRIMARY KEY,"
                           " owner uuid DEFAULT '00000000-0000-0000-0000-000000000001', body text)")
    out = expose(inst, admin, name, {"owner_column": "owner"})
    assert out["owner_column"] == "owner" and out["owner_default"] == "kept", out
    assert ("coredb_own_owner", False) in policies(inst, name)
    u = user(inst)
    err = tx_fail(inst, u, [pg_insert(name, {"body": "x"})], 403, "FORBIDDEN")
    assert "owner must be your own" in err["message"], err
    unexpose(inst, admin, name)
    assert scalar(inst, "SELECT column_default FROM information_schema.columns "
                        "WHERE table_name = %s AND column_name = 'owner'", (name,)) is not None


def test_seen_at_once_without_the_event_trigger(pg):
    """Without the event trigger (a database role that is not a superuser)
    no NOTIFY comes, and the periodic reload is 30 s away: the instance that
    exposed the table reloads its catalog itself."""
    own = start_instance(pg)
    try:
        own.pg.query(own.db, "DROP EVENT TRIGGER coredb_catalog_change")
        adm = admin_of(own)
        name = create_notes(own)
        u = user(own)
        expose(own, adm, name)
        tx_ok(own, u, [pg_insert(name, {"body": "at once"})])
        assert [r["body"] for r in query_ok(own, u, select(name))["data"]] == ["at once"]
        unexpose(own, adm, name)
        assert_error(query(own, u, select(name)), 404, "UNKNOWN_TABLE")
    finally:
        own.stop_clean()


def test_a_name_that_needs_quoting_works(inst, admin):
    """Identifiers are quoted, not refused for looking odd: a table and an
    owner column whose names need quotes are exposed and used."""
    name, owner = 'Odd "Notes" ' + unique("t"), "Owner Id"
    inst.pg.query(inst.db, 'CREATE TABLE "%s" (id serial PRIMARY KEY, "%s" uuid, body text)'
                  % (name.replace('"', '""'), owner))
    out = expose(inst, admin, name, {"owner_column": owner})
    assert out["table"] == name and ("coredb_own_" + owner) in out["policies"], out
    u = user(inst)
    tx_ok(inst, u, [pg_insert(name, {"body": "quoted"})])
    assert query_ok(inst, u, select(name))["data"][0][owner] == u.id
    unexpose(inst, admin, name)


# ---- who may ----

def test_only_admin_may_expose(inst, admin):
    name = create_notes(inst)
    before = state(inst)
    for acct in (user(inst), premium(inst, admin)):
        for action in ("expose", "unexpose"):
            assert_error(inst.post(expose_path(name, action), headers=acct.headers), 403, "FORBIDDEN")
        assert_error(inst.get("/api/v1/admin/tables", headers=acct.headers), 403, "FORBIDDEN")
    for action in ("expose", "unexpose"):
        assert_error(inst.post(expose_path(name, action)), 401, "UNAUTHORIZED")
    assert_error(inst.get("/api/v1/admin/tables"), 401, "UNAUTHORIZED")
    assert_error(inst.get("/api/v1/data/tables"), 401, "UNAUTHORIZED")
    assert state(inst) == before


# ---- hostile names and options ----

@pytest.fixture(scope="module")
def other_schema(inst):
    inst.pg.query(inst.db, "CREATE SCHEMA IF NOT EXISTS other")
    inst.pg.query(inst.db, "CREATE TABLE IF NOT EXISTS other.secret (id int, user_id uuid)")
    inst.pg.query(inst.db, "CREATE TABLE IF NOT EXISTS x (id int)")
    return "other.secret"


@pytest.mark.parametrize("name,code", [
    ("notes; DROP TABLE x", "UNKNOWN_TABLE"),
    ('"x"', "UNKNOWN_TABLE"),
    ("x\"; DROP TABLE x; --", "UNKNOWN_TABLE"),
    ("pg_authid", "UNKNOWN_TABLE"),
    ("coredb.sessions", "UNKNOWN_TABLE"),
    ("sessions", "UNKNOWN_TABLE"),
    ("schema_migrations", "UNKNOWN_TABLE"),
    ("other.secret", "UNKNOWN_TABLE"),
    ("secret", "UNKNOWN_TABLE"),
    ("no_such_table", "UNKNOWN_TABLE"),
    ("a" * 200, "UNKNOWN_TABLE"),
    ("users", "CONFLICT"),
    ("projects", "CONFLICT"),
])
def test_hostile_names_change_nothing(inst, admin, other_schema, name, code):
    before = state(inst)
    status = 409 if code == "CONFLICT" else 404
    for action in ("expose", "unexpose"):
        err = assert_error(inst.post(expose_path(name, action), headers=admin.headers), status, code)
        assert err["details"]["table"] == name, err
    assert state(inst) == before
    assert scalar(inst, "SELECT to_regclass('public.x') IS NOT NULL")


@pytest.mark.parametrize("body,field,named", [
    ({"owner_column": "body"}, "owner_column", "body"),
    ({"owner_column": "nope"}, "owner_column", "nope"),
    ({"owner_column": "user_id; DROP TABLE x"}, "owner_column", "user_id; DROP TABLE x"),
    ({"owner_column": 7}, "owner_column", None),
    ({"read_only_for": ["admin"]}, "read_only_for", None),
    ({"read_only_for": "user"}, "read_only_for", None),
    ({"colour": "red"}, "colour", None),
])
def test_bad_options_are_400_naming_them(inst, admin, body, field, named):
    name = create_notes(inst)
    before = state(inst)
    err = assert_error(inst.post(expose_path(name), json=body, headers=admin.headers), 400,
                       "VALIDATION_FAILED")
    assert err["details"]["field"] == field, err
    if named:
        assert named in err["message"], err
    assert state(inst) == before


def test_owner_column_not_uuid(inst, admin):
    name = create_notes(inst, owner_type="text")
    before = state(inst)
    err = assert_error(inst.post(expose_path(name), headers=admin.headers), 400, "VALIDATION_FAILED")
    assert err["details"]["field"] == "owner_column" and "user_id" in err["message"], err
    assert "uuid" in err["message"], err
    assert state(inst) == before


# ---- what a caller may use ----

def test_data_tables_lists_what_the_caller_may_use(inst, admin):
    name = create_notes(inst)
    u = user(inst)
    names = [t["name"] for t in inst.get("/api/v1/data/tables", headers=u.headers).json()["tables"]]
    assert name not in names
    expose(inst, admin, name)
    resp = inst.get("/api/v1/data/tables", headers=u.headers)
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert out["role"] == "user" and out["schema"] == "public", out
    tables = {t["name"]: t for t in out["tables"]}
    t = tables[name]
    assert (t["read"], t["insert"], t["update"], t["delete"]) == (True, True, True, True), t
    cols = {c["name"]: c for c in t["columns"]}
    assert list(cols) == ["id", "user_id", "body", "label"], t
    assert cols["body"]["required"] is True and cols["user_id"]["required"] is False, cols
    assert cols["user_id"]["type"] == "uuid", cols
    # coredb's own tables are not the caller's to use
    for hidden in ("sessions", "schema_migrations", "tx_ledger", "redis_outbox"):
        assert hidden not in tables, sorted(tables)
    users_cols = [c["name"] for c in tables["users"]["columns"]]
    assert "password_hash" not in users_cols, users_cols
    assert tables["users"]["insert"] is False, tables["users"]


# ---- the command line ----

def cli(inst, *args):
    return run_cli(["table", *args], cli_env(inst))


def test_cli_expose_list_unexpose(inst, admin):
    name = create_notes(inst)
    proc = cli(inst, "expose", name, "--read-only-for", "user,premium", "--json")
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    out = json.loads(proc.stdout)
    assert out["status"] == "success" and out["read_only_for"] == ["user", "premium"], out
    assert privileges(inst, name) == {"coredb_admin": PRIVS, "coredb_user": ["SELECT"],
                                      "coredb_premium": ["SELECT"]}
    # the running service sees it (NOTIFY from the event trigger)
    u = user(inst)
    assert wait_for(lambda: query(inst, u, select(name)).status_code == 200)
    tx_fail(inst, u, [pg_insert(name, {"body": "ro"})], 403, "FORBIDDEN")

    proc = cli(inst, "list", "--json")
    assert proc.returncode == 0, proc.stderr
    listed = {t["name"]: t for t in json.loads(proc.stdout)["tables"]}
    assert listed[name]["exposed"] is True and listed[name]["managed"] is True, listed[name]
    assert listed[name]["owner_column"] == "user_id", listed[name]
    assert listed[name]["privileges"]["user"] == ["SELECT"], listed[name]
    assert listed["users"]["managed"] is False and listed["users"]["exposed"] is True
    assert "x" not in listed or listed["x"]["exposed"] is False

    proc = cli(inst, "unexpose", name, "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["exposed"] is False
    assert privileges(inst, name) == {r: [] for r in ROLES}
    assert wait_for(lambda: query(inst, u, select(name)).status_code == 404)

    proc = cli(inst, "list", "--json")
    listed = {t["name"]: t for t in json.loads(proc.stdout)["tables"]}
    assert listed[name]["exposed"] is False and listed[name]["managed"] is False, listed[name]


def test_cli_errors_and_help(inst):
    proc = cli(inst, "expose", "no_such_table", "--json")
    assert proc.returncode == 1, proc
    out = json.loads(proc.stdout)
    assert out["status"] == "error" and out["error"]["code"] == "UNKNOWN_TABLE", out
    for args in (["--help"], ["expose", "--help"], ["list", "-h"]):
        proc = run_cli(["table", *args], {})
        assert proc.returncode == 0, proc
        assert "coredb table expose NAME" in proc.stdout and "--owner-column" in proc.stdout
    for args in ([], ["expose"], ["frobnicate"], ["list", "extra"], ["unexpose", "t", "--owner-column", "c"]):
        proc = run_cli(["table", *args, "--json"], {})
        assert proc.returncode == 2, (args, proc)
        assert json.loads(proc.stdout)["error"]["code"] == "VALIDATION_FAILED"
    proc = run_cli(["--help"], {})  # the command list names it, with its summary
    assert re.search(r"^  table +make a table usable through the data API", proc.stdout, re.M), proc.stdout


def test_migrate_new_template_shows_the_statements(tmp_path):
    proc = run_cli(["migrate", "new", "add_notes", "--json"], {"MIGRATIONS_DIR": str(tmp_path)})
    assert proc.returncode == 0, proc
    path = json.loads(proc.stdout)["created"]
    text = open(path).read()
    lines = text.splitlines()
    assert "-- migrate:up" in lines and "-- migrate:down" in lines
    for stmt in ("GRANT SELECT, INSERT, UPDATE, DELETE ON notes TO coredb_admin, coredb_user, coredb_premium;",
                 "ALTER TABLE notes ENABLE ROW LEVEL SECURITY;",
                 "CREATE POLICY coredb_admin ON notes TO coredb_admin",
                 "CREATE POLICY coredb_own_user_id ON notes AS RESTRICTIVE TO coredb_user, coredb_premium",
                 "USING (user_id = coredb.current_user_id())",
                 "user_id uuid NOT NULL DEFAULT coredb.current_user_id()",
                 "coredb table expose notes"):
        hits = [ln for ln in lines if stmt in ln]
        assert hits, stmt
        assert all(ln.startswith("--") for ln in hits), hits  # commented: the file runs as is
