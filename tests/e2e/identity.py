"""Helpers for the identity tests (users, login, tokens): unique accounts,
login, bearer headers, admins from the CLI, and hand-made JWTs for the
hostile-token cases."""
import base64
import hashlib
import hmac
import json
import os
import re
import subprocess
import time
import uuid

from servers import COREDB_BIN, TEST_JWT_SECRET, scratch_dir

PASSWORD = "correct-horse-battery"
ENVELOPE_KEYS = {"code", "message", "details", "timestamp", "request_id"}
USER_KEYS = {"user_id", "email", "username", "display_name", "profile_picture_url", "role",
             "created_at", "updated_at"}
SESSION_KEYS = {"session_id", "created_at", "last_seen_at", "expires_at", "ip_address",
                "user_agent", "current"}


def unique(prefix="u"):
    return f"{prefix}{uuid.uuid4().hex[:12]}"


def user_body(**over):
    """A valid registration body with a fresh email and username."""
    name = unique()
    body = {"email": f"{name}@example.com", "username": name, "password": PASSWORD}
    body.update(over)
    return body


def bearer(token):
    return {"Authorization": f"Bearer {token}"}


def assert_error(resp, status, code=None):
    """Checks the error envelope and returns its inner object."""
    assert resp.status_code == status, f"expected {status} {code}, got {resp.status_code}: {resp.text[:500]}"
    body = resp.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == ENVELOPE_KEYS, err
    if code is not None:
        assert err["code"] == code, err
    return err


def assert_user(obj):
    assert set(obj) == USER_KEYS, obj
    assert re.match(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", obj["user_id"])
    return obj


def register(inst, token=None, prefix="/users/", **over):
    """POST /users/ -> (user, password); asserts 201."""
    body = user_body(**over)
    resp = inst.post(prefix, json=body, headers=bearer(token) if token else {})
    assert resp.status_code == 201, resp.text
    return assert_user(resp.json()), body["password"]


def login_resp(inst, email, password, **kw):
    return inst.post("/api/v1/auth/login", json={"email": email, "password": password}, **kw)


def login(inst, email, password, **kw):
    resp = login_resp(inst, email, password, **kw)
    assert resp.status_code == 200, resp.text
    return resp.json()


class Account:
    """A registered user with a live session."""

    def __init__(self, inst, user, password, session):
        self.inst = inst
        self.user = user
        self.password = password
        self.session = session

    @property
    def id(self):
        return self.user["user_id"]

    @property
    def email(self):
        return self.user["email"]

    @property
    def token(self):
        return self.session["access_token"]

    @property
    def headers(self):
        return bearer(self.token)

    def relogin(self, **kw):
        return login(self.inst, self.email, self.password, **kw)

    def me(self, token=None):
        """GET /users/{own id}: the cheapest authenticated check."""
        return self.inst.get(f"/users/{self.id}", headers=bearer(token or self.token))


def new_account(inst, token=None, **over):
    user, password = register(inst, token=token, **over)
    return Account(inst, user, password, login(inst, user["email"], password))


def cli_env(inst, **extra):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("DATABASE_", "POSTGRES_", "REDIS_", "DB_", "PG"))}
    env.update({"DATABASE_URL": inst.pg.url(inst.db), "JWT_SECRET": TEST_JWT_SECRET,
                "PASSWORD_HASH_OPSLIMIT": "1", "PASSWORD_HASH_MEMLIMIT_KIB": "8192"})
    env.update({k: str(v) for k, v in extra.items()})
    return env


def cli_user_create(inst, email, username, password, role=None, json_out=True):
    """`coredb user create` with the password on stdin."""
    args = [COREDB_BIN, "user", "create", "--email", email, "--username", username]
    if role:
        args += ["--role", role]
    if json_out:
        args.append("--json")
    return subprocess.run(args, input=password + "\n", env=cli_env(inst), cwd=scratch_dir(),
                          capture_output=True, text=True, timeout=60)


def make_admin(inst):
    """A fresh admin created through the CLI, logged in."""
    name = unique("adm")
    email = f"{name}@example.com"
    proc = cli_user_create(inst, email, name, PASSWORD, role="admin")
    assert proc.returncode == 0, (proc.stdout, proc.stderr)
    session = login(inst, email, PASSWORD)
    assert session["user"]["role"] == "admin", session["user"]
    return Account(inst, session["user"], PASSWORD, session)


# ---- hand-made tokens ----

def b64url(data):
    if isinstance(data, (dict, list)):
        data = json.dumps(data, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text):
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def claims_of(token):
    """The payload of a token, unverified."""
    return json.loads(b64url_decode(token.split(".")[1]))


def craft(claims, secret=TEST_JWT_SECRET, alg="HS256", header=None):
    """Signs claims with HMAC (HS256/384/512) or not at all (alg 'none'),
    under any header, so a test can make exactly one property wrong."""
    head = {"alg": alg, "typ": "JWT"} if header is None else header
    signing_input = f"{b64url(head)}.{b64url(claims)}"
    digest = {"HS256": hashlib.sha256, "HS384": hashlib.sha384, "HS512": hashlib.sha512,
              "RS256": hashlib.sha256}.get(alg)
    if alg == "none" or digest is None:
        return signing_input + "."
    key = secret.encode() if isinstance(secret, str) else secret
    return signing_input + "." + b64url(hmac.new(key, signing_input.encode(), digest).digest())


def live_claims(token, **over):
    """The claims of a real token, with fresh times and the given changes
    (a value of None removes the claim)."""
    claims = claims_of(token)
    now = int(time.time())
    claims.update({"iat": now, "nbf": now, "exp": now + 600, "jti": uuid.uuid4().hex})
    for key, value in over.items():
        if value is None:
            claims.pop(key, None)
        else:
            claims[key] = value
    return claims
