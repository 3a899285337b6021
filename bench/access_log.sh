#!/usr/bin/env bash
# Run: bash bench/access_log.sh        (release build; about 40 seconds)
#
# The cost of an access log: `wrk -t1 -c64 -d5s` on `GET /` of `host --plugin http --count 2`,
# without and with `--access-log`, alternating, ROUNDS times (3). Prints requests/s of each run
# and the lines each logged run wrote. Port 18099 unless PORT is set. Stops only what it started,
# by pid; every run is bounded by `timeout`.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-3}
PORT=${PORT:-18099}
cargo build --release -q -p host -p host-plugin-http
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
run() {
  local label=$1
  shift
  XDG_RUNTIME_DIR=$dir timeout 30 target/release/host --plugin http --plugin-dir target/release --count 2 \
    --listen "127.0.0.1:$PORT" "$@" >/dev/null 2>"$dir/host.err" &
  local pid=$!
  for _ in $(seq 50); do curl -s -o /dev/null "http://127.0.0.1:$PORT/" && break; sleep 0.1; done
  echo "$label $(wrk -t1 -c64 -d5s "http://127.0.0.1:$PORT/" | awk '/Requests\/sec/ {print $2}') requests/s"
  kill -INT "$pid"
  wait "$pid" 2>/dev/null || true
}
for _ in $(seq "$ROUNDS"); do
  run "no access log:"
  rm -f "$dir/access.log"
  run "access log:   " --access-log "$dir/access.log"
  echo "               $(wc -l <"$dir/access.log") lines"
done
