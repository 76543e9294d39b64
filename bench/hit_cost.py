#!/usr/bin/env python3
"""bench/hit_cost.py PORT TOKEN BODY_FILE N - sends N identical data-API
queries on one keep-alive connection, one at a time, and checks each is a
cache hit (200, "cached": true). Used by bench/hit_cost.sh. Standard library only."""
import http.client
import json
import sys

port, token, body_file, n = int(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
body = open(body_file, "rb").read().strip()
conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
hits = 0
for _ in range(n):
    conn.request("POST", "/api/v1/data/query", body,
                 {"Authorization": "Bearer " + token, "Content-Type": "application/json"})
    resp = conn.getresponse()
    data = resp.read()
    if resp.status != 200:
        sys.exit(f"hit_cost: status {resp.status}: {data[:200]!r}")
    hits += json.loads(data)["cached"] is True
print(hits)
