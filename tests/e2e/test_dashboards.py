"""docs/prometheus/alerts.yml and docs/grafana/coredb.json: the rules pass
`promtool check rules`, fire (and stay quiet) on synthetic series under
`promtool test rules`, every dashboard query compiles with promtool, and
every metric the two name is in a scrape of a running coredb's /metrics,
with the labels the queries group by (and none named `job` or `instance`,
which Prometheus keeps for the target and would rename `exported_*`)."""
import json
import os
import re
import shutil
import subprocess
import time

import pytest
import yaml

from datahelp import admin_of, start_instance
from identity import bearer
from servers import ROOT

ALERTS = os.path.join(ROOT, "docs", "prometheus", "alerts.yml")
DASHBOARD = os.path.join(ROOT, "docs", "grafana", "coredb.json")
REQUIRED_ALERTS = {"CoredbDown", "CoredbDatabaseDown", "CoredbPoolSaturated", "CoredbHighErrorRatio",
                   "CoredbOutboxBacklog", "CoredbBackupTooOld"}


def promtool(*args):
    exe = shutil.which("promtool")
    assert exe, "promtool is missing: scripts/install-deps.sh installs it (Debian package prometheus)"
    proc = subprocess.run([exe, *args], capture_output=True, text=True, timeout=120)
    return proc.returncode, proc.stdout + proc.stderr


def load_rules():
    with open(ALERTS, encoding="utf-8") as fh:
        return yaml.safe_load(fh)


def rules_of(doc):
    return [r for g in doc["groups"] for r in g["rules"]]


def dashboard_panels():
    with open(DASHBOARD, encoding="utf-8") as fh:
        dash = json.load(fh)
    return dash, [p for p in dash["panels"] if p["type"] != "row"]


def dashboard_exprs():
    _, panels = dashboard_panels()
    return [t["expr"] for p in panels for t in p["targets"]]


def concrete(expr):
    """A dashboard query with Grafana's variables replaced, for promtool."""
    return expr.replace("$__rate_interval", "5m").replace("$instance", ".*")


def test_promtool_check_rules():
    code, out = promtool("check", "rules", ALERTS)
    assert code == 0, out
    assert "SUCCESS" in out, out


def test_promtool_refuses_a_broken_rule(tmp_path):
    """The check above can fail: a rule with a broken expression is refused."""
    doc = load_rules()
    rules_of(doc)[0]["expr"] = "sum by (instance (coredb_postgres_up"
    bad = tmp_path / "bad.yml"
    bad.write_text(yaml.safe_dump(doc))
    code, out = promtool("check", "rules", str(bad))
    assert code != 0, out


def test_rules_are_complete_and_explained():
    rules = rules_of(load_rules())
    names = {r["alert"] for r in rules}
    assert REQUIRED_ALERTS <= names, names
    for r in rules:
        assert r["labels"]["severity"] in ("critical", "warning"), r
        for key in ("summary", "description", "runbook"):
            assert len(r["annotations"].get(key, "")) > 20, (r["alert"], key)
        assert r.get("for"), r["alert"]


# One case per alert: series that must make it fire by eval_time, and series
# that must not. promtool compares annotations too, so the rules are tested
# with their annotations removed (their templates are checked by check rules).
CASES = [
    ("CoredbDown", "1m", [('up{job="coredb",instance="a"}', "1 1 0 0 0 0 0 0"),
                          ('up{job="coredb",instance="b"}', "1 1 1 1 1 1 1 1")], "6m", ["a"]),
    ("CoredbDown", "1m", [('up{job="coredb",instance="a"}', "1 1 1 1 0 0 0 0")], "4m", []),
    ("CoredbDatabaseDown", "1m", [('coredb_postgres_up{job="coredb",instance="a"}', "1 0 0 0 0"),
                                  ('coredb_postgres_up{job="coredb",instance="b"}', "1 1 1 1 1")], "4m", ["a"]),
    ("CoredbPoolSaturated", "1m", [('coredb_pool_waiting{job="coredb",instance="a"}', "0 3x10"),
                                   ('coredb_pool_acquire_timeouts_total{job="coredb",instance="a"}', "0x10")],
     "8m", ["a"]),
    ("CoredbPoolSaturated", "1m", [('coredb_pool_waiting{job="coredb",instance="a"}', "0x10"),
                                   ('coredb_pool_acquire_timeouts_total{job="coredb",instance="a"}', "0+2x10")],
     "9m", ["a"]),
    ("CoredbPoolSaturated", "1m", [('coredb_pool_waiting{job="coredb",instance="a"}', "0 3 0 3 0 0 0 0 0 0"),
                                   ('coredb_pool_acquire_timeouts_total{job="coredb",instance="a"}', "0x10")],
     "9m", []),
    ("CoredbHighErrorRatio", "1m",
     [('coredb_http_requests_total{job="coredb",instance="a",method="GET",route="/health",status="200"}', "0+100x30"),
      ('coredb_http_requests_total{job="coredb",instance="a",method="POST",route="/api/v1/data/query",status="503"}',
       "0+10x30")], "20m", ["a"]),
    ("CoredbHighErrorRatio", "1m",
     [('coredb_http_requests_total{job="coredb",instance="a",method="GET",route="/health",status="200"}', "0+100x30"),
      ('coredb_http_requests_total{job="coredb",instance="a",method="GET",route="/health",status="404"}', "0+50x30"),
      ('coredb_http_requests_total{job="coredb",instance="a",method="POST",route="/api/v1/data/query",status="500"}',
       "0+1x30")], "20m", []),
    ("CoredbOutboxBacklog", "1m", [('coredb_outbox_backlog{job="coredb",instance="a"}', "0 500x20")], "15m", ["a"]),
    ("CoredbOutboxBacklog", "1m", [('coredb_outbox_backlog{job="coredb",instance="a"}', "0 50x20")], "15m", []),
    # time() in promtool starts at 0: a last success at 0 is 28 h old at 28 h.
    # Per job: one instance taking the backups keeps the job quiet, and a
    # restart (the gauge back to 0) does not make the last backup forgotten.
    ("CoredbBackupTooOld", "5m",
     [('coredb_backup_last_success_timestamp_seconds{job="coredb",instance="a"}', "0x400"),
      ('coredb_backup_last_success_timestamp_seconds{job="coredb",instance="b"}', "0x400")], "28h", ["coredb"]),
    ("CoredbBackupTooOld", "5m",
     [('coredb_backup_last_success_timestamp_seconds{job="coredb",instance="a"}', "0x400"),
      ('coredb_backup_last_success_timestamp_seconds{job="coredb",instance="b"}', "0+300x400")], "28h", []),
    ("CoredbBackupTooOld", "5m",
     [('coredb_backup_last_success_timestamp_seconds{job="coredb",instance="a"}', "3600x120 0x300")], "20h", []),
    ("CoredbBackupTooOld", "5m",
     [('coredb_backup_last_success_timestamp_seconds{job="coredb",instance="a"}', "3600x120 0x300")], "28h",
     ["coredb"]),
    ("CoredbRedisDown", "1m", [('coredb_redis_up{job="coredb",instance="a"}', "1 0x10")], "7m", ["a"]),
    ("CoredbRedisMasterChanged", "1m",
     [('coredb_redis_master_changes_total{job="coredb",instance="a"}', "0 0 1x10"),
      ('coredb_redis_master_changes_total{job="coredb",instance="b"}', "0x12")], "5m", ["a"]),
    ("CoredbRedisMasterChanged", "1m",
     [('coredb_redis_master_changes_total{job="coredb",instance="a"}', "0 0 1x40")], "30m", []),
]


def test_alerts_fire_on_synthetic_series(tmp_path):
    doc = load_rules()
    severity = {}
    for r in rules_of(doc):
        severity[r["alert"]] = r["labels"]["severity"]
        r.pop("annotations", None)
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(doc))
    tests = []
    for alert, interval, series, at, fired in CASES:
        exp = []
        for who in fired:
            if alert == "CoredbBackupTooOld":
                labels = {"job": who}           # aggregated by job
            else:
                labels = {"instance": who}
                if alert in ("CoredbDown", "CoredbDatabaseDown", "CoredbRedisDown"):
                    labels["job"] = "coredb"    # kept: these rules do not aggregate
            labels["severity"] = severity[alert]
            exp.append({"exp_labels": labels})
        tests.append({"interval": interval,
                      "input_series": [{"series": s, "values": v} for s, v in series],
                      "alert_rule_test": [{"eval_time": at, "alertname": alert, "exp_alerts": exp}]})
    assert {c[0] for c in CASES} >= REQUIRED_ALERTS
    (tmp_path / "test.yml").write_text(yaml.safe_dump({"rule_files": ["rules.yml"],
                                                       "evaluation_interval": "1m", "tests": tests}))
    code, out = promtool("test", "rules", str(tmp_path / "test.yml"))
    assert code == 0, out
    assert "SUCCESS" in out, out


def test_dashboard_is_an_importable_grafana_model():
    dash, panels = dashboard_panels()
    assert dash["title"] == "coredb" and dash["uid"]
    assert dash["__inputs"][0]["name"] == "DS_PROMETHEUS"
    assert dash["__inputs"][0]["pluginId"] == "prometheus"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for p in panels:
        assert p["datasource"] == {"type": "prometheus", "uid": "${DS_PROMETHEUS}"}, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["datasource"]["uid"] == "${DS_PROMETHEUS}"
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0
    variables = {v["name"] for v in dash["templating"]["list"]}
    assert {"DS_PROMETHEUS", "instance"} <= variables
    exprs = " ".join(dashboard_exprs())
    # what the issue asks for: request rate and latency by route, errors,
    # pool, cache hit ratio, sessions, outbox
    for needle in ("sum by (route) (rate(coredb_http_requests_total",
                   "sum by (route, le) (rate(coredb_http_request_duration_seconds_bucket",
                   'status=~"5.."', "coredb_pool_connections", "coredb_pool_waiting",
                   "coredb_cache_hits_total", "coredb_cache_misses_total", "coredb_sessions_active",
                   "coredb_outbox_backlog"):
        assert needle in exprs, needle


def test_dashboard_queries_compile(tmp_path):
    """Each query, its Grafana variables replaced, as a recording rule: promtool parses them all."""
    rules = [{"record": f"coredb:dashboard_query_{i}", "expr": concrete(e)}
             for i, e in enumerate(dashboard_exprs())]
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    code, out = promtool("check", "rules", str(path))
    assert code == 0, out
    assert f"{len(rules)} rules found" in out, out


def metric_names(exprs):
    """coredb_* names used in expressions, histogram series mapped to their family."""
    names = set()
    for e in exprs:
        names |= set(re.findall(r"\bcoredb_[a-z0-9_]+", e))
    return names


def test_every_metric_used_is_exposed(pg, redis_server):
    """Every coredb_* name and grouping label the dashboard and the alerts use
    is in a real scrape of /metrics."""
    with open(ALERTS, encoding="utf-8") as fh:
        rule_exprs = [r["expr"] for r in rules_of(yaml.safe_load(fh))]
    used = metric_names(dashboard_exprs() + rule_exprs)
    assert len(used) >= 15, used
    inst = start_instance(pg, redis_server, 9)
    try:
        admin = admin_of(inst)
        # series that exist once something happened: a client version, a job run
        assert inst.get("/health/live", headers={"X-Client-Version": "dashboard-1.0"}).status_code == 200
        deadline = time.time() + 20
        while True:
            resp = inst.get("/metrics", headers=bearer(admin.token))
            if "coredb_job_runs_total{" in resp.text or time.time() > deadline:
                break
            time.sleep(0.5)
        assert resp.status_code == 200, f"/metrics answered {resp.status_code}: {resp.text[:300]}"
        assert resp.headers["Content-Type"].startswith("text/plain")
        exposed = set()
        for line in resp.text.splitlines():
            m = re.match(r"# TYPE (\S+) (\w+)", line)
            if m:
                exposed.add(m.group(1))
                if m.group(2) == "histogram":
                    exposed |= {m.group(1) + s for s in ("_bucket", "_sum", "_count")}
            elif line and not line.startswith("#"):
                exposed.add(re.match(r"[a-zA-Z_:][a-zA-Z0-9_:]*", line).group(0))
        missing = sorted(used - exposed)
        assert not missing, f"named by the dashboard or the alerts but not exposed: {missing}"
        # labels per series name, from the sample lines
        labels_of = {}
        for line in resp.text.splitlines():
            m = re.match(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\{(.*)\} ", line)
            if m and not line.startswith("#"):
                labels_of.setdefault(m.group(1), set()).update(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', m.group(2)))
        clash = sorted(n for n, ls in labels_of.items() if ls & {"job", "instance"})
        assert not clash, f"series with a label Prometheus reserves for the target (renamed exported_*): {clash}"
        for expr in dashboard_exprs() + rule_exprs:
            names = re.findall(r"\bcoredb_[a-z0-9_]+", expr)
            have = set().union(*(labels_of.get(n, set()) for n in names)) | {"job", "instance", "le"}
            for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
                for label in filter(None, (g.strip() for g in group.split(","))):
                    assert label in have, f"{expr}: groups by {label!r}, which no series of {names} carries"
        # the jobs panel draws one line per background job, not one per scrape job
        job_exprs = [e for e in dashboard_exprs() if "coredb_job_" in e]
        assert job_exprs and all("by (job_name)" in e for e in job_exprs), job_exprs
    finally:
        inst.stop_clean()
