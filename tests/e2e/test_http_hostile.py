"""Hostile HTTP clients against the real binary (issue 19, items 2-4):
slow clients cut at absolute deadlines, a cap per client address, request
smuggling shapes refused with 400, and no answer that is not our JSON
envelope. Raw sockets, because a well-behaved client library cannot send
these requests."""
import json
import os
import socket
import threading
import time

import pytest
import requests

HEADER_TIMEOUT = 2
BODY_TIMEOUT = 2


@pytest.fixture(scope="module")
def strict(pg, redis_server):
    """An instance with short head/body deadlines and a small per-address cap."""
    from conftest import base_env
    from servers import Coredb
    name = pg.create_database()
    inst = Coredb(base_env(pg, name, redis_server, HTTP_HEADER_TIMEOUT=HEADER_TIMEOUT,
                           HTTP_BODY_TIMEOUT=BODY_TIMEOUT, HTTP_MAX_CONNECTIONS_PER_IP=8))
    yield inst
    inst.stop_clean()


def connect(inst, source="127.0.0.1", timeout=10):
    s = socket.socket()
    s.settimeout(timeout)
    s.bind((source, 0))
    s.connect(("127.0.0.1", inst.port))
    return s


def read_until_closed(s, limit=10):
    """Everything the server sends until it closes (or limit seconds pass)."""
    data = b""
    deadline = time.time() + limit
    while time.time() < deadline:
        try:
            chunk = s.recv(65536)
        except ConnectionResetError:
            break
        except socket.timeout:
            break
        if not chunk:
            break
        data += chunk
    return data


def parse_responses(data):
    """Splits raw bytes into (status, headers, body) tuples (Content-Length framed)."""
    out = []
    while data:
        head, sep, rest = data.partition(b"\r\n\r\n")
        assert sep, f"incomplete head: {data[:200]!r}"
        lines = head.decode("latin-1").split("\r\n")
        assert lines[0].startswith("HTTP/1.1 "), lines[0]
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        n = int(headers.get("content-length", "0"))
        out.append((status, headers, rest[:n]))
        data = rest[n:]
    return out


def assert_json_error(resp, status, code=None):
    st, headers, body = resp
    assert st == status, (st, body)
    assert headers["content-type"].startswith("application/json")
    assert headers.get("x-request-id")
    err = json.loads(body)["error"]
    assert err["request_id"] == headers["x-request-id"]
    if code:
        assert err["code"] == code, err
    return err


def exchange(inst, raw, limit=10):
    with connect(inst) as s:
        s.sendall(raw)
        return parse_responses(read_until_closed(s, limit))


# ---- 2. slow clients ----

def test_trickled_head_is_cut_at_the_header_deadline(strict):
    with connect(strict) as s:
        start = time.time()
        s.sendall(b"GET /health/live HTTP/1.1\r\n")
        closed_at = None
        # one byte every 0.3 s: a per-read timeout would never fire
        for ch in b"Host: x\r\nX-Slow: " + b"a" * 40:
            try:
                s.sendall(bytes([ch]))
            except (BrokenPipeError, ConnectionResetError):
                closed_at = time.time()
                break
            s.settimeout(0.3)
            try:
                if s.recv(1024) == b"":
                    closed_at = time.time()
                    break
            except socket.timeout:
                pass
            except ConnectionResetError:
                closed_at = time.time()
                break
        assert closed_at is not None, "connection still open after 15 s of trickling"
        assert HEADER_TIMEOUT - 0.5 <= closed_at - start <= HEADER_TIMEOUT + 2


def test_silent_connection_is_cut_at_the_header_deadline(strict):
    with connect(strict) as s:
        start = time.time()
        assert read_until_closed(s, limit=HEADER_TIMEOUT + 5) == b""
        assert time.time() - start <= HEADER_TIMEOUT + 2


def test_trickled_body_is_cut_at_the_body_deadline(strict):
    with connect(strict) as s:
        s.sendall(b"POST /test/echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 100\r\n\r\n{")
        start = time.time()
        closed = False
        for _ in range(50):
            try:
                s.sendall(b" ")
            except (BrokenPipeError, ConnectionResetError):
                closed = True
                break
            s.settimeout(0.3)
            try:
                if s.recv(1024) == b"":
                    closed = True
                    break
            except socket.timeout:
                pass
            except ConnectionResetError:
                closed = True
                break
        assert closed, "connection still open after trickling the body"
        assert time.time() - start <= BODY_TIMEOUT + 2


def test_keep_alive_connection_survives_between_requests(strict):
    # The header deadline starts at a request's first byte, not at the last answer.
    with requests.Session() as sess:
        assert sess.get(strict.base + "/health/live", timeout=5).status_code == 200
        time.sleep(HEADER_TIMEOUT + 0.5)
        r = sess.get(strict.base + "/health/live", timeout=5)
        assert r.status_code == 200


def test_held_connections_do_not_starve_other_clients(pg, redis_server):
    """Many trickling connections from many addresses; a probe keeps being served,
    and every slow connection is cut at its deadline."""
    from conftest import base_env
    from servers import Coredb
    inst = Coredb(base_env(pg, pg.create_database(), redis_server, HTTP_HEADER_TIMEOUT=4,
                           HTTP_MAX_CONNECTIONS_PER_IP=64))
    held = []
    try:
        for i in range(1000):  # 16 addresses x 62.5: under the per-address cap
            s = connect(inst, source=f"127.0.1.{i % 16 + 1}")
            s.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n")
            held.append(s)
        latencies = []
        for _ in range(50):
            t = time.time()
            assert inst.get("/health/live", timeout=5).status_code == 200
            latencies.append(time.time() - t)
        assert max(latencies) < 1.0, max(latencies)  # served, not queued behind the slow ones
        deadline = time.time() + 10
        open_left = len(held)
        for s in held:
            s.settimeout(max(0.01, deadline - time.time()))
            try:
                if s.recv(1) == b"":
                    open_left -= 1
            except ConnectionResetError:
                open_left -= 1
            except socket.timeout:
                pass
        assert open_left == 0, f"{open_left} slow connections still open"
    finally:
        for s in held:
            s.close()
        inst.stop_clean()


def test_connections_per_address_are_capped(strict):
    idle = [connect(strict) for _ in range(8)]
    try:
        for s in idle:  # let the loops accept them all
            s.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            assert parse_responses(s.recv(65536))[0][0] == 200
        with connect(strict) as extra:
            extra.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            resp = parse_responses(read_until_closed(extra, 5))
            assert len(resp) == 1
            assert_json_error(resp[0], 429, "RATE_LIMITED")
        with connect(strict, source="127.0.0.2") as other:  # another address is not affected
            other.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
            assert parse_responses(other.recv(65536))[0][0] == 200
    finally:
        for s in idle:
            s.close()
    # the places are given back when the connections close
    for _ in range(50):
        try:
            if requests.get(strict.base + "/health/live", timeout=2).status_code == 200:
                break
        except requests.RequestException:
            pass
        time.sleep(0.1)
    else:
        pytest.fail("address still over its cap after its connections closed")


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def test_out_of_descriptors_pauses_accept_instead_of_spinning(pg, redis_server):
    """More clients than descriptors: accept() fails with EMFILE while the
    backlog stays readable. The loop must pause, not spin, and serve again
    once descriptors are free."""
    from conftest import base_env
    from servers import Coredb
    inst = Coredb(base_env(pg, pg.create_database(), redis_server, HTTP_MAX_CONNECTIONS_PER_IP=0),
                  max_files=64)
    held = []
    try:
        for _ in range(100):
            s = socket.socket()
            s.settimeout(5)
            s.connect(("127.0.0.1", inst.port))  # completes in the kernel's backlog
            held.append(s)
        time.sleep(0.5)
        before = cpu_seconds(inst.proc.pid)
        time.sleep(2)
        used = cpu_seconds(inst.proc.pid) - before
        assert used < 0.5, f"{used:.2f} s of CPU in 2 s: the accept loop spins"
        assert "http.accept_paused" in inst.log()
    finally:
        for s in held:
            s.close()
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            if requests.get(inst.base + "/health/live", timeout=1).status_code == 200:
                break
        except requests.RequestException:
            time.sleep(0.1)
    else:
        pytest.fail("not serving again after the descriptors were freed")
    inst.stop_clean()


# ---- 3. request smuggling ----

SMUGGLING = {
    "two lengths, first longer": b"POST /test/echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                 b"Content-Length: 44\r\nContent-Length: 5\r\n\r\n{\"a\":1}",
    "two lengths, first shorter": b"POST /test/echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                                  b"Content-Length: 5\r\nContent-Length: 44\r\n\r\n{\"a\":1}",
    "equal lengths twice": b"POST /test/echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                           b"Content-Length: 7\r\nContent-Length: 7\r\n\r\n{\"a\":1}",
    "length list": b"POST /test/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 7, 7\r\n\r\n{\"a\":1}",
    "plus sign": b"POST /test/echo HTTP/1.1\r\nHost: x\r\nContent-Length: +7\r\n\r\n{\"a\":1}",
    "leading zeros": b"POST /test/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 0007\r\n\r\n{\"a\":1}",
    "negative": b"POST /test/echo HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
    "hex": b"POST /test/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 0x7\r\n\r\n{\"a\":1}",
    "inner space": b"POST /test/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1 7\r\n\r\n{\"a\":1}",
    "huge": b"POST /test/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999999\r\n\r\n",
    "gzip, chunked": b"POST /test/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"
                     b"7\r\n{\"a\":1}\r\n0\r\n\r\n",
    "chunked, identity": b"POST /test/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
    "xchunked": b"POST /test/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n",
    "two encodings": b"POST /test/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
                     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "length and chunked": b"POST /test/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n"
                          b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "chunked in 1.0": b"POST /test/echo HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "two hosts": b"GET /health/live HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
    "no host in 1.1": b"GET /health/live HTTP/1.1\r\nAccept: */*\r\n\r\n",
    "folded header": b"GET /health/live HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n",
    "space before colon": b"GET /health/live HTTP/1.1\r\nHost: x\r\nContent-Length : 0\r\n\r\n",
    "bad chunk size": b"POST /test/echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                      b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{\"a\":1}\r\n0\r\n\r\n",
    "chunk size overflow": b"POST /test/echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                           b"ffffffffffffffffffff\r\nx\r\n0\r\n\r\n",
}


@pytest.mark.parametrize("shape", sorted(SMUGGLING))
def test_smuggling_shape_is_400_and_closes(strict, shape):
    # A second request follows: were the framing misread, it would be answered too.
    follow = b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n"
    resp = exchange(strict, SMUGGLING[shape] + follow)
    assert len(resp) == 1, f"{shape}: {len(resp)} answers"
    assert resp[0][1].get("connection") == "close"
    assert_json_error(resp[0], 400, "VALIDATION_FAILED")


def test_canonical_framing_still_works(strict):
    raw = (b"POST /test/echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           b"Content-Length: 7\r\n\r\n{\"a\":1}"
           b"POST /test/echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           b"Transfer-Encoding: Chunked\r\n\r\n3\r\n{\"a\r\n4;ext=1\r\n\":2}\r\n0\r\nX-Trailer: 1\r\n\r\n"
           b"GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    resp = exchange(strict, raw)
    assert [r[0] for r in resp] == [200, 200, 200]
    assert json.loads(resp[0][2]) == {"body": {"a": 1}}
    assert json.loads(resp[1][2]) == {"body": {"a": 2}}
    assert resp[2][1]["connection"] == "close"


def test_http_1_0_closes_unless_keep_alive(strict):
    resp = exchange(strict, b"GET /health/live HTTP/1.0\r\n\r\n")
    assert len(resp) == 1 and resp[0][0] == 200 and resp[0][1]["connection"] == "close"
    with connect(strict) as s:
        for _ in range(2):
            s.sendall(b"GET /health/live HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            r = parse_responses(s.recv(65536))
            assert r[0][0] == 200 and r[0][1]["connection"] == "keep-alive"


# ---- 4. every answer is ours ----

def test_unknown_methods_get_the_envelope(strict):
    cases = [
        (b"FOO /nowhere HTTP/1.1\r\nHost: x\r\n\r\n", 501, "NOT_IMPLEMENTED"),
        (b"get /nowhere HTTP/1.1\r\nHost: x\r\n\r\n", 501, "NOT_IMPLEMENTED"),
        (b"TRACE / HTTP/1.1\r\nHost: x\r\n\r\n", 501, "NOT_IMPLEMENTED"),
        (b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 501, "NOT_IMPLEMENTED"),
        (b"FOO /health HTTP/1.1\r\nHost: x\r\n\r\n", 405, "METHOD_NOT_ALLOWED"),
        (b"get /health/live HTTP/1.1\r\nHost: x\r\n\r\n", 405, "METHOD_NOT_ALLOWED"),
        (b"OPTIONS /health HTTP/1.1\r\nHost: x\r\n\r\n", 405, "METHOD_NOT_ALLOWED"),
    ]
    for raw, status, code in cases:
        resp = exchange(strict, raw.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n"))
        assert len(resp) == 1, raw
        assert_json_error(resp[0], status, code)
        if status == 405:
            assert "GET" in resp[0][1]["allow"]


MALFORMED = [
    b"\x00\x01GARBAGE / HTTP/9.9\r\n\r\n",
    b"GET / HTTP/2.0\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nBad\x01Header: v\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX: v\x7f\r\n\r\n",
    b"GET /\x01 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET\r\n\r\n",
    b" / HTTP/1.1\r\n\r\n",
    b"GET  /  HTTP/1.1\r\nHost: x\r\n\r\n",
    b"G(T / HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\n: empty-name\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Many: 1\r\n" * 100 + b"\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70000 + b"\r\n\r\n",
    b"GET /" + b"a" * 70000 + b" HTTP/1.1\r\n\r\n",
    b"POST /test/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5242880\r\nContent-Type: application/json\r\n\r\n",
    b"POST /test/echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n-1\r\n\r\n",
    b"\r\n\r\n\r\n",
    b"GET /health/live HTTP/1.1\rHost: x\r\r\r",
]


@pytest.mark.parametrize("raw", MALFORMED, ids=range(len(MALFORMED)))
def test_malformed_requests_get_json_never_html(strict, raw):
    with connect(strict) as s:
        try:
            s.sendall(raw)
        except (BrokenPipeError, ConnectionResetError):
            pass
        data = read_until_closed(s, 5)
    assert b"<html" not in data.lower()
    if data:  # an answer is ours; a bare close is also acceptable for pure garbage
        resp = parse_responses(data)
        assert len(resp) == 1
        st = resp[0][0]
        assert 400 <= st < 500 or st == 501, st
        assert_json_error(resp[0], st)
    assert strict.get("/health/live").status_code == 200


def test_oversized_body_gets_413_envelope_before_it_is_sent(strict):
    with connect(strict) as s:
        s.sendall(b"POST /test/echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 5242880\r\n\r\n")
        resp = parse_responses(read_until_closed(s, 5))  # answered without sending a byte of body
    assert len(resp) == 1
    assert_json_error(resp[0], 413, "PAYLOAD_TOO_LARGE")


def test_oversized_body_while_sending_is_read_as_413(strict):
    # The client pushes 5 MiB; it must still read our answer, not a reset.
    body = b"x" * (5 * 1024 * 1024)
    r = requests.post(strict.base + "/test/echo", data=body,
                      headers={"Content-Type": "application/json"}, timeout=10)
    assert r.status_code == 413
    assert r.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"


def test_oversized_chunked_body_is_413(strict):
    chunk = b"x" * 65536
    with connect(strict) as s:
        s.sendall(b"POST /test/echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n")
        try:
            for _ in range(20):  # 1.25 MiB
                s.sendall(b"10000\r\n" + chunk + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        resp = parse_responses(read_until_closed(s, 5))
    assert len(resp) == 1
    assert_json_error(resp[0], 413, "PAYLOAD_TOO_LARGE")


def test_expect_continue_gets_100_then_the_answer(strict):
    with connect(strict) as s:
        s.sendall(b"POST /test/echo HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 7\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n")
        first = s.recv(1024)
        assert first == b"HTTP/1.1 100 Continue\r\n\r\n"
        s.sendall(b"{\"a\":1}")
        resp = parse_responses(read_until_closed(s, 5))
    assert resp[0][0] == 200 and json.loads(resp[0][2]) == {"body": {"a": 1}}


def test_client_gone_mid_request_is_logged_and_harmless(strict):
    with connect(strict) as s:
        s.sendall(b"POST /test/sleep HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Content-Length: 16\r\nX-Request-ID: gone-client-1\r\n\r\n{\"seconds\": 0.5}")
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    deadline = time.time() + 5
    while time.time() < deadline:
        lines = [json.loads(l) for l in strict.log().splitlines() if "gone-client-1" in l]
        if lines:
            break
        time.sleep(0.1)
    assert lines and lines[0].get("client_gone") is True and lines[0]["status"] == 200, lines
    assert strict.get("/health/live").status_code == 200
