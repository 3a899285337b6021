# What a resp hand-over that runs past its timeout does to the keyspace (bench/README.md, hand-over
# third round): one resp worker with KEYS keys of 1 KiB, `--handover-timeout 1` (the least), so
# that writing or adopting the state outlasts it on a loaded machine; `host reload -g`; a redis-py
# connection sends `SET marker …` during the hand-over; then `GET marker` and `DBSIZE` on a fresh
# connection, and the hand-over's outcome as the master logs it. Expected from a hand-over that
# loses nothing: DBSIZE KEYS + 1 whatever the outcome. The outcome depends on timing (which side's
# deadline passes first): run it a few times.
# Run: cargo build --release -p host -p host-plugin-resp && python3 bench/handover_resp_timeout.py 300000
# Env: HOST_BIN (target/release/host), TIMEOUT (1, seconds). Bounded; stops only its own host.
import os, subprocess, sys, time
import redis

from handover_lib import HOST_BIN, Host, cleanup, since, tempdir

KEYS = int(sys.argv[1]) if len(sys.argv) > 1 else 300000
d = tempdir("host-handover-timeout-")
h = Host(d, ["--plugin-dir", os.path.dirname(HOST_BIN), "--plugin", "resp", "--count", "1", "--log-level", "warn,host::master=info",
             "--handover-timeout", os.environ.get("TIMEOUT", "1")])
try:
    port = h.wait_ready()
    fill = subprocess.Popen(["redis-cli", "-p", str(port), "--pipe", "--pipe-timeout", "120"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    v = b"v" * 1024
    for s in range(0, KEYS, 20000):
        fill.stdin.write(b"".join(b"*3\r\n$3\r\nSET\r\n$%d\r\nkey:%d\r\n$1024\r\n%s\r\n" % (len(b"key:%d" % i), i, v)
                                  for i in range(s, min(KEYS, s + 20000))))
    fill.stdin.close()
    fill.stdout.read()
    fill.wait(300)
    w = redis.Redis(port=port, socket_timeout=120)
    print(f"keys={KEYS}: DBSIZE {w.dbsize()}, CLIENT ID {w.client_id()}")
    h.reload(timeout=60)
    time.sleep(0.3)
    t0 = time.time()
    try:
        print(f"SET during the hand-over: {w.set('marker', 'written-during-handover')}, answered after {time.time() - t0:.2f} s")
    except redis.RedisError as e:
        print(f"SET during the hand-over failed: {e!r}")
    end = time.monotonic() + 120
    while time.monotonic() < end:
        t = h.text()
        if "hand-over" in t and "worker stopped" in t:
            break
        time.sleep(0.1)
    time.sleep(1)
    try:
        print(f"the same client afterwards: CLIENT ID {w.client_id()} (redis-py reconnects by itself)")
    except redis.RedisError as e:
        print(f"the same client afterwards: {e!r}")
    fresh = redis.Redis(port=port, socket_timeout=60)
    n = fresh.dbsize()
    print(f"a fresh connection: GET marker {fresh.get('marker')!r}, DBSIZE {n} ({'intact' if n == KEYS + 1 else f'{KEYS + 1 - n} keys lost'})")
    for line in h.lines():
        if "hand-over" in line:
            print(since(line, "host::")[:200])
finally:
    h.stop()
    cleanup(d)
