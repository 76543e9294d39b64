#!/usr/bin/env python3
"""check-layers.py - fails on a dependency that points the wrong way.

The library's layers (docs/architecture.md), lowest first:

    core -> store -> security -> {identity, data, management} -> service -> http -> cli

A file may depend on its own layer and on layers below it, never on one
above, and never sideways between identity, data and management. (The CLI
sits on the HTTP front end only because `coredb serve` runs it; http never
reaches into cli.) Two checks:

1. #include lines of src/ and include/coredb/: every header has a layer
   (src/<layer>/..., or the table PUBLIC below for include/coredb/).
2. With --objects DIR (the build directory, as `make lint` passes it): the
   symbols each object file uses and defines (nm), so a call that reaches
   up without an include (a function declared by hand, a header of the
   wrong layer) is caught too; and no circle of calls between files inside a
   layer, except the groups listed in ALLOWED_CYCLES with their reason.

Exit 0 when clean, 1 with one line per bad edge otherwise.
"""
import os
import re
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

RANK = {"core": 0, "store": 1, "security": 2, "identity": 3, "data": 3, "management": 3,
        "service": 4, "http": 5, "cli": 6}   # cli is the program: `coredb serve` runs the HTTP front end

# The layer of each public header: the lowest layer whose code it describes.
PUBLIC = {
    "error.h": "core", "log.h": "core", "config.h": "core", "role.h": "core",
    "version.h": "core", "idempotency.h": "core", "result.h": "core",
    "metrics.h": "core",
    "principal.h": "security", "audit.h": "security",
    "users.h": "identity", "sessions.h": "identity",
    "data.h": "data",
    "migrate.h": "management", "backup.h": "management", "health.h": "management", "tables.h": "management",
    "restore.h": "management",
    "migrate_runs.h": "management",
    "dbauth.h": "management",
    "access.h": "management",
    "monitor.h": "management",
    "leases.h": "management",
    "encryption.h": "management",
    "collections.h": "management",
    "documents.h": "data",
    "vectors.h": "data",
    "service.h": "service",
    "http.h": "http",
    "coredb.h": "embedder",   # the umbrella: for programs using the library, never for its own files
}

# Circles of calls between files of one layer that are one piece of machinery.
ALLOWED_CYCLES = {
    # the HTTP event loop: the server owns loops, a loop's connections make
    # requests, the router finds their handlers in the routes_* tables, and
    # handlers answer through request.c, back to the connection and loop
    frozenset({"http/server", "http/conn", "http/request", "http/router", "http/admit",
               "http/routes_auth", "http/routes_data", "http/routes_health",
               "http/routes_test", "http/routes_users", "http/routes_admin",
               "http/routes_migrations",
               # new route tables of issues 10 and 12 join the same machinery
               "http/routes_audit", "http/routes_dbauth", "http/routes_access",
               "http/routes_metrics", "http/routes_monitor", "http/routes_openapi",
               "http/routes_leases",
               "http/routes_encryption",
               "http/routes_collections",
               # admission on the loop hands requests to the server's workers and back
               "http/loop_admit",
               # a miss run on the loop answers there or goes to the workers, like admission
               "http/loop_query",
               # a read on a lease's connection, run on the loop the same way
               "http/loop_lease",
               # a transaction run on the loop, its outbox too (or finished on a worker), answered on the loop
               "http/loop_tx"}),
}

INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)


def layer_of_path(rel):
    """Layer of a file given relative to ROOT, or None when not layered."""
    parts = rel.split("/")
    if parts[0] == "src" and len(parts) > 2:
        return parts[1] if parts[1] in RANK else None
    if parts[0] == "include" and len(parts) == 3 and parts[1] == "coredb":
        return PUBLIC.get(parts[2], "unknown")
    return None


def resolve(including, name):
    """Path (relative to ROOT) of an #include "name" seen in file including."""
    here = os.path.dirname(including)
    for cand in (os.path.join(here, name), os.path.join("include", name), os.path.join("src", name)):
        if os.path.exists(os.path.join(ROOT, cand)):
            return os.path.normpath(cand)
    return None


def allowed(src_layer, dst_layer):
    if dst_layer is None or src_layer is None:
        return True
    if dst_layer == "embedder":
        return src_layer == "embedder"
    if src_layer == "embedder":
        return True
    if dst_layer == "unknown" or src_layer == "unknown":
        return False
    if src_layer == dst_layer:
        return True
    return RANK[dst_layer] < RANK[src_layer]


def sources():
    for top in ("src", "include/coredb"):
        for dirpath, _, files in os.walk(os.path.join(ROOT, top)):
            for f in sorted(files):
                if f.endswith((".c", ".cc", ".h")):     # .cc: src/data/vec_hnsw.cc, layer data
                    yield os.path.relpath(os.path.join(dirpath, f), ROOT)


def check_includes():
    bad = []
    for rel in sources():
        src_layer = layer_of_path(rel)
        if src_layer == "unknown":
            bad.append(f"{rel}: public header without a layer (add it to PUBLIC in {sys.argv[0]})")
            continue
        with open(os.path.join(ROOT, rel), encoding="utf-8", errors="replace") as fh:
            text = fh.read()
        for name in INCLUDE.findall(text):
            dst = resolve(rel, name)
            if dst is None:
                continue
            dst_layer = layer_of_path(dst)
            if not allowed(src_layer, dst_layer):
                bad.append(f"{rel} ({src_layer}) includes {name} ({dst_layer})")
    return bad


def nm_symbols(obj):
    out = subprocess.run(["nm", "-P", obj], capture_output=True, text=True, check=False).stdout
    defined, undefined = set(), set()
    for line in out.splitlines():
        f = line.split()
        if len(f) < 2:
            continue
        sym, kind = f[0], f[1]
        if kind == "U":
            undefined.add(sym)
        elif kind in "TDBRCVW":       # global definitions; statics (lowercase) stay in their file
            defined.add(sym)
    return defined, undefined


def strongly_connected(nodes, edges):
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = set()
            while True:
                w = stack.pop()
                on.discard(w)
                comp.add(w)
                if w == v:
                    break
            out.append(comp)

    sys.setrecursionlimit(10000)
    for v in sorted(nodes):
        if v not in index:
            visit(v)
    return out


def check_objects(build):
    objs = {}
    base = os.path.join(build, "src")
    for dirpath, _, files in os.walk(base):
        for f in files:
            if f.endswith(".o"):
                path = os.path.join(dirpath, f)
                unit = os.path.relpath(path, base)[:-2]     # "identity/users"
                if any(os.path.exists(os.path.join(ROOT, "src", unit + ext)) for ext in (".c", ".cc")):
                    objs[unit] = nm_symbols(path)
    owner = {}
    for unit, (defined, _) in objs.items():
        for s in defined:
            owner[s] = unit
    edges, bad = {}, []
    for unit, (_, undefined) in objs.items():
        for s in sorted(undefined):
            dst = owner.get(s)
            if not dst or dst == unit:
                continue
            edges.setdefault(unit, set()).add(dst)
            a, b = unit.split("/")[0], dst.split("/")[0]
            if not allowed(a, b):
                bad.append(f"src/{unit}.c ({a}) calls {s} of src/{dst}.c ({b})")
    for comp in strongly_connected(objs.keys(), edges):
        if len(comp) < 2:
            continue
        if any(comp <= group for group in ALLOWED_CYCLES):
            continue
        bad.append("circle of calls between files: " + " <-> ".join(sorted(comp)))
    return bad


def main():
    args = sys.argv[1:]
    bad = check_includes()
    checked = "includes"
    if len(args) == 2 and args[0] == "--objects":
        if os.path.isdir(os.path.join(args[1], "src")):
            bad += check_objects(args[1])
            checked += " and calls"
    if bad:
        for line in bad:
            print("check-layers: " + line)
        print(f"check-layers: {len(bad)} bad edge(s)")
        return 1
    print(f"check-layers: OK ({checked}: core -> store -> security -> identity|data|management -> service -> http -> cli)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
