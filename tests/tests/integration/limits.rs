//! Start settings out of range: the real binary refuses them with one line and a failing exit
//! code, before any master or worker starts (never a panic, never a value that wrapped).

use std::time::Duration;

use host_tests::{run_host_in, TempDir};

#[test]
fn out_of_range_numbers_are_refused_before_anything_starts() {
    let cases = [
        (["--idle-timeout", "10000000000000000"], "--idle-timeout must be between 0 and 31536000 seconds"),
        (
            ["--max-send-buffer", "18446744073709551615"],
            "--max-send-buffer must be between 1 and 9223372036854775807 bytes",
        ),
        (["--drain-timeout", "nan"], "--drain-timeout must be between 0 and 86400 seconds"),
    ];
    for (flags, want) in cases {
        let dir = TempDir::new();
        let mut args = vec!["--plugin", "echo", "--listen", "127.0.0.1:0"];
        args.extend_from_slice(&flags);
        let out = run_host_in(dir.path(), &args, Duration::from_secs(10));
        assert_ne!(out.status.code(), Some(0), "{flags:?} was accepted");
        assert!(out.status.code().is_some(), "{flags:?}: killed by a signal, not refused: {}", out.stderr);
        let lines: Vec<&str> = out.stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{flags:?}: one line expected: {}", out.stderr);
        assert!(lines[0].starts_with("error: ") && lines[0].contains(want), "{flags:?}: {}", out.stderr);
        assert!(!out.stderr.contains("panicked"), "{}", out.stderr);
        // No master ever ran: it would have written its pid file and control socket here.
        assert!(!dir.join("host.pid").exists() && !dir.join("host.sock").exists(), "{flags:?}: a master started");
    }
}
