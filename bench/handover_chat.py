# The gap chat-room members see across a hand-over (issue 21): one slot of `ws_chat` holds N
# WebSocket clients, every one subscribed to a room (so before this release the slot moved all
# at once); PROBES of them are each alone in a room of their own and keep sending numbered
# messages to it (each sends its next one as soon as the previous came back through the room's
# topic and INTERVAL_MS passed) while `host reload -g` moves every client to the new worker. A
# probe's longest wait for its message is the gap it saw; the script prints the gaps' p50/p99/max
# before and across the reload, checks that every probe got every message back once, in order,
# and that every other client still answers `/whoami` on its connection afterwards.
#
# MODE=batches (the default: ws_chat moves 64 clients at a time) or MODE=all (the same build
# with --no-handover-batches: every client stops at once, as a slot with topic subscriptions did
# before). Alternate the two on a shared machine.
# Run: cargo build --release -p host -p host-example-ws-chat && python3 bench/handover_chat.py 10000
# Env: HOST_BIN (target/release/host; the plugin is looked for beside it), PROBES (100),
# INTERVAL_MS (20), MODE (batches|all), HOST_NICE (a nice level for the host), HOST_ARGS (more
# flags). Bounded: every wait has a timeout; only the host it started is stopped. Loopback only.
import os, resource, socket, sys

from handover_lib import Host, Probe, Speech, cleanup, print_gaps, probe_across_reload, tempdir

N = int(sys.argv[1]) if len(sys.argv) > 1 else 10000
PROBES = int(os.environ.get("PROBES", "100"))
INTERVAL = int(os.environ.get("INTERVAL_MS", "20")) / 1000
MODE = os.environ.get("MODE", "batches")
assert MODE in ("batches", "all"), MODE
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
d = tempdir("host-handover-chat-")
wrap = ["nice", "-n", os.environ["HOST_NICE"]] if os.environ.get("HOST_NICE") else []
host = Host(d, ["--plugin", "ws_chat", "--count", "1", "--max-connections", str(N + 100), "--drain-timeout", "30"]
            + (["--no-handover-batches"] if MODE == "all" else []) + os.environ.get("HOST_ARGS", "").split(),
            wrap=wrap)


def text_frame(text):
    """A masked client text frame (a zero mask: the payload as it is)."""
    data = text.encode()
    assert len(data) < 126
    return bytes([0x81, 0x80 | len(data)]) + b"\0\0\0\0" + data


def frames(buf):
    """The complete server text frames at the start of `buf` (pings and others skipped), and
    the rest."""
    out = []
    while len(buf) >= 2:
        op, n = buf[0] & 0x0F, buf[1] & 0x7F
        assert n < 126, "a long frame"
        if len(buf) < 2 + n:
            break
        if op == 1:
            out.append(buf[2:2 + n].decode())
        buf = buf[2 + n:]
    return out, buf


def ws_connect(port):
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(30)
    s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
              b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        assert chunk, "closed during the handshake"
        head += chunk
    assert head.startswith(b"HTTP/1.1 101"), head[:40]
    return s, head.split(b"\r\n\r\n", 1)[1]


def read_text(s, buf):
    while True:
        got, buf = frames(buf)
        if got:
            return got[0], buf
        chunk = s.recv(4096)
        assert chunk, "closed"
        buf += chunk


WS = Speech(encode=lambda seq: text_frame(f"p{seq}"), split=frames, want=lambda seq: f"p{seq}")


socks = []
try:
    port = host.wait_ready()
    step = max(1, N // PROBES)
    probe_at = set(range(0, N, step)[:PROBES])
    for i in range(N):
        s, rest = ws_connect(port)
        room = f"p{i}" if i in probe_at else "quiet"
        s.sendall(text_frame(f"/join {room}"))
        socks.append((s, rest, room))
    for i, (s, rest, room) in enumerate(socks):
        answer, rest = read_text(s, rest)
        assert answer == f"joined {room}", answer
        socks[i] = (s, rest, room)
    probes = [Probe(socks[i][0], socks[i][1]) for i in sorted(probe_at)]
    line = probe_across_reload(host, probes, INTERVAL, WS, timeout=60)
    batches = "handing over in batches" in host.text()
    messages = sum(pr.seq for pr in probes)
    errors = [e for pr in probes for e in pr.errors]
    others = [(i, s, rest) for i, (s, rest, _) in enumerate(socks) if i not in probe_at]
    for _, s, _ in others:
        try:
            s.sendall(text_frame("/whoami"))
        except OSError:
            pass
    ok = 0
    for _, s, rest in others:
        try:
            answer, _ = read_text(s, rest)
            ok += answer.startswith("slot ")
        except (OSError, AssertionError):
            pass
    closed = sum(1 for pr in probes if pr.errors)
    print(f"MODE={MODE} (handed over in batches: {batches}) N={N} probes={len(probes)} interval={INTERVAL*1000:.0f}ms "
          f"messages back through the probes' rooms: {messages}, errors: {len(errors)} {errors[:3]}; probes closed: {closed}")
    print_gaps(probes, "a message")
    print(f"the other clients answer /whoami after it: {ok}/{len(others)}")
    print(line or "no hand-over line")
finally:
    for s, _, _ in socks:
        s.close()
    host.stop(timeout=40)
    cleanup(d)
