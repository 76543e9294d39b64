"""A log destination that stops reading must not stop the service: with
stderr on a pipe nobody reads (a hung log shipper), coredb keeps answering,
drops the lines it cannot write, counts them, and still stops on SIGTERM.
Found by the chaos run (tests/chaos, CHAOS_LOG_STALL=1): before the fix a
blocking write(2) held the workers after about 250 lines."""
import os

import requests

from conftest import base_env
from datahelp import admin_env, admin_of
from servers import Coredb


def test_a_stalled_log_reader_does_not_stop_the_service(pg):
    env = admin_env()
    read_end, write_end = os.pipe()  # read_end is never read: the pipe fills and stays full
    inst = None
    try:
        inst = Coredb(base_env(pg, pg.create_database(), None, LOG_LEVEL="debug", **env), log_fd=write_end)
        inst.admin_email = env["COREDB_ADMIN_EMAIL"]
        # far more lines than a pipe holds (64 KiB: a few hundred lines), each answered in time
        session = requests.Session()
        for _ in range(1500):
            assert session.get(inst.base + "/health/live", timeout=5).status_code == 200
        # the service still does real work, and says what it dropped
        admin = admin_of(inst)
        metrics = inst.get("/metrics", headers=admin.headers, timeout=10).text
        dropped = [line for line in metrics.splitlines() if line.startswith("coredb_log_lines_dropped_total")]
        assert dropped and float(dropped[0].split()[-1]) > 100, dropped
        # and stops when told to
        assert inst.stop(timeout=30) == 0
    finally:
        if inst and inst.proc.poll() is None:
            inst.proc.kill()
            inst.proc.wait()
        os.close(read_end)
        os.close(write_end)
