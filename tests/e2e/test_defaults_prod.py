"""Safe defaults and the production role (issue 18, items 5 and 7).

Item 5: the embedded cluster trusts local connections and its admin is
generated, so a development start listens on loopback unless HOST says
otherwise; with a configured database the default stays 0.0.0.0 (API.md).
The listening address is read from the kernel's socket table, so no test
traffic leaves loopback."""
import os
import uuid

from servers import Coredb, scratch_dir

LISTEN = "0A"


def listen_addresses(port):
    """Local addresses (as text) with a TCP socket in LISTEN state on port."""
    found = set()
    for table, width in (("/proc/net/tcp", 8), ("/proc/net/tcp6", 32)):
        try:
            lines = open(table).read().splitlines()[1:]
        except FileNotFoundError:
            continue
        for line in lines:
            fields = line.split()
            addr, port_hex = fields[1].split(":")
            if fields[3] != LISTEN or int(port_hex, 16) != port:
                continue
            if width == 8:
                found.add(".".join(str(b) for b in reversed(bytes.fromhex(addr))))
            else:
                found.add("::" if int(addr, 16) == 0 else addr)
    return found


def embedded_dir():
    cwd = os.path.join(scratch_dir(), f"defaults-{uuid.uuid4().hex[:8]}")
    os.makedirs(cwd)
    os.chmod(cwd, 0o755)
    return cwd


def test_embedded_listens_on_loopback_unless_host_is_explicit():
    cwd = embedded_dir()
    # HOST="" is unset for the loader (the harness otherwise sets 127.0.0.1)
    inst = Coredb({"HOST": ""}, cwd=cwd, wait=False)
    try:
        inst.wait_live(120)
        assert listen_addresses(inst.port) == {"127.0.0.1"}
        log = inst.log()
        assert "serve.loopback_only" in log and "HOST=0.0.0.0" in log, log[-2000:]
    finally:
        inst.stop_clean()

    inst = Coredb({"HOST": "0.0.0.0"}, cwd=cwd, wait=False)
    try:
        inst.wait_live(120)
        assert listen_addresses(inst.port) == {"0.0.0.0"}
        assert "serve.loopback_only" not in inst.log()
    finally:
        inst.stop_clean()


def test_configured_database_keeps_the_documented_default(start_coredb):
    inst = start_coredb(HOST="")
    assert listen_addresses(inst.port) == {"0.0.0.0"}
    assert "serve.loopback_only" not in inst.log()
