"""The admin's listing of users (issue 18 item 8): GET /users and
/api/v1/users, paginated by an opaque keyset cursor, filtered by email
(exact, case-insensitive; 'prefix*' for a prefix), admin only; the same
through `coredb user list`. Hostile parameters answer 400 naming the
parameter, or match nothing, and never run as SQL."""
import base64
import json
import os
import subprocess
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import base_env
from identity import (PASSWORD, assert_error, assert_user, bearer, cli_env, make_admin,
                      new_account, register, unique)
from servers import COREDB_BIN, Coredb, scratch_dir

PREFIXES = ["/users", "/api/v1/users"]


@pytest.fixture(scope="module")
def inst(pg, redis_server):
    """An instance on its own database, so the full listing is known."""
    name = pg.create_database()
    server = Coredb(base_env(pg, name, redis_server))
    server.db = name
    server.pg = pg
    yield server
    server.stop_clean()


@pytest.fixture(scope="module")
def admin(inst):
    return make_admin(inst)


@pytest.fixture(scope="module")
def batch(inst):
    """45 users whose emails share a prefix; 25 of them share one created_at,
    so ties straddle page boundaries and only user_id orders them."""
    tag = unique("pg")
    with ThreadPoolExecutor(8) as pool:
        made = list(pool.map(lambda i: register(inst, email=f"{tag}.{i:02d}@example.com",
                                                username=f"{tag}_{i:02d}")[0], range(45)))
    inst.pg.query(inst.db, "UPDATE users SET created_at = '2026-01-01T00:00:00Z' "
                           "WHERE email LIKE %s AND email < %s", (tag + ".%", f"{tag}.25"))
    return tag, {u["user_id"] for u in made}


def pages(inst, token, path="/users", **params):
    """Follows next_cursor to the end; returns the pages (lists of users)."""
    out, cursor = [], None
    while True:
        q = dict(params)
        if cursor:
            q["cursor"] = cursor
        resp = inst.get(path, params=q, headers=bearer(token))
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert set(body) == {"users", "next_cursor"}, body
        assert "argon2" not in resp.text and "password" not in resp.text
        for user in body["users"]:
            assert_user(user)
        out.append(body["users"])
        cursor = body["next_cursor"]
        if cursor is None:
            return out
        assert len(out) < 20, "the cursor never ends"


@pytest.mark.parametrize("path", PREFIXES)
def test_pages_of_20_cover_45_users_without_duplicates_or_gaps(inst, admin, batch, path):
    tag, ids = batch
    got = pages(inst, admin.token, path, limit=20, email=tag + "*")
    assert [len(p) for p in got] == [20, 20, 5]
    listed = [u["user_id"] for p in got for u in p]
    assert len(listed) == len(set(listed)) == 45
    assert set(listed) == ids
    # oldest first, ties broken by user_id: the order PostgreSQL gives
    order = [r[0] for r in inst.pg.query(
        inst.db, "SELECT user_id::text FROM users WHERE email LIKE %s ORDER BY created_at, user_id",
        (tag + ".%",))]
    assert listed == order


def test_unfiltered_listing_is_every_user_and_default_limit_is_20(inst, admin, batch):
    got = pages(inst, admin.token)
    assert all(len(p) == 20 for p in got[:-1]) and 1 <= len(got[-1]) <= 20
    listed = [u["user_id"] for p in got for u in p]
    rows = {r[0] for r in inst.pg.query(inst.db, "SELECT user_id::text FROM users")}
    assert len(listed) == len(set(listed)) and set(listed) == rows


def test_users_created_between_pages_are_neither_repeated_nor_skipped(inst, admin):
    tag = unique("mv")
    for i in range(5):
        register(inst, email=f"{tag}.{i}@example.com", username=f"{tag}_{i}")
    first = inst.get("/users", params={"limit": 3, "email": tag + "*"}, headers=bearer(admin.token)).json()
    register(inst, email=f"{tag}.9@example.com", username=f"{tag}_9")
    rest = pages(inst, admin.token, limit=3, email=tag + "*")  # from the start, for reference
    second = inst.get("/users", params={"limit": 3, "email": tag + "*", "cursor": first["next_cursor"]},
                      headers=bearer(admin.token)).json()
    seen = [u["email"] for u in first["users"] + second["users"]]
    assert seen == [u["email"] for p in rest for u in p][:6]
    assert len(set(seen)) == 6


def test_email_filter_exact_is_case_insensitive_and_prefix_needs_a_star(inst, admin):
    tag = unique("Cs")
    user, _ = register(inst, email=f"{tag}.Mixed@Example.COM", username=tag.lower())
    for query in (f"{tag}.mixed@example.com", f"{tag.upper()}.MIXED@EXAMPLE.COM"):
        got = inst.get("/users", params={"email": query}, headers=bearer(admin.token)).json()
        assert [u["user_id"] for u in got["users"]] == [user["user_id"]], query
    # without the star a prefix is an exact email that does not exist
    got = inst.get("/users", params={"email": tag}, headers=bearer(admin.token)).json()
    assert got == {"users": [], "next_cursor": None}
    got = inst.get("/users", params={"email": tag.lower() + "*"}, headers=bearer(admin.token)).json()
    assert [u["user_id"] for u in got["users"]] == [user["user_id"]]


@pytest.mark.parametrize("path", PREFIXES)
def test_only_an_admin_lists(inst, admin, path):
    user = new_account(inst)
    premium = new_account(inst, token=admin.token, role="premium")
    assert premium.user["role"] == "premium"
    assert_error(inst.get(path), 401, "UNAUTHORIZED")
    assert_error(inst.get(path, headers=bearer("not-a-token")), 401)
    assert_error(inst.get(path, headers=user.headers), 403, "FORBIDDEN")
    assert_error(inst.get(path, headers=premium.headers), 403, "FORBIDDEN")
    assert inst.get(path + "/", headers=admin.headers).status_code == 200


@pytest.mark.parametrize("limit", ["0", "101", "-1", "abc", "1e1", "20 OR 1=1", "", "2.5", "1000"])
def test_bad_limit_is_400_naming_it(inst, admin, limit):
    err = assert_error(inst.get("/users", params={"limit": limit}, headers=admin.headers),
                       400, "VALIDATION_FAILED")
    assert err["details"]["field"] == "limit", err


def b64(text):
    return base64.urlsafe_b64encode(text.encode()).rstrip(b"=").decode()


@pytest.mark.parametrize("cursor", [
    "garbage!", b64("v1:1' OR '1'='1:00000000-0000-0000-0000-000000000000"),
    b64("v1:123:x'; DROP TABLE users; --"), b64("v2:123:00000000-0000-0000-0000-000000000000"),
    b64("v1::00000000-0000-0000-0000-000000000000"), b64("v1:99999999999999999999:" + str(uuid.uuid4())),
    b64("v1:12\x003:" + str(uuid.uuid4())), "' OR 1=1 --", "A" * 500, ""])
def test_bad_cursor_is_400_naming_it(inst, admin, cursor):
    err = assert_error(inst.get("/users", params={"cursor": cursor}, headers=admin.headers),
                       400, "VALIDATION_FAILED")
    assert err["details"]["field"] == "cursor", err


def test_sql_in_email_matches_nothing_and_runs_nothing(inst, admin, batch):
    before = inst.pg.query(inst.db, "SELECT count(*) FROM users")[0][0]
    for email in ("' OR 1=1 --", "x' OR 'a'='a", "%", "%*", "_*", "'; DROP TABLE users; --*",
                  "a@b.c') UNION SELECT password_hash FROM users --"):
        resp = inst.get("/users", params={"email": email}, headers=admin.headers)
        assert resp.status_code == 200, (email, resp.text)
        assert resp.json() == {"users": [], "next_cursor": None}, email
    assert inst.pg.query(inst.db, "SELECT count(*) FROM users")[0][0] == before
    for email in ("*", "a*b*", "x" * 300, ""):
        err = assert_error(inst.get("/users", params={"email": email}, headers=admin.headers),
                           400, "VALIDATION_FAILED")
        assert err["details"]["field"] == "email", (email, err)
    # bytes that are not UTF-8 never reach PostgreSQL (which would refuse them with a 500)
    for raw in ("%ff*", "a%c3%28@example.com"):
        err = assert_error(inst.get("/users?email=" + raw, headers=admin.headers), 400, "VALIDATION_FAILED")
        assert err["details"]["field"] == "email", (raw, err)
    resp = inst.get("/users?email=" + tag_of(batch) + "%00*", headers=admin.headers)
    # a NUL ends the value (the filter becomes the exact, unknown email "<tag>"): no match
    assert resp.status_code == 200 and resp.json() == {"users": [], "next_cursor": None}, resp.text


def tag_of(batch):
    return batch[0]


def cli(inst, *args):
    return subprocess.run([COREDB_BIN, "user", "list", *args], env=cli_env(inst), cwd=scratch_dir(),
                          capture_output=True, text=True, timeout=60)


def test_cli_lists_pages_with_the_same_cursor(inst, batch):
    tag, ids = batch
    seen, cursor = [], None
    for expected in (20, 20, 5):
        proc = cli(inst, "--limit", "20", "--email", tag + "*", "--json",
                   *(["--cursor", cursor] if cursor else []))
        assert proc.returncode == 0, proc.stderr
        result = json.loads(proc.stdout)
        assert result["status"] == "success" and result["error"] is None
        assert len(result["users"]) == expected
        for user in result["users"]:
            assert_user(user)
        seen += [u["user_id"] for u in result["users"]]
        cursor = result["next_cursor"]
    assert cursor is None and set(seen) == ids and len(seen) == 45
    # without --json: the same data, human-readable on stdout
    proc = cli(inst, "--email", tag + ".07@EXAMPLE.com")
    assert proc.returncode == 0, proc.stderr
    assert f"{tag}.07@example.com" in proc.stdout


def test_cli_errors_and_help(inst):
    proc = cli(inst, "--cursor", "nope", "--json")
    assert proc.returncode == 1
    result = json.loads(proc.stdout)
    assert result["error"]["code"] == "VALIDATION_FAILED"
    assert result["error"]["details"]["field"] == "cursor"
    proc = cli(inst, "--limit", "abc", "--json")
    assert proc.returncode == 2
    assert json.loads(proc.stdout)["status"] == "error"
    proc = cli(inst, "--limit", "500")
    assert proc.returncode == 1 and "limit" in proc.stderr
    # --help prints the usage and starts nothing, even with no configuration at all
    empty = os.path.join(scratch_dir(), f"help-{uuid.uuid4().hex[:8]}")
    os.makedirs(empty)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "POSTGRES_", "JWT"))}
    proc = subprocess.run([COREDB_BIN, "user", "list", "--help"], env=env, cwd=empty,
                          capture_output=True, text=True, timeout=10)
    assert proc.returncode == 0 and "usage: coredb user list" in proc.stdout
    assert os.listdir(empty) == []
