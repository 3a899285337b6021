#!/usr/bin/env bash
# Run: bash bench/resp.sh           (needs redis-tools for redis-benchmark, redis-server to compare)
#
# The `resp` plugin (host --plugin resp --count 1) against redis-server, both single-threaded on
# loopback: redis-benchmark -q -t ping,set,get,incr,mset -n $REQUESTS (50 clients), without
# pipelining and with 16 commands per write (-P 16), ROUNDS rounds alternating host and redis.
# Prints the median ops/s of each test and the ratio host/redis. Every run is bounded by
# `timeout`; the processes it started are stopped by pid when it ends.
set -euo pipefail
cd "$(dirname "$0")/.."
REQUESTS=${REQUESTS:-200000}
ROUNDS=${ROUNDS:-3}
TESTS=ping,set,get,incr,mset
command -v redis-benchmark >/dev/null || { echo "redis-benchmark is missing: apt-get install redis-tools" >&2; exit 1; }
command -v redis-server >/dev/null || { echo "redis-server is missing: apt-get install redis-server" >&2; exit 1; }

tmp=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null || true; done
    sleep 0.5
    for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT

cargo build --release -q -p host -p host-plugin-resp

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_ping() {
    for _ in $(seq 100); do
        [ "$(timeout 2 redis-cli -p "$1" ping 2>/dev/null)" = PONG ] && return 0
        sleep 0.05
    done
    echo "nothing answers PING on port $1" >&2
    return 1
}

host_port=$(free_port)
target/release/host --plugin resp --plugin-dir target/release --count 1 --listen "127.0.0.1:$host_port" \
    --idle-timeout 0 --log-level warn 2>"$tmp/host.log" &
pids+=($!)
redis_port=$(free_port)
redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no --daemonize no \
    --logfile "$tmp/redis.log" &
pids+=($!)
wait_ping "$host_port"
wait_ping "$redis_port"

# One redis-benchmark run: appends "server pipeline test ops" lines to $tmp/results.
bench() {
    local server=$1 port=$2 pipeline=$3
    timeout 300 redis-benchmark -p "$port" -q -n "$REQUESTS" -P "$pipeline" -t "$TESTS" 2>&1 \
        | tr '\r' '\n' | grep 'requests per second' \
        | sed -E "s/^(.*): ([0-9.]+) requests per second.*/$server $pipeline \1|\2/" >>"$tmp/results"
}

for round in $(seq "$ROUNDS"); do
    for pipeline in 1 16; do
        bench host "$host_port" "$pipeline"
        bench redis "$redis_port" "$pipeline"
    done
    echo "round $round of $ROUNDS done" >&2
done

echo "redis-benchmark -n $REQUESTS, 50 clients, median of $ROUNDS rounds; $(redis-server --version | cut -d' ' -f1-3)"
python3 - "$tmp/results" <<'PY'
import statistics, sys
runs = {}
for line in open(sys.argv[1]):
    head, ops = line.rstrip("\n").split("|")
    server, pipeline, test = head.split(" ", 2)
    runs.setdefault((int(pipeline), test), {}).setdefault(server, []).append(float(ops))
print(f"{'test':<24} {'host ops/s':>12} {'redis ops/s':>12} {'host/redis':>10}")
for (pipeline, test), by in sorted(runs.items()):
    h = statistics.median(by.get("host", [0]))
    r = statistics.median(by.get("redis", [0]))
    ratio = f"{h / r:.2f}" if r else "-"
    print(f"{test + f' -P {pipeline}':<24} {h:>12.0f} {r:>12.0f} {ratio:>10}")
PY
