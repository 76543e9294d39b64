"""Zero configuration: `coredb serve` with no database runs its own PostgreSQL
under ./var and answers /health UP; stopping it stops that PostgreSQL."""
import json
import os
import stat
import subprocess
import uuid

from servers import Coredb, scratch_dir


def postmaster_running(pgdata):
    pidfile = os.path.join(pgdata, "postmaster.pid")
    if not os.path.exists(pidfile):
        return False
    pid = int(open(pidfile).readline())
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def test_embedded_mode_serves_health_with_no_configuration():
    cwd = os.path.join(scratch_dir(), f"embedded-{uuid.uuid4().hex[:8]}")
    os.makedirs(cwd)
    os.chmod(cwd, 0o755)
    inst = Coredb({}, cwd=cwd, wait=False)
    try:
        inst.wait_live(120)
        resp = inst.get("/health")
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["status"] == "UP"
        assert "redis" not in body["checks"]
        assert inst.get("/health/ready").status_code == 200
        var = os.path.join(cwd, "var")
        secrets = os.path.join(var, "secrets.env")
        assert stat.S_IMODE(os.stat(secrets).st_mode) == 0o600
        text = open(secrets).read()
        assert "JWT_SECRET=" in text and "DB_ENCRYPTION_KEY=" in text
        # no secret value is printed in the log
        secret_names = ("JWT_SECRET", "DB_ENCRYPTION_KEY", "COREDB_ADMIN_PASSWORD")
        values = [l.split("=", 1)[1] for l in text.splitlines() if l.startswith(secret_names)]
        assert len(values) == 3
        for value in values:
            assert value not in inst.log()
        # the admin-created line names the file that holds the admin's password
        created = [l for l in inst.log().splitlines() if '"serve.admin_created"' in l]
        assert len(created) == 1 and secrets in json.loads(created[0])["msg"], created
        # `coredb config` shows those secrets as in force, from that file (issue 18, item 6)
        cfg = json.loads(subprocess.run([inst.proc.args[0], "config", "--json"], cwd=cwd, env=inst.env,
                                        capture_output=True, text=True, timeout=30).stdout)
        for name in secret_names + ("COREDB_ADMIN_EMAIL",):
            assert cfg["sources"][name] == "var/secrets.env", (name, cfg["sources"])
        assert cfg["JWT_SECRET"] == "[redacted]" and cfg["COREDB_ADMIN_EMAIL"] == "admin@coredb.local"
        pgdata = os.path.join(var, "pgdata")
        assert postmaster_running(pgdata)
        # a second command while serve runs shares the cluster and leaves it running
        proc = subprocess.run([inst.proc.args[0], "migrate", "status", "--json"], cwd=cwd,
                              env=inst.env, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        assert postmaster_running(pgdata)
        assert inst.get("/health").status_code == 200
    finally:
        inst.stop_clean()
    assert not postmaster_running(os.path.join(cwd, "var", "pgdata"))

    # second start reuses the cluster and the secrets
    before = open(os.path.join(cwd, "var", "secrets.env")).read()
    inst = Coredb({}, cwd=cwd, wait=False)
    try:
        inst.wait_live(120)
        assert inst.get("/health").json()["status"] == "UP"
        assert open(os.path.join(cwd, "var", "secrets.env")).read() == before
    finally:
        inst.stop_clean()
