# redis-benchmark across RELOADS `host reload -g` of the resp plugin (one worker: one keyspace),
# every reload a hand-over of its connections and keyspace: redis-benchmark must see no error,
# and a fixed dataset written before (KEYS keys) must be there after, byte for byte (its
# checksum), with DBSIZE not below it. Bounded: every wait has a timeout, redis-benchmark is
# stopped after the last reload.
# Run: cargo build --release -p host -p host-plugin-resp && python3 bench/handover_redis.py
# Env: HOST_BIN (target/release/host), RELOADS (10), KEYS (20000), CLIENTS (50).
import hashlib, os, re, signal, subprocess, sys, tempfile, time
import redis

RELOADS = int(os.environ.get("RELOADS", "10"))
KEYS = int(os.environ.get("KEYS", "20000"))
CLIENTS = os.environ.get("CLIENTS", "50")
host = os.path.abspath(os.environ.get("HOST_BIN", "target/release/host"))
d = tempfile.mkdtemp(prefix="host-handover-redis-")
log = open(f"{d}/log", "w")
p = subprocess.Popen([host, "--plugin", "resp", "--listen", "127.0.0.1:0", "--count", "1",
                      "--pid-file", f"{d}/host.pid", "--drain-timeout", "30"], stdout=log, stderr=log, cwd=d)


def log_text():
    return open(f"{d}/log").read()


def checksum(r):
    h = hashlib.sha256()
    for start in range(0, KEYS, 5000):
        names = [f"fixed:{i}" for i in range(start, min(KEYS, start + 5000))]
        for k, v in zip(names, r.mget(names)):
            h.update(k.encode() + b"=" + (v if v is not None else b"<nil>") + b"\n")
    return h.hexdigest()


bench = None
try:
    port = None
    for _ in range(400):
        a = re.search(r"address=127\.0\.0\.1:(\d+)", log_text())
        if "host ready" in log_text() and a:
            port = int(a.group(1))
            break
        time.sleep(0.05)
    assert port, "the host did not start"
    r = redis.Redis(port=port, socket_timeout=30)
    for start in range(0, KEYS, 5000):
        pipe = r.pipeline(transaction=False)
        for i in range(start, min(KEYS, start + 5000)):
            pipe.set(f"fixed:{i}", f"value-{i}-" + "x" * (i % 64))
        pipe.execute()
    before = checksum(r)
    bench = subprocess.Popen(["redis-benchmark", "-p", str(port), "-c", CLIENTS, "-n", "100000000", "-r", "100000",
                              "-t", "set,get,incr,lpush", "-l", "-q"],
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(1.0)
    pauses = []
    t0 = time.time()
    for n in range(1, RELOADS + 1):
        out = subprocess.run([host, "reload", "-g", "--pid-file", f"{d}/host.pid"], capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stdout + out.stderr
        for _ in range(600):
            lines = [l for l in log_text().splitlines() if "hand-over:" in l]
            if len(lines) >= n:
                break
            time.sleep(0.05)
        m = re.search(r"paused (\d+) ms", lines[n - 1])
        pauses.append(int(m.group(1)) if m else -1)
        time.sleep(0.5)
    took = time.time() - t0
    bench.send_signal(signal.SIGINT)
    try:
        out, _ = bench.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        bench.kill()
        out, _ = bench.communicate()
    bench_alive_until_stopped = "Error" not in out and "error" not in out.lower()
    errors = [l for l in out.replace("\r", "\n").splitlines() if "rror" in l]
    after = checksum(r)
    dbsize = r.dbsize()
    moved = [l[l.find("hand-over:"):].split(" service=")[0] for l in log_text().splitlines() if "hand-over:" in l]
    print(f"{RELOADS} reload -g in {took:.1f} s under redis-benchmark -c {CLIENTS}: errors {len(errors)} {errors[:3]}")
    print(f"fixed dataset of {KEYS} keys: checksum {'unchanged' if before == after else 'CHANGED'}; DBSIZE after {dbsize}")
    print(f"pauses (ms): {pauses}")
    print(f"last hand-over: {moved[-1] if moved else 'none'}")
finally:
    if bench and bench.poll() is None:
        bench.kill()
    p.terminate()
    p.wait(10)
