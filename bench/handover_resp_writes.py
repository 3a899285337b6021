# Pre-copy under writes (issue 21): one resp worker filled with KEYS keys of VALUE bytes, then
# `host reload -g` while a write-heavy client SETs new keys of KEYLEN bytes as fast as it can
# (pipelined, DEPTH commands in flight). resp's copy walks the keyspace upwards: new keys land
# past its cursor and the steps copy them (nothing recorded); changes to keys it passed are
# recorded and sent in rounds (`plugins/resp/src/precopy.rs`). A copy that outruns its bounds
# (8 rounds past the end, or twice the keyspace + 256 MiB sent) ends early: the rest of the
# keyspace and every recorded key go in the last part, with the connections stopped. (Before
# rounds, the copy ended early once 64 MiB of keys were recorded, each new key one more.)
# Measured: the master's hand-over line (pause, bytes copied while
# serving, state bytes), whether the copy ended early (bytes copied while serving, rounds
# included, < the keyspace's), the last part's bytes, the longest wait of the writer (a batch's answers) and of
# a PING probe on its own connection across the reload, and the keyspace afterwards: DBSIZE ==
# KEYS + every acknowledged write, and a checksum of SAMPLE keys of the fill unchanged.
# MODE=overwrite instead writes WRITE_KEYS keys over and over (the recorded set stays small:
# the copy runs to its end).
# Run: cargo build --release -p host -p host-plugin-resp && python3 bench/handover_resp_writes.py
# Env: KEYS (300000), VALUE (1024), KEYLEN (1000), WVALUE (16), DEPTH (256), MODE (new),
# WRITE_KEYS (1000, MODE=overwrite), SAMPLE (2000), HOST_BIN (target/release/host),
# HANDOVER_TIMEOUT (60 s), KEEP=1. Loopback only; every wait is bounded; only the host it
# started is stopped, by pid.
import os, random, re, socket, threading, time
import redis

from handover_lib import HOST_BIN, Host, PingProbe, cleanup, resp_checksum, resp_cmd, resp_fill, since, tempdir

KEYS = int(os.environ.get("KEYS", "300000"))
VALUE = int(os.environ.get("VALUE", "1024"))
KEYLEN = int(os.environ.get("KEYLEN", "1000"))
WVALUE = int(os.environ.get("WVALUE", "16"))
DEPTH = int(os.environ.get("DEPTH", "256"))
MODE = os.environ.get("MODE", "new")
WRITE_KEYS = int(os.environ.get("WRITE_KEYS", "1000"))
SAMPLE = min(KEYS, int(os.environ.get("SAMPLE", "2000")))
d = tempdir("host-handover-writes-")
h = Host(d, ["--plugin-dir", os.path.dirname(HOST_BIN), "--plugin", "resp", "--count", "1", "--drain-timeout", "30",
             "--log-level", "warn,host::master=info", "--handover-timeout", os.environ.get("HANDOVER_TIMEOUT", "60")])


def wkey(n):
    """The writer's `n`th key: KEYLEN bytes, distinct per `n` (MODE=new) or one of WRITE_KEYS."""
    n = n if MODE == "new" else n % WRITE_KEYS
    head = b"w:%d:" % n
    return head + b"k" * max(0, KEYLEN - len(head))


class Writer:
    """SETs as fast as answers come: DEPTH commands sent, then their DEPTH `+OK`s read. Counts
    the acknowledged writes and times the longest wait for a batch's answers, per phase."""

    def __init__(self, port):
        self.s = socket.create_connection(("127.0.0.1", port), timeout=60)
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.acked, self.n, self.errors = 0, 0, []
        self.longest = {"before": 0.0, "across": 0.0}
        self.phase = "before"
        self.stop = threading.Event()
        self.th = threading.Thread(target=self.run, daemon=True)

    def run(self):
        v = b"x" * WVALUE
        want = b"+OK\r\n" * DEPTH
        while not self.stop.is_set():
            batch = b"".join(resp_cmd(b"SET", wkey(self.n + i), v) for i in range(DEPTH))
            a = time.monotonic()
            try:
                self.s.sendall(batch)
                got = b""
                while len(got) < len(want):
                    chunk = self.s.recv(65536)
                    if not chunk:
                        raise OSError("closed")
                    got += chunk
            except OSError as e:
                self.errors.append(repr(e))
                return
            if got != want:
                self.errors.append(f"unexpected answer {got[:60]!r}")
                return
            self.longest[self.phase] = max(self.longest[self.phase], time.monotonic() - a)
            self.n += DEPTH
            self.acked = self.n


MiB = 1024 * 1024
try:
    port = h.wait_ready()
    t0 = time.time()
    resp_fill(port, KEYS, VALUE)
    r = redis.Redis(port=port, socket_timeout=120)
    n_before = r.dbsize()
    rnd = random.Random(21)
    sample = [b"key:%d" % rnd.randrange(KEYS) for _ in range(SAMPLE)]

    sum_before = resp_checksum(r, sample)
    # What a step writes of an entry: its key and value and 20 bytes (lengths, deadline).
    fill_bytes = sum(len(b"key:%d" % i) + VALUE + 20 for i in range(KEYS))
    keyspace_bytes = sum(len(b"key:%d" % i) + VALUE for i in range(KEYS))
    print(f"keys={KEYS} value={VALUE} B ({keyspace_bytes / MiB:.0f} MiB of keys and values), filled in "
          f"{time.time() - t0:.1f} s, DBSIZE {n_before}; writer: MODE={MODE}, keys of {KEYLEN} B, values of {WVALUE} B, "
          f"{DEPTH} in flight")

    probe = PingProbe(redis.Redis(port=port, socket_timeout=120))
    w = Writer(port)
    w.th.start()
    time.sleep(1.0)
    acked_at_reload, t_reload = w.acked, time.monotonic()
    # The keyspace when the copy begins is at least this (the writer's keys so far added).
    written = acked_at_reload if MODE == "new" else min(acked_at_reload, WRITE_KEYS)
    at_reload = fill_bytes + written * (KEYLEN + WVALUE + 20)
    w.phase = "across"
    out = h.ctl("reload", "-g", timeout=300)
    line = h.wait_handover(1, timeout=300)
    done_s = time.monotonic() - t_reload
    time.sleep(1.0)
    w.stop.set()
    probe.stop()
    w.th.join(60)
    rate = (w.acked - acked_at_reload) / max(done_s, 1e-9)
    longest_before, longest_across = probe.longest(t_reload)
    across = [x for a, x in probe.waits if a >= t_reload]
    print(f"reload -g rc {out.returncode}; the hand-over line {done_s:.2f} s after it; the writer's acknowledged SETs "
          f"{w.acked} ({rate:,.0f}/s meanwhile), errors {w.errors[:2]}")
    print(since(line, "hand-over:") if line else "no hand-over line:\n" + h.text()[-2000:])
    m = re.search(r"(\d+) bytes of state(?: \(memfd\))? \((\d+) of them copied in (\d+) steps over (\d+) ms", line or "")
    if m:
        state, copied, steps, copy_ms = (int(x) for x in m.groups())
        early = copied < at_reload
        print(f"copy while serving: {copied / MiB:.0f} MiB in {steps} steps over {copy_ms} ms, of a keyspace of at "
              f"least {at_reload / MiB:.0f} MiB when it began: "
              f"{'ENDED EARLY' if early else 'ran to its end'}; "
              f"last part {(state - copied) / MiB:.0f} MiB (the keys not reached and the {MODE} keys recorded)")
    print(f"writer's longest wait for a batch of {DEPTH}: {1000 * w.longest['before']:.0f} ms before, "
          f"{1000 * w.longest['across']:.0f} ms across the reload")
    print(f"probe: {len(across)} PINGs across it, longest wait {1000 * longest_across:.0f} ms "
          f"(before it: {1000 * longest_before:.1f} ms); errors {len(probe.errors)} {probe.errors[:2]}")
    n_after = r.dbsize()
    sum_after = resp_checksum(r, sample)
    want = KEYS + (w.acked if MODE == "new" else min(w.acked, WRITE_KEYS))
    print(f"keyspace: DBSIZE {n_before} before, {n_after} after (fill + acknowledged writes: {want}); checksum of {SAMPLE} "
          f"sampled keys {sum_before} before, {sum_after} after: "
          f"{'intact' if n_after == want and sum_before == sum_after and not w.errors else 'CHANGED'}")
finally:
    h.stop()
    cleanup(d)
