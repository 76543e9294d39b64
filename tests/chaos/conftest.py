"""Chaos driver: puts tests/e2e (servers.py: PgServer, RedisServer, Coredb)
and this directory on the import path; the knobs are in knobs.py."""
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
E2E = os.path.join(os.path.dirname(HERE), "e2e")
for path in (HERE, E2E):
    if path not in sys.path:
        sys.path.insert(0, path)
