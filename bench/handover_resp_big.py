# A large resp keyspace handed over (issue 21): one resp worker filled with KEYS keys of VALUE
# bytes each (1,000,000 × 1,024 B: ~1 GiB of values; `redis-cli --pipe`), then `host reload -g`.
# Measured: the hand-over as the master logs it (pause, state bytes, memfd), the longest wait a
# probing client sees (a PING at a time on its own connection, as fast as answers come), the
# peak resident memory of both workers during it (each one's VmHWM, and its anonymous and
# shared parts when its RSS was highest, sampled every 20 ms; the memfd's pages are shared
# memory), the machine's lowest MemAvailable, and the keyspace intact: DBSIZE, and a checksum of
# SAMPLE keys read before and after (a hash of their values, read on a connection that moved).
# Run: cargo build --release -p host -p host-plugin-resp && python3 bench/handover_resp_big.py
# Env: KEYS (1000000), VALUE (1024), SAMPLE (2000), HOST_BIN (target/release/host),
# HANDOVER_TIMEOUT (120 s: the host's default of 10 s bounds a hand-over this big on a loaded
# machine), KEEP=1 (keep the temporary directory with the host's log). Bounded: every wait has a
# timeout; only the host it started is stopped, by pid.
import os, random, threading, time
import redis

from handover_lib import HOST_BIN, Host, PingProbe, cleanup, fill_value, resp_checksum, resp_fill, since, tempdir

KEYS = int(os.environ.get("KEYS", "1000000"))
VALUE = int(os.environ.get("VALUE", "1024"))
SAMPLE = min(KEYS, int(os.environ.get("SAMPLE", "2000")))
d = tempdir("host-handover-bigresp-")
h = Host(d, ["--plugin-dir", os.path.dirname(HOST_BIN), "--plugin", "resp", "--count", "1", "--drain-timeout", "30",
             "--log-level", "warn,host::master=info", "--handover-timeout", os.environ.get("HANDOVER_TIMEOUT", "120")])


def status(pid):
    try:
        out = {}
        for line in open(f"/proc/{pid}/status"):
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM", "RssAnon", "RssShmem"):
                out[k] = int(v.split()[0]) * 1024
        return out
    except OSError:
        return None


def cpu_s(pid):
    """utime + stime of a process in seconds (100 ticks a second), None once it is gone."""
    try:
        f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(f[11]) + int(f[12])) / 100
    except (OSError, IndexError):
        return None


def meminfo(key):
    for line in open("/proc/meminfo"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024


def mem_available():
    return meminfo("MemAvailable")


MiB = 1024 * 1024
try:
    port = h.wait_ready()
    t0 = time.time()
    # The fill: RESP commands generated in pieces and piped to redis-cli, which reads the answers.
    fill_out = resp_fill(port, KEYS, VALUE)
    r = redis.Redis(port=port, socket_timeout=300)
    n_before = r.dbsize()
    fill_s = time.time() - t0
    rnd = random.Random(21)
    sample = [b"key:%d" % rnd.randrange(KEYS) for _ in range(SAMPLE)]

    sum_before = resp_checksum(r, sample)
    bad_values = sum(1 for k in sample[:200] if r.get(k) != fill_value(int(k.split(b":")[1]), VALUE))
    try:
        mem = r.info("memory")
    except redis.RedisError:
        mem = {}
    workers = h.workers()
    base = {w: status(w) for w in workers}
    print(f"keys={KEYS} value={VALUE} B: filled in {fill_s:.1f} s ({fill_out}); "
          f"DBSIZE {n_before}; used_memory {mem.get('used_memory', '?')}; worker RSS "
          + ", ".join(f"{w}: {s['VmRSS'] / MiB:.0f} MiB" for w, s in base.items() if s))

    # The probe: PING on its own connection, one at a time; its longest wait is the pause it sees.
    probe = PingProbe(redis.Redis(port=port, socket_timeout=300))
    stop = threading.Event()

    peaks, avail_min, shmem0 = {}, [mem_available()], meminfo("Shmem")
    cpu = {}  # pid: [first reading, last reading]
    shmem_max = [shmem0]

    def sampling():
        while not stop.is_set():
            for w in set(h.workers()) | set(peaks):
                c = cpu_s(w)
                if c is not None:
                    cpu.setdefault(w, [c, c])[1] = c
                s = status(w)
                if s:
                    old = peaks.get(w)
                    if old is None or s["VmRSS"] >= old["at_peak"]["VmRSS"]:
                        peaks[w] = {"hwm": s["VmHWM"], "at_peak": s}
                    else:
                        old["hwm"] = max(old["hwm"], s["VmHWM"])
            avail_min[0] = min(avail_min[0], mem_available())
            shmem_max[0] = max(shmem_max[0], meminfo("Shmem"))
            time.sleep(0.02)

    sampler = threading.Thread(target=sampling, daemon=True)
    sampler.start()
    time.sleep(1.0)
    t_reload = time.monotonic()
    out = h.ctl("reload", "-g", timeout=300)
    reload_s = time.monotonic() - t_reload
    line = None
    for _ in range(6000):
        line = next((l for l in h.lines() if "hand-over" in l), None)
        if line and len(h.workers()) <= 1:
            break
        time.sleep(0.05)
    done_s = time.monotonic() - t_reload
    time.sleep(1.0)
    stop.set()
    probe.stop()
    sampler.join(10)
    longest_before, longest_across = probe.longest(t_reload)
    across = [w for a, w in probe.waits if a >= t_reload]
    n_after = r.dbsize()
    sum_after = resp_checksum(r, sample)
    print(f"reload -g returned in {reload_s:.2f} s (rc {out.returncode}); the old worker gone {done_s:.1f} s after it")
    print(since(line, "hand-over") if line else "no hand-over line")
    print(f"probe: {len(across)} PINGs across it, longest wait {1000 * longest_across:.0f} ms "
          f"(before it: {1000 * longest_before:.1f} ms); errors {len(probe.errors)} {probe.errors[:2]}")
    for w, pk in sorted(peaks.items()):
        s = pk["at_peak"]
        role = "old" if w in workers else "new"
        print(f"{role} worker {w}: peak RSS {s['VmRSS'] / MiB:.0f} MiB (anonymous {s['RssAnon'] / MiB:.0f}, shared {s['RssShmem'] / MiB:.0f}), "
              f"VmHWM {pk['hwm'] / MiB:.0f} MiB; CPU used while sampled {cpu[w][1] - cpu[w][0]:.2f} s" if w in cpu else "")
    print(f"lowest MemAvailable during it: {avail_min[0] / MiB:.0f} MiB; shared memory (the memfd's pages, machine-wide Shmem) "
          f"at most {(shmem_max[0] - shmem0) / MiB:.0f} MiB over before; load average {os.getloadavg()[0]:.1f}")
    print(f"keyspace: DBSIZE {n_before} before, {n_after} after; checksum of {SAMPLE} sampled keys {sum_before} before, "
          f"{sum_after} after: {'intact' if n_before == n_after == KEYS and sum_before == sum_after and bad_values == 0 else 'CHANGED'}")
finally:
    h.stop()
    cleanup(d)
