//! Plugins named as users type them: a bare file name in the current directory.

use std::time::Duration;

use host_tests::{assert_contains, get, plugin_file, run_host_in, Client, TempDir};

// `host check-plugin libhttp.so` in the file's directory reads that file (not a library of the
// dynamic loader's search path).
#[test]
fn check_plugin_takes_a_bare_file_name() {
    let dir = TempDir::new();
    std::fs::copy(plugin_file("http"), dir.join("libhttp.so")).unwrap();
    let out = run_host_in(dir.path(), ["check-plugin", "libhttp.so"], Duration::from_secs(20));
    assert!(out.status.success(), "{out:?}");
    assert_contains!(out.stdout, "http ");
}

// `--plugin myecho.so` is the file `myecho.so` (not `myecho.so.so`); the service is `myecho`.
#[test]
fn plugin_flag_takes_a_file_name_with_its_extension() {
    let dir = TempDir::new();
    std::fs::copy(plugin_file("http"), dir.join("myecho.so")).unwrap();
    let out = run_host_in(dir.path(), ["check-plugin", "myecho.so"], Duration::from_secs(20));
    assert!(out.status.success(), "{out:?}");
    let mut cmd = host_tests::host_command_in(dir.path());
    let mut child = cmd
        .args(["--plugin", "myecho.so", "--listen", "127.0.0.1:0"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut port = None;
    for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)) {
        let line = line.unwrap();
        assert!(!line.contains(".so.so"), "{line}");
        if let Some(a) = line.split_whitespace().find_map(|f| f.strip_prefix("address=")) {
            port = a.rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
            assert_contains!(line, "service=myecho");
        }
        if line.contains("host ready") {
            break;
        }
    }
    let r = Client::connect(port.expect("a port")).request(&get("/"));
    assert_eq!(r.status, 200);
    let _ = child.kill();
    let _ = child.wait();
}
