"""bench/bench_http.py - the one HTTP call the bench setup scripts make
against a running coredb (standard library only)."""
import json
import urllib.error
import urllib.request


def call(base, method, path, body=None, token=None):
    """(status, parsed JSON body or None); error answers keep their status."""
    req = urllib.request.Request(base + path, method=method,
                                 data=None if body is None else json.dumps(body).encode())
    req.add_header("Content-Type", "application/json")
    if token:
        req.add_header("Authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            raw = r.read()
    except urllib.error.HTTPError as e:
        status, raw = e.code, e.read()
    else:
        status = r.status
    try:
        return status, (json.loads(raw) if raw else None)
    except ValueError:
        return status, raw[:300]
