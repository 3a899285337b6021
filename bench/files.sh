#!/usr/bin/env bash
# Run: bash bench/files.sh      (ROUNDS=3; needs wrk, curl, nginx, python3; root for the cold runs)
#
# Static files, release build, on loopback: the http plugin with `file_io = "sendfile"` (the
# host sends file ranges with sendfile(2)), with `file_io = "pool"` (the plugin reads, from the
# page cache in the loop or on the task pool, and sends bytes), and nginx (`sendfile on`), in
# turn, ROUNDS rounds, the order rotated each round:
#   1. 1 MiB file, hot cache, 2 workers: wrk -t2 -c64 -d5s: requests/s, server CPU µs/request;
#   2. 100 MiB file, hot cache, 2 workers: 8 curls at once: seconds, server CPU ms/request;
#   3. 1 worker: p99 of `GET /` (wrk -t1 -c8 -d5s --latency) while 4 curls each read another
#      100 MiB file from a cold page cache (`echo 3 > /proc/sys/vm/drop_caches`; skipped when not
#      root), and the seconds until the 4 downloads are done.
# Prints each run, then the median and range of each figure. Every run is bounded in time; every
# process started is stopped by pid (bench/lib.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
need wrk curl nginx python3 timeout
ROUNDS=${ROUNDS:-3}
MODES=(sendfile pool nginx)
results=$tmp/results.tsv
: >"$results"

cargo build --release -q -p host -p host-plugin-http
www=$tmp/www
mkdir -p "$www"
chmod a+rx "$tmp" "$www" # nginx's workers run as another user
head -c $((1 << 20)) /dev/urandom >"$www/1m.bin"
for i in 0 1 2 3 4; do head -c $((100 << 20)) /dev/urandom >"$www/100m-$i.bin"; done
chmod a+r "$www"/*
sync
hz=$(getconf CLK_TCK)

# `start_server MODE WORKERS`: sets $pid and $port.
start_server() {
    if [ "$1" = nginx ]; then
        port=$(free_port)
        cat >"$tmp/nginx.conf" <<CONF
worker_processes $2;
daemon off;
pid $tmp/nginx.pid;
error_log $tmp/nginx-error.log warn;
events { worker_connections 1024; }
http {
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    server { listen 127.0.0.1:$port;
        location = / { default_type text/plain; return 200 "Hello, World!"; }
        location / { root $www; } }
}
CONF
        start_peer "$port" nginx -c "$tmp/nginx.conf" -p "$tmp" -e "$tmp/nginx-error.log"
        pid=$peer_pid
    else
        start_host "$1" --plugin http --count "$2" --plugin-config "root = \"$www\"
file_io = \"$1\""
        pid=$host_pid
        port=$host_port
    fi
}
stop_server() { stop_pid "$pid"; }
record() { printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$results"; echo "  $1 $2: $3" >&2; }

hot() { # MODE
    local mode=$1 before after n
    start_server "$mode" 2
    curl -sf -o /dev/null "http://127.0.0.1:$port/1m.bin" || { echo "$mode does not serve 1m.bin" >&2; exit 1; }
    before=$(ticks "$pid")
    timeout 30 wrk -t2 -c64 -d5s "http://127.0.0.1:$port/1m.bin" >"$tmp/wrk.out" 2>&1 || true
    after=$(ticks "$pid")
    n=$(awk '/requests in/ {print $1}' "$tmp/wrk.out")
    record "1MiB_req_per_s" "$mode" "$(awk '/Requests\/sec/ {print $2}' "$tmp/wrk.out")"
    record "1MiB_cpu_us_per_req" "$mode" "$(python3 -c "print(round(($after - $before) * 1e6 / $hz / max($n, 1)))")"

    cat "$www/100m-0.bin" >/dev/null
    local t0 t1 curls=()
    before=$(ticks "$pid")
    t0=$(date +%s.%N)
    for _ in $(seq 8); do
        timeout 60 curl -s -o /dev/null "http://127.0.0.1:$port/100m-0.bin" &
        curls+=($!)
    done
    wait "${curls[@]}" || true
    t1=$(date +%s.%N)
    after=$(ticks "$pid")
    record "100MiBx8_s" "$mode" "$(python3 -c "print(round($t1 - $t0, 2))")"
    record "100MiB_cpu_ms_per_req" "$mode" "$(python3 -c "print(round(($after - $before) * 1e3 / $hz / 8, 1))")"
    stop_server
}

cold() { # MODE ROUND
    local mode=$1 file=$(($2 % 2)) t0 curls=()
    start_server "$mode" 1
    # Each round reads other files than the last (and all are dropped from the cache anyway).
    sync
    echo 3 >/proc/sys/vm/drop_caches
    t0=$(date +%s.%N)
    for i in 0 1 2 3; do
        timeout 120 curl -s -o /dev/null "http://127.0.0.1:$port/100m-$(((i + file) % 5)).bin" &
        curls+=($!)
    done
    timeout 30 wrk -t1 -c8 -d5s --latency "http://127.0.0.1:$port/" >"$tmp/wrk.out" 2>&1 || true
    record "GET_p99_ms_cold" "$mode" "$(awk '/^ +99%/ {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v*=1000}; print v}' "$tmp/wrk.out")"
    record "GET_req_per_s_cold" "$mode" "$(awk '/Requests\/sec/ {print $2}' "$tmp/wrk.out")"
    wait "${curls[@]}" || true
    record "4x100MiB_cold_s" "$mode" "$(python3 -c "print(round($(date +%s.%N) - $t0, 2))")"
    stop_server
}

for round in $(seq "$ROUNDS"); do
    # Rotate the order: no mode always runs first (or after the same one) on this shared machine.
    order=("${MODES[@]:$((round % 3))}" "${MODES[@]:0:$((round % 3))}")
    echo "== round $round: ${order[*]}" >&2
    for mode in "${order[@]}"; do hot "$mode"; done
    if [ "$(id -u)" = 0 ]; then
        for mode in "${order[@]}"; do cold "$mode" "$round"; done
    else
        echo "  cold-cache runs skipped (not root)" >&2
    fi
done

echo "== median [min - max] over $ROUNDS rounds (load average: $(cut -d' ' -f1-3 /proc/loadavg))"
python3 - "$results" <<'PY'
import collections, statistics, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    metric, mode, value = line.rstrip("\n").split("\t")
    if value:
        runs[(metric, mode)].append(float(value))
for metric in dict.fromkeys(m for m, _ in runs):
    cells = []
    for mode in ("sendfile", "pool", "nginx"):
        v = runs.get((metric, mode))
        cells.append(f"{mode} {statistics.median(v):g} [{min(v):g} - {max(v):g}]" if v else f"{mode} -")
    print(f"{metric:24} " + " | ".join(cells))
PY
