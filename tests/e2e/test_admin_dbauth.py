"""Database roles and users (issue 10, part 2: seed 000's DatabaseAuth).

POST /api/v1/admin/roles, POST /api/v1/admin/db-users,
PUT /api/v1/admin/db-users/{username}/password and
POST /api/v1/admin/db-users/{username}/revoke, and `coredb admin role` /
`coredb admin db-user`, against the real binary and PostgreSQL. Every
effect is read back from PostgreSQL's catalogs (pg_roles, pg_authid,
pg_auth_members, has_*_privilege, ACLs) or by logging in as the new user
with psycopg2: the connection limit, the SCRAM verifier, the password
change, the end of a revoked user's open session. Hostile names and bodies
change nothing (a canary table and the role count stay), coredb's own roles
are refused, every route is admin only, the audit log records successes
and failures without a password, and a login without CREATEROLE gets an
error naming `coredb setup-sql --administration`."""
import json
import subprocess
import urllib.parse
import uuid

import psycopg2
import pytest

from datahelp import admin_of, premium, scalar, start_instance, user
from hostile import HOSTILE_NAMES, WRONG_TYPES
from identity import assert_error, bearer, cli_env, craft, unique
from servers import COREDB_BIN, Coredb, scratch_dir
from conftest import base_env
from test_defaults_prod import role_url, run_setup_sql, setup_sql

REDIS_DB = 9
PRIVS = ["SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE", "REFERENCES", "TRIGGER"]
PW = "Db-user-pass-" + uuid.uuid4().hex[:8]          # grepped for in the audit log and coredb's log
PW2 = "Db-user-newpass-" + uuid.uuid4().hex[:8]
CANARY = "dbauth_canary"


# ---- helpers ----

def q(inst, sql, params=None):
    return inst.pg.query(inst.db, sql, params)


def role_count(inst):
    return q(inst, "SELECT count(*) FROM pg_roles")[0][0]


def role_row(inst, name):
    rows = q(inst, "SELECT rolcanlogin, rolconnlimit, shobj_description(oid, 'pg_authid') "
                   "FROM pg_roles WHERE rolname = %s", (name,))
    return rows[0] if rows else None


def members_of(inst, name):
    rows = q(inst, "SELECT r.rolname FROM pg_auth_members m JOIN pg_roles r ON r.oid = m.roleid "
                   "JOIN pg_roles u ON u.oid = m.member WHERE u.rolname = %s ORDER BY 1", (name,))
    return [r[0] for r in rows]


def has_table(inst, role, table, priv):
    return scalar(inst, "SELECT has_table_privilege(%s, %s, %s)", (role, f"public.{table}", priv))


def public_tables(inst):
    return [r[0] for r in q(inst, "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                                  "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p', 'v', 'm', 'f')")]


def connect_as(inst, name, password):
    conn = psycopg2.connect(host="127.0.0.1", port=inst.pg.port, user=name, password=password,
                            dbname=inst.db, connect_timeout=5)
    conn.autocommit = True
    return conn


def create_role(inst, admin, body, status=201):
    resp = inst.post("/api/v1/admin/roles", headers=admin.headers, json=body)
    assert resp.status_code == status, resp.text
    return resp.json()


def create_user(inst, admin, body, status=201):
    resp = inst.post("/api/v1/admin/db-users", headers=admin.headers, json=body)
    assert resp.status_code == status, resp.text
    return resp.json()


def user_path(name, action):
    return f"/api/v1/admin/db-users/{urllib.parse.quote(name, safe='')}/{action}"


def change_password(inst, admin, name, body):
    return inst.request("PUT", user_path(name, "password"), headers=admin.headers, json=body)


def revoke(inst, admin, name, body=None):
    kw = {"json": body} if body is not None else {}
    return inst.post(user_path(name, "revoke"), headers=admin.headers, **kw)


def new_role(inst, admin, *permissions, description=None):
    name = unique("r_")
    body = {"role_name": name, "permissions": list(permissions)}
    if description is not None:
        body["description"] = description
    create_role(inst, admin, body)
    return name


def new_user(inst, admin, roles=(), limit=None, password=PW):
    name = unique("u_")
    body = {"username": name, "password": password, "roles": list(roles)}
    if limit is not None:
        body["connection_limit"] = limit
    create_user(inst, admin, body)
    return name


def new_table(inst):
    name = unique("t_")
    q(inst, f"CREATE TABLE {name} (id serial PRIMARY KEY, body text)")
    q(inst, f"INSERT INTO {name} (body) VALUES ('x')")
    return name


# ---- fixtures ----

@pytest.fixture(scope="module")
def inst(pg):
    # password logins over TCP for every role but the superuser (the template cluster trusts
    # every local connection), so that a wrong password is refused; restored afterwards
    hba = pg.query("postgres", "SHOW hba_file")[0][0]
    with open(hba) as f:
        original = f.read()
    with open(hba, "w") as f:
        f.write("host all postgres 127.0.0.1/32 trust\nhost all all 127.0.0.1/32 scram-sha-256\n" + original)
    pg.query("postgres", "SELECT pg_reload_conf()")
    server = start_instance(pg, LOG_LEVEL="debug")
    q(server, f"CREATE TABLE {CANARY} (id int)")
    yield server
    server.stop_clean()
    with open(hba, "w") as f:
        f.write(original)
    pg.query("postgres", "SELECT pg_reload_conf()")


@pytest.fixture(scope="module")
def admin(inst):
    return admin_of(inst)


def assert_400(resp):
    """400 in the error envelope: VALIDATION_FAILED, or INVALID_JSON for what the HTTP layer's
    parser refuses first (a \\u0000 in a string)."""
    err = assert_error(resp, 400)
    assert err["code"] in ("VALIDATION_FAILED", "INVALID_JSON"), err
    return err


def intact(inst, roles_before):
    assert scalar(inst, "SELECT to_regclass(%s) IS NOT NULL", (f"public.{CANARY}",))
    assert role_count(inst) == roles_before


# ---- roles ----

def test_role_with_privileges_on_every_table_and_on_one(inst, admin):
    t1, t2 = new_table(inst), new_table(inst)
    name = unique("r_")
    out = create_role(inst, admin, {"role_name": name, "permissions": ["SELECT", f"insert on {t1}"],
                                    "description": "reporting, read-only (almost)"})
    assert out["status"] == "success" and out["error"] is None and out["timestamp"]
    assert out["role"] == {"name": name, "login": False, "permissions": ["SELECT", f"INSERT ON {t1}"],
                           "description": "reporting, read-only (almost)"}
    assert role_row(inst, name) == (False, -1, "reporting, read-only (almost)")
    tables = public_tables(inst)
    assert t1 in tables and t2 in tables and "users" in tables
    for t in tables:
        assert has_table(inst, name, t, "SELECT"), t
        assert not has_table(inst, name, t, "UPDATE"), t
    assert has_table(inst, name, t1, "INSERT")
    assert not has_table(inst, name, t2, "INSERT")


def test_every_privilege_and_no_description(inst, admin):
    t = new_table(inst)
    name = new_role(inst, admin, *[f"{p} ON {t}" for p in PRIVS])
    for p in PRIVS:
        assert has_table(inst, name, t, p), p
    assert not has_table(inst, name, CANARY, "SELECT")
    assert role_row(inst, name) == (False, -1, None)


@pytest.mark.parametrize("perm", ["TRUNCATE", "TRIGGER", "TRUNCATE ON users", "trigger on users",
                                  "TRIGGER ON {rls}"])
def test_truncate_and_trigger_are_refused_where_row_level_security_applies(inst, admin, perm):
    """TRUNCATE ignores row-level security and a trigger sees every row written (users'
    password hashes): refused on tables that rely on it, allowed elsewhere."""
    rls = new_table(inst)
    q(inst, f"ALTER TABLE {rls} ENABLE ROW LEVEL SECURITY")
    before = role_count(inst)
    name = unique("r_")
    err = assert_error(inst.post("/api/v1/admin/roles", headers=admin.headers,
                                 json={"role_name": name, "permissions": ["SELECT", perm.format(rls=rls)]}),
                       403, "FORBIDDEN")
    table = err["details"]["table"]
    assert "row-level security" in err["message"] and table in err["message"], err
    if " ON " in perm.upper():
        assert table == perm.split()[-1].format(rls=rls)
    assert scalar(inst, "SELECT relrowsecurity FROM pg_class WHERE oid = %s::regclass", (f"public.{table}",))
    assert err["details"]["privilege"] == perm.split()[0].upper()
    assert role_row(inst, name) is None
    intact(inst, before)


def test_truncate_and_trigger_on_a_table_without_row_level_security(inst, admin):
    t = new_table(inst)
    name = new_role(inst, admin, f"TRUNCATE ON {t}", f"TRIGGER ON {t}")
    assert has_table(inst, name, t, "TRUNCATE") and has_table(inst, name, t, "TRIGGER")
    assert not has_table(inst, name, "users", "TRUNCATE") and not has_table(inst, name, "users", "TRIGGER")


def test_existing_role_is_a_conflict(inst, admin):
    name = new_role(inst, admin, "SELECT")
    before = role_count(inst)
    err = assert_error(inst.post("/api/v1/admin/roles", headers=admin.headers,
                                 json={"role_name": name, "permissions": ["INSERT"]}), 409, "CONFLICT")
    assert name in err["message"]
    assert role_count(inst) == before
    assert not has_table(inst, name, CANARY, "INSERT")


@pytest.mark.parametrize("perm,named", [
    ("FLY", "FLY"), ("SELECT;DROP", "SELECT;DROP"), ("ALL", "ALL"),
    ("SELECT ON no_such_table", "no_such_table"), ("SELECT ON users; DROP TABLE x", "users; DROP TABLE x"),
    ("SELECT ON pg_authid", "pg_authid"), ("SELECT ON coredb.sessions", "coredb.sessions"),
])
def test_unknown_privilege_or_table_is_400_naming_it(inst, admin, perm, named):
    before = role_count(inst)
    name = unique("r_")
    err = assert_error(inst.post("/api/v1/admin/roles", headers=admin.headers,
                                 json={"role_name": name, "permissions": ["SELECT", perm]}),
                       400, "VALIDATION_FAILED")
    assert named in err["message"], err
    assert err["details"].get("field") == "permissions"
    assert err["details"].get("table", err["details"].get("privilege")) == named
    assert role_row(inst, name) is None
    intact(inst, before)


@pytest.mark.parametrize("perm", ["\u00e9" * 50, "SELECT ON " + "\u00e9" * 50, "\U0001F600" * 30,
                                  "SELECT ON " + "a\u00e9" * 40, "SELECT ON " + "x" * 5000])
def test_long_multibyte_names_in_permissions_are_400(inst, admin, perm):
    before = role_count(inst)
    err = assert_error(inst.post("/api/v1/admin/roles", headers=admin.headers,
                                 json={"role_name": unique("r_"), "permissions": [perm]}),
                       400, "VALIDATION_FAILED")
    assert err["details"]["field"] == "permissions"
    intact(inst, before)


# ---- db users ----

def test_db_user_logs_in_within_its_connection_limit_with_a_scram_verifier(inst, admin):
    t = new_table(inst)
    reader = new_role(inst, admin, f"SELECT ON {t}")
    name = unique("u_")
    out = create_user(inst, admin, {"username": name, "password": PW, "roles": [reader],
                                    "connection_limit": 2})
    assert out["db_user"] == {"username": name, "login": True, "roles": [reader], "connection_limit": 2}
    assert role_row(inst, name)[:2] == (True, 2)
    assert members_of(inst, name) == [reader]
    verifier = q(inst, "SELECT rolpassword FROM pg_authid WHERE rolname = %s", (name,))[0][0]
    assert verifier.startswith("SCRAM-SHA-256$") and PW not in verifier
    conns = [connect_as(inst, name, PW) for _ in range(2)]
    try:
        with conns[0].cursor() as cur:
            cur.execute(f"SELECT body FROM {t}")
            assert cur.fetchall() == [("x",)]
            with pytest.raises(psycopg2.errors.InsufficientPrivilege):
                cur.execute(f"INSERT INTO {t} (body) VALUES ('no')")
        with pytest.raises(psycopg2.OperationalError, match="too many connections"):
            connect_as(inst, name, PW)
    finally:
        for c in conns:
            c.close()
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        connect_as(inst, name, PW + "x")


def test_default_connection_limit_is_5(inst, admin):
    name = new_user(inst, admin)
    assert role_row(inst, name)[:2] == (True, 5)
    assert members_of(inst, name) == []


def test_password_policy_applies(inst, admin):
    before = role_count(inst)
    for pw in ["short", "", "x" * 2000, "nine-char"]:
        err = assert_error(inst.post("/api/v1/admin/db-users", headers=admin.headers,
                                     json={"username": unique("u_"), "password": pw, "roles": []}),
                           400, "VALIDATION_FAILED")
        assert err["details"]["field"] == "password"
    assert role_count(inst) == before
    name = new_user(inst, admin)
    err = assert_error(change_password(inst, admin, name, {"new_password": "short"}), 400, "VALIDATION_FAILED")
    assert err["details"]["field"] == "new_password"


def test_password_change_old_fails_new_works(inst, admin):
    name = new_user(inst, admin)
    connect_as(inst, name, PW).close()
    before = q(inst, "SELECT rolpassword FROM pg_authid WHERE rolname = %s", (name,))[0][0]
    resp = change_password(inst, admin, name, {"new_password": PW2})
    assert resp.status_code == 200, resp.text
    assert resp.json()["db_user"] == {"username": name, "password_changed": True}
    after = q(inst, "SELECT rolpassword FROM pg_authid WHERE rolname = %s", (name,))[0][0]
    assert after.startswith("SCRAM-SHA-256$") and after != before
    with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
        connect_as(inst, name, PW)
    connect_as(inst, name, PW2).close()
    assert_error(change_password(inst, admin, unique("u_"), {"new_password": PW2}), 404, "NOT_FOUND")


def test_existing_user_is_a_conflict(inst, admin):
    name = new_user(inst, admin)
    assert_error(inst.post("/api/v1/admin/db-users", headers=admin.headers,
                           json={"username": name, "password": PW, "roles": []}), 409, "CONFLICT")


def test_unknown_role_to_grant_is_404_and_nothing_is_created(inst, admin):
    name = unique("u_")
    ghost = unique("r_")
    err = assert_error(inst.post("/api/v1/admin/db-users", headers=admin.headers,
                                 json={"username": name, "password": PW, "roles": [ghost]}), 404, "NOT_FOUND")
    assert ghost in err["message"]
    assert role_row(inst, name) is None


# ---- revoke ----

def test_revoke_some_roles(inst, admin):
    t = new_table(inst)
    r1, r2 = new_role(inst, admin, f"SELECT ON {t}"), new_role(inst, admin, f"INSERT ON {t}")
    name = new_user(inst, admin, [r1, r2])
    assert members_of(inst, name) == sorted([r1, r2])
    resp = revoke(inst, admin, name, {"roles": [r1]})
    assert resp.status_code == 200, resp.text
    assert resp.json()["db_user"]["revoked"]["roles"] == [r1]
    assert members_of(inst, name) == [r2]
    assert role_row(inst, name)[0] is True
    assert not has_table(inst, name, t, "SELECT") and has_table(inst, name, t, "INSERT")
    # not (any more) a member: 400 naming it, nothing changes
    err = assert_error(revoke(inst, admin, name, {"roles": [r1, r2]}), 400, "VALIDATION_FAILED")
    assert r1 in err["message"]
    assert members_of(inst, name) == [r2]
    assert_error(revoke(inst, admin, name, {"roles": []}), 400, "VALIDATION_FAILED")


def test_revoke_everything_ends_its_session_and_its_access(inst, admin):
    t = new_table(inst)
    reader = new_role(inst, admin, f"SELECT ON {t}")
    name = new_user(inst, admin, [reader])
    # privileges granted to it directly, as a DBA might have: table, column, sequence, function,
    # schema, database, default privileges
    q(inst, f"GRANT UPDATE ON {t} TO {name}")
    q(inst, f"GRANT SELECT (id) ON {CANARY} TO {name}")
    q(inst, f"GRANT USAGE ON SEQUENCE {t}_id_seq TO {name}")
    q(inst, "CREATE OR REPLACE FUNCTION dbauth_f(a int) RETURNS int LANGUAGE sql AS 'SELECT a'")
    q(inst, "REVOKE ALL ON FUNCTION dbauth_f(int) FROM PUBLIC")
    q(inst, f"GRANT EXECUTE ON FUNCTION dbauth_f(int) TO {name}")
    q(inst, f"CREATE SCHEMA IF NOT EXISTS dbauth_s")
    q(inst, f"GRANT USAGE, CREATE ON SCHEMA dbauth_s TO {name}")
    q(inst, f'GRANT CONNECT, TEMPORARY ON DATABASE "{inst.db}" TO {name}')
    q(inst, f"ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT ON TABLES TO {name}")
    session = connect_as(inst, name, PW)
    with session.cursor() as cur:
        cur.execute(f"SELECT count(*) FROM {t}")
        assert cur.fetchone() == (1,)
        cur.execute(f"CREATE TABLE dbauth_s.{name}_own (id int)")     # an object it owns

    resp = revoke(inst, admin, name)
    assert resp.status_code == 200, resp.text
    out = resp.json()["db_user"]
    assert out["username"] == name and out["login"] is False
    assert out["revoked"]["roles"] == [reader]
    assert out["revoked"]["privileges"] >= 7
    assert out["remaining_privileges"] == []
    assert out["sessions_ended"] >= 1
    assert out["owned_objects"] == 1          # reported, not reassigned

    # the open session is gone
    with pytest.raises(psycopg2.Error):
        with session.cursor() as cur:
            cur.execute("SELECT 1")
    session.close()
    with pytest.raises(psycopg2.OperationalError, match="not permitted to log in"):
        connect_as(inst, name, PW)
    assert role_row(inst, name)[0] is False
    assert members_of(inst, name) == []
    for table in public_tables(inst):
        for p in PRIVS:
            assert not has_table(inst, name, table, p), (table, p)
    assert not scalar(inst, "SELECT has_column_privilege(%s, %s, 'id', 'SELECT')", (name, CANARY))
    assert not scalar(inst, "SELECT has_sequence_privilege(%s, %s, 'USAGE')", (name, f"{t}_id_seq"))
    assert not scalar(inst, "SELECT has_function_privilege(%s, 'dbauth_f(int)', 'EXECUTE')", (name,))
    assert not scalar(inst, "SELECT has_schema_privilege(%s, 'dbauth_s', 'USAGE')", (name,))
    grants = q(inst, "SELECT count(*) FROM pg_database d, aclexplode(d.datacl) a "
                     "JOIN pg_roles r ON r.oid = a.grantee WHERE d.datname = %s AND r.rolname = %s",
               (inst.db, name))[0][0]
    assert grants == 0
    defaults = q(inst, "SELECT count(*) FROM pg_default_acl d, aclexplode(d.defaclacl) a "
                       "JOIN pg_roles r ON r.oid = a.grantee WHERE r.rolname = %s", (name,))[0][0]
    assert defaults == 0


def test_revoke_unknown_user_is_404(inst, admin):
    assert_error(revoke(inst, admin, unique("u_")), 404, "NOT_FOUND")


# ---- hostile input ----



@pytest.mark.parametrize("value", HOSTILE_NAMES + WRONG_TYPES)
def test_hostile_role_names_change_nothing(inst, admin, value):
    before = role_count(inst)
    resp = inst.post("/api/v1/admin/roles", headers=admin.headers,
                     json={"role_name": value, "permissions": ["SELECT"]})
    err = assert_400(resp)
    assert err["code"] == "INVALID_JSON" or err["details"]["field"] == "role_name"
    intact(inst, before)


@pytest.mark.parametrize("value", HOSTILE_NAMES + WRONG_TYPES)
def test_hostile_usernames_change_nothing(inst, admin, value):
    before = role_count(inst)
    resp = inst.post("/api/v1/admin/db-users", headers=admin.headers,
                     json={"username": value, "password": PW, "roles": []})
    assert_400(resp)
    intact(inst, before)


@pytest.mark.parametrize("value", HOSTILE_NAMES + WRONG_TYPES[1:])
def test_hostile_roles_to_grant_change_nothing(inst, admin, value):
    before = role_count(inst)
    name = unique("u_")
    resp = inst.post("/api/v1/admin/db-users", headers=admin.headers,
                     json={"username": name, "password": PW, "roles": [value]})
    assert_400(resp)
    intact(inst, before)
    assert role_row(inst, name) is None


@pytest.mark.parametrize("value", [v for v in HOSTILE_NAMES if isinstance(v, str) and v and "\u0000" not in v])
def test_hostile_names_in_paths_and_tables_change_nothing(inst, admin, value):
    before = role_count(inst)
    assert 400 <= change_password(inst, admin, value, {"new_password": PW2}).status_code < 500
    assert 400 <= revoke(inst, admin, value).status_code < 500
    err = assert_error(inst.post("/api/v1/admin/roles", headers=admin.headers,
                                 json={"role_name": unique("r_"), "permissions": [f"SELECT ON {value}"]}),
                       400, "VALIDATION_FAILED")
    assert err["details"]["field"] == "permissions"
    intact(inst, before)


@pytest.mark.parametrize("path,method,body", [
    ("/api/v1/admin/roles", "POST", {"permissions": ["SELECT"]}),                         # missing name
    ("/api/v1/admin/roles", "POST", {"role_name": "r_x"}),                               # missing permissions
    ("/api/v1/admin/roles", "POST", {"role_name": "r_x", "permissions": "SELECT"}),
    ("/api/v1/admin/roles", "POST", {"role_name": "r_x", "permissions": [1]}),
    ("/api/v1/admin/roles", "POST", {"role_name": "r_x", "permissions": ["SELECT\u0000"]}),
    ("/api/v1/admin/roles", "POST", {"role_name": "r_x", "permissions": ["SELECT"] * 65}),
    ("/api/v1/admin/roles", "POST", {"role_name": "r_x", "permissions": [], "description": 5}),
    ("/api/v1/admin/roles", "POST", {"role_name": "r_x", "permissions": [], "description": "d" * 2000}),
    ("/api/v1/admin/roles", "POST", {"role_name": "r_x", "permissions": [], "extra": 1}),
    ("/api/v1/admin/roles", "POST", ["r_x"]),
    ("/api/v1/admin/roles", "POST", "r_x"),
    ("/api/v1/admin/db-users", "POST", {"username": "u_x", "roles": []}),                # missing password
    ("/api/v1/admin/db-users", "POST", {"username": "u_x", "password": 12345678901, "roles": []}),
    ("/api/v1/admin/db-users", "POST", {"username": "u_x", "password": PW, "roles": "r"}),
    ("/api/v1/admin/db-users", "POST", {"username": "u_x", "password": PW, "roles": [],
                                        "connection_limit": "5"}),
    ("/api/v1/admin/db-users", "POST", {"username": "u_x", "password": PW, "roles": [],
                                        "connection_limit": 10 ** 12}),
    ("/api/v1/admin/db-users", "POST", {"username": "u_x", "password": PW, "roles": [],
                                        "connection_limit": -5}),
    ("/api/v1/admin/db-users", "POST", {"username": "u_x", "password": PW + "\u0000x", "roles": []}),
    ("/api/v1/admin/db-users", "POST", {"username": "u_x", "password": PW, "roles": [], "superuser": True}),
    ("/api/v1/admin/db-users/u_x/password", "PUT", {}),
    ("/api/v1/admin/db-users/u_x/password", "PUT", {"new_password": None}),
    ("/api/v1/admin/db-users/u_x/password", "PUT", {"password": PW}),
    ("/api/v1/admin/db-users/u_x/revoke", "POST", {"roles": "r"}),
    ("/api/v1/admin/db-users/u_x/revoke", "POST", {"roles": [1]}),
    ("/api/v1/admin/db-users/u_x/revoke", "POST", {"everything": True}),
    ("/api/v1/admin/db-users/u_x/revoke", "POST", [1]),
])
def test_wrong_bodies_are_400(inst, admin, path, method, body):
    before = role_count(inst)
    assert_400(inst.request(method, path, headers=admin.headers, json=body))
    intact(inst, before)


@pytest.mark.parametrize("path,method", [("/api/v1/admin/roles", "POST"), ("/api/v1/admin/db-users", "POST"),
                                         ("/api/v1/admin/db-users/u_x/password", "PUT"),
                                         ("/api/v1/admin/db-users/u_x/revoke", "POST")])
def test_malformed_and_oversized_json(inst, admin, path, method):
    before = role_count(inst)
    headers = dict(admin.headers, **{"Content-Type": "application/json"})
    for raw in ['{"role_name": ', "{'a': 1}", '{"username": "u_x", "password": "' + "p" * 10, "\xff\xfe"]:
        resp = inst.request(method, path, headers=headers, data=raw.encode("latin-1"))
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["code"] in ("INVALID_JSON", "VALIDATION_FAILED")
    big = json.dumps({"role_name": "r_big", "username": "u_big", "permissions": ["SELECT"] * 10,
                      "pad": "x" * (2 * 1024 * 1024)})
    resp = inst.request(method, path, headers=headers, data=big)
    assert resp.status_code == 413, resp.status_code
    intact(inst, before)


# ---- coredb's own roles ----

SERVICE_ROLES = ["coredb_admin", "coredb_user", "coredb_premium", "postgres"]


def lease_role(inst):
    """A real connection lease (issue 9) of a fresh user: the coredb_lease_* role it created, and its id."""
    acct = user(inst)
    resp = inst.post("/api/v1/connections/acquire", headers=acct.headers,
                     json={"service_name": "dbauth", "database_type": "postgresql", "operation_type": "read"})
    assert resp.status_code == 201, resp.text
    lease_id = resp.json()["connection_id"]
    role = q(inst, "SELECT role_name FROM coredb.leases WHERE id = %s", (lease_id,))[0][0]
    assert role.startswith("coredb_lease_") and role_row(inst, role) is not None
    return acct, lease_id, role


@pytest.mark.parametrize("role", SERVICE_ROLES + ["login", "lease"])
def test_service_roles_are_protected(inst, admin, role):
    lease = None
    if role == "login":
        role = scalar(inst, "SELECT current_user")     # coredb's login here (as DATABASE_URL says)
    elif role == "lease":
        lease = lease_role(inst)
        role = lease[2]
    before = role_count(inst)
    attrs_before = q(inst, "SELECT rolcanlogin, rolconnlimit, rolpassword FROM pg_authid WHERE rolname = %s",
                     (role,))
    members_before = members_of(inst, role)
    for resp in [inst.post("/api/v1/admin/roles", headers=admin.headers,
                           json={"role_name": role, "permissions": ["SELECT"]}),
                 inst.post("/api/v1/admin/db-users", headers=admin.headers,
                           json={"username": role, "password": PW, "roles": []}),
                 change_password(inst, admin, role, {"new_password": PW}),
                 revoke(inst, admin, role),
                 revoke(inst, admin, role, {"roles": ["coredb_user"]})]:
        err = assert_error(resp, 403, "FORBIDDEN")
        assert "belongs to coredb" in err["message"], err
    # nor granted to a new user
    name = unique("u_")
    err = assert_error(inst.post("/api/v1/admin/db-users", headers=admin.headers,
                                 json={"username": name, "password": PW, "roles": [role]}), 403, "FORBIDDEN")
    assert err["details"]["field"] == "roles"
    assert role_row(inst, name) is None
    intact(inst, before)
    assert q(inst, "SELECT rolcanlogin, rolconnlimit, rolpassword FROM pg_authid WHERE rolname = %s",
             (role,)) == attrs_before
    assert members_of(inst, role) == members_before
    if lease:
        acct, lease_id, _ = lease
        resp = inst.post("/api/v1/connections/release", headers=acct.headers,
                         json={"connection_id": lease_id, "service_name": "dbauth"})
        assert resp.status_code == 200, resp.text


def test_select_on_every_table_sees_no_row_of_coredbs_users(inst, admin):
    """docs/http.md: row-level security still applies to a role made here, so SELECT on every
    table of the schema reads no row of coredb's own users (checked through a real login)."""
    reader, name = unique("r_"), unique("u_")
    create_role(inst, admin, {"role_name": reader, "permissions": ["SELECT"]})
    create_user(inst, admin, {"username": name, "password": PW, "roles": [reader]})
    assert scalar(inst, "SELECT has_table_privilege(%s, 'public.users', 'SELECT')", (name,)) is True
    assert scalar(inst, "SELECT count(*) FROM public.users") >= 1        # as the superuser: rows exist
    conn = connect_as(inst, name, PW)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT count(*) FROM public.users")
            assert cur.fetchone()[0] == 0
            cur.execute("SELECT count(*) FROM public.users WHERE true OR role = 'admin'")
            assert cur.fetchone()[0] == 0
    finally:
        conn.close()


def test_powerful_roles_are_not_granted(inst, admin):
    """A role with CREATEROLE, REPLICATION or BYPASSRLS (made by a DBA) would pass its power on
    through SET ROLE: not grantable, not changeable here."""
    before_users = role_count(inst)
    for attr in ("CREATEROLE", "REPLICATION", "BYPASSRLS", "SUPERUSER"):
        strong = unique("r_")
        q(inst, f"CREATE ROLE {strong} NOLOGIN {attr}")
        name = unique("u_")
        err = assert_error(inst.post("/api/v1/admin/db-users", headers=admin.headers,
                                     json={"username": name, "password": PW, "roles": [strong]}),
                           403, "FORBIDDEN")
        assert strong in err["message"]
        assert role_row(inst, name) is None
        assert_error(change_password(inst, admin, strong, {"new_password": PW}), 403, "FORBIDDEN")
        assert_error(revoke(inst, admin, strong), 403, "FORBIDDEN")
    assert role_count(inst) == before_users + 4


# ---- who may call ----

ROUTES = [("POST", "/api/v1/admin/roles", {"role_name": "r_auth", "permissions": ["SELECT"]}),
          ("POST", "/api/v1/admin/db-users", {"username": "u_auth", "password": PW, "roles": []}),
          ("PUT", "/api/v1/admin/db-users/u_auth/password", {"new_password": PW}),
          ("POST", "/api/v1/admin/db-users/u_auth/revoke", {})]


@pytest.mark.parametrize("method,path,body", ROUTES)
def test_admin_only(inst, admin, method, path, body):
    before = role_count(inst)
    assert_error(inst.request(method, path, json=body), 401)
    assert_error(inst.request(method, path, json=body, headers=bearer("not.a.token")), 401)
    claims = {"sub": admin.id, "role": "admin", "exp": 1, "iat": 0}
    assert_error(inst.request(method, path, json=body, headers=bearer(craft(claims))), 401)
    forged = craft({"sub": admin.id, "role": "admin"}, secret="another-secret-" + "x" * 40)
    assert_error(inst.request(method, path, json=body, headers=bearer(forged)), 401)
    for acct in (user(inst), premium(inst, admin)):
        assert_error(inst.request(method, path, json=body, headers=acct.headers), 403, "FORBIDDEN")
    intact(inst, before)
    assert role_row(inst, "r_auth") is None and role_row(inst, "u_auth") is None


# ---- audit ----

def audit_rows(inst, target):
    return q(inst, "SELECT action, outcome, params::text, actor FROM coredb.audit_log WHERE target = %s "
                   "ORDER BY id", (target,))


def test_audit_records_successes_and_failures_without_passwords(inst, admin):
    t = new_table(inst)
    role = new_role(inst, admin, f"SELECT ON {t}")
    name = new_user(inst, admin, [role])
    assert change_password(inst, admin, name, {"new_password": PW2}).status_code == 200
    assert revoke(inst, admin, name, {"roles": [role]}).status_code == 200
    assert revoke(inst, admin, name).status_code == 200
    # failures and refusals
    assert_error(inst.post("/api/v1/admin/roles", headers=admin.headers,
                           json={"role_name": role, "permissions": []}), 409)
    assert_error(inst.post("/api/v1/admin/db-users", headers=admin.headers,
                           json={"username": name, "password": PW, "roles": []}), 409)
    assert_error(change_password(inst, admin, "coredb_admin", {"new_password": PW}), 403)

    rows = audit_rows(inst, role)
    assert [(r[0], r[1]) for r in rows][:1] == [("role.create", "success")]
    assert ("role.create", "CONFLICT") in [(r[0], r[1]) for r in rows]
    assert all(r[3] == admin.id for r in rows)
    rows = [(r[0], r[1]) for r in audit_rows(inst, name)]
    assert rows == [("db_user.create", "success"), ("db_user.password", "success"),
                    ("db_user.revoke", "success"), ("db_user.revoke", "success"),
                    ("db_user.create", "CONFLICT")], rows
    assert ("db_user.password", "FORBIDDEN") in [(r[0], r[1]) for r in audit_rows(inst, "coredb_admin")]
    dump = q(inst, "SELECT coalesce(string_agg(t::text, ' '), '') FROM coredb.audit_log t")[0][0]
    log = inst.log()
    for secret in (PW, PW2):
        assert secret not in dump
        assert secret not in log
    assert "audit.record_failed" not in log


def test_zz_log_has_no_errors_and_no_sql(inst):
    """Last in the module: after every hostile request above, the log holds no error
    (a refusal is a warning at most) and no SQL text of ours."""
    log = inst.log()
    assert '"level":"error"' not in log, [l for l in log.splitlines() if '"level":"error"' in l][:5]
    assert "CREATE ROLE" not in log and "PASSWORD '" not in log and "SCRAM-SHA-256$" not in log


# ---- CLI ----

def cli(inst, *args, stdin=None):
    proc = subprocess.run([COREDB_BIN, "admin", *args, "--json"], input=stdin, env=cli_env(inst),
                          cwd=scratch_dir(), capture_output=True, text=True, timeout=60)
    return proc.returncode, json.loads(proc.stdout), proc.stderr


def test_cli_verbs(inst):
    t = new_table(inst)
    role, name = unique("r_"), unique("u_")
    rc, out, _ = cli(inst, "role", "create", role, "--permission", f"SELECT ON {t}", "--permission", "INSERT",
                     "--description", "from the CLI")
    assert rc == 0 and out["status"] == "success", out
    assert out["role"]["permissions"] == [f"SELECT ON {t}", "INSERT"]
    assert role_row(inst, role) == (False, -1, "from the CLI")
    assert has_table(inst, role, t, "SELECT") and has_table(inst, role, CANARY, "INSERT")

    rc, out, _ = cli(inst, "db-user", "create", name, "--role", role, "--connection-limit", "3", stdin=PW + "\n")
    assert rc == 0, out
    assert out["db_user"] == {"username": name, "login": True, "roles": [role], "connection_limit": 3}
    assert role_row(inst, name)[:2] == (True, 3) and members_of(inst, name) == [role]
    connect_as(inst, name, PW).close()

    rc, out, _ = cli(inst, "db-user", "password", name, stdin=PW2 + "\n")
    assert rc == 0 and out["db_user"]["password_changed"] is True, out
    connect_as(inst, name, PW2).close()

    rc, out, _ = cli(inst, "db-user", "revoke", name, "--role", role)
    assert rc == 0 and out["db_user"]["revoked"]["roles"] == [role], out
    assert members_of(inst, name) == []
    rc, out, _ = cli(inst, "db-user", "revoke", name)
    assert rc == 0 and out["db_user"]["login"] is False, out
    assert role_row(inst, name)[0] is False

    # errors in the result form; usage errors exit 2
    rc, out, _ = cli(inst, "role", "create", role, "--permission", "SELECT")
    assert rc == 1 and out["error"]["code"] == "CONFLICT"
    rc, out, _ = cli(inst, "db-user", "create", unique("u_"), stdin="short\n")
    assert rc == 1 and out["error"]["code"] == "VALIDATION_FAILED"
    for args in (["role", "create", role], ["role", "drop", role, "--permission", "SELECT"],
                 ["db-user", "create"], ["db-user", "revoke", name, "--connection-limit", "2"],
                 ["db-user", "create", name, "--connection-limit", "x"], ["nope"]):
        rc, out, _ = cli(inst, *args, stdin="")
        assert rc == 2 and out["error"]["code"] == "VALIDATION_FAILED", (args, out)
    rows = [(r[0], r[1], r[3]) for r in audit_rows(inst, name)]
    assert rows[0] == ("db_user.create", "success", "cli"), rows
    assert PW not in q(inst, "SELECT coalesce(string_agg(t::text, ' '), '') FROM coredb.audit_log t")[0][0]


def test_cli_help_lists_the_verbs():
    proc = subprocess.run([COREDB_BIN, "admin", "--help"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0
    for verb in ("role create NAME --permission P", "db-user create NAME", "db-user password NAME",
                 "db-user revoke NAME"):
        assert verb in proc.stdout


# ---- a login without CREATEROLE ----

def test_login_without_createrole_gets_an_error_naming_the_fix(pg):
    tag = uuid.uuid4().hex[:8]
    role, db, password = f"cdbna_{tag}", f"cdbnadb_{tag}", f"pw-{tag}"
    run_setup_sql(pg, setup_sql("--role", role, "--database", db, password=password))
    assert pg.query("postgres", "SELECT rolcreaterole, rolsuper FROM pg_roles WHERE rolname = %s",
                    (role,)) == [(False, False)]
    env = base_env(pg, db, None, COREDB_ADMIN_EMAIL=f"{unique('root')}@example.com",
                   COREDB_ADMIN_PASSWORD="correct-horse-battery")
    env["DATABASE_URL"] = role_url(pg, role, password, db)
    server = Coredb(env)
    server.db, server.pg, server.admin_email = db, pg, env["COREDB_ADMIN_EMAIL"]
    try:
        adm = admin_of(server)
        before = pg.query(db, "SELECT count(*) FROM pg_roles")[0][0]
        name = unique("r_")
        err = assert_error(server.post("/api/v1/admin/roles", headers=adm.headers,
                                       json={"role_name": name, "permissions": ["SELECT"]}),
                           503, "DATABASE_PRIVILEGE_MISSING")
        assert "coredb setup-sql --administration" in err["message"] and "CREATEROLE" in err["message"]
        err = assert_error(server.post("/api/v1/admin/db-users", headers=adm.headers,
                                       json={"username": unique("u_"), "password": PW, "roles": []}),
                           503, "DATABASE_PRIVILEGE_MISSING")
        assert pg.query(db, "SELECT count(*) FROM pg_roles")[0][0] == before
        # the fix, as setup-sql --administration prints it, makes the same call work
        text = setup_sql("--role", role, "--database", db, "--administration")
        fix = [line for line in text.splitlines() if line.startswith(("ALTER ROLE", "GRANT pg_signal_backend"))]
        assert fix == [f'ALTER ROLE "{role}" CREATEROLE;', f'GRANT pg_signal_backend TO "{role}";']
        pg.query("postgres", fix[0])            # CREATEROLE first, pg_signal_backend later
        create_role(server, adm, {"role_name": name, "permissions": ["SELECT"]})
        assert pg.query(db, "SELECT has_table_privilege(%s, 'public.users', 'SELECT')", (name,)) == [(True,)]
        uname = unique("u_")
        create_user(server, adm, {"username": uname, "password": PW, "roles": [name]})
        # a grant on a table of coredb's login (revocable by it) and one on a superuser's table
        # (which a non-superuser may not revoke: left, and reported, instead of failing it all)
        pg.query(db, f"GRANT UPDATE ON public.users TO {uname}")
        pg.query(db, "CREATE TABLE su_owned (id int)")
        pg.query(db, f"GRANT SELECT ON su_owned TO {uname}")
        # a role whose GRANT fails after its CREATE ROLE (su_owned is a superuser's table, which
        # coredb's login may not grant) leaves no role behind: one transaction
        bad = unique("r_")
        err = assert_error(server.post("/api/v1/admin/roles", headers=adm.headers,
                                       json={"role_name": bad, "permissions": ["SELECT ON su_owned"]}),
                           403, "FORBIDDEN")
        assert "su_owned" in err["message"], err
        assert role_row(server, bad) is None
        session = connect_as(server, uname, PW)

        # without pg_signal_backend its open session cannot be ended: the whole revoke is undone
        err = assert_error(server.post(user_path(uname, "revoke"), headers=adm.headers),
                           503, "DATABASE_PRIVILEGE_MISSING")
        assert "pg_signal_backend" in err["message"], err
        assert members_of(server, uname) == [name]
        assert pg.query(db, "SELECT has_table_privilege(%s, 'public.users', 'UPDATE'), rolcanlogin "
                            "FROM pg_roles WHERE rolname = %s", (uname, uname)) == [(True, True)]
        with session.cursor() as cur:
            cur.execute("SELECT 1")

        pg.query("postgres", fix[1])
        resp = server.post(user_path(uname, "revoke"), headers=adm.headers)
        assert resp.status_code == 200, resp.text
        out = resp.json()["db_user"]
        assert out["remaining_privileges"] == ["TABLE public.su_owned"], out
        assert out["revoked"] == {"roles": [name], "privileges": 1} and out["login"] is False
        assert out["sessions_ended"] == 1
        assert pg.query(db, "SELECT has_table_privilege(%s, 'public.users', 'UPDATE'), "
                            "has_table_privilege(%s, 'public.users', 'SELECT'), rolcanlogin "
                            "FROM pg_roles WHERE rolname = %s", (uname, uname, uname)) == [(False, False, False)]
        with pytest.raises(psycopg2.Error):
            with session.cursor() as cur:
                cur.execute("SELECT 1")
        session.close()
    finally:
        server.stop_clean()
