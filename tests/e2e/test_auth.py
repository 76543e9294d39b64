"""Authentication: login, refresh with reuse detection, logout, revoke,
session listing and deletion, the session limits, hostile tokens, two
instances sharing PostgreSQL (and Redis), Redis going away, and bcrypt
hashes from the seed era upgraded to argon2id on first login."""
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import bcrypt
import jwt
import pytest

from identity import (PASSWORD, SESSION_KEYS, assert_error, assert_user, b64url, bearer, claims_of, craft,
                      live_claims, login, login_resp, make_admin, new_account, register, unique)
from servers import TEST_JWT_SECRET

LOGIN = "/api/v1/auth/login"
REFRESH = "/api/v1/auth/refresh"
LOGOUT = "/api/v1/auth/logout"
REVOKE = "/api/v1/auth/revoke"
SESSIONS = "/api/v1/auth/sessions"


def decode(token):
    return jwt.decode(token, TEST_JWT_SECRET, algorithms=["HS256"], audience="coredb-api", issuer="coredb")


# ---- login ----

def test_login_returns_token_pair(coredb_shared):
    user, password = register(coredb_shared)
    resp = coredb_shared.post(LOGIN, json={"email": user["email"], "password": password},
                              headers={"User-Agent": "pytest-agent/1"})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert set(body) == {"access_token", "refresh_token", "token_type", "expires_in", "session_id", "user"}
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == 900
    assert assert_user(body["user"]) == user
    claims = decode(body["access_token"])
    assert jwt.get_unverified_header(body["access_token"])["alg"] == "HS256"
    assert {"iss", "aud", "sub", "role", "sid", "jti", "iat", "nbf", "exp"} <= set(claims)
    assert claims["sub"] == user["user_id"] and claims["role"] == "user"
    assert claims["sid"] == body["session_id"]
    assert claims["exp"] - claims["iat"] == 900
    assert abs(claims["iat"] - time.time()) < 60
    # the refresh token is opaque (not a JWT) and carries at least 256 bits
    refresh = body["refresh_token"]
    assert refresh.count(".") < 2 and len(refresh) >= 43
    # it is stored only as a hash
    dump = coredb_shared.pg.query(coredb_shared.db, "SELECT string_agg(t::text, ' ') FROM coredb.refresh_tokens t")
    assert dump and refresh not in (dump[0][0] or "")
    # the token works on both prefixes; a second login is another session
    for prefix in ("/users", "/api/v1/users"):
        assert coredb_shared.get(f"{prefix}/{user['user_id']}", headers=bearer(body["access_token"])).status_code == 200
    again = login(coredb_shared, user["email"].upper(), password)
    assert again["session_id"] != body["session_id"]
    assert again["refresh_token"] != refresh and again["access_token"] != body["access_token"]


def test_wrong_email_and_wrong_password_are_indistinguishable(coredb_shared):
    user, password = register(coredb_shared)
    wrong_pw = assert_error(login_resp(coredb_shared, user["email"], password + "x"), 401, "INVALID_CREDENTIALS")
    wrong_email = assert_error(login_resp(coredb_shared, f"{unique()}@example.com", password),
                               401, "INVALID_CREDENTIALS")
    assert wrong_pw["message"] == wrong_email["message"]
    assert wrong_pw["details"] == wrong_email["details"]
    assert password not in wrong_pw["message"]


@pytest.mark.parametrize("body", [{}, {"email": "a@example.com"}, {"password": "x" * 12},
                                  {"email": 5, "password": "x" * 12}, {"email": "a@example.com", "password": None}])
def test_login_validation(coredb_shared, body):
    assert_error(coredb_shared.post(LOGIN, json=body), 400, "VALIDATION_FAILED")


# ---- refresh ----

def test_refresh_rotates_and_detects_reuse(coredb_shared):
    acct = new_account(coredb_shared)
    first = acct.session
    resp = coredb_shared.post(REFRESH, json={"refresh_token": first["refresh_token"]})
    assert resp.status_code == 200, resp.text
    second = resp.json()
    assert second["session_id"] == first["session_id"]
    assert second["refresh_token"] != first["refresh_token"]
    assert second["access_token"] != first["access_token"]
    assert second["token_type"] == "Bearer"
    assert decode(second["access_token"])["sid"] == first["session_id"]
    assert acct.me(second["access_token"]).status_code == 200
    # one more rotation: the chain goes on
    third = coredb_shared.post(REFRESH, json={"refresh_token": second["refresh_token"]}).json()
    assert third["session_id"] == first["session_id"]
    assert acct.me(third["access_token"]).status_code == 200
    # a used refresh token again: refused, and the whole session ends
    assert_error(coredb_shared.post(REFRESH, json={"refresh_token": first["refresh_token"]}), 401, "TOKEN_REVOKED")
    assert_error(acct.me(third["access_token"]), 401, "TOKEN_REVOKED")
    assert_error(coredb_shared.post(REFRESH, json={"refresh_token": third["refresh_token"]}), 401)
    # another session of the same user is untouched
    other = acct.relogin()
    assert acct.me(other["access_token"]).status_code == 200


def test_refresh_rejects_garbage(coredb_shared):
    assert_error(coredb_shared.post(REFRESH, json={"refresh_token": "x" * 43}), 401)
    assert_error(coredb_shared.post(REFRESH, json={"refresh_token": ""}), 400, "VALIDATION_FAILED")
    assert_error(coredb_shared.post(REFRESH, json={}), 400, "VALIDATION_FAILED")
    acct = new_account(coredb_shared)
    # an access token is not a refresh token
    assert_error(coredb_shared.post(REFRESH, json={"refresh_token": acct.token}), 401)
    assert acct.me().status_code == 200


# ---- logout, revoke, sessions ----

def test_logout_ends_session_at_once(coredb_shared):
    acct = new_account(coredb_shared)
    other = acct.relogin()
    assert acct.me().status_code == 200
    resp = coredb_shared.post(LOGOUT, headers=acct.headers)
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"status": "logged_out", "session_id": acct.session["session_id"]}
    assert_error(acct.me(), 401, "TOKEN_REVOKED")
    assert_error(coredb_shared.post(LOGOUT, headers=acct.headers), 401, "TOKEN_REVOKED")
    assert_error(coredb_shared.post(REFRESH, json={"refresh_token": acct.session["refresh_token"]}), 401)
    assert acct.me(other["access_token"]).status_code == 200
    assert_error(coredb_shared.post(LOGOUT), 401, "UNAUTHORIZED")


def test_revoke_self_and_by_admin(coredb_shared):
    inst = coredb_shared
    admin = make_admin(inst)
    acct = new_account(inst)
    second = acct.relogin()
    victim = new_account(inst)
    # a user may not revoke someone else
    assert_error(inst.post(REVOKE, json={"user_id": victim.id}, headers=acct.headers), 403, "FORBIDDEN")
    assert victim.me().status_code == 200
    resp = inst.post(REVOKE, json={"user_id": acct.id}, headers=acct.headers)
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"user_id": acct.id, "revoked_sessions": 2}
    assert_error(acct.me(), 401, "TOKEN_REVOKED")
    assert_error(acct.me(second["access_token"]), 401, "TOKEN_REVOKED")
    # the admin ends every session of another user; the admin's own survives
    victim.relogin()
    resp = inst.post(REVOKE, json={"user_id": victim.id}, headers=admin.headers)
    assert resp.status_code == 200, resp.text
    assert resp.json()["revoked_sessions"] == 2
    assert_error(victim.me(), 401, "TOKEN_REVOKED")
    assert admin.me().status_code == 200
    # a fresh login works again after a revoke
    assert victim.me(victim.relogin()["access_token"]).status_code == 200
    assert_error(inst.post(REVOKE, json={"user_id": victim.id}), 401, "UNAUTHORIZED")
    assert_error(inst.post(REVOKE, json={}, headers=admin.headers), 400, "VALIDATION_FAILED")


def test_sessions_list_and_delete(coredb_shared):
    inst = coredb_shared
    acct = new_account(inst)
    other_session = acct.relogin(headers={"User-Agent": "second-device/2.0"})
    resp = inst.get(SESSIONS, headers=acct.headers)
    assert resp.status_code == 200, resp.text
    sessions = resp.json()["sessions"]
    assert len(sessions) == 2
    for s in sessions:
        assert set(s) == SESSION_KEYS, s
        assert s["ip_address"] == "127.0.0.1"
    current = [s for s in sessions if s["current"]]
    assert [s["session_id"] for s in current] == [acct.session["session_id"]]
    by_id = {s["session_id"]: s for s in sessions}
    assert by_id[other_session["session_id"]]["user_agent"] == "second-device/2.0"
    # someone else's session: 404, and it lives on
    stranger = new_account(inst)
    assert_error(inst.request("DELETE", f"{SESSIONS}/{stranger.session['session_id']}", headers=acct.headers),
                 404, "NOT_FOUND")
    assert stranger.me().status_code == 200
    assert_error(inst.request("DELETE", f"{SESSIONS}/not-a-uuid", headers=acct.headers), 404, "NOT_FOUND")
    assert_error(inst.request("DELETE", f"{SESSIONS}/{uuid.uuid4()}", headers=acct.headers), 404, "NOT_FOUND")
    # deleting my other session ends it at once
    resp = inst.request("DELETE", f"{SESSIONS}/{other_session['session_id']}", headers=acct.headers)
    assert resp.status_code == 204, resp.text
    assert_error(acct.me(other_session["access_token"]), 401, "TOKEN_REVOKED")
    sessions = inst.get(SESSIONS, headers=acct.headers).json()["sessions"]
    assert [s["session_id"] for s in sessions] == [acct.session["session_id"]]
    assert_error(inst.request("DELETE", f"{SESSIONS}/{other_session['session_id']}", headers=acct.headers),
                 404, "NOT_FOUND")
    assert_error(inst.get(SESSIONS), 401, "UNAUTHORIZED")


def test_session_max_per_user_evicts_oldest(start_coredb):
    inst = start_coredb(SESSION_MAX_PER_USER=2)
    acct = new_account(inst)
    second = acct.relogin()
    assert acct.me().status_code == 200
    third = acct.relogin()
    assert_error(acct.me(), 401, "TOKEN_REVOKED")
    assert acct.me(second["access_token"]).status_code == 200
    assert acct.me(third["access_token"]).status_code == 200
    sessions = inst.get(SESSIONS, headers=bearer(third["access_token"])).json()["sessions"]
    assert {s["session_id"] for s in sessions} == {second["session_id"], third["session_id"]}
    # the limit is per user
    other = new_account(inst)
    other.relogin()
    assert acct.me(second["access_token"]).status_code == 200
    # concurrent logins never leave more than the limit alive
    with ThreadPoolExecutor(8) as pool:
        sessions = list(pool.map(lambda _: login_resp(inst, acct.email, acct.password), range(8)))
    assert all(r.status_code == 200 for r in sessions), [r.text for r in sessions]
    tokens = [r.json()["access_token"] for r in sessions] + [second["access_token"], third["access_token"]]
    alive = [t for t in tokens if acct.me(t).status_code == 200]
    assert 1 <= len(alive) <= 2, len(alive)
    listed = inst.get(SESSIONS, headers=bearer(alive[0])).json()["sessions"]
    assert len(listed) == len(alive)


def test_concurrent_refresh_is_single_use(coredb_shared):
    acct = new_account(coredb_shared)
    with ThreadPoolExecutor(6) as pool:
        responses = list(pool.map(lambda _: coredb_shared.post(
            REFRESH, json={"refresh_token": acct.session["refresh_token"]}), range(6)))
    codes = [r.status_code for r in responses]
    assert codes.count(200) <= 1 and set(codes) <= {200, 401}, codes
    # the losers presented a used token: the session is over (reuse detection)
    for r in responses:
        if r.status_code == 200:
            assert_error(acct.me(r.json()["access_token"]), 401, "TOKEN_REVOKED")


@pytest.mark.parametrize("with_redis", [False, True], ids=["postgres-only", "redis"])
def test_session_max_lifetime_and_refresh_ttl(start_coredb, with_redis):
    inst = start_coredb(redis=with_redis, SESSION_MAX_LIFETIME=3, REFRESH_TOKEN_TTL=1)
    user, password = register(inst)
    born = time.monotonic()
    session = login(inst, user["email"], password)
    token = session["access_token"]
    me = f"/users/{user['user_id']}"
    time.sleep(1.3)
    # the refresh token outlived REFRESH_TOKEN_TTL
    assert_error(inst.post(REFRESH, json={"refresh_token": session["refresh_token"]}), 401)
    # activity does not extend the absolute lifetime
    while time.monotonic() - born < 2.3:
        assert inst.get(me, headers=bearer(token)).status_code == 200
        time.sleep(0.3)
    time.sleep(max(0, born + 3.6 - time.monotonic()))
    assert_error(inst.get(me, headers=bearer(token)), 401, "TOKEN_REVOKED")


@pytest.mark.parametrize("with_redis", [False, True], ids=["postgres-only", "redis"])
def test_session_idle_timeout(start_coredb, with_redis):
    inst = start_coredb(redis=with_redis, SESSION_TIMEOUT=2)
    acct = new_account(inst)
    busy = acct.relogin()
    # activity keeps a session alive past SESSION_TIMEOUT
    start = time.monotonic()
    while time.monotonic() - start < 3.5:
        assert acct.me(busy["access_token"]).status_code == 200
        time.sleep(0.4)
    # the idle one has ended, whether Redis had it cached or not
    assert_error(acct.me(), 401, "TOKEN_REVOKED")
    assert_error(inst.post(REFRESH, json={"refresh_token": acct.session["refresh_token"]}), 401)
    assert acct.me(acct.relogin()["access_token"]).status_code == 200
    assert acct.me(busy["access_token"]).status_code == 200


# ---- hostile tokens ----

@pytest.fixture(scope="module")
def victim(coredb_shared):
    return new_account(coredb_shared)


def expect_refused(acct, token, code):
    resp = acct.inst.get(f"/users/{acct.id}", headers=bearer(token))
    err = assert_error(resp, 401, code)
    assert token not in err["message"]
    return err


def test_crafted_valid_token_is_accepted(victim):
    # proves the crafting below is right, so each refusal is for its one defect
    assert victim.me(craft(live_claims(victim.token))).status_code == 200
    # within the default JWT_CLOCK_SKEW of 5 s (test_jwt_skew.py tests its edges)
    assert victim.me(craft(live_claims(victim.token, exp=int(time.time()) - 2))).status_code == 200
    assert victim.me(craft(live_claims(victim.token, nbf=int(time.time()) + 2))).status_code == 200


HOSTILE_TOKENS = {
    "forged-signature": (lambda t: craft(live_claims(t), secret="another-secret-0123456789abcdef0123456789"),
                         "UNAUTHORIZED"),
    "alg-none": (lambda t: craft(live_claims(t), alg="none"), "UNAUTHORIZED"),
    "alg-none-with-signature": (lambda t: craft(live_claims(t), header={"alg": "none", "typ": "JWT"},
                                                alg="HS256"), "UNAUTHORIZED"),
    "hs384": (lambda t: craft(live_claims(t), alg="HS384"), "UNAUTHORIZED"),
    "hs512": (lambda t: craft(live_claims(t), alg="HS512"), "UNAUTHORIZED"),
    "rs256-header": (lambda t: craft(live_claims(t), header={"alg": "RS256", "typ": "JWT"}, alg="HS256"),
                     "UNAUTHORIZED"),
    "expired": (lambda t: craft(live_claims(t, iat=int(time.time()) - 4000, nbf=int(time.time()) - 4000,
                                            exp=int(time.time()) - 120)), "TOKEN_EXPIRED"),
    "not-yet-valid": (lambda t: craft(live_claims(t, nbf=int(time.time()) + 600,
                                                  exp=int(time.time()) + 1200)), "UNAUTHORIZED"),
    "wrong-audience": (lambda t: craft(live_claims(t, aud="someone-else")), "UNAUTHORIZED"),
    "wrong-issuer": (lambda t: craft(live_claims(t, iss="evil")), "UNAUTHORIZED"),
    "no-audience": (lambda t: craft(live_claims(t, aud=None)), "UNAUTHORIZED"),
    "no-sid": (lambda t: craft(live_claims(t, sid=None)), "UNAUTHORIZED"),
    "no-sub": (lambda t: craft(live_claims(t, sub=None)), "UNAUTHORIZED"),
    "no-exp": (lambda t: craft(live_claims(t, exp=None)), "UNAUTHORIZED"),
    "tampered-role": (lambda t: tamper(t, role="admin"), "UNAUTHORIZED"),
    "tampered-sub": (lambda t: tamper(t, sub=str(uuid.uuid4())), "UNAUTHORIZED"),
    "truncated-signature": (lambda t: t[:-5], "UNAUTHORIZED"),
    "no-signature": (lambda t: t.rsplit(".", 1)[0] + ".", "UNAUTHORIZED"),
    "garbage": (lambda t: "garbage", "UNAUTHORIZED"),
    "two-parts": (lambda t: t.rsplit(".", 1)[0], "UNAUTHORIZED"),
    "bad-base64": (lambda t: "!!!." + t.split(".", 1)[1], "UNAUTHORIZED"),
}


def tamper(token, **changes):
    head, _, sig = token.split(".")
    claims = claims_of(token)
    claims.update(changes)
    return f"{head}.{b64url(claims)}.{sig}"


@pytest.mark.parametrize("case", list(HOSTILE_TOKENS))
def test_hostile_token_refused(coredb_shared, victim, case):
    make, code = HOSTILE_TOKENS[case]
    expect_refused(victim, make(victim.token), code)
    assert victim.me().status_code == 200


def test_tampered_role_does_not_grant_admin(coredb_shared, victim):
    other = new_account(coredb_shared)
    token = tamper(victim.token, role="admin")
    resp = coredb_shared.get(f"/users/{other.id}", headers=bearer(token))
    assert_error(resp, 401, "UNAUTHORIZED")
    resp = coredb_shared.post("/users/", json={"email": f"{unique()}@example.com", "username": unique(),
                                               "password": PASSWORD, "role": "admin"}, headers=bearer(token))
    assert resp.status_code in (401, 403), resp.text


@pytest.mark.parametrize("header", ["Bearer ", "Bearer", "Basic dXNlcjpwYXNzd29yZA==", "Token abc",
                                    "Bearer a.b.c", "Bearer  ", "Bearer \u00e9t\u00e9"])
def test_malformed_authorization_header(coredb_shared, victim, header):
    resp = coredb_shared.get(f"/users/{victim.id}", headers={"Authorization": header.encode("utf-8")})
    assert_error(resp, 401, "UNAUTHORIZED")


def test_authentication_before_body_validation(coredb_shared, victim):
    inst = coredb_shared
    bad = {"Content-Type": "application/json", "Authorization": "Bearer nonsense"}
    for method, path in [("PUT", f"/users/{victim.id}"), ("POST", LOGOUT), ("POST", REVOKE)]:
        assert_error(inst.request(method, path, data=b"{not json", headers=bad), 401, "UNAUTHORIZED")
        assert_error(inst.request(method, path, data=b"{not json",
                                  headers={"Content-Type": "application/json"}), 401, "UNAUTHORIZED")
    # a logged-out token is refused before the body too
    acct = new_account(inst)
    inst.post(LOGOUT, headers=acct.headers)
    resp = inst.request("PUT", f"/users/{acct.id}", data=b"[[[",
                        headers=dict(acct.headers, **{"Content-Type": "application/json"}))
    assert_error(resp, 401, "TOKEN_REVOKED")
    # registration accepts anonymous callers, but a bearer given must be valid
    resp = inst.post("/users/", json={"email": f"{unique()}@example.com", "username": unique(),
                                      "password": PASSWORD}, headers=acct.headers)
    assert_error(resp, 401, "TOKEN_REVOKED")
    resp = inst.post("/users/", data=b"{", headers=bad)
    assert_error(resp, 401, "UNAUTHORIZED")


def test_expired_real_token(start_coredb):
    inst = start_coredb(ACCESS_TOKEN_TTL=1)
    acct = new_account(inst)
    assert acct.session["expires_in"] == 1
    assert acct.me().status_code == 200
    # craft the same token as if issued long ago instead of waiting out the skew
    old = int(time.time()) - 100
    expect_refused(acct, craft(live_claims(acct.token, iat=old, nbf=old, exp=old + 1)), "TOKEN_EXPIRED")
    # the refresh token still gives a fresh pair
    resp = inst.post(REFRESH, json={"refresh_token": acct.session["refresh_token"]})
    assert resp.status_code == 200, resp.text
    assert acct.me(resp.json()["access_token"]).status_code == 200


# ---- several instances, Redis down ----

@pytest.mark.parametrize("with_redis", [True, False], ids=["redis", "postgres-only"])
def test_logout_on_one_instance_refused_on_other(start_coredb, with_redis):
    a = start_coredb(redis=with_redis)
    b = start_coredb(redis=with_redis, db=a.db)
    acct = new_account(a)
    other = acct.relogin()
    # warm whatever each instance caches
    for inst in (a, b, a, b):
        assert inst.get(f"/users/{acct.id}", headers=acct.headers).status_code == 200
        assert inst.get(f"/users/{acct.id}", headers=bearer(other["access_token"])).status_code == 200
    assert a.post(LOGOUT, headers=acct.headers).status_code == 200
    assert_error(b.get(f"/users/{acct.id}", headers=acct.headers), 401, "TOKEN_REVOKED")
    assert b.get(f"/users/{acct.id}", headers=bearer(other["access_token"])).status_code == 200
    # and the other way round, with a revoke
    assert b.post(REVOKE, json={"user_id": acct.id}, headers=bearer(other["access_token"])).status_code == 200
    assert_error(a.get(f"/users/{acct.id}", headers=bearer(other["access_token"])), 401, "TOKEN_REVOKED")
    # a deletion on one instance ends the sessions on the other
    third = acct.relogin()
    for inst in (a, b):
        assert inst.get(f"/users/{acct.id}", headers=bearer(third["access_token"])).status_code == 200
    assert a.request("DELETE", f"/users/{acct.id}", headers=bearer(third["access_token"])).status_code == 204
    assert_error(b.get(f"/users/{acct.id}", headers=bearer(third["access_token"])), 401, "TOKEN_REVOKED")


def test_refresh_reuse_across_instances(start_coredb):
    a = start_coredb()
    b = start_coredb(db=a.db)
    acct = new_account(a)
    fresh = b.post(REFRESH, json={"refresh_token": acct.session["refresh_token"]}).json()
    assert a.get(f"/users/{acct.id}", headers=bearer(fresh["access_token"])).status_code == 200
    assert_error(a.post(REFRESH, json={"refresh_token": acct.session["refresh_token"]}), 401, "TOKEN_REVOKED")
    assert_error(b.get(f"/users/{acct.id}", headers=bearer(fresh["access_token"])), 401, "TOKEN_REVOKED")


def test_redis_down_still_authenticates(start_coredb, private_redis):
    inst = start_coredb(redis=False, REDIS_URL=private_redis.url)
    acct = new_account(inst)
    assert acct.me().status_code == 200
    private_redis.stop()
    assert acct.me().status_code == 200
    second = acct.relogin()
    assert acct.me(second["access_token"]).status_code == 200
    user, password = register(inst)
    session = login(inst, user["email"], password)
    resp = inst.post(LOGOUT, headers=acct.headers)
    assert resp.status_code == 200, resp.text
    assert_error(acct.me(), 401, "TOKEN_REVOKED")
    assert acct.me(second["access_token"]).status_code == 200
    resp = inst.post(REFRESH, json={"refresh_token": session["refresh_token"]})
    assert resp.status_code == 200, resp.text
    assert_error(inst.post(REFRESH, json={"refresh_token": session["refresh_token"]}), 401, "TOKEN_REVOKED")
    assert_error(inst.get(f"/users/{user['user_id']}", headers=bearer(resp.json()["access_token"])),
                 401, "TOKEN_REVOKED")


def test_redis_cached_session_revoked_while_redis_down(start_coredb, private_redis):
    # the session is cached alive in Redis; Redis goes away, the session is
    # ended, Redis comes back empty-handed or not: the token must stay refused
    inst = start_coredb(redis=False, REDIS_URL=private_redis.url)
    acct = new_account(inst)
    assert acct.me().status_code == 200
    private_redis.stop()
    assert inst.post(LOGOUT, headers=acct.headers).status_code == 200
    assert_error(acct.me(), 401, "TOKEN_REVOKED")
    private_redis.start()
    time.sleep(0.5)
    assert_error(acct.me(), 401, "TOKEN_REVOKED")


# ---- seed-era bcrypt hashes ----

@pytest.mark.parametrize("prefix", ["$2b$", "$2a$", "$2y$"])
def test_bcrypt_hash_logs_in_and_is_upgraded(coredb_shared, prefix):
    inst = coredb_shared
    name = unique("bc")
    email = f"{name}@example.com"
    password = "legacy-password-" + name
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(4)).decode()
    assert hashed.startswith("$2b$")
    hashed = prefix + hashed[4:]
    user_id = inst.pg.query(inst.db, "INSERT INTO users (email, username, password_hash, role) "
                                     "VALUES (%s, %s, %s, 'user') RETURNING user_id", (email, name, hashed))[0][0]
    session = login(inst, email, password)
    assert session["user"]["user_id"] == str(user_id)
    stored = inst.pg.query(inst.db, "SELECT password_hash FROM users WHERE user_id = %s", (user_id,))[0][0]
    assert stored.startswith("$argon2id$"), stored[:10]
    session = login(inst, email, password)
    assert inst.get(f"/users/{user_id}", headers=bearer(session["access_token"])).status_code == 200


def test_bcrypt_wrong_password_keeps_hash(coredb_shared):
    inst = coredb_shared
    name = unique("bc")
    hashed = bcrypt.hashpw(b"legacy-password-1", bcrypt.gensalt(4)).decode()
    inst.pg.query(inst.db, "INSERT INTO users (email, username, password_hash) VALUES (%s, %s, %s)",
                  (f"{name}@example.com", name, hashed))
    assert_error(login_resp(inst, f"{name}@example.com", "legacy-password-2"), 401, "INVALID_CREDENTIALS")
    stored = inst.pg.query(inst.db, "SELECT password_hash FROM users WHERE username = %s", (name,))[0][0]
    assert stored == hashed


def test_unknown_hash_format_never_matches(coredb_shared):
    inst = coredb_shared
    name = unique("bc")
    for stored in ("plaintext-password", "", "$1$abc$xyz"):
        inst.pg.query(inst.db, "DELETE FROM users WHERE username = %s", (name,))
        inst.pg.query(inst.db, "INSERT INTO users (email, username, password_hash) VALUES (%s, %s, %s)",
                      (f"{name}@example.com", name, stored))
        assert_error(login_resp(inst, f"{name}@example.com", stored or "x" * 12), 401, "INVALID_CREDENTIALS")
