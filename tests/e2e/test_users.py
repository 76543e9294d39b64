"""Users: registration and its validation, lookups, partial updates and
deletion, who may call what (self or admin, never another user's row), the
first admin (environment and CLI), and hostile input that must never reach
PostgreSQL as SQL or answer 5xx."""
import json
import urllib.parse
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from identity import (PASSWORD, assert_error, assert_user, cli_user_create, login, login_resp,
                      make_admin, new_account, register, unique, user_body)

PREFIXES = ["/users", "/api/v1/users"]


@pytest.fixture(scope="module")
def admin(coredb_shared):
    return make_admin(coredb_shared)


def user_row(inst, user_id):
    rows = inst.pg.query(inst.db, "SELECT email, username, password_hash, role, display_name "
                                  "FROM users WHERE user_id = %s", (user_id,))
    return rows[0] if rows else None


# ---- registration ----

@pytest.mark.parametrize("path", ["/users/", "/users", "/api/v1/users/", "/api/v1/users"])
def test_register_returns_user_without_hash(coredb_shared, path):
    body = user_body(display_name="Zoë Example", profile_picture_url="https://cdn.example.com/a.png")
    resp = coredb_shared.post(path, json=body)
    assert resp.status_code == 201, resp.text
    user = assert_user(resp.json())
    assert user["email"] == body["email"] and user["username"] == body["username"]
    assert user["display_name"] == "Zoë Example"
    assert user["profile_picture_url"] == "https://cdn.example.com/a.png"
    assert user["role"] == "user"
    assert "password" not in resp.text and "argon2" not in resp.text and PASSWORD not in resp.text
    row = user_row(coredb_shared, user["user_id"])
    assert row[2].startswith("$argon2id$")
    assert PASSWORD not in row[2]


def test_register_optional_fields_default_to_null(coredb_shared):
    user, _ = register(coredb_shared)
    assert user["display_name"] is None and user["profile_picture_url"] is None


def test_register_boundaries_accepted(coredb_shared):
    # each limit exactly reached is accepted
    # 255 characters, with DNS-sized labels (<= 63)
    local = "e" + uuid.uuid4().hex
    room = 255 - len(local) - 1 - len(".com")
    labels, left = [], room
    while left > 0:
        size = min(63, left if left <= 63 else 62)
        labels.append("d" * size)
        left -= size + 1
    domain = ".".join(labels)[:room]
    long_email = local + "@" + domain.rstrip(".") + ".com"
    assert len(long_email) == 255
    for body in [user_body(email=long_email),
                 user_body(username=("x_-." + uuid.uuid4().hex * 2)[:50]),
                 user_body(password="p" * 10),
                 user_body(password="p" * 1024),
                 user_body(display_name="d" * 100),
                 user_body(display_name="é" * 100),
                 user_body(profile_picture_url="http://e.com/" + "p" * (500 - 13)),
                 user_body(role="user")]:
        resp = coredb_shared.post("/users/", json=body)
        assert resp.status_code == 201, ({k: str(v)[:40] for k, v in body.items()}, resp.text)
    # a three-character username (may exist from an earlier run of this test)
    short = uuid.uuid4().hex[:3]
    resp = coredb_shared.post("/users/", json=user_body(username=short))
    assert resp.status_code in (201, 409), resp.text


BAD_FIELDS = [
    ("email", "not-an-email"),
    ("email", "two@@example.com"),
    ("email", "a@" + "x" * 250 + ".com"),
    ("email", ""),
    ("email", 42),
    ("email", None),
    ("username", "ab"),
    ("username", "x" * 51),
    ("username", "Upper"),
    ("username", "with space"),
    ("username", "semi;colon"),
    ("username", "ünï"),
    ("username", ["list"]),
    ("password", "short"),
    ("password", "p" * 9),
    ("password", "p" * 1025),
    ("password", 12345678901),
    ("password", ""),
    ("display_name", "d" * 101),
    ("display_name", 7),
    ("profile_picture_url", "ftp://example.com/a.png"),
    ("profile_picture_url", "javascript:alert(1)"),
    ("profile_picture_url", "not a url"),
    ("profile_picture_url", "https://e.com/" + "p" * 490),
    ("profile_picture_url", {"url": "https://e.com"}),
    ("role", "superuser"),
    ("role", 1),
]


@pytest.mark.parametrize("field,value", BAD_FIELDS, ids=[f"{f}-{i}" for i, (f, _) in enumerate(BAD_FIELDS)])
def test_register_validation_names_field(coredb_shared, field, value):
    body = user_body(**{field: value})
    resp = coredb_shared.post("/users/", json=body)
    if field == "role" and resp.status_code == 403:
        return  # an anonymous caller asking for any role but "user" may be refused first
    err = assert_error(resp, 400, "VALIDATION_FAILED")
    assert err["details"].get("field") == field, err


@pytest.mark.parametrize("email", [
    "dots..in{u}@example.com", ".leading{u}@example.com", "trailing{u}.@example.com",
    "name{u}@example..com", "name{u}@-example.com", "name{u}@example-.com", "name{u}(comment)@example.com",
    "name{u}@exa mple.com", "name{u}@example", "name{u}@.example.com", "<name{u}>@example.com"])
def test_register_rejects_malformed_email_syntax(coredb_shared, email):
    # RFC 5321/5322 dot-atoms and host names: no empty labels, no dot at
    # either end of the local part, no hyphen at either end of a label
    resp = coredb_shared.post("/users/", json=user_body(email=email.format(u=uuid.uuid4().hex[:6])))
    err = assert_error(resp, 400, "VALIDATION_FAILED")
    assert err["details"].get("field") == "email"


def test_concurrent_duplicate_registration(coredb_shared):
    body = user_body()
    with ThreadPoolExecutor(8) as pool:
        by_email = list(pool.map(lambda _: coredb_shared.post("/users/", json=dict(body, username=unique())),
                                 range(8)))
        by_name = list(pool.map(lambda _: coredb_shared.post("/users/", json=user_body(username=body["username"])),
                                range(8)))
    for responses, field in ((by_email, "email"), (by_name, "username")):
        codes = sorted(r.status_code for r in responses)
        assert codes == [201] + [409] * 7, (field, codes)
        for r in responses:
            if r.status_code == 409:
                assert assert_error(r, 409, "CONFLICT")["details"]["field"] == field


@pytest.mark.parametrize("missing", ["email", "username", "password"])
def test_register_missing_required_field(coredb_shared, missing):
    body = user_body()
    del body[missing]
    err = assert_error(coredb_shared.post("/users/", json=body), 400, "VALIDATION_FAILED")
    assert err["details"].get("field") == missing


@pytest.mark.parametrize("extra", ["password_hash", "user_id", "is_admin", "created_at"])
def test_register_unknown_field_refused(coredb_shared, extra):
    body = user_body(**{extra: "x"})
    err = assert_error(coredb_shared.post("/users/", json=body), 400, "VALIDATION_FAILED")
    assert err["details"].get("field") == extra


def test_password_equal_to_email_refused(coredb_shared):
    body = user_body()
    body["password"] = body["email"]
    err = assert_error(coredb_shared.post("/users/", json=body), 400, "VALIDATION_FAILED")
    assert err["details"].get("field") == "password"


def test_password_min_length_is_configurable(start_coredb):
    inst = start_coredb(PASSWORD_MIN_LENGTH=4)
    assert inst.post("/users/", json=user_body(password="abcd")).status_code == 201
    err = assert_error(inst.post("/users/", json=user_body(password="abc")), 400, "VALIDATION_FAILED")
    assert err["details"]["field"] == "password"


@pytest.mark.parametrize("body", [[], ["email"], "string", 3, None],
                         ids=["empty-array", "array", "string", "number", "null"])
def test_register_body_not_an_object(coredb_shared, body):
    resp = coredb_shared.post("/users/", data=json.dumps(body), headers={"Content-Type": "application/json"})
    assert_error(resp, 400)


def test_duplicate_email_case_insensitive_and_username_conflict(coredb_shared):
    user, _ = register(coredb_shared)
    body = user_body(email=user["email"].upper())
    err = assert_error(coredb_shared.post("/users/", json=body), 409, "CONFLICT")
    assert err["details"].get("field") == "email"
    body = user_body(username=user["username"])
    err = assert_error(coredb_shared.post("/api/v1/users/", json=body), 409, "CONFLICT")
    assert err["details"].get("field") == "username"
    assert coredb_shared.pg.query(coredb_shared.db, "SELECT count(*) FROM users WHERE lower(email) = %s",
                                  (user["email"].lower(),))[0][0] == 1


def test_anonymous_or_user_cannot_set_role(coredb_shared):
    for role in ("admin", "premium"):
        body = user_body(role=role)
        assert_error(coredb_shared.post("/users/", json=body), 403, "FORBIDDEN")
        assert not coredb_shared.pg.query(coredb_shared.db, "SELECT 1 FROM users WHERE email = %s",
                                          (body["email"],))
    acct = new_account(coredb_shared)
    assert_error(coredb_shared.post("/users/", json=user_body(role="admin"), headers=acct.headers),
                 403, "FORBIDDEN")


def test_admin_sets_role(coredb_shared, admin):
    user, password = register(coredb_shared, token=admin.token, role="premium")
    assert user["role"] == "premium"
    session = login(coredb_shared, user["email"], password)
    assert session["user"]["role"] == "premium"
    user, _ = register(coredb_shared, token=admin.token, prefix="/api/v1/users/", role="admin")
    assert user["role"] == "admin"


# ---- lookups ----

@pytest.mark.parametrize("prefix", PREFIXES)
def test_get_self_by_id_email_username(coredb_shared, prefix):
    acct = new_account(coredb_shared)
    for path in (f"{prefix}/{acct.id}", f"{prefix}/email/{acct.email}",
                 f"{prefix}/email/{urllib.parse.quote(acct.email.upper(), safe='')}",
                 f"{prefix}/username/{acct.user['username']}"):
        resp = coredb_shared.get(path, headers=acct.headers)
        assert resp.status_code == 200, (path, resp.text)
        assert resp.json() == acct.user, path
        assert "password" not in resp.text


@pytest.mark.parametrize("method,suffix", [("GET", "{id}"), ("PUT", "{id}"), ("DELETE", "{id}"),
                                           ("GET", "email/{email}"), ("GET", "username/{username}")])
def test_users_routes_require_token(coredb_shared, method, suffix):
    user, _ = register(coredb_shared)
    path = "/users/" + suffix.format(id=user["user_id"], email=user["email"], username=user["username"])
    kw = {"json": {"display_name": "x"}} if method == "PUT" else {}
    assert_error(coredb_shared.request(method, path, **kw), 401, "UNAUTHORIZED")
    assert_error(coredb_shared.request(method, "/api/v1" + path, **kw), 401, "UNAUTHORIZED")
    assert user_row(coredb_shared, user["user_id"])[4] is None


@pytest.mark.parametrize("prefix", PREFIXES)
def test_another_users_row_is_never_200(coredb_shared, prefix):
    me = new_account(coredb_shared)
    other = new_account(coredb_shared, display_name="original")
    h = me.headers
    assert_error(coredb_shared.get(f"{prefix}/{other.id}", headers=h), 403, "FORBIDDEN")
    assert_error(coredb_shared.request("PUT", f"{prefix}/{other.id}", json={"display_name": "pwned"},
                                       headers=h), 403, "FORBIDDEN")
    assert_error(coredb_shared.request("PUT", f"{prefix}/{other.id}", json={"password": "new-password-123"},
                                       headers=h), 403, "FORBIDDEN")
    assert_error(coredb_shared.request("DELETE", f"{prefix}/{other.id}", headers=h), 403, "FORBIDDEN")
    # lookups by email / username do not reveal that the account exists
    missing = unique()
    for path in (f"{prefix}/email/{other.email}", f"{prefix}/username/{other.user['username']}"):
        err = assert_error(coredb_shared.get(path, headers=h), 404, "NOT_FOUND")
        absent = path.replace(other.email, f"{missing}@example.com").replace(other.user["username"], missing)
        err2 = assert_error(coredb_shared.get(absent, headers=h), 404, "NOT_FOUND")
        assert err["message"] == err2["message"]
    # nothing changed, and the other account still works
    row = user_row(coredb_shared, other.id)
    assert row[4] == "original"
    assert other.me().status_code == 200
    login(coredb_shared, other.email, other.password)


@pytest.mark.parametrize("bad", ["not-a-uuid", "123", uuid.uuid4().hex, "%27%20OR%201%3D1%20--"])
def test_non_uuid_id_is_404(coredb_shared, bad):
    acct = new_account(coredb_shared)
    for method in ("GET", "PUT", "DELETE"):
        kw = {"json": {"display_name": "x"}} if method == "PUT" else {}
        assert_error(coredb_shared.request(method, f"/users/{bad}", headers=acct.headers, **kw),
                     404, "NOT_FOUND")


def test_admin_reads_updates_deletes_anyone(coredb_shared, admin):
    acct = new_account(coredb_shared)
    h = admin.headers
    for path in (f"/users/{acct.id}", f"/users/email/{acct.email}", f"/users/username/{acct.user['username']}"):
        resp = coredb_shared.get(path, headers=h)
        assert resp.status_code == 200, resp.text
        assert resp.json()["user_id"] == acct.id
    resp = coredb_shared.request("PUT", f"/api/v1/users/{acct.id}", json={"display_name": "by admin"}, headers=h)
    assert resp.status_code == 200, resp.text
    assert resp.json()["display_name"] == "by admin"
    # absent ids and lookups: 404 for the admin too
    assert_error(coredb_shared.get(f"/users/{uuid.uuid4()}", headers=h), 404, "NOT_FOUND")
    assert_error(coredb_shared.get(f"/users/email/{unique()}@example.com", headers=h), 404, "NOT_FOUND")
    assert_error(coredb_shared.get(f"/users/username/{unique()}", headers=h), 404, "NOT_FOUND")
    resp = coredb_shared.request("DELETE", f"/users/{acct.id}", headers=h)
    assert resp.status_code == 204, resp.text
    assert resp.content == b""
    assert user_row(coredb_shared, acct.id) is None
    assert_error(acct.me(), 401, "TOKEN_REVOKED")
    assert_error(coredb_shared.get(f"/users/{acct.id}", headers=h), 404, "NOT_FOUND")
    assert_error(coredb_shared.request("DELETE", f"/users/{acct.id}", headers=h), 404, "NOT_FOUND")
    assert admin.me().status_code == 200


# ---- updates ----

def test_partial_update_by_self(coredb_shared):
    acct = new_account(coredb_shared, display_name="before",
                       profile_picture_url="https://e.com/1.png")
    resp = coredb_shared.request("PUT", f"/users/{acct.id}", json={"display_name": "after"},
                                 headers=acct.headers)
    assert resp.status_code == 200, resp.text
    user = assert_user(resp.json())
    assert user["display_name"] == "after"
    for key in ("email", "username", "profile_picture_url", "role", "created_at"):
        assert user[key] == acct.user[key], key
    assert user["updated_at"] >= acct.user["updated_at"]
    new_name = unique()
    resp = coredb_shared.request("PUT", f"/api/v1/users/{acct.id}",
                                 json={"username": new_name, "profile_picture_url": None}, headers=acct.headers)
    assert resp.status_code == 200, resp.text
    assert resp.json()["username"] == new_name and resp.json()["display_name"] == "after"
    assert resp.json()["profile_picture_url"] is None
    assert coredb_shared.get(f"/users/username/{new_name}", headers=acct.headers).status_code == 200
    # an empty update changes nothing
    resp = coredb_shared.request("PUT", f"/users/{acct.id}", json={}, headers=acct.headers)
    assert resp.status_code in (200, 400), resp.text


def test_email_change_moves_login(coredb_shared):
    acct = new_account(coredb_shared)
    new_email = f"{unique()}@example.com"
    resp = coredb_shared.request("PUT", f"/users/{acct.id}", json={"email": new_email}, headers=acct.headers)
    assert resp.status_code == 200, resp.text
    assert resp.json()["email"].lower() == new_email
    assert login(coredb_shared, new_email, acct.password)["user"]["user_id"] == acct.id
    assert_error(login_resp(coredb_shared, acct.email, acct.password), 401, "INVALID_CREDENTIALS")
    assert coredb_shared.get(f"/users/email/{new_email}", headers=acct.headers).status_code == 200
    assert_error(coredb_shared.get(f"/users/email/{acct.email}", headers=acct.headers), 404, "NOT_FOUND")


def test_update_validation_and_conflicts(coredb_shared):
    acct = new_account(coredb_shared)
    other, _ = register(coredb_shared)
    path = f"/users/{acct.id}"
    for body, field in [({"username": "NO"}, "username"), ({"email": "nope"}, "email"),
                        ({"password": "short"}, "password"), ({"display_name": "d" * 101}, "display_name"),
                        ({"profile_picture_url": "ftp://x"}, "profile_picture_url"),
                        ({"password_hash": "$argon2id$x"}, "password_hash"), ({"user_id": str(uuid.uuid4())}, "user_id"),
                        ({"display_name": 5}, "display_name")]:
        err = assert_error(coredb_shared.request("PUT", path, json=body, headers=acct.headers),
                           400, "VALIDATION_FAILED")
        assert err["details"].get("field") == field, (body, err)
    err = assert_error(coredb_shared.request("PUT", path, json={"email": other["email"].upper()},
                                             headers=acct.headers), 409, "CONFLICT")
    assert err["details"]["field"] == "email"
    err = assert_error(coredb_shared.request("PUT", path, json={"username": other["username"]},
                                             headers=acct.headers), 409, "CONFLICT")
    assert err["details"]["field"] == "username"
    assert_error(coredb_shared.request("PUT", path, data="[1]", headers=dict(acct.headers, **{
        "Content-Type": "application/json"})), 400)
    # nothing was changed by the refused updates
    assert acct.me().json() == acct.user


def test_only_admin_changes_role(coredb_shared, admin):
    acct = new_account(coredb_shared)
    for role in ("admin", "premium"):
        assert_error(coredb_shared.request("PUT", f"/users/{acct.id}", json={"role": role},
                                           headers=acct.headers), 403, "FORBIDDEN")
    assert user_row(coredb_shared, acct.id)[3] == "user"
    resp = coredb_shared.request("PUT", f"/users/{acct.id}", json={"role": "premium"}, headers=admin.headers)
    assert resp.status_code == 200, resp.text
    assert resp.json()["role"] == "premium"
    assert acct.relogin()["user"]["role"] == "premium"
    err = assert_error(coredb_shared.request("PUT", f"/users/{acct.id}", json={"role": "root"},
                                             headers=admin.headers), 400, "VALIDATION_FAILED")
    assert err["details"]["field"] == "role"


def test_password_change_rehashes(coredb_shared):
    acct = new_account(coredb_shared)
    before = user_row(coredb_shared, acct.id)[2]
    new_password = "another-long-password"
    resp = coredb_shared.request("PUT", f"/users/{acct.id}", json={"password": new_password}, headers=acct.headers)
    assert resp.status_code == 200, resp.text
    assert "password" not in resp.text
    after = user_row(coredb_shared, acct.id)[2]
    assert after != before and after.startswith("$argon2id$")
    assert_error(login_resp(coredb_shared, acct.email, acct.password), 401, "INVALID_CREDENTIALS")
    assert login(coredb_shared, acct.email, new_password)["user"]["user_id"] == acct.id
    # the password may not become the email
    err = assert_error(coredb_shared.request("PUT", f"/users/{acct.id}", json={"password": acct.email},
                                             headers=acct.headers), 400, "VALIDATION_FAILED")
    assert err["details"]["field"] == "password"


# ---- deletion ----

def test_delete_self_cascades_and_ends_sessions(coredb_shared):
    acct = new_account(coredb_shared)
    second = acct.relogin()
    inst = coredb_shared
    inst.pg.query(inst.db, "INSERT INTO projects (user_id, title) VALUES (%s, 'p1'), (%s, 'p2')",
                  (acct.id, acct.id))
    pid = inst.pg.query(inst.db, "SELECT id FROM projects WHERE user_id = %s LIMIT 1", (acct.id,))[0][0]
    inst.pg.query(inst.db, "INSERT INTO media_assets (project_id, asset_type, url) VALUES (%s, 'img', 'u')",
                  (pid,))
    keeper = new_account(inst)
    inst.pg.query(inst.db, "INSERT INTO projects (user_id, title) VALUES (%s, 'kept')", (keeper.id,))

    resp = inst.request("DELETE", f"/api/v1/users/{acct.id}", headers=acct.headers)
    assert resp.status_code == 204, resp.text
    assert user_row(inst, acct.id) is None
    assert inst.pg.query(inst.db, "SELECT count(*) FROM projects WHERE user_id = %s", (acct.id,))[0][0] == 0
    assert inst.pg.query(inst.db, "SELECT count(*) FROM media_assets WHERE project_id = %s", (pid,))[0][0] == 0
    assert inst.pg.query(inst.db, "SELECT count(*) FROM projects WHERE user_id = %s", (keeper.id,))[0][0] == 1
    # both sessions end at once
    assert_error(acct.me(), 401, "TOKEN_REVOKED")
    assert_error(acct.me(second["access_token"]), 401, "TOKEN_REVOKED")
    resp = inst.post("/api/v1/auth/refresh", json={"refresh_token": second["refresh_token"]})
    assert_error(resp, 401)
    assert_error(login_resp(inst, acct.email, acct.password), 401, "INVALID_CREDENTIALS")
    assert keeper.me().status_code == 200
    # the email is free again
    register(inst, email=acct.email)


# ---- the first admin ----

def test_first_admin_from_environment(start_coredb):
    email = f"{unique('root')}@example.com"
    password = "admin-password-123"
    first = start_coredb(COREDB_ADMIN_EMAIL=email, COREDB_ADMIN_PASSWORD=password)
    session = login(first, email, password)
    assert session["user"]["role"] == "admin"
    assert "password" not in json.dumps(session["user"])
    assert password not in first.log()
    first.stop_clean()
    # an admin exists: a second start with other credentials creates nobody
    other = f"{unique('root')}@example.com"
    second = start_coredb(db=first.db, COREDB_ADMIN_EMAIL=other, COREDB_ADMIN_PASSWORD=password)
    assert_error(login_resp(second, other, password), 401, "INVALID_CREDENTIALS")
    assert second.pg.query(second.db, "SELECT count(*) FROM users WHERE role = 'admin'")[0][0] == 1
    login(second, email, password)


def test_cli_user_create(coredb_shared):
    name = unique("cli")
    email = f"{name}@example.com"
    proc = cli_user_create(coredb_shared, email, name, PASSWORD, role="admin")
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    out = json.loads(proc.stdout)
    assert email in json.dumps(out)
    assert PASSWORD not in proc.stdout + proc.stderr
    session = login(coredb_shared, email, PASSWORD)
    assert session["user"]["role"] == "admin"
    # default role is user
    name = unique("cli")
    proc = cli_user_create(coredb_shared, f"{name}@example.com", name, PASSWORD)
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    assert login(coredb_shared, f"{name}@example.com", PASSWORD)["user"]["role"] == "user"
    # a password that breaks the policy is refused, and nobody is created
    name = unique("cli")
    proc = cli_user_create(coredb_shared, f"{name}@example.com", name, "short", role="admin")
    assert proc.returncode != 0
    assert not coredb_shared.pg.query(coredb_shared.db, "SELECT 1 FROM users WHERE username = %s", (name,))


# ---- hostile input ----

HOSTILE = ["' OR 1=1 --", "x'); DROP TABLE users; --", "a\u0000b", "\u0000", "ü" * 300,
           "x" * 100000, "😀@example.com", "\"; SELECT pg_sleep(5); --", "%00", "../../etc/passwd",
           "admin'--@example.com", "robert'); DELETE FROM users; --@x.com"]


def test_hostile_strings_never_5xx(start_coredb):
    # Its own instance without Redis: the many failed logins here must not
    # count against 127.0.0.1 in the Redis the other tests share.
    inst = start_coredb(redis=False, LOGIN_MAX_FAILURES="100000", LOGIN_MAX_FAILURES_PER_ADDRESS="1000000")
    admin = make_admin(inst)
    acct = new_account(inst)
    before = inst.pg.query(inst.db, "SELECT count(*) FROM users")[0][0]
    problems = []

    def check(what, resp, allowed):
        if resp.status_code not in allowed:
            problems.append((what, resp.status_code, resp.text[:200]))

    client_errors = range(400, 500)
    for i, value in enumerate(HOSTILE):
        for field in ("email", "username", "display_name", "password", "profile_picture_url"):
            resp = inst.post("/users/", json=user_body(**{field: value}))
            # an apostrophe or non-ASCII local part may be a valid address
            ok = (201, 400, 413) if field in ("email", "display_name", "password") else (400, 413)
            check((i, "register", field), resp, ok)
        check((i, "login"), login_resp(inst, value, value), client_errors)
        check((i, "login pw"), login_resp(inst, acct.email, value), client_errors)
        quoted = urllib.parse.quote(value[:2000], safe="")
        for path in (f"/users/{quoted}", f"/users/email/{quoted}", f"/users/username/{quoted}"):
            for who in (acct, admin):
                # the admin may find what a hostile-but-valid registration created
                ok = (200, 400, 404, 414) if who is admin else (400, 404, 414)
                check((i, "GET", path[:60], who is admin), inst.get(path, headers=who.headers), ok)
            check((i, "DELETE", path[:60]), inst.request("DELETE", path, headers=admin.headers),
                  (400, 404, 405, 414))
        resp = inst.request("PUT", f"/users/{acct.id}", json={"display_name": value, "username": value},
                            headers=acct.headers)
        check((i, "PUT"), resp, client_errors)
        check((i, "refresh"), inst.post("/api/v1/auth/refresh", json={"refresh_token": value}), client_errors)
        check((i, "sessions"), inst.request("DELETE", f"/api/v1/auth/sessions/{quoted}", headers=acct.headers),
              (400, 404, 414))
        check((i, "revoke"), inst.post("/api/v1/auth/revoke", json={"user_id": value}, headers=acct.headers),
              (400, 403, 404))
    assert not problems, problems
    assert inst.pg.query(inst.db, "SELECT count(*) FROM users")[0][0] >= before
    assert acct.me().status_code == 200
    assert admin.me().status_code == 200


def test_hostile_bodies(coredb_shared):
    inst = coredb_shared
    json_headers = {"Content-Type": "application/json"}
    for body in [b'{"email": ["a"], "username": {"x": 1}, "password": true}',
                 b'{"email": 1e309, "username": "abc", "password": "xxxxxxxxxxxx"}',
                 b'[{"email": "a@b.co"}]', b'{"email": null, "username": null, "password": null}',
                 b'"\\u0000"', b'{"email": "a\\u0000@b.co", "username": "nul", "password": "xxxxxxxxxxxx"}',
                 b'{"email": "' + b"a" * 5000 + b'@b.co", "username": "abc", "password": "xxxxxxxxxxxx"}',
                 b'{"a":' * 5000 + b'1' + b'}' * 5000]:
        for path in ("/users/", "/api/v1/auth/login", "/api/v1/auth/refresh"):
            resp = inst.post(path, data=body, headers=json_headers)
            assert 400 <= resp.status_code < 500, (path, body[:60], resp.status_code, resp.text[:300])
            assert_error(resp, resp.status_code)
    big = json.dumps(user_body(display_name="x" * (2 * 1024 * 1024)))
    resp = inst.post("/users/", data=big, headers=json_headers)
    assert_error(resp, 413, "PAYLOAD_TOO_LARGE")
    resp = inst.post("/users/", data="email=a", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert_error(resp, 415, "UNSUPPORTED_MEDIA_TYPE")
    assert inst.pg.query(inst.db, "SELECT to_regclass('public.users') IS NOT NULL")[0][0]
