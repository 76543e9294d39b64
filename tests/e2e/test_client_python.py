"""The Python client (clients/python, package coredb; issue 17) against the
real binary, PostgreSQL and Redis: AsyncClient and its sync facade Client,
seed 000's classes at their module paths (its "Examples" run as written),
seed 004's UserService, seed 001's ConnectionAPI, the data API, leases, and
the client's own behaviour: token refresh (single flight, rotation), retries
of idempotent calls on 503, typed errors carrying the envelope, X-Request-ID
and X-Client-Version. Every effect is read where it lands (pg catalogs and
tables via psycopg2, Redis via redis-py, the service's metrics)."""
import asyncio
import logging
import os
import subprocess
import sys
import threading
import time
import uuid

import psycopg2
import pytest

from datahelp import admin_of, redis_client, scalar, start_instance, user
from identity import PASSWORD, craft, live_claims, unique
from servers import COREDB_BIN, PgServer, scratch_dir

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "clients", "python"))

import coredb  # noqa: E402
from coredb import (AsyncClient, AuthenticationError, Client, ConflictError,  # noqa: E402
                    CoreDBError, NotFoundError, PermissionDeniedError, ServiceUnavailableError,
                    ValidationError)
from coredb import _seed, aio  # noqa: E402
from coredb.connection_api import ConnectionAPI  # noqa: E402
from coredb.infrastructure.config import DatabaseSettings  # noqa: E402
from coredb.management.backup import BackupManager  # noqa: E402
from coredb.management.health import (check_connection_health, check_query_health,  # noqa: E402
                                      check_resource_health)
from coredb.management.monitor import DatabaseMonitor  # noqa: E402
from coredb.security.access import DatabaseAccess  # noqa: E402
from coredb.security.auth import DatabaseAuth  # noqa: E402
from coredb.security.encryption import DatabaseEncryption  # noqa: E402
from coredb.services import UserService  # noqa: E402

REDIS_DB = 5
ENC_KEY = os.urandom(32).hex()


def run(coro):
    return asyncio.run(coro)


def q(inst, sql, params=None):
    return inst.pg.query(inst.db, sql, params)


@pytest.fixture(scope="module")
def inst(pg, redis_server):
    d = os.path.join(scratch_dir(), f"pyclient-backups-{uuid.uuid4().hex[:8]}")
    os.makedirs(d)
    server = start_instance(pg, redis_server, REDIS_DB, BACKUP_DIR=d, DB_ENCRYPTION_KEY=ENC_KEY)
    yield server
    server.stop_clean()


@pytest.fixture(scope="module")
def root(inst):
    return admin_of(inst)


@pytest.fixture
def seed_env(monkeypatch, inst, root):
    """The environment seed 000's classes read, for the instance's admin."""
    monkeypatch.setenv("COREDB_URL", inst.base)
    monkeypatch.setenv("COREDB_EMAIL", root.email)
    monkeypatch.setenv("COREDB_PASSWORD", PASSWORD)
    monkeypatch.delenv("COREDB_TOKEN", raising=False)
    _seed.reset_env_client()
    yield
    _seed.reset_env_client()


def new_table(inst, cols="id serial PRIMARY KEY, body text"):
    name = unique("t_")
    q(inst, f"CREATE TABLE {name} ({cols})")
    return name


# ---- version, headers ----

def test_version_matches_the_service_and_pyproject(inst):
    out = subprocess.run([COREDB_BIN, "--version"], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == f"coredb {coredb.__version__}"
    with open(os.path.join(HERE, "..", "..", "clients", "python", "pyproject.toml")) as f:
        assert f'version = "{coredb.__version__}"' in f.read()
    with Client(inst.base) as c:
        assert c.version() == coredb.__version__


def test_request_id_and_client_version_reach_the_service(inst, root):
    with Client.login(inst.base, root.email, PASSWORD) as c:
        assert c.access_token and c.refresh_token and c.user["role"] == "admin"
        with coredb.request_id("py-test-rid-1"):
            c.get_user(root.id)
        assert c.last_request_id == "py-test-rid-1"
        # an error carries the id the client sent
        with pytest.raises(NotFoundError) as e, coredb.request_id("py-test-rid-404"):
            c.get_user(str(uuid.uuid4()))
        assert e.value.request_id == "py-test-rid-404" and e.value.status == 404
        assert e.value.code == "NOT_FOUND" and e.value.timestamp
        # a generated one otherwise, different per call
        c.get_user(root.id)
        first = c.last_request_id
        c.get_user(root.id)
        assert first.startswith("py-") and c.last_request_id.startswith("py-") and first != c.last_request_id
    metrics = inst.get("/metrics", headers=root.headers).text
    line = [ln for ln in metrics.splitlines()
            if ln.startswith("coredb_client_requests_total") and f'client_version="coredb-py/{coredb.__version__}"' in ln]
    assert line and float(line[0].split()[-1]) >= 3, line
    assert "py-test-rid-404" in inst.log()


# ---- typed errors ----

def test_typed_errors_carry_the_envelope(inst, root):
    acct = user(inst)
    with Client(inst.base, token="not-a-jwt") as bad:
        with pytest.raises(AuthenticationError) as e:
            bad.get_user(acct.id)
        assert e.value.status == 401 and e.value.code == "UNAUTHORIZED" and e.value.request_id
    forged = craft(live_claims(acct.token, role="admin"), secret="wrong-secret")
    with Client(inst.base, token=forged) as bad:
        with pytest.raises(AuthenticationError) as e:
            bad.metrics("all")
        assert e.value.code == "UNAUTHORIZED"
    expired = craft(live_claims(acct.token, exp=int(time.time()) - 3600, iat=int(time.time()) - 7200,
                                nbf=int(time.time()) - 7200))
    with Client(inst.base, token=expired) as bad:   # no refresh token: the error surfaces
        with pytest.raises(AuthenticationError) as e:
            bad.get_user(acct.id)
        assert e.value.code == "TOKEN_EXPIRED"
    with Client(inst.base) as anon:
        with pytest.raises(AuthenticationError):
            anon.list_backups()
    with Client(inst.base, token=acct.token) as c:
        with pytest.raises(PermissionDeniedError) as e:
            c.metrics("all")
        assert e.value.status == 403 and e.value.code == "FORBIDDEN"
        with pytest.raises(PermissionDeniedError):   # another user's id, or none
            c.get_user(root.id)
        with pytest.raises(ConflictError) as e:
            c.create_user(acct.email.upper(), unique(), PASSWORD)
        assert e.value.status == 409 and "email" in str(e.value.details)
        with pytest.raises(ValidationError) as e:
            c.query("projects", select=["id", "no_such_col"])
        assert e.value.code == "UNKNOWN_COLUMN"
        # wrong types: 400 naming the field
        with pytest.raises(ValidationError) as e:
            c.query("projects", limit="ten")
        assert e.value.code == "VALIDATION_FAILED" and e.value.details, e.value
        with pytest.raises(ValidationError):
            c.run_transaction([{"database": "postgresql", "operation": "insert", "table": "projects",
                                "data": "not-an-object"}])
        # SQL in an identifier: refused, the table still there
        with pytest.raises(NotFoundError) as e:
            c.query("projects; DROP TABLE projects")
        assert e.value.code == "UNKNOWN_TABLE"
        assert scalar(inst, "SELECT count(*) FROM pg_class WHERE relname = 'projects'") == 1
        # a path segment is one segment: no climbing into the admin routes
        with pytest.raises(CoreDBError) as e:
            c.get_user_by_username("../../admin/metrics/all")
        assert e.value.status in (403, 404)
        # an oversized body: 413 in the envelope
        with pytest.raises(CoreDBError) as e:
            c.query("projects", filters={"title": "x" * (1 << 20)})
        assert e.value.status == 413 and e.value.code == "PAYLOAD_TOO_LARGE"
    with Client(f"http://127.0.0.1:{inst.port + 1 if inst.port < 65535 else 1}") as gone:
        with pytest.raises(coredb.TransportError):
            gone.get_user(acct.id)


# ---- users (seed 004) ----

def test_user_service_crud_and_authentication(inst, root):
    async def main():
        async with AsyncClient(inst.base, token=root.token) as session:
            name = unique("svc")
            created = await UserService.create_user(session, {
                "email": f"{name}@example.com", "username": name, "password": PASSWORD,
                "display_name": "Svc User"})
            uid = created["user_id"]
            assert (await UserService.get_user_by_id(session, uid))["username"] == name
            assert (await UserService.get_user_by_email(session, f"{name.upper()}@example.com"))["user_id"] == uid
            assert (await UserService.get_user_by_username(session, name))["user_id"] == uid
            assert await UserService.get_user_by_id(session, str(uuid.uuid4())) is None
            updated = await UserService.update_user(session, uid, {"display_name": "Renamed"})
            assert updated["display_name"] == "Renamed"
            assert q(inst, "SELECT display_name FROM users WHERE user_id = %s", (uid,))[0][0] == "Renamed"
            who = await UserService.authenticate_user(session, f"{name}@example.com", PASSWORD)
            assert who["user_id"] == uid
            assert await UserService.authenticate_user(session, f"{name}@example.com", "wrong-pw-123") is None
            with pytest.raises(ConflictError) as e:
                await UserService.create_user(session, {"email": f"{name}@example.com",
                                                        "username": unique(), "password": PASSWORD})
            assert e.value.details.get("field") == "email" or "email" in str(e.value.details)
            assert await UserService.delete_user(session, uid) is True
            assert await UserService.delete_user(session, uid) is False
            return uid
    uid = run(main())
    assert scalar(inst, "SELECT count(*) FROM users WHERE user_id = %s", (uid,)) == 0


# ---- data: query, transaction builder ----

def test_query_and_transaction_builder(inst, redis_server):
    acct = user(inst)
    rds = redis_client(redis_server, REDIS_DB)

    async def main():
        async with AsyncClient(inst.base, token=acct.token) as c:
            tx = (c.transaction()
                  .insert("projects", {"title": "alpha", "user_id": acct.id})
                  .insert("projects", {"title": "beta", "user_id": acct.id})
                  .redis_set("client:py", "hello", ttl=60))
            assert len(tx.operations) == 3
            out = await tx.commit()
            assert out["status"] == "committed" and len(out["results"]) == 3
            got = await c.query("projects", select=["title"], filters={"user_id": acct.id},
                                order_by=["title"], limit=10)
            assert [r["title"] for r in got["data"]] == ["alpha", "beta"]
            assert got["pagination"]["total"] == 2
            # all or nothing: the second operation fails, the first is not written
            bad = (c.transaction().insert("projects", {"title": "gamma", "user_id": acct.id})
                   .insert("projects", {"no_such_col": 1}))
            with pytest.raises(ValidationError) as e:
                await bad.commit()
            assert e.value.details.get("operation") == 2
            with pytest.raises(ValueError):
                await c.transaction().commit()
    run(main())
    titles = sorted(r[0] for r in q(inst, "SELECT title FROM projects WHERE user_id = %s", (acct.id,)))
    assert titles == ["alpha", "beta"]
    assert rds.get(f"app:user:{acct.id}:client:py") == "hello"


def test_collections_documents_and_vectors(inst, root):
    """The admin's collection methods, the document and vector operations of
    the builder in one transaction with a table row, a document query with a
    path filter, a vector search, and the errors typed (sync facade)."""
    docs, vecs = unique("pydocs"), unique("pyvecs")
    acct = user(inst)
    with Client(inst.base, token=root.token) as admin:
        made = admin.create_collection(docs, "documents", partition_key="address.city")
        assert made["name"] == docs and made["kind"] == "documents", made
        admin.create_collection(vecs, "vectors", dimensions=3, metric="cosine")
        names = {c["name"] for c in admin.list_collections()["collections"]}
        assert {docs, vecs} <= names
        with pytest.raises(ValidationError) as e:
            admin.create_collection("x; DROP TABLE users; --", "documents")
        assert e.value.details.get("field") == "name"
    with Client(inst.base, token=acct.token) as c:
        out = (c.transaction()
               .insert("projects", {"title": "with-docs", "user_id": acct.id})
               .doc_insert(docs, {"name": "Ann", "address": {"city": "Lyon"}}, id="ann")
               .doc_insert(docs, {"name": "Bob", "address": {"city": "Paris"}}, id="bob")
               .vector_upsert(vecs, [1, 0, 0], payload={"tag": "x"}, id="p1")
               .vector_upsert(vecs, [0, 1, 0], payload={"tag": "y"}, id="p2")
               .commit())
        assert out["status"] == "committed" and len(out["results"]) == 5
        etag = out["results"][1]["data"]["rows"][0]["etag"]
        got = c.query_documents(docs, filters={"address.city": "Lyon"})
        assert [d["id"] for d in got["data"]] == ["ann"]
        c.transaction().doc_patch(docs, "ann", {"age": 31, "name": None}, if_match=etag).commit()
        assert q(inst, f"SELECT doc FROM coredb.coll_{docs} WHERE id = 'ann'")[0][0] == {
            "address": {"city": "Lyon"}, "age": 31}
        with pytest.raises(ConflictError) as e:
            c.transaction().doc_delete(docs, "ann", if_match=etag).commit()
        assert e.value.code == "PRECONDITION_FAILED"
        hits = c.search_vectors(vecs, [0.9, 0.1, 0], k=2)
        assert [h["id"] for h in hits["data"]] == ["p1", "p2"] and hits["data"][0]["payload"] == {"tag": "x"}
        assert c.search_vectors(vecs, [0, 1, 0], k=1, filter={"tag": "x"})["data"][0]["id"] == "p1"
        c.transaction().vector_delete(vecs, "p1").commit()
        assert [h["id"] for h in c.search_vectors(vecs, [1, 0, 0], k=5)["data"]] == ["p2"]
        with pytest.raises(ValidationError) as e:
            c.search_vectors(vecs, [1, 0])
        assert e.value.details.get("field") == "vector"
        with pytest.raises(PermissionDeniedError):
            c.list_collections()
    with Client(inst.base, token=root.token) as admin:
        admin.drop_collection(docs)
        with pytest.raises(NotFoundError):
            admin.drop_collection(docs)
    assert scalar(inst, "SELECT to_regclass(%s) IS NULL", (f"coredb.coll_{docs}",))


def test_doc_upsert_and_replace(inst, root):
    """The builder's doc_upsert and doc_replace against the real service,
    each effect read in the collection's table: an upsert inserts, then
    overwrites the whole document with a new etag; the id may come from the
    document; a replace needs the current etag when given one, a stale one
    is PRECONDITION_FAILED and changes nothing, a missing id is 404, and a
    failing replace takes the transaction's other operations with it."""
    docs = unique("pyups")
    acct = user(inst)

    def row(i):
        rows = q(inst, f"SELECT doc, etag FROM coredb.coll_{docs} WHERE id = %s", (i,))
        return rows[0] if rows else None

    with Client(inst.base, token=root.token) as admin:
        admin.create_collection(docs, "documents")
    try:
        with Client(inst.base, token=acct.token) as c:
            out = c.transaction().doc_upsert(docs, {"name": "Ann", "n": 1}, id="ann").commit()
            e1 = out["results"][0]["data"]["rows"][0]["etag"]
            assert row("ann") == ({"name": "Ann", "n": 1}, e1)
            # an upsert of an existing id replaces the whole document (no merge), with a new etag
            out = c.transaction().doc_upsert(docs, {"n": 2}, id="ann").commit()
            e2 = out["results"][0]["data"]["rows"][0]["etag"]
            assert e2 != e1 and row("ann") == ({"n": 2}, e2)
            assert scalar(inst, f"SELECT count(*) FROM coredb.coll_{docs}") == 1
            # without id=, the document's own "id" member names it
            c.transaction().doc_upsert(docs, {"id": "bob", "n": 7}).commit()
            assert row("bob")[0] == {"id": "bob", "n": 7}
            # replace with the current etag
            out = c.transaction().doc_replace(docs, "ann", {"name": "Ann", "n": 3}, if_match=e2).commit()
            e3 = out["results"][0]["data"]["rows"][0]["etag"]
            assert e3 != e2 and row("ann") == ({"name": "Ann", "n": 3}, e3)
            # a stale etag: refused, nothing changed
            with pytest.raises(ConflictError) as e:
                c.transaction().doc_replace(docs, "ann", {"n": 99}, if_match=e2).commit()
            assert e.value.code == "PRECONDITION_FAILED" and e.value.status == 409, e.value
            assert row("ann") == ({"name": "Ann", "n": 3}, e3)
            # without if_match a replace overwrites; a missing id is 404
            c.transaction().doc_replace(docs, "ann", {"n": 4}).commit()
            assert row("ann")[0] == {"n": 4}
            with pytest.raises(NotFoundError):
                c.transaction().doc_replace(docs, "nobody", {"n": 1}).commit()
            assert row("nobody") is None
            # all or nothing: the upsert before a failing replace is rolled back
            with pytest.raises(ConflictError):
                (c.transaction().doc_upsert(docs, {"n": 1}, id="carl")
                 .doc_replace(docs, "ann", {"n": 5}, if_match="stale-etag").commit())
            assert row("carl") is None and row("ann")[0] == {"n": 4}
            # hostile input: typed 4xx, no effect
            with pytest.raises(ValidationError) as e:
                c.transaction().doc_replace(docs, "", {"n": 1}).commit()
            assert e.value.details.get("field") == "id", e.value.details
            with pytest.raises(ValidationError):
                c.transaction().doc_upsert(docs, ["not", "an", "object"], id="dan").commit()
            with pytest.raises(CoreDBError) as e:
                c.transaction().doc_upsert("x; DROP TABLE users; --", {"n": 1}, id="eve").commit()
            assert 400 <= e.value.status < 500, e.value
            assert row("dan") is None and row("eve") is None
            assert scalar(inst, "SELECT to_regclass('public.users') IS NOT NULL")
    finally:
        with Client(inst.base, token=root.token) as admin:
            admin.drop_collection(docs)


# ---- leases ----

def test_lease_context_manager_dsn_and_release(inst):
    acct = user(inst)

    async def main():
        async with AsyncClient(inst.base, token=acct.token) as c:
            async with c.lease("py-client-test", "write") as lease:
                role = await asyncio.to_thread(_current_user, lease.dsn)
                assert role.startswith("coredb_lease_")
                assert scalar(inst, "SELECT count(*) FROM pg_roles WHERE rolname = %s", (role,)) == 1
                out = await lease.query("projects", select=["id"])
                assert out["data"] == []
                cid = lease.connection_id
            assert lease.released["status"] == "released"
            assert scalar(inst, "SELECT count(*) FROM pg_roles WHERE rolname = %s", (role,)) == 0
            with pytest.raises(NotFoundError):     # the released lease is gone
                await c.query("projects", connection_id=cid)
            # released also when the body raises; the body's error is the one seen
            with pytest.raises(RuntimeError):
                async with c.lease("py-client-test") as lease2:
                    raise RuntimeError("boom")
            assert lease2.released["status"] == "released"
    run(main())
    # the sync facade's lease
    with Client(inst.base, token=acct.token) as c:
        with c.lease("py-sync", "read") as lease:
            assert _current_user(lease.dsn).startswith("coredb_lease_")
            cid = lease.connection_id
        with pytest.raises(NotFoundError):
            c.query("projects", connection_id=cid)


def test_lease_dsn_with_asyncpg(inst):
    """The lease's DSN with a second driver, asyncpg (Debian's
    python3-asyncpg): it connects as the lease's role, reads and writes as
    the user (row-level security), and the release ends the connection and
    drops the role."""
    import asyncpg

    acct = user(inst)
    title = unique("asyncpg-")

    async def main():
        async with AsyncClient(inst.base, token=acct.token) as c:
            async with c.lease("py-asyncpg", "write") as lease:
                conn = await asyncpg.connect(lease.dsn)
                role = await conn.fetchval("SELECT current_user")
                assert role.startswith("coredb_lease_"), role
                pid = await conn.fetchval("INSERT INTO projects (title, user_id) VALUES ($1, $2) RETURNING id",
                                          title, uuid.UUID(acct.id))
                assert await conn.fetchval("SELECT title FROM projects WHERE id = $1", pid) == title
            assert lease.released["status"] == "released"
            # the release ended the session: the next statement fails
            with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, ConnectionError, OSError)):
                await conn.fetchval("SELECT 1")
            await conn.close(timeout=5)
            return role, pid

    role, pid = run(main())
    assert scalar(inst, "SELECT count(*) FROM pg_roles WHERE rolname = %s", (role,)) == 0
    assert q(inst, "SELECT title, user_id::text FROM projects WHERE id = %s", (str(pid),)) == [(title, acct.id)]


def _current_user(dsn):
    conn = psycopg2.connect(dsn)
    try:
        with conn.cursor() as cur:
            cur.execute("SELECT current_user")
            return cur.fetchone()[0]
    finally:
        conn.close()


# ---- seed 000: failure dictionaries, management classes ----

def test_seed_refusal_is_a_failure_dict(inst, root, monkeypatch):
    acct = user(inst)
    monkeypatch.setenv("COREDB_URL", inst.base)
    monkeypatch.setenv("COREDB_TOKEN", acct.token)
    _seed.reset_env_client()
    try:
        out = run(DatabaseAuth().create_role(unique("r_"), ["SELECT"]))
        assert out["status"] == "failure" and out["code"] == "FORBIDDEN" and out["http_status"] == 403
        assert out["error"] and out["timestamp"] and out["request_id"]
        health = run(check_connection_health())
        assert health["status"] == "unhealthy" and health["error"]
    finally:
        _seed.reset_env_client()
    monkeypatch.setenv("COREDB_URL", f"http://127.0.0.1:{inst.port}/nowhere")
    monkeypatch.delenv("COREDB_TOKEN")
    monkeypatch.delenv("COREDB_EMAIL", raising=False)
    _seed.reset_env_client()
    out = run(DatabaseMonitor().collect_all_metrics())
    assert out["status"] == "failure" and "COREDB_EMAIL" in out["error"]
    _seed.reset_env_client()


def test_seed_auth_roles_and_users(inst, seed_env):
    auth = DatabaseAuth()
    role, login = unique("r_"), unique("u_")
    out = run(auth.create_role(role, ["SELECT ON projects"], "client test"))
    assert out["status"] == "success" and out["timestamp"], out
    again = run(auth.create_role(role, ["SELECT"]))
    assert again["status"] == "failure" and again["http_status"] == 409, again
    assert run(auth.create_user(login, "S3cret-pass-1", [role], 3))["status"] == "success"
    assert q(inst, "SELECT rolcanlogin, rolconnlimit FROM pg_roles WHERE rolname = %s", (login,)) == [(True, 3)]
    assert scalar(inst, "SELECT pg_has_role(%s, %s, 'MEMBER')", (login, role)) is True
    assert run(auth.update_user_password(login, "S3cret-pass-2"))["status"] == "success"
    assert run(auth.revoke_user_access(login, [role]))["status"] == "success"
    assert scalar(inst, "SELECT pg_has_role(%s, %s, 'MEMBER')", (login, role)) is False
    bad = run(auth.create_role("x; DROP TABLE projects", ["SELECT"]))
    assert bad["status"] == "failure" and bad["http_status"] == 400
    typed = run(auth.create_role(unique("r_"), "SELECT"))      # a string, not a list
    assert typed["status"] == "failure" and typed["http_status"] == 400, typed
    typed = run(auth.create_user(unique("u_"), 12345678901, [role]))
    assert typed["status"] == "failure" and typed["code"] == "VALIDATION_FAILED", typed
    assert scalar(inst, "SELECT count(*) FROM pg_class WHERE relname = 'projects'") == 1


def test_seed_encryption_and_access(inst, seed_env):
    t = new_table(inst, "id serial PRIMARY KEY, ssn text, org_id text")
    q(inst, f"INSERT INTO {t} (ssn, org_id) VALUES ('123-45-6789', 'o1'), ('987-65-4321', 'o2')")
    enc = DatabaseEncryption(b"ignored-master-key")
    out = run(enc.setup_column_encryption(t, "ssn"))
    assert out["status"] == "success", out
    assert scalar(inst, f"SELECT count(*) FROM {t} WHERE ssn LIKE 'cdb1:%%'") == 2
    assert run(enc.rotate_encryption_key(t, "ssn"))["status"] == "success"
    audit = run(enc.audit_encryption(t))
    assert audit["status"] == "success" and audit["columns"][0]["key_version"] == 2, audit
    assert run(enc.setup_column_encryption(t, "no_such"))["status"] == "failure"
    access = DatabaseAccess()
    out = run(access.enable_row_level_security(t, "org_policy", "org_id = current_setting('app.current_org')"))
    assert out["status"] == "success", out
    assert scalar(inst, "SELECT relrowsecurity FROM pg_class WHERE relname = %s", (t,)) is True
    assert scalar(inst, "SELECT count(*) FROM pg_policies WHERE tablename = %s AND policyname = 'org_policy'",
                  (t,)) == 1
    role = unique("r_")
    assert run(DatabaseAuth().create_role(role, ["SELECT"]))["status"] == "success"
    schema = unique("s_")
    q(inst, f"CREATE SCHEMA {schema}")
    assert run(access.set_schema_permissions(schema, role, ["USAGE"]))["status"] == "success"
    assert scalar(inst, "SELECT has_schema_privilege(%s, %s, 'USAGE')", (role, schema)) is True
    assert run(access.transfer_ownership("table", t, role))["status"] == "success"
    assert scalar(inst, "SELECT pg_get_userbyid(relowner) FROM pg_class WHERE relname = %s", (t,)) == role


def test_seed_health_monitor_backup(inst, seed_env):
    for fn in (check_connection_health, check_query_health, check_resource_health):
        out = run(fn())
        assert out["status"] in ("healthy", "degraded"), out
        assert out["timestamp"] and out["health"] == out["status"]
    conn = run(check_connection_health())
    assert conn["postgresql"]["reachable"] is True
    mon = DatabaseMonitor()
    for name in ("collect_table_metrics", "collect_performance_metrics", "collect_error_metrics",
                 "collect_all_metrics"):
        out = run(getattr(mon, name)())
        assert out["status"] == "success" and out["timestamp"], (name, out)
    tables = run(mon.collect_table_metrics())
    assert "projects" in str(tables)
    bm = BackupManager()
    made = run(bm.create_backup())
    assert made["status"] == "success" and made["name"] and made["size_bytes"] > 0, made
    assert os.path.exists(os.path.join(inst.env["BACKUP_DIR"], made["name"])) or \
        any(made["name"] in f for f in os.listdir(inst.env["BACKUP_DIR"]))
    ok = run(bm.verify_backup(made["name"]))
    assert ok["status"] == "success" and ok["valid"] is True, ok
    missing = run(bm.verify_backup("coredb-20200101T000000000Z"))
    assert missing["status"] == "failure" and missing["http_status"] == 404, missing
    bad = run(bm.verify_backup("no-such-backup.dump"))
    assert bad["status"] == "failure" and bad["code"] == "VALIDATION_FAILED", bad
    assert run(bm.cleanup_old_backups())["status"] == "success"
    assert run(bm.restore_backup("../../etc/passwd"))["status"] == "failure"
    listed = run(bm.list_backups())
    assert made["name"] in str(listed)


def test_seed_settings_from_environment(monkeypatch):
    monkeypatch.setenv("POSTGRES_USER", "app")
    monkeypatch.setenv("POSTGRES_PASSWORD", "pw-not-shown")
    monkeypatch.setenv("POSTGRES_DB", "appdb")
    monkeypatch.setenv("POSTGRES_PORT", "6543")
    s = DatabaseSettings()
    assert (s.POSTGRES_USER, s.POSTGRES_DB, s.POSTGRES_PORT, s.POSTGRES_HOST, s.POSTGRES_SCHEMA) == \
        ("app", "appdb", 6543, "localhost", "public")
    assert "pw-not-shown" not in repr(s)
    monkeypatch.setenv("POSTGRES_PORT", "x")
    with pytest.raises(ValueError):
        DatabaseSettings()


# ---- seed 001: ConnectionAPI (sync) ----

def test_connection_api(inst, root, monkeypatch):
    monkeypatch.setenv("COREDB_URL", inst.base)
    monkeypatch.setenv("COREDB_TOKEN", root.token)
    api = ConnectionAPI(None)
    api.initialize(None)
    try:
        name = unique("ca")
        created = api.create_user(name, f"{name}@example.com", PASSWORD)
        uid = created["user_id"]
        assert api.get_user_by_email(f"{name}@example.com")["user_id"] == uid
        assert api.get_user_by_email(f"nobody-{name}@example.com") is None
        rows = api.fetch_from_db({"table": "users", "select": ["user_id", "username"],
                                  "filters": {"username": name}})
        assert rows == [(uid, name)]
        assert api.fetch_from_db({"table": "users", "select": ["username"],
                                  "filters": {"username": name}}, as_dict=True) == [{"username": name}]
        with pytest.raises(TypeError):
            api.fetch_from_db("SELECT * FROM users WHERE email = %s", params=("x",))
        tokens = api.create_user_tokens({"email": f"{name}@example.com", "password": PASSWORD})
        new = api.refresh_user_tokens(tokens["refresh_token"])
        assert new["access_token"] != tokens["access_token"]
        with Client(inst.base, token=new["access_token"]) as theirs:
            assert theirs.get_user(uid)["user_id"] == uid
            api.revoke_user_tokens(uid)
            with pytest.raises(AuthenticationError) as e:
                theirs.get_user(uid)
            assert e.value.code == "TOKEN_REVOKED"
        assert api.delete_user(uid) is True and api.delete_user(uid) is False
        assert scalar(inst, "SELECT count(*) FROM users WHERE user_id = %s", (uid,)) == 0
    finally:
        api.close()


# ---- token refresh: single flight, rotation, the reactive path ----

def test_refresh_single_flight_and_rotation(pg):
    inst = start_instance(pg, ACCESS_TOKEN_TTL=2, JWT_CLOCK_SKEW=0)
    try:
        acct = user(inst)

        async def main():
            c = await AsyncClient.login(inst.base, acct.email, PASSWORD)
            try:
                first_refresh = c.refresh_token
                await asyncio.sleep(2.5)                  # the access token expired
                got = await asyncio.gather(*[c.get_user(acct.id) for _ in range(8)])
                assert all(g["user_id"] == acct.id for g in got)
                assert c.refreshes == 1                   # one refresh for eight callers
                assert c.refresh_token != first_refresh   # rotated, and the new one kept
                # the reactive path: a token the server calls expired is refreshed once
                old_margin = aio.REFRESH_MARGIN_S
                aio.REFRESH_MARGIN_S = -3600
                try:
                    await asyncio.sleep(2.5)
                    assert (await c.get_user(acct.id))["user_id"] == acct.id
                    assert c.refreshes == 2
                finally:
                    aio.REFRESH_MARGIN_S = old_margin
                # presenting a used refresh token again ends the session (reuse detection):
                # the client never does it itself, so this is the only way to get there
                with pytest.raises(AuthenticationError):
                    await c.refresh_tokens(first_refresh)
                with pytest.raises(AuthenticationError):
                    await c.get_user(acct.id)
            finally:
                await c.aclose()
        run(main())
        # the sync facade refreshes the same way
        with Client.login(inst.base, acct.email, PASSWORD) as c:
            time.sleep(2.5)
            assert c.get_user(acct.id)["user_id"] == acct.id and c.refreshes == 1
    finally:
        inst.stop_clean()


def test_refresh_single_flight_across_threads(pg):
    """One client shared by threads that each run their own event loop (the
    seed API's module-level client used from a thread pool): after the access
    token expires, one refresh in all, so the refresh token is never
    presented twice and the session survives (the service ends a session
    whose used refresh token comes back)."""
    # 10 s tokens (exp in whole seconds: 9-10 s of life when issued): after 5.5 s one is within the
    # client's 5 s margin, and a fresh one stays out of it for 4 s, however slowly a round's 24 calls
    # run (with 8 s tokens and 3.5 s an ASan build on a loaded machine once took over 2 s and refreshed twice)
    inst = start_instance(pg, ACCESS_TOKEN_TTL=10, JWT_CLOCK_SKEW=0)
    try:
        acct = user(inst)

        async def login():
            return await AsyncClient.login(inst.base, acct.email, PASSWORD)
        c = run(login())
        for round_ in range(3):
            time.sleep(5.5)                                # the access token is due for refresh
            start = threading.Barrier(8)
            results, errors = [], []

            def worker():
                async def calls():
                    start.wait()
                    return await asyncio.gather(*[c.get_user(acct.id) for _ in range(3)])
                try:
                    results.extend(asyncio.run(calls()))
                except Exception as e:                     # noqa: BLE001 - reported below
                    errors.append(e)
            threads = [threading.Thread(target=worker) for _ in range(8)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert not errors, errors
            assert len(results) == 24 and all(r["user_id"] == acct.id for r in results)
            assert c.refreshes == round_ + 1, c.refreshes
        # the session is still alive: no refresh token was presented twice
        assert run(c.get_user(acct.id))["user_id"] == acct.id
        assert scalar(inst, "SELECT count(*) FROM coredb.sessions WHERE session_id = %s AND revoked_at IS NULL",
                      (c.session_id,)) == 1
    finally:
        inst.stop_clean()


# ---- retries on 503 ----

@pytest.fixture(scope="module")
def private_cluster():
    """A cluster of its own: the 503 test stops it, and the examples' role
    names (app_user, user1) are cluster-wide and must not meet another module's."""
    server = PgServer("pg-pyclient")
    yield server
    server.destroy()


def test_idempotent_calls_retry_on_503(private_cluster):
    inst = start_instance(private_cluster, DB_POOL_MAX=2, DB_POOL_MIN=1, DB_POOL_ACQUIRE_TIMEOUT=300)
    try:
        acct = user(inst)
        with Client(inst.base, token=acct.token, max_retries=0) as c:
            assert c.get_user(acct.id)["user_id"] == acct.id
            timer = None
            private_cluster.stop()
            try:
                with pytest.raises(ServiceUnavailableError) as e:
                    c.get_user(acct.id)
                assert e.value.status == 503 and e.value.code == "DATABASE_UNAVAILABLE", e.value
                # a POST is not retried even with retries allowed
                c.max_retries, c.max_retry_wait = 6, 1.0
                started = time.time()
                with pytest.raises(ServiceUnavailableError):
                    c.query("projects")
                assert time.time() - started < 2
                # bounded: two retries, then the error
                c.max_retries, c.max_retry_wait = 2, 0.2
                started = time.time()
                with pytest.raises(ServiceUnavailableError):
                    c.get_user(acct.id)
                assert 0.4 <= time.time() - started < 10
                # a GET is retried: PostgreSQL comes back while the client waits
                c.max_retries, c.max_retry_wait = 8, 1.0
                timer = threading.Timer(1.0, private_cluster.start)
                timer.start()
                started = time.time()
                assert c.get_user(acct.id)["user_id"] == acct.id
                assert time.time() - started >= 1.0
            finally:
                if timer is not None:
                    timer.join()
                if not _pg_up(private_cluster):
                    private_cluster.start()
            # POOL_EXHAUSTED: the wait comes from details.retry_after (no Retry-After header)
            c.max_retries = 0
            for _ in range(4):
                try:
                    c.acquire_connection("py-retry", "read")
                except ServiceUnavailableError:
                    break
            with pytest.raises(ServiceUnavailableError) as e:
                c.get_user(acct.id)
            assert e.value.code == "POOL_EXHAUSTED" and e.value.retry_after == 1, e.value
    finally:
        inst.stop_clean()


def test_retry_waits_for_retry_after(inst, redis_server):
    """A 503 MAINTENANCE carries Retry-After: N (5 s). The client waits N
    before it retries: a client that ignored the header (0.25 s back-off)
    would fail the lower bound. The maintenance is the real one, set as a
    restore on another instance sets it: the deployment's Redis key, which
    every instance polls (src/security/maintenance.c)."""
    acct = user(inst)
    deployment = q(inst, "SELECT id::text FROM coredb.deployment")[0][0]
    r = redis_client(redis_server, REDIS_DB)
    key = f"coredb:{deployment}:maintenance"
    path = "/api/v1/data/tables"
    timer = None
    r.set(key, int(time.time()), ex=120)
    try:
        deadline = time.time() + 10
        while True:
            resp = inst.get(path, headers=acct.headers)
            if resp.status_code == 503 or time.time() > deadline:
                break
            time.sleep(0.1)
        assert resp.status_code == 503 and resp.json()["error"]["code"] == "MAINTENANCE", resp.text
        wait = int(resp.headers["Retry-After"])
        assert wait >= 2, wait      # long enough to tell from the 0.25 s back-off
        with Client(inst.base, token=acct.token, max_retries=1, max_retry_wait=60) as c:
            # still in maintenance after one retry: the error, after waiting Retry-After once
            started = time.time()
            with pytest.raises(ServiceUnavailableError) as e:
                c.request("GET", path)
            took = time.time() - started
            assert e.value.code == "MAINTENANCE" and e.value.retry_after == wait, e.value
            assert wait <= took < wait + 3, took
            # the maintenance ends while the client waits: the retry succeeds
            c.max_retries = 3
            timer = threading.Timer(1.0, r.delete, (key,))
            timer.start()
            started = time.time()
            tables = c.request("GET", path)
            took = time.time() - started
            assert isinstance(tables, (dict, list)), tables
            assert wait <= took < wait + 3, took
            # the wait is bounded by max_retry_wait, whatever the service asks
            r.set(key, int(time.time()), ex=120)
            deadline = time.time() + 10
            while inst.get(path, headers=acct.headers).status_code != 503 and time.time() < deadline:
                time.sleep(0.1)
            c.max_retries, c.max_retry_wait = 2, 0.5
            started = time.time()
            with pytest.raises(ServiceUnavailableError):
                c.request("GET", path)
            assert 1.0 <= time.time() - started < wait, time.time() - started
    finally:
        if timer is not None:
            timer.join()
        r.delete(key)
    deadline = time.time() + 10
    while inst.get(path, headers=acct.headers).status_code == 503 and time.time() < deadline:
        time.sleep(0.1)


def _pg_up(server):
    try:
        server.query("postgres", "SELECT 1")
        return True
    except Exception:
        return False


# ---- seed 000's "Examples", as written ----

EXAMPLES = '''
# Create role and user
auth = DatabaseAuth()
await auth.create_role("app_user", ["SELECT", "INSERT"])
await auth.create_user("user1", "password", ["app_user"])

# Setup encryption
encryption = DatabaseEncryption(master_key)
await encryption.setup_column_encryption("users", "ssn")

# Setup RLS
access = DatabaseAccess()
await access.enable_row_level_security(
    "patient_data",
    "org_policy",
    "org_id = current_setting('app.current_org')"
)

# Regular health checks
health = await check_connection_health()
if health["status"] != "healthy":
    logger.error(f"Database unhealthy: {health['error']}")

# Collect metrics
monitor = DatabaseMonitor()
metrics = await monitor.collect_all_metrics()
'''


def test_seed_examples_run_as_written(private_cluster, monkeypatch):
    # the example's database password "password" is 8 characters: the policy allows it here
    inst = start_instance(private_cluster, DB_ENCRYPTION_KEY=ENC_KEY, PASSWORD_MIN_LENGTH=8)
    try:
        # the examples' tables: users gets the ssn column they encrypt, patient_data exists
        q(inst, "ALTER TABLE users ADD COLUMN ssn text")
        q(inst, "UPDATE users SET ssn = '123-45-6789'")
        q(inst, "CREATE TABLE patient_data (id serial PRIMARY KEY, org_id text, note text)")
        monkeypatch.setenv("COREDB_URL", inst.base)
        monkeypatch.setenv("COREDB_EMAIL", inst.admin_email)
        monkeypatch.setenv("COREDB_PASSWORD", PASSWORD)
        monkeypatch.delenv("COREDB_TOKEN", raising=False)
        _seed.reset_env_client()
        ns = {"DatabaseAuth": DatabaseAuth, "DatabaseEncryption": DatabaseEncryption,
              "DatabaseAccess": DatabaseAccess, "DatabaseMonitor": DatabaseMonitor,
              "check_connection_health": check_connection_health,
              "master_key": os.urandom(32), "logger": logging.getLogger("examples")}
        body = "\n".join("    " + ln for ln in EXAMPLES.strip().splitlines())
        exec(f"async def examples():\n{body}\n    return locals()", ns)
        out = run(ns["examples"]())
        assert out["health"]["status"] in ("healthy", "degraded"), out["health"]
        assert out["metrics"]["status"] == "success"
        # the effects, in the catalogs
        assert scalar(inst, "SELECT count(*) FROM pg_roles WHERE rolname = 'app_user'") == 1
        assert scalar(inst, "SELECT has_table_privilege('app_user', 'projects', 'INSERT')") is True
        assert q(inst, "SELECT rolcanlogin FROM pg_roles WHERE rolname = 'user1'") == [(True,)]
        assert scalar(inst, "SELECT pg_has_role('user1', 'app_user', 'MEMBER')") is True
        assert scalar(inst, "SELECT count(*) FROM users WHERE ssn = '123-45-6789'") == 0
        assert scalar(inst, "SELECT count(*) FROM users WHERE ssn LIKE 'cdb1:%%'") >= 1
        assert scalar(inst, "SELECT relrowsecurity FROM pg_class WHERE relname = 'patient_data'") is True
        assert scalar(inst, "SELECT count(*) FROM pg_policies WHERE tablename = 'patient_data' "
                            "AND policyname = 'org_policy'") == 1
        # the same example again: refusals are failure dictionaries, not exceptions
        again = run(DatabaseAuth().create_role("app_user", ["SELECT", "INSERT"]))
        assert again["status"] == "failure" and again["error"], again
    finally:
        _seed.reset_env_client()
        inst.stop_clean()


# ---- the client README's quick start ----

def test_readme_quick_start_runs(inst):
    acct = user(inst)
    root_dir = os.path.join(HERE, "..", "..")
    with open(os.path.join(root_dir, "clients", "python", "README.md")) as f:
        text = f.read()
    block = text.split("## Quick start", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert len(block.strip().splitlines()) == 5, block
    script = (block.replace("http://127.0.0.1:8095", inst.base)
              .replace("me@example.com", acct.email).replace("my-password", PASSWORD))
    out = subprocess.run([sys.executable, "-c", script], cwd=root_dir, capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert "'title': 'First'" in out.stdout, out.stdout
    assert scalar(inst, "SELECT count(*) FROM projects WHERE user_id = %s AND title = 'First'", (acct.id,)) == 1
    os.environ["COREDB_URL"] = inst.base    # login(email, password): the URL from the environment
    try:
        with Client.login(acct.email, PASSWORD) as c:
            assert c.base_url == inst.base and c.user["user_id"] == acct.id
    finally:
        del os.environ["COREDB_URL"]
    with pytest.raises(TypeError):
        Client.login("only-one-arg")

    async def main():   # the async one-liner of the README
        async with await AsyncClient.login(inst.base, acct.email, PASSWORD) as db:
            return await db.query("projects")
    assert run(main())["data"][0]["title"] == "First"


# ---- the rest of the methods: builder operations, sessions, lease renewal, audit ----

def test_builder_operations_sessions_and_lease_renewal(inst, root, redis_server):
    acct = user(inst)
    rds = redis_client(redis_server, REDIS_DB)
    pid = str(uuid.uuid4())
    with Client.login(inst.base, acct.email, PASSWORD) as c:
        # the sync builder: every operation, effects read in PostgreSQL and Redis
        c.transaction().insert("projects", {"id": pid, "title": "v1", "user_id": acct.id}) \
            .redis_set("n", "1").commit()
        out = c.transaction().update("projects", {"id": pid}, {"status": "active"}) \
            .upsert("projects", {"id": pid, "user_id": acct.id, "title": "v2"}, ["id"]) \
            .redis_incr("n").redis_expire("n", 100).commit()
        assert out["status"] == "committed" and len(out["results"]) == 4
        assert q(inst, "SELECT title, status FROM projects WHERE id = %s", (pid,)) == [("v2", "active")]
        key = f"app:user:{acct.id}:n"
        assert rds.get(key) == "2" and 0 < rds.ttl(key) <= 100
        c.transaction().delete("projects", {"id": pid}).redis_del("n").commit()
        assert scalar(inst, "SELECT count(*) FROM projects WHERE id = %s", (pid,)) == 0
        assert rds.exists(key) == 0
        # ConnectionAPI.execute_query is the same call
        api = ConnectionAPI(client=c)
        api.execute_query([{"database": "postgresql", "operation": "insert", "table": "projects",
                            "data": {"title": "via-api", "user_id": acct.id}}])
        assert scalar(inst, "SELECT count(*) FROM projects WHERE title = 'via-api'") == 1
        assert any(s["current"] for s in api.check_active_sessions())
        # lease renewal, and the admin's view of the leases
        with c.lease("py-renew", "read", ttl_seconds=30) as lease:
            before = lease.expires_at
            time.sleep(1.1)
            lease.renew(120)
            assert lease.expires_at > before
            with Client(inst.base, token=root.token) as admin:
                assert lease.connection_id in str(admin.list_connections())
        # an explicit refresh rotates both tokens
        old = (c.access_token, c.refresh_token)
        new = c.refresh()
        assert new["access_token"] != old[0] and new["refresh_token"] != old[1]
        assert c.get_user(acct.id)["user_id"] == acct.id
        # another session, listed, then ended from this one
        other = Client.login(inst.base, acct.email, PASSWORD)
        try:
            assert other.session_id in [s["session_id"] for s in c.sessions()]
            c.end_session(other.session_id)
            with pytest.raises(AuthenticationError) as e:
                other.get_user(acct.id)
            assert e.value.code == "TOKEN_REVOKED"
        finally:
            other.close()
        token = c.access_token
        c.logout()
        assert c.access_token is None
    with Client(inst.base, token=token) as gone:
        with pytest.raises(AuthenticationError):
            gone.get_user(acct.id)
    with Client(inst.base, token=root.token) as admin:
        assert admin.health()["status"] in ("UP", "DEGRADED")
        role = unique("r_")
        admin.create_role(role, ["SELECT"])
        entries = admin.audit_log(limit=50)["entries"]
        assert any(role in str(e) for e in entries), entries[:3]
        assert admin.admin("GET", "/metrics/errors")["status"] == "success"


def test_backup_restore_through_the_seed_class(pg, monkeypatch):
    d = os.path.join(scratch_dir(), f"pyclient-restore-{uuid.uuid4().hex[:8]}")
    os.makedirs(d)
    inst = start_instance(pg, BACKUP_DIR=d)
    try:
        monkeypatch.setenv("COREDB_URL", inst.base)
        monkeypatch.setenv("COREDB_EMAIL", inst.admin_email)
        monkeypatch.setenv("COREDB_PASSWORD", PASSWORD)
        monkeypatch.delenv("COREDB_TOKEN", raising=False)
        _seed.reset_env_client()
        q(inst, "CREATE TABLE restore_marker (v text)")
        q(inst, "INSERT INTO restore_marker VALUES ('before')")
        bm = BackupManager()
        made = run(bm.create_backup())
        assert made["status"] == "success", made
        q(inst, "INSERT INTO restore_marker VALUES ('after')")
        out = run(bm.restore_backup(made["name"]))
        assert out["status"] == "success", out
        assert [r[0] for r in q(inst, "SELECT v FROM restore_marker")] == ["before"]
    finally:
        _seed.reset_env_client()
        inst.stop_clean()


def test_seed_get_session(inst, monkeypatch):
    """Seed 000's "Database Connection" and "Connection Management" blocks,
    with structured queries in place of SQL text."""
    from coredb.infrastructure.database import get_session
    acct = user(inst)
    monkeypatch.setenv("COREDB_URL", inst.base)
    monkeypatch.setenv("COREDB_TOKEN", acct.token)
    _seed.reset_env_client()
    insert = {"database": "postgresql", "operation": "insert", "table": "projects",
              "data": {"title": "in-session", "user_id": acct.id}}
    bad = {"database": "postgresql", "operation": "insert", "table": "projects", "data": {"nope": 1}}

    async def main():
        async with get_session() as session:
            await session.execute(insert)
            await session.commit()
        async with get_session() as session:
            result = await session.execute({"table": "projects", "select": ["title"]})
            assert [r["title"] for r in result["data"]] == ["in-session"]
        # the seed's rollback pattern: the failing commit writes nothing
        with pytest.raises(ValidationError):
            async with get_session() as session:
                try:
                    await session.execute(insert)
                    await session.execute(bad)
                    await session.commit()
                except Exception:
                    await session.rollback()
                    raise
        # left without commit: nothing sent
        async with get_session() as session:
            await session.execute(insert)
        with pytest.raises(TypeError):
            async with get_session() as session:
                await session.execute("SELECT 1")
    try:
        run(main())
    finally:
        _seed.reset_env_client()
    assert scalar(inst, "SELECT count(*) FROM projects WHERE user_id = %s", (acct.id,)) == 1
