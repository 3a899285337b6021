#!/usr/bin/env bash
# Run: bash bench/run.sh [SECTION...]      (all sections when none is named)
#
# The benchmark harness (issue 13): each plugin against its best-known peer, on loopback, side by
# side in one run. Not run by CI: speed is measured here, never asserted in tests. Needs cargo,
# python3, wrk, nginx, openssl, redis-server and redis-benchmark (Debian: `apt-get install wrk
# nginx openssl redis-server`).
#
# Sections, in order:
#   plain    http vs nginx `return 200`: keep-alive (wrk -t1 -c64), -c1000, 16 pipelined per write
#   static   http vs nginx serving the same 1 MiB file (wrk -t1 -c64)
#   https    http over TLS vs nginx ssl, same certificate: keep-alive, and a new handshake per
#            request (wrk -H 'Connection: close')
#   h2       HTTP/2 over TLS (ALPN h2): http vs nginx `listen ... ssl http2`, same certificate,
#            h2load -t1: a small response with 64 connections of 10 streams each (-c64 -m10), and
#            the same 1 MiB file (-c8 -m10). Needs h2load (Debian nghttp2-client)
#   proxy    proxy vs nginx proxy_pass to the same upstream (a host http service), keep-alive;
#            and the upstream alone, for the added latency
#   resp     resp (1 worker) vs redis-server (1 thread): redis-benchmark -t ping,set,get -P 1, -P 16
#   log      the cost of an access log: http with `--access-log` vs without (keep-alive -c64)
#   ws       websocket echo vs the plain-TCP frame plugin (the floor; no well-known fast WebSocket
#            server is packaged here): 64 connections, 64-byte messages, one in flight each
#   process  start to first 200 (host vs nginx), one worker holding IDLE_CONNS idle keep-alive
#            connections, and the spread of 64 connections over `--count 4` workers
#   io       the worker's two I/O backends side by side with nginx (`--io epoll`, `--io uring`,
#            nginx, alternately): keep-alive -c64 and -c1000, 16 pipelined, a connection per
#            request, the 1 MiB file, https keep-alive; then system calls per request of each
#            under `strace -c -f` (keep-alive -c64, then a connection per request,
#            SYSCALL_SECONDS=3: strace slows the servers, the counts per request stand)
#   handover the hand-over of one slot on `host reload -g` (bench/handover_text.py and
#            bench/handover_resp.py): HANDOVER_CONNS (10000) text connections moved, the pause
#            their clients see and that every one echoes afterwards; then a resp keyspace of
#            HANDOVER_KEYS (1000000) keys and one redis-py connection; the gap probing clients
#            see across it (bench/handover_gap.py); redis-benchmark across 10 reloads, no error
#            and a fixed dataset intact (bench/handover_redis.py); HANDOVER_WS_CLIENTS (10000)
#            websocket clients sending numbered messages through HANDOVER_WS_RELOADS (20) watcher
#            reloads, `host upgrade` and recycling, then the same with --no-handover, and through
#            nginx across `nginx -s reload` (bench/handover_ws.py); a resp keyspace of
#            HANDOVER_BIG_KEYS (1000000) keys of 1 KiB handed over: time, the pause a probe sees,
#            peak memory of both workers, the keyspace intact (bench/handover_resp_big.py).
#            Needs python3's `redis` and redis-cli
#   topics   topic fan-out (bench/topics.sh): one publisher, TOPIC_SUBS (10000) websocket
#            subscribers of one room, on one host and through redis-server and nats-server (and a
#            Node `ws` server and Socket.IO 4 with its Redis adapter when node is installed):
#            deliveries/s, server CPU per delivery,
#            latency, missing/duplicated. Needs nats-server
#
# Every load runs alternately (host, peer, host, peer...) ROUNDS times, and each scenario prints
# one table: requests/s median [min..max], server CPU µs per request (utime+stime of the server's
# processes from /proc/PID/stat, before and after the round, over the requests served), p50/p99
# latency, errors (socket errors + non-2xx), PSS of each worker, and the host/peer ratios. Only
# ratios mean anything: the machine is shared and the load tool itself uses a core.
#
# Overridable: DURATION=5 (seconds per round), ROUNDS=3, WORKERS=2, IDLE_CONNS=10000,
# IDLE_SECONDS=5, REQUESTS=200000 (per redis-benchmark test); WRK_LOG=FILE keeps the load tools'
# output; BUILD=0 skips the build (HOST_BIN and PLUGIN_DIR, see bench/lib.sh, then name what
# runs). Every wait has a timeout; every process it starts is stopped by pid on exit.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
DURATION=${DURATION:-5}
DURATION=${DURATION%s}
ROUNDS=${ROUNDS:-3}
WORKERS=${WORKERS:-2}
IDLE_CONNS=${IDLE_CONNS:-10000}
IDLE_SECONDS=${IDLE_SECONDS:-5}
export REQUESTS=${REQUESTS:-200000}
HANDOVER_CONNS=${HANDOVER_CONNS:-10000}
HANDOVER_KEYS=${HANDOVER_KEYS:-1000000}
HANDOVER_WS_CLIENTS=${HANDOVER_WS_CLIENTS:-10000}
HANDOVER_WS_RELOADS=${HANDOVER_WS_RELOADS:-20}
HANDOVER_BIG_KEYS=${HANDOVER_BIG_KEYS:-1000000}
TOPIC_SUBS=${TOPIC_SUBS:-10000}
ALL="plain static https h2 proxy resp log ws process io handover topics"
SECTIONS=${*:-$ALL}
for s in $SECTIONS; do
    [[ " $ALL " == *" $s "* ]] || { echo "unknown section $s (sections: $ALL)" >&2; exit 2; }
done
need python3 wrk nginx openssl redis-server redis-benchmark timeout
[[ " $SECTIONS " != *" io "* ]] || need strace
ulimit -n "$(ulimit -Hn)"  # -c1000 and the idle connections need many descriptors
[ "$(ulimit -n)" -ge $((IDLE_CONNS + 1000)) ] || echo "warning: ulimit -n is $(ulimit -n)" >&2

results=$tmp/results.jsonl
: >"$results"  # sections of their own (handover, topics) print their figures and add no row
helper=bench/bench.py

if [ "${BUILD:-1}" != 0 ]; then
    echo "building (cargo build --release)..." >&2
    cargo build --release -q --workspace
fi

# Writes an nginx config: `nginx_conf WORKERS PORT FILE CONNECTIONS SERVER-BLOCK` (nginx
# allocates its connections up front: 4096 for the load, more to hold the idle connections).
nginx_conf() {
    cat >"$3" <<CONF
worker_processes $1;
daemon off;
pid $tmp/nginx-$2.pid;
error_log $tmp/nginx-error.log warn;
worker_rlimit_nofile $(ulimit -n);
events { worker_connections $4; }
http {
    access_log off;
    keepalive_requests 1000000;
    keepalive_timeout 60s;
    sendfile on;
    tcp_nopush on;
    ssl_protocols TLSv1.2 TLSv1.3;
    $5
}
CONF
}

# The server blocks: hello world and files, TLS, and proxy_pass to an upstream on port $2.
plain_server() {
    echo "server { listen 127.0.0.1:$1 reuseport;
        location = / { default_type text/plain; return 200 \"Hello, World!\"; }
        location / { root $www; } }"
}
h2_server() {
    echo "server { listen 127.0.0.1:$1 ssl http2 reuseport;
        ssl_certificate $tmp/cert.pem; ssl_certificate_key $tmp/key.pem;
        location = / { default_type text/plain; return 200 \"Hello, World!\"; }
        location / { root $www; } }"
}
tls_server() {
    echo "server { listen 127.0.0.1:$1 ssl reuseport;
        ssl_certificate $tmp/cert.pem; ssl_certificate_key $tmp/key.pem;
        location / { default_type text/plain; return 200 \"Hello, World!\"; } }"
}
proxy_server() {
    echo "upstream backend { server 127.0.0.1:$2; keepalive 64; keepalive_requests 1000000; }
    server { listen 127.0.0.1:$1 reuseport;
        location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\";
            proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for; proxy_buffering off; } }"
}

# `start_nginx WORKERS CONNECTIONS BLOCK-FUNCTION [ARG]`: sets $nginx_pid and $nginx_port.
start_nginx() {
    nginx_port=$(free_port)
    nginx_conf "$1" "$nginx_port" "$tmp/nginx-$nginx_port.conf" "$2" "$($3 "$nginx_port" "${4:-}")"
    start_peer "$nginx_port" nginx -c "$tmp/nginx-$nginx_port.conf" -p "$tmp" -e "$tmp/nginx-error.log"
    nginx_pid=$peer_pid
}

# One round: `round PARSER SCENARIO SERVER PID CMD...`; PARSER is bench.py's reader of CMD's
# output (wrk, json, redis).
round() {
    local parser=$1 scenario=$2 server=$3 pid=$4
    shift 4
    local before after
    before=$(ticks "$pid")
    timeout $((DURATION + 60)) "$@" >"$tmp/load.out" 2>&1 || true
    [ -z "${WRK_LOG:-}" ] || { echo "== $scenario $server"; cat "$tmp/load.out"; } >>"$WRK_LOG"
    after=$(ticks "$pid")
    # shellcheck disable=SC2046
    python3 "$helper" "$parser" "$scenario" "$server" $((after - before)) $(pss "$pid") <"$tmp/load.out" >>"$results"
    echo "  $scenario $server: $(tail -1 "$results" | python3 -c 'import json,sys; r=json.load(sys.stdin); print("{:,.0f}/s, {} errors".format(r["rps"], r["errors"]))')" >&2
}

# `wrk_scenario NAME SCHEME PATH WRK-ARGS...`: ROUNDS rounds of wrk, host then nginx.
wrk_scenario() {
    local name=$1 scheme=$2 path=$3
    shift 3
    echo "$name..." >&2
    for _ in $(seq "$ROUNDS"); do
        round wrk "$name" host "$host_pid" wrk --latency -t1 -d"${DURATION}s" "$@" "$scheme://127.0.0.1:$host_port$path"
        round wrk "$name" nginx "$nginx_pid" wrk --latency -t1 -d"${DURATION}s" "$@" "$scheme://127.0.0.1:$nginx_port$path"
    done
}

www=$tmp/www
mkdir -p "$www"
head -c 1048576 /dev/urandom >"$www/1m.bin"
chmod 755 "$tmp" "$www" && chmod 644 "$www/1m.bin"  # nginx's workers run as another user

section_plain() {
    start_host plain --plugin http --count "$WORKERS"
    start_nginx "$WORKERS" 4096 plain_server
    wrk_scenario "keep-alive (wrk -t1 -c64)" http / -c64
    wrk_scenario "1000 connections (wrk -t1 -c1000)" http / -c1000
    wrk_scenario "16 pipelined per write (wrk -t1 -c64 -s bench/pipeline.lua)" http / -c64 -s bench/pipeline.lua
    stop_pid "$host_pid"
    stop_pid "$nginx_pid"
}

section_static() {
    start_host static --plugin http --count "$WORKERS" --plugin-config "root = \"$www\""
    start_nginx "$WORKERS" 4096 plain_server
    wrk_scenario "static 1 MiB file (wrk -t1 -c64)" http /1m.bin -c64
    stop_pid "$host_pid"
    stop_pid "$nginx_pid"
}

# An EC P-256 self-signed certificate for both servers, made here, deleted with $tmp.
make_cert() {
    [ -f "$tmp/cert.pem" ] && return
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
        -keyout "$tmp/key.pem" -out "$tmp/cert.pem" 2>/dev/null
}

section_https() {
    make_cert
    start_host https --plugin http --count "$WORKERS" --tls-cert "$tmp/cert.pem" --tls-key "$tmp/key.pem"
    start_nginx "$WORKERS" 4096 tls_server
    wrk_scenario "https keep-alive (wrk -t1 -c64)" https / -c64
    wrk_scenario "https, a handshake per request (wrk -t1 -c64 -H 'Connection: close')" https / -c64 \
        -H "Connection: close"
    stop_pid "$host_pid"
    stop_pid "$nginx_pid"
}

# `h2load_scenario NAME PATH H2LOAD-ARGS...`: ROUNDS rounds of h2load over TLS, host then nginx.
h2load_scenario() {
    local name=$1 path=$2
    shift 2
    echo "$name..." >&2
    export H2LOAD_LOG=$tmp/h2load.log
    for _ in $(seq "$ROUNDS"); do
        round h2load "$name" host "$host_pid" h2load -t1 -D "$DURATION" --log-file="$H2LOAD_LOG" "$@" \
            "https://127.0.0.1:$host_port$path"
        round h2load "$name" nginx "$nginx_pid" h2load -t1 -D "$DURATION" --log-file="$H2LOAD_LOG" "$@" \
            "https://127.0.0.1:$nginx_port$path"
    done
    rm -f "$H2LOAD_LOG"
}

section_h2() {
    need h2load
    make_cert
    # The small response without a root, as nginx's `return 200` (with a root, the plugin looks
    # for `/index.html` on every request to `/`: a file system lookup nginx does not make).
    start_host h2 --plugin http --count "$WORKERS" --tls-cert "$tmp/cert.pem" --tls-key "$tmp/key.pem"
    start_nginx "$WORKERS" 4096 h2_server
    h2load_scenario "h2 small response (h2load -t1 -c64 -m10)" / -c64 -m10
    stop_pid "$host_pid"
    start_host h2files --plugin http --count "$WORKERS" --tls-cert "$tmp/cert.pem" --tls-key "$tmp/key.pem" \
        --plugin-config "root = \"$www\""
    h2load_scenario "h2 1 MiB file (h2load -t1 -c8 -m10)" /1m.bin -c8 -m10
    stop_pid "$host_pid"
    stop_pid "$nginx_pid"
}

section_proxy() {
    start_host upstream --plugin http --count "$WORKERS"
    local upstream_pid=$host_pid up_port=$host_port
    start_host proxy --plugin proxy --count "$WORKERS" --plugin-config "upstreams = [\"127.0.0.1:$up_port\"]"
    start_nginx "$WORKERS" 4096 proxy_server "$up_port"
    wrk_scenario "proxy to one upstream, keep-alive (wrk -t1 -c64)" http / -c64
    echo "upstream alone..." >&2
    for _ in $(seq "$ROUNDS"); do
        round wrk "the proxies' upstream alone (wrk -t1 -c64)" upstream "$upstream_pid" \
            wrk --latency -t1 -c64 -d"${DURATION}s" "http://127.0.0.1:$up_port/"
    done
    stop_pid "$host_pid"
    stop_pid "$nginx_pid"
    stop_pid "$upstream_pid"
}

section_resp() {
    start_host resp --plugin resp --count 1 --idle-timeout 0
    local redis_port
    redis_port=$(free_port)
    start_peer "$redis_port" redis-server --port "$redis_port" --bind 127.0.0.1 --save '' --appendonly no \
        --daemonize no --logfile "$tmp/redis.log"
    local test pipeline name
    for pipeline in 1 16; do
        for test in ping_mbulk set get; do
            name="resp ${test/_mbulk/} (redis-benchmark -P $pipeline, 50 clients)"
            echo "$name..." >&2
            for _ in $(seq "$ROUNDS"); do
                round redis "$name" host "$host_pid" redis-benchmark -p "$host_port" -n "$REQUESTS" -P "$pipeline" -t "$test" --csv
                round redis "$name" redis "$peer_pid" redis-benchmark -p "$redis_port" -n "$REQUESTS" -P "$pipeline" -t "$test" --csv
            done
        done
    done
    stop_pid "$host_pid"
    stop_pid "$peer_pid"
}

section_log() {
    start_host nolog --plugin http --count "$WORKERS"
    local plain_pid=$host_pid plain_port=$host_port
    start_host log --plugin http --count "$WORKERS" --access-log "$tmp/access.log"
    local name="access log: combined lines, keep-alive (wrk -t1 -c64)"
    echo "$name..." >&2
    for _ in $(seq "$ROUNDS"); do
        round wrk "$name" "access log" "$host_pid" wrk --latency -t1 -c64 -d"${DURATION}s" "http://127.0.0.1:$host_port/"
        round wrk "$name" "no log" "$plain_pid" wrk --latency -t1 -c64 -d"${DURATION}s" "http://127.0.0.1:$plain_port/"
    done
    stop_pid "$host_pid"
    stop_pid "$plain_pid"
    echo "  access log: $(wc -l <"$tmp/access.log") lines written" >&2
}

section_ws() {
    start_host ws --plugin websocket --count "$WORKERS"
    local ws_pid=$host_pid ws_port=$host_port
    start_host frame --plugin frame --count "$WORKERS"
    local name="echo, 64 connections, 64-byte messages (msgload)"
    echo "$name..." >&2
    for _ in $(seq "$ROUNDS"); do
        round json "$name" websocket "$ws_pid" target/release/msgload ws "$ws_port" 64 "$DURATION" 64
        round json "$name" frame "$host_pid" target/release/msgload frame "$host_port" 64 "$DURATION" 64
    done
    stop_pid "$ws_pid"
    stop_pid "$host_pid"
}

section_process() {
    # Start to first 200, alternately, 3 times each.
    echo "start-up..." >&2
    for _ in 1 2 3; do
        python3 "$helper" startup host 10 target/release/host --plugin http --plugin-dir target/release \
            --count "$WORKERS" --listen "127.0.0.1:{port}" --pid-file "$tmp/startup.pid" --log-level warn >>"$results"
        nginx_conf "$WORKERS" "{port}" "$tmp/startup-nginx.tmpl" 4096 "$(plain_server "{port}")"
        python3 "$helper" startup nginx 10 nginx -c "@$tmp/startup-nginx.tmpl" -p "$tmp" -e "$tmp/nginx-error.log" >>"$results"
    done

    # One worker holding IDLE_CONNS idle keep-alive connections.
    echo "idle connections..." >&2
    start_host idle --plugin http --count 1 --max-connections $((IDLE_CONNS + 1000))
    python3 "$helper" idle host "$(children "$host_pid")" "$host_port" "$IDLE_CONNS" "$IDLE_SECONDS" >>"$results"
    stop_pid "$host_pid"
    start_nginx 1 $((IDLE_CONNS + 2000)) plain_server
    python3 "$helper" idle nginx "$(children "$nginx_pid")" "$nginx_port" "$IDLE_CONNS" "$IDLE_SECONDS" >>"$results"
    stop_pid "$nginx_pid"

    # Spread of 64 keep-alive connections over 4 workers.
    echo "spread..." >&2
    start_host spread --plugin http --count 4
    timeout $((DURATION + 30)) wrk -t1 -c64 -d"${DURATION}s" "http://127.0.0.1:$host_port/" >"$tmp/wrk.out" 2>&1 || true
    local reqs
    reqs=$(awk '/requests in/ {print $1}' "$tmp/wrk.out")
    python3 "$helper" spread target/release/host "$host_pidfile" 4 "${reqs:-0}" 10 >>"$results"
    stop_pid "$host_pid"
}

# `io_scenario NAME SCHEME PATH WRK-ARGS...`: ROUNDS rounds of wrk: host on epoll, host on
# io_uring, nginx (`io_start` set the pids and ports).
io_scenario() {
    local name=$1 scheme=$2 path=$3
    shift 3
    echo "$name..." >&2
    for _ in $(seq "$ROUNDS"); do
        round wrk "$name" epoll "$epoll_pid" wrk --latency -t1 -d"${DURATION}s" "$@" "$scheme://127.0.0.1:$epoll_port$path"
        round wrk "$name" uring "$uring_pid" wrk --latency -t1 -d"${DURATION}s" "$@" "$scheme://127.0.0.1:$uring_port$path"
        round wrk "$name" nginx "$nginx_pid" wrk --latency -t1 -d"${DURATION}s" "$@" "$scheme://127.0.0.1:$nginx_port$path"
    done
}

# `io_start GROUP NGINX-BLOCK HOST-ARGS...`: the host with `--io epoll` and with `--io uring`, and
# nginx. Each group's hosts have logs and pid files of their own (a host of the group before
# that is still exiting must not lend its log lines, or its port, to the next).
io_start() {
    local group=$1 block=$2
    shift 2
    start_host "io-$group-epoll" --plugin http --count "$WORKERS" --io epoll "$@"
    epoll_pid=$host_pid epoll_port=$host_port
    start_host "io-$group-uring" --plugin http --count "$WORKERS" --io uring "$@"
    uring_pid=$host_pid uring_port=$host_port
    if grep -q "io_uring is unavailable" "$tmp/io-$group-uring.log"; then
        echo "io_uring is unavailable here: $(grep -m1 'io_uring is unavailable' "$tmp/io-$group-uring.log")" >&2
    fi
    start_nginx "$WORKERS" 4096 "$block"
}

io_stop() {
    stop_pid "$epoll_pid"
    stop_pid "$uring_pid"
    stop_pid "$nginx_pid"
}

# `syscalls NAME PID PORT [WRK-ARGS...]`: the system calls per request of PID's workers under
# wrk -t1 -c64 (keep-alive unless WRK-ARGS say otherwise; strace -c -f on each worker), the
# busiest ones by name.
syscalls() {
    local name=$1 pid=$2 port=$3 args=() p
    shift 3
    for p in $(children "$pid"); do args+=(-p "$p"); done
    strace -c -f -o "$tmp/strace.out" "${args[@]}" 2>"$tmp/strace.err" &
    local strace_pid=$!
    pids+=("$strace_pid")
    for _ in $(seq 100); do [ "$(grep -c attached "$tmp/strace.err")" -ge "${#args[@]}" ] && break; sleep 0.05; done
    timeout $((SYSCALL_SECONDS + 30)) wrk -t1 -c64 -d"${SYSCALL_SECONDS}s" "$@" "http://127.0.0.1:$port/" >"$tmp/wrk.out" 2>&1 || true
    kill -INT "$strace_pid"
    wait "$strace_pid" || true
    python3 - "$name" "$(awk '/requests in/ {print $1}' "$tmp/wrk.out")" "$tmp/strace.out" <<'PY'
import sys
name, reqs, path = sys.argv[1], int(sys.argv[2] or 0), sys.argv[3]
calls = {}
for line in open(path):
    f = line.split()
    if len(f) >= 5 and f[0][0].isdigit() and f[-1] != "total":
        calls[f[-1]] = int(f[3])
total = sum(calls.values())
top = sorted(calls.items(), key=lambda kv: -kv[1])[:6]
per = lambda n: f"{n / max(reqs, 1):.3f}"
print(f"| {name} | {reqs:,} | {per(total)} | " + ", ".join(f"{k} {per(v)}" for k, v in top) + " |")
PY
}

section_io() {
    SYSCALL_SECONDS=${SYSCALL_SECONDS:-3}
    io_start plain plain_server
    io_scenario "io: keep-alive (wrk -t1 -c64)" http / -c64
    io_scenario "io: 1000 connections (wrk -t1 -c1000)" http / -c1000
    io_scenario "io: 16 pipelined per write (wrk -t1 -c64 -s bench/pipeline.lua)" http / -c64 -s bench/pipeline.lua
    io_scenario "io: a connection per request (wrk -t1 -c64 -H 'Connection: close')" http / -c64 -H "Connection: close"
    echo "system calls per request (strace -c -f, wrk -t1 -c64 ${SYSCALL_SECONDS}s)..." >&2
    {
        echo "| server | requests under strace | system calls per request | the busiest, per request |"
        echo "|---|---|---|---|"
        syscalls epoll "$epoll_pid" "$epoll_port"
        syscalls uring "$uring_pid" "$uring_port"
        syscalls nginx "$nginx_pid" "$nginx_port"
        echo
        echo "a connection per request (-H 'Connection: close'):"
        echo
        echo "| server | requests under strace | system calls per request | the busiest, per request |"
        echo "|---|---|---|---|"
        syscalls epoll "$epoll_pid" "$epoll_port" -H "Connection: close"
        syscalls uring "$uring_pid" "$uring_port" -H "Connection: close"
        syscalls nginx "$nginx_pid" "$nginx_port" -H "Connection: close"
    } >"$tmp/syscalls.md"
    io_stop
    io_start static plain_server --plugin-config "root = \"$www\""
    io_scenario "io: static 1 MiB file (wrk -t1 -c64)" http /1m.bin -c64
    io_stop
    [ -f "$tmp/cert.pem" ] || openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 \
        -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1 \
        -keyout "$tmp/key.pem" -out "$tmp/cert.pem" 2>/dev/null
    io_start tls tls_server --tls-cert "$tmp/cert.pem" --tls-key "$tmp/key.pem"
    io_scenario "io: https keep-alive (wrk -t1 -c64)" https / -c64
    io_stop
}

section_handover() {
    echo "== hand-over: $HANDOVER_CONNS text connections on reload -g (bench/handover_text.py)"
    HOST_BIN=target/release/host timeout 600 python3 bench/handover_text.py "$HANDOVER_CONNS"
    echo "== hand-over: a resp keyspace of $HANDOVER_KEYS keys on reload -g (bench/handover_resp.py)"
    HOST_BIN=target/release/host timeout 600 python3 bench/handover_resp.py "$HANDOVER_KEYS"
    echo "== hand-over: the gap $HANDOVER_CONNS text clients see across reload -g (bench/handover_gap.py)"
    HOST_BIN=target/release/host timeout 600 python3 bench/handover_gap.py "$HANDOVER_CONNS"
    echo "== hand-over: redis-benchmark across 10 reload -g of resp (bench/handover_redis.py)"
    HOST_BIN=target/release/host RELOADS=10 timeout 600 python3 bench/handover_redis.py
    echo "== hand-over: $HANDOVER_WS_CLIENTS websocket clients through $HANDOVER_WS_RELOADS watcher reloads, upgrade, recycling (bench/handover_ws.py)"
    HOST_BIN=target/release/host CLIENTS=$HANDOVER_WS_CLIENTS RELOADS=$HANDOVER_WS_RELOADS timeout 900 python3 bench/handover_ws.py
    echo "== the same with --no-handover (the drain; the clients reconnect)"
    HOST_BIN=target/release/host CLIENTS=$HANDOVER_WS_CLIENTS RELOADS=$HANDOVER_WS_RELOADS HOST_ARGS=--no-handover \
        timeout 900 python3 bench/handover_ws.py
    echo "== nginx as a websocket proxy, $HANDOVER_WS_CLIENTS clients, nginx -s reload (bench/handover_ws.py MODE=nginx)"
    HOST_BIN=target/release/host CLIENTS=$HANDOVER_WS_CLIENTS MODE=nginx timeout 600 python3 bench/handover_ws.py
    echo "== hand-over: a resp keyspace of $HANDOVER_BIG_KEYS keys of 1 KiB on reload -g (bench/handover_resp_big.py)"
    HOST_BIN=target/release/host KEYS=$HANDOVER_BIG_KEYS timeout 900 python3 bench/handover_resp_big.py
}

section_topics() {
    echo "== topics: fan-out to $TOPIC_SUBS subscribers (bench/topics.sh)"
    SUBS=$TOPIC_SUBS DURATION=$DURATION ROUNDS=1 bash bench/topics.sh
}

for s in $SECTIONS; do "section_$s"; done

echo "## bench/run.sh $SECTIONS, $(date -u '+%Y-%m-%d %H:%M UTC'): DURATION=${DURATION}s ROUNDS=$ROUNDS WORKERS=$WORKERS"
echo "machine: $(nproc) cores, $(lscpu | sed -n 's/^Model name: *//p' | head -1), Linux $(uname -r); $(wrk --version 2>&1 | head -1 | cut -d' ' -f1-2), $(nginx -v 2>&1 | cut -d' ' -f3), $(redis-server --version | cut -d' ' -f3)"
python3 "$helper" report "$results"
if [ -f "$tmp/syscalls.md" ]; then
    echo
    echo "### io: system calls per request (strace -c -f on the workers, wrk -t1 -c64 keep-alive, ${SYSCALL_SECONDS}s)"
    echo
    cat "$tmp/syscalls.md"
fi
