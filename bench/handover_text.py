# Hand-over of one slot holding N text connections (bounded: every step has a timeout).
# Run: cargo build --release -p host -p host-plugin-text && python3 bench/handover_text.py 10000
# Prints how long `host reload -g` took, the master's hand-over line (connections moved, the
# pause) and how many connections echo afterwards (all of them must).
import socket, sys, time

from handover_lib import Host, cleanup, tempdir

N = int(sys.argv[1]); plugin = sys.argv[2] if len(sys.argv) > 2 else "text"
d = tempdir("host-handover-")
h = Host(d, ["--plugin", plugin, "--count", "1", "--max-connections", "50000", "--drain-timeout", "30"])
try:
    port = h.wait_ready()
    socks = []
    for i in range(N):
        s = socket.create_connection(("127.0.0.1", port)); s.settimeout(20)
        socks.append(s)
    for i, s in enumerate(socks): s.sendall(b"x%d\n" % i)
    for i, s in enumerate(socks):
        buf = b""
        while not buf.endswith(b"\n"): buf += s.recv(100)
        assert buf == b"x%d\n" % i
    t0 = time.time()
    h.reload()
    t1 = time.time()
    line = h.wait_handover(timeout=20)
    for i, s in enumerate(socks): s.sendall(b"y%d\n" % i)
    ok = 0
    for i, s in enumerate(socks):
        buf = b""
        while not buf.endswith(b"\n"): buf += s.recv(100)
        ok += buf == b"y%d\n" % i
    print(f"N={N} reload -g took {t1-t0:.3f}s; echoed after: {ok}/{N}")
    print(line or "no hand-over line")
finally:
    h.stop(); cleanup(d)
