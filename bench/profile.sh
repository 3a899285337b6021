#!/usr/bin/env bash
# Run: bash bench/profile.sh              (needs valgrind, wrk and rustc; about 1 minute)
#      bash bench/profile.sh h2           (HTTP/2: needs perf and h2load; about 1 minute)
#
# Where a keep-alive request's instructions go, and whether the steady state allocates. One
# `host --plugin http` worker runs under callgrind (which counts instructions: the machine's
# noise does not matter); wrk warms it up for WARMUP seconds, the counters are zeroed
# (callgrind_control -z), wrk runs DURATION more seconds, and the counters are dumped. Prints:
# instructions per request, split into the host, the plugin, the abi_stable trampolines between
# them and libc; the top functions; and the calls to malloc/realloc/free per request with their
# callers (steady state: after the warm-up, connections already open).
# The plugin is loaded from a sealed memfd that valgrind cannot name, so its addresses are
# resolved here with addr2line against the built file. Stops what it started, by pid.
# Valgrind cannot follow the master's exec of a worker (`--trace-children` re-launches valgrind
# on the path given to execve, and `/proc/self/fd/N` of the worker binary's close-on-exec
# descriptor, or the master's own `/proc/self/exe`, names another file by then: "mmap ... failed
# in UME"). So the master runs outside valgrind from a directory of its own, where `host-worker`
# is a small program (compiled here with rustc) that executes valgrind on the real worker binary
# with the worker's arguments, environment and inherited descriptors.
#
# `h2`: the same questions for HTTP/2 in cleartext (h2c, prior knowledge), with perf instead of
# valgrind: one worker, h2load
# -c CONNS -m 10 sends H2_WARMUP requests, then H2_REQUESTS more while `perf stat` counts the
# worker's calls to malloc/realloc/free (uprobes, added and removed here) and its CPU time, then
# H2_REQUESTS more under `perf record -g` (cpu-clock samples: the top functions, the plugin's
# resolved with addr2line). Each h2load run opens new connections: their set-up is counted too,
# amortised over H2_REQUESTS / CONNS requests each. The CPU time per request comes from a
# shared machine: the allocator calls per request are the exact figure.
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
if [ "${1:-}" = h2 ]; then
    exec bash bench/profile_h2.sh
fi
WARMUP=${WARMUP:-2}
DURATION=${DURATION:-3}
CONNS=${CONNS:-8}
need valgrind callgrind_control addr2line wrk python3

need rustc
cargo build --release -q -p host -p host-plugin-http
mkdir "$tmp/bin"
# A link, not a symlink: the master looks beside the file its /proc/self/exe names.
ln "target/release/host" "$tmp/bin/host" 2>/dev/null || cp "target/release/host" "$tmp/bin/host"
cat >"$tmp/worker.rs" <<RS
use std::os::unix::process::CommandExt;
fn main() {
    let args: Vec<_> = std::env::args_os().skip(1).collect();
    let worker = "$PWD/target/release/host-worker";
    let mut cmd = std::process::Command::new(if args.iter().any(|a| a == "--protocol-version") {
        worker
    } else {
        "valgrind"
    });
    if cmd.get_program() == "valgrind" {
        cmd.args(["-q", "--tool=callgrind", "--callgrind-out-file=$tmp/cg.%p", worker]);
    }
    let e = cmd.args(args).exec();
    eprintln!("could not execute valgrind: {e}");
    std::process::exit(2);
}
RS
rustc -O --edition 2021 -o "$tmp/bin/host-worker" "$tmp/worker.rs"
"$tmp/bin/host" --plugin http --plugin-dir target/release --listen 127.0.0.1:0 --count 1 \
    --pid-file "$tmp/host.pid" --log-level warn,host::master=info >"$tmp/host.out" 2>"$tmp/host.log" &
pids+=($!)
for _ in $(seq 600); do grep -q "host ready" "$tmp/host.log" && break; sleep 0.1; done
port=$(grep -o 'address=127.0.0.1:[0-9]*' "$tmp/host.log" | head -1 | cut -d: -f2)
[ -n "$port" ] || { cat "$tmp/host.log" >&2; exit 1; }
grep -q "workers run the worker binary" "$tmp/host.log" || { cat "$tmp/host.log" >&2; exit 1; }
worker=$(children "${pids[0]}" | awk '{print $1}')
base=$(awk '/memfd:http/ {split($1, a, "-"); print a[1]; exit}' "/proc/$worker/maps")

wrk -t1 -c"$CONNS" -d"${WARMUP}s" "http://127.0.0.1:$port/" >/dev/null
callgrind_control -z "$worker" >/dev/null
requests=$(wrk -t1 -c"$CONNS" -d"${DURATION}s" "http://127.0.0.1:$port/" | awk '/requests in/ {print $1}')
callgrind_control -d "$worker" >/dev/null
for _ in $(seq 100); do [ -s "$tmp/cg.$worker.1" ] && break; sleep 0.1; done

python3 - "$tmp/cg.$worker.1" "$requests" "$base" target/release/libhttp.so <<'PY'
import collections, re, subprocess, sys

path, requests, base, plugin = sys.argv[1], int(sys.argv[2]), int(sys.argv[3], 16), sys.argv[4]
names, own, calls, callers = {}, collections.Counter(), collections.Counter(), collections.defaultdict(collections.Counter)
fn = cfn = None
after_calls = False
for line in open(path):
    m = re.match(r"^(c?fn)=\((\d+)\)(?: (.*))?", line)
    if m:
        kind, idx, name = m.groups()
        if name:
            names[idx] = name.strip()
        if kind == "fn":
            fn = idx
        else:
            cfn = idx
        continue
    m = re.match(r"^calls=(\d+)", line)
    if m:
        calls[cfn] += int(m.group(1))
        callers[cfn][fn] += int(m.group(1))
        after_calls = True
        continue
    m = re.match(r"^[+-]?\d+ (\d+)", line) or re.match(r"^\* (\d+)", line)
    if m:
        if after_calls:  # the inclusive cost of the call just named, not this function's own
            after_calls = False
        else:
            own[fn] += int(m.group(1))

def name(idx):
    n = names.get(idx, "?")
    if n.startswith("0x"):  # an address inside the plugin's memfd mapping
        out = subprocess.run(["addr2line", "-f", "-C", "-e", plugin, hex(int(n, 16) - base)],
                             capture_output=True, text=True).stdout.split("\n")[0]
        n = "[plugin] " + out
    return n

total = sum(own.values())
groups = collections.Counter()
for idx, c in own.items():
    n = name(idx)
    if "_trait::Raw" in n or "RawPlugin_MV" in n or "RawHost_MV" in n:
        groups["abi_stable trampolines (both sides)"] += c
    elif n.startswith("[plugin]"):
        groups["plugin (http)"] += c
    elif n.startswith("host::") or "<host::" in n:
        groups["host"] += c
    else:
        groups["libc, std and the rest"] += c
print(f"{requests:,} requests; {total / requests:,.0f} instructions per request")
for g, c in groups.most_common():
    print(f"  {c / requests:8,.0f}  {100 * c / total:5.1f}%  {g}")
print("\ntop functions (own instructions per request):")
for idx, c in own.most_common(20):
    print(f"  {c / requests:8,.1f}  {100 * c / total:5.1f}%  {name(idx)[:110]}")
print("\nallocator calls in the steady state:")
for want in ("malloc", "realloc", "calloc", "free", "__rustc::__rust_alloc", "__rustc::__rust_realloc",
             "__rustc::__rust_dealloc"):
    n = sum(v for k, v in calls.items() if names.get(k) == want)
    print(f"  {want}: {n} ({n / requests:.6f} per request)")
    for k in [k for k in calls if names.get(k) == want]:
        for c, v in callers[k].most_common(3):
            print(f"      {v} from {name(c)[:100]}")
PY
