# Hand-over of one http slot holding N idle keep-alive connections (HTTP/1.1, or h2c with
# `h2c` as the second argument), each of which answered one request before (bounded: every
# step has a timeout).
# Run: cargo build --release -p host -p host-plugin-http && python3 bench/handover_http.py 10000 [h2c]
# Prints how long `host reload -g` took, the master's hand-over line (connections moved, the
# pause) and how many connections answer a second request afterwards (all of them must).
import socket, sys, time

from handover_lib import Host, cleanup, tempdir

N = int(sys.argv[1]); mode = sys.argv[2] if len(sys.argv) > 2 else "h1"
d = tempdir("host-handover-http-")
h = Host(d, ["--plugin", "http", "--count", "1", "--max-connections", "50000", "--drain-timeout", "30"])
GET = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"
if mode == "h2c":
    import h2.connection, h2.config, h2.events

def request(s, conn, sid):
    """One GET on `s`; True when `Hello, World!` came back."""
    if conn is None:
        s.sendall(GET)
        buf = b""
        while not buf.endswith(b"Hello, World!"):
            chunk = s.recv(4096)
            if not chunk: return False
            buf += chunk
        return buf.startswith(b"HTTP/1.1 200") and b"onnection: close" not in buf
    conn.send_headers(sid, [(":method", "GET"), (":path", "/"), (":scheme", "http"), (":authority", "x")], end_stream=True)
    s.sendall(conn.data_to_send())
    body = b""
    while True:
        data = s.recv(65536)
        if not data: return False
        for e in conn.receive_data(data):
            if isinstance(e, h2.events.DataReceived): body += e.data
            if isinstance(e, h2.events.StreamEnded) and e.stream_id == sid: return body == b"Hello, World!"
            if isinstance(e, h2.events.ConnectionTerminated): return False
        s.sendall(conn.data_to_send())

socks = []
try:
    port = h.wait_ready()
    for i in range(N):
        s = socket.create_connection(("127.0.0.1", port)); s.settimeout(20)
        c = None
        if mode == "h2c":
            c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True)); c.initiate_connection()
        socks.append((s, c))
    before = sum(request(s, c, 1) for s, c in socks)
    t0 = time.time()
    h.reload()
    t1 = time.time()
    line = h.wait_handover(timeout=30)
    after = sum(request(s, c, 3) for s, c in socks)
    print(f"N={N} {mode}: answered before {before}/{N}; reload -g took {t1-t0:.3f}s; answered after on the same connection: {after}/{N}")
    print(line or "no hand-over line")
finally:
    for s, _ in socks: s.close()
    h.stop(); cleanup(d)
