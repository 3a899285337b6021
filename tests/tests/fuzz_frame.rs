//! Fuzz target for the frame plugin's framing (see `fuzz.rs`; its own binary because two plugin
//! crates cannot link into one: each exports the plugin's root symbol).

use host_fuzz::{run, Budget};
use plugin_api::Frame;

fn frames(input: &[u8], _salt: u64) {
    let max = 1024;
    match frame::frame_len(input, max) {
        Frame::NeedMore => assert!(input.len() < 4),
        Frame::Complete(n) => {
            assert!((4..=max).contains(&n));
            assert_eq!(n as u32, u32::from_be_bytes(input[..4].try_into().expect("4 bytes")));
            let mut out = Vec::new();
            let payload = frame::payload(&input[..n.min(input.len())]);
            frame::encode_into(payload, &mut out);
            if n <= input.len() {
                assert_eq!(out, &input[..n], "re-encoding a frame gives it back");
            }
        }
        _ => {
            let len = u32::from_be_bytes(input[..4].try_into().expect("4 bytes")) as usize;
            assert!(!(4..=max).contains(&len), "refused a valid length {len}");
        }
    }
}

#[test]
fn frame_lengths() {
    let r = run("frame_lengths", Budget::from_env(3_000), 64, frames);
    eprintln!("fuzz frame_lengths: {} rounds in {:.1?}, no failure", r.rounds, r.elapsed);
}
