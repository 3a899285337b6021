//! host's integration tests: one binary that runs the real `host` and talks to it over TCP, as
//! ripgrep's `tests/tests.rs` does for `rg`. The harness (build once, temp dirs, the `Host`
//! wrapper that kills what it started, the raw client) is the `host-tests` library in `tests/src`.
//!
//! Every test starts its own master on a port the system picks (`--listen 127.0.0.1:0`), so the
//! tests run in parallel, under `cargo test` and `cargo nextest run` alike.

// HTTP/1.1 through the `http` plugin: keep-alive, pipelining, bodies, errors, static files.
mod http;
// The `http` plugin's static files through curl and python `requests`: ranges, resuming,
// compression, validators, directories, limits.
mod http_files;
// Headless Chromium on the `http` plugin: a directory page's images, seeking in audio, 60
// images over HTTPS with HTTP/2.
mod http_browser;
// HTTP/2 through the `http` plugin: h2c, h2 over TLS, nghttp, a hostile python `h2` client.
mod http2;
// HTTP/2 attacks by a raw-frame client: floods, HPACK bomb, too many streams, malformed
// requests, a window never opened; each counted in /metrics.
mod http2_hostile;
// `examples/http_app`: an application on the http_proto library.
mod http_app;
// Helpers of the http tests: bounded runs of real clients, media files made on the spot.
mod http_tools;
// Access logs of the `http` plugin: lines, flushing, `host reopen-logs` after a rename.
mod access_log;
// The master's lifecycle and control: reload, stop, status, pid file, daemon, config file,
// crash-loop back-off, logging, users, restart.
mod lifecycle;
// Process supervision: worker count, replacement after a crash, SIGINT/SIGTERM, bind errors.
mod process;
// Finding and checking plugins: missing, garbage, not-a-plugin, wrong ABI, failing start.
mod plugins;
// A plugin that panics: the host closes that connection only and logs the panic.
mod panic;
// Work off the event loop: the task pool, notifiers, a panicking job, drain waiting for jobs.
mod tasks;
// TLS served by the host under an unchanged plugin: curl, openssl s_client, ALPN, SNI, bad
// handshakes, a broken key pair, close_notify.
mod tls;
// Workerman's Text protocol through the `text` plugin: framing and the max package size.
mod text;
// WebSocket through the `websocket` echo plugin and the `ws_chat` example: a Python client,
// raw sockets for bad input, subprotocols, origins, server pings, drain.
mod websocket;
// Topics (publish/subscribe) through the `ws_chat` example: across workers, rooms, a slow
// subscriber, hostile input; across hosts through a real redis-server and nats-server.
mod topics;
// Workerman's Frame protocol through the `frame` plugin: length-prefixed frames, bad lengths.
mod frame;
// The `resp` plugin: a Redis-compatible store driven by redis-cli, redis-py and redis-benchmark.
mod resp;
// The worker's I/O backend: `--io uring` (io_uring) and `--io epoll`, the config file's `io`.
mod io_backend;
// Hot reload: plugin files replaced by mv, cp, a refused file, a missing one, cargo build.
mod reload;
// Hand-over: connections and plugin state move to the replacement on a reload.
mod handover;
mod handover_http;
// resp's pattern and channel subscribers across reloads: every message once, in order.
mod handover_resp;
// The pre-copy hand-over of a large worker state: a resp keyspace copied while it is written.
mod handover_state;
// `host upgrade`: the master re-executes the binary installed at its path (same pid, sockets and
// connections kept), every worker follows; refusals leave the old master serving.
mod upgrade;
// The worker binary (`host-worker`) beside `host`: workers run it, or `host` itself without it;
// kept by descriptor; `host upgrade` moves to the new pair and refuses a mismatched one.
mod worker_binary;
// The max send buffer: a client that does not read is paused, then served in full.
mod backpressure;
// File bodies sent by the host (`send_file`) and by the plugin (task pool): exact bytes, ranges,
// HEAD, pipelining, a client leaving mid-file, a file shrinking under its response.
mod sendfile;
// The worker's loop: timers that never end, signals meant for the master, SIGTERM by hand.
mod worker_loop;
// systemd: Type=notify messages, recorded by a socket the test owns.
mod systemd;
// The admin listener: /metrics through a real OpenMetrics parser, /healthz.
mod metrics;
// A closed log pipe never kills the master or its workers.
mod log_pipe;
// Plugin file names as users type them.
mod plugin_names;
// The workspace: a release build leaves the test fixtures out.
mod workspace;
// Descriptors: what the master and each worker hold (nothing inherited by accident), and plugin
// snapshots as sealed memfds.
mod fds;
// ABI evolution: a plugin built against plugin-api 0.1.0 loads, serves and hears new events.
mod abi;
// Start settings out of range are refused with one line, before anything starts.
mod limits;
// The command line: listen addresses, options of another subcommand.
mod cli;
// Robustness: hung or root-refusing plugin probes, untrusted plugin files, a panic flood, the
// watchdog, aborting and crashing plugins.
mod robustness;
// `host plugin new`: a new plugin builds, serves and passes its test; refusals leave nothing.
mod scaffold;
// The control socket as a raw client uses it: half-closed clients, unterminated and bad requests.
mod control;
// Outbound connections: connected, refused, timed out, resolved by name, closed mid-message.
mod outbound;
// The reverse proxy: GET/POST, keep-alive, pipelining in order, 502/504, X-Forwarded-For,
// upstreams closing early, a client that does not read.
mod proxy;
// Messages between workers through the `chat` example: every worker's clients, a reload chain,
// one slot, a stuck or dead peer.
mod messages;
// UDP services (examples/udp_echo), Unix-socket services (curl --unix-socket, peer credentials,
// stale and live socket files, TLS), IPv6 and dual-stack listening.
mod transports;
// Worker recycling: --max-requests replaces workers under traffic without a failed request;
// --max-memory recycles or kills a worker that grows without bound.
mod recycle;
