//! Fuzz target for the config file parser (the seeded mutation fuzzer of `host-fuzz`). A quick
//! deterministic run is part of `cargo test`; `bench/fuzz.sh` runs the `#[ignore]`d long one
//! (`FUZZ_SECS`). Invariants, beyond "no panic":
//! - an error is one line naming the file (what the user sees);
//! - a config that parses re-parses the same once its TOML is re-written (`toml::Table` printed
//!   again): the result depends on the TOML's meaning, never on its layout or spans;
//! - what parses is runnable: services, unique names and addresses, counts and limits in bounds.

use std::collections::HashSet;
use std::path::Path;

use host_fuzz::{run_seeds, Budget, Report};

use super::parse;
use crate::config::MAX_COUNT;

const BASE: &str = "/etc/host";

fn seeds() -> Vec<Vec<u8>> {
    let service = "[[service]]\nname = \"web\"\nplugin = \"http\"\nlisten = \"127.0.0.1:8080\"\n";
    vec![
        include_bytes!("../../../examples/host.toml").to_vec(),
        service.as_bytes().to_vec(),
        format!("{service}count = 4\nmax_requests = 100\nmax_memory = \"64M\"\nidle_timeout = 0\n").into_bytes(),
        format!("worker_timeout = 2.5\ndrain_timeout = 1\n{service}tls_cert = \"c.pem\"\ntls_key = \"k.pem\"\n[service.config]\nroot = \"/srv\"\n").into_bytes(),
        // Found by the fuzzer: a sub-table written as a header after re-printing was refused.
        format!("{service}[service.config]\nro0.ot = \"/srv\"\n").into_bytes(),
        // Found by the fuzzer: an error after a non-ASCII character panicked.
        "[[service]]\nname = \"web\"\nplugin = \"http\"\nlisten = \"127.0a-8 7\u{80}me = \n".into(),
        format!("{service}\n[[service]]\nname = \"b\"\nplugin = \"./p/libb.so\"\nlisten = \"[::1]:9\"\nuser = \"u\"\n").into_bytes(),
    ]
}

fn check(input: &[u8], _salt: u64) {
    let text = String::from_utf8_lossy(input);
    let parsed = parse(&text, Path::new(BASE), "host.toml");
    let config = match parsed {
        Err(e) => {
            let message = e.to_string();
            assert!(message.contains("host.toml"), "an error names the file: {message}");
            assert!(!message.contains('\n'), "an error is one line: {message:?}");
            return;
        }
        Ok(config) => config,
    };
    assert!(!config.services.is_empty());
    let names: HashSet<&str> = config.services.iter().map(|s| s.service.name.as_str()).collect();
    assert_eq!(names.len(), config.services.len(), "unique names");
    for s in &config.services {
        assert!((1..=MAX_COUNT).contains(&s.service.count));
        assert!(s.service.limits.max_package_size > 0 && s.service.limits.max_send_buffer > 0);
    }
    let table: toml::Table = toml::from_str(&text).expect("a config that parses is TOML");
    let again = toml::to_string(&table).expect("a parsed table prints");
    match parse(&again, Path::new(BASE), "host.toml") {
        Ok(second) => assert_eq!(second, config, "re-written as\n{again}"),
        Err(e) => panic!("a config that parsed is refused once re-written: {e}\n{again}"),
    }
}

fn fuzz(budget: Budget) -> Report {
    let r = run_seeds("config_file", seeds(), budget, 4096, check);
    eprintln!("fuzz config_file: {} rounds in {:.1?}, no failure", r.rounds, r.elapsed);
    r
}

#[test]
fn fuzz_config_file_quick() {
    fuzz(Budget::Rounds(3_000));
}

/// The long run (`bench/fuzz.sh`): `FUZZ_SECS` seconds, or `FUZZ_ROUNDS` rounds.
#[test]
#[ignore = "long fuzz run: bench/fuzz.sh"]
fn fuzz_config_file_long() {
    fuzz(Budget::from_env(1_000_000));
}
