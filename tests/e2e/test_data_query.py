"""POST /api/v1/data/query end to end: response shape and JSON types, every
filter operator, ordering, pagination arithmetic and limits by role, unknown
tables and columns, row-level security between users (admin sees all), the
hidden password hash, Redis reads confined to the caller's namespace, and an
injection corpus in every identifier and value position that must answer
4xx (never 5xx) and leave the database intact."""
import json
import uuid

import pytest

from datahelp import (ISO_RE, PROJECT_COLS, UUID_RE, add_analysis, add_media, add_project,
                      add_projects, assert_error, counts, premium, query, query_ok,
                      start_instance, user, wait_for)

# the module fixtures inst, admin, rds (conftest.py) use this Redis database
REDIS_DB = 11


# ---- authentication and request shape ----

def test_token_required(inst):
    for path in ("/api/v1/data/query", "/api/v1/data/transaction"):
        assert_error(inst.post(path, json={"table": "projects"}), 401, "UNAUTHORIZED")
        assert_error(inst.post(path, json={"table": "projects"},
                               headers={"Authorization": "Bearer not.a.token"}), 401)


def test_shape_and_json_types(inst):
    a = user(inst)
    settings = {"theme": "dark", "n": 3, "nested": {"list": [1, 2.5, None, True]}}
    pid = add_project(inst, a.id, title="Typed «ü»", settings=settings, description=None)
    add_analysis(inst, pid, confidence=0.75)
    add_media(inst, pid, size_bytes=12345678901)
    out = query_ok(inst, a, {"database": "postgresql", "query_type": "select",
                             "table": "projects",
                             "select": ["id", "user_id", "title", "description", "settings",
                                        "created_at"]})
    assert out["pagination"] == {"page": 1, "limit": 20, "total": 1, "pages": 1}
    assert out["cached"] is False
    assert out["execution_time_ms"] >= 0
    row, = out["data"]
    assert set(row) == {"id", "user_id", "title", "description", "settings", "created_at"}
    assert row["id"] == pid and UUID_RE.match(row["id"])
    assert row["user_id"] == a.id
    assert row["title"] == "Typed «ü»"
    assert row["description"] is None
    assert row["settings"] == settings          # jsonb stays an object
    assert ISO_RE.match(row["created_at"]), row["created_at"]
    ca = query_ok(inst, a, {"table": "content_analysis", "select": ["confidence", "result"]})
    assert ca["data"] == [{"confidence": 0.75, "result": {}}]   # numeric is a number
    ma = query_ok(inst, a, {"table": "media_assets", "select": ["size_bytes"]})
    assert ma["data"] == [{"size_bytes": 12345678901}]           # bigint is a number


def test_defaults_select_every_readable_column(inst):
    a = user(inst)
    add_project(inst, a.id)
    out = query_ok(inst, a, {"table": "projects"})
    assert out["pagination"]["page"] == 1 and out["pagination"]["limit"] == 20
    assert set(out["data"][0]) == PROJECT_COLS


def test_empty_result(inst):
    a = user(inst)
    out = query_ok(inst, a, {"table": "projects"})
    assert out["data"] == []
    assert out["pagination"]["total"] == 0
    assert out["pagination"]["pages"] in (0, 1)


# ---- pagination ----

def test_pagination_arithmetic_45_rows(inst):
    a = user(inst)
    add_projects(inst, a.id, 45, prefix="row")
    seen = []
    for page, size in ((1, 20), (2, 20), (3, 5)):
        out = query_ok(inst, a, {"table": "projects", "select": ["title"],
                                 "order_by": [{"column": "title", "direction": "asc"}],
                                 "pagination": {"page": page, "limit": 20}})
        assert out["pagination"] == {"page": page, "limit": 20, "total": 45, "pages": 3}
        assert len(out["data"]) == size
        seen += [r["title"] for r in out["data"]]
    assert seen == [f"row{i:03d}" for i in range(45)]
    past = query_ok(inst, a, {"table": "projects", "select": ["title"],
                              "order_by": [{"column": "title", "direction": "asc"}],
                              "pagination": {"page": 4, "limit": 20}})
    assert past["data"] == []
    assert past["pagination"] == {"page": 4, "limit": 20, "total": 45, "pages": 3}
    exact = query_ok(inst, a, {"table": "projects", "select": ["title"],
                               "pagination": {"page": 1, "limit": 45}})
    assert len(exact["data"]) == 45 and exact["pagination"]["pages"] == 1
    one = query_ok(inst, a, {"table": "projects", "select": ["title"],
                             "pagination": {"page": 45, "limit": 1}})
    assert len(one["data"]) == 1 and one["pagination"]["pages"] == 45


def test_limit_caps_by_role(inst, admin):
    a = user(inst)
    p = premium(inst, admin)
    for acct, cap in ((a, 100), (p, 1000), (admin, 1000)):
        ok = query_ok(inst, acct, {"table": "projects", "pagination": {"page": 1, "limit": cap}})
        assert ok["pagination"]["limit"] == cap
        err = assert_error(query(inst, acct, {"table": "projects",
                                              "pagination": {"page": 1, "limit": cap + 1}}),
                           400, "VALIDATION_FAILED")
        assert err["details"].get("field") == "pagination.limit", err
        assert str(cap) in json.dumps(err), err   # the message or details name the limit


@pytest.mark.parametrize("pagination", [
    {"page": 0, "limit": 20}, {"page": -1, "limit": 20}, {"page": 1, "limit": 0},
    {"page": 1, "limit": -5}, {"page": "2", "limit": 20}, {"page": 1, "limit": "20"},
    {"page": 1.5, "limit": 20}, {"page": 1, "limit": None}, {"page": 2 ** 62, "limit": 100},
    {"page": 1e300, "limit": 10}, "1", [1, 20]])
def test_bad_pagination(inst, pagination):
    a = user(inst)
    resp = query(inst, a, {"table": "projects", "pagination": pagination})
    if pagination == {"page": 2 ** 62, "limit": 100}:
        # a huge page is either refused or simply past the end; never a 5xx
        assert resp.status_code in (200, 400), resp.text
        if resp.status_code == 200:
            assert resp.json()["data"] == []
        return
    assert_error(resp, 400, "VALIDATION_FAILED")


# ---- unknown tables and columns ----

@pytest.mark.parametrize("table", ["nope", "Projects", "sessions", "coredb.sessions",
                                   "refresh_tokens", "redis_outbox", "schema_migrations",
                                   "audit_log", "pg_authid", "pg_catalog.pg_authid",
                                   "information_schema.tables", "public.projects", ""])
def test_unknown_table(inst, table):
    a = user(inst)
    resp = query(inst, a, {"table": table})
    if table == "":
        assert resp.status_code in (400, 404), resp.text
        return
    err = assert_error(resp, 404, "UNKNOWN_TABLE")
    assert err["details"].get("table") == table, err


def test_unknown_table_for_admin_too(inst, admin):
    err = assert_error(query(inst, admin, {"table": "sessions"}), 404, "UNKNOWN_TABLE")
    assert err["details"].get("table") == "sessions"


@pytest.mark.parametrize("where", ["select", "filter", "order_by"])
def test_unknown_column(inst, where):
    a = user(inst)
    body = {"table": "projects"}
    if where == "select":
        body["select"] = ["id", "nope"]
    elif where == "filter":
        body["filters"] = {"nope": "x"}
    else:
        body["order_by"] = [{"column": "nope", "direction": "asc"}]
    err = assert_error(query(inst, a, body), 400, "UNKNOWN_COLUMN")
    assert err["details"].get("column") == "nope", err


# ---- row-level security ----

def test_users_table_shows_own_row_only(inst, admin):
    a, b = user(inst), user(inst)
    out = query_ok(inst, a, {"table": "users"})
    assert [r["user_id"] for r in out["data"]] == [a.id]
    assert out["pagination"]["total"] == 1
    other = query_ok(inst, a, {"table": "users", "filters": {"user_id": b.id}})
    assert other["data"] == [] and other["pagination"]["total"] == 0
    both = query_ok(inst, admin, {"table": "users", "select": ["user_id"],
                                  "filters": {"user_id": {"in": [a.id, b.id]}}})
    assert sorted(r["user_id"] for r in both["data"]) == sorted([a.id, b.id])


def test_isolation_between_users_and_admin_sees_all(inst, admin):
    a, b = user(inst), user(inst)
    pa = add_project(inst, a.id, title="alpha")
    pb = add_project(inst, b.id, title="beta")
    add_analysis(inst, pa, confidence=0.1)
    ab = add_analysis(inst, pb, confidence=0.2)
    add_media(inst, pb, size_bytes=1)

    mine = query_ok(inst, a, {"table": "projects", "select": ["id", "user_id"]})
    assert mine["data"] == [{"id": pa, "user_id": a.id}]
    for filters in ({"user_id": b.id}, {"id": pb}, {"title": "beta"},
                    {"user_id": {"in": [a.id, b.id]}, "title": "beta"}):
        out = query_ok(inst, a, {"table": "projects", "filters": filters})
        assert out["data"] == [] and out["pagination"]["total"] == 0, (filters, out)
    ca = query_ok(inst, a, {"table": "content_analysis", "select": ["project_id"]})
    assert ca["data"] == [{"project_id": pa}]
    assert query_ok(inst, a, {"table": "content_analysis",
                              "filters": {"id": ab}})["pagination"]["total"] == 0
    assert query_ok(inst, a, {"table": "media_assets"})["pagination"]["total"] == 0
    assert query_ok(inst, b, {"table": "media_assets"})["pagination"]["total"] == 1

    every = query_ok(inst, admin, {"table": "projects", "select": ["id"],
                                   "filters": {"id": {"in": [pa, pb]}}})
    assert sorted(r["id"] for r in every["data"]) == sorted([pa, pb])
    assert query_ok(inst, admin, {"table": "content_analysis", "select": ["id"],
                                  "filters": {"project_id": {"in": [pa, pb]}}}
                    )["pagination"]["total"] == 2


def test_premium_is_confined_like_user(inst, admin):
    a = user(inst)
    p = premium(inst, admin)
    add_project(inst, a.id)
    pp = add_project(inst, p.id)
    out = query_ok(inst, p, {"table": "projects", "select": ["id"]})
    assert out["data"] == [{"id": pp}]
    assert query_ok(inst, p, {"table": "projects",
                              "filters": {"user_id": a.id}})["pagination"]["total"] == 0


# ---- operators ----

@pytest.fixture(scope="module")
def opdata(inst):
    """One user with five projects and analyses of known values."""
    a = user(inst)
    rows = [("Alpha one", "active", "2024-01-01T00:00:00Z", "desc", {"theme": "dark"}, 0.1),
            ("alpha two", "draft", "2024-02-01T00:00:00Z", None, {"theme": "light"}, 0.5),
            ("Beta", "archived", "2024-03-01T00:00:00Z", "x", {}, 0.9),
            ("gamma_50%", "active", "2024-04-01T00:00:00Z", None, {"n": [1, 2]}, None),
            ("O'Brien", "draft", "2024-05-01T00:00:00Z", "quote", {"theme": "dark"}, 1)]
    ids = {}
    for title, status, created, desc, settings, conf in rows:
        pid = add_project(inst, a.id, title=title, status=status, created_at=created,
                          description=desc, settings=settings)
        add_analysis(inst, pid, confidence=conf)
        ids[title] = pid
    return a, ids


def titles(inst, acct, filters, table="projects"):
    out = query_ok(inst, acct, {"table": table, "select": ["title"], "filters": filters,
                                "order_by": [{"column": "title", "direction": "asc"}]})
    assert out["pagination"]["total"] == len(out["data"])
    return [r["title"] for r in out["data"]]


@pytest.mark.parametrize("filters,expected", [
    ({"status": "active"}, ["Alpha one", "gamma_50%"]),
    ({"status": {"eq": "draft"}}, ["O'Brien", "alpha two"]),
    ({"title": "O'Brien"}, ["O'Brien"]),
    ({"status": {"neq": "draft"}}, ["Alpha one", "Beta", "gamma_50%"]),
    ({"created_at": {"gt": "2024-03-01T00:00:00Z"}}, ["O'Brien", "gamma_50%"]),
    ({"created_at": {"gte": "2024-03-01T00:00:00Z"}}, ["Beta", "O'Brien", "gamma_50%"]),
    ({"created_at": {"lt": "2024-02-01"}}, ["Alpha one"]),
    ({"created_at": {"lte": "2024-02-01T00:00:00+00:00"}}, ["Alpha one", "alpha two"]),
    ({"created_at": {"gte": "2024-02-01", "lt": "2024-04-01"}}, ["Beta", "alpha two"]),
    ({"status": {"in": ["archived", "active"]}}, ["Alpha one", "Beta", "gamma_50%"]),
    ({"status": {"in": ["nothing"]}}, []),
    ({"title": {"like": "alpha%"}}, ["alpha two"]),
    ({"title": {"ilike": "ALPHA%"}}, ["Alpha one", "alpha two"]),
    ({"title": {"like": "%\\%"}}, ["gamma_50%"]),
    ({"title": {"ilike": "%'%"}}, ["O'Brien"]),
    ({"description": {"is_null": True}}, ["alpha two", "gamma_50%"]),
    ({"description": {"is_null": False}}, ["Alpha one", "Beta", "O'Brien"]),
    ({"status": "active", "title": {"ilike": "g%"}}, ["gamma_50%"]),
    ({"settings": {"eq": {"theme": "dark"}}}, ["Alpha one", "O'Brien"]),
    ({"settings": {"neq": {"theme": "dark"}}}, ["Beta", "alpha two", "gamma_50%"]),
])
def test_operator(inst, opdata, filters, expected):
    a, _ = opdata
    assert titles(inst, a, filters) == expected


@pytest.mark.parametrize("filters,count", [
    ({"confidence": {"gt": 0.5}}, 2),
    ({"confidence": {"gte": 0.5}}, 3),
    ({"confidence": {"lt": 0.5}}, 1),
    ({"confidence": {"lte": 1}}, 4),
    ({"confidence": 0.9}, 1),
    ({"confidence": {"neq": 0.9}}, 3),
    ({"confidence": {"in": [0.1, 1, 0.9]}}, 3),
    ({"confidence": {"is_null": True}}, 1),
    ({"confidence": {"is_null": False}}, 4),
])
def test_numeric_operator(inst, opdata, filters, count):
    a, _ = opdata
    out = query_ok(inst, a, {"table": "content_analysis", "select": ["confidence"],
                             "filters": filters})
    assert out["pagination"]["total"] == count, out
    assert len(out["data"]) == count


def test_uuid_in_filter(inst, opdata):
    a, ids = opdata
    assert titles(inst, a, {"id": {"in": [ids["Beta"], ids["O'Brien"]]}}) == ["Beta", "O'Brien"]
    assert titles(inst, a, {"id": ids["Beta"]}) == ["Beta"]


def test_in_takes_up_to_1000_values(inst, opdata):
    a, ids = opdata
    values = [ids["Beta"]] + [str(uuid.uuid4()) for _ in range(999)]
    out = query_ok(inst, a, {"table": "projects", "select": ["title"],
                             "filters": {"id": {"in": values}}})
    assert out["data"] == [{"title": "Beta"}]
    err = assert_error(query(inst, a, {"table": "projects",
                                       "filters": {"id": {"in": values + [ids["Beta"]]}}}),
                       400, "INVALID_FILTER")
    assert err["details"].get("column") == "id", err


@pytest.mark.parametrize("filters", [
    {"title": {"regex": ".*"}},
    {"title": {"EQ": "x"}},
    {"title": {"eq": "x", "bogus": 1}},
    {"title": {}},
    {"id": "abc"},
    {"id": {"in": ["abc"]}},
    {"user_id": {"eq": 42}},
    {"created_at": {"gt": "not a date"}},
    {"confidence": {"gt": "abc"}},
    {"confidence": "abc"},
    {"confidence": {"like": "1%"}},
    {"created_at": {"ilike": "2024%"}},
    {"settings": {"like": "%dark%"}},
    {"status": {"in": []}},
    {"status": {"in": "active"}},
    {"status": {"in": [["nested"]]}},
    {"status": {"is_null": "yes"}},
    {"status": {"is_null": 1}},
    {"status": {"eq": ["a", "b"]}},
    {"status": {"gt": {"x": 1}}},
    {"title": {"eq": "a\u0000b"}},
])
def test_invalid_filter(inst, opdata, filters):
    a, _ = opdata
    table = "content_analysis" if "confidence" in filters else "projects"
    err = assert_error(query(inst, a, {"table": table, "filters": filters}), 400)
    # a NUL byte may already be refused by the JSON parser
    allowed = ("INVALID_FILTER", "INVALID_JSON") if "\\u0000" in json.dumps(filters) \
        else ("INVALID_FILTER",)
    assert err["code"] in allowed, err


def test_filters_must_be_an_object(inst, opdata):
    a, _ = opdata
    for filters in (["status", "active"], "status = 'active'", 5):
        resp = query(inst, a, {"table": "projects", "filters": filters})
        assert resp.status_code == 400, resp.text
        assert resp.json()["error"]["code"] in ("VALIDATION_FAILED", "INVALID_FILTER")


# ---- ordering ----

def test_order_by(inst, opdata):
    a, _ = opdata
    def order(spec):
        out = query_ok(inst, a, {"table": "projects", "select": ["title"], "order_by": spec})
        return [r["title"] for r in out["data"]]
    by_date = ["Alpha one", "alpha two", "Beta", "gamma_50%", "O'Brien"]
    assert order([{"column": "created_at", "direction": "asc"}]) == by_date
    assert order([{"column": "created_at", "direction": "desc"}]) == by_date[::-1]
    assert order([{"column": "status", "direction": "asc"},
                  {"column": "created_at", "direction": "desc"}]) == \
        ["gamma_50%", "Alpha one", "Beta", "O'Brien", "alpha two"]


@pytest.mark.parametrize("spec", [
    [{"column": "title", "direction": "sideways"}],
    [{"column": "title", "direction": "asc; DROP TABLE users"}],
    [{"column": "title", "direction": 1}],
    [{"direction": "asc"}],
    [{"column": "title", "direction": "asc", "nulls": "first; --"}],
    "title",
    [{"column": "title", "direction": "asc"}, "desc"],
])
def test_bad_order_by(inst, opdata, spec):
    a, _ = opdata
    resp = query(inst, a, {"table": "projects", "order_by": spec})
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["code"] in ("VALIDATION_FAILED", "UNKNOWN_COLUMN")
    if spec == [{"column": "title", "direction": "sideways"}]:
        assert resp.json()["error"]["code"] == "VALIDATION_FAILED"


# ---- body validation ----

@pytest.mark.parametrize("body", [
    {},
    {"table": 5},
    {"table": ["projects"]},
    {"table": "projects", "database": "mysql"},
    {"table": "projects", "query_type": "delete"},
    {"table": "projects", "query_type": "select; delete"},
    {"table": "projects", "select": "id"},
    {"table": "projects", "select": [1]},
    {"table": "projects", "select": [["id"]]},
    [],
    "projects",
])
def test_body_validation(inst, body):
    a = user(inst)
    err = assert_error(query(inst, a, body), 400)
    assert err["code"] in ("VALIDATION_FAILED", "INVALID_JSON"), err


def test_invalid_json(inst):
    a = user(inst)
    resp = inst.post("/api/v1/data/query", data=b'{"table": "projects"',
                     headers={**a.headers, "Content-Type": "application/json"})
    assert_error(resp, 400, "INVALID_JSON")


# ---- the catalog follows PostgreSQL without a restart ----

def test_new_table_and_grants_appear_without_restart(inst, admin):
    a = user(inst)
    name = "notes_" + a.id.replace("-", "")[:8]
    inst.pg.query(inst.db, f"CREATE TABLE public.{name} (id serial PRIMARY KEY, body text, "
                           f"secret text)")
    inst.pg.query(inst.db, f"INSERT INTO public.{name} (body, secret) VALUES ('hello', 's')")
    assert_error(query(inst, a, {"table": name}), 404, "UNKNOWN_TABLE")
    inst.pg.query(inst.db, f"GRANT SELECT (id, body) ON public.{name} TO coredb_user")
    body = {"table": name, "select": ["id", "body"]}
    assert wait_for(lambda: query(inst, a, body).status_code == 200, timeout=8), \
        "a granted table did not appear"
    out = query_ok(inst, a, body)
    assert out["data"] == [{"id": 1, "body": "hello"}]
    assert query_ok(inst, a, body)["cached"] is True
    # a column without the grant stays unknown
    err = assert_error(query(inst, a, {"table": name, "select": ["secret"]}), 400,
                       "UNKNOWN_COLUMN")
    assert err["details"].get("column") == "secret"
    # revoked: gone again, and no cached answer outlives the grant
    inst.pg.query(inst.db, f"REVOKE ALL ON public.{name} FROM coredb_user")
    assert wait_for(lambda: query(inst, a, body).status_code == 404, timeout=8), \
        query(inst, a, body).text
    inst.pg.query(inst.db, f"DROP TABLE public.{name}")
    assert wait_for(lambda: query(inst, admin, {"table": name}).status_code == 404, timeout=8)


# ---- Redis reads ----

def test_redis_get_in_own_namespace(inst, admin, rds):
    a, b = user(inst), user(inst)
    rds.set(f"app:user:{a.id}:greeting", "hello a")
    rds.set(f"app:user:{b.id}:greeting", "hello b")
    rds.set("app:shared", "admin only")
    out = query(inst, a, {"database": "redis", "query_type": "get", "key": "greeting"})
    assert out.status_code == 200, out.text
    assert out.json()["data"] == {"key": "greeting", "value": "hello a"}
    out = query(inst, b, {"database": "redis", "query_type": "get", "key": "greeting"}).json()
    assert out["data"]["value"] == "hello b"
    absent = query(inst, a, {"database": "redis", "query_type": "get", "key": "absent"}).json()
    assert absent["data"] == {"key": "absent", "value": None}
    assert query(inst, admin, {"database": "redis", "query_type": "get",
                               "key": "shared"}).json()["data"]["value"] == "admin only"
    # a user can't reach the admin's "app:shared"
    assert query(inst, a, {"database": "redis", "query_type": "get",
                           "key": "shared"}).json()["data"]["value"] is None


def test_redis_get_refuses_values_that_are_not_text(inst, rds):
    # Redis's WRONGTYPE and bytes that are not UTF-8 both name the key (cdb_cache says which)
    a = user(inst)
    rds.rpush(f"app:user:{a.id}:a-list", "x")
    rds.set(f"app:user:{a.id}:bytes", b"\xff\xfe")
    err = assert_error(query(inst, a, {"database": "redis", "query_type": "get", "key": "a-list"}),
                       400, "VALIDATION_FAILED")
    assert err["details"]["field"] == "key" and "string" in err["message"]
    err = assert_error(query(inst, a, {"database": "redis", "query_type": "get", "key": "bytes"}),
                       400, "VALIDATION_FAILED")
    assert err["details"]["field"] == "key" and "UTF-8" in err["message"]


def test_redis_get_cannot_escape_namespace(inst, rds):
    a, b = user(inst), user(inst)
    # the service's own keys, and another user's, with recognisable values
    rds.set("coredb:session:probe", "SERVICE-SECRET")
    rds.set(f"app:user:{b.id}:k", "B-SECRET")
    rds.set("app:k", "ADMIN-SECRET")
    sessions = [k for k in rds.scan_iter("coredb:*", count=1000)][:5]
    probes = ["coredb:session:probe", "../coredb:session:probe", "../x", "..", "*",
              f"app:user:{b.id}:k", f"../{b.id}:k", f"user:{b.id}:k", "\\..\\k", "k\r\nFLUSHALL",
              "coredb:*", "KEYS *"] + sessions
    for key in probes:
        resp = query(inst, a, {"database": "redis", "query_type": "get", "key": key})
        assert resp.status_code in (200, 400), (key, resp.text)
        assert "SECRET" not in resp.text, (key, resp.text)
        if resp.status_code == 200:
            assert resp.json()["data"] == {"key": key, "value": None}, (key, resp.text)
    assert rds.get("coredb:session:probe") == "SERVICE-SECRET"
    assert rds.get(f"app:user:{b.id}:k") == "B-SECRET"
    assert rds.dbsize() > 0   # "k\r\nFLUSHALL" did not flush


@pytest.mark.parametrize("body", [
    {"database": "redis", "query_type": "get"},
    {"database": "redis", "query_type": "get", "key": ""},
    {"database": "redis", "query_type": "get", "key": 5},
    {"database": "redis", "query_type": "get", "key": None},
    {"database": "redis", "query_type": "get", "key": "a\u0000b"},
    {"database": "redis", "query_type": "get", "key": "k" * 513},
    {"database": "redis", "query_type": "keys", "key": "*"},
    {"database": "redis", "query_type": "set", "key": "x"},
    {"database": "redis", "query_type": "del", "key": "x"},
])
def test_redis_get_validation(inst, body):
    a = user(inst)
    err = assert_error(query(inst, a, body), 400)
    assert err["code"] in ("VALIDATION_FAILED", "INVALID_JSON"), err


def test_redis_key_length_limit(inst, rds):
    a = user(inst)
    rds.set(f"app:user:{a.id}:" + "k" * 512, "long")
    out = query(inst, a, {"database": "redis", "query_type": "get", "key": "k" * 512})
    assert out.status_code == 200, out.text
    assert out.json()["data"]["value"] == "long"


# ---- injection corpus ----

CORPUS = [
    "'", '"', "''", '""', "`", "\\", ";", "--", "/*", "*/", "/* comment */",
    "projects; DROP TABLE users; --", "'; DROP TABLE users; --", "\"; DROP TABLE users; --",
    'projects"; DROP TABLE users; --', "projects' OR '1'='1", "1 OR 1=1", "id) OR (1=1",
    "projects--", "projects/**/", "title\" FROM users --", "pg_sleep(5)",
    "(SELECT password_hash FROM users)", "users.password_hash", "*", "$1", "%s",
    "pröjects", "ユーザー", "\u202eprojects", "🙂", "projects\u0000", "\u0000",
    "a\u0000; DROP TABLE users", "x" * 100000, "title" + " " * 64, " title", "TITLE",
    "\n", "title\r\n", "\t",
]


def _positions(payload, pid):
    """(name, body) pairs placing payload in every identifier/value slot."""
    return [
        ("table", {"table": payload}),
        ("select", {"table": "projects", "select": ["id", payload]}),
        ("filter key", {"table": "projects", "filters": {payload: "x"}}),
        ("filter op", {"table": "projects", "filters": {"title": {payload: "x"}}}),
        ("order column", {"table": "projects",
                          "order_by": [{"column": payload, "direction": "asc"}]}),
        ("order direction", {"table": "projects",
                             "order_by": [{"column": "title", "direction": payload}]}),
        ("uuid value", {"table": "projects", "filters": {"id": payload}}),
        ("uuid in", {"table": "projects", "filters": {"id": {"in": [pid, payload]}}}),
        ("number value", {"table": "content_analysis", "filters": {"confidence": payload}}),
        ("time value", {"table": "projects", "filters": {"created_at": {"gte": payload}}}),
        ("database", {"database": payload, "table": "projects"}),
        ("query_type", {"query_type": payload, "table": "projects"}),
    ]


def test_injection_corpus_query(inst, admin):
    a = user(inst)
    pid = add_project(inst, a.id, title="victim")
    before = counts(inst)
    failures = []
    for payload in CORPUS:
        for where, body in _positions(payload, pid):
            resp = query(inst, a, body)
            if not 400 <= resp.status_code < 500:
                failures.append((where, payload[:60], resp.status_code, resp.text[:200]))
            elif "syntax error" in resp.text or "row_to_json" in resp.text:
                failures.append((where, payload[:60], "leaks SQL", resp.text[:200]))
        # text values are data: found nothing, never an error
        for kind, body in (("eq", {"table": "projects", "filters": {"title": payload}}),
                           ("ilike", {"table": "projects",
                                      "filters": {"title": {"ilike": payload}}}),
                           ("in", {"table": "projects",
                                   "filters": {"title": {"in": [payload, "victim"]}}})):
            resp = query(inst, a, body)
            if "\u0000" in payload:
                if resp.status_code != 400:
                    failures.append((f"{kind} text value with NUL", payload[:60],
                                     resp.status_code, resp.text[:200]))
            elif kind == "ilike" and resp.status_code == 400:
                # a pattern PostgreSQL refuses (a trailing escape) is a bad filter
                if resp.json()["error"]["code"] != "INVALID_FILTER":
                    failures.append((kind, payload[:60], resp.status_code, resp.text[:200]))
            elif resp.status_code != 200:
                failures.append((f"{kind} text value", payload[:60], resp.status_code,
                                 resp.text[:200]))
            else:
                found = [r["title"] for r in resp.json()["data"]]
                want = {"eq": [], "in": ["victim"]}.get(kind)
                if want is not None and found != want:
                    failures.append((f"{kind} text value matched", payload[:60], found))
    assert not failures, failures[:20]
    assert counts(inst) == before
    # still serving, data still there
    assert query_ok(inst, a, {"table": "projects", "filters": {"id": pid}})["data"][0]["title"] \
        == "victim"
    assert query_ok(inst, admin, {"table": "users", "filters": {"user_id": a.id}})[
        "pagination"]["total"] == 1


def test_injection_raw_bodies(inst):
    """Bodies JSON parsers disagree on: lone surrogates, NUL in keys, deep
    nesting, duplicate keys."""
    a = user(inst)
    before = counts(inst)
    raw = [
        b'{"table": "\\ud800projects"}',
        b'{"table": "projects", "select": ["\\udc00"]}',
        b'{"table": "projects", "filters": {"ti\\u0000tle": "x"}}',
        b'{"table": "proj\\u0000ects"}',
        b'{"table": "projects", "filters": ' + b'{"a":' * 5000 + b'1' + b'}' * 5000 + b'}',
        b'{"table": "projects", "table": "users; DROP TABLE users"}',
        b'{"table": "projects", "select": ["id"], "filters": {"title": "\xff\xfe"}}',
        b'{"table": "projects"} ; DROP TABLE users',
    ]
    for body in raw:
        resp = inst.post("/api/v1/data/query", data=body,
                         headers={**a.headers, "Content-Type": "application/json"})
        assert resp.status_code < 500, (body[:80], resp.status_code, resp.text[:300])
    assert counts(inst) == before


# ---- statement timeout ----

def test_statement_timeout_is_504_and_the_instance_recovers(pg):
    inst = start_instance(pg, None, DB_STATEMENT_TIMEOUT=10)
    try:
        a = user(inst)
        ids = add_projects(inst, a.id, 100000, prefix="slow")
        slow = {"table": "projects", "filters": {"title": {"ilike": "%9%9%9%9%x"}},
                "pagination": {"page": 1, "limit": 1}}
        err = assert_error(query(inst, a, slow), 504, "DATABASE_TIMEOUT")
        assert "SELECT" not in err["message"] and "ilike" not in json.dumps(err).lower(), err
        err = assert_error(inst.post("/api/v1/data/transaction", headers=a.headers, json={
            "operations": [{"database": "postgresql", "operation": "update",
                            "table": "projects", "filters": {"title": {"ilike": "%9%9%9%9%x"}},
                            "data": {"status": "x"}}]}), 504, "DATABASE_TIMEOUT")
        assert err["details"].get("operation") == 1, err
        # the pooled connections are healthy afterwards
        for _ in range(6):
            out = query_ok(inst, a, {"table": "projects", "select": ["title"],
                                     "filters": {"id": ids[1]}})
            assert out["data"] == [{"title": "slow001"}]
    finally:
        inst.stop_clean()
