"""Identity columns of public.users (password_hash, email, username, role)
change only through the users API (migration 20261130_009).

Through /api/v1/data/transaction no application role may write them: the
update, insert and upsert are refused with the error envelope, and nothing
changes — the row in PostgreSQL, the password that logs in, the live
sessions and their tokens. password_hash is readable by no role, the
read-only roles of connection leases included (migration 016). The users
API still changes all four (with its validation, argon2id and the end of the
other sessions). PostgreSQL's own catalog shows the grants the data API works
from, and migrating down restores the grants of 004 exactly."""
import json
import os

import bcrypt
import pytest

from datahelp import (TX, assert_error, pg_insert, pg_update, pg_upsert, premium, query,
                      query_ok, scalar, start_instance, tx, tx_fail, user)
from identity import login, login_resp, make_admin, new_account, unique
from servers import ROOT, TEST_JWT_SECRET, run_cli

# the module fixtures admin and rds (conftest.py) use this Redis database
REDIS_DB = 14

IDENTITY = ["password_hash", "email", "username", "role"]
APP_ROLES = ["coredb_user", "coredb_premium", "coredb_admin"]
# the SELECT-only counterparts a read lease joins (migration 013; 016 narrowed admin's)
RO_ROLES = ["coredb_user_ro", "coredb_premium_ro", "coredb_admin_ro"]
MIGRATION = "20261130_009"
PREVIOUS = "20261122_008"
RO_MIGRATION = "20261201_016"
RO_PREVIOUS = "20261130_015"
INJECTED_PASSWORD = "injected-password-1"
USERS_COLS = ["user_id", "email", "username", "password_hash", "display_name",
              "profile_picture_url", "role", "is_active", "created_at", "updated_at"]


@pytest.fixture(scope="module")
def inst(pg, redis_server):
    # every test here tries wrong passwords from 127.0.0.1 on purpose
    server = start_instance(pg, redis_server, REDIS_DB, LOGIN_MAX_FAILURES_PER_ADDRESS=100000)
    yield server
    server.stop_clean()


@pytest.fixture(scope="module")
def injected_hash():
    """A bcrypt hash (which coredb accepts at login) of INJECTED_PASSWORD."""
    return bcrypt.hashpw(INJECTED_PASSWORD.encode(), bcrypt.gensalt(4)).decode()


def injected_value(column, injected_hash):
    return {"password_hash": injected_hash, "email": "NOT AN EMAIL AT ALL",
            "username": "X Y <script>", "role": "admin"}[column]


def caller_and_target(inst, admin, role):
    """user and premium write their own row; admin writes another user's."""
    if role == "user":
        acct = user(inst)
        return acct, acct
    if role == "premium":
        acct = premium(inst, admin)
        return acct, acct
    return admin, user(inst)


def row(inst, user_id):
    """The whole users row as PostgreSQL has it (psycopg2, as the owner)."""
    return scalar(inst, "SELECT row_to_json(u)::text FROM users u WHERE user_id = %s", (user_id,))


def live_sessions(inst, user_id):
    return scalar(inst, "SELECT count(*) FROM coredb.sessions WHERE user_id = %s "
                        "AND revoked_at IS NULL", (user_id,))


def refused(caller_role, column, op_resp, kind):
    """The refusal each role gets: user and premium hold no write privilege
    on users at all (403); admin may update is_active only, so any other
    column is unknown to its update (400 naming it) and insert/upsert are
    forbidden (403). Returns the error object."""
    if caller_role == "admin" and kind == "update":
        err = assert_error(op_resp, 400, "UNKNOWN_COLUMN")
        assert err["details"].get("column") in ((column,) if isinstance(column, str) else column), err
    else:
        err = assert_error(op_resp, 403, "FORBIDDEN")
        assert err["details"].get("table") == "users", err
    assert err["details"].get("operation") == 1, err
    for secret in ("$2b$", "argon2", "ERROR:", "permission denied"):
        assert secret not in json.dumps(err), err
    return err


def assert_nothing_changed(inst, target, before_row, before_sessions, injected_email=None):
    """The row, the password that logs in, and the live sessions are as before."""
    assert row(inst, target.id) == before_row, "the users row changed"
    assert live_sessions(inst, target.id) == before_sessions, "sessions were ended"
    # the old token still answers, and the users API shows the old identity
    me = target.me()
    assert me.status_code == 200, me.text
    stored = json.loads(before_row)
    assert {k: me.json()[k] for k in ("email", "username", "role")} == \
        {k: stored[k] for k in ("email", "username", "role")}
    # the password the injected hash encodes does not log in; the old one does
    assert_error(login_resp(inst, target.email, INJECTED_PASSWORD), 401, "INVALID_CREDENTIALS")
    if injected_email:
        assert_error(login_resp(inst, injected_email, target.password), 401, "INVALID_CREDENTIALS")
    assert login(inst, target.email, target.password)["user"]["user_id"] == target.id
    assert row(inst, target.id) == before_row, "the login changed the row (hash upgraded?)"


# ---- no application role writes an identity column through the data API ----

@pytest.mark.parametrize("caller_role", ["user", "premium", "admin"])
@pytest.mark.parametrize("column", IDENTITY)
def test_identity_column_write_refused(inst, admin, injected_hash, caller_role, column):
    caller, target = caller_and_target(inst, admin, caller_role)
    value = injected_value(column, injected_hash)
    before_row, before_sessions = row(inst, target.id), live_sessions(inst, target.id)

    # update of the target's row
    resp = tx(inst, caller, [pg_update("users", {"user_id": target.id}, {column: value})])
    refused(caller_role, column, resp, "update")
    # insert of a new row carrying the column
    name = unique()
    new_row = {"email": f"{name}@example.com", "username": name, "password_hash": injected_hash,
               "role": "admin"}
    new_row[column] = value
    resp = tx(inst, caller, [pg_insert("users", new_row)])
    refused(caller_role, column, resp, "insert")
    assert scalar(inst, "SELECT count(*) FROM users WHERE username = %s OR email = %s",
                  (new_row["username"], new_row["email"])) == 0
    # upsert onto the target's row
    resp = tx(inst, caller, [pg_upsert("users", {"user_id": target.id, column: value}, ["user_id"])])
    refused(caller_role, column, resp, "upsert")
    # behind an operation that would succeed: still refused, nothing written
    resp = inst.post(TX, headers=caller.headers, json={"operations": [
        {"database": "postgresql", "operation": "insert", "table": "projects",
         "data": {"title": "before the identity write", "user_id": target.id}},
        pg_update("users", {"user_id": target.id}, {column: value})]})
    err = assert_error(resp, 400 if caller_role == "admin" else 403)
    assert err["details"].get("operation") == 2, err
    assert scalar(inst, "SELECT count(*) FROM projects WHERE user_id = %s", (target.id,)) == 0

    assert_nothing_changed(inst, target, before_row, before_sessions,
                           injected_email=value if column == "email" else None)
    assert caller.me().status_code == 200


@pytest.mark.parametrize("caller_role", ["user", "premium", "admin"])
def test_issue_reproduction_body(inst, admin, caller_role):
    """The body from the issue, each caller on its own row: a bcrypt hash
    of "a" and an email that is not one. Before the fix: 200 committed, "a"
    logged in, and the old token kept answering."""
    if caller_role == "user":
        acct = user(inst)
    elif caller_role == "premium":
        acct = premium(inst, admin)
    else:
        acct = make_admin(inst)
    other_session = acct.relogin()
    before_row, before_sessions = row(inst, acct.id), live_sessions(inst, acct.id)
    hash_of_a = bcrypt.hashpw(b"a", bcrypt.gensalt(4)).decode()
    body = {"operations": [{"database": "postgresql", "operation": "update", "table": "users",
                            "filters": {"user_id": acct.id},
                            "data": {"password_hash": hash_of_a, "email": "NOT AN EMAIL AT ALL"}}]}
    resp = inst.post(TX, json=body, headers=acct.headers)
    refused(caller_role, ("password_hash", "email"), resp, "update")
    assert row(inst, acct.id) == before_row
    assert_error(login_resp(inst, acct.email, "a"), 401, "INVALID_CREDENTIALS")
    assert_error(login_resp(inst, "NOT AN EMAIL AT ALL", "a"), 401, "INVALID_CREDENTIALS")
    assert scalar(inst, "SELECT count(*) FROM users WHERE email = 'NOT AN EMAIL AT ALL'") == 0
    assert acct.me().status_code == 200
    assert acct.me(other_session["access_token"]).status_code == 200
    assert live_sessions(inst, acct.id) == before_sessions
    assert login(inst, acct.email, acct.password)["user"]["user_id"] == acct.id


def test_password_hash_readable_by_no_role(inst, admin):
    """Not through a select, a filter, an ordering or a returning list, for
    any role — admin included (004 granted admin SELECT on the whole table)."""
    victim = user(inst)
    for acct in (user(inst), premium(inst, admin), admin):
        for body in ({"table": "users", "select": ["user_id", "password_hash"]},
                     {"table": "users", "filters": {"password_hash": {"like": "$argon2%"}}},
                     {"table": "users", "filters": {"password_hash": {"is_null": False}}},
                     {"table": "users", "order_by": [{"column": "password_hash",
                                                       "direction": "asc"}]}):
            err = assert_error(query(inst, acct, body), 400, "UNKNOWN_COLUMN")
            assert err["details"].get("column") == "password_hash", (acct.user["role"], err)
        out = query_ok(inst, acct, {"table": "users"})
        assert out["data"] and all("password_hash" not in r for r in out["data"]), out
        assert "argon2" not in json.dumps(out)
        # a delete filtered by the hash, or returning it, is refused before it runs
        target = acct if acct is not admin else victim
        resp = tx(inst, acct, [{"database": "postgresql", "operation": "delete", "table": "users",
                                "filters": {"user_id": target.id,
                                            "password_hash": {"like": "$argon2%"}}}])
        err = assert_error(resp, 400, "UNKNOWN_COLUMN")
        assert err["details"].get("column") == "password_hash", err
        if acct is admin:
            resp = tx(inst, admin, [dict(pg_update("users", {"user_id": victim.id},
                                                   {"is_active": True}),
                                         returning=["user_id", "password_hash"])])
            err = assert_error(resp, 400, "UNKNOWN_COLUMN")
            assert err["details"].get("column") == "password_hash", err
    assert scalar(inst, "SELECT count(*) FROM users WHERE user_id = %s", (victim.id,)) == 1


def test_admin_still_deactivates_through_the_data_api(inst, admin):
    """is_active is the one column of users the data API writes (admin): the
    users API has no other way to deactivate an account. The answer never
    carries the hash."""
    victim = user(inst)
    out = tx(inst, admin, [pg_update("users", {"user_id": victim.id}, {"is_active": False})])
    assert out.status_code == 200, out.text
    result = out.json()["results"][0]["data"]
    assert result["count"] == 1 and "password_hash" not in result["rows"][0], result
    assert "argon2" not in out.text
    assert_error(login_resp(inst, victim.email, victim.password), 401, "INVALID_CREDENTIALS")
    # and a mixed update naming an identity column is refused as a whole
    resp = tx(inst, admin, [pg_update("users", {"user_id": victim.id},
                                      {"is_active": True, "role": "admin"})])
    assert assert_error(resp, 400, "UNKNOWN_COLUMN")["details"]["column"] == "role"
    assert scalar(inst, "SELECT role || ':' || is_active::text FROM users WHERE user_id = %s",
                  (victim.id,)) == "user:false"


# ---- the users API remains the way to change them ----

def test_users_api_is_the_only_way(inst, admin):
    acct = new_account(inst)
    second = acct.relogin()
    new_email = f"{unique()}@Example.com"
    new_username = unique()
    new_password = "a-new-long-password"
    # the data API: refused, for the same changes
    tx_fail(inst, acct, [pg_update("users", {"user_id": acct.id},
                                   {"email": new_email, "username": new_username})],
            403, "FORBIDDEN", operation=1)
    tx_fail(inst, admin, [pg_update("users", {"user_id": acct.id}, {"role": "premium"})],
            400, "UNKNOWN_COLUMN", operation=1)

    # the users API: validated, hashed with argon2id, other sessions ended
    for bad in ({"email": "NOT AN EMAIL AT ALL"}, {"username": "X Y <script>"},
                {"password": "short"}):
        err = assert_error(inst.request("PUT", f"/users/{acct.id}", json=bad, headers=acct.headers),
                           400, "VALIDATION_FAILED")
        assert err["details"]["field"] == next(iter(bad))
    resp = inst.request("PUT", f"/users/{acct.id}", headers=acct.headers,
                        json={"email": new_email, "username": new_username, "password": new_password})
    assert resp.status_code == 200, resp.text
    assert resp.json()["email"] == new_email.lower() and resp.json()["username"] == new_username
    stored = json.loads(row(inst, acct.id))
    assert stored["email"] == new_email.lower() and stored["username"] == new_username
    assert stored["password_hash"].startswith("$argon2id$")
    assert acct.me().status_code == 200                      # the caller's own session stays
    assert_error(acct.me(second["access_token"]), 401, "TOKEN_REVOKED")
    assert_error(login_resp(inst, new_email, acct.password), 401, "INVALID_CREDENTIALS")
    assert login(inst, new_email, new_password)["user"]["user_id"] == acct.id

    resp = inst.request("PUT", f"/users/{acct.id}", json={"role": "premium"}, headers=admin.headers)
    assert resp.status_code == 200 and resp.json()["role"] == "premium", resp.text
    assert scalar(inst, "SELECT role FROM users WHERE user_id = %s", (acct.id,)) == "premium"
    assert_error(acct.me(), 401, "TOKEN_REVOKED")            # its tokens carried the old role
    assert login(inst, new_email, new_password)["user"]["role"] == "premium"


# ---- what PostgreSQL says ----

PRIVS_SQL = """
SELECT r.rolname, n.nspname || '.' || c.relname, p.priv, a.attname
  FROM pg_roles r
 CROSS JOIN pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
  JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
 CROSS JOIN (VALUES ('SELECT'), ('INSERT'), ('UPDATE'), ('REFERENCES')) AS p(priv)
 WHERE r.rolname = ANY(%(roles)s) AND n.nspname = ANY(%(schemas)s)
   AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
   AND has_column_privilege(r.oid, c.oid, a.attnum, p.priv)
UNION ALL
SELECT r.rolname, n.nspname || '.' || c.relname, p.priv, NULL
  FROM pg_roles r
 CROSS JOIN pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
 CROSS JOIN (VALUES ('DELETE'), ('TRUNCATE'), ('TRIGGER')) AS p(priv)
 WHERE r.rolname = ANY(%(roles)s) AND n.nspname = ANY(%(schemas)s)
   AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
   AND has_table_privilege(r.oid, c.oid, p.priv)
UNION ALL
SELECT r.rolname, n.nspname || '.' || c.relname, p.priv, NULL
  FROM pg_roles r
 CROSS JOIN pg_class c
  JOIN pg_namespace n ON n.oid = c.relnamespace
 CROSS JOIN (VALUES ('USAGE'), ('SELECT'), ('UPDATE')) AS p(priv)
 WHERE r.rolname = ANY(%(roles)s) AND n.nspname = ANY(%(schemas)s) AND c.relkind = 'S'
   AND has_sequence_privilege(r.oid, c.oid, p.priv)
"""


def privileges(pg, db, schemas, roles=None):
    """{role: {table: {privilege: sorted columns (or [] for table-only privileges)}}},
    effective privileges as PostgreSQL computes them (memberships included)."""
    out = {}
    for role, table, priv, col in pg.query(db, PRIVS_SQL, {"roles": roles or APP_ROLES, "schemas": schemas}):
        cols = out.setdefault(role, {}).setdefault(table, {}).setdefault(priv, [])
        if col:
            cols.append(col)
    for tables in out.values():
        for privs in tables.values():
            for cols in privs.values():
                cols.sort()
    return out


def test_catalog_no_app_role_writes_identity_columns(inst):
    rows = inst.pg.query(
        inst.db,
        "SELECT r.rolname, a.attname, p.priv FROM pg_roles r"
        " CROSS JOIN pg_attribute a CROSS JOIN (VALUES ('INSERT'), ('UPDATE'), ('SELECT')) p(priv)"
        " WHERE r.rolname = ANY(%s) AND a.attrelid = 'public.users'::regclass"
        " AND a.attname = ANY(%s) AND (p.priv <> 'SELECT' OR a.attname = 'password_hash')"
        " AND has_column_privilege(r.oid, a.attrelid, a.attnum, p.priv)",
        (APP_ROLES + RO_ROLES, IDENTITY))
    assert rows == [], f"application roles may still write (or read the hash): {rows}"
    # the same from the standard view (table-level grants show per column there too)
    rows = inst.pg.query(
        inst.db,
        "SELECT grantee, column_name, privilege_type FROM information_schema.column_privileges"
        " WHERE table_schema = 'public' AND table_name = 'users'"
        " AND grantee = ANY(%s)"
        " AND (privilege_type IN ('INSERT', 'UPDATE') AND column_name = ANY(%s)"
        "      OR column_name = 'password_hash')", (APP_ROLES + RO_ROLES + ["PUBLIC"], IDENTITY))
    assert rows == [], rows
    assert inst.pg.query(
        inst.db, "SELECT grantee, privilege_type FROM information_schema.table_privileges"
                 " WHERE table_schema = 'public' AND table_name = 'users'"
                 " AND privilege_type IN ('SELECT', 'INSERT', 'UPDATE')"
                 " AND grantee = ANY(%s)", (APP_ROLES + RO_ROLES + ["PUBLIC"],)) == []


def expected_privileges():
    readable = sorted(c for c in USERS_COLS if c != "password_hash")
    users_own = {"SELECT": readable, "DELETE": []}
    out = {}
    for role in APP_ROLES:
        users = dict(users_own)
        if role == "coredb_admin":
            users["UPDATE"] = ["is_active"]
        out[role] = {"public.users": users}
    return out


def test_catalog_grants_of_the_app_roles(inst):
    """The whole audit: on public.users exactly what migration 009 leaves,
    on the other seed tables the privileges 004 grants (row-level security
    confines user and premium), and on the service's schema nothing — no
    table, column or sequence of coredb.* (sessions, refresh tokens, outbox,
    audit log, deployment id, migration history) is reachable by an app role."""
    got = privileges(inst.pg, inst.db, ["public", "coredb"])
    seed_cols = {t: sorted(r[0] for r in inst.pg.query(
        inst.db, "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0"
                 " AND NOT attisdropped", (t,)))
        for t in ("public.projects", "public.content_analysis", "public.media_assets")}
    want = expected_privileges()
    for role in APP_ROLES:
        for table, cols in seed_cols.items():
            want[role][table] = {"SELECT": cols, "INSERT": cols, "UPDATE": cols, "DELETE": []}
    coredb_tables = {t for role in got for t in got[role] if t.startswith("coredb.")}
    assert coredb_tables == set(), {r: {t: p for t, p in got[r].items() if t.startswith("coredb.")}
                                    for r in got}
    known = {"public.users", *seed_cols}
    assert {r: {t: p for t, p in got.get(r, {}).items() if t in known} for r in APP_ROLES} == want
    # and the data API sees what the catalog says: no service table is a table to it
    acct = user(inst)
    for table in ("sessions", "refresh_tokens", "redis_outbox", "deployment", "audit_log",
                  "schema_migrations", "coredb.sessions"):
        assert_error(query(inst, acct, {"table": table}), 404, "UNKNOWN_TABLE")


def test_catalog_grants_of_the_read_only_roles(inst):
    """What a read lease's role may do, exactly: SELECT of the readable
    users columns (no password_hash, migration 016 for admin's) and of the
    seed tables, nothing else on public, nothing at all on coredb.*."""
    got = privileges(inst.pg, inst.db, ["public", "coredb"], RO_ROLES)
    readable = sorted(c for c in USERS_COLS if c != "password_hash")
    seed_cols = {t: sorted(r[0] for r in inst.pg.query(
        inst.db, "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass AND attnum > 0"
                 " AND NOT attisdropped", (t,)))
        for t in ("public.projects", "public.content_analysis", "public.media_assets")}
    want = {role: {"public.users": {"SELECT": readable}, **{t: {"SELECT": c} for t, c in seed_cols.items()}}
            for role in RO_ROLES}
    assert {r: {t: p for t, p in got.get(r, {}).items() if t.startswith("coredb.")} for r in RO_ROLES} == \
        {r: {} for r in RO_ROLES}
    known = {"public.users", *seed_cols}
    assert {r: {t: p for t, p in got.get(r, {}).items() if t in known} for r in RO_ROLES} == want


def migrations_of(pg, db):
    """`coredb migrate ... --json` on db, checked, its JSON answer."""
    env = {"DATABASE_URL": pg.url(db), "JWT_SECRET": TEST_JWT_SECRET,
           "MIGRATIONS_DIR": os.path.join(ROOT, "migrations")}

    def migrate(*args):
        proc = run_cli(["migrate", *args, "--json"], env)
        assert proc.returncode == 0, (proc.stdout, proc.stderr)
        return json.loads(proc.stdout)
    return migrate


def users_acl(pg, db):
    """Every grant on public.users and its columns: (grantee, privilege, column or None)."""
    return sorted(pg.query(db, """
        SELECT g.rolname, x.privilege_type, NULL::name
          FROM pg_class c, aclexplode(c.relacl) x JOIN pg_roles g ON g.oid = x.grantee
         WHERE c.oid = 'public.users'::regclass
        UNION ALL
        SELECT g.rolname, x.privilege_type, a.attname
          FROM pg_attribute a, aclexplode(a.attacl) x JOIN pg_roles g ON g.oid = x.grantee
         WHERE a.attrelid = 'public.users'::regclass""") or [], key=str)


def test_016_down_restores_013s_grant_exactly(pg):
    """Migration 016 down gives coredb_admin_ro back exactly what 013 granted
    (the whole table: the defect 016 fixes), and up again takes it away."""
    db = pg.create_database()
    migrate, acl = migrations_of(pg, db), lambda: users_acl(pg, db)

    def hash_readers():
        return [r[0] for r in pg.query(
            db, "SELECT rolname FROM pg_roles WHERE rolname = ANY(%s) AND has_column_privilege("
                "oid, 'public.users'::regclass, 'password_hash', 'SELECT') ORDER BY 1", (APP_ROLES + RO_ROLES,))]

    migrate("up", "--target", RO_PREVIOUS)
    before, before_eff = acl(), privileges(pg, db, ["public", "coredb"], APP_ROLES + RO_ROLES)
    assert hash_readers() == ["coredb_admin_ro"]          # 013's grant: what 016 fixes
    applied = migrate("up", "--target", RO_MIGRATION)["applied"]
    assert [m["version"] for m in applied] == [RO_MIGRATION]
    assert acl() != before
    assert hash_readers() == []
    admin_ro = privileges(pg, db, ["public"], RO_ROLES)["coredb_admin_ro"]["public.users"]
    assert admin_ro == {"SELECT": sorted(c for c in USERS_COLS if c != "password_hash")}, admin_ro
    migrate("down", "--steps", "1")
    assert migrate("status")["current_version"] == RO_PREVIOUS
    assert acl() == before
    assert privileges(pg, db, ["public", "coredb"], APP_ROLES + RO_ROLES) == before_eff
    # and up again from there
    assert [m["version"] for m in migrate("up", "--target", RO_MIGRATION)["applied"]] == [RO_MIGRATION]
    assert hash_readers() == []


def test_down_restores_the_previous_grants_exactly(pg):
    db = pg.create_database()
    migrate, acl = migrations_of(pg, db), lambda: users_acl(pg, db)

    migrate("up", "--target", PREVIOUS)
    before, before_eff = acl(), privileges(pg, db, ["public", "coredb"])
    applied = migrate("up", "--target", MIGRATION)["applied"]
    assert [m["version"] for m in applied] == [MIGRATION]
    assert acl() != before
    admin_users = privileges(pg, db, ["public"])["coredb_admin"]["public.users"]
    assert "password_hash" not in admin_users["SELECT"] and "INSERT" not in admin_users
    migrate("down", "--steps", "1")
    assert migrate("status")["current_version"] == PREVIOUS
    assert acl() == before
    assert privileges(pg, db, ["public", "coredb"]) == before_eff
    # and up again from there
    assert [m["version"] for m in migrate("up", "--target", MIGRATION)["applied"]] == [MIGRATION]
