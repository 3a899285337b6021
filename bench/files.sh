#!/usr/bin/env bash
# Run: bash bench/files.sh [OTHER_LIBHTTP.so]     (needs wrk and curl; root to drop the page cache)
#
# Static files through `host --plugin http`, release build, on loopback:
#   1. a 1 MiB file, hot cache, 2 workers: wrk -t2 -c64 -d5s (requests/s, transfer/s);
#   2. a 100 MiB file, hot cache, 2 workers: 8 curls at once (seconds until all are done);
#   3. 1 worker: p99 latency of `GET /` (wrk -t1 -c8 -d5s --latency) alone, then while 4 curls
#      each read a different 100 MiB file from a cold page cache (`echo 3 >
#      /proc/sys/vm/drop_caches`; skipped when not root).
# With OTHER_LIBHTTP.so (an http plugin built from another commit, e.g. before the task pool)
# the same runs are made against it too, for the comparison. Every run is bounded in time; every
# process started is stopped by pid.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }
command -v curl >/dev/null || { echo "curl is missing: apt-get install curl" >&2; exit 1; }
OTHER=${1:-}

tmp=$(mktemp -d -p "${BENCH_DIR:-/var/tmp}")
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null || true; done
    sleep 0.5
    for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT

cargo build --release -q -p host -p host-plugin-http
mkdir -p "$tmp/www"
head -c $((1 << 20)) /dev/urandom >"$tmp/www/1m.bin"
for i in 0 1 2 3; do head -c $((100 << 20)) /dev/urandom >"$tmp/www/100m-$i.bin"; done
sync

start_host() { # PLUGIN COUNT → sets $port, $host_pid
    target/release/host --plugin "$1" --count "$2" --listen 127.0.0.1:0 --log-level warn,host::master=info \
        --plugin-config "root = \"$tmp/www\"" 2>"$tmp/host.log" &
    host_pid=$!
    pids+=("$host_pid")
    for _ in $(seq 100); do grep -q "host ready" "$tmp/host.log" && break; sleep 0.05; done
    port=$(grep -o 'address=127.0.0.1:[0-9]*' "$tmp/host.log" | head -1 | cut -d: -f2)
    [ -n "$port" ] || { cat "$tmp/host.log"; exit 1; }
}
stop_host() {
    kill -INT "$host_pid" 2>/dev/null || true
    wait "$host_pid" 2>/dev/null || true
}
p99() { grep -E '^ +99%' | awk '{print $2}'; }

suite() { # LABEL PLUGIN
    local label=$1 plugin=$2
    echo "== $label"
    start_host "$plugin" 2
    curl -s -o /dev/null "http://127.0.0.1:$port/1m.bin"
    wrk -t2 -c64 -d5s "http://127.0.0.1:$port/1m.bin" | grep -E 'Requests/sec|Transfer/sec' | sed 's/^/  1 MiB, wrk -c64: /'
    cat "$tmp/www/100m-0.bin" >/dev/null
    local t0 t1
    t0=$(date +%s.%N)
    local hot=()
    for _ in $(seq 8); do
        curl -s --max-time 60 -o /dev/null "http://127.0.0.1:$port/100m-0.bin" &
        hot+=($!)
    done
    wait "${hot[@]}" || true
    t1=$(date +%s.%N)
    echo "  100 MiB x 8 curls, hot: $(echo "$t1 - $t0" | bc) s"
    stop_host

    start_host "$plugin" 1
    echo "  GET / p99 alone: $(wrk -t1 -c8 -d5s --latency "http://127.0.0.1:$port/" | p99)"
    if [ "$(id -u)" = 0 ]; then
        sync
        echo 3 >/proc/sys/vm/drop_caches
        local curls=()
        for i in 0 1 2 3; do
            curl -s --max-time 60 -o /dev/null "http://127.0.0.1:$port/100m-$i.bin" &
            curls+=($!)
        done
        echo "  GET / p99 during 4 cold 100 MiB reads: $(wrk -t1 -c8 -d5s --latency "http://127.0.0.1:$port/" | p99)"
        t0=$(date +%s.%N)
        wait "${curls[@]}" || true
        echo "  (the cold downloads ended $(echo "$(date +%s.%N) - $t0" | bc) s after the latency run)"
    else
        echo "  cold-cache run skipped (not root)"
    fi
    stop_host
}

suite "this tree's http plugin" http
if [ -n "$OTHER" ]; then
    suite "other plugin: $OTHER" "$OTHER"
fi
