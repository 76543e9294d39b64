"""Helpers for the data API tests (/api/v1/data/query and /transaction):
instances with a bootstrap admin and a Redis database of their own, callers
of each role, rows written straight into PostgreSQL (as the owner, past
row-level security), and the request/response shapes of the contract.

Each test module gets its own Redis database number so that cache entries of
one module's database (admin queries are cached under the identity "admin")
can never be served to another module's database."""
import json
import re
import time
import uuid

import redis

from conftest import base_env
from identity import PASSWORD, Account, assert_error, login, new_account, register, unique  # noqa: F401 (assert_error re-exported)
from servers import Coredb

QUERY = "/api/v1/data/query"
TX = "/api/v1/data/transaction"
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
ISO_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?([+-]\d\d(:\d\d)?|Z)$")
PROJECT_COLS = {"id", "user_id", "title", "description", "status", "settings", "created_at",
                "updated_at"}
TABLES = ["users", "projects", "content_analysis", "media_assets"]


def redis_url(redis_server, dbnum):
    return f"redis://127.0.0.1:{redis_server.port}/{dbnum}"


def redis_client(redis_server, dbnum):
    return redis.Redis(host="127.0.0.1", port=redis_server.port, db=dbnum, decode_responses=True)


def admin_env():
    email = f"{unique('root')}@example.com"
    return {"COREDB_ADMIN_EMAIL": email, "COREDB_ADMIN_PASSWORD": PASSWORD}


def start_instance(pg, redis_server=None, redis_db=None, db=None, **extra):
    """A coredb on a fresh migrated database (or db), with a bootstrap admin;
    Redis database redis_db of redis_server when given, else the in-process
    cache. The caller stops it (inst.stop_clean())."""
    name = db or pg.create_database()
    env = admin_env()
    env.update(extra)
    if redis_server is not None:
        env["REDIS_URL"] = redis_url(redis_server, redis_db or 0)
    inst = Coredb(base_env(pg, name, None, **env))
    inst.db = name
    inst.pg = pg
    inst.admin_email = env["COREDB_ADMIN_EMAIL"]
    return inst


def admin_of(inst):
    """Logs in the bootstrap admin of an instance started by start_instance."""
    session = login(inst, inst.admin_email, PASSWORD)
    assert session["user"]["role"] == "admin", session["user"]
    return Account(inst, session["user"], PASSWORD, session)


def user(inst):
    return new_account(inst)


def premium(inst, admin):
    u, password = register(inst, token=admin.token, role="premium")
    acct = Account(inst, u, password, login(inst, u["email"], password))
    assert acct.session["user"]["role"] == "premium"
    return acct


# ---- requests ----

def query(inst, acct, body, **kw):
    headers = dict(acct.headers) if acct is not None else {}
    headers.update(kw.pop("headers", {}))
    return inst.post(QUERY, json=body, headers=headers, **kw)


def query_ok(inst, acct, body):
    resp = query(inst, acct, body)
    assert resp.status_code == 200, f"{str(body)[:300]} -> {resp.status_code} {resp.text[:800]}"
    out = resp.json()
    assert set(out) >= {"data", "pagination", "execution_time_ms", "cached"}, out
    assert isinstance(out["data"], list), out
    assert isinstance(out["cached"], bool), out
    assert isinstance(out["execution_time_ms"], (int, float)), out
    assert set(out["pagination"]) == {"page", "limit", "total", "pages"}, out
    return out


def tx(inst, acct, operations, **kw):
    return inst.post(TX, json={"operations": operations}, headers=acct.headers, **kw)


def tx_ok(inst, acct, operations):
    resp = tx(inst, acct, operations)
    assert resp.status_code == 200, f"{str(operations)[:300]} -> {resp.status_code} {resp.text[:800]}"
    out = resp.json()
    assert set(out) >= {"transaction_id", "status", "results", "execution_time_ms"}, out
    assert UUID_RE.match(str(out["transaction_id"])), out
    assert out["status"] == "committed", out
    assert len(out["results"]) == len(operations), out
    for i, res in enumerate(out["results"], 1):
        assert res["operation"] == i, out
        assert res["status"] in ("success", "pending"), out
    return out


def tx_fail(inst, acct, operations, status, code=None, operation=None):
    """A refused transaction: checks status, code and details.operation."""
    err = assert_error(tx(inst, acct, operations), status, code)
    if operation is not None:
        assert err["details"].get("operation") == operation, err
    return err


def pg_insert(table, data, **extra):
    op = {"database": "postgresql", "operation": "insert", "table": table, "data": data}
    op.update(extra)
    return op


def pg_update(table, filters, data, **extra):
    op = {"database": "postgresql", "operation": "update", "table": table, "filters": filters, "data": data}
    op.update(extra)
    return op


def pg_delete(table, filters):
    return {"database": "postgresql", "operation": "delete", "table": table, "filters": filters}


def pg_upsert(table, data, conflict_columns):
    return {"database": "postgresql", "operation": "upsert", "table": table, "data": data,
            "conflict_columns": conflict_columns}


def rset(key, value, ttl=None):
    op = {"database": "redis", "operation": "set", "key": key, "value": value}
    if ttl is not None:
        op["ttl"] = ttl
    return op


def rop(operation, key, **extra):
    op = {"database": "redis", "operation": operation, "key": key}
    op.update(extra)
    return op


# ---- straight into PostgreSQL, as the owner ----

def add_project(inst, user_id, title=None, status="draft", description=None, settings=None,
                created_at=None):
    """Inserts one project (bypassing coredb and its cache); returns its id."""
    rows = inst.pg.query(
        inst.db,
        "INSERT INTO projects (user_id, title, status, description, settings, created_at) "
        "VALUES (%s, %s, %s, %s, %s::jsonb, coalesce(%s::timestamptz, now())) RETURNING id::text",
        (user_id, title or unique("p"), status, description, json.dumps(settings or {}),
         created_at))
    return rows[0][0]


def add_projects(inst, user_id, n, prefix="p"):
    rows = inst.pg.query(
        inst.db,
        "INSERT INTO projects (user_id, title) SELECT %s, %s || lpad(g::text, 3, '0') "
        "FROM generate_series(0, %s - 1) g RETURNING id::text",
        (user_id, prefix, n))
    return [r[0] for r in rows]


def add_analysis(inst, project_id, confidence=None, analysis_type="tone", result=None):
    rows = inst.pg.query(
        inst.db,
        "INSERT INTO content_analysis (project_id, analysis_type, result, confidence) "
        "VALUES (%s, %s, %s::jsonb, %s) RETURNING id::text",
        (project_id, analysis_type, json.dumps(result or {}), confidence))
    return rows[0][0]


def add_media(inst, project_id, size_bytes=None, asset_type="image"):
    rows = inst.pg.query(
        inst.db,
        "INSERT INTO media_assets (project_id, asset_type, url, size_bytes) "
        "VALUES (%s, %s, %s, %s) RETURNING id::text",
        (project_id, asset_type, f"https://cdn.example.com/{uuid.uuid4().hex}", size_bytes))
    return rows[0][0]


def counts(inst):
    """Row count of every seed table plus the coredb tables, as a dict."""
    out = {}
    for t in TABLES + ["coredb.sessions", "coredb.schema_migrations"]:
        try:
            out[t] = inst.pg.query(inst.db, f"SELECT count(*) FROM {t}")[0][0]
        except Exception as exc:  # a missing table is the damage we look for
            out[t] = repr(exc)
    return out


def scalar(inst, sql, params=None):
    rows = inst.pg.query(inst.db, sql, params)
    return rows[0][0] if rows else None


def wait_for(pred, timeout=8.0, step=0.1):
    deadline = time.time() + timeout
    while True:
        value = pred()
        if value or time.time() > deadline:
            return value
        time.sleep(step)


# ---- /metrics ----

def metric(inst, admin, family, label="outcome"):
    """The samples of a labelled family: {label value: value}."""
    resp = inst.get("/metrics", headers=admin.headers)
    assert resp.status_code == 200, resp.text[:300]
    return {k: float(v) for k, v in
            re.findall(r'^%s\{%s="(\w+)"\} (\S+)$' % (family, label), resp.text, re.M)}


def counter(inst, admin, name):
    """An unlabelled sample (0 when absent)."""
    resp = inst.get("/metrics", headers=admin.headers)
    m = re.search(r"^%s (\S+)$" % name, resp.text, re.M)
    return float(m.group(1)) if m else 0.0


def delta(before, after):
    return {k: after[k] - before[k] for k in before}
