"""Safe restore (issue 13): POST /api/v1/admin/backups/{name}/restore.

Archives are made here with pg_dump -Fc directly (as the postgres account)
into the instances' BACKUP_DIR. Two instances share the database and one
Redis database, so the tests see what another instance sees: fresh reads
at once after a restore (the generation bump), and 503 MAINTENANCE while a
restore runs elsewhere. A failed restore must leave the data as it was."""
import os
import subprocess
import threading
import time
import uuid

import pytest

from datahelp import (add_project, admin_of, pg_delete, premium, query, query_ok, scalar,
                      start_instance, tx_ok, user, wait_for)
from identity import Account, assert_error
from servers import PG_BIN, _as_pg_user, scratch_dir

REDIS_DB = 8
RESTORE = "/api/v1/admin/backups/{}/restore"


@pytest.fixture(scope="module")
def backup_dir():
    path = os.path.join(scratch_dir(), f"backups-{uuid.uuid4().hex[:8]}")
    os.makedirs(path)
    os.chmod(path, 0o777)  # pg_dump runs as the postgres account
    return path


@pytest.fixture(scope="module")
def pair(pg, redis_server, backup_dir):
    first = start_instance(pg, redis_server, REDIS_DB, BACKUP_DIR=backup_dir)
    second = None
    try:
        second = start_instance(pg, redis_server, REDIS_DB, db=first.db, BACKUP_DIR=backup_dir)
        yield first, second
    finally:
        if second is not None:
            second.stop_clean()
        first.stop_clean()


@pytest.fixture(scope="module")
def admin(pair):
    return admin_of(pair[0])


def dump(inst, backup_dir, name=None):
    """pg_dump -Fc of the instance's database into BACKUP_DIR/name."""
    name = name or f"t-{uuid.uuid4().hex[:8]}.dump"
    path = os.path.join(backup_dir, name)
    prefix = ["runuser", "-u", "postgres", "--"] if _as_pg_user()[0] is not None else []
    with open(path, "wb") as f:
        subprocess.run(prefix + [f"{PG_BIN}/pg_dump", "-Fc", "-h", "127.0.0.1", "-p", str(inst.pg.port),
                                 "-U", "postgres", "-d", inst.db],
                       stdout=f, stderr=subprocess.PIPE, check=True, timeout=600)
    return name


def restore(inst, acct, name, body=None, **kw):
    kw.setdefault("timeout", 600)
    return inst.post(RESTORE.format(name), json={"confirm": True} if body is None else body,
                     headers=acct.headers if acct else {}, **kw)


def body_for(pid):
    return {"table": "projects", "select": ["id", "title"], "filters": {"id": pid}}


def maintenance(inst):
    return inst.get("/health").json()["checks"]["maintenance"]


def test_restore_brings_back_a_deleted_row_fresh_on_another_instance(pair, admin, backup_dir):
    first, second = pair
    a = user(first)
    a2 = Account(second, a.user, a.password, a.session)
    pid = add_project(first, a.id, title="kept-by-backup")
    name = dump(first, backup_dir)
    tx_ok(first, a, [pg_delete("projects", {"id": pid})])
    # the second instance caches the table without the row
    assert query_ok(second, a2, body_for(pid))["data"] == []
    cached = query_ok(second, a2, body_for(pid))
    assert cached["cached"] is True and cached["data"] == []

    resp = restore(first, admin, name)
    assert resp.status_code == 200, resp.text
    out = resp.json()
    assert out["restored"] is True and out["name"] == name, out
    assert out["tables_invalidated"] >= 4, out
    # back in PostgreSQL
    assert scalar(first, "SELECT title FROM projects WHERE id = %s", (pid,)) == "kept-by-backup"
    # and the other instance's cached read is fresh at once
    after = query_ok(second, a2, body_for(pid))
    assert after["data"] == [{"id": pid, "title": "kept-by-backup"}], after
    assert after["cached"] is False
    assert maintenance(first)["status"] == "OFF" and maintenance(second)["status"] == "OFF"


@pytest.mark.parametrize("body", [None, {}, {"confirm": False}, {"confirm": "true"}, {"confirm": 1},
                                  {"confirm": None}])
def test_restore_refused_without_confirm(pair, admin, backup_dir, body):
    first, _ = pair
    a = user(first)
    name = dump(first, backup_dir)
    pid = add_project(first, a.id, title="written-after-dump")
    if body is None:
        resp = first.post(RESTORE.format(name), headers=admin.headers)
    else:
        resp = restore(first, admin, name, body=body)
    err = assert_error(resp, 400, "VALIDATION_FAILED")
    if body is not None and "confirm" in body:
        assert err["details"]["field"] == "confirm", err
    assert scalar(first, "SELECT count(*) FROM projects WHERE id = %s", (pid,)) == 1


def corrupt_copies(backup_dir, good):
    with open(os.path.join(backup_dir, good), "rb") as f:
        data = f.read()
    names = {}
    names["truncated"] = f"trunc-{uuid.uuid4().hex[:6]}.dump"
    with open(os.path.join(backup_dir, names["truncated"]), "wb") as f:
        f.write(data[: len(data) * 2 // 3])
    names["garbage"] = f"junk-{uuid.uuid4().hex[:6]}.dump"
    with open(os.path.join(backup_dir, names["garbage"]), "wb") as f:
        f.write(b"PGDMP this is not an archive" * 10)
    names["empty"] = f"empty-{uuid.uuid4().hex[:6]}.dump"
    open(os.path.join(backup_dir, names["empty"]), "wb").close()
    return names


def test_failed_restore_leaves_data_untouched(pair, admin, backup_dir):
    first, second = pair
    a = user(first)
    a2 = Account(second, a.user, a.password, a.session)
    good = dump(first, backup_dir)
    pid = add_project(first, a.id, title="after-the-dump")
    before = scalar(first, "SELECT count(*) FROM projects")
    for kind, name in corrupt_copies(backup_dir, good).items():
        resp = restore(first, admin, name)
        err = assert_error(resp, 422, "BACKUP_INVALID")
        assert err["details"]["check"] in ("toc", "test_restore"), (kind, err)
        assert scalar(first, "SELECT title FROM projects WHERE id = %s", (pid,)) == "after-the-dump"
        assert scalar(first, "SELECT count(*) FROM projects") == before
        assert maintenance(first)["status"] == "OFF" and maintenance(second)["status"] == "OFF"
        assert query_ok(second, a2, body_for(pid))["data"][0]["title"] == "after-the-dump"
    # no scratch database is left behind
    left = scalar(first, "SELECT count(*) FROM pg_database WHERE datname LIKE 'coredb_restore_%%'")
    assert left == 0


def test_maintenance_during_a_slow_restore(pair, admin, backup_dir):
    first, second = pair
    a = user(first)
    a2 = Account(second, a.user, a.password, a.session)
    pid = add_project(first, a.id, title="during")
    # a big table makes the restore take seconds
    first.pg.query(first.db, "CREATE TABLE restore_ballast AS SELECT g, repeat('x', 120) AS pad "
                             "FROM generate_series(1, 1500000) g")
    try:
        name = dump(first, backup_dir)
        result = {}
        t = threading.Thread(target=lambda: result.setdefault("resp", restore(first, admin, name)))
        t.start()
        seen = {}
        deadline = time.time() + 300
        while t.is_alive() and time.time() < deadline:
            m = maintenance(second)
            if m["status"] == "ACTIVE":
                resp = query(second, a2, body_for(pid))
                if resp.status_code == 503:
                    seen["health"] = m
                    seen["resp"] = resp
                    break
            time.sleep(0.05)
        t.join(600)
        assert result["resp"].status_code == 200, result["resp"].text
        assert "resp" in seen, "no 503 MAINTENANCE seen on the other instance during the restore"
        err = assert_error(seen["resp"], 503, "MAINTENANCE")
        assert int(seen["resp"].headers["Retry-After"]) >= 1
        assert err["details"]["retry_after"] >= 1
        assert seen["health"]["since"].endswith("Z")
        # ended on both
        assert maintenance(first)["status"] == "OFF"
        wait_for(lambda: maintenance(second)["status"] == "OFF", timeout=5)
        assert query_ok(second, a2, body_for(pid))["data"][0]["title"] == "during"
    finally:
        first.pg.query(first.db, "DROP TABLE IF EXISTS restore_ballast")


def test_hostile_callers_and_names(pair, admin, backup_dir):
    first, _ = pair
    a = user(first)
    good = dump(first, backup_dir)
    pid = add_project(first, a.id, title="untouched")
    assert_error(restore(first, None, good), 401)
    assert_error(restore(first, a, good), 403, "FORBIDDEN")
    assert_error(restore(first, premium(first, admin), good), 403, "FORBIDDEN")
    # a real archive just outside BACKUP_DIR
    outside = f"outside-{uuid.uuid4().hex[:6]}.dump"
    os.link(os.path.join(backup_dir, good), os.path.join(os.path.dirname(backup_dir), outside))
    for bad in ["..%2F" + outside, "%2E%2E%2F" + outside, "..", "%2E%2E",
                "..%2F..%2F..%2Fetc%2Fpasswd", "%2Fetc%2Fpasswd", ".hidden", "a..b"]:
        resp = restore(first, admin, bad)
        assert resp.status_code in (400, 404), (bad, resp.status_code, resp.text)
        assert_error(resp, resp.status_code)
    for missing in ["nope.dump", "x';DROP_TABLE_projects;--"]:
        assert_error(restore(first, admin, missing), 404, "NOT_FOUND")
    # control characters and spaces are no file name of ours
    assert_error(restore(first, admin, "x'%3B DROP TABLE projects%3B--"), 400, "VALIDATION_FAILED")
    # malformed and mistyped bodies
    resp = first.post(RESTORE.format(good), data="{", headers={**admin.headers,
                                                               "Content-Type": "application/json"})
    assert_error(resp, 400, "INVALID_JSON")
    assert_error(restore(first, admin, good, body=[True]), 400, "VALIDATION_FAILED")
    assert_error(restore(first, admin, good, body="confirm"), 400, "INVALID_JSON")  # a bare string
    assert_error(restore(first, admin, good, body={"confirm": {"yes": True}}), 400, "VALIDATION_FAILED")
    # nothing was restored: the row written after the dump is still there
    assert scalar(first, "SELECT title FROM projects WHERE id = %s", (pid,)) == "untouched"


def test_live_restore_failure_rolls_back_entirely(pair, admin, backup_dir):
    """The archive passes the scratch run, but the live database holds an
    object made after the dump that depends on a table the restore must drop
    (a view): pg_restore fails midway, and the one transaction leaves every
    table, row and constraint as it was."""
    first, second = pair
    a = user(first)
    a2 = Account(second, a.user, a.password, a.session)
    name = dump(first, backup_dir)
    pid = add_project(first, a.id, title="after-the-dump-live")
    first.pg.query(first.db, "CREATE VIEW restore_blocker AS SELECT id FROM projects")
    try:
        before = {t: scalar(first, f"SELECT count(*) FROM {t}")
                  for t in ("users", "projects", "content_analysis", "media_assets", "coredb.sessions")}
        fks = scalar(first, "SELECT count(*) FROM pg_constraint WHERE contype = 'f'")
        resp = restore(first, admin, name)
        err = assert_error(resp, 409, "CONFLICT")
        assert err["details"]["check"] == "restore", err
        assert "rolled back" in err["message"]
        after = {t: scalar(first, f"SELECT count(*) FROM {t}") for t in before}
        assert after == before
        assert scalar(first, "SELECT count(*) FROM pg_constraint WHERE contype = 'f'") == fks
        assert scalar(first, "SELECT title FROM projects WHERE id = %s", (pid,)) == "after-the-dump-live"
        assert maintenance(first)["status"] == "OFF" and maintenance(second)["status"] == "OFF"
        assert query_ok(second, a2, body_for(pid))["data"][0]["title"] == "after-the-dump-live"
    finally:
        first.pg.query(first.db, "DROP VIEW IF EXISTS restore_blocker")


def test_cli_restore_needs_yes_and_invalidates(pair, backup_dir, redis_server):
    import json
    from datahelp import redis_url
    from identity import cli_env
    from servers import run_cli
    first, second = pair
    a = user(first)
    a2 = Account(second, a.user, a.password, a.session)
    pid = add_project(first, a.id, title="cli-kept")
    name = dump(first, backup_dir)
    tx_ok(first, a, [pg_delete("projects", {"id": pid})])
    assert query_ok(second, a2, body_for(pid))["data"] == []
    assert query_ok(second, a2, body_for(pid))["cached"] is True
    env = cli_env(first, BACKUP_DIR=backup_dir, REDIS_URL=redis_url(redis_server, REDIS_DB))
    no = run_cli(["restore", name, "--json"], env)
    assert no.returncode == 1, no
    assert json.loads(no.stdout)["error"]["code"] == "VALIDATION_FAILED"
    assert scalar(first, "SELECT count(*) FROM projects WHERE id = %s", (pid,)) == 0
    yes = run_cli(["restore", name, "--yes", "--json"], env, timeout=600)
    assert yes.returncode == 0, (yes.stdout, yes.stderr)
    out = json.loads(yes.stdout)
    assert out["status"] == "success" and out["restored"] is True, out
    assert scalar(first, "SELECT title FROM projects WHERE id = %s", (pid,)) == "cli-kept"
    after = query_ok(second, a2, body_for(pid))
    assert after["data"] == [{"id": pid, "title": "cli-kept"}] and after["cached"] is False, after
