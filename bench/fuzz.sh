#!/usr/bin/env bash
# Run: bash bench/fuzz.sh             (stable toolchain; FUZZ_SECS=120 per target by default)
#
# Long fuzz run of the protocol parsers: every target of tests/tests/fuzz.rs and fuzz_frame.rs
# (http request framing, chunked decoding, resp commands, websocket frames and utf-8, frame
# lengths) for FUZZ_SECS each, in release mode, two at a time. Seeds: tests/fuzz/corpus/<target>/.
# A failing input is saved under target/release/fuzz-crashes/ and named in the failure; fix the
# bug, then add the input to the target's corpus (it is replayed by every `cargo test` run).
# FUZZ_SEED=<n> replays one run's mutations.
set -euo pipefail
cd "$(dirname "$0")/.."
export FUZZ_SECS=${FUZZ_SECS:-120}
exec cargo test --release -p host-tests --test fuzz --test fuzz_frame -- --nocapture --test-threads 2
