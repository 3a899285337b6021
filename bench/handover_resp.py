# Hand-over of a resp worker holding N keys (one redis-py connection; bounded by timeouts).
# Run: cargo build --release -p host -p host-plugin-resp && python3 bench/handover_resp.py 1000000
import sys, time, redis

from handover_lib import Host, cleanup, tempdir

N = int(sys.argv[1])
d = tempdir("host-handover-resp-")
h = Host(d, ["--plugin", "resp", "--count", "1", "--drain-timeout", "30"])
try:
    port = h.wait_ready()
    r = redis.Redis(port=port, socket_timeout=60)
    for start in range(0, N, 10000):
        pipe = r.pipeline(transaction=False)
        for i in range(start, min(N, start + 10000)): pipe.set(f"key:{i}", "v" * 32)
        pipe.execute()
    t0 = time.time()
    h.reload()
    t1 = time.time()
    line = h.wait_handover(timeout=30)
    t2 = time.time(); n = r.dbsize(); t3 = time.time()
    print(f"keys={N} reload -g {t1-t0:.3f}s; dbsize after {n} (answered in {1000*(t3-t2):.1f} ms)")
    print(line or "no hand-over line")
finally:
    h.stop(); cleanup(d)
