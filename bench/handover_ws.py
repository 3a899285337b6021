# Long-lived WebSocket clients across every kind of replacement (issue 21): `host --plugin
# websocket --count 2` holds CLIENTS clients of `bench/load`'s `wsseq` (each sends a numbered
# message every INTERVAL_MS and checks every echo: in order, once, none missing) through
# RELOADS watcher reloads (a new websocket.so renamed into the watched plugin directory, each
# once the previous one's hand-overs are done), one `host upgrade`, and recycling by
# `--max-requests` (set so that no worker reaches it before the recycling phase). Per event:
# disconnects, lost / duplicated-or-reordered echoes, the longest wait a client sees for an echo
# (p50/p99/max over the clients that got one in that phase), how late the client itself was (its
# own limit), and each slot's hand-over as the master logs it (moved, drained, pause).
#
# Side by side: HOST_ARGS=--no-handover (today's drain; the clients reconnect, so each reload's
# disconnects are counted), and MODE=nginx: nginx (2 workers) as a WebSocket proxy in front of a
# host websocket upstream, NGINX_RELOADS `nginx -s reload` with worker_shutdown_timeout
# SHUTDOWN_TIMEOUT s: where and when the established connections are closed.
#
# Run: cargo build --release -p host -p host-plugin-websocket -p host-bench-load
#      python3 bench/handover_ws.py                      (CLIENTS=10000 RELOADS=20)
# Env: CLIENTS (10000), INTERVAL_MS (1000), RELOADS (20), COUNT (2 workers), SETTLE (1.0 s after
# each event's hand-overs), HOST_ARGS, MODE (host|nginx), NGINX_RELOADS (3), SHUTDOWN_TIMEOUT (10), HOST_BIN
# (target/release/host), NICE (a nice level for the host and the clients, e.g. -10), PLUGIN
# (target/release/libwebsocket.so), WSSEQ (target/release/wsseq), KEEP=1 (keep the temporary
# directory with the logs). Bounded: every wait has a timeout and wsseq stops by itself; only
# the processes it started are stopped, by pid. Loopback only.
import json, os, re, resource, shutil, signal, subprocess, sys, threading, time

from handover_lib import HANDOVER, Host, cleanup, stop, tempdir

CLIENTS = int(os.environ.get("CLIENTS", "10000"))
INTERVAL = int(os.environ.get("INTERVAL_MS", "1000"))
RELOADS = int(os.environ.get("RELOADS", "20"))
COUNT = int(os.environ.get("COUNT", "2"))  # workers (slots): COUNT=1 puts every client on one slot
SETTLE = float(os.environ.get("SETTLE", "1.0"))
MODE = os.environ.get("MODE", "host")
NGINX_RELOADS = int(os.environ.get("NGINX_RELOADS", "3"))
SHUTDOWN_TIMEOUT = int(os.environ.get("SHUTDOWN_TIMEOUT", "10"))
HOST_ARGS = os.environ.get("HOST_ARGS", "").split()
# NICE=-10: the host, nginx and the clients at that nice level, to keep a shared machine's other
# load (builds) out of the figures as far as a scheduler priority can.
NICE = ["nice", "-n", os.environ["NICE"]] if os.environ.get("NICE") else []
NO_HANDOVER = "--no-handover" in HOST_ARGS
root = os.getcwd()
host_src = os.path.abspath(os.environ.get("HOST_BIN", "target/release/host"))
plugin_src = os.path.abspath(os.environ.get("PLUGIN", "target/release/libwebsocket.so"))
wsseq_bin = os.path.abspath(os.environ.get("WSSEQ", "target/release/wsseq"))
d = tempdir("host-handover-ws-")
procs = []
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
if hard < CLIENTS + 200:
    print(f"warning: the descriptor limit is {hard}", file=sys.stderr)

# The binaries run from copies: `host upgrade` execs the path the master started from, and a
# build elsewhere must not change what runs.
os.makedirs(f"{d}/bin")
os.makedirs(f"{d}/plugins")
os.makedirs(f"{d}/staging")
for b in ("host", "host-worker"):
    shutil.copy2(os.path.join(os.path.dirname(host_src), b), f"{d}/bin/{b}")
host = f"{d}/bin/host"
shutil.copy2(plugin_src, f"{d}/plugins/websocket.so")


def variant(tag):
    """A new websocket.so (a trailer after the ELF sections: the same code, a new content hash)
    renamed into the watched directory, as an installer would."""
    staged = f"{d}/staging/websocket.so"
    shutil.copy2(plugin_src, staged)
    with open(staged, "ab") as f:
        f.write(f"variant {tag} {time.time_ns()}".encode())
    os.rename(staged, f"{d}/plugins/websocket.so")


def start_host(name, args):
    """A host of the websocket plugin from the watched directory, ready (its port in `.port`)."""
    h = Host(d, ["--plugin-dir", f"{d}/plugins", "--plugin", "websocket", "--log-level", "warn,host::master=info",
                 "--max-connections", str(CLIENTS + 1000)] + args, name=name, wrap=NICE, binary=host)
    procs.append(h.p)
    h.wait_ready()
    return h


class Wsseq:
    def __init__(self, port, max_secs, reconnect):
        env = dict(os.environ, WSSEQ_RECONNECT="1" if reconnect else "0")
        self.p = subprocess.Popen(NICE + [wsseq_bin, str(port), str(CLIENTS), str(INTERVAL), str(max_secs)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=open(f"{d}/wsseq.err", "w"), text=True, env=env)
        procs.append(self.p)
        self.lines = []
        self.ready = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.p.stdout:
            self.lines.append(line)
            if line.startswith("ready"):
                self.ready.set()

    def say(self, cmd):
        self.p.stdin.write(cmd + "\n")
        self.p.stdin.flush()

    def end(self):
        self.say("end")
        self.p.wait(60)
        time.sleep(0.1)
        return json.loads(self.lines[-1])


def connected(port, max_secs):
    """wsseq's clients of `port` (reconnecting), all connected, then 2 s of the phase `before`;
    with the time that phase began."""
    ws = Wsseq(port, max_secs, reconnect=True)
    if not ws.ready.wait(120):
        sys.exit(f"the clients did not connect: {open(f'{d}/wsseq.err').read()[-1000:]}")
    t0 = time.monotonic()
    ws.say("phase before")
    time.sleep(2.0)
    return ws, t0


def pct_str(w):
    return f"{w['p50']:.1f} / {w['p99']:.1f} / {w['max']:.1f}" if w["n"] else "-"


def report(result, events, elapsed):
    print(f"clients={result['clients']} interval={result['interval_ms']} ms, open at the end {result['open_at_end']}, "
          f"echoes unanswered at the end {result['unanswered_at_end']}, failed connects {result['failed_connects']}, "
          f"client CPU {result['client_cpu_s']:.1f} s over {elapsed:.0f} s, load average {os.getloadavg()[0]:.1f}"
          + (f", nice {NICE[2]}" if NICE else ""))
    print("| phase | open at its start | sent | echoed | disconnects (first..last ms) | lost | dup/reordered | longest wait p50 / p99 / max ms (clients) | client late p99 / max ms | hand-overs |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    tot = {"sent": 0, "echoed": 0, "disconnects": 0, "lost": 0, "dup_or_reordered": 0, "unanswered_on_close": 0}
    for ph in result["phases"]:
        if ph["name"] == "connect":
            continue
        for k in tot:
            tot[k] += ph[k]
        disc = f"{ph['disconnects']}" + (f" ({ph['disconnect_first_ms']}..{ph['disconnect_last_ms']})" if ph["disconnects"] else "")
        late = ph["late_ms"]
        print(f"| {ph['name']} | {ph['open_at_start']} | {ph['sent']} | {ph['echoed']} | {disc} | {ph['lost']} | {ph['dup_or_reordered']} | "
              f"{pct_str(ph['wait_ms'])} ({ph['wait_ms']['n']}) | {late['p99']:.1f} / {late['max']:.1f} | {events.get(ph['name'], '')} |")
    print(f"overall: sent {tot['sent']}, echoed {tot['echoed']}, disconnects {tot['disconnects']} "
          f"(echoes awaited on them {tot['unanswered_on_close']}), lost {tot['lost']}, duplicated or reordered {tot['dup_or_reordered']}")
    waits = [ph["wait_ms"] for ph in result["phases"] if ph["name"] not in ("connect", "before", "after") and ph["wait_ms"]["n"]]
    if waits:
        print(f"events: longest wait p99 worst {max(w['p99'] for w in waits):.1f} ms, median of the events' p99 "
              f"{sorted(w['p99'] for w in waits)[len(waits) // 2]:.1f} ms, max {max(w['max'] for w in waits):.1f} ms")


def handovers_since(h, start):
    """The hand-over lines after the first `start`, as `moved/drained/pause ms` per slot."""
    found = [l for l in h.lines() if "hand-over" in l][start:]
    out = []
    for l in found:
        m = re.search(HANDOVER, l)
        s = re.search(r"slot=(\d+)", l)
        slot = s.group(1) if s else "?"
        out.append(f"slot {slot}: {m.group(1)} moved, {m.group(2)} drained, {m.group(3)} ms" if m else f"slot {slot}: {l[l.find('hand-over'):][:120]}")
    return "; ".join(out)


def run_host():
    max_requests = int(os.environ.get("MAX_REQUESTS", "0")) or int(CLIENTS / COUNT * 1000 / INTERVAL * 10)
    h = start_host("host", ["--count", str(COUNT), "--max-requests", str(max_requests), "--drain-timeout", "10"] + HOST_ARGS)
    ws, t0 = connected(h.port, 120 + RELOADS * 20)
    events = {}
    hand = lambda: h.count(r"hand-over")
    for i in range(1, RELOADS + 1):
        name = f"reload {i}"
        ws.say(f"phase {name}")
        h0, r0, t = hand(), h.count(r"reload done"), time.monotonic()
        variant(i)
        ok = h.wait_count(r"reload done", r0 + 1, 60)
        if not NO_HANDOVER:
            ok = h.wait_count(r"hand-over", h0 + COUNT, 60) and ok
        events[name] = (handovers_since(h, h0) if not NO_HANDOVER else "drain") + ("" if ok else " (timed out)") + f", {time.monotonic() - t:.2f} s"
        time.sleep(SETTLE)
    ws.say("phase upgrade")
    h0, t = hand(), time.monotonic()
    up = h.ctl("upgrade")
    ok = up.returncode == 0 and (NO_HANDOVER or h.wait_count(r"hand-over", h0 + COUNT, 60))
    events["upgrade"] = (handovers_since(h, h0) if not NO_HANDOVER else "drain") + ("" if ok else f" (failed: {up.stdout.strip()[-200:]} {up.stderr.strip()[-200:]})") + f", {time.monotonic() - t:.2f} s"
    time.sleep(SETTLE)
    ws.say("phase recycle")
    h0, c0, t = hand(), h.count(r"max_requests messages; recycling"), time.monotonic()
    ok = h.wait_count(r"max_requests messages; recycling", c0 + COUNT, 60)
    ok = (NO_HANDOVER or h.wait_count(r"hand-over", h0 + COUNT, 60)) and ok
    if NO_HANDOVER:
        time.sleep(3)
    events["recycle"] = (handovers_since(h, h0) if not NO_HANDOVER else "drain") + ("" if ok else " (timed out)") + f", {time.monotonic() - t:.2f} s"
    time.sleep(SETTLE)
    ws.say("phase after")
    time.sleep(2.0)
    result = ws.end()
    stray = h.count(r"max_requests messages; recycling") - COUNT
    print(f"== {CLIENTS} websocket clients, `host --plugin websocket --count {COUNT} {' '.join(HOST_ARGS)}`, max_requests {max_requests}: "
          f"{RELOADS} watcher reloads, host upgrade, recycling")
    report(result, events, time.monotonic() - t0)
    failed = h.count(r"hand-over failed")
    print(f"hand-overs failed: {failed}; recycles outside the recycling phase: {max(0, stray)}; workers died: {h.count(r'worker died|killed')}")
    st = h.ctl("status", "--json", timeout=30)
    try:
        for row in json.loads(st.stdout).get("handovers", []):
            print(f"status --json: {row['handovers']} hand-overs ({row['failed']} failed), {row['moved']} connections moved, "
                  f"{row['drained']} drained; the last: {row['last']}")
    except (ValueError, KeyError, AttributeError):
        print(f"status --json unreadable: {st.stdout[:200]} {st.stderr[:200]}")


def run_nginx():
    up = start_host("upstream", ["--count", "2"]).port
    port = int(subprocess.check_output([sys.executable, "-c", "import socket; s=socket.socket(); s.bind(('127.0.0.1',0)); print(s.getsockname()[1])"]))
    conf = f"{d}/nginx.conf"
    with open(conf, "w") as f:
        f.write(f"""worker_processes 2;
daemon off;
pid {d}/nginx.pid;
error_log {d}/nginx-error.log notice;
worker_rlimit_nofile {hard};
worker_shutdown_timeout {SHUTDOWN_TIMEOUT}s;
events {{ worker_connections {CLIENTS * 2 + 1000}; }}
http {{
    access_log off;
    map $http_upgrade $connection_upgrade {{ default upgrade; '' close; }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://127.0.0.1:{up};
            proxy_http_version 1.1;
            proxy_set_header Upgrade $http_upgrade;
            proxy_set_header Connection $connection_upgrade;
            proxy_read_timeout 1h;
            proxy_send_timeout 1h;
        }}
    }}
}}
""")
    ng = subprocess.Popen(NICE + ["nginx", "-c", conf, "-p", d], stdout=subprocess.DEVNULL, stderr=open(f"{d}/nginx.out", "w"))
    procs.append(ng)
    for _ in range(200):
        try:
            import socket
            socket.create_connection(("127.0.0.1", port), 0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    ws, t0 = connected(port, 60 + NGINX_RELOADS * (SHUTDOWN_TIMEOUT + 10))
    events = {}
    for i in range(1, NGINX_RELOADS + 1):
        name = f"nginx reload {i}"
        ws.say(f"phase {name}")
        subprocess.run(["nginx", "-c", conf, "-p", d, "-s", "reload"], capture_output=True, timeout=30)
        events[name] = f"`nginx -s reload`, then {SHUTDOWN_TIMEOUT + 4} s"
        time.sleep(SHUTDOWN_TIMEOUT + 4)
    ws.say("phase after")
    time.sleep(2.0)
    result = ws.end()
    print(f"== {CLIENTS} websocket clients through nginx (2 workers, worker_shutdown_timeout {SHUTDOWN_TIMEOUT}s) to a host "
          f"websocket upstream: {NGINX_RELOADS} `nginx -s reload`")
    report(result, events, time.monotonic() - t0)


try:
    if MODE == "nginx":
        run_nginx()
    else:
        run_host()
finally:
    for p in reversed(procs):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM if "nginx" in p.args[:4] else signal.SIGINT)
    for p in reversed(procs):
        stop(p, timeout=10)
    cleanup(d)
