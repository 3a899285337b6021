#!/usr/bin/env bash
# Run: bash bench/redis_units.sh REDIS_SRC [UNIT...]    (needs tclsh 8.5+; a few minutes)
#
# Redis' own TCL test units, in external-server mode, against `host --plugin resp` (one worker,
# a loopback port the system picks). REDIS_SRC is a Redis source tree (its tests/ directory is
# used, nothing else; this script fetches nothing): a checkout of redis 7.0.x matches what the
# plugin answers for (Debian's redis-server package does not ship the tests). The units default
# to what the plugin claims: unit/type/string unit/keyspace unit/expire unit/type/incr
# unit/info-command.
#
# Flags given to the harness: --singledb (the plugin has database 0 only; the harness would
# SELECT 9), --durable (a test that errors is counted as failed and the unit goes on, instead of
# the unit stopping at its first error), and --tags excluding what cannot run against an external
# server that is not redis-server: needs:debug (DEBUG), needs:repl (replication), needs:config-*
# (CONFIG SET), needs:save (SAVE/BGSAVE), needs:reset (RESET). Tests tagged external:skip are
# skipped by the harness itself. Before each unit the harness sends FLUSHALL and FUNCTION FLUSH:
# the plugin answers FUNCTION FLUSH with OK (there are no functions to flush).
#
# Prints, per unit, the tests that passed, failed because they use a command the plugin does not
# have ("unknown command": lists, hashes, INCRBYFLOAT, SETRANGE, ...), failed otherwise (each
# named), and were skipped; exits non-zero when any test failed otherwise. HOST_BIN and
# PLUGIN_DIR as in bench/lib.sh (default: the release build, built here). Bounded: each unit is
# killed after UNIT_TIMEOUT seconds (300). Stops only what it started, by pid.
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -ge 1 ] || { sed -n 2,3p "$0" >&2; exit 2; }
src=$(cd "$1" && pwd)
shift
[ -f "$src/tests/test_helper.tcl" ] || { echo "$src/tests/test_helper.tcl: not a Redis source tree" >&2; exit 2; }
units=("$@")
[ ${#units[@]} -gt 0 ] || units=(unit/type/string unit/keyspace unit/expire unit/type/incr unit/info-command)
UNIT_TIMEOUT=${UNIT_TIMEOUT:-300}
source bench/lib.sh
need tclsh
if [ -z "${HOST_BIN:-}" ]; then
    cargo build --release -q -p host -p host-plugin-resp
fi

# unit/type/string sets a 4 MB value: above the default max package size (1 MiB), so raised.
start_host resp --plugin resp --count 1 --max-package-size $((64 * 1024 * 1024))

tags="-needs:debug -needs:repl -needs:config-maxmemory -needs:config-resetstat -needs:save -needs:reset"
status=0
for unit in "${units[@]}"; do
    log=$tmp/$(echo "$unit" | tr / _).log
    # The harness writes its temporary files under the current directory's tests/tmp.
    (cd "$src" && timeout "$UNIT_TIMEOUT" tclsh tests/test_helper.tcl --host 127.0.0.1 --port "$host_port" \
        --singledb --durable --tags "$tags" --single "$unit" --clients 1) 2>&1 |
        sed 's/\x1b\[[0-9;]*m//g' >"$log" || true
    python3 - "$unit" "$log" <<'PY' || status=1
import re, sys
unit, log = sys.argv[1], sys.argv[2]
lines = open(log, errors="replace").read().split("\n")
ok, unknown, config, failed, skipped = [], [], [], [], []
for i, line in enumerate(lines):
    m = re.match(r"\[(ok|err|exception|ignore|skip)\]: (.*)", line)
    if not m:
        continue
    kind, name = m.groups()
    if kind == "ok":
        ok.append(name)
    elif kind in ("ignore", "skip"):
        skipped.append(name)
    else:
        detail = "\n".join(lines[i + 1:i + 4])
        if "unknown command" in detail:
            unknown.append((name, detail))
        elif "CONFIG SET" in detail:
            config.append((name, detail))
        else:
            failed.append((name, detail.split("\n")[0]))
done = any("All tests passed" in l or "The following tests failed" in l for l in lines)
print("%s: %d passed, %d failed, %d use a command the plugin lacks, %d use CONFIG SET, %d skipped%s" % (
    unit, len(ok), len(failed), len(unknown), len(config), len(skipped),
    "" if done else " (the unit did not finish)"))
for name, why in failed:
    print("  FAILED %s: %s" % (name, why))
cmds = sorted(set(re.findall(r"unknown command '([^']*)'", "\n".join(d for _, d in unknown))))
if cmds:
    print("  commands the plugin lacks: %s" % " ".join(c.lower() for c in cmds))
params = sorted(set(re.findall(r"CONFIG SET - '([^']*)'", "\n".join(d for _, d in config))))
if params:
    print("  CONFIG SET parameters: %s" % " ".join(params))
reasons = {}
for name in skipped:
    reason = name.split(": ")[-1]
    reasons[reason] = reasons.get(reason, 0) + 1
if reasons:
    print("  skipped: %s" % ", ".join("%s %d" % kv for kv in sorted(reasons.items())))
sys.exit(1 if failed or not done else 0)
PY
done
exit $status
