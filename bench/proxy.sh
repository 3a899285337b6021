#!/usr/bin/env bash
# Run: bash bench/proxy.sh                (needs wrk and nginx)
#
# Reverse-proxy throughput and added latency: `host --plugin proxy` against nginx `proxy_pass`,
# both with 2 workers and keep-alive connections to the same upstream (a `host --plugin http`
# service with 2 workers answering `Hello, World!`), on loopback. Three alternating rounds of
# `wrk -t1 -c64 -d5s` against each proxy and, for the baseline latency, against the upstream
# directly. Prints req/s and mean latency per run, then the medians, the host/nginx ratio and
# the latency each proxy adds. Every process it starts is stopped by pid when it ends.
# DURATION=5s, WORKERS=2 and ROUNDS=3 may be overridden.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-5s}
WORKERS=${WORKERS:-2}
ROUNDS=${ROUNDS:-3}
command -v wrk >/dev/null || { echo "wrk is missing: apt-get install wrk" >&2; exit 1; }
command -v nginx >/dev/null || { echo "nginx is missing: apt-get install nginx" >&2; exit 1; }

tmp=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null || true; done
    sleep 0.5
    for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT

cargo build --release -q -p host -p host-plugin-http -p host-plugin-proxy

# Starts a host (its log in $tmp/$1.log) and sets $port to the port the system gave it (not
# in a $(...) subshell: its pid must reach the cleanup list).
start_host() {
    local name=$1
    shift
    target/release/host --count "$WORKERS" --listen 127.0.0.1:0 --plugin-dir target/release \
        --pid-file "$tmp/$name.pid" --log-level warn,host::master=info "$@" 2>"$tmp/$name.log" &
    pids+=($!)
    for _ in $(seq 100); do grep -q "host ready" "$tmp/$name.log" && break; sleep 0.05; done
    port=$(grep -o 'address=127.0.0.1:[0-9]*' "$tmp/$name.log" | head -1 | cut -d: -f2)
    [ -n "$port" ] || { cat "$tmp/$name.log" >&2; exit 1; }
}

start_host upstream --plugin http
up_port=$port
start_host proxy --plugin proxy --plugin-config "upstreams = [\"127.0.0.1:$up_port\"]"
proxy_port=$port

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
    upstream backend {
        server 127.0.0.1:$up_port;
        keepalive 64;
        keepalive_requests 1000000;
    }
    server {
        listen 127.0.0.1:$nginx_port reuseport;
        location / {
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
            proxy_buffering off;
        }
    }
}
CONF
nginx -c "$tmp/nginx.conf" -p "$tmp" &
pids+=($!)
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$nginx_port) 2>/dev/null && break; sleep 0.05; done

# Runs wrk; prints "req/s latency_us".
run() {
    wrk -t1 -c64 -d"$DURATION" "http://127.0.0.1:$1/" | tee -a "$tmp/wrk.log" | python3 -c '
import re, sys
text = sys.stdin.read()
rps = re.search(r"Requests/sec:\s+([\d.]+)", text).group(1)
val, unit = re.search(r"Latency\s+([\d.]+)(us|ms|s)", text).groups()
print(rps, float(val) * {"us": 1, "ms": 1e3, "s": 1e6}[unit])'
}

printf '%-8s %-12s %12s %14s\n' round target "req/s" "latency (us)"
for round in $(seq "$ROUNDS"); do
    for target in direct host nginx; do
        case $target in
            direct) port=$up_port ;;
            host) port=$proxy_port ;;
            nginx) port=$nginx_port ;;
        esac
        read -r rps lat < <(run "$port")
        printf '%-8s %-12s %12s %14.0f\n' "$round" "$target" "$rps" "$lat"
        echo "$target $rps $lat" >>"$tmp/results"
    done
done

python3 - "$tmp/results" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1])]
med = {t: (statistics.median(float(r[1]) for r in rows if r[0] == t),
           statistics.median(float(r[2]) for r in rows if r[0] == t)) for t in ("direct", "host", "nginx")}
print()
print(f"median req/s: upstream direct {med['direct'][0]:.0f}, host proxy {med['host'][0]:.0f}, "
      f"nginx proxy_pass {med['nginx'][0]:.0f}; host/nginx = {med['host'][0] / med['nginx'][0]:.2f}")
for t in ("host", "nginx"):
    print(f"added latency ({t}): {med[t][1] - med['direct'][1]:.0f} us "
          f"(mean {med[t][1]:.0f} us through the proxy, {med['direct'][1]:.0f} us direct)")
PY
if grep -q "Non-2xx\|Socket errors" "$tmp/wrk.log"; then
    echo "errors reported by wrk:"; grep "Non-2xx\|Socket errors" "$tmp/wrk.log"
fi
