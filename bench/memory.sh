#!/usr/bin/env bash
# Run: bash bench/memory.sh               (needs nginx and python3; about 1 minute)
#
# Idle memory of `host --plugin http --count 2` against nginx with 2 workers (`return 200`),
# ROUNDS starts of each, alternating: PSS and private memory (Private_Clean + Private_Dirty) of
# the master and of each worker (`/proc/PID/smaps_rollup`), SETTLE seconds after the start, no
# request. With BREAKDOWN=1 it also prints, for the last host start, one worker's mappings
# grouped by file and permissions (PSS, private, resident KiB), which is how bench/README.md's
# "Idle worker memory" tables are made. The binaries are $HOST_BIN (target/release/host, with
# host-worker beside it) and the plugins of $PLUGIN_DIR (target/release). Stops what it
# started, by pid.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
ROUNDS=${ROUNDS:-3}
SETTLE=${SETTLE:-2}
need nginx python3

# `rollup PID`: "PSS private" in KiB.
rollup() {
    awk '/^Pss:/ {p=$2} /^Private_(Clean|Dirty):/ {v+=$2} END {print p, v}' "/proc/$1/smaps_rollup"
}
# `report NAME MASTER-PID`: one line per process.
report() {
    local c
    echo "$1 master $(rollup "$2")"
    for c in $(children "$2"); do echo "$1 worker $(rollup "$c")"; done
}

www=$tmp/www
mkdir -p "$www"
chmod 755 "$tmp" "$www"  # nginx's workers run as another user
for round in $(seq "$ROUNDS"); do
    start_host "host$round" --plugin http --count 2
    for _ in $(seq 100); do [ "$(children "$host_pid" | wc -w)" -ge 2 ] && break; sleep 0.05; done
    sleep "$SETTLE"
    report host "$host_pid" | tee -a "$tmp/rows"
    worker=$(children "$host_pid" | awk '{print $1}')
    [ "${BREAKDOWN:-0}" = 0 ] || cp "/proc/$worker/smaps" "$tmp/worker.smaps"
    stop_pid "$host_pid"

    port=$(free_port)
    cat >"$tmp/nginx.conf" <<CONF
worker_processes 2;
daemon off;
pid $tmp/nginx.pid;
error_log $tmp/nginx-error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    server { listen 127.0.0.1:$port reuseport;
        location = / { default_type text/plain; return 200 "Hello, World!"; } }
}
CONF
    start_peer "$port" nginx -c "$tmp/nginx.conf" -p "$tmp" -e "$tmp/nginx-error.log"
    for _ in $(seq 100); do [ "$(children "$peer_pid" | wc -w)" -ge 2 ] && break; sleep 0.05; done
    sleep "$SETTLE"
    report nginx "$peer_pid" | tee -a "$tmp/rows"
    stop_pid "$peer_pid"
done

python3 - "$tmp/rows" <<'PY'
import collections, sys
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    server, role, pss, private = line.split()
    rows[(server, role)].append((int(pss), int(private)))
print(f"\n{'':14} {'PSS KiB':>14} {'private KiB':>14}")
for (server, role), v in sorted(rows.items()):
    p = [a for a, _ in v]
    q = [b for _, b in v]
    print(f"{server + ' ' + role:14} {min(p):>6,}–{max(p):<7,} {min(q):>6,}–{max(q):<7,}")
PY

if [ "${BREAKDOWN:-0}" != 0 ]; then
    python3 - "$tmp/worker.smaps" <<'PY'
import collections, re, sys
groups = collections.defaultdict(lambda: [0, 0, 0])
key = None
for line in open(sys.argv[1]):
    m = re.match(r"^[0-9a-f]+-[0-9a-f]+ (\S+) \S+ \S+ \S+\s*(.*)$", line)
    if m:
        perms, path = m.groups()
        key = f"{path.rsplit('/', 1)[-1] or '[anon]'} {perms}"
        continue
    m = re.match(r"^(Pss|Private_Clean|Private_Dirty|Rss):\s+(\d+)", line)
    if m and key:
        field, kib = m.group(1), int(m.group(2))
        g = groups[key]
        if field == "Pss":
            g[0] += kib
        elif field == "Rss":
            g[2] += kib
        else:
            g[1] += kib
print(f"\none host worker's mappings: {'PSS':>6} {'private':>8} {'resident':>9} KiB")
for k, (pss, private, rss) in sorted(groups.items(), key=lambda kv: -kv[1][0]):
    if pss:
        print(f"  {k[:40]:40} {pss:>6,} {private:>8,} {rss:>9,}")
print(f"  {'total':40} {sum(g[0] for g in groups.values()):>6,}")
PY
fi
