"""`--json` on the command line: every verb prints exactly one result object
{status, error, timestamp, ...data} on stdout, on success and on failure, with
the exit code it has without --json; and the CLI's error object is the same
as the HTTP error envelope's for the same failure (both come from
src/core/result.c)."""
import json
import os
import re
import shutil
import subprocess
import types

import pytest

from identity import PASSWORD, assert_error, cli_user_create, unique
from servers import COREDB_BIN, ROOT, TEST_JWT_SECRET, free_port, run_cli, scratch_dir

MIGRATIONS = os.path.join(ROOT, "migrations")
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def one_result(proc):
    """The whole of stdout parsed as one JSON object, checked for the form."""
    assert "Sanitizer" not in proc.stderr and "runtime error:" not in proc.stderr, proc.stderr
    try:
        res = json.loads(proc.stdout)
    except json.JSONDecodeError:
        raise AssertionError(f"stdout is not one JSON value (rc={proc.returncode}):\n"
                             f"{proc.stdout}\n{proc.stderr}")
    assert isinstance(res, dict), res
    assert list(res)[:3] == ["status", "error", "timestamp"], res
    assert ISO_UTC.match(res["timestamp"]), res["timestamp"]
    if res["status"] == "success":
        assert res["error"] is None, res
        assert proc.returncode == 0, (proc.returncode, res)
    else:
        assert res["status"] == "error", res
        assert list(res["error"]) == ["code", "message", "details"], res
        assert isinstance(res["error"]["details"], dict)
        assert proc.returncode != 0, res
    return res


def env_for(pg, db, **extra):
    env = {"DATABASE_URL": pg.url(db), "JWT_SECRET": TEST_JWT_SECRET, "MIGRATIONS_DIR": MIGRATIONS}
    env.update({k: str(v) for k, v in extra.items()})
    return env


def versions():
    return sorted(f[:12] for f in os.listdir(MIGRATIONS) if f.endswith(".sql"))


def test_migrate_status_up_down_success(pg):
    db = pg.create_database()
    st = one_result(run_cli(["migrate", "status", "--json"], env_for(pg, db)))
    assert st["status"] == "success"
    assert [m["version"] for m in st["pending_migrations"]] == versions()
    up = one_result(run_cli(["migrate", "up", "--json"], env_for(pg, db)))
    assert up["status"] == "success" and [m["version"] for m in up["applied"]] == versions()
    down = one_result(run_cli(["migrate", "down", "--json"], env_for(pg, db)))
    assert down["status"] == "success" and [m["version"] for m in down["rolled_back"]] == versions()[-1:]


@pytest.mark.parametrize("action", [["status"], ["up"], ["down", "--steps", "2"], ["up", "--dry-run"]])
def test_migrate_unreachable_database(action):
    # nothing listens on a fresh free port; no retries so the answer is quick
    url = f"postgresql://app:pgSecretPw@127.0.0.1:{free_port()}/nowhere"
    env = {"DATABASE_URL": url, "JWT_SECRET": TEST_JWT_SECRET, "MIGRATIONS_DIR": MIGRATIONS,
           "DB_CONNECT_RETRIES": "0"}
    proc = run_cli(["migrate", *action, "--json"], env, timeout=60)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    res = one_result(proc)
    assert res["status"] == "error"
    assert res["error"]["code"] == "DATABASE_UNAVAILABLE"
    assert "pgSecretPw" not in proc.stdout + proc.stderr
    # without --json: same exit code, the error on stderr, nothing on stdout
    plain = run_cli(["migrate", *action], env, timeout=60)
    assert plain.returncode == 1 and plain.stdout == ""
    assert "DATABASE_UNAVAILABLE" in plain.stderr


def test_dry_run_failure_cannot_pose_as_the_result_error(pg):
    """A failing dry run succeeds as a call; the failure it foresees is data
    (dry_run_error), so "error" stays null and "status" success."""
    db = pg.create_database()
    d = os.path.join(scratch_dir(), f"mig-json-{db}")
    shutil.copytree(MIGRATIONS, d)
    with open(os.path.join(d, "29991231_001_broken.sql"), "w") as f:
        f.write("-- migrate:up\nSELECT * FROM no_such_table;\n-- migrate:down\nSELECT 1;\n")
    res = one_result(run_cli(["migrate", "up", "--dry-run", "--json"], env_for(pg, db, MIGRATIONS_DIR=d)))
    assert res["status"] == "success" and res["error"] is None
    assert res["would_succeed"] is False
    assert res["dry_run_error"]["code"] == "MIGRATION_FAILED"
    assert "29991231_001_broken.sql" in res["dry_run_error"]["message"]
    assert list(res["dry_run_error"]) == ["code", "message", "details"]


def test_config_json_redacts_secrets(tmp_path):
    env = {"DATABASE_URL": "postgresql://svc:dbSecretPw@127.0.0.1:5432/app",
           "JWT_SECRET": "jwtSecretValue-0123456789abcdefghij",
           "REDIS_URL": "redis://:redisSecretPw@127.0.0.1:6379/0",
           "COREDB_ADMIN_EMAIL": "root@example.com", "COREDB_ADMIN_PASSWORD": "adminSecretPw"}
    proc = run_cli(["config", "--json"], env, timeout=30)
    res = one_result(proc)
    assert res["status"] == "success"
    for secret in ("dbSecretPw", "jwtSecretValue", "redisSecretPw", "adminSecretPw"):
        assert secret not in proc.stdout + proc.stderr
    assert res["JWT_SECRET"] == "[redacted]" and res["COREDB_ADMIN_PASSWORD"] == "[redacted]"
    assert res["DATABASE_URL"] == "postgresql://svc:[redacted]@127.0.0.1:5432/app"
    assert res["JWT_CLOCK_SKEW"] == 5 and res["embedded"] is False


def test_config_json_invalid_configuration():
    env = {"DATABASE_URL": "postgresql://svc:dbSecretPw@127.0.0.1:5432/app",
           "JWT_SECRET": TEST_JWT_SECRET, "DB_POOL_MIN": "abc"}
    proc = run_cli(["config", "--json"], env, timeout=30)
    assert proc.returncode == 2
    res = one_result(proc)
    assert res["error"]["code"] == "CONFIG_INVALID"
    assert res["error"]["message"].startswith("DB_POOL_MIN:")
    assert "dbSecretPw" not in proc.stdout + proc.stderr
    # migrate and user create report it the same way, exit code 2 as well
    for args in (["migrate", "status", "--json"],):
        p = run_cli(args, env, timeout=30)
        assert p.returncode == 2 and one_result(p)["error"]["code"] == "CONFIG_INVALID"
    p = subprocess.run([COREDB_BIN, "user", "create", "--email", "a@b.c", "--username", "ab", "--json"],
                       input=PASSWORD + "\n", env=dict(os.environ, **env), cwd=scratch_dir(),
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 2 and one_result(p)["error"]["code"] == "CONFIG_INVALID"


def test_user_create_success_then_conflict(pg):
    inst = types.SimpleNamespace(pg=pg, db=pg.create_database())
    name = unique()
    email = f"{name}@example.com"
    proc = cli_user_create(inst, email, name, PASSWORD, role="premium")
    res = one_result(proc)
    assert res["status"] == "success"
    assert res["email"] == email and res["username"] == name and res["role"] == "premium"
    assert PASSWORD not in proc.stdout and "password" not in res
    # the same email (in other case) and the same username: CONFLICT naming the field
    dup = cli_user_create(inst, email.upper(), unique(), PASSWORD)
    assert dup.returncode == 1
    err = one_result(dup)["error"]
    assert err["code"] == "CONFLICT" and err["details"]["field"] == "email"
    dup = cli_user_create(inst, f"{unique()}@example.com", name, PASSWORD)
    err = one_result(dup)["error"]
    assert err["code"] == "CONFLICT" and err["details"]["field"] == "username"


def test_cli_and_http_show_the_same_error(start_coredb):
    """One cdb_error, two front ends: the HTTP envelope is the CLI's error
    object plus timestamp and request_id, key for key and in order."""
    inst = start_coredb()
    name = unique()
    body = {"email": f"{name}@example.com", "username": name, "password": PASSWORD}
    assert inst.post("/users/", json=body).status_code == 201
    http_err = assert_error(inst.post("/users/", json=dict(body, username=unique())), 409, "CONFLICT")
    assert list(http_err) == ["code", "message", "details", "timestamp", "request_id"]
    cli_err = one_result(cli_user_create(inst, body["email"], unique(), PASSWORD))["error"]
    assert cli_err == {k: http_err[k] for k in ("code", "message", "details")}


def test_usage_errors_are_results_too():
    p = run_cli(["migrate", "up", "--steps", "many", "--json"], {}, timeout=30)
    assert p.returncode == 2
    res = one_result(p)
    assert res["error"]["code"] == "VALIDATION_FAILED" and "--help" in res["error"]["message"]
    assert "usage: coredb migrate" in p.stderr
    p = run_cli(["config", "--bogus", "--json"], {}, timeout=30)
    assert p.returncode == 2 and one_result(p)["error"]["code"] == "VALIDATION_FAILED"
    # no password on stdin
    p = subprocess.run([COREDB_BIN, "user", "create", "--email", "a@b.c", "--username", "ab", "--json"],
                       input="", env=dict(os.environ, JWT_SECRET=TEST_JWT_SECRET), cwd=scratch_dir(),
                       capture_output=True, text=True, timeout=30)
    assert p.returncode == 2
    res = one_result(p)
    assert res["error"]["code"] == "VALIDATION_FAILED" and "password" in res["error"]["message"]


@pytest.mark.parametrize("verb", [["config"], ["migrate"], ["migrate", "status"], ["user"], ["user", "create"]])
def test_help_says_what_json_prints(verb):
    p = run_cli([*verb, "--help"], {}, timeout=30)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("usage: coredb " + verb[0])
    text = " ".join(p.stdout.split())
    assert "--json print exactly one result object on stdout, on success and on failure" in text
    assert '"status": "success"|"error"' in text
