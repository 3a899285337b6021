#!/usr/bin/env bash
# Run: bash bench/plaintext.sh            (needs wrk; nginx is optional, for the comparison)
#
# Plain-text hello-world throughput of `host --plugin http` against nginx, both with 2 workers,
# on loopback: keep-alive (wrk -t1 -c64 -d5s) and 16 requests pipelined per write. Every process
# it starts is stopped by pid when it ends. DURATION=5s and WORKERS=2 may be overridden.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-5s}
WORKERS=${WORKERS:-2}
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }

tmp=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null || true; done
    sleep 0.5
    for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT

cargo build --release --workspace -q

# host on a port the system picks; the log names it.
target/release/host --plugin http --count "$WORKERS" --listen 127.0.0.1:0 --log-level warn,host::master=info 2>"$tmp/host.log" &
pids+=($!)
for _ in $(seq 100); do grep -q "host ready" "$tmp/host.log" && break; sleep 0.05; done
host_port=$(grep -o 'address=127.0.0.1:[0-9]*' "$tmp/host.log" | head -1 | cut -d: -f2)
[ -n "$host_port" ] || { cat "$tmp/host.log"; exit 1; }

nginx_port=""
if command -v nginx >/dev/null; then
    nginx_port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
    cat >"$tmp/nginx.conf" <<CONF
worker_processes $WORKERS;
daemon off;
pid $tmp/nginx.pid;
error_log $tmp/nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    server {
        listen 127.0.0.1:$nginx_port reuseport;
        location / { default_type text/plain; return 200 "Hello, World!"; }
    }
}
CONF
    nginx -c "$tmp/nginx.conf" -p "$tmp" &
    pids+=($!)
    for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$nginx_port) 2>/dev/null && break; sleep 0.05; done
fi

rps() { wrk -t1 -c64 -d"$DURATION" "$@" | tee -a "$tmp/wrk.log" | awk '/Requests\/sec/ {print $2}'; }

printf '%-28s %12s %12s %8s\n' "run" "host req/s" "nginx req/s" "ratio"
for mode in keepalive pipeline16; do
    args=()
    [ "$mode" = pipeline16 ] && args=(-s bench/pipeline.lua)
    h=$(rps "${args[@]}" "http://127.0.0.1:$host_port/")
    n="-"
    ratio="-"
    if [ -n "$nginx_port" ]; then
        n=$(rps "${args[@]}" "http://127.0.0.1:$nginx_port/")
        ratio=$(python3 -c "print(f'{$h/$n:.2f}')")
    fi
    printf '%-28s %12s %12s %8s\n' "$mode (c64, $WORKERS workers)" "$h" "$n" "$ratio"
done
if grep -q "Non-2xx\|Socket errors" "$tmp/wrk.log"; then
    echo "errors reported by wrk:"; grep "Non-2xx\|Socket errors" "$tmp/wrk.log"
fi
