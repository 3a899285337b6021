#!/usr/bin/env python3
"""Helper of bench/run.sh: parses the load tools' output (wrk, msgload, redis-benchmark),
measures start-up time and idle connections, reads the per-worker spread, and prints the
tables. Standard library only.

  bench.py wrk SCENARIO SERVER TICKS PSS_KB... < wrk-output   -> one JSON line (a round)
  bench.py json SCENARIO SERVER TICKS PSS_KB... < msgload-output          (the same)
  bench.py redis SCENARIO SERVER TICKS PSS_KB... < redis-benchmark --csv  (the same)
  bench.py h2load SCENARIO SERVER TICKS PSS_KB... < h2load-output  (the same; latencies from
           the file of its --log-file, named by $H2LOAD_LOG)
  bench.py startup SERVER TIMEOUT CMD...   -> one JSON line ({port} in CMD, and in the file of an @FILE)
  bench.py idle SERVER PID PORT COUNT IDLE_SECONDS              -> one JSON line
  bench.py spread HOST_BIN PID_FILE COUNT WRK_REQUESTS TIMEOUT  -> one JSON line
  bench.py report RESULTS.jsonl                                 -> the tables
"""
import json
import os
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")
UNITS = {"us": 1.0, "ms": 1000.0, "s": 1_000_000.0, "m": 60_000_000.0}
REQUEST = b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def lat_us(text):
    m = re.match(r"([\d.]+)(us|ms|s|m)$", text)
    return float(m.group(1)) * UNITS[m.group(2)] if m else None


def parse_wrk(out):
    r = {"requests": 0, "rps": 0.0, "p50_us": None, "p99_us": None, "errors": 0}
    m = re.search(r"(\d+) requests in", out)
    if m:
        r["requests"] = int(m.group(1))
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if m:
        r["rps"] = float(m.group(1))
    for pct, key in (("50", "p50_us"), ("99", "p99_us")):
        m = re.search(rf"^\s*{pct}(?:\.000)?%\s+(\S+)", out, re.M)
        if m:  # wrk prints 0.00us when its histogram lacks the samples (pipelined batches)
            r[key] = lat_us(m.group(1)) or None
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        r["errors"] += sum(int(g) for g in m.groups())
    m = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if m:
        r["errors"] += int(m.group(1))
    return r


def ticks(pid):
    """utime+stime of pid and its children (the master and its workers), in clock ticks."""
    total = 0
    pids = [pid]
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            pids += [int(p) for p in f.read().split()]
    except OSError:
        pass
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # fields 14 and 15 of stat
        except OSError:
            pass
    return total


def rollup(pid):
    """/proc/PID/smaps_rollup as {field: kB}."""
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                out[parts[0].rstrip(":")] = int(parts[1])
    return out


def pss_kb(pid):
    return rollup(pid).get("Pss", 0)


def private_kb(pid):
    r = rollup(pid)
    return r.get("Private_Clean", 0) + r.get("Private_Dirty", 0)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http_ok(port, timeout=0.5):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            return s.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def stop(proc):
    """Stops a process this helper started (its own child), by pid: SIGINT, then SIGKILL."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def parse_json(out):
    """msgload's one JSON object (the fields parse_wrk makes)."""
    try:
        return json.loads(out.strip().splitlines()[-1])
    except (IndexError, ValueError):
        return {"requests": 0, "rps": 0.0, "p50_us": None, "p99_us": None, "errors": 1}


def parse_redis(out):
    """redis-benchmark --csv, one test: its rps and latencies (ms); the requests it was told (-n)
    are the rps times its run time, which it does not print: taken from REQUESTS."""
    r = {"requests": int(os.environ.get("REQUESTS", "0")), "rps": 0.0, "p50_us": None, "p99_us": None, "errors": 0}
    rows = [l.split('","') for l in out.splitlines() if l.startswith('"') and not l.startswith('"test"')]
    if not rows:
        r["errors"] = 1
        return r
    f = [x.strip('"') for x in rows[-1]]
    r["rps"], r["p50_us"], r["p99_us"] = float(f[1]), float(f[4]) * 1000, float(f[6]) * 1000
    return r


def parse_h2load(out):
    """h2load's summary (requests done, req/s, failures) and the p50/p99 of the per-request
    times its --log-file wrote (tab-separated: start µs, status, µs to the end of the response)."""
    r = {"requests": 0, "rps": 0.0, "p50_us": None, "p99_us": None, "errors": 0}
    m = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", out)
    if m:
        r["rps"] = float(m.group(1))
    m = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", out)
    if m:
        r["requests"] = int(m.group(1))
        r["errors"] = int(m.group(3)) + int(m.group(4)) + int(m.group(5))
    m = re.search(r"status codes: \d+ 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", out)
    if m:
        r["errors"] += sum(int(g) for g in m.groups())
    try:
        with open(os.environ["H2LOAD_LOG"]) as f:
            times = sorted(int(line.split("\t")[2]) for line in f if line.count("\t") >= 2)
    except (KeyError, OSError, ValueError):
        times = []
    if times:
        r["p50_us"] = float(times[len(times) // 2])
        r["p99_us"] = float(times[min(len(times) - 1, len(times) * 99 // 100)])
    return r


def round_cmd(parse):
    def cmd(args):
        scenario, server, tks = args[0], args[1], int(args[2])
        pss = [int(x) for x in args[3:]]
        r = parse(sys.stdin.read())
        r.update(kind="round", scenario=scenario, server=server, ticks=tks, pss_kb=pss)
        r["cpu_us_per_req"] = tks * 1e6 / CLK_TCK / r["requests"] if r["requests"] else None
        print(json.dumps(r))
    return cmd


def cmd_startup(args):
    server, timeout, cmd = args[0], float(args[1]), args[2:]
    port = free_port()
    cmd = [c.replace("{port}", str(port)) for c in cmd]
    for i, c in enumerate(cmd):  # @FILE: a template (a config file) with {port} in it
        if c.startswith("@"):
            with open(c[1:]) as f:
                text = f.read().replace("{port}", str(port))
            with open(c[1:] + ".conf", "w") as f:
                f.write(text)
            cmd[i] = c[1:] + ".conf"
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ms = None
    try:
        while time.monotonic() - t0 < timeout and proc.poll() is None:
            if http_ok(port):
                ms = (time.monotonic() - t0) * 1000
                break
            time.sleep(0.001)
    finally:
        stop(proc)
    print(json.dumps({"kind": "startup", "server": server, "ms": ms}))


def cmd_idle(args):
    server, pid, port, count, idle_s = args[0], int(args[1]), int(args[2]), int(args[3]), float(args[4])
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    time.sleep(0.5)
    before = pss_kb(pid)
    private_before = private_kb(pid)
    socks = []
    deadline = time.monotonic() + 60
    ok = 0
    try:
        for i in range(count):
            if time.monotonic() > deadline:
                break
            s = socket.create_connection(("127.0.0.1", port), timeout=10)
            s.sendall(REQUEST)
            socks.append(s)
            if len(socks) % 500 == 0 or i == count - 1:  # read the answers in batches
                for t in socks[-500:]:
                    if t.recv(4096).startswith(b"HTTP/1.1 200"):
                        ok += 1
        time.sleep(1.0)
        after = pss_kb(pid)
        private_after = private_kb(pid)
        t0 = ticks(pid)
        time.sleep(idle_s)
        t1 = ticks(pid)
        alive = sum(1 for s in socks if not _closed(s))
    finally:
        for s in socks:
            s.close()
    print(json.dumps({"kind": "idle", "server": server, "count": count, "ok": ok, "alive": alive,
                      "pss_before_kb": before, "pss_after_kb": after,
                      "private_before_kb": private_before, "private_after_kb": private_after, "idle_ticks": t1 - t0,
                      "idle_s": idle_s}))


def _closed(s):
    s.setblocking(False)
    try:
        return s.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


def cmd_spread(args):
    host_bin, pid_file, count, wrk_requests, timeout = args[0], args[1], int(args[2]), int(args[3]), float(args[4])
    deadline = time.monotonic() + timeout
    counts = []
    while True:  # workers report about once a second: wait until the totals cover the run
        out = subprocess.run([host_bin, "status", "--json", "--pid-file", pid_file],
                             capture_output=True, text=True, timeout=10).stdout
        st = json.loads(out)
        counts = [w["slot_totals"]["messages"] for w in st["workers"]]
        if sum(counts) >= wrk_requests or time.monotonic() > deadline:
            break
        time.sleep(0.25)
    share = sum(counts) / count if count else 0
    print(json.dumps({"kind": "spread", "counts": counts, "share": share, "wrk_requests": wrk_requests,
                      "min_rel": min(counts) / share if share else None,
                      "max_rel": max(counts) / share if share else None}))


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def fmt(x, nd=0):
    if x is None:
        return "-"
    return f"{x:,.{nd}f}"


def ratio(a, b):
    return f"{a / b:.2f}" if a is not None and b else "-"


def cmd_report(args):
    rows = [json.loads(l) for l in open(args[0]) if l.strip()]
    rounds = [r for r in rows if r["kind"] == "round"]
    scenarios = list(dict.fromkeys(r["scenario"] for r in rounds))
    for sc in scenarios:
        servers = list(dict.fromkeys(r["server"] for r in rounds if r["scenario"] == sc))[:3]
        if len(servers) < 2:
            servers.append("-")
        by = {s: [r for r in rounds if r["scenario"] == sc and r["server"] == s] for s in servers}
        n = max(len(v) for v in by.values())
        # Two servers: a/b. Three (the io section: epoll, uring, nginx): b/a, a/c, b/c.
        pairs = [(0, 1)] if len(servers) == 2 else [(1, 0), (0, 2), (1, 2)]
        names = "/".join(servers)
        print(f"\n### {sc} ({n} rounds, alternating {names}; median [min..max])\n")
        print("| metric | " + " | ".join(servers) + " | " + " | ".join(f"{servers[i]}/{servers[j]}" for i, j in pairs) + " |")
        print("|---|" + "---|" * (len(servers) + len(pairs)))

        def line(name, key, nd=0, spread=False):
            cells, meds = [], []
            for s in servers:
                xs = [r[key] for r in by[s] if r[key] is not None]
                m = med(xs)
                meds.append(m)
                cell = fmt(m, nd)
                if spread and xs:
                    cell += f" [{fmt(min(xs), nd)}..{fmt(max(xs), nd)}]"
                cells.append(cell)
            ratios = [ratio(meds[i], meds[j]) for i, j in pairs]
            print(f"| {name} | " + " | ".join(cells) + " | " + " | ".join(ratios) + " |")

        line("requests/s", "rps", 0, True)
        line("server CPU µs/request", "cpu_us_per_req", 2, True)
        line("p50 latency µs", "p50_us", 0)
        line("p99 latency µs", "p99_us", 0)
        errs = [sum(r["errors"] for r in by[s]) for s in servers]
        print("| errors (all rounds) | " + " | ".join(map(str, errs)) + " |" + " |" * len(pairs))
        pss = []
        for s in servers:
            last = by[s][-1]["pss_kb"] if by[s] else []
            pss.append(last)
        avg = [sum(p) / len(p) if p else None for p in pss]
        print("| PSS KiB of each worker (after last round) | " + " | ".join(" / ".join(map(str, p)) for p in pss)
              + " | " + " | ".join(ratio(avg[i], avg[j]) for i, j in pairs) + " |")

    st = [r for r in rows if r["kind"] == "startup"]
    if st:
        print("\n### process\n")
        print("| metric | host | nginx | host/nginx |")
        print("|---|---|---|---|")
        m = [med([r["ms"] for r in st if r["server"] == s]) for s in ("host", "nginx")]
        all_ms = {s: ", ".join(fmt(r["ms"], 1) for r in st if r["server"] == s) for s in ("host", "nginx")}
        print(f"| start to first 200, ms (median of {all_ms['host'].count(',') + 1}: each) | "
              f"{fmt(m[0], 1)} ({all_ms['host']}) | {fmt(m[1], 1)} ({all_ms['nginx']}) | {ratio(m[0], m[1])} |")
    idle = {r["server"]: r for r in rows if r["kind"] == "idle"}
    if idle:
        h, g = idle.get("host"), idle.get("nginx")

        def cell(r, f):
            return f(r) if r else "-"

        def per_conn(r):
            return (r["pss_after_kb"] - r["pss_before_kb"]) * 1024 / max(r["alive"], 1)

        print(f"| idle worker PSS KiB (1 worker, no connection) | {cell(h, lambda r: r['pss_before_kb'])} | "
              f"{cell(g, lambda r: r['pss_before_kb'])} | {ratio(h and h['pss_before_kb'], g and g['pss_before_kb'])} |")
        def held(r):
            return f"{r['pss_after_kb']} ({r['ok']}/{r['alive']})"

        print(f"| idle worker private (unshared) KiB | {cell(h, lambda r: r['private_before_kb'])} | "
              f"{cell(g, lambda r: r['private_before_kb'])} | |")
        print(f"| worker PSS KiB with {cell(h, lambda r: r['count'])} idle keep-alive connections "
              f"(answered / still open) | {cell(h, held)} | {cell(g, held)} | |")
        print(f"| PSS bytes per idle connection | {cell(h, lambda r: fmt(per_conn(r)))} | "
              f"{cell(g, lambda r: fmt(per_conn(r)))} | {ratio(h and per_conn(h), g and per_conn(g))} |")
        print(f"| worker CPU ticks over {cell(h, lambda r: fmt(r['idle_s']))} s idle with them | "
              f"{cell(h, lambda r: r['idle_ticks'])} | {cell(g, lambda r: r['idle_ticks'])} | |")
    sp = [r for r in rows if r["kind"] == "spread"]
    if sp:
        r = sp[-1]
        print(f"\n### spread (host --count {len(r['counts'])}, wrk -t1 -c64)\n")
        print(f"requests per worker: {', '.join(map(str, r['counts']))} (even share {r['share']:,.0f}, "
              f"wrk counted {r['wrk_requests']:,}); min {r['min_rel']:.2f} x share, max {r['max_rel']:.2f} x share")


def main():
    cmds = {"wrk": round_cmd(parse_wrk), "json": round_cmd(parse_json), "redis": round_cmd(parse_redis),
            "h2load": round_cmd(parse_h2load),
            "startup": cmd_startup, "idle": cmd_idle, "spread": cmd_spread, "report": cmd_report}
    if len(sys.argv) < 2 or sys.argv[1] not in cmds:
        sys.exit(__doc__)
    cmds[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    main()
