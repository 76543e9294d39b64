"""The audit log of administrative actions (issue 10, part 1).

Every administrative action lands in coredb.audit_log (checked in
PostgreSQL itself): who, what, on what, with which parameters (never a
secret: the table and coredb's log are grepped for the passwords and tokens
the tests send), the outcome, the X-Request-ID sent and the client address.
The table is append-only for coredb's own login (has_table_privilege) and
tamper-evident: a row a superuser changes or deletes is named by
GET /api/v1/admin/audit/verify. GET /api/v1/admin/audit pages newest first
with filters; hostile query parameters get 400, callers without a token
401, users and premium users 403 (and the refusal is itself recorded)."""
import json
import threading
import urllib.parse
import uuid

import psycopg2
import pytest

from datahelp import admin_of, premium, user
from identity import PASSWORD, assert_error, bearer, cli_env, unique
from servers import COREDB_BIN, run_cli, scratch_dir

# the module fixtures inst, admin and rds (conftest.py) use this Redis database
REDIS_DB = 10

AUDIT = "/api/v1/admin/audit"
VERIFY = "/api/v1/admin/audit/verify"
COLS = ["id", "actor", "actor_role", "action", "target", "params", "outcome", "request_id",
        "client_addr"]


def rows(inst, where="TRUE", params=None):
    """The audit entries as PostgreSQL has them, oldest first."""
    got = inst.pg.query(inst.db, f"SELECT {', '.join(COLS)} FROM coredb.audit_log WHERE {where} "
                                 "ORDER BY id", params)
    return [dict(zip(COLS, r)) for r in got]


def rid():
    return f"audit-{uuid.uuid4().hex[:16]}"


def with_rid(acct, request_id):
    h = dict(acct.headers)
    h["X-Request-ID"] = request_id
    return h


def by_rid(inst, request_id):
    return rows(inst, "request_id = %s", (request_id,))


def create_table(inst):
    name = unique("aud")
    inst.pg.query(inst.db, f"CREATE TABLE {name} (id bigserial PRIMARY KEY, user_id uuid, body text)")
    return name


def test_expose_and_unexpose_are_recorded(inst, admin):
    name = create_table(inst)
    r1 = rid()
    resp = inst.post(f"/api/v1/admin/tables/{name}/expose", headers=with_rid(admin, r1),
                     json={"owner_column": "user_id"})
    assert resp.status_code == 200, resp.text
    got = by_rid(inst, r1)
    assert len(got) == 1, got
    e = got[0]
    assert e["actor"] == admin.id and e["actor_role"] == "admin"
    assert e["action"] == "table.expose" and e["target"] == name
    assert e["params"] == {"owner_column": "user_id"}
    assert e["outcome"] == "success" and e["client_addr"] == "127.0.0.1"

    r2 = rid()
    resp = inst.post(f"/api/v1/admin/tables/{name}/unexpose", headers=with_rid(admin, r2))
    assert resp.status_code == 200, resp.text
    e = by_rid(inst, r2)[0]
    assert (e["action"], e["target"], e["outcome"]) == ("table.unexpose", name, "success")

    # a failure is recorded with its code
    r3 = rid()
    resp = inst.post("/api/v1/admin/tables/no_such_table_x/expose", headers=with_rid(admin, r3))
    assert resp.status_code == 404, resp.text
    e = by_rid(inst, r3)[0]
    assert (e["action"], e["target"], e["outcome"]) == ("table.expose", "no_such_table_x", "UNKNOWN_TABLE")
