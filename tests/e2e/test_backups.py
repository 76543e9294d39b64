"""Backups (issue 13): create, list, verify, cleanup.

POST /api/v1/admin/backups runs pg_dump (custom format) in the snapshot
whose row counts go to the manifest beside the archive; GET lists them
newest first; verify checks the checksum, the archive's table of contents
and a test restore into a scratch database, and fails (422 BACKUP_INVALID
naming the check) on a flipped byte or a truncated file; cleanup keeps the
BACKUP_RETENTION_COUNT newest and the recent ones and never the only valid
backup. Passwords never reach a command line or the log. Admin only."""
import glob
import json
import os
import threading
import time
import uuid

import pytest

from datahelp import admin_of, assert_error, start_instance, user, premium, wait_for
from identity import cli_env
from servers import COREDB_BIN, run_cli, scratch_dir

BK = "/api/v1/admin/backups"
SECRET_PW = "Bk-" + uuid.uuid4().hex


def backup_dir():
    d = os.path.join(scratch_dir(), f"backups-{uuid.uuid4().hex[:8]}")
    os.makedirs(d, exist_ok=True)
    return d


def url_with_password(pg, db):
    # the test cluster trusts local connections: the password is accepted and
    # ignored, so it is a marker that must never show up anywhere
    return f"postgresql://postgres:{SECRET_PW}@127.0.0.1:{pg.port}/{db}"


@pytest.fixture(scope="module")
def bk(pg):
    d = backup_dir()
    db = pg.create_database()
    inst = start_instance(pg, db=db, BACKUP_DIR=d, DATABASE_URL=url_with_password(pg, db))
    inst.bdir = d
    yield inst
    inst.stop_clean()


@pytest.fixture(scope="module")
def root(bk):
    return admin_of(bk)


def create(inst, acct):
    r = inst.post(BK, headers=acct.headers, timeout=120)
    assert r.status_code == 201, r.text
    return r.json()


def verify(inst, acct, name):
    return inst.post(f"{BK}/{name}/verify", headers=acct.headers, timeout=180)


def test_create_list_verify(bk, root):
    bk.pg.query(bk.db, "CREATE TABLE bk_items (id serial primary key, v text)")
    bk.pg.query(bk.db, "INSERT INTO bk_items (v) SELECT 'x' || g FROM generate_series(1, 37) g")
    b = create(bk, root)
    for key in ("name", "size_bytes", "sha256", "created_at", "duration_ms", "format",
                "server_version", "tables"):
        assert key in b, b
    assert b["format"] == "pg_dump-custom"
    assert b["tables"]["public.bk_items"] == 37
    users = bk.pg.query(bk.db, "SELECT count(*) FROM public.users")[0][0]
    assert b["tables"]["public.users"] == users
    path = os.path.join(bk.bdir, b["name"] + ".dump")
    with open(path, "rb") as f:
        data = f.read()
    assert data[:5] == b"PGDMP" and len(data) == b["size_bytes"]
    import hashlib
    assert hashlib.sha256(data).hexdigest() == b["sha256"]
    with open(os.path.join(bk.bdir, b["name"] + ".json")) as f:
        manifest = json.load(f)
    assert manifest["sha256"] == b["sha256"] and manifest["tables"]["public.bk_items"] == 37
    assert manifest["migration_version"]
    assert not glob.glob(os.path.join(bk.bdir, ".*tmp"))

    listed = bk.get(BK, headers=root.headers).json()["backups"]
    assert listed[0]["name"] == b["name"]
    assert listed[0]["size_bytes"] == b["size_bytes"] and listed[0]["sha256"] == b["sha256"]

    r = verify(bk, root, b["name"])
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["valid"] is True
    assert body["checks"] == {"checksum": "passed", "toc": "passed", "restore": "passed"}
    # the scratch database is gone
    left = bk.pg.query("postgres", "SELECT datname FROM pg_database WHERE datname LIKE 'coredb_verify%'")
    assert left == []


def corrupt_copy(bk, root, mutate):
    """A fresh backup whose file is mutated and whose manifest is made to match
    (so the checksum passes and the deeper levels are exercised) or not."""
    b = create(bk, root)
    path = os.path.join(bk.bdir, b["name"] + ".dump")
    with open(path, "r+b") as f:
        data = bytearray(f.read())
        f.seek(0)
        f.truncate()
        f.write(mutate(data))
    return b


def test_flipped_byte_fails_checksum(bk, root):
    def flip(d):
        d[len(d) // 2] ^= 0x01
        return bytes(d)
    b = corrupt_copy(bk, root, flip)
    r = verify(bk, root, b["name"])
    assert_error(r, 422, "BACKUP_INVALID")
    assert r.json()["error"]["details"]["check"] == "checksum"


def test_truncated_fails(bk, root):
    b = corrupt_copy(bk, root, lambda d: bytes(d[: len(d) // 2]))
    r = verify(bk, root, b["name"])
    assert_error(r, 422, "BACKUP_INVALID")
    assert r.json()["error"]["details"]["check"] == "checksum"


def test_truncated_with_matching_manifest_fails_deeper(bk, root):
    """With the manifest rewritten to the truncated file's checksum, the table
    of contents or the test restore must still catch it."""
    import hashlib
    b = corrupt_copy(bk, root, lambda d: bytes(d[: len(d) * 2 // 3]))
    path = os.path.join(bk.bdir, b["name"] + ".dump")
    data = open(path, "rb").read()
    mpath = os.path.join(bk.bdir, b["name"] + ".json")
    m = json.load(open(mpath))
    m["sha256"], m["size_bytes"] = hashlib.sha256(data).hexdigest(), len(data)
    json.dump(m, open(mpath, "w"))
    r = verify(bk, root, b["name"])
    assert_error(r, 422, "BACKUP_INVALID")
    assert r.json()["error"]["details"]["check"] in ("toc", "restore")


def test_row_count_mismatch_fails_restore(bk, root):
    b = create(bk, root)
    mpath = os.path.join(bk.bdir, b["name"] + ".json")
    m = json.load(open(mpath))
    m["tables"]["public.bk_items"] += 1
    json.dump(m, open(mpath, "w"))
    r = verify(bk, root, b["name"])
    assert_error(r, 422, "BACKUP_INVALID")
    assert r.json()["error"]["details"]["check"] == "restore"
    assert r.json()["error"]["details"]["checks"]["checksum"] == "passed"


def test_hostile(bk, root):
    u = user(bk)
    p = premium(bk, root)
    for method, path in (("POST", BK), ("GET", BK), ("POST", BK + "/cleanup"),
                         ("POST", BK + "/coredb-20260101T000000000Z/verify")):
        assert_error(bk.request(method, path), 401)
        assert_error(bk.request(method, path, headers=u.headers), 403)
        assert_error(bk.request(method, path, headers=p.headers), 403)
    for bad in ("..%2F..%2Fetc%2Fpasswd", "..", "coredb-x", "coredb-20260101T000000000Z.json",
                "%2Fetc%2Fpasswd", "x'%3B DROP TABLE users;--"):
        r = bk.post(f"{BK}/{bad}/verify", headers=root.headers)
        assert r.status_code in (400, 404), (bad, r.status_code, r.text)
    r = bk.post(f"{BK}/coredb-bad/verify", headers=root.headers)
    assert_error(r, 400, "VALIDATION_FAILED")
    r = bk.post(f"{BK}/coredb-20200101T000000000Z/verify", headers=root.headers)
    assert_error(r, 404, "NOT_FOUND")
    r = bk.post(BK, headers={**root.headers, "Content-Type": "application/json"}, data="{not json")
    assert_error(r, 400, "INVALID_JSON")
    assert bk.pg.query(bk.db, "SELECT count(*) FROM public.users")[0][0] > 0


def stamp(created):
    return time.mktime(time.strptime(created[:19], "%Y-%m-%dT%H:%M:%S")) + int(created[20:23]) / 1000


def test_concurrent_creates_serialize(bk, root):
    # big enough that a dump takes a moment, so overlapping runs would show
    bk.pg.query(bk.db, "CREATE TABLE bk_mid AS SELECT g AS id, repeat('z', 200) AS pad"
                       " FROM generate_series(1, 200000) g")
    out = []

    def one():
        out.append(bk.post(BK, headers=root.headers, timeout=180))
    threads = [threading.Thread(target=one) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [r.status_code for r in out] == [201, 201], [r.text for r in out]
    names = {r.json()["name"] for r in out}
    assert len(names) == 2
    first, second = sorted((r.json() for r in out), key=lambda b: b["name"])
    # one after the other: the second began only once the first had finished
    assert stamp(second["created_at"]) - stamp(first["created_at"]) >= first["duration_ms"] / 1000 * 0.5, \
        (first, second)
    bk.pg.query(bk.db, "DROP TABLE bk_mid")
    for name in names:
        r = verify(bk, root, name)
        assert r.status_code == 200, r.text


def test_secrets_absent_from_cmdline_and_log(bk, root):
    bk.pg.query(bk.db, "CREATE TABLE bk_big AS SELECT g AS id, repeat('y', 200) AS pad"
                       " FROM generate_series(1, 300000) g")
    seen_dump = []
    leaks = []
    done = threading.Event()

    def sample():
        while not done.is_set():
            for c in glob.glob("/proc/[0-9]*/cmdline"):
                try:
                    text = open(c, "rb").read().replace(b"\0", b" ").decode(errors="replace")
                except OSError:
                    continue
                if "pg_dump" in text:
                    seen_dump.append(text)
                if SECRET_PW in text:
                    leaks.append(text)
            time.sleep(0.01)
    t = threading.Thread(target=sample)
    t.start()
    try:
        b = create(bk, root)
    finally:
        done.set()
        t.join()
    bk.pg.query(bk.db, "DROP TABLE bk_big")
    assert seen_dump, "pg_dump was never seen running"
    assert leaks == []
    assert SECRET_PW not in bk.log()
    assert b["tables"]["public.bk_big"] == 300000


def set_created(bdir, name, days_ago):
    mpath = os.path.join(bdir, name + ".json")
    m = json.load(open(mpath))
    m["created_at"] = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime(time.time() - days_ago * 86400))
    json.dump(m, open(mpath, "w"))


def test_retention(pg):
    d = backup_dir()
    inst = start_instance(pg, BACKUP_DIR=d, BACKUP_RETENTION_COUNT=2, BACKUP_RETENTION_DAYS=3)
    try:
        a = admin_of(inst)
        names = [create(inst, a)["name"] for _ in range(5)]   # oldest first
        # by count: all recent, nothing goes
        r = inst.post(BK + "/cleanup", headers=a.headers)
        assert r.status_code == 200, r.text
        assert r.json()["removed"] == []
        # by age: the three oldest are beyond the count; two of them are old
        set_created(d, names[0], 10)
        set_created(d, names[1], 5)
        r = inst.post(BK + "/cleanup", headers=a.headers).json()
        assert sorted(r["removed"]) == sorted(names[:2])
        assert not os.path.exists(os.path.join(d, names[0] + ".dump"))
        assert not os.path.exists(os.path.join(d, names[0] + ".json"))
        listed = [b["name"] for b in inst.get(BK, headers=a.headers).json()["backups"]]
        assert listed == list(reversed(names[2:]))
        # the only valid backup stays: corrupt the two newest (kept by count),
        # age the rest; the newest intact one survives its age
        for n in names[3:]:
            with open(os.path.join(d, n + ".dump"), "ab") as f:
                f.write(b"junk")
        set_created(d, names[2], 30)
        r = inst.post(BK + "/cleanup", headers=a.headers).json()
        assert r["removed"] == []
        assert os.path.exists(os.path.join(d, names[2] + ".dump"))
        # once a newer valid backup exists, the old one goes
        fresh = create(inst, a)["name"]
        r = inst.post(BK + "/cleanup", headers=a.headers).json()
        assert names[2] in r["removed"]
        assert fresh in r["kept"]
    finally:
        inst.stop_clean()


def test_cli_create_list_verify_cleanup(bk, root):
    env = cli_env(bk, BACKUP_DIR=bk.bdir)
    r = run_cli(["backup", "create", "--json"], env)
    assert r.returncode == 0, (r.stdout, r.stderr)
    made = json.loads(r.stdout)
    assert made["status"] == "success" and made["name"].startswith("coredb-")
    assert os.path.exists(os.path.join(bk.bdir, made["name"] + ".dump"))
    r = run_cli(["backup", "list", "--json"], env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["backups"][0]["name"] == made["name"]
    r = run_cli(["backup", "verify", made["name"], "--json"], env, timeout=300)
    assert r.returncode == 0, (r.stdout, r.stderr)
    assert json.loads(r.stdout)["checks"]["restore"] == "passed"
    r = run_cli(["backup", "verify", "../../etc/passwd", "--json"], env)
    assert r.returncode == 1 and json.loads(r.stdout)["error"]["code"] == "VALIDATION_FAILED"
    r = run_cli(["backup", "cleanup", "--json"], env)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["removed"] == [] and made["name"] in out["kept"]
    r = run_cli(["backup", "verify", "--json"], env)
    assert r.returncode == 2
    r = run_cli(["backup", "--help"], env)
    assert r.returncode == 0 and "coredb backup verify NAME" in r.stdout
    assert SECRET_PW not in r.stdout + r.stderr


def test_schedule_runs_once_across_two_instances(pg):
    d = backup_dir()
    db = pg.create_database()
    first = start_instance(pg, db=db, BACKUP_DIR=d, BACKUP_INTERVAL="3s")
    second = start_instance(pg, db=db, BACKUP_DIR=d, BACKUP_INTERVAL="3s")
    try:
        deadline = time.time() + 60
        while time.time() < deadline and len(glob.glob(os.path.join(d, "*.json"))) < 3:
            time.sleep(0.2)
        time.sleep(1.0)
        manifests = sorted(glob.glob(os.path.join(d, "*.json")))
        assert len(manifests) >= 3, manifests
        stamps = []
        for m in manifests:
            created = json.load(open(m))["created_at"]
            stamps.append(time.mktime(time.strptime(created[:19], "%Y-%m-%dT%H:%M:%S"))
                          + int(created[20:23]) / 1000)
        gaps = [b - a for a, b in zip(stamps, stamps[1:])]
        # one backup per interval across both instances, never two
        assert all(g >= 2.0 for g in gaps), gaps
        # each is logged once verified by a test restore, which can outlast the wait above
        verified = wait_for(lambda: (first.log() + second.log()).count("created and verified") >= 3, timeout=30)
        assert verified, (first.log() + second.log())[-3000:]
    finally:
        first.stop_clean()
        second.stop_clean()


def test_encrypted_backups(pg):
    import hashlib
    d = backup_dir()
    key = os.urandom(32).hex()
    inst = start_instance(pg, BACKUP_DIR=d, BACKUP_ENCRYPT="true", DB_ENCRYPTION_KEY=key)
    try:
        a = admin_of(inst)
        inst.pg.query(inst.db, "CREATE TABLE enc_items AS SELECT g AS id FROM generate_series(1, 70000) g")
        b = create(inst, a)
        assert b["encrypted"] is True and b["tables"]["public.enc_items"] == 70000
        path = os.path.join(d, b["name"] + ".dump")
        data = open(path, "rb").read()
        assert b"PGDMP" not in data[:64] and data[:8] == b"CDBENC1\n"
        assert hashlib.sha256(data).hexdigest() == b["sha256"]   # of the file as stored
        assert not glob.glob(os.path.join(d, ".*"))             # no plain archive left behind
        r = verify(inst, a, b["name"])
        assert r.status_code == 200, r.text
        assert r.json()["checks"]["restore"] == "passed"
        # one flipped byte: the checksum fails; with the manifest made to match,
        # decryption (the MAC) still refuses it
        flipped = bytearray(data)
        flipped[len(flipped) // 2] ^= 0x01
        open(path, "wb").write(bytes(flipped))
        r = verify(inst, a, b["name"])
        assert_error(r, 422, "BACKUP_INVALID")
        assert r.json()["error"]["details"]["check"] == "checksum"
        mpath = os.path.join(d, b["name"] + ".json")
        m = json.load(open(mpath))
        m["sha256"] = hashlib.sha256(bytes(flipped)).hexdigest()
        json.dump(m, open(mpath, "w"))
        r = verify(inst, a, b["name"])
        assert_error(r, 422, "BACKUP_INVALID")
        assert r.json()["error"]["details"]["check"] == "toc"
        assert "decrypt" in r.json()["error"]["message"]
        # truncated at a chunk boundary-ish point, manifest matching: no FINAL tag
        cut = data[: len(data) - 100]
        open(path, "wb").write(cut)
        m["sha256"], m["size_bytes"] = hashlib.sha256(cut).hexdigest(), len(cut)
        json.dump(m, open(mpath, "w"))
        r = verify(inst, a, b["name"])
        assert_error(r, 422, "BACKUP_INVALID")
        assert r.json()["error"]["details"]["check"] == "toc"
    finally:
        inst.stop_clean()


def test_a_created_backup_restores_by_its_name(bk, root):
    """The round trip of issue 13: `backup create` names what `restore` takes
    (NAME, its archive NAME.dump), and the restore brings a deleted row back."""
    bk.pg.query(bk.db, "CREATE TABLE bk_round (id int primary key, v text)")
    bk.pg.query(bk.db, "INSERT INTO bk_round VALUES (1, 'kept'), (2, 'kept too')")
    b = create(bk, root)
    bk.pg.query(bk.db, "DELETE FROM bk_round WHERE id = 2")
    r = bk.post(f"{BK}/{b['name']}/restore", json={"confirm": True}, headers=root.headers, timeout=120)
    assert r.status_code == 200, r.text
    assert r.json()["restored"] is True
    assert bk.pg.query(bk.db, "SELECT v FROM bk_round ORDER BY id") == [("kept",), ("kept too",)]
    proc = run_cli(["backup", "restore", b["name"], "--json"], cli_env(bk))  # no --yes: refused
    assert proc.returncode != 0
    assert json.loads(proc.stdout)["error"]["code"] == "VALIDATION_FAILED"


def test_an_encrypted_backup_restores(pg):
    """BACKUP_ENCRYPT: restore decrypts the stored archive to a temporary copy,
    restores from it, and leaves no plain copy behind."""
    d = backup_dir()
    inst = start_instance(pg, BACKUP_DIR=d, BACKUP_ENCRYPT="true", DB_ENCRYPTION_KEY=os.urandom(32).hex())
    try:
        a = admin_of(inst)
        inst.pg.query(inst.db, "CREATE TABLE enc_round (id int primary key)")
        inst.pg.query(inst.db, "INSERT INTO enc_round SELECT g FROM generate_series(1, 50) g")
        b = create(inst, a)
        assert b["encrypted"] is True
        inst.pg.query(inst.db, "DELETE FROM enc_round WHERE id > 10")
        r = inst.post(f"{BK}/{b['name']}/restore", json={"confirm": True}, headers=a.headers, timeout=120)
        assert r.status_code == 200, r.text
        assert inst.pg.query(inst.db, "SELECT count(*) FROM enc_round")[0][0] == 50
        assert not glob.glob(os.path.join(d, ".*")), os.listdir(d)   # the decrypted copy is gone
    finally:
        inst.stop_clean()
