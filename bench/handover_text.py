# Hand-over of one slot holding N text connections (bounded: every step has a timeout).
# Run: cargo build --release -p host -p host-plugin-text && python3 bench/handover_text.py 10000
# Prints how long `host reload -g` took, the master's hand-over line (connections moved, the
# pause) and how many connections echo afterwards (all of them must).
import os, re, socket, subprocess, sys, tempfile, time
N = int(sys.argv[1]); plugin = sys.argv[2] if len(sys.argv) > 2 else "text"
host = os.path.abspath(os.environ.get("HOST_BIN", "target/release/host"))
d = tempfile.mkdtemp(prefix="host-handover-"); os.makedirs(d, exist_ok=True)
log = open(f"{d}/log", "w")
p = subprocess.Popen([host, "--plugin", plugin, "--listen", "127.0.0.1:0", "--count", "1", "--pid-file", f"{d}/host.pid", "--max-connections", "50000", "--drain-timeout", "30"], stdout=log, stderr=log, cwd=d)
try:
    port = None
    for _ in range(200):
        t = open(f"{d}/log").read()
        m = re.search(r"host ready", t)
        a = re.search(r"address=127\.0\.0\.1:(\d+)", t)
        if m and a: port = int(a.group(1)); break
        time.sleep(0.05)
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
    r = subprocess.run([host, "reload", "-g", "--pid-file", f"{d}/host.pid"], capture_output=True, text=True, timeout=120)
    t1 = time.time()
    for _ in range(400):
        t = open(f"{d}/log").read()
        if "hand-over:" in t: break
        time.sleep(0.05)
    line = [l for l in open(f"{d}/log").read().splitlines() if "hand-over:" in l]
    for i, s in enumerate(socks): s.sendall(b"y%d\n" % i)
    ok = 0
    for i, s in enumerate(socks):
        buf = b""
        while not buf.endswith(b"\n"): buf += s.recv(100)
        ok += buf == b"y%d\n" % i
    print(f"N={N} reload -g took {t1-t0:.3f}s; echoed after: {ok}/{N}")
    print(line[0][line[0].find("hand-over:"):] if line else "no hand-over line")
finally:
    p.terminate(); p.wait(10)
