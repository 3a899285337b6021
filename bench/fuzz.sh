#!/usr/bin/env bash
# Run: bash bench/fuzz.sh [FILTER]    (stable toolchain; FUZZ_SECS=120 per target by default)
#
# Long fuzz run of the parsers, with the seeded mutation fuzzer of tests/fuzz-core (host-fuzz):
# - every target of tests/tests/fuzz.rs, fuzz_frame.rs and fuzz_h2.rs (http request framing, chunked
#   decoding, resp commands, websocket frames and utf-8, frame lengths, plugin-api's framing
#   glue); seeds: tests/fuzz/corpus/<target>/;
# - host's own targets, unit tests inside host/ (`#[ignore]`d long runs): the config file parser
#   (host/src/config_file/fuzz.rs) and the master↔worker channel framing
#   (host/src/ctl/channel/fuzz.rs); seeds built in code.
# FUZZ_SECS each, in release mode, two at a time. FILTER (a test name part, e.g. `channel`)
# runs only the matching targets. A failing input is saved under target/release/fuzz-crashes/
# and named in the failure; fix the bug, then add the input to the target's seeds (replayed by
# every `cargo test` run). FUZZ_SEED=<n> replays one run's mutations.
set -euo pipefail
cd "$(dirname "$0")/.."
export FUZZ_SECS=${FUZZ_SECS:-120}
filter=${1:-}
cargo test --release -p host-tests --test fuzz --test fuzz_frame --test fuzz_h2 -- --nocapture --test-threads 2 ${filter:+"$filter"}
cargo test --release -p host --lib -- --ignored --nocapture --test-threads 2 fuzz_ ${filter:+"$filter"}
