"""Zero-copy answers (issue 8 item 5): a data-API cache hit's bytes go from
the loop's first-level cache (a reference-counted entry, core/kvtable.c) or
from Redis's reply (its string taken from hiredis) to the socket without a
copy, as evbuffer references released once libevent has written or dropped
them (http/request.c render, http/loop_admit.c).

The case a wrong reference count breaks: a large cached answer (about
8 MB: loopback lets the kernel take up to 4 MiB of it) sent to a client that reads slowly, so that most of it waits in
coredb's output buffer pointing at the cache's bytes, while the entry is
replaced (a write bumps the table's generation; the next hits store the
new answer under the same key). The slow client must still receive the old
answer byte for byte. `ss` proves the bytes were still in coredb (not in
the kernel's socket buffers) when the entry was replaced, and
coredb_cache_l1_hits_total{kind="answer"} tells which path served the hit:

- CACHE_L1_MB=32, HTTP_THREADS=1: the hit is served from the L1 by reference;
- CACHE_L1_MB=1, HTTP_THREADS=1: a 240 KB answer is over the L1's
  per-answer share (1 MiB / 16), so every hit is served from Redis's reply.

Also: a slow client that goes away halfway (the evbuffer freed with its
references) leaves the server serving, and under ASan (make san) nothing
leaks or is freed twice.
"""
import json
import os
import re
import socket
import subprocess
import time

import pytest

from datahelp import admin_of, pg_update, query_ok, start_instance, tx_ok, user

QUERY = "/api/v1/data/query"
ROWS = 20
# bytes of description per row: 20 rows, about 8 MB. Loopback autotunes coredb's
# socket send buffer up to tcp_wmem's maximum (4 MiB here), so a smaller answer
# would sit whole in the kernel and prove nothing.
DESC = 400_000
BODY = {"table": "projects", "select": ["id", "title", "description"],
        "order_by": [{"column": "title", "direction": "asc"}], "pagination": {"page": 1, "limit": ROWS}}



@pytest.fixture(scope="module", params=["l1", "redis"])
def setup(request, pg, own_redis):
    l1_mb = "256" if request.param == "l1" else "1"
    inst = start_instance(pg, own_redis, 1 if request.param == "l1" else 2, HTTP_THREADS="1", CACHE_L1_MB=l1_mb,
                          CACHE_TTL="300", RATE_LIMIT_USER="0")
    admin = admin_of(inst)
    acct = user(inst)
    ids = []
    for i in range(ROWS):
        desc = os.urandom(DESC // 2).hex()
        rows = inst.pg.query(inst.db, "INSERT INTO projects (user_id, title, description) VALUES (%s, %s, %s) "
                             "RETURNING id::text", (acct.user["user_id"], f"t{i:03d}", desc))
        ids.append(rows[0][0])
    yield request.param, inst, admin, acct, ids
    inst.stop_clean()


def l1_answer_hits(inst, admin):
    text = inst.get("/metrics", headers=admin.headers).text
    m = re.search(r'^coredb_cache_l1_hits_total\{kind="answer"\} (\S+)$', text, re.M)
    return float(m.group(1)) if m else 0.0


def without_time(content):
    return re.sub(rb'"execution_time_ms":[0-9.eE+-]+', b'"execution_time_ms":0', content)


def cached_answer(inst, acct):
    """Queries until the answer is a hit (miss, Redis hit, then L1 hit); its bytes."""
    for _ in range(10):
        resp = inst.post(QUERY, json=BODY, headers=acct.headers)
        assert resp.status_code == 200, resp.text[:300]
        if resp.json()["cached"] and resp.json()["data"]:
            last = resp.content
            resp = inst.post(QUERY, json=BODY, headers=acct.headers)     # one more: now from the L1 if it keeps it
            assert resp.json()["cached"], resp.text[:300]
            return last, resp.content
    pytest.fail("the answer never came from the cache")


def slow_request(inst, acct):
    """Sends the query on a socket with a small receive buffer; returns it unread."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", inst.port))
    body = json.dumps(BODY).encode()
    head = (f"POST {QUERY} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {acct.token}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    s.sendall(head + body)
    return s


def read_head(s):
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(512)
        assert chunk, buf
        buf += chunk
    head, rest = buf.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200 "), head
    length = int(re.search(rb"\r\ncontent-length: (\d+)", head, re.I).group(1))
    return length, rest


def kernel_queued(inst, s):
    """Bytes of this connection in the kernel: coredb's send queue plus our receive queue (ss)."""
    local = s.getsockname()[1]
    out = subprocess.run(["ss", "-Htn", "state", "established", f"( sport = :{inst.port} and dport = :{local} ) or "
                          f"( sport = :{local} and dport = :{inst.port} )"],
                         capture_output=True, text=True, check=True).stdout
    total = 0
    for line in out.splitlines():
        recv_q, send_q = line.split()[:2]
        total += int(recv_q) + int(send_q)
    assert out.strip(), "the connection is not in ss's list"
    return total


def test_slow_reader_gets_the_old_answer_intact_while_the_entry_is_replaced(setup):
    path, inst, admin, acct, ids = setup
    _, expected = cached_answer(inst, acct)
    assert len(expected) > ROWS * DESC
    hits0 = l1_answer_hits(inst, admin)
    s = slow_request(inst, acct)
    length, got = read_head(s)
    assert abs(length - len(expected)) < 10       # only execution_time_ms differs
    time.sleep(0.3)                 # coredb wrote what the kernel takes; the rest waits in its buffer
    waiting = length - len(got) - kernel_queued(inst, s)
    assert waiting > 1_000_000, f"only {waiting} bytes left in coredb: the test would prove nothing"
    served_from_l1 = l1_answer_hits(inst, admin) - hits0
    assert served_from_l1 == (1 if path == "l1" else 0), served_from_l1

    # replace the entry: a write bumps the generation, the next hits store the new answer under the same key
    new_desc = "replaced-" + os.urandom(DESC // 2).hex()
    tx_ok(inst, acct, [pg_update("projects", {"id": ids[0]}, {"description": new_desc})])
    _, fresh = cached_answer(inst, acct)
    assert new_desc.encode() in fresh
    # churn the cache: other answers stored (and under ASan, freed memory is poisoned, not reused)
    for limit in range(1, 4):
        query_ok(inst, acct, dict(BODY, pagination={"page": 1, "limit": limit}))

    # now read the rest, slowly at first
    for _ in range(20):
        got += s.recv(4096)
        time.sleep(0.01)
    while len(got) < length:
        chunk = s.recv(65536)
        assert chunk, f"closed after {len(got)} of {length} bytes"
        got += chunk
    s.close()
    assert len(got) == length
    assert without_time(got) == without_time(expected)
    answer = json.loads(got)
    assert answer["cached"] is True
    assert new_desc not in got.decode()
    assert len(answer["data"]) == ROWS


def test_slow_reader_going_away_halfway(setup):
    path, inst, admin, acct, ids = setup
    cached_answer(inst, acct)
    for _ in range(3):
        s = slow_request(inst, acct)
        read_head(s)
        time.sleep(0.1)
        s.close()                   # the server's buffer, and its references, are freed on the error
    _, again = cached_answer(inst, acct)
    assert json.loads(again)["cached"] is True
    assert inst.get("/health/live").status_code == 200
