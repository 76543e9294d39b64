"""Shared parts of the soak and connection-bound tests: the servers (reused
from tests/e2e/servers.py), samples of a process's resources from /proc,
least-squares slopes, and raw loopback sockets with a raised descriptor limit.

Fixtures live here, not in a conftest.py, because tests/e2e's helpers import
`conftest` by name (pytest.ini puts tests/e2e on the path); the test files
import the fixtures from this module."""
import os
import resource
import socket
import time

import pytest

from servers import PgServer, RedisServer

# The soak measures the default configuration: what tests/e2e/conftest.py's
# base_env sets for the e2e suite (1 loop connection each, in its pool of 5)
# is set back to the default here (src/core/config.c).
DEFAULTS = {"DB_LOOP_CONNECTIONS": "2"}


@pytest.fixture(scope="module")
def pg():
    server = PgServer("pg-soak")
    yield server
    server.destroy()


@pytest.fixture(scope="module")
def redis_server():
    server = RedisServer()
    yield server
    server.destroy()


# ---- the coredb process, from /proc ----

def proc_status(pid):
    """VmRSS (KiB) and Threads of a process."""
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "Threads"):
                out[key] = int(value.split()[0])
    return out


def fd_count(pid):
    return len(os.listdir(f"/proc/{pid}/fd"))


def nofile_limit(pid):
    """The soft open-file limit of a process (what coredb raised it to)."""
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                return int(line.split()[3])
    raise AssertionError("no 'Max open files' line")


def sample(pid, reads=5, gap=0.05):
    """RSS (the lowest of a few reads gap apart), threads and descriptors.
    Each login hashes its password with argon2id, whose working memory
    (PASSWORD_HASH_MEMLIMIT_KIB, 8 MiB in the tests) is mapped, touched
    and unmapped within milliseconds; one read can land inside such a
    window and show +8 MiB. A leak raises the floor, so the floor is what
    we sample."""
    rss = None
    for i in range(reads):
        if i:
            time.sleep(gap)
        v = proc_status(pid)["VmRSS"]
        rss = v if rss is None else min(rss, v)
    st = proc_status(pid)
    return {"rss_kib": rss, "threads": st["Threads"], "fds": fd_count(pid)}


def sanitized(pid):
    """True when the process runs with AddressSanitizer (make san): its
    quarantine keeps freed memory resident, so RSS says nothing about leaks
    there (ASan's own leak check at exit does)."""
    with open(f"/proc/{pid}/maps") as f:
        return any("libasan" in line for line in f)


def wait_fds_at_most(pid, bound, timeout):
    """Waits until the process holds at most bound descriptors; returns the last count."""
    deadline = time.time() + timeout
    n = fd_count(pid)
    while n > bound and time.time() < deadline:
        time.sleep(0.2)
        n = fd_count(pid)
    return n


# ---- figures ----

def slope(xs, ys):
    """Least-squares slope of ys over xs (0 with fewer than two points)."""
    n = len(xs)
    if n < 2:
        return 0.0
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    if sxx == 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sxx


def percentile(values, p):
    vals = sorted(values)
    if not vals:
        return 0.0
    return vals[min(len(vals) - 1, int(round(p / 100.0 * (len(vals) - 1))))]


# ---- raw sockets ----

def raise_nofile(want):
    """Raises this process's soft descriptor limit to want (capped by the hard
    limit); returns the limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = want if hard == resource.RLIM_INFINITY else min(want, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def source_address(i, net=3):
    """The i-th loopback source address 127.0.<net>.<1..250>: the whole of
    127/8 is loopback on Linux, and spreading clients over addresses keeps
    each under HTTP_MAX_CONNECTIONS_PER_IP without turning the cap off."""
    return f"127.0.{net + i // 250}.{i % 250 + 1}"


def read_response(sock, timeout=10.0):
    """Reads one HTTP/1.1 response with a Content-Length body; returns
    (status, headers dict, body) or None when the peer closed first."""
    sock.settimeout(timeout)
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            return None
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    length = int(headers.get("content-length", "0"))
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return status, headers, body[:length]


def get_once(port, path="/health/live", source=None, timeout=5.0):
    """One request on a fresh connection: (status, seconds)."""
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout,
                                  source_address=(source, 0) if source else None) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: soak\r\nConnection: close\r\n\r\n".encode())
        resp = read_response(s, timeout)
    return (resp[0] if resp else None), time.monotonic() - t0
