#!/usr/bin/env python3
"""bench/auth_setup.py BASE_URL N OUT_DIR - the users behind auth.sh.

Registers two pools of N users against a running coredb: "login" users,
whose credentials the login load replays (their sessions pile up), and
"token" users, each logged in once, whose access tokens drive the
authenticated routes (one session each, so their reads stay the same size).
Writes wrk's Lua tables to OUT_DIR: login_users.lua, tokens.lua (valid),
revoked.lua (tokens of sessions ended by logout), forged.lua (valid tokens
with one signature character changed). Checks each kind answers as expected.
Standard library only.
"""
import concurrent.futures as cf
import json
import sys

import bench_http

BASE, N, OUT = sys.argv[1], int(sys.argv[2]), sys.argv[3]


def call(method, path, body=None, token=None):
    return bench_http.call(BASE, method, path, body, token)


def must(status, body, want, what):
    if status not in (want if isinstance(want, tuple) else (want,)):
        sys.exit(f"auth_setup: {what} answered {status}, expected {want}")
    return body


def user(kind, i):
    return {"email": f"{kind}{i}@bench.example.com", "username": f"{kind}{i}",
            "password": f"bench-{kind}-password-{i}"}


def login(u):
    return must(*call("POST", "/api/v1/auth/login", {"email": u["email"], "password": u["password"]}),
                200, "login")


def register(u):
    must(*call("POST", "/users/", u), 201, "register")


def token_user(i):
    u = user("token", i)
    register(u)
    live, ended = login(u), login(u)
    must(*call("POST", "/api/v1/auth/logout", token=ended["access_token"]), (200, 204), "logout")
    head, sig = live["access_token"].rsplit(".", 1)
    forged = head + "." + sig[:5] + ("A" if sig[5] != "A" else "B") + sig[6:]
    uid = live["user"]["user_id"]
    return ({"id": uid, "token": live["access_token"]}, {"id": uid, "token": ended["access_token"]},
            {"id": uid, "token": forged})


def lua_table(rows):
    # json.dumps of these ASCII strings is a valid Lua string literal
    return "return {\n" + "".join(
        "{" + ",".join(f"{k}={json.dumps(v)}" for k, v in r.items()) + "},\n" for r in rows) + "}\n"


def write(name, rows):
    with open(f"{OUT}/{name}", "w") as f:
        f.write(lua_table(rows))


with cf.ThreadPoolExecutor(4) as ex:
    logins = [user("login", i) for i in range(N)]
    list(ex.map(register, logins))
    tokens = list(ex.map(token_user, range(N)))

write("login_users.lua", [{"email": u["email"], "password": u["password"]} for u in logins])
write("tokens.lua", [t[0] for t in tokens])
write("revoked.lua", [t[1] for t in tokens])
write("forged.lua", [t[2] for t in tokens])

valid, revoked, forged = tokens[0]
must(*call("GET", f"/users/{valid['id']}", token=valid["token"]), 200, "GET /users/{id} (valid token)")
must(*call("GET", f"/users/{valid['id']}", token=revoked["token"]), 401, "GET /users/{id} (revoked token)")
must(*call("GET", f"/users/{valid['id']}", token=forged["token"]), 401, "GET /users/{id} (forged token)")
print(f"auth_setup: {N} login users, {N} token users")
