"""JWT_CLOCK_SKEW: the leeway on a token's exp, nbf and iat (default 5 s,
0-60), replacing the fixed 30 s that made ACCESS_TOKEN_TTL=2 a 32 s token."""
import json
import time

import pytest

from identity import assert_error, bearer, claims_of, craft, live_claims, new_account
from servers import TEST_JWT_SECRET, run_cli


def status_of(acct, token):
    return acct.inst.get(f"/users/{acct.id}", headers=bearer(token))


def test_short_token_expires_on_time_without_skew(start_coredb):
    inst = start_coredb(ACCESS_TOKEN_TTL=2, JWT_CLOCK_SKEW=0)
    t0 = time.time()
    acct = new_account(inst)
    assert acct.session["expires_in"] == 2
    assert acct.me().status_code == 200  # works at once
    exp = claims_of(acct.token)["exp"]
    assert exp <= t0 + 3
    # refused from the second exp names on (no leeway): at most ~3 s after login
    while time.time() < exp:
        time.sleep(0.05)
    time.sleep(0.1)
    err = assert_error(acct.me(), 401, "TOKEN_EXPIRED")
    assert acct.token not in err["message"]
    assert time.time() - t0 < 4
    # the refresh token still gives a fresh pair
    resp = inst.post("/api/v1/auth/refresh", json={"refresh_token": acct.session["refresh_token"]})
    assert resp.status_code == 200, resp.text
    assert acct.me(resp.json()["access_token"]).status_code == 200


def test_skew_zero_refuses_one_second_late_or_early(start_coredb):
    acct = new_account(start_coredb(JWT_CLOCK_SKEW=0))
    now = int(time.time())
    assert status_of(acct, craft(live_claims(acct.token))).status_code == 200  # the crafting is right
    assert_error(status_of(acct, craft(live_claims(acct.token, exp=now - 1))), 401, "TOKEN_EXPIRED")
    assert_error(status_of(acct, craft(live_claims(acct.token, nbf=now + 2))), 401, "UNAUTHORIZED")
    assert_error(status_of(acct, craft(live_claims(acct.token, iat=now + 2))), 401, "UNAUTHORIZED")


def test_skew_sixty_tolerates_a_half_minute(start_coredb):
    acct = new_account(start_coredb(JWT_CLOCK_SKEW=60))
    now = int(time.time())
    assert status_of(acct, craft(live_claims(acct.token, exp=now - 30))).status_code == 200
    assert status_of(acct, craft(live_claims(acct.token, nbf=now + 30))).status_code == 200
    assert_error(status_of(acct, craft(live_claims(acct.token, exp=now - 70))), 401, "TOKEN_EXPIRED")
    assert_error(status_of(acct, craft(live_claims(acct.token, nbf=now + 70))), 401, "UNAUTHORIZED")


def test_default_skew_is_five_seconds_not_thirty(coredb_shared):
    acct = new_account(coredb_shared)
    now = int(time.time())
    assert status_of(acct, craft(live_claims(acct.token, exp=now - 2))).status_code == 200
    # accepted under the old fixed 30 s leeway
    assert_error(status_of(acct, craft(live_claims(acct.token, exp=now - 10))), 401, "TOKEN_EXPIRED")
    assert_error(status_of(acct, craft(live_claims(acct.token, nbf=now + 10))), 401, "UNAUTHORIZED")


@pytest.mark.parametrize("value", ["61", "-1", "2m", "soon"])
def test_out_of_range_refused_at_start(value):
    env = {"DATABASE_URL": "postgresql://u@127.0.0.1:5/db", "JWT_SECRET": TEST_JWT_SECRET,
           "JWT_CLOCK_SKEW": value}
    proc = run_cli(["serve"], env, timeout=30)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "JWT_CLOCK_SKEW" in proc.stderr


def test_config_shows_the_skew():
    env = {"DATABASE_URL": "postgresql://u@127.0.0.1:5/db", "JWT_SECRET": TEST_JWT_SECRET}
    for value, shown in ((None, 5), ("0", 0), ("60", 60), ("1m", 60)):
        e = dict(env, JWT_CLOCK_SKEW=value) if value else env
        proc = run_cli(["config", "--json"], e, timeout=30)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["JWT_CLOCK_SKEW"] == shown
