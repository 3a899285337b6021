# New clients during a pre-copy hand-over (issue 21): one resp worker filled with KEYS keys of
# VALUE bytes, then `host reload -g`, while a probe opens a NEW connection after each answer
# (connect, PING, +PONG, close). Measured: the longest connect→PONG of the connections opened
# during the reload against the copy's duration (the master's hand-over line). A client that
# connects during the copy is served by the old worker at once and moves with the rest; were the
# old worker to stop accepting at the start, it would wait in the accept queue for the whole copy.
# Run: cargo build --release -p host -p host-plugin-resp && python3 bench/handover_resp_accept.py
# Env: KEYS (100000), VALUE (1000), HOST_BIN (target/release/host), KEEP=1 (keep the log).
# Bounded: every wait has a timeout; only the host it started is stopped, by pid.
import os, socket, threading, time

from handover_lib import HOST_BIN, Host, cleanup, pct, stop, tempdir

KEYS = int(os.environ.get("KEYS", "100000"))
VALUE = int(os.environ.get("VALUE", "1000"))
d = tempdir("host-handover-accept-")
h = Host(d, ["--plugin-dir", os.path.dirname(HOST_BIN), "--plugin", "resp", "--count", "1", "--drain-timeout", "30",
             "--handover-timeout", "60"])
try:
    port = h.wait_ready()
    s = socket.create_connection(("127.0.0.1", port), timeout=60)
    f = s.makefile("rb")
    for start in range(0, KEYS, 5000):
        end = min(KEYS, start + 5000)
        s.sendall(b"".join(b"SET k:%d %s\r\n" % (i, b"v" * VALUE) for i in range(start, end)))
        for _ in range(start, end):
            assert f.readline() == b"+OK\r\n"
    done = threading.Event()
    waits = []

    def probe():
        while not done.is_set():
            t = time.monotonic()
            c = socket.create_connection(("127.0.0.1", port), timeout=60)
            c.sendall(b"PING\r\n")
            assert c.recv(16).startswith(b"+PONG")
            c.close()
            waits.append((t, time.monotonic() - t))

    th = threading.Thread(target=probe)
    th.start()
    time.sleep(0.3)
    t0 = time.monotonic()
    out = h.reload()
    line = h.wait_handover(timeout=120)
    done.set()
    th.join(70)
    during = [w for t, w in waits if t >= t0]
    print(out.stdout.strip() or out.stderr.strip())
    print(line)
    print(f"new connections during the reload: {len(during)}; connect→PONG longest {max(during) * 1000:.1f} ms, "
          f"p99 {pct(during, 0.99) * 1000:.2f} ms, median {pct(during, 0.5) * 1000:.2f} ms")
finally:
    stop(h.p)
    cleanup(d)
