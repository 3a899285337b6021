# What the hand-over scripts (bench/handover_*.py) share: a host started on 127.0.0.1 with an
# OS-chosen port and its log in a temporary directory, the readiness wait, the log's lines and
# hand-over lines, `host reload`/`upgrade`/`status` through the control socket, percentiles, and
# the cleanup (only the processes a script started, by pid; the directory unless KEEP=1).
# Every wait is bounded. Imported by the scripts next to it (python3 bench/handover_x.py puts
# bench/ on sys.path).
import os, re, shutil, signal, subprocess, sys, tempfile, time

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
