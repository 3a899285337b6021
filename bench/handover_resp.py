# Hand-over of a resp worker holding N keys (one redis-py connection; bounded by timeouts).
# Run: cargo build --release -p host -p host-plugin-resp && python3 bench/handover_resp.py 1000000
import os, re, subprocess, sys, tempfile, time, redis
N = int(sys.argv[1]); host = os.path.abspath(os.environ.get("HOST_BIN", "target/release/host"))
d = tempfile.mkdtemp(prefix="host-handover-resp-")
log = open(f"{d}/log", "w")
p = subprocess.Popen([host, "--plugin", "resp", "--listen", "127.0.0.1:0", "--count", "1", "--pid-file", f"{d}/host.pid", "--drain-timeout", "30"], stdout=log, stderr=log, cwd=d)
try:
    port = None
    for _ in range(200):
        t = open(f"{d}/log").read(); a = re.search(r"address=127\.0\.0\.1:(\d+)", t)
        if "host ready" in t and a: port = int(a.group(1)); break
        time.sleep(0.05)
    r = redis.Redis(port=port, socket_timeout=60)
    for start in range(0, N, 10000):
        pipe = r.pipeline(transaction=False)
        for i in range(start, min(N, start + 10000)): pipe.set(f"key:{i}", "v" * 32)
        pipe.execute()
    t0 = time.time()
    out = subprocess.run([host, "reload", "-g", "--pid-file", f"{d}/host.pid"], capture_output=True, text=True, timeout=120)
    t1 = time.time()
    for _ in range(600):
        if "hand-over:" in open(f"{d}/log").read(): break
        time.sleep(0.05)
    line = [l for l in open(f"{d}/log").read().splitlines() if "hand-over:" in l]
    t2 = time.time(); n = r.dbsize(); t3 = time.time()
    print(f"keys={N} reload -g {t1-t0:.3f}s; dbsize after {n} (answered in {1000*(t3-t2):.1f} ms)")
    print(line[0][line[0].find("hand-over:"):] if line else "no hand-over line")
finally:
    p.terminate(); p.wait(10)
