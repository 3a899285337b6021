# What the hand-over scripts (bench/handover_*.py) share: a host started on 127.0.0.1 with an
# OS-chosen port and its log in a temporary directory, the readiness wait, the log's lines and
# hand-over lines, `host reload`/`upgrade`/`status` through the control socket, percentiles, the
# probes that time the gap clients see across a reload (whatever protocol they speak), and the
# cleanup (only the processes a script started, by pid; the directory unless KEEP=1).
# Every wait is bounded. Imported by the scripts next to it (python3 bench/handover_x.py puts
# bench/ on sys.path).
import os, re, selectors, shutil, signal, subprocess, sys, tempfile, threading, time

HOST_BIN = os.path.abspath(os.environ.get("HOST_BIN", "target/release/host"))
HANDOVER = r"hand-over: (\d+) connections moved, (\d+) drained.*?paused (\d+) ms"


def tempdir(prefix):
    """A fresh directory for the logs and the pid file; `cleanup` removes it."""
    return tempfile.mkdtemp(prefix=prefix)


def cleanup(d):
    """Removes `d`, or keeps it (and says where) with KEEP=1."""
    if os.environ.get("KEEP"):
        print(f"kept {d}")
    else:
        shutil.rmtree(d, ignore_errors=True)


def pct(xs, q):
    """The q-quantile (0..1) of `xs` by rank, 0.0 for none."""
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else 0.0


def stop(p, sig=signal.SIGINT, timeout=30):
    """Stops one process this script started: `sig`, then SIGKILL after `timeout` s."""
    if p.poll() is None:
        p.send_signal(sig)
    try:
        p.wait(timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(10)


def since(text, marker):
    """`text` from `marker` on (a log line without its timestamp and level)."""
    return text[text.find(marker):] if marker in text else text


class Host:
    """One `host` master started in `d` (log `{d}/{name}.log`, pid file `{d}/{name}.pid`) with
    `--listen 127.0.0.1:0` and `args`; `wrap` goes before it (e.g. `nice -n -5`)."""

    def __init__(self, d, args, name="host", wrap=(), binary=None):
        self.d, self.name = d, name
        self.bin = binary or HOST_BIN
        self.log_path, self.pid_file = f"{d}/{name}.log", f"{d}/{name}.pid"
        self.cmd = list(wrap) + [self.bin, "--listen", "127.0.0.1:0", "--pid-file", self.pid_file] + list(args)
        log = open(self.log_path, "w")
        self.p = subprocess.Popen(self.cmd, stdout=log, stderr=log, cwd=d)
        self.port = None

    def wait_ready(self, timeout=20.0):
        """The port once the log says `host ready` with its address; exits the script with the
        log's tail when the host does not start in `timeout` s."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            t = self.text()
            a = re.search(r"address=127\.0\.0\.1:(\d+)", t)
            if "host ready" in t and a:
                self.port = int(a.group(1))
                return self.port
            if self.p.poll() is not None:
                break
            time.sleep(0.05)
        sys.exit(f"the host did not start:\n{self.text()[-2000:]}")

    def text(self):
        return open(self.log_path, errors="replace").read()

    def lines(self):
        return self.text().splitlines()

    def count(self, pattern):
        """How many log lines match `pattern` (a regular expression)."""
        return sum(1 for l in self.lines() if re.search(pattern, l))

    def wait_count(self, pattern, n, timeout):
        """True once `n` log lines match `pattern`, False after `timeout` s."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if self.count(pattern) >= n:
                return True
            time.sleep(0.05)
        return False

    def handover_lines(self):
        """The master's hand-over report lines (`hand-over: N connections moved, …`)."""
        return [l for l in self.lines() if "hand-over:" in l]

    def wait_handover(self, n=1, timeout=30.0):
        """The `n`th hand-over line, from `hand-over:` on, or None after `timeout` s."""
        self.wait_count(r"hand-over:", n, timeout)
        found = self.handover_lines()
        return since(found[n - 1], "hand-over:") if len(found) >= n else None

    def ctl(self, *args, timeout=120):
        """`host <args> --pid-file …` (reload, upgrade, status): its CompletedProcess."""
        return subprocess.run([self.bin, *args, "--pid-file", self.pid_file], capture_output=True, text=True, timeout=timeout)

    def reload(self, timeout=120):
        """`host reload -g`."""
        return self.ctl("reload", "-g", timeout=timeout)

    def workers(self):
        """The pids of the master's children (its workers)."""
        try:
            return [int(c) for c in open(f"/proc/{self.p.pid}/task/{self.p.pid}/children").read().split()]
        except OSError:
            return []

    def stop(self, sig=signal.SIGINT, timeout=30):
        stop(self.p, sig, timeout)


class Probe:
    """A client on socket `s` that sends numbered messages, the next one as soon as the last
    came back and the interval passed; its longest wait for one, per phase (`before`, `across`
    the reload), is the gap it saw. `buf` holds what it received and did not parse yet."""

    def __init__(self, s, buf=b""):
        self.s, self.seq, self.sent_at, self.buf, self.next_at = s, 0, None, buf, 0.0
        self.errors, self.gap = [], {"before": 0.0, "across": 0.0}


class Speech:
    """How probes speak: `encode(seq)` is the bytes of message `seq`, `split(buf)` the complete
    messages at the start of `buf` and the rest, `want(seq)` what message `seq` comes back as."""

    def __init__(self, encode, split, want):
        self.encode, self.split, self.want = encode, split, want


def probe_loop(probes, stop, phase, interval, speech):
    """Runs `probes` until `stop` is set, each timing its messages into `phase[0]`'s gap; a
    closed connection, a failed send or a message out of turn is an error of its probe."""
    sel = selectors.DefaultSelector()
    for pr in probes:
        sel.register(pr.s, selectors.EVENT_READ, pr)
    while not stop.is_set():
        now = time.monotonic()
        for pr in probes:
            if pr.sent_at is None and now >= pr.next_at and not pr.errors:
                pr.seq += 1
                try:
                    pr.s.sendall(speech.encode(pr.seq))
                except OSError as e:
                    pr.errors.append(f"send: {e}")
                    continue
                pr.sent_at = now
        for key, _ in sel.select(0.002):
            pr = key.data
            try:
                data = pr.s.recv(4096)
            except OSError:
                data = b""
            if not data:
                pr.errors.append("closed")
                sel.unregister(pr.s)
                continue
            got, pr.buf = speech.split(pr.buf + data)
            for m in got:
                if m != speech.want(pr.seq):
                    pr.errors.append(f"got {m!r}, expected {speech.want(pr.seq)!r}")
                t = time.monotonic()
                if pr.sent_at is not None:
                    pr.gap[phase[0]] = max(pr.gap[phase[0]], t - pr.sent_at)
                pr.sent_at, pr.next_at = None, t + interval


def probe_across_reload(host, probes, interval, speech, timeout=30.0):
    """Runs `probes` for a second, then across `host reload -g` until a second after its
    hand-over line (waited for at most `timeout` s); returns that line (None if none came)."""
    stop, phase = threading.Event(), ["before"]
    th = threading.Thread(target=probe_loop, args=(probes, stop, phase, interval, speech), daemon=True)
    th.start()
    time.sleep(1.0)
    phase[0] = "across"
    host.reload()
    line = host.wait_handover(1, timeout=timeout)
    time.sleep(1.0)
    stop.set()
    th.join(10)
    return line


def print_gaps(probes, what):
    """The probes' longest waits for `what` (p50, p99, max) before and across the reload."""
    for phase in ("before", "across"):
        gaps = [pr.gap[phase] * 1000 for pr in probes]
        print(f"longest wait for {what}, {phase} the reload: p50 {pct(gaps, .5):.1f} ms, "
              f"p99 {pct(gaps, .99):.1f} ms, max {max(gaps):.1f} ms")


def resp_cmd(*parts):
    """One RESP command (an array of bulk strings)."""
    return b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts)


def fill_value(i, size):
    """The value of `key:{i}` in a fill: `{i}:` padded with `v` to `size` bytes."""
    head = b"%d:" % i
    return head + b"v" * (size - len(head))


def resp_fill(port, keys, size):
    """SETs `key:{i}` to `fill_value(i, size)` for i < `keys` through `redis-cli --pipe`
    (generated in pieces); its last line of output."""
    value = lambda i: fill_value(i, size)  # noqa: E731
    pipe = subprocess.Popen(["redis-cli", "-p", str(port), "--pipe", "--pipe-timeout", "120"], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    for start in range(0, keys, 20000):
        pipe.stdin.write(b"".join(resp_cmd(b"SET", b"key:%d" % i, value(i)) for i in range(start, min(keys, start + 20000))))
    pipe.stdin.close()
    out = pipe.stdout.read().decode(errors="replace").strip()
    pipe.wait(300)
    return out.splitlines()[-1] if out else ""


def resp_checksum(r, keys):
    """A hash of the values of `keys` read with MGET (500 at a time) on redis-py client `r`."""
    import hashlib
    h = hashlib.sha256()
    for start in range(0, len(keys), 500):
        for v in r.mget(keys[start:start + 500]):
            h.update(v or b"<nil>")
    return h.hexdigest()[:16]


class PingProbe:
    """PINGs on a connection of its own (redis-py client `r`), one at a time, as fast as answers
    come, until `stop()`: `waits` holds (start, wait) of each, `errors` what failed."""

    def __init__(self, r):
        self.r, self.waits, self.errors = r, [], []
        self.r.ping()
        self.done = threading.Event()
        self.th = threading.Thread(target=self.run, daemon=True)
        self.th.start()

    def run(self):
        while not self.done.is_set():
            a = time.monotonic()
            try:
                self.r.ping()
            except Exception as e:  # noqa: BLE001 - counted and shown
                self.errors.append(repr(e))
                time.sleep(0.01)
                continue
            self.waits.append((a, time.monotonic() - a))
            time.sleep(0.001)

    def stop(self):
        self.done.set()
        self.th.join(10)

    def longest(self, since_t):
        """The longest wait of the PINGs sent before `since_t`, and of those sent from it on."""
        return (max((w for a, w in self.waits if a < since_t), default=0.0),
                max((w for a, w in self.waits if a >= since_t), default=0.0))
