//! Users.

use super::*;

// A service with `user = "nobody"`: its workers run as nobody, the master stays root, and the
// service answers. Needs root; skipped otherwise.
#[test]
fn workers_run_as_the_configured_user() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("note: not root; workers_run_as_the_configured_user skipped");
        return;
    }
    let Ok(Some(nobody)) = nix::unistd::User::from_name("nobody") else {
        eprintln!("note: no user nobody; workers_run_as_the_configured_user skipped");
        return;
    };
    let cfg_dir = TempDir::new();
    let cfg = cfg_dir
        .write(
            "user.toml",
            "[[service]]\nname = \"web\"\nplugin = \"http\"\nlisten = \"127.0.0.1:0\"\ncount = 2\nuser = \"nobody\"\n",
        )
        .display()
        .to_string();
    let host = Host::spawn(["-c", &cfg]);
    host.wait_for_log("host ready", READY_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    hello(service_port(&host, "web"));
    let uid = nobody.uid.as_raw();
    for w in host.wait_workers(2, Duration::from_secs(2), |_| true).unwrap() {
        let uids = proc_status(&w.to_string(), "Uid");
        let uid = uid.to_string();
        assert_eq!(uids.split_whitespace().collect::<Vec<_>>(), [uid.as_str(); 4], "worker {w} Uid: {uids}");
    }
    let master = proc_status(&host.pid().to_string(), "Uid");
    assert_eq!(master.split_whitespace().collect::<Vec<_>>(), ["0"; 4], "master Uid: {master}");
}
