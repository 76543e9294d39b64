"""Prometheus metrics end to end: GET /metrics with an admin token on the
main port and without one on PROMETHEUS_PORT (which serves nothing else);
counters that move by exactly what known requests should add (a 404, a
429, a cache hit); `promtool check metrics` on a scrape after mixed
traffic; a real Prometheus scraping PROMETHEUS_PORT; no id, email or token
in any label; the PostgreSQL and pool gauges read at scrape time; the
listener's PROMETHEUS_PORT=0 and PROMETHEUS_HOST; the Redis outage counters;
and docs/operations.md's table against the rendered families, both ways."""
import os
import re
import shutil
import socket
import subprocess
import threading
import time
import uuid

import pytest
import requests

from datahelp import (add_project, admin_of, pg_update, query_ok, redis_client, rset, start_instance, tx_ok,
                      user)
from identity import b64url, bearer, login_resp
from servers import ROOT, TEST_JWT_SECRET, Coredb, free_port, run_cli, scratch_dir
from conftest import base_env

REDIS_DB = 6
PROM_MEDIA = "text/plain; version=0.0.4"
SAMPLE_RE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$')
LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse(text):
    """{(name, frozenset of (label, value))): value} of every sample line."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = SAMPLE_RE.match(line)
        assert m, f"not a sample line: {line!r}"
        labels = frozenset(LABEL_RE.findall(m.group(3) or ""))
        out[(m.group(1), labels)] = float(m.group(4))
    return out


def value(samples, name, **labels):
    """The sample's value, 0 when the series does not exist yet."""
    want = frozenset((k, str(v)) for k, v in labels.items())
    return samples.get((name, want), 0.0)


def total(samples, name, **labels):
    """Sum of every series of name whose labels include labels."""
    want = {(k, str(v)) for k, v in labels.items()}
    return sum(v for (n, ls), v in samples.items() if n == name and want <= ls)


@pytest.fixture(scope="module")
def minst(pg, redis_server):
    backups = os.path.join(scratch_dir(), f"backups-{uuid.uuid4().hex[:8]}")
    os.makedirs(backups)
    server = start_instance(pg, redis_server, REDIS_DB, PROMETHEUS_PORT=str(free_port()), BACKUP_DIR=backups)
    server.prom_port = int(server.env["PROMETHEUS_PORT"])
    yield server
    server.stop_clean()


@pytest.fixture(scope="module")
def madmin(minst):
    return admin_of(minst)


def scrape_public(inst):
    resp = requests.get(f"http://127.0.0.1:{inst.prom_port}/metrics", timeout=30)
    assert resp.status_code == 200, resp.text[:500]
    assert resp.headers["Content-Type"].startswith(PROM_MEDIA), resp.headers
    return resp.text


def scrape(inst):
    return parse(scrape_public(inst))


# ---- access ----

def test_main_port_requires_an_admin_token(minst, madmin):
    nobody = minst.get("/metrics")
    assert nobody.status_code == 401 and nobody.json()["error"]["code"] == "UNAUTHORIZED"
    plain = user(minst)
    refused = minst.get("/metrics", headers=plain.headers)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "FORBIDDEN"
    # a token signed with another key, and one whose payload was altered
    head = b64url({"alg": "HS256", "typ": "JWT"})
    forged = f"{head}.{b64url({'sub': madmin.id, 'role': 'admin', 'exp': 4102444800})}.{b64url(b'x' * 32)}"
    assert minst.get("/metrics", headers=bearer(forged)).status_code == 401
    parts = madmin.token.split(".")
    tampered = ".".join([parts[0], b64url({"sub": plain.id, "role": "admin", "exp": 4102444800}), parts[2]])
    assert minst.get("/metrics", headers=bearer(tampered)).status_code == 401
    ok = minst.get("/metrics", headers=madmin.headers)
    assert ok.status_code == 200, ok.text[:300]
    assert ok.headers["Content-Type"].startswith(PROM_MEDIA)
    assert "# TYPE coredb_http_requests_total counter" in ok.text
    # the refusals above are counted as what they were
    s = parse(ok.text)
    assert value(s, "coredb_http_requests_total", method="GET", route="/metrics", status=401) >= 3
    assert value(s, "coredb_http_requests_total", method="GET", route="/metrics", status=403) >= 1


def test_prometheus_port_serves_only_metrics(minst):
    base = f"http://127.0.0.1:{minst.prom_port}"
    text = scrape_public(minst)
    assert "coredb_build_info{" in text
    for path in ("/", "/health", "/api/v1/users", "/metrics/x", "/METRICS"):
        resp = requests.get(base + path, timeout=10)
        assert resp.status_code == 404, (path, resp.status_code, resp.text[:200])
        assert resp.json()["error"]["code"] == "NOT_FOUND"
    assert requests.post(base + "/metrics", json={"a": 1}, timeout=10).status_code == 405
    head = requests.head(base + "/metrics", timeout=10)
    assert head.status_code == 200 and head.text == ""
    # hostile requests get their 4xx, never a crash
    assert requests.get(base + "/metrics?" + "x" * 5000, timeout=10).status_code == 200
    big = requests.post(base + "/metrics", data=b"{" * (2 * 1024 * 1024),
                        headers={"Content-Type": "application/json"}, timeout=30)
    assert big.status_code in (405, 413), big.status_code
    with socket.create_connection(("127.0.0.1", minst.prom_port), timeout=5) as s:
        s.sendall(b"GARBAGE\r\n\r\n")
        assert s.recv(64).startswith(b"HTTP/1.1 4")
    scrape_public(minst)  # still serving


def test_metrics_listener_is_bound_to_loopback_by_default(minst):
    out = subprocess.run(["ss", "-ltnH", f"sport = :{minst.prom_port}"], capture_output=True, text=True)
    if out.returncode != 0:
        pytest.skip("ss not available")
    assert f"127.0.0.1:{minst.prom_port}" in out.stdout, out.stdout


# ---- counters that move ----

def test_a_404_counts_once_as_unmatched_and_never_as_its_path(minst):
    before = scrape(minst)
    path = f"/nope-{uuid.uuid4().hex}"
    assert minst.get(path).status_code == 404
    text = scrape_public(minst)
    after = parse(text)
    key = dict(method="GET", route="unmatched", status=404)
    assert value(after, "coredb_http_requests_total", **key) == value(before, "coredb_http_requests_total", **key) + 1
    assert path not in text and path[1:] not in text
    assert value(after, "coredb_http_request_duration_seconds_count", route="unmatched") >= 1
    # buckets 0.5 ms .. 10 s, cumulative, +Inf = count
    les = [dict(ls)["le"] for (n, ls) in after
           if n == "coredb_http_request_duration_seconds_bucket" and ("route", "unmatched") in ls]
    assert sorted(les, key=lambda x: float(x)) == ["0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05",
                                                   "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "+Inf"]
    counts = [value(after, "coredb_http_request_duration_seconds_bucket", route="unmatched", le=le)
              for le in sorted(les, key=lambda x: float(x))]
    assert counts == sorted(counts)
    assert counts[-1] == value(after, "coredb_http_request_duration_seconds_count", route="unmatched")


def test_a_cache_hit_moves_hits_and_the_first_read_a_miss(minst):
    a = user(minst)
    pid = add_project(minst, a.id, title="metrics")
    body = {"table": "projects", "select": ["id", "title"], "filters": {"id": pid}}
    before = scrape(minst)
    assert query_ok(minst, a, body)["cached"] is False
    assert query_ok(minst, a, body)["cached"] is True
    after = scrape(minst)
    assert value(after, "coredb_cache_hits_total") == value(before, "coredb_cache_hits_total") + 1
    assert value(after, "coredb_cache_misses_total") == value(before, "coredb_cache_misses_total") + 1
    assert value(after, "coredb_cache_stores_total") == value(before, "coredb_cache_stores_total") + 1
    route = dict(method="POST", route="/api/v1/data/query", status=200)
    assert (value(after, "coredb_http_requests_total", **route)
            == value(before, "coredb_http_requests_total", **route) + 2)
    # a write through the data API invalidates (bumps the table's generation)
    # and its Redis operation is applied through the outbox
    out = tx_ok(minst, a, [pg_update("projects", {"id": pid}, {"title": "changed"}), rset("k", "v")])
    assert out["results"][1]["status"] == "success", out
    written = scrape(minst)
    assert value(written, "coredb_cache_invalidations_total") >= value(after, "coredb_cache_invalidations_total") + 1
    assert value(written, "coredb_outbox_applied_total") >= value(after, "coredb_outbox_applied_total") + 1
    assert value(written, "coredb_outbox_backlog") == 0
    assert query_ok(minst, a, body)["cached"] is False


def test_login_outcomes_and_sessions(minst, madmin):
    a = user(minst)  # one session of its own, far from SESSION_MAX_PER_USER
    before = scrape(minst)
    assert login_resp(minst, a.email, "wrong-password-123").status_code == 401
    assert login_resp(minst, a.email, a.password).status_code == 200
    after = scrape(minst)
    assert value(after, "coredb_sessions_active") == value(before, "coredb_sessions_active") + 1
    for outcome in ("success", "failure"):
        assert (value(after, "coredb_session_logins_total", outcome=outcome)
                == value(before, "coredb_session_logins_total", outcome=outcome) + 1), outcome
    assert value(after, "coredb_sessions_active") >= 2


def test_refresh_reuse_and_logout_are_counted(minst):
    a = user(minst)
    before = scrape(minst)
    first = a.session["refresh_token"]
    fresh = minst.post("/api/v1/auth/refresh", json={"refresh_token": first})
    assert fresh.status_code == 200, fresh.text
    reused = minst.post("/api/v1/auth/refresh", json={"refresh_token": first})
    assert reused.status_code == 401 and reused.json()["error"]["code"] == "TOKEN_REVOKED"
    b = user(minst)
    assert minst.post("/api/v1/auth/logout", headers=b.headers).status_code == 200
    after = scrape(minst)
    for name in ("coredb_session_refreshes_total", "coredb_session_reuse_detections_total"):
        assert value(after, name) == value(before, name) + 1, name
    # the reused session and the logged-out one
    assert value(after, "coredb_session_revocations_total") == value(before, "coredb_session_revocations_total") + 2


def test_backups_and_migrations_are_counted(minst, madmin):
    s = scrape(minst)
    # the migrations applied at start: one run, successful
    assert value(s, "coredb_migration_runs_total") >= 1
    assert value(s, "coredb_migration_failures_total") == 0
    assert value(s, "coredb_migration_last_success_timestamp_seconds") > time.time() - 3600
    assert value(s, "coredb_backup_runs_total") == 0
    assert value(s, "coredb_backup_last_success_timestamp_seconds") == 0
    created = minst.post("/api/v1/admin/backups", headers=madmin.headers, timeout=120)
    assert created.status_code == 201, created.text
    after = scrape(minst)
    assert value(after, "coredb_backup_runs_total") == 1
    assert value(after, "coredb_backup_failures_total") == 0
    assert value(after, "coredb_backup_duration_seconds_count") == 1
    assert value(after, "coredb_backup_duration_seconds_sum") > 0
    assert abs(value(after, "coredb_backup_last_success_timestamp_seconds") - time.time()) < 120


def test_an_http_migration_run_counts_once_however_many_files(pg):
    db = pg.create_database()
    d = os.path.join(scratch_dir(), f"mig-metrics-{db}")
    shutil.copytree(os.path.join(ROOT, "migrations"), d)
    rc = run_cli(["migrate", "up", "--json"], {"DATABASE_URL": pg.url(db), "JWT_SECRET": TEST_JWT_SECRET,
                                               "MIGRATIONS_DIR": d})
    assert rc.returncode == 0, rc.stderr
    for i in (1, 2, 3):
        with open(os.path.join(d, f"29990202_00{i}_m{i}.sql"), "w") as f:
            f.write(f"-- migrate:up\nCREATE TABLE public.metrics_m{i} (id int);\n"
                    f"-- migrate:down\nDROP TABLE public.metrics_m{i};\n")
    inst = start_instance(pg, db=db, MIGRATIONS_DIR=d, MIGRATE_ON_START="false", PROMETHEUS_PORT=str(free_port()))
    inst.prom_port = int(inst.env["PROMETHEUS_PORT"])
    try:
        adm = admin_of(inst)
        assert value(scrape(inst), "coredb_migration_runs_total") == 0  # the CLI's run was another process
        dry = inst.post("/api/v1/migrations/run", json={"dry_run": True}, headers=adm.headers)
        assert dry.status_code == 202, dry.text
        run = inst.post("/api/v1/migrations/run", json={}, headers=adm.headers)
        assert run.status_code in (202, 409), run.text
        if run.status_code == 409:  # the dry run still holds the lock
            time.sleep(1)
            run = inst.post("/api/v1/migrations/run", json={}, headers=adm.headers)
            assert run.status_code == 202, run.text
        run_id = run.json()["migration_id"]
        deadline = time.time() + 30
        while inst.get(f"/api/v1/migrations/runs/{run_id}", headers=adm.headers).json()["status"] == "running":
            assert time.time() < deadline
            time.sleep(0.1)
        s = scrape(inst)
        assert value(s, "coredb_migration_runs_total") == 1  # three files, one run; the dry run not counted
        assert value(s, "coredb_migration_failures_total") == 0
        assert value(s, "coredb_migration_duration_seconds_count") == 1
        assert abs(value(s, "coredb_migration_last_success_timestamp_seconds") - time.time()) < 60
    finally:
        inst.stop_clean()


def test_redis_down_shows_up_zero_and_command_errors(pg, private_redis):
    inst = start_instance(pg, private_redis, 0, PROMETHEUS_PORT=str(free_port()))
    inst.prom_port = int(inst.env["PROMETHEUS_PORT"])
    try:
        a = user(inst)
        pid = add_project(inst, a.id, title="redis")
        body = {"table": "projects", "select": ["id"], "filters": {"id": pid}}
        query_ok(inst, a, body)
        before = scrape(inst)
        assert value(before, "coredb_redis_up") == 1
        private_redis.stop()
        query_ok(inst, a, body)  # still answered, from PostgreSQL
        after = scrape(inst)
        assert value(after, "coredb_redis_up") == 0
        assert value(after, "coredb_redis_command_errors_total") > value(before, "coredb_redis_command_errors_total")
    finally:
        inst.stop_clean()


def test_a_429_counts_as_a_refusal_of_its_role(pg, redis_server):
    inst = start_instance(pg, redis_server, REDIS_DB, PROMETHEUS_PORT=str(free_port()),
                          RATE_LIMIT_ANON="1")
    inst.prom_port = int(inst.env["PROMETHEUS_PORT"])
    try:
        before = scrape(inst)
        statuses = [login_resp(inst, "nobody@example.com", "x" * 12).status_code for _ in range(4)]
        assert 429 in statuses, statuses
        refused = statuses.count(429)
        after = scrape(inst)
        assert (value(after, "coredb_ratelimit_refusals_total", role="anonymous")
                == value(before, "coredb_ratelimit_refusals_total", role="anonymous") + refused)
        key = dict(method="POST", route="/api/v1/auth/login", status=429)
        assert value(after, "coredb_http_requests_total", **key) == value(before, "coredb_http_requests_total", **key) + refused
    finally:
        inst.stop_clean()


def test_client_versions_are_bounded_and_never_carry_emails_or_tokens(minst, madmin):
    for i in range(105):
        assert minst.get("/health/live", headers={"X-Client-Version": f"sdk-{i}.0"}).status_code == 200
    secret_like = [madmin.email, madmin.token, madmin.id, madmin.id.replace("-", ""), "x" * 40, "a b", 'q"uote']
    for v in secret_like:
        minst.get("/health/live", headers={"X-Client-Version": v})
    s = scrape(minst)
    versions = {dict(ls)["client_version"] for (n, ls) in s if n == "coredb_client_requests_total"}
    assert len(versions) <= 101 and "other" in versions, len(versions)
    assert not any(v in versions for v in secret_like)
    assert total(s, "coredb_client_requests_total") >= 105 + len(secret_like)


def test_no_label_holds_an_id_email_or_token(minst, madmin):
    a = user(minst)
    minst.get(f"/users/{a.id}", headers=a.headers)
    minst.get(f"/users/{uuid.uuid4()}", headers=madmin.headers)
    minst.get(f"/users/{a.email}", headers=a.headers)
    minst.get(f"/api/v1/data/transactions/{uuid.uuid4()}", headers=a.headers)
    text = scrape_public(minst)
    for secret in (a.id, a.email, madmin.id, madmin.email, a.token, madmin.token, a.session["refresh_token"]):
        assert secret not in text
    uuid_re = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
    for (name, labels) in parse(text):
        for k, v in labels:
            assert not uuid_re.search(v) and "@" not in v and not v.startswith("eyJ"), (name, k, v)
    routes = {dict(ls).get("route") for (n, ls) in parse(text) if n == "coredb_http_requests_total"}
    assert "/users/{user_id}" in routes, sorted(routes)


# ---- state read at scrape time ----

def test_scrape_time_gauges(minst):
    s = scrape(minst)
    assert value(s, "coredb_postgres_up") == 1
    assert value(s, "coredb_postgres_server_version_num") >= 150000
    assert value(s, "coredb_postgres_database_size_bytes") > 1_000_000
    assert total(s, "coredb_postgres_connections") >= 1
    assert value(s, "coredb_redis_up") == 1
    assert value(s, "coredb_pool_connections", state="idle") + value(s, "coredb_pool_connections", state="active") >= 1
    # the blocking pool: DB_POOL_MAX 5 minus the loops' share (2 loops x DB_LOOP_CONNECTIONS 1)
    assert value(s, "coredb_pool_connections_max") == 3
    assert value(s, "coredb_pool_acquire_wait_seconds_count") >= 1
    assert value(s, "coredb_build_info", version="1.0.0", commit=dict(
        next(ls for (n, ls) in s if n == "coredb_build_info"))["commit"]) == 1
    assert value(s, "process_resident_memory_bytes") > 1_000_000
    assert value(s, "process_open_fds") > 3
    assert 0 < value(s, "process_start_time_seconds") <= time.time()
    assert value(s, "process_cpu_seconds_total") > 0
    assert value(s, "coredb_http_requests_in_flight") >= 1  # the scrape itself
    assert "coredb_outbox_backlog" in {n for (n, _) in s}
    # the jobs thread ran at least once (first run 5 s after start)
    deadline = time.time() + 15
    while total(s, "coredb_job_runs_total") == 0 and time.time() < deadline:
        time.sleep(1)
        s = scrape(minst)
    assert total(s, "coredb_job_runs_total") >= 1
    assert max(v for (n, ls), v in s.items() if n == "coredb_job_last_success_timestamp_seconds") > 0


def test_pool_exhaustion_is_seen(start_coredb):
    port = free_port()
    inst = start_coredb(DB_POOL_MIN=1, DB_POOL_MAX=1, DB_POOL_ACQUIRE_TIMEOUT=500, PROMETHEUS_PORT=port)
    inst.prom_port = port
    before = scrape(inst)
    holder = threading.Thread(target=lambda: inst.post("/test/sleep", json={"seconds": 4}))
    holder.start()
    try:
        time.sleep(0.5)  # let it take the only connection
        assert inst.post("/test/sleep", json={"seconds": 0}).status_code == 503
        during = scrape(inst)
    finally:
        holder.join()
    assert value(during, "coredb_pool_connections", state="active") == 1
    assert value(during, "coredb_pool_connections", state="idle") == 0
    # the 503 (and the scrape's own wait for a connection)
    assert value(during, "coredb_pool_acquire_timeouts_total") >= value(before, "coredb_pool_acquire_timeouts_total") + 1
    assert total(during, "coredb_pool_acquire_wait_seconds_bucket", le="0.25") < \
        value(during, "coredb_pool_acquire_wait_seconds_count")  # at least one wait of 0.5 s
    assert value(during, "coredb_postgres_up") == 1  # busy is not down
    assert value(during, "coredb_http_requests_total", method="POST", route="/test/sleep", status=503) == 1
    after = scrape(inst)
    assert value(after, "coredb_postgres_database_size_bytes") > 0


def test_postgres_down_is_up_zero_not_an_error(private_pg, redis_server):
    name = private_pg.create_database()
    port = free_port()
    inst = Coredb(base_env(private_pg, name, None, PROMETHEUS_PORT=str(port), DB_ACQUIRE_TIMEOUT_MS="500"))
    inst.prom_port = port
    try:
        assert value(scrape(inst), "coredb_postgres_up") == 1
        private_pg.stop()
        started = time.time()
        s = scrape(inst)
        assert value(s, "coredb_postgres_up") == 0
        assert time.time() - started < 10
        assert "coredb_postgres_database_size_bytes" not in {n for (n, _) in s}
    finally:
        inst.stop_clean()


# ---- tools ----

def test_promtool_accepts_a_scrape_after_mixed_traffic(minst, madmin):
    a = user(minst)
    minst.get(f"/nope/{uuid.uuid4().hex}")
    minst.get(f"/users/{a.id}", headers=a.headers)
    minst.post("/api/v1/data/query", data=b"{not json", headers=dict(a.headers, **{"Content-Type": "application/json"}))
    minst.request("PATCH", "/health")
    login_resp(minst, a.email, "wrong-password-123")
    text = minst.get("/metrics", headers=madmin.headers).text
    promtool = shutil.which("promtool")
    assert promtool, "promtool is installed by scripts/install-deps.sh (Debian's prometheus)"
    out = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip() == "" and out.stderr.strip() == "", out.stdout + out.stderr  # no lint remarks


def test_a_real_prometheus_scrapes_the_metrics_port(minst):
    binary = shutil.which("prometheus")
    assert binary, "prometheus is installed by scripts/install-deps.sh"
    minst.get(f"/nope/{uuid.uuid4().hex}")
    work = os.path.join(scratch_dir(), f"prom-{uuid.uuid4().hex[:8]}")
    os.makedirs(work)
    port = free_port()
    with open(os.path.join(work, "prometheus.yml"), "w") as f:
        f.write(f"""global:
  scrape_interval: 1s
  scrape_timeout: 1s
scrape_configs:
  - job_name: coredb
    static_configs:
      - targets: ['127.0.0.1:{minst.prom_port}']
""")
    log = open(os.path.join(work, "log"), "wb")
    proc = subprocess.Popen([binary, f"--config.file={work}/prometheus.yml", f"--storage.tsdb.path={work}/data",
                             f"--web.listen-address=127.0.0.1:{port}"], stdout=log, stderr=subprocess.STDOUT)
    api = f"http://127.0.0.1:{port}/api/v1/query"
    try:
        up = requests_total = None
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                r = requests.get(api, params={"query": 'up{job="coredb"}'}, timeout=2).json()
                t = requests.get(api, params={"query": "sum(coredb_http_requests_total)"}, timeout=2).json()
                if r["data"]["result"] and t["data"]["result"]:
                    up = float(r["data"]["result"][0]["value"][1])
                    requests_total = float(t["data"]["result"][0]["value"][1])
                    if up == 1 and requests_total > 0:
                        break
            except (requests.RequestException, ValueError, KeyError):
                pass
            time.sleep(0.5)
        assert up == 1, open(os.path.join(work, "log")).read()[-3000:]
        assert requests_total and requests_total > 0
        targets = requests.get(f"http://127.0.0.1:{port}/api/v1/targets", timeout=5).json()
        health = [t["health"] for t in targets["data"]["activeTargets"]]
        assert health == ["up"], targets
        # the background jobs keep their own label through a real scrape: a
        # label named `job` would be renamed `exported_job` and every series
        # would carry job="coredb" (one line on the dashboard's jobs panel)
        series_api = f"http://127.0.0.1:{port}/api/v1/series"
        names, series = set(), []
        deadline = time.time() + 30
        while time.time() < deadline:
            series = requests.get(series_api, params={"match[]": "coredb_job_runs_total"}, timeout=5).json()["data"]
            names = {m.get("job_name") for m in series}
            if len(names) >= 2 and None not in names:
                break
            time.sleep(0.5)
        assert series, "Prometheus stored no coredb_job_runs_total series"
        assert None not in names and len(names) >= 2, series
        assert {"flush_outbox", "reap_sessions"} <= names, names
        for m in series:
            assert m["job"] == "coredb" and "exported_job" not in m, m
        by = requests.get(api, params={"query": "count by (job_name) (coredb_job_runs_total)"}, timeout=5).json()
        assert {r["metric"]["job_name"] for r in by["data"]["result"]} == names, by
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
        shutil.rmtree(work, ignore_errors=True)


def test_metrics_port_taken_exits_2(pg):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen(1)
        taken = holder.getsockname()[1]
        name = pg.create_database()
        inst = Coredb(base_env(pg, name, None, PROMETHEUS_PORT=str(taken)), wait=False)
        assert inst.proc.wait(60) == 2, inst.log()[-2000:]
        assert "PROMETHEUS_PORT" in inst.log()


# ---- the metrics listener's configuration ----

def listening_ports(pid):
    """{(address, port)} of the TCP sockets the process listens on, read from
    /proc (its socket inodes matched against /proc/net/tcp, state 0A)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    out = set()
    with open(f"/proc/{pid}/net/tcp") as f:
        next(f)
        for line in f:
            cols = line.split()
            if cols[3] != "0A" or cols[9] not in inodes:
                continue
            addr, port = cols[1].split(":")
            # /proc/net/tcp holds the IPv4 address as a little-endian hex word
            octets = [str(int(addr[i:i + 2], 16)) for i in (6, 4, 2, 0)]
            out.add((".".join(octets), int(port, 16)))
    return out


def refused(host, port):
    try:
        with socket.create_connection((host, port), timeout=3):
            return False
    except ConnectionRefusedError:
        return True


def test_the_listener_helper_sees_both_ports(minst):
    # the control for the two tests below: with PROMETHEUS_PORT set there are two
    assert listening_ports(minst.proc.pid) == {("127.0.0.1", minst.port), ("127.0.0.1", minst.prom_port)}


def test_prometheus_port_0_opens_no_listener(pg):
    inst = start_instance(pg, PROMETHEUS_PORT="0", PROMETHEUS_HOST="127.0.0.1")
    try:
        # the API port is the only one: not 9090 (the default), not an ephemeral one
        assert listening_ports(inst.proc.pid) == {("127.0.0.1", inst.port)}
        # /metrics on the main port still serves an admin, and only an admin
        admin = admin_of(inst)
        assert inst.get("/metrics").status_code == 401
        assert inst.get("/metrics", headers=user(inst).headers).status_code == 403
        ok = inst.get("/metrics", headers=admin.headers)
        assert ok.status_code == 200 and ok.headers["Content-Type"].startswith(PROM_MEDIA)
        assert "coredb_build_info{" in ok.text
    finally:
        inst.stop_clean()


def test_prometheus_host_binds_the_address_it_names(pg):
    port = free_port()
    inst = start_instance(pg, PROMETHEUS_PORT=str(port), PROMETHEUS_HOST="127.0.0.2")
    try:
        assert listening_ports(inst.proc.pid) == {("127.0.0.1", inst.port), ("127.0.0.2", port)}
        resp = requests.get(f"http://127.0.0.2:{port}/metrics", timeout=30)
        assert resp.status_code == 200 and resp.headers["Content-Type"].startswith(PROM_MEDIA)
        assert "coredb_build_info{" in resp.text
        assert refused("127.0.0.1", port), "the metrics listener is on 127.0.0.1 too"
    finally:
        inst.stop_clean()


# ---- counters of a Redis outage ----

def test_redis_reconnects_and_outbox_retries_move_across_an_outage(pg, private_redis):
    inst = start_instance(pg, private_redis, 0, PROMETHEUS_PORT=str(free_port()))
    inst.prom_port = int(inst.env["PROMETHEUS_PORT"])
    try:
        a = user(inst)
        tx_ok(inst, a, [rset("warm", "1")])
        before = scrape(inst)
        assert value(before, "coredb_redis_up") == 1
        private_redis.stop()
        out = tx_ok(inst, a, [rset("during", "outage", ttl=600)])
        assert out["results"][0]["status"] == "pending", out
        # the outbox job (every second) tries the row and leaves it for later
        deadline = time.time() + 15
        while value(scrape(inst), "coredb_outbox_retries_total") == value(before, "coredb_outbox_retries_total"):
            assert time.time() < deadline, "no outbox retry counted while Redis was down"
            time.sleep(0.5)
        down = scrape(inst)
        assert value(down, "coredb_redis_up") == 0
        assert value(down, "coredb_redis_reconnects_total") == value(before, "coredb_redis_reconnects_total")
        private_redis.start()
        deadline = time.time() + 20
        while True:
            after = scrape(inst)
            if value(after, "coredb_outbox_backlog") == 0 and value(after, "coredb_redis_up") == 1:
                break
            assert time.time() < deadline, "Redis never came back in the metrics"
            time.sleep(0.5)
        assert value(after, "coredb_redis_reconnects_total") >= value(before, "coredb_redis_reconnects_total") + 1
        assert value(after, "coredb_outbox_retries_total") > value(before, "coredb_outbox_retries_total")
        assert value(after, "coredb_outbox_applied_total") >= value(before, "coredb_outbox_applied_total") + 1
        assert redis_client(private_redis, 0).get(f"app:user:{a.id}:during") == "outage"
    finally:
        if private_redis.proc.poll() is not None:
            private_redis.start()
        inst.stop_clean()


# ---- the documented table ----

def documented_families():
    """Family names in docs/operations.md's metrics table (first column)."""
    lines = open(os.path.join(ROOT, "docs", "operations.md")).read().splitlines()
    start = lines.index("| family | type | labels | what |")
    names = set()
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        first = line.split("|")[1]
        found = re.findall(r"`([a-z_:][a-z0-9_:]*)`", first)
        assert found, line
        names.update(found)
    return names


# families that exist only with read replicas configured (DATABASE_READ_URLS)
NEEDS_REPLICAS = {
    "coredb_replica_up", "coredb_replica_lag_seconds", "coredb_replica_lag_bytes",
    "coredb_db_reads_total", "coredb_read_your_writes_primary_total", "coredb_replica_read_failures_total",
}


def test_every_rendered_family_is_documented_and_back(pg, minst, madmin):
    text = minst.get("/metrics", headers=madmin.headers).text
    rendered = set(re.findall(r"^# TYPE (\S+) ", text, re.M))
    assert len(rendered) > 50, rendered
    assert not rendered & NEEDS_REPLICAS, rendered & NEEDS_REPLICAS
    # the replica families: a "replica" that is the primary itself is taken
    # out of rotation, but its families are rendered all the same
    inst = start_instance(pg, DATABASE_READ_URLS=pg.url(minst.db), PROMETHEUS_PORT=str(free_port()))
    inst.prom_port = int(inst.env["PROMETHEUS_PORT"])
    try:
        with_replicas = set(re.findall(r"^# TYPE (\S+) ", scrape_public(inst), re.M))
    finally:
        inst.stop_clean()
    assert NEEDS_REPLICAS <= with_replicas, NEEDS_REPLICAS - with_replicas
    rendered |= with_replicas
    documented = documented_families()
    assert rendered - documented == set(), "rendered by /metrics, missing from docs/operations.md"
    assert documented - rendered == set(), "in docs/operations.md, not rendered by /metrics"
