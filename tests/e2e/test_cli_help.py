"""The command line helps (issue 18, items 4, 6, 9 and 10): every command and
subcommand answers --help / -h / `coredb help CMD` with its usage and exit 0
without loading the configuration or starting anything; argument errors exit
2 with the usage; the bash completion, the man page and `make install` come
from the same command table; `coredb config` names where each value came
from (also the embedded mode's var/secrets.env); one-shot commands print only
their result; a taken port exits with the code the docs give; the docs list
every command and carry the API contract."""
import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import uuid

import pytest

from servers import COREDB_BIN, ROOT, TEST_JWT_SECRET, free_port, run_cli, scratch_dir

MIGRATIONS = os.path.join(ROOT, "migrations")
KNOWN = {"serve", "config", "migrate", "user", "completion", "help", "version"}
SUBCOMMANDS = [["migrate", "status"], ["migrate", "up"], ["migrate", "down"], ["migrate", "new"],
               ["user", "create"], ["completion", "bash"]]


def fresh_dir():
    d = os.path.join(scratch_dir(), f"cli-{uuid.uuid4().hex[:8]}")
    os.makedirs(d)
    os.chmod(d, 0o755)
    return d


def commands():
    """The command names `coredb help` lists."""
    out = run_cli(["help"], {}, timeout=10).stdout
    block = out.split("commands:\n", 1)[1].split("\n\n", 1)[0]
    return [line.split()[0] for line in block.splitlines() if line.strip()]


# A configuration no command could use: loading it is CONFIG_INVALID (no
# JWT_SECRET with a database) and the database is a closed port, so a --help
# that loaded or connected would fail or hang instead of answering at once.
def hostile_env():
    return {"DATABASE_URL": f"postgresql://u:pw@127.0.0.1:{free_port()}/none",
            "DB_CONNECT_RETRIES": "1000", "PORT": str(free_port())}


def test_help_lists_every_command():
    assert set(commands()) >= KNOWN, commands()


@pytest.mark.parametrize("how", ["--help", "-h", "help"])
def test_help_sweep_every_command_and_subcommand(how):
    verbs = [[c] for c in commands()] + SUBCOMMANDS
    env = hostile_env()
    for verb in verbs:
        cwd = fresh_dir()
        args = ["help", verb[0]] if how == "help" else [*verb, how]
        if how == "help" and verb[0] == "help":
            args = ["help", "--help"]
        t0 = time.monotonic()
        proc = run_cli(args, env, cwd=cwd, timeout=10)
        took = time.monotonic() - t0
        assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
        assert proc.stdout.startswith(f"usage: coredb {verb[0]}"), (args, proc.stdout)
        assert proc.stderr == "", (args, proc.stderr)
        assert took < 3, (args, took)
        # nothing started: no embedded cluster, no secrets written
        assert os.listdir(cwd) == [], (args, os.listdir(cwd))
    # the top level as well
    for args in (["--help"], ["-h"], ["help"]):
        proc = run_cli(args, env, timeout=10)
        assert proc.returncode == 0 and proc.stdout.startswith("usage: coredb <command>"), proc


def test_serve_help_does_not_start_even_in_embedded_mode():
    """No DATABASE_URL: a started serve would create ./var and bind PORT."""
    cwd = fresh_dir()
    port = free_port()
    proc = run_cli(["serve", "--help"], {"PORT": str(port)}, cwd=cwd, timeout=10)
    assert proc.returncode == 0 and proc.stdout.startswith("usage: coredb serve"), proc
    assert os.listdir(cwd) == []
    with socket.socket() as s:   # the port was never taken
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", port))


@pytest.mark.parametrize("args", [
    [], ["nope"], ["serve", "extra"], ["config", "--bogus"], ["migrate"], ["migrate", "bogus"],
    ["migrate", "new"], ["migrate", "status", "extra"], ["migrate", "down", "--steps", "0"],
    ["user"], ["user", "delete"], ["user", "create", "--email", "a@b.c"], ["completion"],
    ["completion", "zsh"], ["help", "nope"], ["help", "migrate", "extra"], ["version", "x"],
])
def test_argument_errors_exit_2_with_the_usage(args):
    cwd = fresh_dir()
    proc = run_cli(args, hostile_env(), cwd=cwd, timeout=10)
    assert proc.returncode == 2, (args, proc.stdout, proc.stderr)
    assert "usage: coredb" in proc.stderr, (args, proc.stderr)
    assert proc.stdout == "", (args, proc.stdout)
    assert os.listdir(cwd) == []


def complete(script, words):
    """COMPREPLY of the generated bash completion for the words typed so far."""
    line = " ".join(f"'{w}'" for w in words)
    code = (f"source {script}\n"
            f"COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}\n"
            "complete -p coredb >/dev/null || exit 9\n"
            "_coredb; printf '%s\\n' \"${COMPREPLY[@]}\"\n")
    proc = subprocess.run(["bash", "--norc", "--noprofile", "-c", code], capture_output=True,
                          text=True, timeout=10)
    assert proc.returncode == 0, proc.stderr
    return [w for w in proc.stdout.split("\n") if w]


def test_bash_completion(tmp_path):
    proc = run_cli(["completion", "bash"], {}, timeout=10)
    assert proc.returncode == 0, proc.stderr
    script = tmp_path / "coredb.bash"
    script.write_text(proc.stdout)
    assert complete(script, ["coredb", "mi"]) == ["migrate"]
    assert set(complete(script, ["coredb", ""])) >= set(commands())
    assert set(complete(script, ["coredb", "migrate", ""])) >= {"status", "up", "down", "new"}
    assert complete(script, ["coredb", "migrate", "st"]) == ["status"]
    assert "--dry-run" in complete(script, ["coredb", "migrate", "up", "--"])
    assert complete(script, ["coredb", "user", ""])[0] == "create"
    assert set(complete(script, ["coredb", "help", ""])) >= set(commands())


def man_text(path):
    proc = subprocess.run(["groff", "-man", "-Tutf8", "-ww", path], capture_output=True,
                          text=True, timeout=30)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    return re.sub(r".\x08", "", proc.stdout)


@pytest.mark.skipif(not shutil.which("groff"), reason="groff is not installed (groff-base)")
def test_man_page_is_the_help_text(tmp_path):
    proc = run_cli(["help", "--man"], {}, timeout=10)
    assert proc.returncode == 0 and proc.stdout.startswith(".\\\"")
    page = tmp_path / "coredb.1"
    page.write_text(proc.stdout)
    text = " ".join(man_text(str(page)).split())
    assert "COREDB(1)" in text
    for name in commands():   # every command's own usage, as --help prints it
        usage = run_cli([name, "--help"], {}, timeout=10).stdout
        first = " ".join(usage.splitlines()[0].split())
        assert first in text, first
    assert "coredb migrate down [--steps N] [--json]" in text


@pytest.mark.skipif(not shutil.which("make"), reason="make is not installed")
def test_make_install_into_destdir(tmp_path):
    build = os.path.relpath(os.path.dirname(COREDB_BIN), ROOT)
    dest = tmp_path / "stage"
    proc = subprocess.run(["make", "-s", f"BUILD={build}", "install", f"DESTDIR={dest}",
                           "PREFIX=/usr/local"], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    prefix = dest / "usr" / "local"
    binary = prefix / "bin" / "coredb"
    assert os.access(binary, os.X_OK)
    assert (prefix / "lib" / "libcoredb.a").stat().st_size > 0
    for h in os.listdir(os.path.join(ROOT, "include", "coredb")):
        assert (prefix / "include" / "coredb" / h).is_file(), h
    version = subprocess.run([str(binary), "version"], capture_output=True, text=True, timeout=10)
    assert version.returncode == 0 and version.stdout.startswith("coredb ")
    page = prefix / "share" / "man" / "man1" / "coredb.1"
    assert page.read_text() == run_cli(["help", "--man"], {}, timeout=10).stdout
    assert (prefix / "share" / "bash-completion" / "completions" / "coredb").read_text() == \
        run_cli(["completion", "bash"], {}, timeout=10).stdout
    if shutil.which("man"):
        shown = subprocess.run(["man", "-l", str(page)], capture_output=True, text=True,
                               env=dict(os.environ, MANPAGER="cat", PAGER="cat"), timeout=30)
        assert shown.returncode == 0 and "coredb migrate status" in shown.stdout, shown.stderr


# ---- coredb config: values and where they came from ----

SECRETS = {"JWT_SECRET": "devJwtSecret-" + "x" * 40,
           "DB_ENCRYPTION_KEY": "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=",
           "COREDB_ADMIN_EMAIL": "admin@coredb.local",
           "COREDB_ADMIN_PASSWORD": "devAdminPasswordValue"}


def embedded_dir_with_secrets():
    cwd = fresh_dir()
    os.makedirs(os.path.join(cwd, "var"))
    path = os.path.join(cwd, "var", "secrets.env")
    with open(path, "w") as f:
        f.write("# coredb development secrets: generated once, keep private\n")
        f.writelines(f"{k}={v}\n" for k, v in SECRETS.items())
    os.chmod(path, 0o600)
    return cwd, path


def test_config_in_embedded_mode_shows_secrets_file_values_and_sources(tmp_path):
    cwd, path = embedded_dir_with_secrets()
    before = open(path).read()
    jwt_file = tmp_path / "jwt"   # JWT_SECRET_FILE wins over the secrets file
    env = {"PORT": "9999", "DB_ENCRYPTION_KEY_FILE": str(tmp_path / "key")}
    (tmp_path / "key").write_text("0" * 64 + "\n")
    proc = run_cli(["config", "--json"], env, cwd=cwd, timeout=10)
    assert proc.returncode == 0, proc.stderr
    for value in SECRETS.values():
        if value != SECRETS["COREDB_ADMIN_EMAIL"]:
            assert value not in proc.stdout + proc.stderr
    res = json.loads(proc.stdout)
    assert res["embedded"] is True
    assert res["JWT_SECRET"] == "[redacted]"
    assert res["COREDB_ADMIN_PASSWORD"] == "[redacted]"
    assert res["COREDB_ADMIN_EMAIL"] == "admin@coredb.local"
    assert res["DB_ENCRYPTION_KEY"] == "[redacted]"
    src = res["sources"]
    assert src["JWT_SECRET"] == "var/secrets.env"
    assert src["COREDB_ADMIN_EMAIL"] == "var/secrets.env"
    assert src["COREDB_ADMIN_PASSWORD"] == "var/secrets.env"
    assert src["DB_ENCRYPTION_KEY"] == "file"
    assert src["PORT"] == "env" and res["PORT"] == 9999
    assert src["DB_POOL_MAX"] == "default"
    assert set(src) == {k for k in res if k.isupper()}
    assert res["secrets_file"] == path
    # the human form: a table with the same sources
    text = run_cli(["config"], env, cwd=cwd, timeout=10)
    assert text.returncode == 0 and text.stderr == ""
    rows = {l.split()[0]: l.split() for l in text.stdout.splitlines() if l.strip()}
    assert rows["VARIABLE"] == ["VARIABLE", "VALUE", "SOURCE"]
    assert rows["JWT_SECRET"][1:] == ["[redacted]", "var/secrets.env"]
    assert rows["DB_ENCRYPTION_KEY"][1:] == ["[redacted]", "file"]
    assert rows["PORT"][1:] == ["9999", "env"]
    assert path in text.stdout
    # read, never written: same content, nothing else created
    assert open(path).read() == before
    assert sorted(os.listdir(os.path.join(cwd, "var"))) == ["secrets.env"]
    # with no secrets file nothing is generated either
    empty = fresh_dir()
    res = json.loads(run_cli(["config", "--json"], {}, cwd=empty, timeout=10).stdout)
    assert res["JWT_SECRET"] is None and res["sources"]["JWT_SECRET"] == "default"
    assert os.listdir(empty) == []


def test_config_sources_with_a_database(tmp_path):
    secret = tmp_path / "jwt"
    secret.write_text(TEST_JWT_SECRET + "\n")
    env = {"POSTGRES_USER": "svc", "POSTGRES_HOST": "db.internal", "JWT_SECRET_FILE": str(secret),
           "COREDB_VAR_DIR": str(tmp_path)}
    res = json.loads(run_cli(["config", "--json"], env, timeout=10).stdout)
    assert res["embedded"] is False and "secrets_file" not in res
    assert res["sources"]["JWT_SECRET"] == "file"
    assert res["sources"]["DATABASE_URL"] == "env"   # assembled from POSTGRES_*
    assert res["sources"]["COREDB_VAR_DIR"] == "env"
    assert res["sources"]["HOST"] == "default"


# ---- one-shot commands print their result only ----

def test_one_shot_commands_are_quiet_unless_verbose(pg):
    env = {"DATABASE_URL": pg.url(pg.create_database()), "JWT_SECRET": TEST_JWT_SECRET,
           "MIGRATIONS_DIR": MIGRATIONS, "LOG_LEVEL": "info"}
    st = run_cli(["migrate", "status"], env)
    assert st.returncode == 0 and st.stderr == "", st.stderr
    lines = st.stdout.splitlines()
    # a table, not JSON: a header row and one row per pending file
    header = next(i for i, l in enumerate(lines) if l.split()[:2] == ["version", "description"])
    pending = sorted(f[:12] for f in os.listdir(MIGRATIONS) if f.endswith(".sql"))
    assert [l.split()[0] for l in lines[header + 1:header + 1 + len(pending)]] == pending
    up = run_cli(["migrate", "up"], env)
    assert up.returncode == 0 and up.stderr == "", up.stderr
    down = run_cli(["migrate", "down"], env)
    assert down.returncode == 0 and down.stderr == "", down.stderr
    again = run_cli(["migrate", "up", "--verbose"], env)
    assert again.returncode == 0, again.stderr
    logs = [json.loads(l) for l in again.stderr.splitlines()]
    assert [l["event"] for l in logs] == ["migration_applied"], logs
    assert all(not l.startswith("{") for l in again.stdout.splitlines())
    down = run_cli(["migrate", "down"], dict(env, LOG_LEVEL="debug"))
    assert down.returncode == 0
    logs = [json.loads(l) for l in down.stderr.splitlines()]
    assert logs and all(set(l) >= {"ts", "level", "event"} for l in logs), down.stderr


# ---- the docs say what the program does ----

def test_port_taken_exits_with_the_documented_code(pg):
    ops = open(os.path.join(ROOT, "docs", "operations.md")).read()
    m = re.search(r"port already taken exits with code (\d)", " ".join(ops.split()))
    assert m, "docs/operations.md must state the exit code of a taken port"
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        env = {"DATABASE_URL": pg.url(pg.create_database()), "JWT_SECRET": TEST_JWT_SECRET,
               "MIGRATIONS_DIR": MIGRATIONS, "HOST": "127.0.0.1", "PORT": str(port),
               "PROMETHEUS_PORT": "0", "DB_POOL_MIN": "1"}
        proc = run_cli(["serve"], env, timeout=120)
    assert proc.returncode == int(m.group(1)), (proc.returncode, proc.stderr[-2000:])
    assert f"PORT: cannot listen on 127.0.0.1:{port}" in proc.stderr


def test_docs_api_md_is_the_shared_contract():
    shared = os.path.join(ROOT, "..", "shared", "API.md")
    if not os.path.exists(shared):
        pytest.skip("../shared/API.md is not here to compare with")
    assert open(os.path.join(ROOT, "docs", "API.md"), "rb").read() == open(shared, "rb").read(), \
        "docs/API.md differs from ../shared/API.md: copy it again"


def table_commands(path, heading):
    """First words after `coredb ` in the first column of the table under heading."""
    text = open(path).read()
    section = text.split(heading, 1)[1]
    section = re.split(r"\n#{1,3} ", section, maxsplit=1)[0]
    return {m.group(1) for m in re.finditer(r"^\| `coredb ([a-z-]+)", section, re.M)}


@pytest.mark.parametrize("doc,heading", [("README.md", "## Command line"),
                                         ("docs/operations.md", "## Command line")])
def test_cli_tables_list_every_command(doc, heading):
    assert table_commands(os.path.join(ROOT, doc), heading) == set(commands())


# ---- one timestamp format: UTC, whatever the database's zone ----

ISO_S = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$")


def test_timestamps_are_utc_even_when_the_database_zone_is_not(pg, start_coredb):
    from datahelp import query_ok, tx_ok
    from identity import make_admin
    db = pg.create_database()
    pg.query("postgres", f"ALTER DATABASE \"{db}\" SET timezone TO 'Asia/Kolkata'")
    inst = start_coredb(db=db)
    admin = make_admin(inst)
    assert ISO_S.match(admin.user["created_at"]), admin.user
    tx_ok(inst, admin, [{"operation": "insert", "table": "projects",
                         "data": {"title": "tz", "user_id": admin.id}}])
    rows = query_ok(inst, admin, {"table": "projects", "select": ["created_at"]})["data"]
    assert rows and rows[0]["created_at"].endswith("+00:00"), rows
    health = inst.get("/health").json()
    assert ISO_S.match(health["timestamp"]), health
    err = inst.get("/no/such/route").json()["error"]
    assert ISO_S.match(err["timestamp"]), err
    for line in inst.log().splitlines():
        if line.startswith("{"):
            assert ISO_S.match(json.loads(line)["ts"]), line
