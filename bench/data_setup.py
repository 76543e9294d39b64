#!/usr/bin/env python3
"""bench/data_setup.py BASE_URL N OUT_DIR BODY_FILE - the callers behind data.sh.

Logs in the N users data0..data{N-1} (inserted by data_seed.sql, all with
the password of data0) once each and writes their access tokens as wrk's Lua
table OUT_DIR/data_tokens.lua ({id=..., token=...}). Checks that the query
of BODY_FILE answers one page of the caller's own projects with the total
(the seed gives each user the same number of projects). Standard library only.
"""
import concurrent.futures as cf
import json
import sys

import bench_http

BASE, N, OUT, BODY = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
PASSWORD = "bench-data-password"


def call(method, path, body=None, token=None):
    return bench_http.call(BASE, method, path, body, token)


def login(i):
    status, body = call("POST", "/api/v1/auth/login",
                        {"email": f"data{i}@bench.example.com", "password": PASSWORD})
    if status != 200:
        sys.exit(f"data_setup: login of data{i} answered {status}: {body}")
    return {"id": body["user"]["user_id"], "token": body["access_token"]}


with cf.ThreadPoolExecutor(8) as ex:
    users = list(ex.map(login, range(N)))
with open(f"{OUT}/data_tokens.lua", "w") as f:
    # json.dumps of these ASCII strings is a valid Lua string literal
    f.write("return {\n" + "".join(
        f"{{id={json.dumps(u['id'])},token={json.dumps(u['token'])}}},\n" for u in users) + "}\n")

with open(BODY) as f:
    query = json.load(f)
status, page = call("POST", "/api/v1/data/query", query, users[0]["token"])
if status != 200:
    sys.exit(f"data_setup: the query answered {status}: {page}")
limit = query["pagination"]["limit"]
if len(page["data"]) != limit or page["pagination"]["total"] <= limit or \
        any(set(r) != set(query["select"]) for r in page["data"]):
    sys.exit(f"data_setup: unexpected page: {json.dumps(page)[:300]}")
print(f"data_setup: {N} users logged in; a page has {len(page['data'])} rows of "
      f"{page['pagination']['total']}, {len(json.dumps(page))} bytes")
