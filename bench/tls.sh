#!/usr/bin/env bash
# Run: bash bench/tls.sh                  (needs wrk, openssl, nginx; about 1 minute)
#
# HTTPS hello-world: `host --plugin http --tls-cert … --tls-key …` against nginx with the same
# certificate (an EC P-256 self-signed one made here with openssl, deleted at the end), 2 workers
# each, on loopback. Two loads, each alternating host and nginx for 3 rounds:
#   keepalive  wrk -t1 -c64 -d5s                               (requests/s over kept connections)
#   handshake  wrk -t1 -c64 -d5s -H 'Connection: close'         (a new TLS handshake per request)
# For each run: requests/s and the servers' CPU per request (utime+stime of the master and its
# workers from /proc, before and after). Every process it starts is stopped by pid at the end.
# DURATION=5s, ROUNDS=3 and WORKERS=2 may be overridden.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-5s}
ROUNDS=${ROUNDS:-3}
WORKERS=${WORKERS:-2}
for tool in wrk openssl nginx; do
    command -v "$tool" >/dev/null || { echo "$tool is missing: apt-get install $tool" >&2; exit 1; }
done

tmp=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null || true; done
    sleep 0.5
    for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    rm -rf "$tmp"
}
trap cleanup EXIT

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
    -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
    -keyout "$tmp/key.pem" -out "$tmp/cert.pem" 2>/dev/null

cargo build --release -q -p host -p host-plugin-http

target/release/host --plugin http --plugin-dir target/release --count "$WORKERS" --listen 127.0.0.1:0 \
    --pid-file "$tmp/host.pid" --tls-cert "$tmp/cert.pem" --tls-key "$tmp/key.pem" \
    --log-level warn,host::master=info 2>"$tmp/host.log" &
host_pid=$!
pids+=("$host_pid")
for _ in $(seq 200); do grep -q "host ready" "$tmp/host.log" && break; sleep 0.05; done
host_port=$(grep -o 'address=127.0.0.1:[0-9]*' "$tmp/host.log" | head -1 | cut -d: -f2)
[ -n "$host_port" ] || { cat "$tmp/host.log"; exit 1; }

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
    ssl_protocols TLSv1.2 TLSv1.3;
    server {
        listen 127.0.0.1:$nginx_port ssl reuseport;
        ssl_certificate $tmp/cert.pem;
        ssl_certificate_key $tmp/key.pem;
        location / { default_type text/plain; return 200 "Hello, World!"; }
    }
}
CONF
nginx -c "$tmp/nginx.conf" -p "$tmp" &
nginx_pid=$!
pids+=("$nginx_pid")
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$nginx_port) 2>/dev/null && break; sleep 0.05; done

# utime+stime (clock ticks) of a master and its children.
ticks() {
    local total=0 p
    for p in "$1" $(cat /proc/"$1"/task/*/children 2>/dev/null); do
        [ -r /proc/"$p"/stat ] || continue
        total=$((total + $(awk '{sub(/.*\) /, ""); print $12 + $13}' /proc/"$p"/stat)))
    done
    echo "$total"
}
hz=$(getconf CLK_TCK)

# One wrk run against a server: prints "requests/s µs-of-server-CPU-per-request".
measure() {
    local pid=$1 port=$2; shift 2
    local before after out reqs rps
    before=$(ticks "$pid")
    out=$(wrk -t1 -c64 -d"$DURATION" "$@" "https://127.0.0.1:$port/")
    after=$(ticks "$pid")
    echo "$out" >>"$tmp/wrk.log"
    reqs=$(echo "$out" | awk '/requests in/ {print $1}')
    rps=$(echo "$out" | awk '/Requests\/sec/ {print $2}')
    python3 -c "print(f'{$rps:.0f} {($after - $before) * 1e6 / $hz / max($reqs, 1):.1f}')"
}

printf '%-10s %5s %12s %14s %12s %14s\n' load round "host req/s" "host µs CPU/r" "nginx req/s" "nginx µs CPU/r"
for load in keepalive handshake; do
    args=()
    [ "$load" = handshake ] && args=(-H 'Connection: close')
    for round in $(seq "$ROUNDS"); do
        read -r h_rps h_cpu < <(measure "$host_pid" "$host_port" "${args[@]}")
        read -r n_rps n_cpu < <(measure "$nginx_pid" "$nginx_port" "${args[@]}")
        printf '%-10s %5s %12s %14s %12s %14s\n' "$load" "$round" "$h_rps" "$h_cpu" "$n_rps" "$n_cpu"
    done
done
if grep -q "Non-2xx\|Socket errors" "$tmp/wrk.log"; then
    echo "errors reported by wrk:"; grep "Non-2xx\|Socket errors" "$tmp/wrk.log"
fi
