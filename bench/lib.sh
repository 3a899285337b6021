# Shared by the bench scripts (sourced, not run): a temporary directory, the processes a script
# started (stopped by pid when it exits, however it exits), starting a host and waiting for it,
# ports, and the /proc readings every table is made of. Every wait has a timeout.
#
#   source bench/lib.sh      (from the repository root; sets $tmp, $pids and an EXIT trap)

tmp=$(mktemp -d)
pids=()
cleanup() {
    local p
    for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null || true; done
    for p in "${pids[@]}"; do
        for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
        kill -KILL "$p" 2>/dev/null || true
    done
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Fails with the Debian package to install when a program is missing.
need() {
    local tool
    for tool in "$@"; do
        command -v "$tool" >/dev/null || { echo "$tool is missing (Debian: apt-get install $tool)" >&2; exit 1; }
    done
}

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Waits until something accepts connections on 127.0.0.1:$1.
wait_port() {
    for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done
    echo "nothing listens on $1" >&2
    exit 1
}

# SIGINT, then SIGKILL after 5 s.
stop_pid() {
    local p=$1
    kill -INT "$p" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || return 0; sleep 0.05; done
    kill -KILL "$p" 2>/dev/null || true
}

# Starts a host on a port the system picks: `start_host NAME ARGS...` (ARGS include --plugin).
# The binary is $HOST_BIN (target/release/host), its plugins come from $PLUGIN_DIR
# (target/release). Sets $host_pid, $host_port, $host_pidfile; the log is $tmp/NAME.log. Not in
# a $(...) subshell: the pid must reach the cleanup list.
start_host() {
    local name=$1
    shift
    host_pidfile=$tmp/$name.pid
    "${HOST_BIN:-target/release/host}" --plugin-dir "${PLUGIN_DIR:-target/release}" --listen 127.0.0.1:0 \
        --pid-file "$host_pidfile" --log-level warn,host::master=info "$@" >"$tmp/$name.out" 2>"$tmp/$name.log" &
    host_pid=$!
    pids+=("$host_pid")
    for _ in $(seq 200); do grep -q "host ready" "$tmp/$name.log" && break; sleep 0.05; done
    host_port=$(grep -o 'address=127.0.0.1:[0-9]*' "$tmp/$name.log" | head -1 | cut -d: -f2)
    [ -n "$host_port" ] || { cat "$tmp/$name.log" >&2; exit 1; }
}

# Starts a peer server (`start_peer PORT CMD...`) and waits for its port. Sets $peer_pid.
start_peer() {
    local port=$1
    shift
    "$@" &
    peer_pid=$!
    pids+=("$peer_pid")
    wait_port "$port"
}

children() { cat "/proc/$1/task/$1/children" 2>/dev/null || true; }
# utime+stime (clock ticks) of a process and its children.
ticks() { python3 -B -c "import sys; sys.path.insert(0, 'bench'); import bench; print(bench.ticks($1))"; }
# PSS (KiB) of each child of a process (a server's workers), or of the process itself when it has
# none (redis-server).
pss() {
    local c cs
    cs=$(children "$1")
    for c in ${cs:-$1}; do awk '/^Pss:/ {print $2}' "/proc/$c/smaps_rollup"; done
}
