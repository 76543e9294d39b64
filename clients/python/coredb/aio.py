"""The asyncio core of the client: AsyncClient speaks coredb's HTTP API
(API.md) over httpx.

What it does for every call: Authorization with an access token that it keeps
fresh with the refresh token (one refresh at a time however many calls wait
for it; the rotated refresh token replaces the old one, since presenting a used
one again ends the session), X-Request-ID and X-Client-Version headers, retries
of idempotent calls (GET, PUT, DELETE) on 503 after Retry-After (bounded in
count and wait), and error answers raised as typed exceptions (errors.py).

httpx connections and asyncio locks belong to one event loop; the client keeps
them per loop so that one client (and the module-level one of the seed API)
survives several asyncio.run() calls. The refresh is also guarded by a
threading.Lock: threads that share one client, each running its own loop,
would otherwise each refresh with the same refresh token, and the service
ends a session whose used refresh token comes back (reuse detection)."""
import asyncio
import base64
import contextlib
import contextvars
import json
import os
import threading
import time
import uuid
from urllib.parse import quote

import httpx

from ._version import __version__
from .errors import AuthenticationError, CoreDBError, TransportError, error_class

# the service keeps short [0-9A-Za-z._+/-] values as a metrics label (no "@")
CLIENT_VERSION = f"coredb-py/{__version__}"
IDEMPOTENT = frozenset({"GET", "HEAD", "PUT", "DELETE", "OPTIONS"})
REFRESH_MARGIN_S = 5   # refresh this long before the access token's exp


# The X-Request-ID of the calls made inside `with request_id("..."):`, so that a
# service can pass on the id of the request it is serving.
current_request_id = contextvars.ContextVar("coredb_request_id", default=None)


@contextlib.contextmanager
def request_id(rid):
    """Calls made in this block carry X-Request-ID: rid."""
    token = current_request_id.set(rid)
    try:
        yield rid
    finally:
        current_request_id.reset(token)


def _jwt_exp(token):
    """The exp claim of a JWT, unverified (only to schedule a refresh), or None."""
    try:
        payload = token.split(".")[1]
        payload += "=" * (-len(payload) % 4)
        return int(json.loads(base64.urlsafe_b64decode(payload))["exp"])
    except (IndexError, ValueError, KeyError, TypeError):
        return None


def _seq(value):
    """Tuples and sets as JSON arrays; anything else as given, so that the
    service (not the client) judges a wrong type."""
    return list(value) if isinstance(value, (tuple, set, frozenset)) else value


def _seg(value):
    """One path segment, percent-encoded (ids and names come from callers)."""
    return quote(str(value), safe="")


def login_args(args, kw):
    if len(args) == 2:
        base_url = kw.pop("base_url", None) or os.environ.get("COREDB_URL")
        if not base_url:
            raise TypeError("login(email, password) needs COREDB_URL (or login(base_url, email, password))")
        return (base_url,) + tuple(args)
    if len(args) == 3:
        return tuple(args)
    raise TypeError("login(base_url, email, password) or login(email, password)")


class _LoopState:
    def __init__(self, loop, client_kw):
        self.loop = loop
        self.http = httpx.AsyncClient(**client_kw)
        self.refresh_lock = asyncio.Lock()


class AsyncClient:
    """coredb over HTTP, asyncio-first.

    AsyncClient(base_url, token=...) uses an access token as given;
    await AsyncClient.login(base_url, email, password) keeps one fresh with the
    refresh token. Close with await client.aclose() or `async with`."""

    def __init__(self, base_url, token=None, refresh_token=None, *, timeout=30.0,
                 max_retries=3, max_retry_wait=30.0, client_version=CLIENT_VERSION):
        self.base_url = base_url.rstrip("/")
        self.access_token = token
        self.refresh_token = refresh_token
        self.session_id = None
        self.user = None
        self.max_retries = max_retries
        self.max_retry_wait = max_retry_wait
        self.client_version = client_version
        self.last_request_id = None
        self._client_kw = {"base_url": self.base_url, "timeout": timeout}
        self._state = None
        self._refresh_guard = threading.Lock()   # one refresh across loops (threads), see _refresh
        self.refreshes = 0   # how many refreshes this client made (observable in tests)

    # ---- life cycle ----

    @classmethod
    async def login(cls, *args, **kw):
        """login(base_url, email, password) or login(email, password) with the
        URL from COREDB_URL; keyword arguments as for the constructor."""
        base_url, email, password = login_args(args, kw)
        client = cls(base_url, **kw)
        try:
            await client.sign_in(email, password)
        except BaseException:
            await client.aclose()
            raise
        return client

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc):
        await self.aclose()

    async def aclose(self):
        state, self._state = self._state, None
        if state is not None and state.loop is asyncio.get_running_loop():
            await state.http.aclose()

    def _loop_state(self):
        loop = asyncio.get_running_loop()
        if self._state is None or self._state.loop is not loop:
            self._state = _LoopState(loop, self._client_kw)
        return self._state

    # ---- requests ----

    async def request(self, method, path, *, json_body=None, params=None, auth=True,
                      headers=None, request_id=None, expect_json=True):
        """One API call; returns the decoded JSON body (None for 204).
        Raises a CoreDBError subclass for every non-2xx answer."""
        method = method.upper()
        state = self._loop_state()
        rid = request_id or current_request_id.get() or f"py-{uuid.uuid4().hex}"
        refreshed = False
        attempt = 0
        while True:
            if auth:
                await self._ensure_fresh(state)
            hdrs = {"X-Request-ID": rid, "X-Client-Version": self.client_version,
                    "Accept": "application/json"}
            if auth and self.access_token:
                hdrs["Authorization"] = f"Bearer {self.access_token}"
            hdrs.update(headers or {})
            sent_token = self.access_token
            try:
                resp = await state.http.request(method, path, json=json_body, params=params,
                                                headers=hdrs)
            except httpx.HTTPError as e:
                raise TransportError(f"{method} {path}: {type(e).__name__}: {e}",
                                     request_id=rid) from None
            self.last_request_id = resp.headers.get("X-Request-ID", rid)
            if resp.status_code < 400:
                if resp.status_code == 204 or not resp.content:
                    return None
                try:
                    return resp.json()
                except ValueError:
                    if expect_json:
                        raise TransportError(f"{method} {path}: answer is not JSON",
                                             status=resp.status_code, request_id=rid) from None
                    return resp.text
            err = self._error(resp, rid)
            if (resp.status_code == 401 and auth and not refreshed and self.refresh_token
                    and err.code == "TOKEN_EXPIRED"):
                # the token expired between our check and the server's
                refreshed = True
                await self._refresh(state, sent_token)
                continue
            if resp.status_code == 503 and method in IDEMPOTENT and attempt < self.max_retries:
                attempt += 1
                await asyncio.sleep(self._retry_wait(err, attempt))
                continue
            raise err

    def _retry_wait(self, err, attempt):
        wait = err.retry_after if err.retry_after is not None else 0.25 * (2 ** attempt)
        return max(0.0, min(float(wait), self.max_retry_wait))

    @staticmethod
    def _error(resp, rid):
        try:
            body = resp.json()
            env = body["error"] if isinstance(body, dict) and isinstance(body.get("error"), dict) else None
        except ValueError:
            env = None
        retry_after = None
        ra = resp.headers.get("Retry-After")
        if ra is not None:
            try:
                retry_after = float(ra)
            except ValueError:
                retry_after = None
        cls = error_class(resp.status_code)
        if env is None:
            return cls(f"HTTP {resp.status_code}", status=resp.status_code, request_id=rid,
                       retry_after=retry_after)
        details = env.get("details") if isinstance(env.get("details"), dict) else {}
        if retry_after is None and isinstance(details.get("retry_after"), (int, float)):
            retry_after = float(details["retry_after"])
        return cls(env.get("message") or f"HTTP {resp.status_code}", code=env.get("code"),
                   status=resp.status_code, details=details,
                   request_id=env.get("request_id") or rid, timestamp=env.get("timestamp"),
                   retry_after=retry_after)

    # ---- tokens ----

    def _take_tokens(self, body):
        self.access_token = body["access_token"]
        self.refresh_token = body.get("refresh_token", self.refresh_token)
        self.session_id = body.get("session_id", self.session_id)
        if body.get("user") is not None:
            self.user = body["user"]

    async def _ensure_fresh(self, state):
        if not self.refresh_token or not self.access_token:
            return
        exp = _jwt_exp(self.access_token)
        if exp is not None and exp - time.time() <= REFRESH_MARGIN_S:
            await self._refresh(state, self.access_token)

    async def _refresh(self, state, stale_token):
        """Single flight: the first caller refreshes, the others wait on the lock
        and find the token already replaced."""
        async with state.refresh_lock:
            if self.access_token != stale_token:
                return
            # another thread's loop may hold the same refresh token: one refresh at a time
            # across loops too. Polled, not a blocking acquire, so this loop's other tasks
            # keep running (and a cancelled wait leaves the lock free).
            while not self._refresh_guard.acquire(blocking=False):
                await asyncio.sleep(0.005)
            try:
                if self.access_token != stale_token:
                    return
                body = await self.request("POST", "/api/v1/auth/refresh", auth=False,
                                          json_body={"refresh_token": self.refresh_token})
                self._take_tokens(body)
                self.refreshes += 1
            finally:
                self._refresh_guard.release()

    async def sign_in(self, email, password):
        """POST /api/v1/auth/login; this client then uses and refreshes the tokens."""
        body = await self.request("POST", "/api/v1/auth/login", auth=False,
                                  json_body={"email": email, "password": password})
        self._take_tokens(body)
        return body

    async def refresh(self):
        """Refreshes now (normally automatic); returns the new token pair."""
        if not self.refresh_token:
            raise AuthenticationError("no refresh token: log in with Client.login", code="UNAUTHORIZED")
        await self._refresh(self._loop_state(), self.access_token)
        return {"access_token": self.access_token, "refresh_token": self.refresh_token}

    async def logout(self):
        await self.request("POST", "/api/v1/auth/logout")
        self.access_token = self.refresh_token = None

    async def refresh_tokens(self, refresh_token):
        """POST /auth/refresh with a given refresh token (not this client's own)."""
        return await self.request("POST", "/api/v1/auth/refresh", auth=False,
                                  json_body={"refresh_token": refresh_token})

    async def login_tokens(self, email, password):
        """POST /auth/login for someone else: returns their token pair, this
        client's own tokens are left alone."""
        return await self.request("POST", "/api/v1/auth/login", auth=False,
                                  json_body={"email": email, "password": password})

    async def revoke_sessions(self, user_id):
        """POST /auth/revoke: ends every session of that user (self or admin)."""
        return await self.request("POST", "/api/v1/auth/revoke", json_body={"user_id": user_id})

    async def sessions(self):
        """The caller's active sessions, a list (the body's "sessions")."""
        body = await self.request("GET", "/api/v1/auth/sessions")
        return body["sessions"] if isinstance(body, dict) and "sessions" in body else body

    async def end_session(self, session_id):
        return await self.request("DELETE", f"/api/v1/auth/sessions/{_seg(session_id)}")

    # ---- users (/api/v1/users) ----

    async def create_user(self, email, username, password, **extra):
        body = {"email": email, "username": username, "password": password}
        body.update({k: v for k, v in extra.items() if v is not None})
        return await self.request("POST", "/api/v1/users/", json_body=body,
                                  auth=self.access_token is not None)

    async def get_user(self, user_id):
        return await self.request("GET", f"/api/v1/users/{_seg(user_id)}")

    async def get_user_by_email(self, email):
        return await self.request("GET", f"/api/v1/users/email/{_seg(email)}")

    async def get_user_by_username(self, username):
        return await self.request("GET", f"/api/v1/users/username/{_seg(username)}")

    async def update_user(self, user_id, **fields):
        return await self.request("PUT", f"/api/v1/users/{_seg(user_id)}", json_body=fields)

    async def delete_user(self, user_id):
        return await self.request("DELETE", f"/api/v1/users/{_seg(user_id)}")

    # ---- health ----

    async def health(self):
        """GET /health (no auth); a 503 there is an answer, not an error."""
        state = self._loop_state()
        resp = await state.http.get("/health", headers={"X-Client-Version": self.client_version})
        return resp.json()

    async def version(self):
        return (await self.health()).get("version")

    # ---- data (/api/v1/data) ----

    async def query(self, table=None, *, select=None, filters=None, order_by=None, page=None,
                    limit=None, database="postgresql", query_type="select", connection_id=None,
                    **extra):
        """POST /data/query; returns {data, pagination, execution_time_ms, cached}."""
        body = {"database": database, "query_type": query_type}
        if table is not None:
            body["table"] = table
        if select is not None:
            body["select"] = _seq(select)
        if filters is not None:
            body["filters"] = filters
        if order_by is not None:
            body["order_by"] = [{"column": o, "direction": "asc"} if isinstance(o, str) else o
                                for o in order_by]
        if page is not None or limit is not None:
            body["pagination"] = {k: v for k, v in (("page", page), ("limit", limit)) if v is not None}
        body.update(extra)
        return await self.request("POST", "/api/v1/data/query", json_body=body,
                                  headers={"X-Connection-ID": connection_id} if connection_id else None)

    async def query_documents(self, collection, *, filters=None, select=None, order_by=None,
                              page=None, limit=None, connection_id=None):
        """POST /data/query on a document collection: path filters ("a.b"),
        projection of paths, order by a path ({path, direction})."""
        body = {"database": "documents", "collection": collection}
        for name, value in (("filters", filters), ("select", None if select is None else _seq(select)),
                            ("order_by", order_by)):
            if value is not None:
                body[name] = value
        if page is not None or limit is not None:
            body["pagination"] = {k: v for k, v in (("page", page), ("limit", limit)) if v is not None}
        return await self.request("POST", "/api/v1/data/query", json_body=body,
                                  headers={"X-Connection-ID": connection_id} if connection_id else None)

    async def search_vectors(self, collection, vector, *, k=None, filter=None, min_score=None,
                             with_payload=None, with_vector=None, exact=None):
        """POST /data/query k-NN search: {data: [{id, score, payload?, vector?}], count, index}."""
        body = {"database": "vectors", "query_type": "search", "collection": collection,
                "vector": _seq(vector)}
        for name, value in (("k", k), ("filter", filter), ("min_score", min_score),
                            ("with_payload", with_payload), ("with_vector", with_vector), ("exact", exact)):
            if value is not None:
                body[name] = value
        return await self.request("POST", "/api/v1/data/query", json_body=body)

    def transaction(self, connection_id=None):
        """A Transaction builder: add operations, then await .commit()."""
        return Transaction(self, connection_id)

    async def run_transaction(self, operations, connection_id=None):
        return await self.request("POST", "/api/v1/data/transaction",
                                  json_body={"operations": _seq(operations)},
                                  headers={"X-Connection-ID": connection_id} if connection_id else None)

    # ---- connection leases (/api/v1/connections) ----

    def lease(self, service_name, operation_type="read", ttl_seconds=None,
              database_type="postgresql"):
        """async with client.lease("svc", "write") as lease: lease.dsn ..."""
        return Lease(self, service_name, operation_type, ttl_seconds, database_type)

    async def acquire_connection(self, service_name, operation_type="read", ttl_seconds=None,
                                 database_type="postgresql"):
        body = {"service_name": service_name, "database_type": database_type,
                "operation_type": operation_type}
        if ttl_seconds is not None:
            body["ttl_seconds"] = ttl_seconds
        return await self.request("POST", "/api/v1/connections/acquire", json_body=body)

    async def release_connection(self, connection_id, service_name):
        return await self.request("POST", "/api/v1/connections/release",
                                  json_body={"connection_id": connection_id,
                                             "service_name": service_name})

    async def renew_connection(self, connection_id, ttl_seconds=None):
        body = {} if ttl_seconds is None else {"ttl_seconds": ttl_seconds}
        return await self.request("POST", f"/api/v1/connections/{_seg(connection_id)}/renew",
                                  json_body=body)

    async def list_connections(self):
        return await self.request("GET", "/api/v1/connections")

    # ---- administration (/api/v1/admin, admin) ----

    async def admin(self, method, path, json_body=None, params=None):
        """Any admin route, e.g. admin("GET", "/metrics/all")."""
        return await self.request(method, "/api/v1/admin" + path, json_body=json_body, params=params)

    async def create_role(self, role_name, permissions, description=None):
        body = {"role_name": role_name, "permissions": _seq(permissions)}
        if description is not None:
            body["description"] = description
        return await self.admin("POST", "/roles", body)

    async def create_db_user(self, username, password, roles, connection_limit=5):
        return await self.admin("POST", "/db-users", {"username": username, "password": password,
                                                      "roles": _seq(roles),
                                                      "connection_limit": connection_limit})

    async def update_db_user_password(self, username, new_password):
        return await self.admin("PUT", f"/db-users/{_seg(username)}/password",
                                {"new_password": new_password})

    async def revoke_db_user(self, username, roles=None):
        return await self.admin("POST", f"/db-users/{_seg(username)}/revoke",
                                {} if roles is None else {"roles": _seq(roles)})

    async def encrypt_column(self, table_name, column_name, **extra):
        return await self.admin("POST", "/encryption/columns",
                                dict(table_name=table_name, column_name=column_name, **extra))

    async def rotate_column_key(self, table_name, column_name):
        return await self.admin("POST", "/encryption/columns/rotate",
                                {"table_name": table_name, "column_name": column_name})

    async def encryption_audit(self, table_name=None):
        return await self.admin("GET", "/encryption/audit",
                                params=None if table_name is None else {"table_name": table_name})

    async def enable_rls(self, table_name, policy_name, policy, roles=None):
        body = {"table_name": table_name, "policy_name": policy_name, "policy": policy}
        if roles is not None:
            body["roles"] = _seq(roles)
        return await self.admin("POST", "/rls", body)

    async def set_schema_permissions(self, schema_name, role, permissions):
        return await self.admin("PUT", f"/schemas/{_seg(schema_name)}/permissions",
                                {"role": role, "permissions": _seq(permissions)})

    async def transfer_ownership(self, object_type, object_name, new_owner):
        return await self.admin("POST", "/ownership", {"object_type": object_type,
                                                       "object_name": object_name,
                                                       "new_owner": new_owner})

    async def health_detail(self, part=None):
        """GET /admin/health[/connection|query|resource]: {health, reason, ...}."""
        return await self.admin("GET", "/health" + (f"/{_seg(part)}" if part else ""))

    async def metrics(self, part="all"):
        """GET /admin/metrics/{tables|performance|errors|all}."""
        return await self.admin("GET", f"/metrics/{_seg(part)}")

    async def create_backup(self):
        return await self.admin("POST", "/backups")

    async def list_backups(self):
        return await self.admin("GET", "/backups")

    async def verify_backup(self, name):
        return await self.admin("POST", f"/backups/{_seg(name)}/verify")

    async def restore_backup(self, name):
        return await self.admin("POST", f"/backups/{_seg(name)}/restore", {"confirm": True})

    async def cleanup_backups(self):
        return await self.admin("POST", "/backups/cleanup")

    async def audit_log(self, **params):
        return await self.admin("GET", "/audit", params=params or None)

    async def create_collection(self, name, kind="documents", **options):
        """POST /admin/collections: options partition_key, dimensions, metric, index, hnsw."""
        return await self.admin("POST", "/collections", {"name": name, "kind": kind, **options})

    async def list_collections(self):
        return await self.admin("GET", "/collections")

    async def drop_collection(self, name):
        return await self.admin("DELETE", "/collections/" + quote(name, safe=""))


class Transaction:
    """A small builder for POST /data/transaction: PostgreSQL operations commit
    together or not at all; Redis ones follow the commit."""

    def __init__(self, client, connection_id=None):
        self.client = client
        self.connection_id = connection_id
        self.operations = []

    def _pg(self, operation, table, **fields):
        op = {"database": "postgresql", "operation": operation, "table": table}
        op.update({k: v for k, v in fields.items() if v is not None})
        self.operations.append(op)
        return self

    def insert(self, table, data):
        return self._pg("insert", table, data=data)

    def update(self, table, filters, data):
        return self._pg("update", table, filters=filters, data=data)

    def delete(self, table, filters):
        return self._pg("delete", table, filters=filters)

    def upsert(self, table, data, conflict_columns):
        return self._pg("upsert", table, data=data, conflict_columns=_seq(conflict_columns))

    def _coll(self, database, operation, collection, **fields):
        op = {"database": database, "operation": operation, "collection": collection}
        op.update({k: v for k, v in fields.items() if v is not None})
        self.operations.append(op)
        return self

    def doc_insert(self, collection, document, id=None):
        return self._coll("documents", "insert", collection, document=document, id=id)

    def doc_upsert(self, collection, document, id=None):
        return self._coll("documents", "upsert", collection, document=document, id=id)

    def doc_replace(self, collection, id, document, if_match=None):
        return self._coll("documents", "replace", collection, id=id, document=document, if_match=if_match)

    def doc_patch(self, collection, id, patch, if_match=None):
        """JSON merge patch (RFC 7396): None removes a member."""
        return self._coll("documents", "patch", collection, id=id, patch=patch, if_match=if_match)

    def doc_delete(self, collection, id, if_match=None):
        return self._coll("documents", "delete", collection, id=id, if_match=if_match)

    def vector_upsert(self, collection, vector, payload=None, id=None):
        return self._coll("vectors", "upsert", collection, vector=_seq(vector), payload=payload, id=id)

    def vector_delete(self, collection, id):
        return self._coll("vectors", "delete", collection, id=id)

    def _redis(self, operation, key, **fields):
        op = {"database": "redis", "operation": operation, "key": key}
        op.update({k: v for k, v in fields.items() if v is not None})
        self.operations.append(op)
        return self

    def redis_set(self, key, value, ttl=None):
        return self._redis("set", key, value=value, ttl=ttl)

    def redis_del(self, key):
        return self._redis("del", key)

    def redis_expire(self, key, ttl):
        return self._redis("expire", key, ttl=ttl)

    def redis_incr(self, key):
        return self._redis("incr", key)

    async def commit(self):
        """Sends the operations; returns {transaction_id, status, results, ...}."""
        if not self.operations:
            raise ValueError("empty transaction")
        return await self.client.run_transaction(self.operations, self.connection_id)


class Lease:
    """A connection lease as an async context manager: acquired on entry,
    released on exit (also when the body raises). .dsn is the lease's
    database_url, a short-lived credential psycopg2/asyncpg connect with;
    .query() runs the data API on the leased server-side connection."""

    def __init__(self, client, service_name, operation_type, ttl_seconds, database_type):
        self.client = client
        self.service_name = service_name
        self.operation_type = operation_type
        self.ttl_seconds = ttl_seconds
        self.database_type = database_type
        self.info = None
        self.released = None

    @property
    def connection_id(self):
        return self.info["connection_id"]

    @property
    def dsn(self):
        return self.info["database_url"]

    @property
    def expires_at(self):
        return self.info["expires_at"]

    async def acquire(self):
        self.info = await self.client.acquire_connection(self.service_name, self.operation_type,
                                                         self.ttl_seconds, self.database_type)
        return self

    async def release(self):
        if self.info is not None and self.released is None:
            self.released = await self.client.release_connection(self.connection_id,
                                                                 self.service_name)
        return self.released

    async def renew(self, ttl_seconds=None):
        out = await self.client.renew_connection(self.connection_id, ttl_seconds)
        if isinstance(out, dict) and "expires_at" in out:
            self.info["expires_at"] = out["expires_at"]
        return out

    async def query(self, table=None, **kw):
        return await self.client.query(table, connection_id=self.connection_id, **kw)

    def transaction(self):
        return self.client.transaction(self.connection_id)

    async def __aenter__(self):
        return await self.acquire()

    async def __aexit__(self, *exc):
        try:
            await self.release()
        except CoreDBError:
            if exc[0] is None:   # do not hide the body's own exception
                raise
