#!/usr/bin/env bash
# Run: bash bench/topics.sh            (SUBS=10000 DURATION=5 SIZE=64 ROUNDS=1 by default)
#
# Topics fan-out: one publisher, SUBS WebSocket subscribers of one room (`examples/ws_chat`,
# `/join bench`), measured by `fanout` (bench/load/src/fanout.rs): it publishes a SIZE-byte
# message, the next once all but 4 reached every subscriber, for DURATION seconds.
# - local:  one host, 2 workers (delivery between the workers through their mailboxes);
# - redis:  two hosts of 2 workers each, sharing the room through a redis-server;
# - nats:   the same through a nats-server;
#   (One broker connection per host, relayed by worker 0, was measured once and dropped: the
#   `*-relay` rows of bench/README.md; the experiment's code is in git history, commit df22841.)
# - ws:     the same chat on Node's `ws` (bench/topics/ws_server.js, one process, the usual
#           broadcast loop), when `node` is installed (`npm install --prefix bench/topics` once:
#           done here when bench/topics/node_modules is missing);
# - sio:    the same chat on Socket.IO 4 (bench/topics/sio_server.js), two Node processes sharing
#           the room through a redis-server with `@socket.io/redis-adapter` (versions pinned in
#           bench/topics/package.json): the Socket.IO counterpart of `redis`.
# Printed per scenario: deliveries per second, the servers' CPU seconds (host master and workers,
# and the broker) per million deliveries, publish-to-receive latency p50/p99, and what was
# missing or duplicated (both 0 when every subscriber got every message once). Rounds alternate
# the scenarios; bounded in time; stops only the processes it started, by pid. Loopback only.
set -euo pipefail
cd "$(dirname "$0")/.."
SUBS=${SUBS:-10000}
DURATION=${DURATION:-5}
SIZE=${SIZE:-64}
ROUNDS=${ROUNDS:-1}
SCENARIOS=${SCENARIOS:-local redis nats ws sio}
source bench/lib.sh
need python3 redis-server nats-server

cargo build --release -q -p host -p host-example-ws-chat -p host-bench-load
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
[ "$(ulimit -n)" -gt $((SUBS + 200)) ] || { echo "ulimit -n is below SUBS + 200" >&2; exit 1; }
# Both hosts' workers: room for SUBS connections even when the spread is uneven.
max_conns=$((SUBS + 100))

tick_hz=$(getconf CLK_TCK)
sum_ticks() { local t=0 p; for p in "$@"; do t=$((t + $(ticks "$p"))); done; echo "$t"; }

round() {
    local scenario=$1 ports broker_pid="" procs=()
    case $scenario in
        ws)
            command -v node >/dev/null || { echo "ws: node is not installed; skipped"; return 0; }
            [ -d bench/topics/node_modules/ws ] || npm install --prefix bench/topics --no-audit --no-fund -q >/dev/null
            local wport
            wport=$(free_port)
            start_peer "$wport" node bench/topics/ws_server.js "$wport" >/dev/null
            ports=$wport
            procs=("$peer_pid")
            ;;
        sio)
            command -v node >/dev/null || { echo "sio: node is not installed; skipped"; return 0; }
            [ -d bench/topics/node_modules/socket.io ] || npm install --prefix bench/topics --no-audit --no-fund -q >/dev/null
            local bport sa sb
            bport=$(free_port)
            start_peer "$bport" redis-server --port "$bport" --bind 127.0.0.1 --save '' --appendonly no \
                --dir "$tmp" >/dev/null
            broker_pid=$peer_pid
            sa=$(free_port)
            start_peer "$sa" node bench/topics/sio_server.js "$sa" "redis://127.0.0.1:$bport" >/dev/null
            local sa_pid=$peer_pid
            sb=$(free_port)
            start_peer "$sb" node bench/topics/sio_server.js "$sb" "redis://127.0.0.1:$bport" >/dev/null
            ports=$sa,$sb
            procs=("$sa_pid" "$peer_pid" "$broker_pid")
            export FANOUT_SIO=1
            ;;
        local)
            start_host local --plugin ws_chat --count 2 --idle-timeout 0 --max-connections "$max_conns"
            ports=$host_port
            procs=("$host_pid")
            ;;
        redis|nats)
            local bport url ready='^cluster: #0 ready, #1 ready'
            bport=$(free_port)
            if [ "$scenario" = redis ]; then
                start_peer "$bport" redis-server --port "$bport" --bind 127.0.0.1 --save '' --appendonly no \
                    --dir "$tmp" >/dev/null
                url=redis://127.0.0.1:$bport
            else
                start_peer "$bport" nats-server -a 127.0.0.1 -p "$bport" >/dev/null 2>&1
                url=nats://127.0.0.1:$bport
            fi
            broker_pid=$peer_pid
            start_host "${scenario}_a" --plugin ws_chat --count 2 --idle-timeout 0 --max-connections "$max_conns" \
                --cluster "$url"
            local a_pid=$host_pid a_port=$host_port
            start_host "${scenario}_b" --plugin ws_chat --count 2 --idle-timeout 0 --max-connections "$max_conns" \
                --cluster "$url"
            ports=$a_port,$host_port
            procs=("$a_pid" "$host_pid" "$broker_pid")
            # Every worker connected to the broker (status: `cluster: #0 ready, #1 ready`).
            for pf in "$tmp/${scenario}_a.pid" "$tmp/${scenario}_b.pid"; do
                for _ in $(seq 100); do
                    target/release/host status --pid-file "$pf" | grep -q "$ready" && break
                    sleep 0.1
                done
            done
            ;;
    esac
    local before after out
    before=$(sum_ticks "${procs[@]}")
    out=$(timeout $((DURATION + 120)) target/release/fanout "$ports" "$SUBS" "$DURATION" "$SIZE")
    unset FANOUT_SIO
    after=$(sum_ticks "${procs[@]}")
    python3 - "$scenario" "$out" $((after - before)) "$tick_hz" <<'PY'
import json, sys
scenario, out, ticks, hz = sys.argv[1], json.loads(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
cpu = ticks / hz
per_m = cpu / out["deliveries"] * 1e6 if out["deliveries"] else float("nan")
print(f"{scenario:6} {out['per_s']:>12,.0f} deliveries/s  {per_m:6.2f} CPU s per million  "
      f"p50 {out['p50_us'] / 1000:7.1f} ms  p99 {out['p99_us'] / 1000:7.1f} ms  "
      f"messages {out['messages']}  missing {out['missing']}  duplicates {out['duplicates']}")
PY
    for p in "${procs[@]}"; do stop_pid "$p"; done
}

echo "fan-out: 1 publisher, $SUBS WebSocket subscribers, $SIZE-byte messages, $DURATION s per round"
for r in $(seq "$ROUNDS"); do
    for s in $SCENARIOS; do round "$s"; done
done
