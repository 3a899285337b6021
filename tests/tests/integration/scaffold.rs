//! `host plugin new`: a plugin crate that builds, serves and passes its own test at once, and the
//! names and places it refuses without leaving anything behind.
//!
//! The standalone crate is built as its author would (`cargo build` in its directory), against
//! this repository's `plugin-api` by path, with the workspace's `Cargo.lock` (the same dependency
//! versions, `--offline`) and `CARGO_TARGET_DIR=<target>/scaffold`: the dependencies are compiled
//! there once and reused by later runs; nothing of the workspace's own target dir is touched.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use host_tests::{assert_contains, host_command_in, poll_until, target_dir, Client, Host, TempDir};
use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

/// The first build of the dependencies (abi_stable…) into `<target>/scaffold` takes a while on a
/// busy machine; later ones reuse them.
const BUILD_TIMEOUT: Duration = Duration::from_secs(600);
const COMMAND_TIMEOUT: Duration = Duration::from_secs(20);

fn workspace() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace directory")
}

struct Run {
    ok: bool,
    stdout: String,
    stderr: String,
}

/// Runs `cmd` to completion in a process group of its own, killed (and the test failed) after
/// `timeout`.
fn run(mut cmd: Command, timeout: Duration) -> Run {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("could not run {cmd:?}: {e}"));
    let read_all = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut text = String::new();
            let _ = r.read_to_string(&mut text);
            text
        })
    };
    let stdout = read_all(Box::new(child.stdout.take().expect("piped stdout")));
    let stderr = read_all(Box::new(child.stderr.take().expect("piped stderr")));
    let Some(status) = poll_until(timeout, || child.try_wait().ok().flatten()) else {
        let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
        let _ = child.wait();
        panic!("{cmd:?} did not finish within {timeout:?}:\n{}", stderr.join().unwrap_or_default());
    };
    Run { ok: status.success(), stdout: stdout.join().unwrap_or_default(), stderr: stderr.join().unwrap_or_default() }
}

/// `host plugin new ARGS…` in `cwd`, with `HOST_SOURCE_DIR` set to `source` when given.
fn plugin_new(cwd: &Path, args: &[&str], source: Option<&str>) -> Run {
    let mut cmd = host_command_in(cwd);
    cmd.args(["plugin", "new"]).args(args).env_remove("HOST_SOURCE_DIR");
    if let Some(source) = source {
        cmd.env("HOST_SOURCE_DIR", source);
    }
    run(cmd, COMMAND_TIMEOUT)
}

/// `cargo ARGS…` on the crate in `dir`, into `<target>/scaffold`.
fn cargo(dir: &Path, args: &[&str]) -> Run {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.args(args)
        .arg("--offline")
        .current_dir(dir)
        .env("CARGO_TARGET_DIR", scaffold_target())
        .env_remove("CARGO_BUILD_TARGET_DIR")
        .env("CARGO_INCREMENTAL", "0")
        .env("CARGO_TERM_COLOR", "never");
    run(cmd, BUILD_TIMEOUT)
}

fn scaffold_target() -> PathBuf {
    target_dir().parent().expect("the target directory").join("scaffold")
}

/// Removes what cargo left in `<target>/scaffold` for the plugin `lib`, and only that (its
/// name is unique to this test process).
struct Artifacts {
    lib: String,
}

impl Drop for Artifacts {
    fn drop(&mut self) {
        let debug = scaffold_target().join("debug");
        let package = self.lib.replace('_', "-");
        for (dir, prefix) in [
            (debug.clone(), format!("lib{}.", self.lib)),
            (debug.join("deps"), format!("lib{}.", self.lib)),
            (debug.join("deps"), format!("{}-", self.lib)),
            (debug.join("deps"), format!("{}.", self.lib)),
            (debug.join(".fingerprint"), format!("{package}-")),
        ] {
            let Ok(entries) = std::fs::read_dir(&dir) else { continue };
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with(&prefix) {
                    let path = entry.path();
                    let _ = if path.is_dir() { std::fs::remove_dir_all(&path) } else { std::fs::remove_file(&path) };
                }
            }
        }
    }
}

// The whole first experience: `host plugin new` outside the workspace, `cargo build` in the new
// crate, `host --plugin <its .so>` answers, `check-plugin` names it, and its own unit test passes.
#[test]
fn a_new_plugin_builds_serves_and_passes_its_own_test() {
    let dir = TempDir::new();
    let lib = format!("scaffolded_{}", std::process::id());
    let name = lib.replace('_', "-");
    let _artifacts = Artifacts { lib: lib.clone() };
    let out = plugin_new(dir.path(), &[&name], None);
    assert!(out.ok, "host plugin new failed: {}", out.stderr);
    assert_contains!(out.stdout, format!("created plugin `{lib}` in {name}"));
    assert_contains!(out.stdout, "cargo build");
    let krate = dir.join(&name);
    let manifest = std::fs::read_to_string(krate.join("Cargo.toml")).unwrap();
    let api = format!("plugin-api = {{ path = {:?} }}", workspace().join("plugin-api").display().to_string());
    assert_contains!(manifest, api, "a standalone crate depends on this host's plugin-api by path");
    assert_contains!(manifest, "crate-type = [\"cdylib\", \"rlib\"]");
    assert_contains!(manifest, "\n[workspace]\n");

    // The workspace's dependency versions, so that the build needs no network.
    std::fs::copy(workspace().join("Cargo.lock"), krate.join("Cargo.lock")).unwrap();
    let build = cargo(&krate, &["build"]);
    assert!(build.ok, "cargo build of the new plugin failed:\n{}", build.stderr);
    let so = scaffold_target().join(format!("debug/lib{lib}.so"));
    assert!(so.is_file(), "no {}", so.display());

    let mut host = Host::start(so.to_str().unwrap(), &[]);
    let mut client = Client::connect(host.port());
    client.send(b"hello from a new plugin\n");
    let line = client.read_line().unwrap_or_else(|e| panic!("no answer: {e}\n{}", host.log_text()));
    assert_eq!(line, b"hello from a new plugin\n");
    host.wait_for_log(&format!("{lib} is ready"), Duration::from_secs(5)).unwrap();
    // It takes part in hand-overs, in batches: the client stays on its connection across
    // `reload -g`.
    let reload = host.command(["reload", "-g"], COMMAND_TIMEOUT);
    assert!(reload.status.success(), "{}{}", reload.stdout, reload.stderr);
    host.wait_for_log("hand-over: 1 connections moved", Duration::from_secs(15)).unwrap();
    // Its connections are independent (the template answers `handover_in_batches`).
    host.wait_for_log("handing over in batches", Duration::from_secs(5)).unwrap();
    client.send(b"after the reload\n");
    assert_eq!(client.read_line().unwrap(), b"after the reload\n");
    drop(host);

    let mut check = host_command_in(dir.path());
    check.arg("check-plugin").arg(&so);
    let check = run(check, COMMAND_TIMEOUT);
    assert!(check.ok, "{}", check.stderr);
    assert_contains!(check.stdout, format!("{lib} 0.1.0 (ABI"));

    let test = cargo(&krate, &["test"]);
    assert!(test.ok, "cargo test of the new plugin failed:\n{}\n{}", test.stdout, test.stderr);
    assert_contains!(test.stdout, "test tests::lines_are_framed_and_echoed ... ok");
    assert_contains!(test.stdout, "test tests::the_session_moves_with_its_connection ... ok");
}

/// The files under `dir`, relative, sorted.
fn tree(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap().flatten() {
            let path = entry.path();
            found.push(path.strip_prefix(dir).unwrap().display().to_string());
            if path.is_dir() {
                stack.push(path);
            }
        }
    }
    found.sort();
    found
}

fn refused(out: &Run, why: &str) {
    assert!(!out.ok, "accepted; stdout: {}", out.stdout);
    assert_eq!(out.stderr.lines().count(), 1, "one line: {}", out.stderr);
    assert!(out.stderr.starts_with("error: "), "{}", out.stderr);
    assert_contains!(out.stderr, why);
}

// Invalid names, names of existing plugins, existing directories, and a template that cannot be
// built here: one line each, and nothing written.
#[test]
fn plugin_new_refuses_with_one_line_and_leaves_nothing() {
    let dir = TempDir::new();
    dir.write("taken/keep", "mine");
    let before = tree(dir.path());
    refused(&plugin_new(dir.path(), &["Bad"], None), "invalid plugin name `Bad`: it must start with");
    refused(&plugin_new(dir.path(), &["my plugin"], None), "invalid plugin name `my plugin`: ' ' is not allowed");
    refused(&plugin_new(dir.path(), &["fn"], None), "invalid plugin name `fn`: it is a Rust keyword");
    refused(&plugin_new(dir.path(), &["taken"], None), &format!("{} already exists", dir.join("taken").display()));
    let websocket = plugin_new(dir.path(), &["x", "--dir", "a/b", "--protocol", "websocket"], Some(""));
    refused(&websocket, "the websocket template is not available here yet");
    refused(
        &plugin_new(dir.path(), &["x"], Some("/nonexistent")),
        "HOST_SOURCE_DIR=/nonexistent is not the host's source",
    );
    assert_eq!(tree(dir.path()), before, "a refusal left files behind");
}

// Outside the host's workspace a crate of its own may take the name of a workspace member
// (`examples/chat`, `plugins/http`): it is written and built elsewhere, so nothing clashes.
#[test]
fn outside_the_workspace_a_members_name_is_free() {
    let dir = TempDir::new();
    for name in ["chat", "http"] {
        let out = plugin_new(dir.path(), &[name], None);
        assert!(out.ok, "{name}: {}", out.stderr);
        let manifest = std::fs::read_to_string(dir.join(name).join("Cargo.toml")).unwrap();
        assert_contains!(manifest, format!("name = \"{name}\""));
    }
    // Its own directory still clashes.
    refused(&plugin_new(dir.path(), &["chat"], None), &format!("{} already exists", dir.join("chat").display()));
}

// Without the host's source, a standalone crate depends on the published `plugin-api` this host
// speaks; `--dir` creates the directories it needs.
#[test]
fn without_the_source_a_plugin_depends_on_the_published_api() {
    let dir = TempDir::new();
    let out = plugin_new(dir.path(), &["lone", "--dir", "a/b", "--protocol", "frame"], Some(""));
    assert!(out.ok, "{}", out.stderr);
    let manifest = std::fs::read_to_string(dir.join("a/b/lone/Cargo.toml")).unwrap();
    let api: toml::Table = std::fs::read_to_string(workspace().join("plugin-api/Cargo.toml")).unwrap().parse().unwrap();
    let version = api["package"]["version"].as_str().unwrap();
    assert_contains!(manifest, format!("plugin-api = \"{version}\"\n"));
    let lib = std::fs::read_to_string(dir.join("a/b/lone/src/lib.rs")).unwrap();
    assert_contains!(lib, "pub fn frame(buf: &[u8]) -> Frame {");
    assert_contains!(lib, "export_plugin!(Lone);");
}

// Inside a host workspace (a copy of its manifest, not the real one): `plugins/NAME`, listed in
// `members` and `default-members`, the rest of the manifest as it was.
#[test]
fn inside_the_workspace_a_plugin_becomes_a_member() {
    let dir = TempDir::new();
    let manifest = std::fs::read_to_string(workspace().join("Cargo.toml")).unwrap();
    dir.write("Cargo.toml", &manifest);
    dir.write("plugins/http/Cargo.toml", "[package]\nname = \"host-plugin-http\"\n\n[lib]\nname = \"http\"\n");
    let out = plugin_new(&dir.join("plugins/http"), &["chat-room", "--protocol", "websocket"], None);
    assert!(out.ok, "{}", out.stderr);
    assert_contains!(out.stdout, "cargo build -p chat-room");
    assert_contains!(out.stdout, "--plugin chat_room");
    let member = std::fs::read_to_string(dir.join("plugins/chat-room/Cargo.toml")).unwrap();
    assert_contains!(member, "plugin-api.workspace = true\nwebsocket-core = { path = \"../websocket/core\" }\n");
    assert_contains!(member, "version.workspace = true\nedition.workspace = true\n");
    assert_contains!(member, "[lints]\nworkspace = true\n");
    let edited = std::fs::read_to_string(dir.join("Cargo.toml")).unwrap();
    let entry = "    \"plugins/chat-room\",\n";
    assert_eq!(edited.matches(entry).count(), 2, "{edited}");
    assert_eq!(edited.replace(entry, ""), manifest, "only the two lines were added");
    // A member's name is taken; nothing more is written.
    refused(&plugin_new(dir.path(), &["http"], None), "plugins/http already exists");
    refused(&plugin_new(dir.path(), &["host-plugin-http"], None), "the name `host-plugin-http` is already used by");
    assert_eq!(std::fs::read_to_string(dir.join("Cargo.toml")).unwrap(), edited);
}
