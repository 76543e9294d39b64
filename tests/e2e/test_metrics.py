"""Prometheus metrics end to end: GET /metrics with an admin token on the
main port and without one on PROMETHEUS_PORT (which serves nothing else);
counters that move by exactly what known requests should add (a 404, a
429, a cache hit); `promtool check metrics` on a scrape after mixed
traffic; a real Prometheus scraping PROMETHEUS_PORT; no id, email or token
in any label; the PostgreSQL and pool gauges read at scrape time."""
import os
import re
import shutil
import socket
import subprocess
import time
import uuid

import pytest
import requests

from datahelp import add_project, admin_of, query_ok, start_instance, user
from identity import b64url, bearer, login_resp
from servers import Coredb, free_port, scratch_dir
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
    server = start_instance(pg, redis_server, REDIS_DB, PROMETHEUS_PORT=str(free_port()))
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


def test_login_outcomes_and_sessions(minst, madmin):
    before = scrape(minst)
    assert login_resp(minst, madmin.email, "wrong-password-123").status_code == 401
    assert login_resp(minst, madmin.email, madmin.password).status_code == 200
    after = scrape(minst)
    for outcome in ("success", "failure"):
        assert (value(after, "coredb_session_logins_total", outcome=outcome)
                == value(before, "coredb_session_logins_total", outcome=outcome) + 1), outcome
    assert value(after, "coredb_sessions_active") >= 2


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
    secret_like = [madmin.email, madmin.token, "x" * 40, "a b", 'q"uote']
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
    assert value(s, "coredb_pool_connections_max") == 5
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
