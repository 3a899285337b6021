#!/usr/bin/env bash
# Run: bash bench/chaos.sh            (needs wrk and curl; PROFILE=debug uses a debug build)
#
# Chaos under load, bounded to DURATION (30 s): `host --plugin http --count 4` serves
# wrk -t1 -c64 keep-alive load while a random worker is SIGKILLed every 2 s and the plugin file
# is replaced (a new content variant, moved into place) every 5 s. Reports wrk's requests and
# errors, the master's descriptor count and RSS before and after, the kills and reloads done, and
# whether every slot has a ready worker at the end. Stops everything it started, by pid.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-30}
PROFILE=${PROFILE:-release}
source bench/lib.sh
need wrk

if [ "$PROFILE" = release ]; then cargo build --release -q -p host -p host-plugin-http; else cargo build -q -p host -p host-plugin-http; fi
bin="target/$PROFILE"
mkdir -p "$tmp/plugins" "$tmp/staging"
chmod 755 "$tmp" "$tmp/plugins"
cp "$bin/libhttp.so" "$tmp/plugins/http.so"
variant() { cp "$bin/libhttp.so" "$tmp/staging/http.so"; printf 'chaos variant %s' "$1" >>"$tmp/staging/http.so"; mv "$tmp/staging/http.so" "$tmp/plugins/http.so"; }

HOST_BIN="$bin/host" PLUGIN_DIR="$tmp/plugins" start_host host --plugin http --count 4
master=$host_pid
port=$host_port
url="http://127.0.0.1:$port/"
curl -sf "$url" >/dev/null

fds() { ls "/proc/$master/fd" | wc -l; }
rss() { awk '/VmRSS/ {print $2 " kB"}' "/proc/$master/status"; }
workers() { for p in $(cat "/proc/$master/task/$master/children"); do
    case "$(tr '\0' ' ' <"/proc/$p/cmdline")" in "host: worker"*) echo "$p" ;; esac; done; }
fds_before=$(fds); rss_before=$(rss)

echo "== chaos: wrk -t1 -c64 -d${DURATION}s; SIGKILL a random worker every 2 s, new plugin file every 5 s"
wrk -t1 -c64 -d"${DURATION}s" "$url" >"$tmp/wrk.txt" &
wrk_pid=$!
pids+=("$wrk_pid")
kills=0; reloads=0
start=$(date +%s)
tick=0
while [ $(( $(date +%s) - start )) -lt "$DURATION" ]; do
    sleep 1
    tick=$((tick + 1))
    if [ $((tick % 2)) -eq 0 ]; then
        mapfile -t live < <(workers)
        if [ "${#live[@]}" -gt 0 ]; then
            victim=${live[$((RANDOM % ${#live[@]}))]}
            kill -KILL "$victim" 2>/dev/null && kills=$((kills + 1))
        fi
    fi
    if [ $((tick % 5)) -eq 0 ]; then variant "$tick"; reloads=$((reloads + 1)); fi
done
wait "$wrk_pid" || true
wrk_pid=""

# Every slot back: 4 ready workers within 10 s of the end.
back=no
for _ in $(seq 100); do
    out=$("$bin/host" status --pid-file "$tmp/host.pid" 2>/dev/null || true)
    ready=$(printf '%s\n' "$out" | awk '$1 == "http" && $2 ~ /^#/ && $NF == "ready"' | wc -l)
    [ "$ready" -eq 4 ] && { back=yes; break; }
    sleep 0.1
done
fds_after=$(fds); rss_after=$(rss)

echo "--- wrk"
grep -E "requests in|Socket errors|Non-2xx|Requests/sec" "$tmp/wrk.txt" || true
echo "--- chaos"
echo "workers killed:        $kills"
echo "plugin files replaced: $reloads"
echo "reloads done / aborted: $(grep -c "reload done" "$tmp/host.log" || true) / $(grep -c "reload aborted" "$tmp/host.log" || true)"
echo "master fds before/after: $fds_before / $fds_after"
echo "master RSS before/after: $rss_before / $rss_after"
echo "every slot back (4 ready): $back"
printf '%s\n' "$out" | sed -n '/WORKER EXITS/,$p'
[ "$back" = yes ]
