"""HTTP behaviour every route shares: envelopes, request ids, negotiation, limits."""
import re
import socket
import threading
import time

import requests

from servers import free_port

ENVELOPE_KEYS = {"code", "message", "details", "timestamp", "request_id"}


def assert_envelope(resp, status, code):
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == ENVELOPE_KEYS
    assert body["error"]["code"] == code
    assert body["error"]["request_id"] == resp.headers["X-Request-ID"]
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", body["error"]["timestamp"])
    return body["error"]


def test_unknown_route_is_404_envelope(coredb_shared):
    assert_envelope(coredb_shared.get("/nope/nothing"), 404, "NOT_FOUND")


def test_wrong_method_is_405_with_allow(coredb_shared):
    resp = coredb_shared.request("DELETE", "/health")
    assert_envelope(resp, 405, "METHOD_NOT_ALLOWED")
    assert "GET" in resp.headers["Allow"]


def test_request_id_echoed_and_generated(coredb_shared):
    resp = coredb_shared.get("/health/live", headers={"X-Request-ID": "abc-123_XYZ"})
    assert resp.headers["X-Request-ID"] == "abc-123_XYZ"
    generated = coredb_shared.get("/health/live").headers["X-Request-ID"]
    assert re.match(r"^req_[0-9a-f]{24}$", generated)
    # too long or unprintable: replaced
    long_id = "x" * 129
    assert coredb_shared.get("/health/live", headers={"X-Request-ID": long_id}).headers["X-Request-ID"] != long_id
    err = assert_envelope(coredb_shared.get("/missing", headers={"X-Request-ID": "trace-7"}), 404, "NOT_FOUND")
    assert err["request_id"] == "trace-7"


def test_accept_negotiation(coredb_shared):
    v1 = "application/vnd.visiobook.v1+json"
    resp = coredb_shared.get("/health/live", headers={"Accept": v1})
    assert resp.status_code == 200 and resp.headers["Content-Type"] == v1
    resp = coredb_shared.get("/health/live", headers={"Accept": "application/json"})
    assert resp.headers["Content-Type"] == "application/json"
    assert coredb_shared.get("/health/live", headers={"Accept": "*/*"}).status_code == 200
    assert_envelope(coredb_shared.get("/health/live", headers={"Accept": "application/vnd.visiobook.v2+json"}),
                    406, "NOT_ACCEPTABLE")
    assert_envelope(coredb_shared.get("/health/live", headers={"Accept": "text/html"}), 406, "NOT_ACCEPTABLE")


def test_invalid_json_is_400(coredb_shared):
    headers = {"Content-Type": "application/json"}
    for bad in [b"{", b"{\"a\": }", b"\xff\xfe", b"[1,2", b"{\"a\":1,\"a\":2}", b"nul"]:
        err = assert_envelope(coredb_shared.post("/test/echo", data=bad, headers=headers), 400, "INVALID_JSON")
        assert "line" in err["details"]


def test_valid_json_roundtrip(coredb_shared):
    resp = coredb_shared.post("/test/echo", json={"a": [1, "é", None]})
    assert resp.status_code == 200
    assert resp.json() == {"body": {"a": [1, "é", None]}}


def test_non_json_body_is_415(coredb_shared):
    resp = coredb_shared.post("/test/echo", data="a=b", headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert_envelope(resp, 415, "UNSUPPORTED_MEDIA_TYPE")


def test_body_over_1mib_is_413(coredb_shared):
    body = b'{"a":"' + b"x" * (1024 * 1024) + b'"}'
    resp = coredb_shared.post("/test/echo", data=body, headers={"Content-Type": "application/json"})
    assert_envelope(resp, 413, "PAYLOAD_TOO_LARGE")
    # exactly at the limit is accepted
    body = b'{"a":"' + b"x" * (1024 * 1024 - 8) + b'"}'
    assert len(body) == 1024 * 1024 - 0
    assert coredb_shared.post("/test/echo", data=body, headers={"Content-Type": "application/json"}).status_code == 200


def test_huge_body_is_refused_not_buffered(coredb_shared):
    # Beyond the hard limit evhttp refuses before reading it all (docs/http.md).
    body = b"x" * (5 * 1024 * 1024)
    try:
        resp = coredb_shared.post("/test/echo", data=body, headers={"Content-Type": "application/json"})
        assert resp.status_code == 413
    except requests.ConnectionError:
        pass  # connection closed while we were still sending: also a refusal
    assert coredb_shared.get("/health/live").status_code == 200


def test_garbage_request_line_does_not_hurt(coredb_shared):
    with socket.create_connection(("127.0.0.1", coredb_shared.port), timeout=5) as s:
        s.sendall(b"\x00\x01GARBAGE / HTTP/9.9\r\n\r\n")
        s.recv(1024)
    assert coredb_shared.get("/health/live").status_code == 200


def test_keep_alive_reuses_connection(coredb_shared):
    with requests.Session() as s:
        for _ in range(20):
            assert s.get(coredb_shared.base + "/health/live", timeout=5).status_code == 200


def read_answers(s, n, deadline_s=20):
    """n HTTP/1.1 answers read off s: [(status line, X-Request-ID, body length)]."""
    buf, answers, end = b"", [], time.time() + deadline_s
    while len(answers) < n and time.time() < end:
        while b"\r\n\r\n" in buf:
            head, rest = buf.split(b"\r\n\r\n", 1)
            length = int(re.search(rb"\r\ncontent-length: (\d+)", head, re.I).group(1))
            if len(rest) < length:
                break
            rid = re.search(rb"\r\nx-request-id: (\S+)", head, re.I).group(1).decode()
            answers.append((head.split(b"\r\n")[0].decode(), rid, length))
            buf = rest[length:]
        if len(answers) < n:
            chunk = s.recv(65536)
            assert chunk, f"closed after {len(answers)} answers"
            buf += chunk
    return answers


def test_pipelined_requests_are_answered_in_order(coredb_shared):
    """Answers are written at once when the socket takes them (conn.c push_output), and through the
    socket's write event when it does not: a 200 KB answer to a client with a 4 KB receive window
    goes out in pieces, and the requests pipelined behind it wait for it and are answered in order."""
    get = ("GET {} HTTP/1.1\r\nHost: x\r\nX-Request-ID: {}\r\n\r\n").format
    with socket.create_connection(("127.0.0.1", coredb_shared.port), timeout=10) as s:
        s.sendall("".join(get("/health/live", f"pipe-{i}") for i in range(3)).encode())
        assert [(st, rid) for st, rid, _ in read_answers(s, 3)] == \
            [("HTTP/1.1 200 OK", f"pipe-{i}") for i in range(3)]
    size = len(requests.get(coredb_shared.base + "/api/v1/openapi.json", timeout=10).content)
    assert size > 100000, size
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.settimeout(10)
    with s:
        s.connect(("127.0.0.1", coredb_shared.port))
        s.sendall((get("/api/v1/openapi.json", "big-1") + get("/health/live", "small-2") +
                   get("/api/v1/openapi.json", "big-3") + get("/health/live", "small-4")).encode())
        time.sleep(0.3)     # coredb wrote what the socket took; the rest waits for the write event
        got = read_answers(s, 4)
    assert [(st, rid) for st, rid, _ in got] == [("HTTP/1.1 200 OK", r) for r in
                                                 ("big-1", "small-2", "big-3", "small-4")], got
    assert got[0][2] == got[2][2] == size, (got, size)
    assert coredb_shared.get("/health/live").status_code == 200


def rss_bytes(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(next(l for l in f if l.startswith("VmRSS:")).split()[1]) * 1024


def test_pipelined_flood_behind_a_slow_request_is_buffered_within_bounds(coredb_shared):
    """While a request is handled, the bytes pipelined behind it are read up to conn.c's INPUT_MAX
    (the head and body limits + 16 KiB, about 1.1 MiB), then reading pauses and the rest waits in
    the kernel; once the answer is out, reading resumes. 12 MB of requests behind a 1.5 s one:
    coredb's RSS grows by far less than 12 MB meanwhile, and every request is answered, in order."""
    pid = coredb_shared.proc.pid
    n, pad = 12000, "x" * 900
    flood = "".join(f"GET /health/live HTTP/1.1\r\nHost: x\r\nX-Pad: {pad}\r\nX-Request-ID: f{i:05d}\r\n\r\n"
                    for i in range(n)).encode()
    assert len(flood) > 10 * 1024 * 1024
    slow = (b"POST /test/sleep HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"X-Request-ID: slow\r\nContent-Length: 16\r\n\r\n{\"seconds\": 1.5}")
    rss_before = rss_bytes(pid)
    with socket.create_connection(("127.0.0.1", coredb_shared.port), timeout=30) as s:
        sender = threading.Thread(target=s.sendall, args=(slow + flood,), daemon=True)
        sender.start()
        time.sleep(1.0)            # the sleep is running; the flood went as far as coredb and the kernel take
        grown = rss_bytes(pid) - rss_before
        data, seen, marker, end = bytearray(), 0, b"HTTP/1.1 ", time.time() + 30
        while seen < n + 1 and time.time() < end:
            chunk = s.recv(1 << 20)
            assert chunk, f"closed after {seen} answers"
            start = max(0, len(data) - len(marker) + 1)
            data += chunk
            seen += data.count(marker, start)
        sender.join(10)
    assert not sender.is_alive()
    assert grown < 4 * 1024 * 1024, grown
    statuses = re.findall(rb"HTTP/1.1 (\d+)", data)
    ids = [m.decode() for m in re.findall(rb"(?i)\r\nx-request-id: (\S+)", data)]
    assert statuses == [b"200"] * (n + 1)
    assert ids == ["slow"] + [f"f{i:05d}" for i in range(n)]


def loop_connections(prom_port):
    text = requests.get(f"http://127.0.0.1:{prom_port}/metrics", timeout=10).text
    return {int(m.group(1)): int(float(m.group(2)))
            for m in re.finditer(r'^coredb_http_loop_connections\{loop="(\d+)"\} (\S+)$', text, re.M)}


def test_loop_connections_gauge_counts_open_connections(start_coredb):
    """coredb_http_loop_connections{loop}: every open client connection on
    the loop that accepted it (how the kernel split them), and none once
    they are closed, whether the client or coredb closed them."""
    prom = free_port()
    srv = start_coredb(PROMETHEUS_PORT=prom)
    assert loop_connections(prom) == {0: 0, 1: 0}
    socks = [socket.create_connection(("127.0.0.1", srv.port), timeout=5) for _ in range(40)]
    try:
        for s in socks:
            s.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\n\r\n")
        for s in socks:
            s.settimeout(10)
            assert s.recv(4096).startswith(b"HTTP/1.1 200")
        assert sum(loop_connections(prom).values()) == 40, loop_connections(prom)
        for s in socks[:10]:   # coredb closes these after answering
            s.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while True:
                chunk = s.recv(4096)
                if not chunk:
                    break
                data += chunk
            assert data.startswith(b"HTTP/1.1 200")
        deadline = time.time() + 10
        while sum(loop_connections(prom).values()) != 30 and time.time() < deadline:
            time.sleep(0.05)
        assert sum(loop_connections(prom).values()) == 30, loop_connections(prom)
    finally:
        for s in socks:
            s.close()
    deadline = time.time() + 10
    while sum(loop_connections(prom).values()) and time.time() < deadline:
        time.sleep(0.05)
    assert loop_connections(prom) == {0: 0, 1: 0}, "closed connections are uncounted"


def test_access_log_line_per_request(coredb_shared):
    coredb_shared.get("/health/live", headers={"X-Request-ID": "log-check-42"})
    import json
    for _ in range(50):
        lines = [json.loads(l) for l in coredb_shared.log().splitlines() if "log-check-42" in l]
        if lines:
            break
        time.sleep(0.05)
    assert lines, "no access log line"
    line = lines[0]
    assert line["event"] == "http.request" and line["status"] == 200
    assert line["method"] == "GET" and line["path"] == "/health/live"
    assert isinstance(line["duration_ms"], (int, float))
    # microseconds: at most three decimals, never a binary-float tail such as 0.56399999999999995
    for _ in range(20):
        coredb_shared.get("/health/live")
    durations = re.findall(r'"duration_ms":([^,}]+)', coredb_shared.log())
    assert len(durations) >= 20
    for duration in durations:
        assert re.fullmatch(r"\d+(\.\d{1,3})?", duration), duration
