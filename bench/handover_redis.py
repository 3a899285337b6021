# redis-benchmark across RELOADS `host reload -g` of the resp plugin (one worker: one keyspace),
# every reload a hand-over of its connections and keyspace: redis-benchmark must see no error,
# and a fixed dataset written before (KEYS keys) must be there after, byte for byte (its
# checksum), with DBSIZE not below it. Bounded: every wait has a timeout, redis-benchmark is
# stopped after the last reload.
# Run: cargo build --release -p host -p host-plugin-resp && python3 bench/handover_redis.py
# Env: HOST_BIN (target/release/host), RELOADS (10), KEYS (20000), CLIENTS (50).
import hashlib, os, re, signal, subprocess, time
import redis

from handover_lib import Host, cleanup, since, tempdir

RELOADS = int(os.environ.get("RELOADS", "10"))
KEYS = int(os.environ.get("KEYS", "20000"))
CLIENTS = os.environ.get("CLIENTS", "50")
d = tempdir("host-handover-redis-")
h = Host(d, ["--plugin", "resp", "--count", "1", "--drain-timeout", "30"])


def checksum(r):
    h = hashlib.sha256()
    for start in range(0, KEYS, 5000):
        names = [f"fixed:{i}" for i in range(start, min(KEYS, start + 5000))]
        for k, v in zip(names, r.mget(names)):
            h.update(k.encode() + b"=" + (v if v is not None else b"<nil>") + b"\n")
    return h.hexdigest()


bench = None
try:
    port = h.wait_ready()
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
        out = h.reload()
        assert out.returncode == 0, out.stdout + out.stderr
        line = h.wait_handover(n, timeout=30)
        m = re.search(r"paused (\d+) ms", line or "")
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
    moved = [since(l, "hand-over:").split(" service=")[0] for l in h.handover_lines()]
    print(f"{RELOADS} reload -g in {took:.1f} s under redis-benchmark -c {CLIENTS}: errors {len(errors)} {errors[:3]}")
    print(f"fixed dataset of {KEYS} keys: checksum {'unchanged' if before == after else 'CHANGED'}; DBSIZE after {dbsize}")
    print(f"pauses (ms): {pauses}")
    print(f"last hand-over: {moved[-1] if moved else 'none'}")
finally:
    if bench and bench.poll() is None:
        bench.kill()
    h.stop()
    cleanup(d)
