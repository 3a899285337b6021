#!/usr/bin/env bash
# Run: bash bench/run.sh
#
# The benchmark harness (issue 13): `host --plugin http` against nginx, its best-known peer, on
# loopback, side by side in one run. Needs: cargo, python3, wrk and nginx (Debian: `apt-get
# install wrk nginx`). Not run by CI: speed is measured here, never asserted in tests.
#
# The load runs alternately (host, nginx, host, nginx, ...) ROUNDS times per scenario, and each
# scenario prints one table: requests/s median [min..max], server CPU µs per request (utime+stime
# of the master and its workers from /proc/PID/stat, before and after the round, over the
# requests wrk reports), p50/p99 latency, errors (socket errors + non-2xx), PSS of each worker,
# and host/nginx ratios. Only ratios mean anything: the machine is shared and wrk itself uses a
# core. Scenarios: keep-alive (wrk -t1 -c64), -c1000, 16 requests pipelined per write, a static
# 1 MiB file. Then: start to first 200 (median of 3), one worker holding IDLE_CONNS idle
# keep-alive connections (PSS before/after, CPU over IDLE_SECONDS), and the spread of 64
# connections over `--count 4` workers.
#
# Overridable: DURATION=5 (seconds per round), ROUNDS=3, WORKERS=2, IDLE_CONNS=10000,
# IDLE_SECONDS=5; WRK_LOG=FILE keeps wrk's own output. Every wait has a timeout; every process it starts is stopped by pid on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-5}
DURATION=${DURATION%s}
ROUNDS=${ROUNDS:-3}
WORKERS=${WORKERS:-2}
IDLE_CONNS=${IDLE_CONNS:-10000}
IDLE_SECONDS=${IDLE_SECONDS:-5}
for tool in cargo python3 wrk nginx timeout; do
    command -v "$tool" >/dev/null || { echo "$tool is missing (Debian: apt-get install wrk nginx python3)" >&2; exit 1; }
done
ulimit -n "$(ulimit -Hn)"  # -c1000 and the idle connections need many descriptors
[ "$(ulimit -n)" -ge $((IDLE_CONNS + 1000)) ] || echo "warning: ulimit -n is $(ulimit -n)" >&2

tmp=$(mktemp -d)
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
    done
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

results=$tmp/results.jsonl
helper=bench/bench.py
host_bin=target/release/host

echo "building (cargo build --release)..." >&2
cargo build --release -q

# Starts host with the given extra arguments on a port the system picks; sets $host_pid,
# $host_port and $host_pidfile.
start_host() {
    local name=$1
    shift
    host_pidfile=$tmp/$name.pid
    "$host_bin" --plugin http --listen 127.0.0.1:0 --pid-file "$host_pidfile" --log-level warn,host::master=info \
        "$@" >"$tmp/$name.out" 2>"$tmp/$name.log" &
    host_pid=$!
    pids+=("$host_pid")
    for _ in $(seq 200); do grep -q "host ready" "$tmp/$name.log" && break; sleep 0.05; done
    host_port=$(grep -o 'address=127.0.0.1:[0-9]*' "$tmp/$name.log" | head -1 | cut -d: -f2)
    [ -n "$host_port" ] || { cat "$tmp/$name.log" >&2; exit 1; }
}

stop_pid() {
    local p=$1
    kill -INT "$p" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || return 0; sleep 0.05; done
    kill -KILL "$p" 2>/dev/null || true
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Writes an nginx config for $1 workers on port $2 serving files from $3 into $4, with $5
# connections per worker (nginx allocates them up front: 4096 for the load, more to hold the idle
# connections).
nginx_conf() {
    cat >"$4" <<CONF
worker_processes $1;
daemon off;
pid $tmp/nginx-$2.pid;
error_log $tmp/nginx-error.log warn;
worker_rlimit_nofile $(ulimit -n);
events { worker_connections ${5:-4096}; }
http {
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    sendfile on;
    tcp_nopush on;
    server {
        listen 127.0.0.1:$2 reuseport;
        location = / { default_type text/plain; return 200 "Hello, World!"; }
        location / { root $3; }
    }
}
CONF
}

wait_port() {
    for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done
    echo "nothing listens on $1" >&2
    exit 1
}

start_nginx() {
    nginx_port=$(free_port)
    nginx_conf "$1" "$nginx_port" "$www" "$tmp/nginx-$nginx_port.conf" "${2:-4096}"
    nginx -c "$tmp/nginx-$nginx_port.conf" -p "$tmp" -e "$tmp/nginx-error.log" &
    nginx_pid=$!
    pids+=("$nginx_pid")
    wait_port "$nginx_port"
}

children() { cat "/proc/$1/task/$1/children" 2>/dev/null || true; }
ticks() { python3 -B -c "import sys; sys.path.insert(0, 'bench'); import bench; print(bench.ticks($1))"; }
pss() { for c in $(children "$1"); do awk '/^Pss:/ {print $2}' "/proc/$c/smaps_rollup"; done; }

# One round: scenario, server name, master pid, then wrk's arguments.
round() {
    local scenario=$1 server=$2 pid=$3
    shift 3
    local before after
    before=$(ticks "$pid")
    timeout $((DURATION + 30)) wrk --latency -t1 -d"${DURATION}s" "$@" >"$tmp/wrk.out" 2>&1 || true
    [ -z "${WRK_LOG:-}" ] || { echo "== $scenario $server"; cat "$tmp/wrk.out"; } >>"$WRK_LOG"
    after=$(ticks "$pid")
    # shellcheck disable=SC2046
    python3 "$helper" wrk "$scenario" "$server" $((after - before)) $(pss "$pid") <"$tmp/wrk.out" >>"$results"
    echo "  $scenario $server: $(grep 'Requests/sec' "$tmp/wrk.out" || echo 'wrk failed')" >&2
}

scenario() {
    local name=$1 path=$2
    shift 2
    echo "$name..." >&2
    for _ in $(seq "$ROUNDS"); do
        round "$name" host "$host_pid" "$@" "http://127.0.0.1:$host_port$path"
        round "$name" nginx "$nginx_pid" "$@" "http://127.0.0.1:$nginx_port$path"
    done
}

www=$tmp/www
mkdir -p "$www"
head -c 1048576 /dev/urandom >"$www/1m.bin"
chmod 755 "$tmp" "$www" && chmod 644 "$www/1m.bin"  # nginx's workers run as another user

# Plain text: host and nginx with WORKERS workers each.
start_host plain --count "$WORKERS"
start_nginx "$WORKERS"
scenario "keep-alive (wrk -t1 -c64)" / -c64
scenario "1000 connections (wrk -t1 -c1000)" / -c1000
scenario "16 pipelined per write (wrk -t1 -c64 -s bench/pipeline.lua)" / -c64 -s bench/pipeline.lua
stop_pid "$host_pid"

# Static 1 MiB file: host with a root (nginx already serves it).
start_host static --count "$WORKERS" --plugin-config "root = \"$www\""
scenario "static 1 MiB file (wrk -t1 -c64)" /1m.bin -c64
stop_pid "$host_pid"
stop_pid "$nginx_pid"

# Start to first 200, alternately, 3 times each.
echo "start-up..." >&2
for _ in 1 2 3; do
    python3 "$helper" startup host 10 "$host_bin" --plugin http --count "$WORKERS" --listen "127.0.0.1:{port}" \
        --pid-file "$tmp/startup.pid" --log-level warn >>"$results"
    nginx_conf "$WORKERS" "{port}" "$www" "$tmp/startup-nginx.tmpl"
    python3 "$helper" startup nginx 10 nginx -c "@$tmp/startup-nginx.tmpl" -p "$tmp" -e "$tmp/nginx-error.log" >>"$results"
done

# One worker holding IDLE_CONNS idle keep-alive connections.
echo "idle connections..." >&2
start_host idle --count 1 --max-connections $((IDLE_CONNS + 1000))
python3 "$helper" idle host "$(children "$host_pid")" "$host_port" "$IDLE_CONNS" "$IDLE_SECONDS" >>"$results"
stop_pid "$host_pid"
start_nginx 1 $((IDLE_CONNS + 2000))
python3 "$helper" idle nginx "$(children "$nginx_pid")" "$nginx_port" "$IDLE_CONNS" "$IDLE_SECONDS" >>"$results"
stop_pid "$nginx_pid"

# Spread of 64 keep-alive connections over 4 workers.
echo "spread..." >&2
start_host spread --count 4
timeout $((DURATION + 30)) wrk -t1 -c64 -d"${DURATION}s" "http://127.0.0.1:$host_port/" >"$tmp/wrk.out" 2>&1 || true
reqs=$(awk '/requests in/ {print $1}' "$tmp/wrk.out")
python3 "$helper" spread "$host_bin" "$host_pidfile" 4 "${reqs:-0}" 10 >>"$results"
stop_pid "$host_pid"

echo "## bench/run.sh, $(date -u '+%Y-%m-%d %H:%M UTC'): DURATION=${DURATION}s ROUNDS=$ROUNDS WORKERS=$WORKERS"
echo "machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p' | head -1), Linux $(uname -r); $(wrk --version 2>&1 | head -1 | cut -d' ' -f1-2), $(nginx -v 2>&1 | cut -d' ' -f3)"
python3 "$helper" report "$results"
