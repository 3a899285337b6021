# The gap clients see across a hand-over: one slot holds N text connections; PROBES of them
# keep sending numbered lines (each sends its next line as soon as the previous echo came back
# and INTERVAL_MS passed) while `host reload -g` moves them all to the new worker. Each probe's
# longest wait for an echo is the gap it saw; the script prints the gaps' p50/p99/max before
# and across the reload, and checks that every probe got every line back once, in order, and
# that all N connections still echo afterwards. Bounded: every wait has a timeout.
# Run: cargo build --release -p host -p host-plugin-text && python3 bench/handover_gap.py 10000
# Env: HOST_BIN (target/release/host), PROBES (100), INTERVAL_MS (20), HOST_NICE (a nice level
# for the host, e.g. -5, to keep other load on a shared machine out of the figure), HOST_ARGS
# (more flags, e.g. `--no-handover` for the drain side by side: the clients are closed then).
import os, selectors, socket, sys, threading, time

from handover_lib import Host, cleanup, pct, tempdir

N = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
PROBES = int(os.environ.get("PROBES", "100"))
INTERVAL = int(os.environ.get("INTERVAL_MS", "20")) / 1000
d = tempdir("host-handover-gap-")
host_args = os.environ.get("HOST_ARGS", "").split()
h = Host(d, ["--plugin", "text", "--count", "1", "--max-connections", str(N + 100), "--drain-timeout", "30"] + host_args,
         wrap=["nice", "-n", os.environ["HOST_NICE"]] if os.environ.get("HOST_NICE") else [])


class Probe:
    def __init__(self, s):
        self.s, self.seq, self.sent_at, self.buf, self.next_at = s, 0, None, b"", 0.0
        self.errors, self.gap = [], {"before": 0.0, "across": 0.0}


def probe_loop(probes, stop, phase):
    sel = selectors.DefaultSelector()
    for pr in probes:
        sel.register(pr.s, selectors.EVENT_READ, pr)
    while not stop.is_set():
        now = time.monotonic()
        for pr in probes:
            if pr.sent_at is None and now >= pr.next_at and not pr.errors:
                pr.seq += 1
                try:
                    pr.s.sendall(b"p%d\n" % pr.seq)
                except OSError as e:
                    pr.errors.append(f"send: {e}")
                    continue
                pr.sent_at = now
        for key, _ in sel.select(0.002):
            pr = key.data
            try:
                data = pr.s.recv(4096)
            except OSError as e:
                data = b""
            if not data:
                pr.errors.append("closed")
                sel.unregister(pr.s)
                continue
            pr.buf += data
            while b"\n" in pr.buf:
                line, pr.buf = pr.buf.split(b"\n", 1)
                if line != b"p%d" % pr.seq:
                    pr.errors.append(f"got {line!r}, expected p{pr.seq}")
                t = time.monotonic()
                if pr.sent_at is not None:
                    pr.gap[phase[0]] = max(pr.gap[phase[0]], t - pr.sent_at)
                pr.sent_at, pr.next_at = None, t + INTERVAL


try:
    port = h.wait_ready()
    socks = []
    for i in range(N):
        s = socket.create_connection(("127.0.0.1", port))
        s.settimeout(30)
        socks.append(s)
    step = max(1, N // PROBES)
    probe_socks = set(range(0, N, step)[:PROBES])
    probes = [Probe(socks[i]) for i in sorted(probe_socks)]
    stop, phase = threading.Event(), ["before"]
    th = threading.Thread(target=probe_loop, args=(probes, stop, phase), daemon=True)
    th.start()
    time.sleep(1.0)
    phase[0] = "across"
    h.reload()
    line = h.wait_handover(timeout=5 if "--no-handover" in host_args else 30)
    time.sleep(1.0)
    stop.set()
    th.join(10)
    lines = sum(pr.seq for pr in probes)
    errors = [e for pr in probes for e in pr.errors]
    for i, s in enumerate(socks):
        if i not in probe_socks:
            try:
                s.sendall(b"y%d\n" % i)
            except OSError:
                pass
    ok = 0
    for i, s in enumerate(socks):
        if i in probe_socks:
            continue
        buf = b""
        try:
            while not buf.endswith(b"\n"):
                chunk = s.recv(100)
                if not chunk:
                    break
                buf += chunk
        except OSError:
            pass
        ok += buf == b"y%d\n" % i
    before = [pr.gap["before"] * 1000 for pr in probes]
    across = [pr.gap["across"] * 1000 for pr in probes]
    closed = sum(1 for pr in probes if pr.errors)
    print(f"N={N} probes={len(probes)} interval={INTERVAL*1000:.0f}ms lines echoed by probes: {lines}, errors: {len(errors)} {errors[:3]}; probes closed: {closed}")
    print(f"longest wait for an echo, before the reload: p50 {pct(before, .5):.1f} ms, p99 {pct(before, .99):.1f} ms, max {max(before):.1f} ms")
    print(f"longest wait for an echo, across the reload: p50 {pct(across, .5):.1f} ms, p99 {pct(across, .99):.1f} ms, max {max(across):.1f} ms")
    print(f"the other connections echo after it: {ok}/{N - len(probes)}")
    print(line or "no hand-over line")
finally:
    h.stop()
    cleanup(d)
