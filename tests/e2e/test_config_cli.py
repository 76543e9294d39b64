"""Configuration: invalid values stop the program with exit 2 naming the variable;
`coredb config` redacts secrets."""
import json

import pytest

from servers import TEST_JWT_SECRET, run_cli

GOOD = {"DATABASE_URL": "postgresql://u:hunter2secret@127.0.0.1:5/db", "JWT_SECRET": TEST_JWT_SECRET}


@pytest.mark.parametrize("name,value", [
    ("DB_POOL_MIN", "abc"),
    ("DB_POOL_MAX", "-1"),
    ("PORT", "70000"),
    ("DB_STATEMENT_TIMEOUT", "soon"),
    ("DATABASE_URL", "mysql://x@y/z"),
    ("LOG_LEVEL", "loud"),
    ("DB_SSLMODE", "sometimes"),
    ("JWT_SECRET", "short"),
    ("REDIS_URL", "http://nope"),
    ("MIGRATE_ON_START", "perhaps"),
    ("DOC_MAX_BYTES", "10"),
])
def test_invalid_value_exits_2_naming_variable(name, value):
    env = dict(GOOD, **{name: value})
    for cmd in (["serve"], ["config"]):
        proc = run_cli(cmd, env, timeout=30)
        assert proc.returncode == 2, (cmd, proc.stdout, proc.stderr)
        assert name in proc.stderr
        assert "hunter2secret" not in proc.stderr


def test_pool_min_greater_than_max():
    proc = run_cli(["serve"], dict(GOOD, DB_POOL_MIN="10", DB_POOL_MAX="5"), timeout=30)
    assert proc.returncode == 2
    assert "DB_POOL_MIN" in proc.stderr


def test_config_prints_effective_values_redacted(tmp_path):
    secret_file = tmp_path / "jwt"
    secret_file.write_text("file-secret-0123456789abcdef0123456789abcdef\n")
    env = {"POSTGRES_USER": "svc", "POSTGRES_PASSWORD": "p@ss w0rd!", "POSTGRES_HOST": "db.internal",
           "POSTGRES_DB": "app", "JWT_SECRET_FILE": str(secret_file), "DB_POOL_MAX": "7",
           "REDIS_URL": "redis://:redispw@127.0.0.1:6379/0"}
    proc = run_cli(["config", "--json"], env, timeout=30)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout
    for secret in ("p@ss", "file-secret", "redispw"):
        assert secret not in text
    cfg = json.loads(text)
    assert cfg["DB_POOL_MAX"] == 7
    assert cfg["DB_POOL_MIN"] == 5
    assert cfg["PORT"] == 8095
    assert cfg["JWT_SECRET"] == "[redacted]"
    assert "svc" in cfg["DATABASE_URL"] and "db.internal:5432/app" in cfg["DATABASE_URL"]
    assert cfg["embedded"] is False


def test_asyncpg_url_is_normalized():
    env = dict(GOOD, DATABASE_URL="postgresql+asyncpg://u:pw@127.0.0.1:6543/db")
    cfg = json.loads(run_cli(["config", "--json"], env, timeout=30).stdout)
    assert cfg["DATABASE_URL"].startswith("postgresql://u:")
    assert "6543/db" in cfg["DATABASE_URL"]
