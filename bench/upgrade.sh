#!/usr/bin/env bash
# Run: bash bench/upgrade.sh           (needs wrk and curl)
#
# Binary upgrade under load: `host --plugin http --count 4`, started from a copy of the release
# binary, serves wrk -t1 -c64 keep-alive load for DURATION (20s) while the binary is replaced
# (a new copy renamed over the path: a new inode, as `install` does) and `host upgrade` is run
# UPGRADES (3) times. Pass: every upgrade succeeded, the master pid never changed, wrk reports no
# socket errors and no non-2xx responses, and after each upgrade every worker runs the new file.
# Prints how long each `host upgrade` took (from the command to the end of the reload chain it
# waits for). Stops everything it started, by pid.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
DURATION=${DURATION:-20}
UPGRADES=${UPGRADES:-3}
need wrk curl

cargo build --release --workspace -q
mkdir -p "$tmp/plugins" "$tmp/bin"
cp target/release/libhttp.so "$tmp/plugins/http.so"
cp target/release/host "$tmp/bin/host"

HOST_BIN="$tmp/bin/host" PLUGIN_DIR="$tmp/plugins" start_host host --plugin http --count 4
master=$host_pid
port=$host_port
url="http://127.0.0.1:$port/"
curl -sf "$url" >/dev/null

echo "== upgrade under load: wrk -t1 -c64 -d${DURATION}s, $UPGRADES upgrades (master pid $master)"
wrk -t1 -c64 -d"${DURATION}s" --latency "$url" >"$tmp/wrk.txt" &
wrk_pid=$!
pids+=("$wrk_pid")
gap=$(python3 -c "print(max(1.0, ($DURATION - 4) / $UPGRADES))")
sleep 2
failed=0
for i in $(seq "$UPGRADES"); do
    cp target/release/host "$tmp/bin/host.new"
    mv "$tmp/bin/host.new" "$tmp/bin/host"
    inode=$(stat -c %i "$tmp/bin/host")
    t0=$(date +%s.%N)
    if ! out=$(target/release/host upgrade --pid-file "$tmp/host.pid" 2>&1); then failed=1; fi
    t1=$(date +%s.%N)
    pid_now=$(cat "$tmp/host.pid")
    on_new=0
    for w in $(cat /proc/"$master"/task/"$master"/children); do
        grep -q '^host: worker' /proc/"$w"/cmdline 2>/dev/null || continue
        [ "$(stat -L -c %i /proc/"$w"/exe 2>/dev/null)" = "$inode" ] && on_new=$((on_new + 1))
    done
    master_on_new=$([ "$(stat -L -c %i /proc/"$master"/exe)" = "$inode" ] && echo yes || echo no)
    python3 -c "print(f'upgrade $i: {($t1-$t0)*1000:.0f} ms; pid $pid_now; master on the new file: $master_on_new; workers on it: $on_new')"
    echo "  $out"
    [ "$pid_now" = "$master" ] && [ "$master_on_new" = yes ] && [ "$on_new" -ge 4 ] || failed=1
    sleep "$gap"
done
wait "$wrk_pid"
cat "$tmp/wrk.txt"
died=$(grep -c "worker died" "$tmp/host.log" || true)
errors=$(grep -E "Socket errors|Non-2xx" "$tmp/wrk.txt" || true)
echo "workers died: $died; wrk errors: ${errors:-none}"
if [ "$failed" -ne 0 ] || [ "$died" -ne 0 ] || [ -n "$errors" ]; then
    echo "FAIL"; exit 1
fi
echo "PASS"
