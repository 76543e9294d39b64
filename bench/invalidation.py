#!/usr/bin/env python3
"""bench/invalidation.py - how long a write on one coredb instance takes to
reach another instance's first-level cache (issue 8: "measure and document
the invalidation delay between two instances, p50/p99"), and whether a read
on the other instance right after the write's answer was ever stale.

Two instances A and B on one throw-away PostgreSQL and Redis (the end-to-end
suite's servers, tests/e2e/servers.py). B first serves one page from its
first-level cache; then, WRITES times: A commits an update of that page's
row (POST /api/v1/data/transaction) and, as soon as A has answered, B is
asked for the page. Two figures:

- the delay from A publishing the invalidation to B applying it, from B's
  histogram coredb_cache_invalidation_delay_seconds (buckets about 6 % wide;
  the publisher's and B's clocks are the same host's here);
- stale reads: B's answers that did not contain A's write. A non-zero count
  is the window the delay leaves (docs/architecture.md, "The request engine").

Run: COREDB_BIN=build/coredb python3 bench/invalidation.py  (WRITES, default 1000)
Appends a section to bench/RESULTS.md and prints it. Loopback only; every loop
is bounded by WRITES and by a 10 s client timeout per request.
"""
import os
import platform
import re
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "e2e"))

from datahelp import add_project, admin_of, pg_update, query_ok, start_instance, tx_ok, user  # noqa: E402
from identity import Account  # noqa: E402
from servers import PgServer, RedisServer  # noqa: E402

WRITES = int(os.environ.get("WRITES", "1000"))


def histogram(text, name):
    """[(upper bound in s, cumulative count)] of a Prometheus histogram."""
    rows = re.findall(r'^' + name + r'_bucket\{le="([^"]+)"\} (\S+)$', text, re.M)
    return [(float("inf") if le == "+Inf" else float(le), float(n)) for le, n in rows]


def quantile(buckets, q):
    total = buckets[-1][1]
    for le, n in buckets:
        if n >= q * total:
            return le
    return float("inf")


def machine():
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // (1 << 30)
    distro = "Debian"
    try:
        distro = re.search(r'PRETTY_NAME="([^"]+)"', open("/etc/os-release").read()).group(1)
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {mem} GiB, Linux {platform.release()}, {distro}"


def main():
    pg, rds = PgServer("bench-inval"), RedisServer()
    a = b = None
    try:
        a = start_instance(pg, rds, 1, HTTP_THREADS="2", RATE_LIMIT_USER="0")
        b = start_instance(pg, rds, 1, db=a.db, HTTP_THREADS="2", RATE_LIMIT_USER="0")
        b.admin_email = a.admin_email
        b_admin = admin_of(b)
        owner = user(a)
        on_b = Account(b, owner.user, owner.password, owner.session)
        pid = add_project(a, owner.id, title="w0")
        body = {"table": "projects", "select": ["id", "title"], "filters": {"id": pid}}
        for _ in range(3):
            query_ok(b, on_b, body)
        stale = 0
        started = time.monotonic()
        for i in range(1, WRITES + 1):
            tx_ok(a, owner, [pg_update("projects", {"id": pid}, {"title": f"w{i}"})])
            if query_ok(b, on_b, body)["data"][0]["title"] != f"w{i}":
                stale += 1
            query_ok(b, on_b, body)   # the miss stored the page in Redis: B reads it back ...
            query_ok(b, on_b, body)   # ... and answers this one from its first-level cache
        secs = time.monotonic() - started
        text = b.get("/metrics", headers=b_admin.headers).text
        buckets = histogram(text, "coredb_cache_invalidation_delay_seconds")
        l1 = re.search(r'^coredb_cache_l1_hits_total\{kind="answer"\} (\S+)$', text, re.M)
        count = int(buckets[-1][1]) if buckets else 0
        p50, p99 = (quantile(buckets, 0.5), quantile(buckets, 0.99)) if count else (float("nan"),) * 2
        commit = subprocess.run(["git", "-C", HERE, "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
        section = (
            f"\n### Invalidation delay between two instances (issue 8) — {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
            f" — {machine()}\n"
            f"bench/invalidation.py at {commit}: two coredb instances (HTTP_THREADS=2) on one PostgreSQL 15 and one Redis, "
            f"loopback; {WRITES} writes on A (one-row update through /api/v1/data/transaction), each followed at once by "
            f"B reading the page it had in its first-level cache, then twice more (refilling it); {secs:.1f} s. "
            f"Load average at the end: {os.getloadavg()[0]:.2f}.\n\n"
            "| figure | value |\n|---|---|\n"
            f"| invalidations B applied (its histogram's count: A's writes) | {count} |\n"
            f"| delay A publish → B applied, p50 (bucket upper bound) | {p50 * 1e6:.0f} µs |\n"
            f"| delay A publish → B applied, p99 (bucket upper bound) | {p99 * 1e6:.0f} µs |\n"
            f"| B's reads right after A's answer that missed A's write | {stale} of {WRITES} |\n"
            f"| B's answers from its first-level cache | {float(l1.group(1)) if l1 else 0:.0f} |\n")
        print(section)
        with open(os.path.join(HERE, "RESULTS.md"), "a") as f:
            f.write(section)
        return 0 if count >= WRITES else 1
    finally:
        for inst in (b, a):
            if inst:
                inst.stop_clean()
        rds.destroy()
        pg.destroy()


if __name__ == "__main__":
    sys.exit(main())
