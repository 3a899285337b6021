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
// Headless Chromium on the `http` plugin: a directory page's images, seeking in audio.
mod http_browser;
// `examples/http_app`: an application on the http_proto library.
mod http_app;
// Helpers of the http tests: bounded runs of real clients, media files made on the spot.
mod http_tools;
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
// Hot reload: plugin files replaced by mv, cp, a refused file, a missing one, cargo build.
mod reload;
// The max send buffer: a client that does not read is paused, then served in full.
mod backpressure;
