//! host's integration tests: one binary that runs the real `host` and talks to it over TCP, as
//! ripgrep's `tests/tests.rs` does for `rg`. The harness (build once, temp dirs, the `Host`
//! wrapper that kills what it started, the raw client) is the `host-tests` library in `tests/src`.
//!
//! Every test starts its own master on a port the system picks (`--listen 127.0.0.1:0`), so the
//! tests run in parallel, under `cargo test` and `cargo nextest run` alike.

// HTTP/1.1 through the `http` plugin: keep-alive, pipelining, bodies, errors, static files.
mod http;
// The master's lifecycle and control: reload, stop, status, pid file, daemon, config file,
// crash-loop back-off, logging, users, restart.
mod lifecycle;
// Process supervision: worker count, replacement after a crash, SIGINT/SIGTERM, bind errors.
mod process;
// Finding and checking plugins: missing, garbage, not-a-plugin, wrong ABI, failing start.
mod plugins;
// A plugin that panics: the host closes that connection only and logs the panic.
mod panic;
// Workerman's Text protocol through the `text` plugin: framing and the max package size.
mod text;
// Workerman's Frame protocol through the `frame` plugin: length-prefixed frames, bad lengths.
mod frame;
// The `resp` plugin: a Redis-compatible store driven by redis-cli, redis-py and redis-benchmark.
mod resp;
// Hot reload: plugin files replaced by mv, cp, a refused file, a missing one, cargo build.
mod reload;
// The max send buffer: a client that does not read is paused, then served in full.
mod backpressure;
