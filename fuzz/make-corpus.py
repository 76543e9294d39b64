#!/usr/bin/env python3
"""Writes the seed corpora of fuzz/corpus/<harness>/ (committed; rerun after
the e2e tests grow). Seeds come from what the end-to-end tests send:

- every json= body literal in tests/e2e/*.py (names and expressions that are
  not literals become a uuid string), sorted to the harness of its route by
  its keys: "operations" -> data_tx, a query shape -> data_query, the rest ->
  json_bodies;
- every raw request (bytes starting with a method) in tests/e2e/test_http*.py
  -> http_request;
- the migrations of migrations/ -> migration_file;
- document and vector bodies (doc_query, doc_tx, vec_search,
  collections_create): dict literals naming those databases, the bodies the
  helpers dq() and search() send, the filters, vectors and bad search
  members of parametrize lists, and the injection lists BAD_PATHS and
  HOSTILE_COLLECTIONS as paths, collection names and partition keys;
plus a few hand-made ones where the tests build the input at run time
(tokens signed with the harness's fixture key, configuration, manifests,
encrypted values, every filter operator, real[] texts, float32 edges).
Usage: python3 fuzz/make-corpus.py
"""
import ast
import base64
import glob
import hashlib
import hmac
import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "fuzz", "corpus")
UUID = "0b8f7a2e-2f6a-4c55-9d0c-5a4f1c2d3e4f"
seeds = {}


def add(harness, data):
    if isinstance(data, str):
        data = data.encode()
    seeds.setdefault(harness, set()).add(data)


def value(node):
    """A literal with every non-literal leaf replaced by a uuid string."""
    if isinstance(node, ast.Dict):
        out = {}
        for k, v in zip(node.keys, node.values):
            if isinstance(k, ast.Constant) and isinstance(k.value, str):
                out[k.value] = value(v)
        return out
    if isinstance(node, (ast.List, ast.Tuple)):
        return [value(e) for e in node.elts]
    if isinstance(node, ast.Constant) and not isinstance(node.value, bytes):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant):
        return -node.operand.value
    return UUID


QUERY_KEYS = {"select", "filters", "order_by", "pagination", "query_type"}
for path in sorted(glob.glob(os.path.join(ROOT, "tests", "e2e", "*.py"))):
    tree = ast.parse(open(path).read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict):   # bodies built first and sent later
            keys = {k.value for k in node.keys if isinstance(k, ast.Constant)}
            if "operations" in keys:
                add("data_tx", b"\x00" + json.dumps(value(node)).encode())
            elif "table" in keys and QUERY_KEYS & keys:
                add("data_query", b"\x01" + json.dumps(value(node)).encode())
        if isinstance(node, ast.Call):
            for kw in node.keywords:
                if kw.arg == "json" and isinstance(kw.value, ast.Dict):
                    body = value(kw.value)
                    text = json.dumps(body)
                    if "operations" in body:
                        for role in (b"\x00", b"\x01", b"\x02"):
                            add("data_tx", role + text.encode())
                    elif "table" in body and (QUERY_KEYS & body.keys() or body.get("database")):
                        for role in (b"\x00", b"\x02"):
                            add("data_query", role + text.encode())
                    else:
                        add("json_bodies", text)
        if os.path.basename(path).startswith("test_http") and isinstance(node, ast.Constant) \
                and isinstance(node.value, bytes) and node.value.split(b" ")[0] in (
                    b"GET", b"POST", b"PUT", b"PATCH", b"DELETE", b"HEAD", b"TRACE", b"FOO", b"get"):
            add("http_request", node.value)

# requests as the API.md examples send them, with the headers request.c reads
for req in [
    b"POST /api/v1/data/query?page=2 HTTP/1.1\r\nHost: x\r\nAccept: application/vnd.visiobook.v1+json;q=0.9, */*\r\n"
    b"X-Request-ID: abc-123\r\nAuthorization: Bearer eyJhbGciOiJIUzI1NiJ9.e30.x\r\nUser-Agent: fuzz\r\n"
    b"Content-Type: application/json; charset=utf-8\r\nContent-Length: 20\r\n\r\n{\"table\":\"projects\"}",
    b"PUT /api/v1/users/%41b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Type: application/json\r\n"
    b"\r\n5\r\n{\"a\":\r\n2\r\n1}\r\n0\r\n\r\nGET /health/live HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
    b"DELETE http://h/api/v1/auth/sessions/abc?x=1 HTTP/1.1\r\nHost: h\r\nAuthorization: bearer  t\r\n"
    b"Accept: text/html\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n",
]:
    add("http_request", req)

# tokens: the fixture key and clock of fuzz/jwt_verify.c (and the key of fuzz/http_request.c)
KEY = b"fuzz-secret-fuzz-secret-fuzz-secret-0123"
NOW = 1800000000
b64 = lambda b: base64.urlsafe_b64encode(b).rstrip(b"=")


def token(cl):
    signing = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode()) + b"." + b64(json.dumps(cl).encode())
    return signing + b"." + b64(hmac.new(KEY, signing, hashlib.sha256).digest())


# requests with a token valid until 2100 (http_request checks it against the real clock)
for role in ("user", "admin"):
    t = token({"iss": "coredb", "aud": "coredb-api", "sub": UUID, "role": role, "sid": UUID, "jti": "j",
               "iat": 1700000000, "nbf": 1700000000, "exp": 4102444800})
    add("http_request", b"POST /api/v1/data/transaction HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + t +
        b"\r\nContent-Type: application/json\r\nContent-Length: 16\r\n\r\n{\"operations\":[]}")
    add("http_request", b"GET /api/v1/admin/backups HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + t + b"\r\n\r\n")
claims = {"iss": "coredb", "aud": "coredb-api", "sub": UUID, "role": "user", "sid": UUID, "jti": "j1",
          "iat": NOW - 10, "nbf": NOW - 10, "exp": NOW + 900}
for hdr, cl in [({"alg": "HS256", "typ": "JWT"}, claims),
                ({"alg": "HS256"}, dict(claims, aud=["x", "coredb-api"])),
                ({"alg": "HS256", "typ": "JWT"}, dict(claims, exp=NOW - 100)),
                ({"alg": "HS256", "typ": "JWT"}, dict(claims, nbf="9999999999")),
                ({"alg": "none"}, claims), ({"alg": "HS256", "crit": ["x"]}, claims)]:
    h, p = json.dumps(hdr).encode(), json.dumps(cl).encode()
    add("jwt_verify", b"\x01" + h + b"\xff" + p)
    signing = b64(h) + b"." + b64(p)
    add("jwt_verify", b"\x00" + signing + b"." + b64(hmac.new(KEY, signing, hashlib.sha256).digest()))
add("jwt_verify", b"\x00" + b"a.b.c")

for env in [
    "DATABASE_URL=postgresql+asyncpg://app:s3cr3t-passw0rd@db.example:5432/app?sslmode=require\n"
    "JWT_SECRET=0123456789abcdef0123456789abcdef-x\nREDIS_URL=redis://:redis-passw0rd-x@127.0.0.1:6379/0\n",
    "POSTGRES_HOST=db\nPOSTGRES_PORT=5433\nPOSTGRES_USER=app\nPOSTGRES_PASSWORD=p@ss:w/rd%%\nPOSTGRES_DB=app\n"
    "JWT_SECRET=0123456789abcdef0123456789abcdef-x\nPOSTGRES_SCHEMA=app\n",
    "DATABASE_READ_URLS=postgres://r:replica-pass-1@r1/app,postgres://r:replica-pass-2@r2/app\nDB_POOL_MIN=2\n"
    "DB_POOL_MAX=10\nDEBUG=true\nBACKUP_DIR=./var/b\nHTTP_THREADS=4\nDB_SSLMODE=verify-full\n",
    "COREDB_ADMIN_EMAIL=a@example.com\nCOREDB_ADMIN_PASSWORD=Admin-passw0rd-1\nLOG_LEVEL=debug\n"
    "DB_ENCRYPTION_KEY=" + "ab" * 32 + "\nBACKUP_ENCRYPT=1\nRATE_LIMIT_USER=0\nLEASE_MAX_TTL=60\nLEASE_TTL=600\n",
]:
    add("config_env", env)

for path in sorted(glob.glob(os.path.join(ROOT, "migrations", "*.sql"))):
    add("migration_file", os.path.basename(path).encode() + b"\n" + open(path, "rb").read())
add("migration_file", "20240101_002_fn.sql\n-- migrate:no-transaction\n-- migrate:up\nCREATE FUNCTION f() RETURNS "
    "text AS $body$ SELECT $$a;b$$ || E'x\\';' $body$ LANGUAGE sql; /* a /* nested; */ ; */ SELECT \"a;b\";"
    " -- c;\n-- migrate:down\nDROP FUNCTION f;\n")

NAME = "coredb-20260101T000000000Z"
manifest = {"name": NAME, "file": NAME + ".dump", "size_bytes": 18, "sha256": hashlib.sha256(
    b"PGDMP fuzz archive").hexdigest(), "created_at": "2026-01-01T00:00:00Z", "duration_ms": 5,
    "format": "pg_dump-custom", "encrypted": False, "server_version": "15.8",
    "migration_version": "20240115_001", "tables": {"public.users": 3}}
add("backup_manifest", json.dumps(manifest, indent=2, sort_keys=True))
add("backup_manifest", json.dumps(dict(manifest, encrypted=True, created_at="1999-13-40T99:99:99Z")))

for v in [b"42\x00cdb1:3:" + base64.b64encode(bytes(64)), b"7\x00cdb1:1:AAAA", b"\x00cdb1:1000000:",
          b"pk\x00" + b"ab" * 72, b"x\x00" + base64.b64encode(bytes(32)), b"plain text"]:
    add("colcrypt_value", v)

# ---- documents and vectors (issue 15): fuzz/doc_query.c, doc_tx.c, vec_search.c, collections_create.c ----
# First bytes: doc_query role (bits 0-1) and raw-path mode (0x10); doc_tx role and vector dimensions
# ((dims - 1) << 2); vec_search dimensions (dims - 1), metric (bits 3-4), role (bit 5), text mode (0x40).
DOC_DBS = ("documents", "cosmosdb")
OPERATORS = ("eq", "neq", "gt", "gte", "lt", "lte", "in", "exists", "contains")


def dims_byte(vec, base=0):
    n = len(vec) if isinstance(vec, list) and 1 <= len(vec) <= 8 else 3
    return bytes([base | (n - 1)])


def doc_query(body):
    for role in (b"\x00", b"\x02"):
        add("doc_query", role + json.dumps(body).encode())


def doc_tx(ops):
    vec = next((o.get("vector") for o in ops if isinstance(o, dict) and "vector" in o), None)
    n = len(vec) if isinstance(vec, list) and 1 <= len(vec) <= 8 else 3
    add("doc_tx", bytes([(n - 1) << 2]) + json.dumps({"operations": ops}).encode())


def vec_search(body, metric=0):
    add("vec_search", dims_byte(body.get("vector"), metric << 3) + json.dumps(body).encode())


def hostile_path(path):
    add("doc_query", b"\x10" + str(path).encode())
    doc_query({"database": "documents", "collection": "people", "filters": {str(path): 1}})
    doc_query({"database": "documents", "collection": "people", "select": [path]})
    doc_query({"database": "documents", "collection": "people", "order_by": {"path": path}})
    add("collections_create", json.dumps({"name": "orders", "kind": "documents", "partition_key": path}))


def hostile_collection(name):
    doc_query({"database": "documents", "collection": name})
    doc_tx([{"database": "documents", "operation": "insert", "collection": name, "document": {"a": 1}}])
    vec_search({"database": "vectors", "collection": name, "query_type": "search", "vector": [0.0, 0.0, 0.0]})
    add("collections_create", json.dumps({"name": name, "kind": "documents"}))


for path in sorted(glob.glob(os.path.join(ROOT, "tests", "e2e", "test_*.py"))):
    tree = ast.parse(open(path).read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id in (
                "BAD_PATHS", "HOSTILE_COLLECTIONS") for t in node.targets):
            for v in value(node.value):
                (hostile_path if node.targets[0].id == "BAD_PATHS" else hostile_collection)(v)
        if isinstance(node, ast.Dict):
            d = value(node)
            if d.get("database") in DOC_DBS + ("vectors",) and "operation" in d:
                doc_tx([d])
            elif d.get("database") in DOC_DBS:
                doc_query(d)
            elif d.get("database") == "vectors":
                vec_search(d)
            elif "name" in d and "kind" in d:
                add("collections_create", json.dumps(d))
        if not isinstance(node, ast.Call):
            continue
        fn = node.func.id if isinstance(node.func, ast.Name) else node.func.attr if isinstance(
            node.func, ast.Attribute) else ""
        kw = {k.arg: value(k.value) for k in node.keywords if k.arg}
        if fn == "dq":
            doc_query(dict({"database": "documents", "collection": "people"}, **kw))
        elif fn == "search" and len(node.args) >= 4:
            vec = value(node.args[3])
            for metric in range(3):
                vec_search(dict({"database": "vectors", "collection": "emb", "query_type": "search",
                                 "vector": vec if isinstance(vec, list) else [0.5, -1.0, 2.0]}, **kw), metric)
        elif fn == "parametrize" and len(node.args) == 2 and isinstance(node.args[1], ast.List):
            names = value(node.args[0])
            for case in value(node.args[1]):
                first = case[0] if isinstance(case, list) and case else case
                if names.startswith("filters"):
                    doc_query({"database": "documents", "collection": "people", "filters": first})
                    vec_search({"database": "vectors", "collection": "emb", "query_type": "search",
                                "vector": [1.0, 0.0, 0.0], "filter": first})
                elif names.startswith("vec"):
                    vec_search({"database": "vectors", "collection": "emb", "query_type": "search",
                                "vector": first})
                    doc_tx([{"database": "vectors", "operation": "upsert", "collection": "emb", "id": "x",
                             "vector": first}])
                elif names.startswith("extra") and isinstance(first, dict):
                    vec_search(dict({"database": "vectors", "collection": "emb", "query_type": "search",
                                     "vector": [0.0, 1.0, 0.0]}, **first))
                elif names == "name":
                    hostile_collection(first)

# by hand: every operator, the NULL-spelled key, paths at their limits, every document operation with
# if_match, vectors at the float32 edges, real[] texts as PostgreSQL prints them (and NaN, Infinity), ids
for op in OPERATORS:
    operand = {"in": ["a", 1, None], "exists": True, "contains": {"k": [1]}}.get(op, 3)
    doc_query({"database": "documents", "collection": "c", "filters": {"a.b": {op: operand}, "null": {op: operand}}})
doc_query({"database": "cosmosdb", "collection": "c", "query_type": "select", "select": ["NULL", "a.Null.b"],
           "order_by": [{"path": "x.0", "direction": "DESC"}, {"path": "y"}], "pagination": {"page": 3, "limit": 50},
           "filters": {"n": {"gte": 1, "lt": 9.5}, "s": {"gt": "m"}, "x.0": True, "o": {"eq": {"k": "v"}}}})
long_path = ".".join(["s" * 64] * 4)
for p in (long_path, ".".join(["x"] * 16), "null", "a-b_9.NULL.c", "\u00e9", "a\u0000b"):
    add("doc_query", b"\x10" + p.encode())
add("doc_query", b"\x00" + json.dumps({"a": {"b": {"c": {"d": [[[{"e": 1}]]]}}}}).encode())
for role in (0, 1, 2):
    doc_tx([{"database": "documents", "operation": "insert", "collection": "c", "document": {"id": "d1", "x": 1}},
            {"database": "documents", "operation": "upsert", "collection": "c", "id": "d2", "document": {}},
            {"database": "documents", "operation": "replace", "collection": "c", "id": "d1", "if_match": "e",
             "document": {"y": [1, {"z": None}]}},
            {"database": "cosmosdb", "operation": "patch", "collection": "c", "id": "d1", "patch": {"y": None}},
            {"database": "documents", "operation": "delete", "collection": "c", "id": "d2", "if_match": "e2"},
            {"database": "vectors", "operation": "upsert", "collection": "v", "id": "p", "vector": [1, -2.5, 3e38],
             "payload": {"tag": "a"}},
            {"database": "vectors", "operation": "delete", "collection": "v", "id": "p"},
            {"database": "redis", "operation": "set", "key": "k", "value": "v"},
            {"database": "postgresql", "operation": "insert", "table": "projects", "data": {"title": "t"}}])
for vec in ([3.4028234e38, -3.4028234e38, 1e-45], [1e-38, 0, -0.0], [1, 2, 3, 4, 5, 6, 7, 8]):
    for metric in range(3):
        vec_search({"database": "vectors", "collection": "v", "query_type": "search", "vector": vec, "k": 1000,
                    "min_score": -1e30, "with_payload": False, "with_vector": True,
                    "filter": {"tag": {"in": ["a", "b"]}, "n": {"lt": 2}}}, metric)
for text in ("{1,-2.5,3e-05}", "{NaN,1,2}", "{Infinity,-Infinity,0}", "{3.40282347e+38,1.17549435e-38,1e-45}",
             "{1,2}", "{1,2,3,4}", "{NULL,1,2}", "p1\np\"2\nback\\slash\n\nNULL"):
    add("vec_search", b"\x42" + text.encode())
for body in ({"name": "orders", "kind": "documents", "partition_key": "customer.id"},
             {"name": "_" + "a" * 57, "kind": "documents", "partition_key": "meta.null"},
             {"name": "emb", "kind": "vectors", "dimensions": 384, "metric": "l2"},
             {"name": "e", "kind": "vectors", "dimensions": 4096, "metric": "dot"},
             {"name": "pg_x", "kind": "vectors", "dimensions": 4097},
             {"name": "d", "kind": "documents", "dimensions": None, "metric": "cosine"}):
    add("collections_create", json.dumps(body))

for name, items in seeds.items():
    d = os.path.join(OUT, name)
    os.makedirs(d, exist_ok=True)
    for f in glob.glob(os.path.join(d, "*")):
        os.remove(f)
    for data in sorted(items):
        with open(os.path.join(d, hashlib.sha1(data).hexdigest()[:16]), "wb") as f:
            f.write(data)
    print(f"{name}: {len(items)} seeds")
