"""The audit log of administrative actions (issue 10, part 1).

Every administrative action lands in coredb.audit_log (checked in
PostgreSQL itself): who, what, on what, with which parameters (never a
secret: the table and coredb's log are grepped for the passwords the tests
send), the outcome, the X-Request-ID sent and the client address. The
table is append-only for coredb's own login (has_table_privilege, as a
login that is no superuser) and tamper-evident: a row a superuser changes
or deletes is named by GET /api/v1/admin/audit/verify. GET
/api/v1/admin/audit pages newest first with filters; hostile query
parameters get 400 naming the field, callers without a valid token 401
(not recorded), users and premium users 403 (recorded as admin.refused).
`coredb admin audit [verify] --json` prints the same."""
import json
import os
import shutil
import threading
import time
import uuid

import pytest

from datahelp import admin_of, premium, start_instance, user
from identity import (PASSWORD, assert_error, bearer, cli_env, cli_user_create, craft, live_claims, login,
                      new_account, unique)
from servers import ROOT, TEST_JWT_SECRET, Coredb, run_cli, scratch_dir
from conftest import base_env
from test_defaults_prod import run_setup_sql, setup_sql, role_url

# the module fixtures inst and admin (conftest.py) use this Redis database
REDIS_DB = 9

AUDIT = "/api/v1/admin/audit"
VERIFY = "/api/v1/admin/audit/verify"
COLS = ["id", "actor", "actor_role", "action", "target", "params", "outcome", "request_id",
        "client_addr"]
ENTRY_KEYS = {"id", "at", "actor", "actor_role", "action", "target", "params", "outcome", "request_id",
              "client_addr"}


def rows(inst, where="TRUE", params=None):
    """The audit entries as PostgreSQL has them, oldest first."""
    got = inst.pg.query(inst.db, f"SELECT {', '.join(COLS)} FROM coredb.audit_log WHERE {where} "
                                 "ORDER BY id", params)
    return [dict(zip(COLS, r)) for r in got]


def rid():
    return f"audit-{uuid.uuid4().hex[:16]}"


def hdrs(acct, request_id=None):
    h = dict(acct.headers) if acct is not None else {}
    if request_id:
        h["X-Request-ID"] = request_id
    return h


def by_rid(inst, request_id):
    return rows(inst, "request_id = %s", (request_id,))


def one(inst, request_id):
    got = by_rid(inst, request_id)
    assert len(got) == 1, got
    return got[0]


def create_table(inst):
    name = unique("aud")
    inst.pg.query(inst.db, f"CREATE TABLE {name} (id bigserial PRIMARY KEY, user_id uuid, body text)")
    return name


def verify(inst, acct):
    resp = inst.get(VERIFY, headers=acct.headers)
    assert resp.status_code == 200, resp.text
    return resp.json()


def all_text(inst):
    """Every audit row as text, for grepping."""
    return inst.pg.query(inst.db, "SELECT coalesce(string_agg(a::text, E'\\n'), '') FROM coredb.audit_log a")[0][0]


# ---- what is recorded ----

def test_expose_and_unexpose_are_recorded(inst, admin):
    name = create_table(inst)
    r1 = rid()
    resp = inst.post(f"/api/v1/admin/tables/{name}/expose", headers=hdrs(admin, r1),
                     json={"owner_column": "user_id"})
    assert resp.status_code == 200, resp.text
    e = one(inst, r1)
    assert e["actor"] == admin.id and e["actor_role"] == "admin"
    assert e["action"] == "table.expose" and e["target"] == name
    assert e["params"] == {"owner_column": "user_id"}
    assert e["outcome"] == "success" and e["client_addr"] == "127.0.0.1"

    r2 = rid()
    resp = inst.post(f"/api/v1/admin/tables/{name}/unexpose", headers=hdrs(admin, r2))
    assert resp.status_code == 200, resp.text
    e = one(inst, r2)
    assert (e["actor"], e["action"], e["target"], e["outcome"]) == (admin.id, "table.unexpose", name, "success")

    # a failure is recorded with its code
    r3 = rid()
    resp = inst.post("/api/v1/admin/tables/no_such_table_x/expose", headers=hdrs(admin, r3))
    assert_error(resp, 404, "UNKNOWN_TABLE")
    e = one(inst, r3)
    assert (e["action"], e["target"], e["outcome"]) == ("table.expose", "no_such_table_x", "UNKNOWN_TABLE")


def test_secrets_in_params_are_never_stored_or_logged(inst, admin):
    """Passwords, tokens and keys sent along with administrative requests are
    dropped before anything is stored: grep the whole table and the log."""
    secrets = {k: f"S3cret-{k}-{uuid.uuid4().hex}" for k in ("pw", "tok", "key", "nested", "newpw")}
    name = create_table(inst)
    # expose refuses the unknown members (400), and the failure is recorded with the body
    r1 = rid()
    body = {"owner_column": "user_id", "password": secrets["pw"], "api_token": secrets["tok"],
            "opts": {"encryption_key": secrets["key"], "deep": [{"Secret": secrets["nested"]}]}}
    resp = inst.post(f"/api/v1/admin/tables/{name}/expose", headers=hdrs(admin, r1), json=body)
    assert_error(resp, 400, "VALIDATION_FAILED")
    e = one(inst, r1)
    assert e["outcome"] == "VALIDATION_FAILED"
    assert e["params"] == {"owner_column": "user_id", "opts": {"deep": [{}]}}, e["params"]

    # an admin creating a user with a role: recorded as user.role, the password gone
    r2 = rid()
    email = f"{unique('sec')}@example.com"
    resp = inst.post("/users/", headers=hdrs(admin, r2),
                     json={"email": email, "username": unique("sec"), "password": secrets["newpw"],
                           "role": "premium"})
    assert resp.status_code == 201, resp.text
    e = one(inst, r2)
    assert e["action"] == "user.role" and e["target"] == resp.json()["user_id"]
    assert e["params"]["new_role"] == "premium" and e["params"]["old_role"] is None
    assert e["params"]["request"]["email"] == email and "password" not in e["params"]["request"]

    # the restore body may carry anything: the unknown backup is refused, the entry keeps no secret
    r3 = rid()
    resp = inst.post("/api/v1/admin/backups/no_such_backup/restore", headers=hdrs(admin, r3),
                     json={"confirm": True, "password": secrets["pw"]})
    assert resp.status_code in (400, 404), resp.text
    e = one(inst, r3)
    assert e["action"] == "backup.restore" and e["outcome"] in ("NOT_FOUND", "VALIDATION_FAILED")

    # the operator's `coredb user create --role`: actor "cli", the password (stdin) nowhere
    cli_pw = f"S3cret-cli-{uuid.uuid4().hex}"
    name = unique("clirole")
    proc = cli_user_create(inst, f"{name}@example.com", name, cli_pw, role="admin")
    assert proc.returncode == 0, proc.stderr
    created = json.loads(proc.stdout)["user_id"]
    e = rows(inst, "action = 'user.role' AND target = %s", (created,))
    assert len(e) == 1 and e[0]["actor"] == "cli" and e[0]["actor_role"] == "admin"
    assert e[0]["params"]["new_role"] == "admin" and e[0]["request_id"] is None

    text = all_text(inst)
    log = inst.log()
    assert cli_pw not in text
    for s in list(secrets.values()) + [PASSWORD, admin.token]:
        assert s not in text
        assert s not in log


def test_user_role_change_and_session_revocation(inst, admin):
    acct = user(inst)
    r1 = rid()
    resp = inst.request("PUT", f"/users/{acct.id}", headers=hdrs(admin, r1), json={"role": "premium"})
    assert resp.status_code == 200, resp.text
    e = one(inst, r1)
    assert (e["actor"], e["action"], e["target"], e["outcome"]) == (admin.id, "user.role", acct.id, "success")
    assert e["params"] == {"old_role": "user", "new_role": "premium", "fields": ["role"]}

    # a user's own change (display name) is no administrative action
    acct2 = user(inst)
    r2 = rid()
    resp = inst.request("PUT", f"/users/{acct2.id}", headers=hdrs(acct2, r2), json={"display_name": "Me"})
    assert resp.status_code == 200, resp.text
    assert by_rid(inst, r2) == []

    # admin ends all sessions of acct2, then one session of acct
    r3 = rid()
    resp = inst.post("/api/v1/auth/revoke", headers=hdrs(admin, r3), json={"user_id": acct2.id})
    assert resp.status_code == 200, resp.text
    e = one(inst, r3)
    assert (e["actor"], e["action"], e["target"], e["outcome"]) == (admin.id, "session.revoke", acct2.id, "success")
    assert e["params"] == {"revoked_sessions": 1}

    relog = login(inst, acct.email, PASSWORD)
    r4 = rid()
    resp = inst.request("DELETE", f"/api/v1/auth/sessions/{relog['session_id']}", headers=hdrs(admin, r4))
    assert resp.status_code == 204, resp.text
    e = one(inst, r4)
    assert (e["action"], e["target"], e["params"]) == ("session.revoke", relog["session_id"], {"user_id": acct.id})

    # a user ending their own session is not recorded
    r5 = rid()
    own = login(inst, acct.email, PASSWORD)
    resp = inst.request("DELETE", f"/api/v1/auth/sessions/{own['session_id']}",
                        headers={**bearer(own["access_token"]), "X-Request-ID": r5})
    assert resp.status_code == 204, resp.text
    assert by_rid(inst, r5) == []


def put_user(inst, acct, target_id, body, request_id):
    return inst.request("PUT", f"/users/{target_id}", headers=hdrs(acct, request_id), json=body)


def delete_user(inst, acct, target_id, request_id):
    return inst.request("DELETE", f"/users/{target_id}", headers=hdrs(acct, request_id))


def password_hash(inst, user_id):
    return inst.pg.query(inst.db, "SELECT password_hash FROM public.users WHERE user_id = %s", (user_id,))[0][0]


def test_admin_update_and_delete_of_another_account_are_recorded(inst, admin):
    acct = user(inst)
    before = verify(inst, admin)["valid"]
    new_pw = f"Reset-{uuid.uuid4().hex}"
    new_email = f"{unique('upd')}@example.com"

    # email, password and display name: one user.update row naming the fields, no value
    r1 = rid()
    resp = put_user(inst, admin, acct.id, {"email": new_email, "password": new_pw, "display_name": "Reset"}, r1)
    assert resp.status_code == 200, resp.text
    e = one(inst, r1)
    assert (e["actor"], e["actor_role"], e["action"], e["target"], e["outcome"]) == \
        (admin.id, "admin", "user.update", acct.id, "success")
    assert e["params"] == {"fields": ["email", "password", "display_name"]}, e["params"]
    assert e["request_id"] == r1 and e["client_addr"] == "127.0.0.1"
    new_hash = password_hash(inst, acct.id)
    assert login(inst, new_email, new_pw)["user"]["user_id"] == acct.id

    # a role change with another field: still one row, user.role, with the field names
    r2 = rid()
    name = unique("renamed")
    resp = put_user(inst, admin, acct.id, {"username": name, "role": "premium"}, r2)
    assert resp.status_code == 200, resp.text
    e = one(inst, r2)
    assert (e["action"], e["target"], e["outcome"]) == ("user.role", acct.id, "success")
    assert e["params"] == {"old_role": "user", "new_role": "premium", "fields": ["username", "role"]}

    # the same role again changes nothing of the role: user.update naming it
    r3 = rid()
    resp = put_user(inst, admin, acct.id, {"role": "premium"}, r3)
    assert resp.status_code == 200, resp.text
    e = one(inst, r3)
    assert (e["action"], e["params"]) == ("user.update", {"fields": ["role"]})

    # a failed attempt (the admin's own address is taken): recorded with its code, nothing changed
    r4 = rid()
    taken = admin.user["email"]
    resp = put_user(inst, admin, acct.id, {"email": taken, "password": f"Other-{uuid.uuid4().hex}"}, r4)
    assert_error(resp, 409, "CONFLICT")
    e = one(inst, r4)
    assert (e["action"], e["target"], e["outcome"], e["params"]) == \
        ("user.update", acct.id, "CONFLICT", {"fields": ["email", "password"]})
    assert password_hash(inst, acct.id) == new_hash

    # a refused body (unknown field) too
    r5 = rid()
    assert_error(put_user(inst, admin, acct.id, {"nope": 1}, r5), 400, "VALIDATION_FAILED")
    e = one(inst, r5)
    assert (e["action"], e["outcome"], e["params"]) == ("user.update", "VALIDATION_FAILED", {"fields": []})

    # delete: one user.delete row with the name the id no longer leads to, and the sessions ended
    login(inst, new_email, new_pw)
    live = inst.pg.query(inst.db, "SELECT count(*) FROM coredb.sessions WHERE user_id = %s AND revoked_at IS NULL",
                         (acct.id,))[0][0]
    assert live >= 1
    r6 = rid()
    resp = delete_user(inst, admin, acct.id, r6)
    assert resp.status_code == 204, resp.text
    e = one(inst, r6)
    assert (e["actor"], e["action"], e["target"], e["outcome"]) == (admin.id, "user.delete", acct.id, "success")
    assert e["params"] == {"username": name, "sessions_ended": live}
    assert inst.pg.query(inst.db, "SELECT count(*) FROM public.users WHERE user_id = %s", (acct.id,))[0][0] == 0

    # deleting it again: 404, recorded
    r7 = rid()
    assert_error(delete_user(inst, admin, acct.id, r7), 404, "NOT_FOUND")
    e = one(inst, r7)
    assert (e["action"], e["target"], e["outcome"], e["params"]) == ("user.delete", acct.id, "NOT_FOUND", {})

    # no password nor its hash anywhere in the table or the log; the chain still verifies
    text, log = all_text(inst), inst.log()
    for secret in (new_pw, new_hash, acct.password):
        assert secret not in text
        assert secret not in log
    assert before is True and verify(inst, admin)["valid"] is True


def test_own_account_changes_are_not_recorded(inst, admin):
    """Only administrative actions are recorded: a user, or an admin, editing or
    deleting their own account is not one (a role change always is)."""
    acct = user(inst)
    r1 = rid()
    resp = put_user(inst, acct, acct.id,
                    {"email": f"{unique('own')}@example.com", "password": f"Own-{uuid.uuid4().hex}"}, r1)
    assert resp.status_code == 200, resp.text
    assert by_rid(inst, r1) == []
    # a user acting on someone else is refused before anything happens: 403, no row (no admin action)
    other = user(inst)
    r2 = rid()
    assert_error(delete_user(inst, acct, other.id, r2), 403, "FORBIDDEN")
    assert by_rid(inst, r2) == []
    r3 = rid()
    assert delete_user(inst, acct, acct.id, r3).status_code == 204
    assert by_rid(inst, r3) == []

    # a second admin: their own profile is no administrative action, their own role change is
    adm2 = new_account(inst, token=admin.token, role="admin")
    r4 = rid()
    assert put_user(inst, adm2, adm2.id, {"display_name": "Second"}, r4).status_code == 200
    assert by_rid(inst, r4) == []
    r5 = rid()
    assert put_user(inst, adm2, adm2.id, {"role": "user"}, r5).status_code == 200
    e = one(inst, r5)
    assert (e["actor"], e["action"], e["target"], e["params"]) == \
        (adm2.id, "user.role", adm2.id, {"old_role": "admin", "new_role": "user", "fields": ["role"]})
    assert verify(inst, admin)["valid"] is True


def test_role_given_with_an_idempotency_key_is_recorded_once(inst, admin):
    name = unique("idem")
    body = {"email": f"{name}@example.com", "username": name, "password": PASSWORD, "role": "premium"}
    key = uuid.uuid4().hex
    first = inst.post("/users/", headers={**admin.headers, "Idempotency-Key": key}, json=body)
    assert first.status_code == 201, first.text
    again = inst.post("/users/", headers={**admin.headers, "Idempotency-Key": key}, json=body)
    assert again.status_code == 201 and again.headers.get("Idempotent-Replayed") == "true", again.text
    got = rows(inst, "action = 'user.role' AND target = %s", (first.json()["user_id"],))
    assert len(got) == 1 and got[0]["params"]["new_role"] == "premium"
    assert "password" not in got[0]["params"]["request"]


def test_refused_attempts_are_recorded_anonymous_ones_not(inst, admin):
    u, p = user(inst), premium(inst, admin)
    for acct, role in ((u, "user"), (p, "premium")):
        for path in (AUDIT, VERIFY):
            r = rid()
            assert_error(inst.get(path, headers=hdrs(acct, r)), 403, "FORBIDDEN")
            e = one(inst, r)
            assert (e["actor"], e["actor_role"], e["action"], e["outcome"]) == (acct.id, role, "admin.refused",
                                                                                "FORBIDDEN")
            assert e["target"] == f"GET {path}" and e["client_addr"] == "127.0.0.1"
        r = rid()
        assert_error(inst.post(f"/api/v1/admin/tables/x/expose", headers=hdrs(acct, r)), 403, "FORBIDDEN")
        assert one(inst, r)["target"] == "POST /api/v1/admin/tables/{name}/expose"

    # no token, a forged token, an expired one: 401, nothing recorded
    forged = craft(live_claims(admin.token, role="admin"), secret="not-the-secret")
    expired = craft(live_claims(u.token, exp=int(time.time()) - 3600, iat=int(time.time()) - 7200,
                                nbf=int(time.time()) - 7200))
    for headers in ({}, bearer(forged), bearer(expired), bearer("garbage")):
        for path in (AUDIT, VERIFY):
            r = rid()
            resp = inst.get(path, headers={**headers, "X-Request-ID": r})
            assert resp.status_code == 401, resp.text
            assert_error(resp, 401)
            assert by_rid(inst, r) == []


# ---- the routes ----

def test_list_filters_and_paging(inst, admin):
    # ten entries of our own: refused calls of a fresh user (actor = their id)
    acct = user(inst)
    before = inst.pg.query(inst.db, "SELECT now()")[0][0]
    for _ in range(10):
        assert inst.get(AUDIT, headers=acct.headers).status_code == 403
    resp = inst.get(AUDIT, headers=admin.headers, params={"actor": acct.id})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["status"] == "success" and body["error"] is None
    entries = body["entries"]
    assert len(entries) == 10 and body["next_cursor"] is None
    assert all(set(e) == ENTRY_KEYS for e in entries)
    ids = [e["id"] for e in entries]
    assert ids == sorted(ids, reverse=True)  # newest first
    assert {e["actor"] for e in entries} == {acct.id}

    # pages of 3 walk the same ten entries
    seen, cursor, pages = [], None, 0
    while True:
        params = {"actor": acct.id, "limit": 3}
        if cursor:
            params["cursor"] = cursor
        page = inst.get(AUDIT, headers=admin.headers, params=params).json()
        assert len(page["entries"]) <= 3
        seen += [e["id"] for e in page["entries"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == ids and pages == 4

    # action: exact and prefix
    exact = inst.get(AUDIT, headers=admin.headers, params={"action": "admin.refused", "actor": acct.id}).json()
    assert len(exact["entries"]) == 10
    prefix = inst.get(AUDIT, headers=admin.headers, params={"action": "admin.", "limit": 500}).json()
    assert prefix["entries"] and all(e["action"].startswith("admin.") for e in prefix["entries"])
    none = inst.get(AUDIT, headers=admin.headers, params={"action": "admin", "actor": acct.id}).json()
    assert none["entries"] == []

    # since / until
    since = before.isoformat()
    s = inst.get(AUDIT, headers=admin.headers, params={"since": since, "actor": acct.id}).json()
    assert len(s["entries"]) == 10
    u = inst.get(AUDIT, headers=admin.headers, params={"until": since, "actor": acct.id}).json()
    assert u["entries"] == []
    mid = entries[4]["at"]  # the 6th oldest
    s = inst.get(AUDIT, headers=admin.headers, params={"since": mid, "actor": acct.id}).json()
    assert [e["id"] for e in s["entries"]] == ids[:5]
    u = inst.get(AUDIT, headers=admin.headers, params={"until": mid, "actor": acct.id}).json()
    assert [e["id"] for e in u["entries"]] == ids[5:]

    # default limit 50
    assert len(inst.get(AUDIT, headers=admin.headers).json()["entries"]) == min(
        50, inst.pg.query(inst.db, "SELECT count(*) FROM coredb.audit_log")[0][0])


@pytest.mark.parametrize("params,field", [
    ({"limit": "abc"}, "limit"), ({"limit": "100000"}, "limit"), ({"limit": "0"}, "limit"),
    ({"limit": "-1"}, "limit"), ({"limit": "501"}, "limit"), ({"limit": ""}, "limit"),
    ({"cursor": "garbage"}, "cursor"), ({"cursor": "1 OR 1=1"}, "cursor"), ({"cursor": "9" * 40}, "cursor"),
    ({"since": "not-a-date"}, "since"), ({"until": "2026-02-30"}, "until"),
    ({"since": "2026-01-01'; DROP TABLE coredb.audit_log; --"}, "since"),
    ({"actor": "x" * 300}, "actor"), ({"action": "a" * 300}, "action"),
])
def test_hostile_query_parameters(inst, admin, params, field):
    err = assert_error(inst.get(AUDIT, headers=admin.headers, params=params), 400, "VALIDATION_FAILED")
    assert err["details"]["field"] == field
    assert "SELECT" not in err["message"] and "audit_log" not in err["message"]


def test_sql_in_filters_is_only_a_value(inst, admin):
    for actor in ("' OR '1'='1", "cli'; DELETE FROM coredb.audit_log; --", "\u00e9\u4e2d"):
        resp = inst.get(AUDIT, headers=admin.headers, params={"actor": actor, "action": actor})
        assert resp.status_code == 200, resp.text
        assert resp.json()["entries"] == []
    assert inst.pg.query(inst.db, "SELECT count(*) FROM coredb.audit_log")[0][0] > 0
    # not UTF-8 once decoded: 400, not 500
    resp = inst.get(AUDIT + "?actor=%ff%fe", headers=admin.headers)
    assert_error(resp, 400)


def test_chain_stays_valid_under_concurrent_admin_actions(inst, admin):
    names = [create_table(inst) for _ in range(10)]
    start = inst.pg.query(inst.db, "SELECT coalesce(max(id), 0) FROM coredb.audit_log")[0][0]
    errors = []

    def act(i):
        try:
            name = names[i % 10]
            path = f"/api/v1/admin/tables/{name}/{'expose' if i < 10 else 'unexpose'}"
            if i >= 10:
                # wait until this table's expose is in
                deadline = time.time() + 20
                while not rows(inst, "action = 'table.expose' AND target = %s AND id > %s", (name, start)):
                    if time.time() > deadline:
                        raise AssertionError("expose never recorded")
                    time.sleep(0.05)
            resp = inst.post(path, headers=admin.headers, timeout=60)
            if resp.status_code != 200:
                errors.append(resp.text)
        except Exception as exc:  # noqa: BLE001 (reported below)
            errors.append(repr(exc))

    threads = [threading.Thread(target=act, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    got = rows(inst, "id > %s AND action IN ('table.expose', 'table.unexpose')", (start,))
    assert len(got) == 20
    v = verify(inst, admin)
    assert v["valid"] is True and v["first_broken"] is None, v
    total = inst.pg.query(inst.db, "SELECT count(*), max(id) FROM coredb.audit_log")[0]
    assert v["rows_checked"] == total[0] and v["head"]["id"] == total[1]
    head_hash = inst.pg.query(inst.db, "SELECT encode(hash, 'hex') FROM coredb.audit_log ORDER BY id DESC LIMIT 1")
    assert v["head"]["hash"] == head_hash[0][0] and len(v["head"]["hash"]) == 64


def test_hash_is_the_documented_canonical_form(inst, admin):
    """Recomputes one row's hash in Python from the documented canonical form."""
    import hashlib
    verify(inst, admin)  # at least one entry exists
    r = inst.pg.query(inst.db, "SELECT id, to_char(at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'),"
                               " actor, actor_role, action, target, params::text, outcome, request_id, client_addr,"
                               " prev_hash, hash,"
                               " jsonb_build_array(id, to_char(at AT TIME ZONE 'UTC',"
                               "   'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"'), actor, actor_role, action, target, params,"
                               "   outcome, request_id, client_addr)::text"
                               " FROM coredb.audit_log ORDER BY id DESC LIMIT 2")
    newest, before = r[0], r[1]
    canonical = newest[12]
    assert json.loads(canonical)[0] == newest[0] and json.loads(canonical)[1] == newest[1]
    assert bytes(newest[10]) == bytes(before[11])
    assert hashlib.sha256(bytes(newest[10]) + canonical.encode()).digest() == bytes(newest[11])


# ---- append-only and tamper-evident (an instance of its own: these break the chain) ----

@pytest.fixture
def lone(pg):
    inst = start_instance(pg)
    yield inst
    inst.stop_clean()


def seed_entries(inst, acct, n):
    for _ in range(n):
        assert inst.get(AUDIT, headers=acct.headers).status_code == 403


def test_superuser_update_is_detected(lone):
    adm = admin_of(lone)
    seed_entries(lone, user(lone), 5)
    assert verify(lone, adm)["valid"] is True
    ids = [r[0] for r in lone.pg.query(lone.db, "SELECT id FROM coredb.audit_log ORDER BY id")]
    victim = ids[len(ids) // 2]
    # the trigger refuses even a superuser...
    with pytest.raises(Exception) as exc:
        lone.pg.query(lone.db, "UPDATE coredb.audit_log SET outcome = 'success' WHERE id = %s", (victim,))
    assert "append-only" in str(exc.value)
    # ...who can bypass it
    conn = lone.pg.connect(lone.db)
    with conn, conn.cursor() as cur:
        cur.execute("SET session_replication_role = replica")
        cur.execute("UPDATE coredb.audit_log SET outcome = 'success' WHERE id = %s", (victim,))
    conn.close()
    v = verify(lone, adm)
    assert v["valid"] is False
    assert v["first_broken"]["id"] == victim and v["first_broken"]["reason"] == "row_changed", v
    assert v["first_broken"]["action"] == "admin.refused"
    assert v["rows_checked"] >= len(ids)
    # the operator's command says the same
    proc = run_cli(["admin", "audit", "verify", "--json"], cli_env(lone))
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["valid"] is False and out["first_broken"]["id"] == victim


def test_deleted_row_is_detected(lone):
    adm = admin_of(lone)
    seed_entries(lone, user(lone), 5)
    ids = [r[0] for r in lone.pg.query(lone.db, "SELECT id FROM coredb.audit_log ORDER BY id")]
    victim = ids[2]
    conn = lone.pg.connect(lone.db)
    with conn, conn.cursor() as cur:
        cur.execute("SET session_replication_role = replica")
        cur.execute("DELETE FROM coredb.audit_log WHERE id = %s", (victim,))
    conn.close()
    v = verify(lone, adm)
    assert v["valid"] is False
    assert v["first_broken"]["id"] == ids[3], v
    assert v["first_broken"]["reason"] == "chain_broken" and v["first_broken"]["previous_id"] == ids[1]
    # a superuser emptying the table: what is left is a valid (empty) chain
    conn = lone.pg.connect(lone.db)
    with conn, conn.cursor() as cur:
        cur.execute("SET session_replication_role = replica")
        cur.execute("TRUNCATE coredb.audit_log")
    conn.close()
    assert lone.pg.query(lone.db, "SELECT count(*) FROM coredb.audit_log")[0][0] == 0
    v = verify(lone, adm)   # an empty log is a valid one: anchoring the head hash is what shows this
    assert v["valid"] is True and v["rows_checked"] == 0 and v["head"] is None


def test_coredb_login_cannot_update_delete_or_truncate(pg, redis_server):
    """As a production login (no superuser, made by `coredb setup-sql`), coredb
    owns the table but holds only INSERT and SELECT on it."""
    tag = uuid.uuid4().hex[:8]
    role, db, password = f"cdb_{tag}", f"cdbdb_{tag}", f"pw{tag}"
    run_setup_sql(pg, setup_sql("--role", role, "--database", db, password=password))
    env = base_env(pg, db, redis_server)
    env["DATABASE_URL"] = role_url(pg, role, password, db)
    inst = Coredb(env)
    inst.db, inst.pg = db, pg
    try:
        assert pg.query(db, "SELECT tableowner FROM pg_tables WHERE schemaname = 'coredb' AND tablename = 'audit_log'") \
            == [(role,)]
        for priv, want in (("INSERT", True), ("SELECT", True), ("UPDATE", False), ("DELETE", False),
                           ("TRUNCATE", False)):
            assert pg.query(db, "SELECT has_table_privilege(%s, 'coredb.audit_log', %s)", (role, priv)) \
                == [(want,)], priv
        for r in ("coredb_admin", "coredb_user", "coredb_premium"):
            assert pg.query(db, "SELECT has_table_privilege(%s, 'coredb.audit_log', 'SELECT, INSERT')", (r,)) \
                == [(False,)]
        # and as that login, an UPDATE is refused
        import psycopg2
        conn = psycopg2.connect(host="127.0.0.1", port=pg.port, user=role, password=password, dbname=db)
        try:
            with conn.cursor() as cur:
                cur.execute("SELECT coredb.audit_append('t', NULL, 'test.entry', NULL, '{}', 'success', NULL, NULL)")
                conn.commit()
                with pytest.raises(psycopg2.Error) as exc:
                    cur.execute("UPDATE coredb.audit_log SET actor = 'x'")
                assert exc.value.pgcode == "42501"
                conn.rollback()
                with pytest.raises(psycopg2.Error):
                    cur.execute("TRUNCATE coredb.audit_log")
                conn.rollback()
        finally:
            conn.close()
    finally:
        inst.stop_clean()


# ---- backups, restores, migrations ----

def test_backups_and_restore_are_recorded(pg):
    d = os.path.join(scratch_dir(), f"audit-bk-{uuid.uuid4().hex[:8]}")
    os.makedirs(d)
    inst = start_instance(pg, BACKUP_DIR=d)
    try:
        adm = admin_of(inst)
        r1 = rid()
        resp = inst.post("/api/v1/admin/backups", headers=hdrs(adm, r1), timeout=120)
        assert resp.status_code == 201, resp.text
        name = resp.json()["name"]
        e = one(inst, r1)
        assert (e["actor"], e["action"], e["target"], e["outcome"]) == (adm.id, "backup.create", name, "success")
        r2 = rid()
        resp = inst.post(f"/api/v1/admin/backups/{name}/verify", headers=hdrs(adm, r2), timeout=180)
        assert resp.status_code == 200, resp.text
        e = one(inst, r2)
        assert (e["action"], e["target"], e["outcome"]) == ("backup.verify", name, "success")
        r3 = rid()
        resp = inst.post("/api/v1/admin/backups/cleanup", headers=hdrs(adm, r3), timeout=60)
        assert resp.status_code == 200, resp.text
        e = one(inst, r3)
        assert (e["action"], e["outcome"]) == ("backup.cleanup", "success") and e["params"] == {"removed": []}
        r4 = rid()
        resp = inst.post("/api/v1/admin/backups/nope_x/verify", headers=hdrs(adm, r4), timeout=60)
        assert resp.status_code in (400, 404)
        assert one(inst, r4)["outcome"] in ("NOT_FOUND", "VALIDATION_FAILED")

        # the restore brings the database back to the backup's state, but not the log:
        # the entries made since (verify, cleanup, the refused verify) are carried over
        # with their hashes, and the restore records itself on top
        carried = [one(inst, r)["id"] for r in (r2, r3, r4)]
        r5 = rid()
        resp = inst.post(f"/api/v1/admin/backups/{name}/restore", headers=hdrs(adm, r5),
                         json={"confirm": True}, timeout=180)
        assert resp.status_code == 200, resp.text
        e = one(inst, r5)
        assert (e["actor"], e["action"], e["target"], e["outcome"]) == (adm.id, "backup.restore", name, "success")
        assert e["params"] == {"confirm": True}
        assert [one(inst, r)["id"] for r in (r2, r3, r4)] == carried
        assert e["id"] > carried[-1]
        assert verify(inst, adm)["valid"] is True
        assert pg.query(inst.db, "SELECT count(*) FROM pg_namespace WHERE nspname = 'coredb_audit_carry'") == [(0,)]

        # the CLI's backup commands: actor "cli"
        proc = run_cli(["backup", "verify", name, "--json"], cli_env(inst, BACKUP_DIR=d), timeout=180)
        assert proc.returncode == 0, proc.stderr
        last = rows(inst, "action = 'backup.verify' ORDER BY id DESC LIMIT 1 --")
        assert last and last[-1]["actor"] == "cli" and last[-1]["actor_role"] == "admin"
        assert last[-1]["request_id"] is None and last[-1]["client_addr"] is None
    finally:
        inst.stop_clean()


def test_scheduled_backups_are_recorded_as_the_schedule(pg):
    d = os.path.join(scratch_dir(), f"audit-sched-{uuid.uuid4().hex[:8]}")
    os.makedirs(d)
    inst = start_instance(pg, BACKUP_DIR=d, BACKUP_INTERVAL="3s")
    try:
        deadline = time.time() + 60
        got = []
        while time.time() < deadline:
            got = rows(inst, "actor = 'schedule'")
            if {"backup.create", "backup.verify", "backup.cleanup"} <= {e["action"] for e in got}:
                break
            time.sleep(0.3)
        assert {"backup.create", "backup.verify", "backup.cleanup"} <= {e["action"] for e in got}, got
        assert all(e["outcome"] == "success" and e["actor_role"] == "admin" and e["request_id"] is None
                   for e in got)
    finally:
        inst.stop_clean()


def test_migrations_are_recorded(pg, redis_server):
    db = pg.create_database()
    d = os.path.join(scratch_dir(), f"audit-mig-{db}")
    shutil.copytree(os.path.join(ROOT, "migrations"), d)
    env = {"DATABASE_URL": pg.url(db), "JWT_SECRET": TEST_JWT_SECRET, "MIGRATIONS_DIR": d}
    proc = run_cli(["migrate", "up", "--json"], env)
    assert proc.returncode == 0, proc.stderr
    cli_up = [r for r in [dict(zip(COLS, x)) for x in pg.query(
        db, f"SELECT {', '.join(COLS)} FROM coredb.audit_log WHERE action = 'migration.up'")]]
    assert len(cli_up) == 1 and cli_up[0]["actor"] == "cli" and cli_up[0]["outcome"] == "success"
    assert "20261130_012" in cli_up[0]["params"]["versions"]
    v = "29990101_001"
    with open(os.path.join(d, f"{v}_audit_probe.sql"), "w") as f:
        f.write("-- migrate:up\nCREATE TABLE public.audit_probe (id int);\n"
                "-- migrate:down\nDROP TABLE public.audit_probe;\n")
    inst = start_instance(pg, db=db, MIGRATIONS_DIR=d, MIGRATE_ON_START="false")
    try:
        adm = admin_of(inst)
        r1 = rid()
        resp = inst.post("/api/v1/migrations/run", headers=hdrs(adm, r1), json={})
        assert resp.status_code == 202, resp.text
        run_id = resp.json()["migration_id"]
        deadline = time.time() + 30
        while not by_rid(inst, r1) and time.time() < deadline:
            time.sleep(0.1)
        e = one(inst, r1)
        assert (e["actor"], e["action"], e["outcome"]) == (adm.id, "migration.up", "success")
        assert e["params"]["run_id"] == run_id and e["params"]["versions"] == [v]
        assert e["client_addr"] == "127.0.0.1"
        r2 = rid()
        resp = inst.post("/api/v1/migrations/rollback", headers=hdrs(adm, r2), json={"steps": 1})
        assert resp.status_code == 200, resp.text
        e = one(inst, r2)
        assert (e["action"], e["outcome"], e["params"]) == ("migration.down", "success",
                                                            {"steps": 1, "versions": [v]})
        # refused requests of an admin are recorded with their code
        r3 = rid()
        resp = inst.post("/api/v1/migrations/run", headers=hdrs(adm, r3), json={"target_version": "nope"})
        assert_error(resp, 400, "VALIDATION_FAILED")
        e = one(inst, r3)
        assert (e["action"], e["outcome"]) == ("migration.up", "VALIDATION_FAILED")
        r4 = rid()
        resp = inst.post("/api/v1/migrations/rollback", headers=hdrs(adm, r4), json={"steps": 0})
        assert_error(resp, 400, "VALIDATION_FAILED")
        assert (one(inst, r4)["action"], one(inst, r4)["outcome"]) == ("migration.down", "VALIDATION_FAILED")
        assert verify(inst, adm)["valid"] is True
    finally:
        inst.stop_clean()


# ---- the CLI ----

def test_cli_admin_audit(inst, admin):
    acct = user(inst)
    seed_entries(inst, acct, 3)
    env = cli_env(inst)
    proc = run_cli(["admin", "audit", "--actor", acct.id, "--limit", "2", "--json"], env)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["status"] == "success" and len(out["entries"]) == 2 and out["next_cursor"]
    assert all(e["actor"] == acct.id and e["action"] == "admin.refused" for e in out["entries"])
    proc = run_cli(["admin", "audit", "--actor", acct.id, "--cursor", out["next_cursor"], "--json"], env)
    rest = json.loads(proc.stdout)
    assert len(rest["entries"]) == 1 and rest["next_cursor"] is None
    assert rest["entries"][0]["id"] < out["entries"][-1]["id"]
    # human output: a table
    proc = run_cli(["admin", "audit", "--actor", acct.id], env)
    assert proc.returncode == 0 and "admin.refused" in proc.stdout and acct.id in proc.stdout
    proc = run_cli(["admin", "audit", "verify", "--json"], env)
    assert proc.returncode == 0, proc.stderr
    v = json.loads(proc.stdout)
    assert v["valid"] is True and v["rows_checked"] >= 3 and len(v["head"]["hash"]) == 64
    # bad values: the same 400-class error as over HTTP
    proc = run_cli(["admin", "audit", "--limit", "abc", "--json"], env)
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["error"]["details"]["field"] == "limit"
    proc = run_cli(["admin", "audit", "--since", "yesterday", "--json"], env)
    assert json.loads(proc.stdout)["error"]["details"]["field"] == "since"
    proc = run_cli(["admin", "audit", "--bogus", "--json"], env)
    assert proc.returncode == 2
