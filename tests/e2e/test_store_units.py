"""The store layer's unit tests that need a real PostgreSQL, run on this one.

tests/unit/store/pg_async.c (the loops' own connections), pg_borrow.c
(leases on the loops) and pool.c (the blocking pool's recovery) skip their
real-server cases unless COREDB_TEST_PG_CONNINFO names a server; here they
get this suite's PostgreSQL, and the binary built beside COREDB_BIN (so the
sanitizer pass runs the sanitizer build of them)."""
import os
import subprocess

import pytest

from servers import COREDB_BIN


@pytest.mark.parametrize("unit", ["pg_async", "pg_borrow", "pool"])
def test_unit_test_against_real_postgresql(pg, unit):
    binary = os.path.join(os.path.dirname(COREDB_BIN), "tests", "store", unit)
    if not os.path.exists(binary):
        pytest.skip("unit binary not built (make unit-bins)")
    proc = subprocess.run([binary], env={**os.environ, "COREDB_TEST_PG_CONNINFO": pg.url()},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "SKIPPED" not in proc.stdout, proc.stdout
