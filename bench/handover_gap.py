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
import os, socket, sys

from handover_lib import Host, Probe, Speech, cleanup, print_gaps, probe_across_reload, tempdir

N = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
PROBES = int(os.environ.get("PROBES", "100"))
INTERVAL = int(os.environ.get("INTERVAL_MS", "20")) / 1000
d = tempdir("host-handover-gap-")
host_args = os.environ.get("HOST_ARGS", "").split()
h = Host(d, ["--plugin", "text", "--count", "1", "--max-connections", str(N + 100), "--drain-timeout", "30"] + host_args,
         wrap=["nice", "-n", os.environ["HOST_NICE"]] if os.environ.get("HOST_NICE") else [])


def lines(buf):
    """The complete lines at the start of `buf`, and the rest."""
    *got, rest = buf.split(b"\n")
    return got, rest


TEXT = Speech(encode=lambda seq: b"p%d\n" % seq, split=lines, want=lambda seq: b"p%d" % seq)


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
    line = probe_across_reload(h, probes, INTERVAL, TEXT, timeout=5 if "--no-handover" in host_args else 30)
    echoed = sum(pr.seq for pr in probes)
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
    closed = sum(1 for pr in probes if pr.errors)
    print(f"N={N} probes={len(probes)} interval={INTERVAL*1000:.0f}ms lines echoed by probes: {echoed}, errors: {len(errors)} {errors[:3]}; probes closed: {closed}")
    print_gaps(probes, "an echo")
    print(f"the other connections echo after it: {ok}/{N - len(probes)}")
    print(line or "no hand-over line")
finally:
    h.stop()
    cleanup(d)
