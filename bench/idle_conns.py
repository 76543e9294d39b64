#!/usr/bin/env python3
"""bench/idle_conns.py PORT PID N - engine.sh: coredb's memory with N idle
keep-alive connections. Opens N connections to 127.0.0.1:PORT from loopback
source addresses 127.0.2.x (250 each, under HTTP_MAX_CONNECTIONS_PER_IP's
default), makes one GET /health/live on each and keeps it open; then reads
VmRSS of process PID, checks that every connection is still held (a second
request on each is answered) and closes them. Bounded: loopback only, a
10 s timeout per socket operation, 250 requests in flight at most.
Prints "rss_before_kib rss_held_kib opened held open_seconds".
Needs an open-file limit above N (engine.sh raises it)."""
import socket
import sys
import time

PORT, PID, N = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
REQ = b"GET /health/live HTTP/1.1\r\nHost: bench\r\n\r\n"
BATCH = 250


def rss_kib():
    with open(f"/proc/{PID}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def answered(s):
    """True when one whole 200 answer that keeps the connection arrived."""
    buf = b""
    try:
        while b"\r\n\r\n" not in buf:
            chunk = s.recv(4096)
            if not chunk:
                return False
            buf += chunk
        head, body = buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        hdrs = {k.strip().lower(): v.strip() for k, v in (h.split(":", 1) for h in lines[1:] if ":" in h)}
        need = int(hdrs.get("content-length", "0"))
        while len(body) < need:
            chunk = s.recv(4096)
            if not chunk:
                return False
            body += chunk
        return lines[0].split()[1] == "200" and hdrs.get("connection", "").lower() != "close"
    except (OSError, ValueError, IndexError):
        return False


def in_batches(socks, send):
    ok = 0
    for start in range(0, len(socks), BATCH):
        part = socks[start:start + BATCH]
        for s in part:
            if send:
                s.sendall(REQ)
        ok += sum(answered(s) for s in part)
    return ok


before = rss_kib()
socks = []
t0 = time.monotonic()
try:
    for i in range(N):
        s = socket.socket()
        s.settimeout(10)
        s.bind((f"127.0.2.{i // BATCH + 1}", 0))
        s.connect(("127.0.0.1", PORT))
        s.sendall(REQ)
        socks.append(s)
        if len(socks) % BATCH == 0:  # read a batch's answers before the next: a short backlog
            if in_batches(socks[-BATCH:], False) != BATCH:
                sys.exit(f"idle_conns: a connection of the batch ending at {len(socks)} was not served")
    rest = len(socks) % BATCH
    if rest and in_batches(socks[-rest:], False) != rest:
        sys.exit("idle_conns: a connection of the last batch was not served")
    open_secs = time.monotonic() - t0
    time.sleep(1)
    held_rss = rss_kib()
    held = in_batches(socks, True)
finally:
    for s in socks:
        s.close()
print(before, held_rss, len(socks), held, f"{open_secs:.1f}")
