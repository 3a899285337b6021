#!/usr/bin/env bash
# Run: bash bench/upgrade.sh           (needs wrk and curl)
#
# Binary upgrade under load: `host --plugin http --count 4`, started from a copy of the release
# binary, serves wrk -t1 -c64 keep-alive load for DURATION (20s) while the binary is replaced
# (a new copy renamed over the path: a new inode, as `install` does) and `host upgrade` is run
# UPGRADES (3) times. Pass: every upgrade succeeded, the master pid never changed, wrk reports no
# socket errors and no non-2xx responses, and after each upgrade every worker runs the new file.
# Prints how long each `host upgrade` took (from the command to the end of the reload chain it
# waits for).
#
# Then, under the same load, the upgrades that must fail without taking the service down
# (issue 20 items 1-3): a new binary whose check hangs (refused after 10 s; `status` answers
# meanwhile and the watchdog, --worker-timeout 2, kills nobody), a broken binary installed over
# the path and then `host reload -g` (its probe and new workers come from the running image; a
# SIGKILLed worker would drop its own connections, so that case is the integration test's), and a
# binary that passes the check but fails once executed (the master goes back to its previous
# image and keeps its workers), and one that passes the check and exits 1 once executed, before
# any of the host's code runs (the upgrade's guardian execs the previous image, which takes the
# master over under a new pid and adopts the same workers). Pass also needs each of them refused,
# rolled back or taken back, the same workers, and no worker killed by the watchdog. Stops
# everything it started, by pid.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
DURATION=${DURATION:-30}
UPGRADES=${UPGRADES:-3}
CASES=${CASES:-1 2 3 4}  # the failure cases to run ("": the upgrades alone)
need wrk curl

cargo build --release --workspace -q
mkdir -p "$tmp/plugins" "$tmp/bin"
cp target/release/libhttp.so "$tmp/plugins/http.so"
cp target/release/host target/release/host-worker "$tmp/bin/"

HOST_BIN="$tmp/bin/host" PLUGIN_DIR="$tmp/plugins" start_host host --plugin http --count 4 --worker-timeout 2
master=$host_pid
port=$host_port
url="http://127.0.0.1:$port/"
curl -sf "$url" >/dev/null

echo "== upgrade under load: wrk -t1 -c64 -d${DURATION}s, $UPGRADES upgrades (master pid $master)"
wrk -t1 -c64 -d"${DURATION}s" --latency "$url" >"$tmp/wrk.txt" &
wrk_pid=$!
pids+=("$wrk_pid")
gap=1
sleep 2
failed=0
for i in $(seq "$UPGRADES"); do
    cp target/release/host-worker "$tmp/bin/host-worker.new"
    mv "$tmp/bin/host-worker.new" "$tmp/bin/host-worker"
    cp target/release/host "$tmp/bin/host.new"
    mv "$tmp/bin/host.new" "$tmp/bin/host"
    inode=$(stat -c %i "$tmp/bin/host")
    worker_inode=$(stat -c %i "$tmp/bin/host-worker")
    t0=$(date +%s.%N)
    if ! out=$(target/release/host upgrade --pid-file "$tmp/host.pid" 2>&1); then failed=1; fi
    t1=$(date +%s.%N)
    pid_now=$(cat "$tmp/host.pid")
    on_new=0
    for w in $(cat /proc/"$master"/task/"$master"/children); do
        grep -q '^host: worker' /proc/"$w"/cmdline 2>/dev/null || continue
        [ "$(stat -L -c %i /proc/"$w"/exe 2>/dev/null)" = "$worker_inode" ] && on_new=$((on_new + 1))
    done
    master_on_new=$([ "$(stat -L -c %i /proc/"$master"/exe)" = "$inode" ] && echo yes || echo no)
    python3 -c "print(f'upgrade $i: {($t1-$t0)*1000:.0f} ms; pid $pid_now; master on the new file: $master_on_new; workers on it: $on_new')"
    echo "  $out"
    [ "$pid_now" = "$master" ] && [ "$master_on_new" = yes ] && [ "$on_new" -ge 4 ] || failed=1
    sleep "$gap"
done

hc() { target/release/host "$@" --pid-file "$tmp/host.pid"; }
install_script() { printf '%s' "$1" >"$tmp/bin/host.new"; chmod 755 "$tmp/bin/host.new"; mv "$tmp/bin/host.new" "$tmp/bin/host"; }
workers() { for w in $(cat /proc/"$master"/task/"$master"/children); do grep -q '^host: worker' /proc/"$w"/cmdline 2>/dev/null && echo "$w"; done | sort | tr '\n' ' '; }

case " $CASES " in *" 1 "*)
echo "== 1. a check that hangs (refused after 10 s, off the master's loop)"
install_script $'#!/bin/sh\nexec sleep 60\n'
before=$(workers)
t0=$(date +%s.%N)
hc upgrade >"$tmp/hang.out" 2>&1 &
up=$!
sleep 1
s0=$(date +%s.%N)
hc status >/dev/null || failed=1
s1=$(date +%s.%N)
wait "$up" && failed=1
t1=$(date +%s.%N)
python3 -c "print(f'  refused after {($t1-$t0)*1000:.0f} ms; status during the check took {($s1-$s0)*1000:.0f} ms')"
echo "  $(cat "$tmp/hang.out")"
[ "$(workers)" = "$before" ] || { echo "  workers changed: $before -> $(workers)"; failed=1; }

;; esac
case " $CASES " in *" 2 "*)
echo "== 2. a broken binary installed over the path; then \`host reload -g\` (probe and new workers)"
install_script $'#!/bin/sh\nexit 1\n'
image=$(stat -L -c %i /proc/"$master"/exe)
before=$(workers)
hc reload -g >"$tmp/reload.out" 2>&1 || failed=1
echo "  $(cat "$tmp/reload.out")"
n=0; same=0
for w in $(workers); do n=$((n + 1)); [ "$(stat -L -c %i /proc/"$w"/exe 2>/dev/null)" = "$image" ] && same=$((same + 1)); done
echo "  workers replaced: $([ "$(workers)" != "$before" ] && echo yes || echo no); on the running image: $same of $n"
[ "$(workers)" != "$before" ] && [ "$same" -ge 4 ] || failed=1

;; esac
case " $CASES " in *" 3 "*)
real=$(pwd)/target/release/host
echo "== 3. a binary that passes the check and fails once executed (rolled back)"
packed=$(python3 -c "import sys; print(','.join(a.encode().hex() for a in sys.argv[1:]))" \
    --plugin-dir "$tmp/plugins" --listen 127.0.0.1:0 --pid-file "$tmp/host.pid" --log-level warn,host::master=info \
    --plugin http --count 5 --worker-timeout 2)
install_script "#!/bin/sh
if [ \"\$1\" = upgrade-check ]; then exec '$real' \"\$@\"; fi
HOST_ARGV='$packed' exec '$real'
"
before=$(workers)
t0=$(date +%s.%N)
hc upgrade >"$tmp/rollback.out" 2>&1 && failed=1
t1=$(date +%s.%N)
python3 -c "print(f'  rolled back in {($t1-$t0)*1000:.0f} ms')"
echo "  $(cat "$tmp/rollback.out")"
grep -q "went back to the previous binary" "$tmp/rollback.out" || failed=1
[ "$(workers)" = "$before" ] || { echo "  workers changed: $before -> $(workers)"; failed=1; }
[ "$(cat "$tmp/host.pid")" = "$master" ] && kill -0 "$master" || failed=1
;; esac
case " $CASES " in *" 4 "*)
echo "== 4. a binary that passes the check and exits 1 before any host code runs (the guardian takes over)"
install_script "#!/bin/sh
if [ \"\$1\" = upgrade-check ]; then exec '$real' \"\$@\"; fi
exit 1
"
before=$(workers)
t0=$(date +%s.%N)
hc upgrade >"$tmp/guardian.out" 2>&1 && failed=1
t1=$(date +%s.%N)
python3 -c "print(f'  taken back in {($t1-$t0)*1000:.0f} ms')"
echo "  $(cat "$tmp/guardian.out")"
grep -q "guardian took the master over" "$tmp/guardian.out" || failed=1
new_master=$(cat "$tmp/host.pid")
pids+=("$new_master")
alive=0
for w in $before; do kill -0 "$w" 2>/dev/null && alive=$((alive + 1)); pids+=("$w"); done
echo "  new master pid $new_master (was $master); workers kept: $alive of $(echo $before | wc -w)"
[ "$new_master" != "$master" ] && kill -0 "$new_master" && [ "$alive" -eq "$(echo $before | wc -w)" ] || failed=1
hc status >/dev/null || failed=1
;; esac

wait "$wrk_pid"
cat "$tmp/wrk.txt"
died=$(grep -c "worker died" "$tmp/host.log" || true)
stuck=$(grep -c "made no progress" "$tmp/host.log" || true)
[ "$stuck" -eq 0 ] || { echo "watchdog kills: $stuck"; failed=1; }
errors=$(grep -E "Socket errors|Non-2xx" "$tmp/wrk.txt" || true)
echo "workers died: $died; wrk errors: ${errors:-none}"
if [ "$failed" -ne 0 ] || [ "$died" -ne 0 ] || [ -n "$errors" ]; then
    echo "FAIL"; exit 1
fi
echo "PASS"
