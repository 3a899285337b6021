#!/usr/bin/env bash
# Run: bash bench/messages.sh           (needs python3)
#
# Messages between two workers through examples/chat (`host --plugin chat --count 2`): a client
# on worker A sends lines, a client on worker B receives them (each line: a read by A's worker,
# one broadcast datagram to B's mailbox, a write by B's worker).
# - throughput: A sends N lines (64 bytes) as fast as it can for DURATION seconds (default 5),
#   B counts what arrives; messages/s and drops (`host status`) are printed.
# - latency: 2000 lines one at a time, each sent after the previous one arrived at B: median
#   and 99th percentile of the one-way time client A → worker A → worker B → client B.
# Bounded in time; stops the master it started, by pid.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-5}
source bench/lib.sh

cargo build --release -p host -p host-example-chat -q
export XDG_RUNTIME_DIR="$tmp"
target/release/host start -d --plugin chat --plugin-dir target/release --listen 127.0.0.1:0 --count 2 \
    --log-file "$tmp/host.log" >/dev/null
master=$(cat "$tmp/host/host.pid")
pids+=("$master")
port=$(target/release/host status | awk '/127.0.0.1:/ { split($0, a, "127.0.0.1:"); split(a[2], b, " "); print b[1]; exit }')

python3 - "$port" "$DURATION" <<'PY'
import socket, sys, time, threading
port, duration = int(sys.argv[1]), float(sys.argv[2])

def join():
    s = socket.create_connection(("127.0.0.1", port))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.settimeout(10)
    s.sendall(b"/whoami\n")
    f = s.makefile("rb")
    return s, f, f.readline().split()[3]

a = join()
for _ in range(100):
    b = join()
    if b[2] != a[2]:
        break
else:
    sys.exit("no client landed on the second worker")

# Latency: one line at a time.
lat = []
for i in range(2000):
    t = time.perf_counter()
    a[0].sendall(b"ping %d\n" % i)
    assert b[1].readline() == b"ping %d\n" % i
    lat.append(time.perf_counter() - t)
lat.sort()
print(f"latency (client A -> worker A -> worker B -> client B): median {lat[len(lat)//2]*1e6:.0f} us, p99 {lat[len(lat)*99//100]*1e6:.0f} us")

# Throughput: A floods for `duration` seconds, B counts.
got = [0]
done = threading.Event()
def reader():
    b[0].settimeout(2)
    try:
        while True:
            chunk = b[0].recv(1 << 16)
            if not chunk:
                break
            got[0] += chunk.count(b"\n")
    except socket.timeout:
        pass
    done.set()
line = b"m" * 63 + b"\n"
batch = line * 256
t = threading.Thread(target=reader); t.start()
sent, start = 0, time.perf_counter()
while time.perf_counter() - start < duration:
    a[0].sendall(batch)
    sent += 256
elapsed = time.perf_counter() - start
t.join()
print(f"throughput: {sent} lines sent in {elapsed:.1f} s, {got[0]} arrived at B: {got[0]/elapsed:,.0f} messages/s between the workers")
PY
target/release/host status | grep '^worker messages' || true
