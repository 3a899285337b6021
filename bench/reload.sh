#!/usr/bin/env bash
# Run: bash bench/reload.sh            (needs wrk and curl)
#
# Hot reload under load: `host --plugin http --count 4` serves wrk -t1 -c64 keep-alive load for
# DURATION (20s) while the plugin file is replaced 5 times (alternately by `mv` of a new file and
# by `cp` over the old one). Pass: wrk reports no socket errors and no non-2xx responses, every
# replacement reached all 4 workers, no worker died of a signal. Then, without load, the time from
# the end of a file write to the last worker serving the new file is measured 5 times.
# Each "new version" is the same plugin with a different trailer appended (a different content
# hash; the loader ignores bytes after the ELF sections). Stops everything it started, by pid.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${DURATION:-20}
REPLACEMENTS=${REPLACEMENTS:-5}
source bench/lib.sh
need wrk

cargo build --release --workspace -q
mkdir -p "$tmp/plugins"
cp target/release/libhttp.so "$tmp/plugins/http.so"
variant() { cp target/release/libhttp.so "$1"; printf 'variant %s %s' "$2" "$RANDOM$RANDOM" >>"$1"; }

PLUGIN_DIR="$tmp/plugins" start_host host --plugin http --count 4
master=$host_pid
port=$host_port
url="http://127.0.0.1:$port/"
curl -sf "$url" >/dev/null

echo "== reload under load: wrk -t1 -c64 -d${DURATION}s, $REPLACEMENTS replacements"
wrk -t1 -c64 -d"${DURATION}s" --latency "$url" >"$tmp/wrk.txt" &
wrk_pid=$!
pids+=("$wrk_pid")
gap=$(python3 -c "print(max(1.0, ($DURATION - 4) / $REPLACEMENTS))")
sleep 2
for i in $(seq "$REPLACEMENTS"); do
    if [ $((i % 2)) -eq 1 ]; then
        variant "$tmp/new.so" "$i"; mv "$tmp/new.so" "$tmp/plugins/http.so"; how=mv
    else
        variant "$tmp/new.so" "$i"; cp "$tmp/new.so" "$tmp/plugins/http.so"; how=cp
    fi
    echo "replacement $i by $how"
    sleep "$gap"
done
wait "$wrk_pid"
cat "$tmp/wrk.txt"
done_count=$(grep -c "reload done replaced=4" "$tmp/host.log" || true)
died=$(grep -c "worker died" "$tmp/host.log" || true)
aborted=$(grep -c "reload aborted" "$tmp/host.log" || true)
errors=$(grep -E "Socket errors|Non-2xx" "$tmp/wrk.txt" || true)
echo "reloads reaching all 4 workers: $done_count of $REPLACEMENTS; aborted: $aborted; workers died: $died"
echo "wrk errors: ${errors:-none}"

echo "== time from the end of a write to the last worker serving it (no load)"
for i in $(seq 5); do
    variant "$tmp/new.so" "t$i"
    want=$(python3 -c "
import sys
h=0xcbf29ce484222325
for b in open('$tmp/new.so','rb').read(): h=((h^b)*0x100000001b3)&0xffffffffffffffff
print(f'{h:016x}'[:12])")
    t0=$(date +%s.%N)
    mv "$tmp/new.so" "$tmp/plugins/http.so"
    for _ in $(seq 500); do
        n=$(target/release/host status --pid-file "$tmp/host.pid" | grep -c " $want .* ready$" || true)
        [ "$n" -eq 4 ] && break
        sleep 0.01
    done
    t1=$(date +%s.%N)
    python3 -c "print(f'write → 4 workers on {\"$want\"}: {($t1-$t0)*1000:.0f} ms')"
done
if [ "$done_count" -ne "$REPLACEMENTS" ] || [ "$died" -ne 0 ] || [ -n "$errors" ]; then
    echo "FAIL"; exit 1
fi
echo "PASS"
