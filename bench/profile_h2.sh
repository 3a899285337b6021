#!/usr/bin/env bash
# Run: bash bench/profile.sh h2   (this file is its h2 mode; see bench/profile.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
CONNS=${CONNS:-8}
H2_WARMUP=${H2_WARMUP:-20000}
H2_REQUESTS=${H2_REQUESTS:-200000}
LIBC=${LIBC:-/lib/x86_64-linux-gnu/libc.so.6}
need perf h2load addr2line python3

cargo build --release -q -p host -p host-plugin-http
start_host h2prof --plugin http --count 1
worker=
for c in $(children "$host_pid"); do
    grep -q 'memfd:http' "/proc/$c/maps" 2>/dev/null && worker=$c
done
[ -n "$worker" ] || { echo "no worker with the http plugin" >&2; exit 1; }
url="http://127.0.0.1:$host_port/"
load() { h2load -c"$CONNS" -m10 -n"$1" "$url" | awk '/^requests:/ {print $8}'; }
load "$H2_WARMUP" >/dev/null

# The worker's CPU time alone (uprobes would slow it).
perf stat -x, -e task-clock -p "$worker" -o "$tmp/clock" &
stat_pid=$!
pids+=("$stat_pid")
sleep 0.5
timed=$(load "$H2_REQUESTS")
kill -INT "$stat_pid"
wait "$stat_pid" || true

# Allocator calls: uprobes on libc's malloc, realloc, calloc and free, counted on the worker.
probes=()
for f in malloc realloc calloc free; do
    perf probe -q -x "$LIBC" --add "h2prof_$f=$f" 2>/dev/null && probes+=("probe_libc:h2prof_$f")
done
removeprobes() { for p in "${probes[@]}"; do perf probe -q --del "$p" 2>/dev/null || true; done; }
trap 'removeprobes; cleanup' EXIT
events=$(IFS=,; echo "${probes[*]}")
perf stat -x, -e "$events" -p "$worker" -o "$tmp/stat" &
stat_pid=$!
pids+=("$stat_pid")
sleep 0.5
requests=$(load "$H2_REQUESTS")
kill -INT "$stat_pid"
wait "$stat_pid" || true
removeprobes
probes=()

# Where the CPU goes: cpu-clock samples.
perf record -q -F 4000 -p "$worker" -o "$tmp/perf.data" 2>/dev/null &
rec_pid=$!
pids+=("$rec_pid")
sleep 0.5
load "$H2_REQUESTS" >/dev/null
kill -INT "$rec_pid"
wait "$rec_pid" || true
base=$(awk '/memfd:http/ {split($1, a, "-"); print a[1]; exit}' "/proc/$worker/maps")
perf script -i "$tmp/perf.data" -F ip,sym,dso -G 2>/dev/null >"$tmp/samples"

python3 - "$tmp/clock" "$timed" "$tmp/stat" "$requests" "$tmp/samples" "$base" target/release/libhttp.so <<'PY'
import collections, re, subprocess, sys

clock, timed, stat, requests, samples, base, plugin = sys.argv[1:]
timed, requests, base = int(timed), int(requests), int(base, 16)

def counts(path):
    for line in open(path):
        parts = line.strip().split(",")
        if len(parts) > 2 and re.match(r"^[\d.]+$", parts[0]):
            yield parts[2], float(parts[0])

print(f"HTTP/2 in cleartext, h2load -m10, one worker")
for event, value in counts(clock):
    print(f"  worker CPU: {value * 1000 / timed:.2f} µs per request over {timed:,} (a shared machine: noisy)")
print(f"  allocator calls per request over {requests:,}:")
for event, value in counts(stat):
    print(f"    {event.split(':')[1].replace('h2prof_', '')}: {value / requests:.3f}")

hits, plugin_ips = collections.Counter(), []
for line in open(samples):
    m = re.match(r"\s*([0-9a-f]+) (.*?) \((.*)\)$", line)
    if not m:
        continue
    ip, sym, dso = m.groups()
    if "memfd:http" in dso:
        plugin_ips.append(int(ip, 16) - base)
    else:
        group = "kernel" if "kernel" in dso else dso.rsplit("/", 1)[-1]
        hits[(group, sym)] += 1
if plugin_ips:
    out = subprocess.run(["addr2line", "-f", "-C", "-e", plugin] + [hex(a) for a in plugin_ips],
                         capture_output=True, text=True).stdout.split("\n")[0::2]
    for name in out[: len(plugin_ips)]:
        hits[("plugin", name)] += 1
total = sum(hits.values()) or 1
groups = collections.Counter()
for (group, _), n in hits.items():
    groups[group] += n
print(f"\nthe worker's CPU by part ({total:,} samples):")
for g, n in groups.most_common(6):
    print(f"  {100 * n / total:5.1f}%  {g}")
print("\ntop functions (self):")
for (group, sym), n in hits.most_common(30):
    print(f"  {100 * n / total:5.1f}%  {group[:12]:12}  {sym[:110]}")
PY
