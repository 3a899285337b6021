"""An HTTP/2 client on the python `h2` library (pip install h2), for http_proto's interop test.

Run by `h2::interop_tests`: the test's server (http_proto::h2::Connection) and this client
exchange bytes over stdin/stdout in turns, each chunk prefixed with its length (4 bytes, big
endian), the client first. The client sends three requests:
  stream 1: GET /hello
  stream 3: POST /echo with a 200,000-byte body (more than the server's 65,535-byte windows:
            it goes out as the server's WINDOW_UPDATEs come back)
  stream 5: GET /big, whose 300,000-byte answer (bytes i % 253) exceeds this client's windows (65,535): the
            server must wait for this client's WINDOW_UPDATEs
then writes what it received, as JSON, to the file named by its first argument. Bounded: it
stops after MAX_TURNS turns, done or not.

With `rapid-reset` as its second argument it is hostile instead (CVE-2023-44487): it opens
RESETS streams, cancelling each at once, and records how the server ended the connection.
"""
import hashlib
import json
import struct
import sys

import h2.config
import h2.connection
import h2.events

MAX_TURNS = 2000
RESETS = 500
BODY = bytes(i % 251 for i in range(200_000))


def read_exact(n):
    buf = b""
    while len(buf) < n:
        piece = sys.stdin.buffer.read(n - len(buf))
        if not piece:
            return None
        buf += piece
    return buf


def send_chunk(data):
    sys.stdout.buffer.write(struct.pack(">I", len(data)) + data)
    sys.stdout.buffer.flush()


def read_chunk():
    head = read_exact(4)
    return None if head is None else read_exact(struct.unpack(">I", head)[0])


def rapid_reset(out_path):
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    headers = [(b":method", b"GET"), (b":path", b"/hello"), (b":scheme", b"http"), (b":authority", b"x")]
    for i in range(RESETS):
        sid = conn.get_next_available_stream_id()
        conn.send_headers(sid, headers)
        conn.reset_stream(sid)
    send_chunk(conn.data_to_send())
    result = {"terminated": None}
    chunk = read_chunk()
    if chunk is not None:
        for ev in conn.receive_data(chunk):
            if isinstance(ev, h2.events.ConnectionTerminated):
                result["terminated"] = {"error_code": int(ev.error_code), "last_stream_id": ev.last_stream_id}
    with open(out_path, "w") as f:
        json.dump(result, f)


def main():
    out_path = sys.argv[1]
    if sys.argv[2:] == ["rapid-reset"]:
        return rapid_reset(out_path)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    conn.initiate_connection()
    base = [(b":scheme", b"http"), (b":authority", b"interop.test")]
    conn.send_headers(1, [(b":method", b"GET"), (b":path", b"/hello")] + base, end_stream=True)
    conn.send_headers(3, [(b":method", b"POST"), (b":path", b"/echo")] + base
                      + [(b"content-length", str(len(BODY)).encode())])
    conn.send_headers(5, [(b":method", b"GET"), (b":path", b"/big")] + base, end_stream=True)
    sent = 0
    results = {}
    bodies = {1: b"", 3: b"", 5: b""}
    ended = set()
    events_seen = []
    for _ in range(MAX_TURNS):
        # The request body, as far as the server's windows admit.
        while sent < len(BODY):
            room = min(conn.local_flow_control_window(3), conn.max_outbound_frame_size, len(BODY) - sent)
            if room <= 0:
                break
            conn.send_data(3, BODY[sent:sent + room], end_stream=sent + room == len(BODY))
            sent += room
        data = conn.data_to_send()
        sys.stdout.buffer.write(struct.pack(">I", len(data)) + data)
        sys.stdout.buffer.flush()
        if len(ended) == 3:
            break
        head = read_exact(4)
        if head is None:
            break
        chunk = read_exact(struct.unpack(">I", head)[0])
        if chunk is None:
            break
        for ev in conn.receive_data(chunk):
            events_seen.append(type(ev).__name__)
            if isinstance(ev, h2.events.ResponseReceived):
                results[ev.stream_id] = {"headers": [[n.decode(), v.decode()] for n, v in ev.headers]}
            elif isinstance(ev, h2.events.DataReceived):
                bodies[ev.stream_id] += ev.data
                conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                ended.add(ev.stream_id)
            elif isinstance(ev, (h2.events.StreamReset, h2.events.ConnectionTerminated)):
                results.setdefault("errors", []).append(repr(ev))
    for sid, body in bodies.items():
        results.setdefault(sid, {})["body_len"] = len(body)
        results[sid]["body_sha256"] = hashlib.sha256(body).hexdigest()
    results["ended"] = sorted(ended)
    results["sent"] = sent
    results["body_sha256"] = hashlib.sha256(BODY).hexdigest()
    results["big_sha256"] = hashlib.sha256(bytes(i % 253 for i in range(300_000))).hexdigest()
    results["events"] = sorted(set(events_seen))
    with open(out_path, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    main()
