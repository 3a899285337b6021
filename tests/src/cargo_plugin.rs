//! A plugin crate written and built by a test at run time, as a developer would: a standalone
//! cargo package (its own `[workspace]`, so not part of this one) that depends on this
//! workspace's `plugin-api` by path, with a copy of the workspace's `Cargo.lock` (the same
//! dependency versions), built with `CARGO_TARGET_DIR` set to the workspace's target dir: the
//! compiled dependencies are reused, and the `.so` lands beside the host binary (`target/debug`,
//! one of the host's default plugin directories). Nothing of the workspace's own packages is
//! rebuilt or touched; the package's artifacts are removed from the target dir on drop.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::{killpg, Signal};
use nix::unistd::Pid;

use crate::{poll_until, target_dir, TempDir};

/// A generated plugin package.
#[derive(Debug)]
pub struct CargoPlugin {
    dir: TempDir,
    /// The library name (`hotswap_fixture_1234_0`), also the plugin's name.
    lib: String,
}

impl CargoPlugin {
    /// Writes a package for a plugin called `PREFIX_PID_N` (unique per test, so that two test
    /// runs sharing the target dir never load each other's builds) with `lib_rs` as its source.
    pub fn new(prefix: &str, lib_rs: &str) -> CargoPlugin {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let lib = format!("{prefix}_{}_{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed));
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the workspace directory");
        let plugin_api = workspace.join("plugin-api");
        let manifest = format!(
            r#"[package]
name = "{package}"
version = "0.1.0"
edition = "2021"
publish = false

# A workspace of its own: not a member of host's workspace.
[workspace]

[lib]
name = "{lib}"
crate-type = ["cdylib"]
path = "src/lib.rs"

[dependencies]
plugin-api = {{ path = {plugin_api:?} }}
"#,
            package = lib.replace('_', "-"),
            plugin_api = plugin_api.display().to_string(),
        );
        let dir = TempDir::new();
        dir.write("Cargo.toml", manifest);
        let lock = workspace.join("Cargo.lock");
        std::fs::copy(&lock, dir.join("Cargo.lock"))
            .unwrap_or_else(|e| panic!("could not copy {}: {e}", lock.display()));
        let plugin = CargoPlugin { dir, lib };
        plugin.write_source(lib_rs);
        plugin
    }

    /// The plugin's name (`--plugin NAME`).
    pub fn name(&self) -> &str {
        &self.lib
    }

    /// Replaces `src/lib.rs`, as an editor does.
    pub fn write_source(&self, lib_rs: &str) {
        self.dir.write("src/lib.rs", lib_rs);
    }

    /// Where cargo puts the plugin: `lib<name>.so` beside the host binary.
    pub fn artifact(&self) -> PathBuf {
        target_dir().join(format!("lib{}.so", self.lib))
    }

    /// Runs `cargo build` on the package (the test binary's profile, `--offline`: every
    /// dependency is already in cargo's cache since the workspace was built). Returns how long it
    /// took, or Err with cargo's output when it failed or ran past `timeout` (then it is killed).
    pub fn build(&self, timeout: Duration) -> Result<Duration, String> {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let profile_dir = target_dir();
        let target = profile_dir.parent().ok_or("the test binary is not under a target directory")?;
        let mut cmd = Command::new(&cargo);
        cmd.arg("build").arg("--offline").arg("--manifest-path").arg(self.dir.join("Cargo.toml"));
        match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") => {}
            Some("release") => {
                cmd.arg("--release");
            }
            other => return Err(format!("profile {other:?}: only debug and release are supported here")),
        }
        cmd.current_dir(self.dir.path())
            .env("CARGO_TARGET_DIR", target)
            .env_remove("CARGO_BUILD_TARGET_DIR")
            // No incremental cache to leave behind in the shared target dir.
            .env("CARGO_INCREMENTAL", "0")
            .env("CARGO_TERM_COLOR", "never")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            // Its own process group, so a build past its deadline is killed with its rustc children.
            .process_group(0);
        let started = Instant::now();
        let mut child = cmd.spawn().map_err(|e| format!("could not run {cargo:?}: {e}"))?;
        let mut stderr = child.stderr.take().expect("piped stderr");
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stderr.read_to_string(&mut text);
            text
        });
        let status = poll_until(timeout, || child.try_wait().ok().flatten());
        let took = started.elapsed();
        let Some(status) = status else {
            let _ = killpg(Pid::from_raw(child.id() as i32), Signal::SIGKILL);
            let _ = child.wait();
            return Err(format!(
                "cargo build did not finish within {timeout:?}:\n{}",
                reader.join().unwrap_or_default()
            ));
        };
        let output = reader.join().unwrap_or_default();
        if !status.success() {
            return Err(format!("cargo build failed ({status}):\n{output}"));
        }
        Ok(took)
    }
}

impl Drop for CargoPlugin {
    fn drop(&mut self) {
        // What cargo left in the shared target dir for this package, and only that.
        let profile = target_dir();
        let lib = &self.lib;
        for file in [
            profile.join(format!("lib{lib}.so")),
            profile.join(format!("lib{lib}.d")),
            profile.join("deps").join(format!("lib{lib}.so")),
            profile.join("deps").join(format!("{lib}.d")),
        ] {
            let _ = std::fs::remove_file(file);
        }
        let fingerprint_prefix = format!("{}-", lib.replace('_', "-"));
        if let Ok(entries) = std::fs::read_dir(profile.join(".fingerprint")) {
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with(&fingerprint_prefix) {
                    let _ = std::fs::remove_dir_all(entry.path());
                }
            }
        }
    }
}
