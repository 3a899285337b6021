"""Writes the seed corpus of the `h2_frames` fuzz target (tests/tests/fuzz_h2.rs) with the python
`h2` library as the client: what a real client sends after the connection preface (the target
puts the preface back in front).

Run from the repository root: python3 plugins/http/proto/src/h2/testdata/make_fuzz_seeds.py
"""
import os

import h2.config
import h2.connection
import h2.settings

OUT = "tests/fuzz/corpus/h2_frames"
BASE = [(b":scheme", b"https"), (b":authority", b"example.com")]


def client(**settings):
    c = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True, header_encoding=None))
    c.initiate_connection()
    if settings:
        codes = h2.settings.SettingCodes
        c.update_settings({getattr(codes, k.upper()): v for k, v in settings.items()})
    return c


def get(c, sid, path=b"/", extra=()):
    c.send_headers(sid, [(b":method", b"GET"), (b":path", path)] + BASE + list(extra), end_stream=True)


def seeds():
    c = client()
    get(c, 1, b"/index.html", [(b"accept", b"*/*"), (b"user-agent", b"python-h2")])
    yield "get", c

    c = client()
    c.send_headers(1, [(b":method", b"POST"), (b":path", b"/upload")] + BASE + [(b"content-length", b"11")])
    c.send_data(1, b"hello world", end_stream=True)
    yield "post", c

    c = client()
    c.send_headers(1, [(b":method", b"POST"), (b":path", b"/t")] + BASE)
    c.send_data(1, b"abc", pad_length=5)
    c.send_headers(1, [(b"x-trailer", b"1")], end_stream=True)
    yield "trailers_padding", c

    c = client()
    for sid in (1, 3, 5, 7):
        get(c, sid, b"/p%d" % sid, [(b"cookie", b"a=1"), (b"cookie", b"b=2")])
    c.reset_stream(3)
    c.ping(b"12345678")
    c.increment_flow_control_window(1000)
    yield "many_streams", c

    c = client(initial_window_size=100, max_frame_size=20000, header_table_size=0)
    get(c, 1, b"/" + b"x" * 200, [(b"x-long", b"v" * 20000)])
    yield "continuation_settings", c

    c = client()
    get(c, 1)
    c.close_connection()
    yield "goaway", c


def main():
    os.makedirs(OUT, exist_ok=True)
    preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
    for name, c in seeds():
        data = c.data_to_send()
        assert data.startswith(preface)
        with open(os.path.join(OUT, name), "wb") as f:
            f.write(data[len(preface):])


if __name__ == "__main__":
    main()
