"""Rate limiting: per-caller quotas by role (anonymous by address, users by
id, admin unlimited by default), the X-RateLimit-* headers and 429 with
Retry-After, quotas shared by two instances through Redis, and the login
limits against password guessing (per account and per client address)."""
import time

import requests

from identity import (PASSWORD, assert_error, bearer, login, login_resp, new_account, register, unique,
                      user_body)


def burst(calls):
    """Runs the calls back to back; returns (responses, seconds taken)."""
    start = time.monotonic()
    out = [call() for call in calls]
    return out, time.monotonic() - start


def check_headers(resp, limit):
    assert resp.headers.get("X-RateLimit-Limit") == str(limit), dict(resp.headers)
    remaining = int(resp.headers["X-RateLimit-Remaining"])
    assert 0 <= remaining <= limit
    assert int(resp.headers["X-RateLimit-Reset"]) >= 0
    return remaining


def check_refusal(resp, limit):
    err = assert_error(resp, 429, "RATE_LIMITED")
    retry = int(resp.headers["Retry-After"])
    assert retry >= 1
    check_headers(resp, limit)
    assert resp.headers["X-RateLimit-Remaining"] == "0"
    return err, retry


def test_user_quota_and_retry_after(start_coredb):
    admin_email = f"{unique('root')}@example.com"
    inst = start_coredb(RATE_LIMIT_USER=5, RATE_LIMIT_PREMIUM=10000, RATE_LIMIT_ADMIN=0,
                        COREDB_ADMIN_EMAIL=admin_email, COREDB_ADMIN_PASSWORD=PASSWORD)
    acct = new_account(inst)
    time.sleep(1.2)  # the bucket is full again
    http = requests.Session()
    url = f"{inst.base}/users/{acct.id}"
    responses, took = burst([lambda: http.get(url, headers=acct.headers, timeout=10)] * 30)
    codes = [r.status_code for r in responses]
    allowed = codes.count(200)
    assert set(codes) <= {200, 429}, codes
    assert 4 <= allowed <= 5 + 5 * took + 1, (allowed, took, codes)
    assert codes[0] == 200
    for r in responses:
        if r.status_code == 200:
            check_headers(r, 5)
    refusals = [r for r in responses if r.status_code == 429]
    assert refusals
    for r in refusals:
        err, retry = check_refusal(r, 5)
        assert err["details"].get("retry_after") == retry
    # after Retry-After the caller is let in again
    time.sleep(int(refusals[-1].headers["Retry-After"]))
    resp = http.get(url, headers=acct.headers, timeout=10)
    assert resp.status_code == 200, resp.text
    # the quota is per user: another user is not affected
    other = new_account(inst)
    assert other.me().status_code == 200
    # health routes are never limited and carry no quota headers
    for path in ("/health", "/health/live", "/health/ready"):
        resp = inst.get(path)
        assert resp.status_code != 429 and "X-RateLimit-Limit" not in resp.headers
    # RATE_LIMIT_ADMIN=0: no limit for the admin
    admin_token = login(inst, admin_email, PASSWORD)["access_token"]
    responses, _ = burst([lambda: http.get(url, headers=bearer(admin_token), timeout=10)] * 30)
    assert [r.status_code for r in responses] == [200] * 30
    # premium has its own (here generous) quota: a role change takes effect on the next login
    resp = inst.request("PUT", f"/users/{other.id}", json={"role": "premium"}, headers=bearer(admin_token))
    assert resp.status_code == 200, resp.text
    premium = other.relogin()["access_token"]
    purl = f"{inst.base}/users/{other.id}"
    responses, _ = burst([lambda: http.get(purl, headers=bearer(premium), timeout=10)] * 30)
    assert [r.status_code for r in responses] == [200] * 30
    check_headers(responses[-1], 10000)


def test_anonymous_quota_by_address(start_coredb):
    inst = start_coredb(redis=False, RATE_LIMIT_ANON=5)
    acct = new_account(inst)  # two anonymous requests
    time.sleep(1.2)
    http = requests.Session()
    # invalid bodies: cheap, and the quota is checked before the body anyway
    responses, took = burst([lambda: http.post(f"{inst.base}/users/", json={}, timeout=10)] * 30)
    codes = [r.status_code for r in responses]
    assert set(codes) <= {400, 429}, codes
    allowed = codes.count(400)
    assert 4 <= allowed <= 5 + 5 * took + 1, (allowed, took, codes)
    for r in responses:
        if r.status_code == 429:
            check_refusal(r, 5)
        else:
            check_headers(r, 5)
    # forwarding headers from the client do not buy a fresh quota
    spoofed = [http.post(f"{inst.base}/users/", json={}, timeout=10,
                         headers={"X-Forwarded-For": f"10.0.0.{i}", "X-Real-IP": f"10.1.0.{i}",
                                  "Forwarded": f"for=10.2.0.{i}"}) for i in range(10)]
    assert [r.status_code for r in spoofed].count(429) >= 8
    # login is an anonymous route too, and is refused while over the quota
    resp = login_resp(inst, acct.email, acct.password)
    if resp.status_code == 429:
        check_refusal(resp, 5)
    # an authenticated user has its own quota
    assert acct.me().status_code == 200
    time.sleep(int(responses[-1].headers.get("Retry-After", "1")))
    resp = inst.post("/users/", json=user_body())
    assert resp.status_code == 201, resp.text


def test_quota_shared_between_instances(start_coredb, private_redis):
    a = start_coredb(redis=False, REDIS_URL=private_redis.url, RATE_LIMIT_USER=5)
    b = start_coredb(redis=False, REDIS_URL=private_redis.url, RATE_LIMIT_USER=5, db=a.db)
    acct = new_account(a)
    time.sleep(1.2)
    ha, hb = requests.Session(), requests.Session()
    calls = []
    for i in range(15):
        calls.append(lambda: ha.get(f"{a.base}/users/{acct.id}", headers=acct.headers, timeout=10))
        calls.append(lambda: hb.get(f"{b.base}/users/{acct.id}", headers=acct.headers, timeout=10))
    responses, took = burst(calls)
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 429}, codes
    allowed = codes.count(200)
    # one quota of 5 (plus what refills while the burst runs), not two
    assert allowed <= 5 + 5 * took + 1, (allowed, took, codes)
    assert 429 in codes[0::2] and 429 in codes[1::2], codes


def test_login_failures_per_account_and_address(start_coredb):
    inst = start_coredb(redis=False, LOGIN_MAX_FAILURES=3, LOGIN_MAX_FAILURES_PER_ADDRESS=5)
    users = []
    for _ in range(3):
        users.append(register(inst))
    (a, pa), (b, pb), (c, pc) = users
    # the account is the same whatever the case of its email
    for email in (a["email"], a["email"].upper(), a["email"].capitalize()):
        assert_error(login_resp(inst, email, "wrong-password-1"), 401, "INVALID_CREDENTIALS")
    # the fourth attempt is refused even with the right password
    resp = login_resp(inst, a["email"], pa)
    err = assert_error(resp, 429, "RATE_LIMITED")
    assert int(resp.headers["Retry-After"]) >= 1
    assert "access_token" not in resp.text
    # another account from the same address still logs in
    login(inst, b["email"], pb)
    # until the address has failed LOGIN_MAX_FAILURES_PER_ADDRESS times
    for _ in range(2):
        assert_error(login_resp(inst, b["email"], "wrong-password-1"), 401, "INVALID_CREDENTIALS")
    resp = login_resp(inst, c["email"], pc)
    assert_error(resp, 429, "RATE_LIMITED")
    assert int(resp.headers["Retry-After"]) >= 1
    # unknown emails are counted too (they must look like wrong passwords)
    assert login_resp(inst, f"{unique()}@example.com", "x" * 12).status_code == 429
    assert err["message"]


def test_login_failures_window_expires(start_coredb):
    inst = start_coredb(redis=False, LOGIN_MAX_FAILURES=2, LOGIN_FAILURE_WINDOW=2)
    user, password = register(inst)
    codes = []
    for _ in range(6):  # the first failures may straddle a window boundary
        resp = login_resp(inst, user["email"], "wrong-password-1")
        codes.append(resp.status_code)
        if resp.status_code == 429:
            break
    assert codes[-1] == 429 and set(codes[:-1]) == {401}, codes
    resp = login_resp(inst, user["email"], password)
    assert_error(resp, 429, "RATE_LIMITED")
    time.sleep(int(resp.headers["Retry-After"]) + 0.2)
    login(inst, user["email"], password)


def test_login_failures_shared_between_instances(start_coredb, private_redis):
    a = start_coredb(redis=False, REDIS_URL=private_redis.url, LOGIN_MAX_FAILURES=3)
    b = start_coredb(redis=False, REDIS_URL=private_redis.url, LOGIN_MAX_FAILURES=3, db=a.db)
    user, password = register(a)
    for inst in (a, b, a):
        assert_error(login_resp(inst, user["email"], "wrong-password-1"), 401, "INVALID_CREDENTIALS")
    assert_error(login_resp(b, user["email"], password), 429, "RATE_LIMITED")
    assert_error(login_resp(a, user["email"], password), 429, "RATE_LIMITED")


def test_quota_falls_back_in_process_when_redis_down(start_coredb, private_redis):
    inst = start_coredb(redis=False, REDIS_URL=private_redis.url, RATE_LIMIT_USER=5)
    acct = new_account(inst)
    private_redis.stop()
    assert acct.me().status_code == 200
    time.sleep(1.2)
    http = requests.Session()
    url = f"{inst.base}/users/{acct.id}"
    responses, took = burst([lambda: http.get(url, headers=acct.headers, timeout=10)] * 30)
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 429}, codes
    assert 4 <= codes.count(200) <= 5 + 5 * took + 1, (took, codes)
    check_refusal(responses[-1], 5)
