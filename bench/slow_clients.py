"""Holds N slow connections to a coredb for D seconds: each sends a partial
request head and then one byte a second (slowloris), and reconnects when the
server cuts it, so N stay held. Spread over 16 loopback addresses (under the
per-address cap). Bounded in time and count; loopback only.
Usage: slow_clients.py PORT N SECONDS  -> prints "held N cut K"."""
import selectors
import socket
import sys
import time

port, n, seconds = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3])
sel = selectors.DefaultSelector()
cut = 0
opened = 0


def open_one(i):
    global opened
    s = socket.socket()
    s.setblocking(False)
    s.bind((f"127.0.1.{i % 16 + 1}", 0))
    s.connect_ex(("127.0.0.1", port))
    sel.register(s, selectors.EVENT_READ, i)
    opened += 1
    return s


socks = {i: open_one(i) for i in range(n)}
time.sleep(0.2)
for s in socks.values():
    try:
        s.send(b"GET /health/live HTTP/1.1\r\nHost: x\r\n")
    except OSError:
        pass
end = time.time() + seconds
next_tick = time.time() + 1
while time.time() < end and opened < n * 20:
    for key, _ in sel.select(timeout=0.1):
        s, i = key.fileobj, key.data
        try:
            data = s.recv(4096)
        except OSError:
            data = b""
        if not data:  # cut by the server: count it and hold another one
            cut += 1
            sel.unregister(s)
            s.close()
            socks[i] = open_one(i)
    if time.time() >= next_tick:
        next_tick += 1
        for s in socks.values():
            try:
                s.send(b"a")
            except OSError:
                pass
print(f"held {n} cut {cut}")
