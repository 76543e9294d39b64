"""Connection bounds of the HTTP server, against the real binary with real
PostgreSQL and Redis: 10,000 idle keep-alive connections held at once, the
per-address cap's clean refusal, slowloris clients cut by the head and body
deadlines without starving others, and 1,000 connections dropped in the
middle of a request, after which the descriptors return to the baseline.

Everything is bounded (counts and time) and on loopback. Figures are printed
(`make soak` runs pytest with -s) for docs/reliability.md."""
import json
import os
import selectors
import socket
import threading
import time

import requests

from datahelp import QUERY, start_instance, user
from servers import Coredb
from conftest import base_env
from soakutil import (DEFAULTS, get_once, nofile_limit, percentile, pg, raise_nofile,  # noqa: F401
                      read_response, redis_server, sample, source_address, wait_fds_at_most)

IDLE_CONNS = int(os.environ.get("SOAK_IDLE_CONNS", "10000"))
PER_IP_CAP = 256  # HTTP_MAX_CONNECTIONS_PER_IP's default (docs/configuration.md)
DROP_ROUNDS = int(os.environ.get("SOAK_DROP_ROUNDS", "3"))  # of 1,000 dropped connections each
LIVE = b"GET /health/live HTTP/1.1\r\nHost: soak\r\n\r\n"


def live_ok(resp):
    return resp is not None and resp[0] == 200 and resp[1].get("connection", "").lower() != "close"


def test_ten_thousand_idle_keepalive_connections(pg, redis_server):
    """IDLE_CONNS clients each make one request and then hold their keep-alive
    connection; all are held at once (a second request on every one of them
    is answered), /health/live stays quick for a new client meanwhile, and
    closing them all gives the descriptors back. The default per-address cap
    stays on: the clients come from 250 per loopback address."""
    have = raise_nofile(IDLE_CONNS + 2000)
    assert have >= IDLE_CONNS + 500, f"the test client's open-file limit is {have}: raise the hard limit"
    inst = Coredb(base_env(pg, pg.create_database(), redis_server, HTTP_IDLE_TIMEOUT="600", **DEFAULTS))
    socks = []
    try:
        pid = inst.proc.pid
        limit = nofile_limit(pid)
        assert limit >= IDLE_CONNS + 100, f"coredb's open-file limit is {limit}"
        assert get_once(inst.port)[0] == 200
        base = sample(pid)

        t0 = time.monotonic()
        batch = []
        for i in range(IDLE_CONNS):
            s = socket.socket()
            s.bind((source_address(i), 0))
            s.settimeout(10)
            s.connect(("127.0.0.1", inst.port))
            s.sendall(LIVE)
            socks.append(s)
            batch.append(s)
            if len(batch) == 250:  # read a batch's answers before the next, so the backlog stays short
                for b in batch:
                    assert live_ok(read_response(b)), f"connection {len(socks)} was not served"
                batch = []
        for b in batch:
            assert live_ok(read_response(b))
        open_secs = time.monotonic() - t0

        held = sample(pid)
        assert held["fds"] >= base["fds"] + IDLE_CONNS, (base, held)

        # a new client is still served quickly while they are held
        lat = []
        for i in range(20):
            status, secs = get_once(inst.port, source="127.0.200.1")
            assert status == 200
            lat.append(secs)
        assert max(lat) < 1.0, f"/health/live took up to {max(lat):.3f} s with {IDLE_CONNS} held"

        # every held connection is still open and answers a second request
        t1 = time.monotonic()
        for start in range(0, len(socks), 250):
            part = socks[start:start + 250]
            for s in part:
                s.sendall(LIVE)
            for s in part:
                assert live_ok(read_response(s)), "a held keep-alive connection was lost"
        again_secs = time.monotonic() - t1
        assert inst.proc.poll() is None

        for s in socks:
            s.close()
        socks = []
        after = wait_fds_at_most(pid, base["fds"] + 2, 30)
        assert after <= base["fds"] + 2, f"descriptors: {base['fds']} before, {after} after closing"
        print(f"\n[idle] {IDLE_CONNS} keep-alive connections opened and served in {open_secs:.1f} s, "
              f"held; second request on all in {again_secs:.1f} s; coredb RSS {base['rss_kib']} KiB "
              f"-> {held['rss_kib']} KiB held ({(held['rss_kib'] - base['rss_kib']) / IDLE_CONNS:.2f} KiB "
              f"per connection), fds {base['fds']} -> {held['fds']} -> {after} after close, "
              f"threads {held['threads']}; /health/live on a new connection meanwhile: "
              f"p50 {percentile(lat, 50) * 1000:.1f} ms, max {max(lat) * 1000:.1f} ms; "
              f"coredb open-file limit {limit}")
    finally:
        for s in socks:
            s.close()
        inst.stop_clean()


def test_one_connection_beyond_the_per_address_cap_is_refused_cleanly(pg, redis_server):
    """PER_IP_CAP connections from one address are held; the next one is
    answered 429 RATE_LIMITED in the error envelope and closed; other
    addresses are served meanwhile, and the address is served again once
    one of its connections closes."""
    inst = Coredb(base_env(pg, pg.create_database(), redis_server, HTTP_IDLE_TIMEOUT="120", **DEFAULTS))
    socks = []
    try:
        addr = "127.0.9.1"
        for _ in range(PER_IP_CAP):
            s = socket.create_connection(("127.0.0.1", inst.port), timeout=10, source_address=(addr, 0))
            s.sendall(LIVE)
            socks.append(s)
        for s in socks:
            assert live_ok(read_response(s))
        with socket.create_connection(("127.0.0.1", inst.port), timeout=10, source_address=(addr, 0)) as extra:
            extra.sendall(LIVE)
            resp = read_response(extra)
            assert resp is not None and resp[0] == 429, resp
            err = json.loads(resp[2])["error"]
            assert err["code"] == "RATE_LIMITED", err
            extra.settimeout(5)
            assert extra.recv(1) == b"", "the refused connection was not closed"
        assert get_once(inst.port, source="127.0.9.2")[0] == 200
        socks.pop().close()
        deadline = time.time() + 5
        status = None
        while time.time() < deadline and status != 200:
            status = get_once(inst.port, source=addr)[0]
            time.sleep(0.05)
        assert status == 200, "the address was not served again after one of its connections closed"
    finally:
        for s in socks:
            s.close()
        inst.stop_clean()


def test_slowloris_clients_are_cut_without_starving_others(pg, redis_server):
    """SLOW clients trickle a request head one byte a second, SLOW_BODY a
    body; each is cut by HTTP_HEADER_TIMEOUT / HTTP_BODY_TIMEOUT (3 s here),
    while a normal client's requests all succeed quickly."""
    timeout = 3
    n_head, n_body = 300, 60
    inst = Coredb(base_env(pg, pg.create_database(), redis_server,
                           HTTP_HEADER_TIMEOUT=str(timeout), HTTP_BODY_TIMEOUT=str(timeout), **DEFAULTS))
    sel = selectors.DefaultSelector()
    opened = {}
    cut_after = []
    normal = {"lat": [], "bad": []}
    stop = threading.Event()

    def normal_client():
        with requests.Session() as sess:
            while not stop.is_set():
                t0 = time.monotonic()
                try:
                    r = sess.get(inst.base + "/health/live", timeout=5)
                    ok = r.status_code == 200
                except requests.RequestException as e:
                    ok, r = False, e
                normal["lat"].append(time.monotonic() - t0)
                if not ok:
                    normal["bad"].append(str(r)[:200])
                # and a new connection each time too, like a fresh client
                status, secs = get_once(inst.port, source="127.0.50.1")
                normal["lat"].append(secs)
                if status != 200:
                    normal["bad"].append(f"fresh connection: {status}")
                time.sleep(0.05)

    try:
        for i in range(n_head + n_body):
            s = socket.socket()
            s.bind((f"127.0.40.{i % 16 + 1}", 0))
            s.settimeout(5)
            s.connect(("127.0.0.1", inst.port))
            if i < n_head:
                s.sendall(b"GET /health/live HTTP/1.1\r\nHost: soak\r\nX-Slow: ")
            else:
                s.sendall(b"POST /api/v1/auth/login HTTP/1.1\r\nHost: soak\r\n"
                          b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{")
            s.setblocking(False)
            sel.register(s, selectors.EVENT_READ, i)
            opened[s] = time.monotonic()
        worker = threading.Thread(target=normal_client, daemon=True)
        worker.start()
        end = time.monotonic() + timeout + 6   # bounded: every slow client should be gone well before
        next_tick = time.monotonic() + 1
        while opened and time.monotonic() < end:
            for key, _ in sel.select(timeout=0.1):
                s = key.fileobj
                try:
                    data = s.recv(4096)
                except OSError:
                    data = b""
                if not data:
                    cut_after.append(time.monotonic() - opened.pop(s))
                    sel.unregister(s)
                    s.close()
            if time.monotonic() >= next_tick:
                next_tick += 1
                for s in list(opened):
                    try:
                        s.send(b"a")
                    except OSError:
                        pass
        stop.set()
        worker.join(10)
        assert not opened, f"{len(opened)} of {n_head + n_body} slow clients were still held " \
                           f"{timeout + 6} s later"
        assert min(cut_after) >= timeout - 0.5, f"a slow client was cut after {min(cut_after):.2f} s"
        assert max(cut_after) <= timeout + 2.5, f"a slow client was held {max(cut_after):.2f} s"
        assert not normal["bad"], normal["bad"][:5]
        assert len(normal["lat"]) >= 20, "the normal client barely ran"
        assert max(normal["lat"]) < 1.0, f"a normal request took {max(normal['lat']):.3f} s"
        print(f"\n[slowloris] {n_head} slow-head + {n_body} slow-body clients (1 byte/s), "
              f"HTTP_HEADER_TIMEOUT=HTTP_BODY_TIMEOUT={timeout}: cut after "
              f"{min(cut_after):.2f}-{max(cut_after):.2f} s; a normal client meanwhile: "
              f"{len(normal['lat'])} requests, 0 failed, p50 {percentile(normal['lat'], 50) * 1000:.1f} ms, "
              f"max {max(normal['lat']) * 1000:.1f} ms")
    finally:
        stop.set()
        for s in list(opened):
            s.close()
        sel.close()
        inst.stop_clean()


def drop(port, kind, token, i):
    """Opens a connection, sends part or all of a request, and drops it."""
    s = socket.socket()
    try:
        s.bind((source_address(i, net=60), 0))
        s.settimeout(5)
        s.connect(("127.0.0.1", port))
        if kind == "partial-head":
            s.sendall(b"GET /health/live HTTP/1.1\r\nHost: so")
        elif kind == "partial-body":
            s.sendall(b"POST /api/v1/data/query HTTP/1.1\r\nHost: soak\r\nContent-Type: application/json\r\n"
                      b"Authorization: Bearer " + token.encode() + b"\r\nContent-Length: 200\r\n\r\n{\"tab")
        elif kind == "query-unread":   # the worker answers a client that is gone
            body = json.dumps({"table": "projects", "filters": {"title": f"drop{i}"}}).encode()
            s.sendall(b"POST /api/v1/data/query HTTP/1.1\r\nHost: soak\r\nContent-Type: application/json\r\n"
                      b"Authorization: Bearer " + token.encode() + b"\r\nContent-Length: "
                      + str(len(body)).encode() + b"\r\n\r\n" + body)
        elif kind == "reset":          # RST instead of FIN, mid-head
            s.sendall(b"GET /health/live HTTP/1.1\r\n")
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    finally:
        s.close()


def test_a_thousand_connections_dropped_mid_request(pg, redis_server):
    """1,000 clients drop their connection mid-head, mid-body, before reading
    the answer to a real query, or with a reset; three rounds of it; after
    each, coredb's descriptors are back at the baseline, and it serves
    normally afterwards."""
    # fixed pool sizes: PostgreSQL's pool (MIN = MAX) and Redis's, which
    # opens connections as concurrency needs them up to REDIS_POOL_SIZE
    inst = start_instance(pg, redis_server, 2, DB_POOL_MIN="3", DB_POOL_MAX="3", REDIS_POOL_SIZE="2")
    try:
        pid = inst.proc.pid
        a = user(inst)

        def warm(i):
            r = inst.post(QUERY, json={"table": "projects", "filters": {"title": f"warm{i}"}},
                          headers=a.headers)
            assert r.status_code == 200, r.text
        # warm, concurrently: both pools are full before the baseline
        ws = [threading.Thread(target=warm, args=(i,)) for i in range(20)]
        for t in ws:
            t.start()
        for t in ws:
            t.join(30)
        time.sleep(0.5)
        base = sample(pid)
        kinds = ["partial-head", "partial-body", "query-unread", "reset"]
        rounds, fds_after, rss_after, secs = DROP_ROUNDS, [], [], []
        for rnd in range(rounds):   # each round: 10 waves of 100 concurrent drops
            t0 = time.monotonic()
            for wave in range(10):
                n = (rnd * 10 + wave) * 100
                ws = [threading.Thread(target=drop, args=(inst.port, kinds[i % 4], a.token, n + i))
                      for i in range(100)]
                for t in ws:
                    t.start()
                for t in ws:
                    t.join(30)
                assert not any(t.is_alive() for t in ws)
            secs.append(time.monotonic() - t0)
            assert inst.proc.poll() is None, inst.log()[-3000:]
            # the half-sent ones are cut at the latest by the header/body
            # deadline; FIN/RST ones at once
            after = wait_fds_at_most(pid, base["fds"] + 4, 40)
            assert after <= base["fds"] + 4, \
                f"descriptors: {base['fds']} before, {after} after round {rnd + 1} of drops"
            fds_after.append(after)
            rss_after.append(sample(pid, reads=10)["rss_kib"])
        for i in range(20):
            r = inst.post(QUERY, json={"table": "projects", "filters": {"title": f"after{i}"}},
                          headers=a.headers)
            assert r.status_code == 200, r.text
        assert inst.get("/health").status_code == 200
        end = sample(pid)
        print(f"\n[dropped] {rounds} x 1000 connections dropped mid-request ({', '.join(kinds)}; "
              f"250 each per round) in {', '.join(f'{x:.1f}' for x in secs)} s; fds {base['fds']} before "
              f"-> {fds_after} after each round; RSS {base['rss_kib']} -> {rss_after} KiB; "
              f"threads {base['threads']} -> {end['threads']}")
        # RSS is reported, not bounded: after a round it is the allocator's
        # high-water mark of that round's peak (100 connections at once), which
        # rises in random steps of about 1 MiB over the first rounds and then
        # stays (measured over 12 rounds: 16.3 MiB after the first, 18.9 MiB
        # from the fifth on); a bound on it would measure the peak, not a
        # leak. Leaks are the soak's and make valgrind's to find.
    finally:
        inst.stop_clean()
