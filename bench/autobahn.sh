#!/usr/bin/env bash
# Run: bash bench/autobahn.sh          (needs pyenv's Python 2.7.18; cases 1-10 take about
#      3 minutes, 12-13 (permessage-deflate) several more; CASES='"1.*"' for a subset)
#
# The Autobahn|Testsuite fuzzing client (cases 1-13; there is no section 11) against
# `host --plugin websocket` (release build, one worker, on a loopback port the system picks).
# Autobahn is Python 2 only: it is installed once into target/autobahn/ (a virtualenv made with
# Python 2.7.18, autobahntestsuite 0.8.2). Prints the count of each outcome and exits non-zero
# on any FAILED, UNCLEAN or UNIMPLEMENTED (permessage-deflate is implemented: 12-13 apply).
# The report stays in target/autobahn/report/ (index.html). Bounded: the suite is killed after TIMEOUT seconds (1800).
# Stops only what it started, by pid.
set -euo pipefail
cd "$(dirname "$0")/.."
TIMEOUT=${TIMEOUT:-1800}
CASES=${CASES:-'"1.*", "2.*", "3.*", "4.*", "5.*", "6.*", "7.*", "8.*", "9.*", "10.*", "12.*", "13.*"'}
cache=target/autobahn
python2=${PYTHON2:-$HOME/.pyenv/versions/2.7.18/bin/python2.7}

if [ ! -x "$cache/venv/bin/wstest" ]; then
    [ -x "$python2" ] || { echo "no Python 2.7 at $python2 (set PYTHON2)" >&2; exit 1; }
    echo "== installing autobahntestsuite 0.8.2 into $cache/venv"
    mkdir -p "$cache"
    "$python2" -m pip install -q --target "$cache/venvtool" "virtualenv<20.22"
    PYTHONPATH="$cache/venvtool" "$python2" -m virtualenv -q -p "$python2" "$cache/venv"
    "$cache/venv/bin/pip" install -q autobahntestsuite==0.8.2
fi

cargo build --release -q -p host -p host-plugin-websocket

tmp=$(mktemp -d)
master=""
suite=""
cleanup() {
    [ -n "$suite" ] && kill "$suite" 2>/dev/null || true
    [ -n "$master" ] && kill -INT "$master" 2>/dev/null || true
    for _ in $(seq 50); do [ -n "$master" ] && kill -0 "$master" 2>/dev/null && sleep 0.1; done
    rm -rf "$tmp"
}
trap cleanup EXIT

# Cases 9.* send messages of up to 16 MiB: the max package size bounds a frame and a message.
target/release/host --plugin websocket --count 1 --listen 127.0.0.1:0 --plugin-dir target/release \
    --pid-file "$tmp/host.pid" --max-package-size $((64 * 1024 * 1024)) \
    --plugin-config 'ping_interval = 0' 2>"$tmp/host.log" &
master=$!
for _ in $(seq 200); do grep -q "host ready" "$tmp/host.log" && break; sleep 0.05; done
port=$(grep -o 'address=127.0.0.1:[0-9]*' "$tmp/host.log" | head -1 | cut -d: -f2)
[ -n "$port" ] || { cat "$tmp/host.log"; echo "the host did not start" >&2; exit 1; }

rm -rf "$cache/report"
cat >"$tmp/spec.json" <<EOF
{
  "outdir": "$PWD/$cache/report",
  "servers": [{"agent": "host", "url": "ws://127.0.0.1:$port"}],
  "cases": [$CASES],
  "exclude-cases": [],
  "exclude-agent-cases": {}
}
EOF
echo "== wstest -m fuzzingclient against ws://127.0.0.1:$port (cases: $CASES)"
timeout "$TIMEOUT" "$cache/venv/bin/wstest" -m fuzzingclient -s "$tmp/spec.json" >"$tmp/wstest.log" 2>&1 &
suite=$!
if ! wait "$suite"; then
    suite=""
    tail -20 "$tmp/wstest.log"
    echo "wstest failed or ran past ${TIMEOUT}s" >&2
    exit 1
fi
suite=""

python3 - "$cache/report/index.json" <<'EOF'
import json, sys, collections
report = json.load(open(sys.argv[1]))
bad = 0
for agent, cases in report.items():
    counts = collections.Counter()
    for case, r in sorted(cases.items(), key=lambda kv: [int(x) for x in kv[0].split(".")]):
        counts[r["behavior"]] += 1
        closing = r["behaviorClose"]
        if r["behavior"] in ("FAILED", "UNCLEAN", "UNIMPLEMENTED") or closing in ("FAILED", "UNCLEAN"):
            bad += 1
            print("  case %s: behavior %s, close %s" % (case, r["behavior"], closing))
    print("%s: %d cases: %s" % (agent, sum(counts.values()), ", ".join("%s %d" % kv for kv in sorted(counts.items()))))
    close_counts = collections.Counter(r["behaviorClose"] for r in cases.values())
    print("  close behaviour: %s" % ", ".join("%s %d" % kv for kv in sorted(close_counts.items())))
sys.exit(1 if bad else 0)
EOF
