"""Migrations over HTTP (issue 13, API.md "Migrations"): status, background
runs with progress, dry run, failure, the lock, rollback; admin only.

One instance on a private MIGRATIONS_DIR: the repo's migrations (applied by
the CLI before it starts) plus three files of the test's own, pending:
001 adds a column to projects, 002 is slow (pg_sleep) and creates a table,
003 creates a table and then fails. The tests run in file order on it."""
import json
import os
import shutil
import time
import uuid

import pytest

from datahelp import admin_of, assert_error, premium, query, query_ok, start_instance, user
from servers import ROOT, TEST_JWT_SECRET, run_cli, scratch_dir

REDIS_DB = 11
MIGRATIONS = os.path.join(ROOT, "migrations")
V_COL, V_SLOW, V_BROKEN = "29990101_001", "29990101_002", "29990101_003"
FILES = {
    f"{V_COL}_add_note.sql": "-- migrate:up\nALTER TABLE public.projects ADD COLUMN mig_note text;\n"
                             "-- migrate:down\nALTER TABLE public.projects DROP COLUMN mig_note;\n",
    f"{V_SLOW}_slow.sql": "-- migrate:up\nSELECT pg_sleep(3);\nCREATE TABLE public.slow_done (id int);\n"
                          "-- migrate:down\nDROP TABLE public.slow_done;\n",
    f"{V_BROKEN}_broken.sql": "-- migrate:up\nCREATE TABLE public.half_done (id int);\n"
                              "SELECT * FROM no_such_table;\n"
                              "-- migrate:down\nDROP TABLE public.half_done;\n",
}


def cli(pg, db, d, *args):
    env = {"DATABASE_URL": pg.url(db), "JWT_SECRET": TEST_JWT_SECRET, "MIGRATIONS_DIR": d}
    proc = run_cli(["migrate", *args, "--json"], env)
    return proc.returncode, json.loads(proc.stdout)


@pytest.fixture(scope="module")
def env(pg, redis_server):
    db = pg.create_database()
    d = os.path.join(scratch_dir(), f"mig-http-{db}")
    shutil.copytree(MIGRATIONS, d)
    rc, out = cli(pg, db, d, "up")
    assert rc == 0, out
    # Without the event trigger (as for a migrating role that is no superuser)
    # only the run's own catalog reload and NOTIFY can tell the data API.
    pg.query(db, "ALTER EVENT TRIGGER coredb_catalog_change DISABLE")
    for name, text in FILES.items():
        with open(os.path.join(d, name), "w") as f:
            f.write(text)
    inst = start_instance(pg, redis_server, REDIS_DB, db=db, MIGRATIONS_DIR=d, MIGRATE_ON_START="false")
    inst.mig_dir = d
    yield inst
    inst.stop_clean()


@pytest.fixture(scope="module")
def adm(env):
    return admin_of(env)


def column_exists(inst):
    return inst.pg.query(inst.db, "SELECT count(*) FROM information_schema.columns WHERE table_schema = 'public'"
                                  " AND table_name = 'projects' AND column_name = 'mig_note'")[0][0] == 1


def table_exists(inst, name):
    return inst.pg.query(inst.db, "SELECT to_regclass(%s) IS NOT NULL", (f"public.{name}",))[0][0]


def applied(inst):
    return [r[0] for r in inst.pg.query(inst.db, "SELECT version FROM coredb.schema_migrations ORDER BY 1")]


def start_run(inst, adm, body, status=202):
    resp = inst.post("/api/v1/migrations/run", json=body, headers=adm.headers)
    assert resp.status_code == status, resp.text
    return resp.json()


def wait_run(inst, adm, run_id, timeout=30):
    deadline = time.time() + timeout
    while True:
        resp = inst.get(f"/api/v1/migrations/runs/{run_id}", headers=adm.headers)
        assert resp.status_code == 200, resp.text
        run = resp.json()
        assert run["migration_id"] == run_id
        if run["status"] != "running" or time.time() > deadline:
            return run
        time.sleep(0.1)


def check_started(run, total):
    assert run["status"] == "running", run
    uuid.UUID(run["migration_id"])
    assert set(run["progress"]) == {"current_step", "total_steps", "estimated_remaining"}, run
    assert run["progress"]["total_steps"] == total, run
    assert run["progress"]["estimated_remaining"] >= total, run  # at least 1 s a file (the heuristic)


def test_status_matches_cli(env, adm):
    resp = env.get("/api/v1/migrations/status", headers=adm.headers)
    assert resp.status_code == 200, resp.text
    http = resp.json()
    rc, c = cli(env.pg, env.db, env.mig_dir, "status")
    assert rc == 0, c
    assert http["current_version"] == c["current_version"]
    assert http["pending_migrations"] == c["pending_migrations"]
    assert [p["version"] for p in http["pending_migrations"]] == [V_COL, V_SLOW, V_BROKEN]
    assert http["last_migration"] == c["last_migration"]


def test_dry_run_changes_nothing(env, adm):
    before = applied(env)
    run = start_run(env, adm, {"target_version": V_COL, "dry_run": True})
    check_started(run, 1)
    done = wait_run(env, adm, run["migration_id"])
    assert done["status"] == "completed" and done["dry_run"] is True, done
    assert done["result"]["would_succeed"] is True, done
    assert not column_exists(env)
    assert applied(env) == before
    # the whole set would fail on the broken file, and still changes nothing
    done = wait_run(env, adm, start_run(env, adm, {"dry_run": True})["migration_id"])
    assert done["status"] == "completed" and done["result"]["would_succeed"] is False, done
    assert f"{V_BROKEN}_broken.sql" in json.dumps(done["result"]), done
    assert not column_exists(env) and not table_exists(env, "slow_done") and not table_exists(env, "half_done")
    assert applied(env) == before


def test_run_adds_column_seen_by_data_api_at_once(env, adm):
    assert_error(query(env, adm, {"table": "projects", "select": ["mig_note"]}), 400)
    # a cached read of the table: the run bumps its generation
    query_ok(env, adm, {"table": "projects", "select": ["id"]})
    assert query_ok(env, adm, {"table": "projects", "select": ["id"]})["cached"] is True
    run = start_run(env, adm, {"target_version": V_COL})
    check_started(run, 1)
    done = wait_run(env, adm, run["migration_id"])
    assert done["status"] == "completed", done
    assert done["progress"]["current_step"] == 1 and done["progress"]["estimated_remaining"] == 0, done
    assert done["migration_error"] is None and done["finished_at"], done
    assert [a["version"] for a in done["result"]["applied"]] == [V_COL]
    assert column_exists(env)
    assert V_COL in applied(env)
    out = query_ok(env, adm, {"table": "projects", "select": ["mig_note"]})
    assert isinstance(out["data"], list)
    assert query_ok(env, adm, {"table": "projects", "select": ["id"]})["cached"] is False


def test_rollback_one_step(env, adm):
    resp = env.post("/api/v1/migrations/rollback", json={"steps": 1}, headers=adm.headers)
    assert resp.status_code == 200, resp.text
    assert not column_exists(env)
    assert V_COL not in applied(env)
    assert_error(query(env, adm, {"table": "projects", "select": ["mig_note"]}), 400)


def test_second_run_while_one_is_active_is_409(env, adm):
    run = start_run(env, adm, {"target_version": V_SLOW})
    check_started(run, 2)
    err = assert_error(env.post("/api/v1/migrations/run", json={}, headers=adm.headers), 409, "MIGRATION_LOCKED")
    assert "running" in err["message"]
    assert_error(env.post("/api/v1/migrations/rollback", json={"steps": 1}, headers=adm.headers), 409,
                 "MIGRATION_LOCKED")
    # progress is visible from the table while the slow file runs
    mid = env.get(f"/api/v1/migrations/runs/{run['migration_id']}", headers=adm.headers).json()
    assert mid["status"] == "running", mid
    done = wait_run(env, adm, run["migration_id"])
    assert done["status"] == "completed", done
    assert done["progress"]["current_step"] == 2, done
    assert column_exists(env) and table_exists(env, "slow_done")


def test_failed_run_names_file_and_statement_and_leaves_nothing(env, adm):
    run = start_run(env, adm, {})
    check_started(run, 1)
    done = wait_run(env, adm, run["migration_id"])
    assert done["status"] == "failed", done
    e = done["migration_error"]
    assert e["code"] == "MIGRATION_FAILED" and e["file"] == f"{V_BROKEN}_broken.sql" and e["statement"] == 2, e
    assert "no_such_table" in e["message"], e
    assert "stack" not in json.dumps(done).lower()
    assert not table_exists(env, "half_done")
    assert V_BROKEN not in applied(env)
    # the lock was released: a new run can start (and fails the same way)
    assert wait_run(env, adm, start_run(env, adm, {})["migration_id"])["status"] == "failed"


def test_unknown_and_malformed_run_ids(env, adm):
    assert_error(env.get(f"/api/v1/migrations/runs/{uuid.uuid4()}", headers=adm.headers), 404, "NOT_FOUND")
    for bad in ["not-a-uuid", "1%27%20OR%201=1", "..%2F..%2Fetc%2Fpasswd"]:
        resp = env.get(f"/api/v1/migrations/runs/{bad}", headers=adm.headers)
        assert resp.status_code in (400, 404), resp.text
        assert_error(resp, resp.status_code)


ROUTES = [("get", "/api/v1/migrations/status", None), ("post", "/api/v1/migrations/run", {"dry_run": True}),
          ("get", f"/api/v1/migrations/runs/{uuid.uuid4()}", None),
          ("post", "/api/v1/migrations/rollback", {"steps": 1})]


def test_no_token_and_non_admins_refused(env, adm):
    u, p = user(env), premium(env, adm)
    before = applied(env)
    for method, path, body in ROUTES:
        kw = {"json": body} if body is not None else {}
        assert_error(getattr(env, method)(path, **kw), 401)
        for acct in (u, p):
            assert_error(getattr(env, method)(path, headers=acct.headers, **kw), 403)
    assert applied(env) == before
    assert env.pg.query(env.db, "SELECT count(*) FROM coredb.migration_runs WHERE started_by IN (%s, %s)",
                        (u.id, p.id))[0][0] == 0


@pytest.mark.parametrize("body", [
    {"target_version": "29990101_001; DROP TABLE public.projects"},
    {"target_version": "'; DROP TABLE public.projects; --"},
    {"target_version": 29990101},
    {"target_version": "../../etc/passwd"},
    {"target_version": "20000101_999"},
    {"dry_run": "yes"},
    {"dry_run": 1},
    {"unknown": True},
    [],
])
def test_run_bad_bodies_are_400(env, adm, body):
    before = applied(env)
    assert_error(env.post("/api/v1/migrations/run", json=body, headers=adm.headers), 400)
    assert applied(env) == before and table_exists(env, "projects")


@pytest.mark.parametrize("body", [{}, {"steps": 0}, {"steps": -1}, {"steps": "1"}, {"steps": 1.5},
                                  {"steps": "1; DROP TABLE public.projects"}, {"steps": 1, "x": 1}, []])
def test_rollback_bad_bodies_are_400(env, adm, body):
    before = applied(env)
    assert_error(env.post("/api/v1/migrations/rollback", json=body, headers=adm.headers), 400)
    assert applied(env) == before


def test_malformed_json_is_400(env, adm):
    for path in ("/api/v1/migrations/run", "/api/v1/migrations/rollback"):
        resp = env.post(path, data="{not json", headers={**adm.headers, "Content-Type": "application/json"})
        assert_error(resp, 400)


def run_cli_stderr_tty(args, env):
    """Runs the CLI with stderr on a pseudo-terminal; returns (rc, stdout, what the terminal got)."""
    import pty
    import subprocess
    from servers import COREDB_BIN
    master, slave = pty.openpty()
    full = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "POSTGRES_", "REDIS_", "DB_", "PG"))}
    full.update(env)
    proc = subprocess.Popen([COREDB_BIN, *args], env=full, cwd=scratch_dir(), stdout=subprocess.PIPE,
                            stderr=slave, stdin=subprocess.DEVNULL)
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:
            break
        if not data:
            break
        chunks.append(data)
    out = proc.stdout.read().decode()
    rc = proc.wait(timeout=60)
    os.close(master)
    return rc, out, b"".join(chunks).decode(errors="replace")


def test_cli_up_shows_a_progress_line_per_file_on_a_terminal(pg):
    db = pg.create_database()
    env = {"DATABASE_URL": pg.url(db), "JWT_SECRET": TEST_JWT_SECRET, "MIGRATIONS_DIR": MIGRATIONS}
    files = sorted(f for f in os.listdir(MIGRATIONS) if f.endswith(".sql"))
    rc, out, tty = run_cli_stderr_tty(["migrate", "up", "--json"], env)
    assert rc == 0, (out, tty)
    assert len(json.loads(out)["applied"]) == len(files)     # stdout is still the JSON result alone
    n = len(files)
    for i, f in enumerate(files, 1):
        assert f"[{i}/{n}] applying {f[:12]}" in tty, tty
    # not a terminal: no progress lines
    down = run_cli(["migrate", "down", "--steps", "1", "--json"], env)
    assert down.returncode == 0 and "rolling back" not in down.stderr, down.stderr
    proc = run_cli(["migrate", "up", "--json"], env)
    assert proc.returncode == 0 and "applying" not in proc.stderr, proc.stderr
    assert [a["version"] for a in json.loads(proc.stdout)["applied"]] == [files[-1][:12]]


def test_stopping_the_instance_ends_its_run_failed_and_unapplied(pg, redis_server):
    db = pg.create_database()
    d = os.path.join(scratch_dir(), f"mig-stop-{db}")
    shutil.copytree(MIGRATIONS, d)
    rc, out = cli(pg, db, d, "up")
    assert rc == 0, out
    with open(os.path.join(d, "29990101_001_very_slow.sql"), "w") as f:
        f.write("-- migrate:up\nCREATE TABLE public.very_slow (id int);\nSELECT pg_sleep(30);\n"
                "-- migrate:down\nDROP TABLE public.very_slow;\n")
    inst = start_instance(pg, redis_server, REDIS_DB, db=db, MIGRATIONS_DIR=d, MIGRATE_ON_START="false")
    a = admin_of(inst)
    run = start_run(inst, a, {})
    time.sleep(0.5)
    t0 = time.time()
    inst.stop_clean()                    # a clean exit, no sanitizer report, without waiting out pg_sleep
    assert time.time() - t0 < 15
    row = pg.query(db, "SELECT status, error->>'file' FROM coredb.migration_runs WHERE id = %s",
                   (run["migration_id"],))[0]
    assert row == ("failed", "29990101_001_very_slow.sql"), row
    assert not pg.query(db, "SELECT to_regclass('public.very_slow') IS NOT NULL")[0][0]
    assert "29990101_001" not in [r[0] for r in pg.query(db, "SELECT version FROM coredb.schema_migrations")]


def test_killed_instance_run_is_answered_failed_by_another_instance(pg, redis_server):
    import signal
    db = pg.create_database()
    d = os.path.join(scratch_dir(), f"mig-kill-{db}")
    shutil.copytree(MIGRATIONS, d)
    rc, out = cli(pg, db, d, "up")
    assert rc == 0, out
    with open(os.path.join(d, "29990101_001_very_slow.sql"), "w") as f:
        f.write("-- migrate:up\nCREATE TABLE public.very_slow (id int);\nSELECT pg_sleep(4);\n"
                "-- migrate:down\nDROP TABLE public.very_slow;\n")
    first = start_instance(pg, redis_server, REDIS_DB, db=db, MIGRATIONS_DIR=d, MIGRATE_ON_START="false")
    second = start_instance(pg, redis_server, REDIS_DB, db=db, MIGRATIONS_DIR=d, MIGRATE_ON_START="false")
    second.admin_email = first.admin_email   # the database has one bootstrap admin
    try:
        a1, a2 = admin_of(first), admin_of(second)
        run = start_run(first, a1, {})
        # the other instance sees the run, and is refused a second one while it is active
        seen = second.get(f"/api/v1/migrations/runs/{run['migration_id']}", headers=a2.headers).json()
        assert seen["status"] == "running", seen
        assert_error(second.post("/api/v1/migrations/run", json={}, headers=a2.headers), 409, "MIGRATION_LOCKED")
        first.stop(sig=signal.SIGKILL)
        # its backend ends when pg_sleep returns and it finds the client gone; then the lock is free
        done = wait_run(second, a2, run["migration_id"], timeout=20)
        assert done["status"] == "failed", done
        assert "stopped" in done["migration_error"]["message"], done
        assert not pg.query(db, "SELECT to_regclass('public.very_slow') IS NOT NULL")[0][0]
    finally:
        first.stop()
        second.stop_clean()
