//! What a keyspace's hand-over costs the plugin, measured (not a pass/fail test: ignored):
//! `KEYS=1000000 VALUE=32 cargo test --release -p host-plugin-resp --lib handover_cost --
//! --ignored --nocapture`. The state goes through a file in /dev/shm (tmpfs: the pages of a
//! memfd) in the pieces the plugin hands to the host, and is read back from memory.

use std::io::{Read, Seek, SeekFrom};
use std::time::Instant;

use crate::commands::Server;
use crate::handover::{read_worker, write_worker};

/// User + system CPU seconds of this process.
fn cpu() -> f64 {
    use nix::sys::resource::{getrusage, UsageWho};
    let u = getrusage(UsageWho::RUSAGE_SELF).expect("getrusage");
    let secs = |tv: nix::sys::time::TimeVal| tv.tv_sec() as f64 + tv.tv_usec() as f64 / 1e6;
    secs(u.user_time()) + secs(u.system_time())
}

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

#[test]
#[ignore = "a measurement: run it with --ignored --nocapture"]
fn handover_cost() {
    let (keys, value) = (env("KEYS", 1_000_000), env("VALUE", 32));
    let mut old = Server::default();
    let v = vec![b'v'; value];
    for i in 0..keys {
        // One key in ten with a deadline an hour away.
        old.store.set(format!("key:{i}").as_bytes(), &v, (i % 10 == 0).then_some(3_600_000), 1);
    }
    let path = format!("/dev/shm/resp-handover-cost-{}", std::process::id());
    let mut file = std::fs::OpenOptions::new().read(true).write(true).create_new(true).open(&path).unwrap();
    std::fs::remove_file(&path).unwrap();

    let (t, c) = (Instant::now(), cpu());
    write_worker(&old, 1, &mut file).unwrap();
    let (export_wall, export_cpu) = (t.elapsed().as_secs_f64(), cpu() - c);

    let mut bytes = Vec::new();
    file.seek(SeekFrom::Start(0)).unwrap();
    file.read_to_end(&mut bytes).unwrap();
    let mut new = Server::default();
    let (t, c) = (Instant::now(), cpu());
    read_worker(&mut new, 1, &bytes).unwrap();
    let (adopt_wall, adopt_cpu) = (t.elapsed().as_secs_f64(), cpu() - c);
    assert_eq!(new.store.len(), keys);
    println!(
        "handover_cost keys={keys} value={value} state={} B: export {:.0} ms ({:.0} ms CPU), adopt {:.0} ms ({:.0} ms CPU)",
        bytes.len(),
        export_wall * 1e3,
        export_cpu * 1e3,
        adopt_wall * 1e3,
        adopt_cpu * 1e3
    );
}
