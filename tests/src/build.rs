//! Building the workspace once per test process and finding what it built.
//!
//! Under `cargo nextest run` every test is a process of its own, so each one asks cargo; after the
//! first it is a no-op that takes a fraction of a second. The profile is the tests' own: a test
//! binary in `target/debug/deps/` builds and runs `target/debug/host`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The profile directory the running test binary lives in (`target/debug`), which is where the
/// host binary and the plugins are built. This follows `CARGO_TARGET_DIR` and `--target-dir`
/// by construction.
pub fn target_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let exe = std::env::current_exe().expect("the test binary's path");
        let dir = exe.parent().expect("the test binary's directory");
        // target/debug/deps/integration-xxxx → target/debug
        let dir = if dir.file_name().is_some_and(|n| n == "deps") {
            dir.parent().expect("the profile directory")
        } else {
            dir
        };
        dir.to_path_buf()
    })
}

/// Builds the workspace (once per process) and panics with cargo's output when it fails.
pub fn build() {
    static BUILT: OnceLock<Result<(), String>> = OnceLock::new();
    if let Err(e) = BUILT.get_or_init(run_cargo_build) {
        panic!("{e}");
    }
}

fn run_cargo_build() -> Result<(), String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let profile_dir = target_dir();
    let target = profile_dir.parent().ok_or("the test binary is not under a target directory")?;
    let mut cmd = Command::new(&cargo);
    cmd.arg("build").arg("--workspace").arg("--manifest-path").arg(&manifest).arg("--target-dir").arg(target);
    match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => {}
        Some("release") => {
            cmd.arg("--release");
        }
        Some(other) => {
            cmd.arg("--profile").arg(other);
        }
    }
    let out = cmd.output().map_err(|e| format!("could not run {cargo:?} build: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`cargo build --workspace` failed ({}), so the host cannot be tested:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(())
}

/// The host binary, freshly built.
pub fn host_bin() -> PathBuf {
    build();
    let bin = target_dir().join("host");
    assert!(bin.is_file(), "no host binary at {}", bin.display());
    bin
}

/// The worker binary built beside the host binary (`host-worker`).
pub fn host_worker_bin() -> PathBuf {
    build();
    let bin = target_dir().join("host-worker");
    assert!(bin.is_file(), "no host-worker binary at {}", bin.display());
    bin
}

/// A plugin built by the workspace, by library name: `http` → `target/debug/libhttp.so`; a test
/// fixture (`fixture_…`) from [`fixtures_dir`].
pub fn plugin_file(lib: &str) -> PathBuf {
    let dir = if lib.starts_with("fixture_") {
        fixtures_dir()
    } else {
        build();
        target_dir().to_path_buf()
    };
    let path = dir.join(format!("lib{lib}.so"));
    assert!(path.is_file(), "no plugin at {}", path.display());
    path
}

/// Where the test fixtures (`tests/fixtures/`: plugins that panic, crash, load slowly… a cargo
/// workspace of their own) are built, once per test process: `<target>/fixtures/<profile>/`,
/// never beside the host binary, which is the host's default plugin directory.
pub fn fixtures_dir() -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BUILT.get_or_init(build_fixtures) {
        Ok(path) => path.clone(),
        Err(e) => panic!("{e}"),
    }
}

fn build_fixtures() -> Result<PathBuf, String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/Cargo.toml");
    let profile_dir = target_dir();
    let target = profile_dir.parent().ok_or("the test binary is not under a target directory")?.join("fixtures");
    let mut cmd = Command::new(&cargo);
    cmd.arg("build").arg("--quiet").arg("--manifest-path").arg(&manifest).arg("--target-dir").arg(&target);
    let profile = profile_dir.file_name().and_then(|n| n.to_str()).unwrap_or("debug");
    match profile {
        "debug" => {}
        "release" => {
            cmd.arg("--release");
        }
        other => {
            cmd.arg("--profile").arg(other);
        }
    }
    let out = cmd.output().map_err(|e| format!("could not run {cargo:?} build for the test fixtures: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "building the test fixtures ({}) failed ({}):\n{}",
            manifest.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(target.join(profile))
}

/// The fixture plugin built against the frozen `plugin-api` 0.1.0 (`tests/fixtures/old_abi`, a
/// cargo workspace of its own), built once per test process into `<target>/old_abi`.
pub fn old_abi_plugin() -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BUILT.get_or_init(|| build_frozen("old_abi", "old_echo")) {
        Ok(path) => path.clone(),
        Err(e) => panic!("{e}"),
    }
}

/// The fixture plugin built against the frozen `plugin-api` 0.1.1
/// (`tests/fixtures/old_abi_0_1_1`), built once per test process into `<target>/old_abi_0_1_1`.
pub fn abi_0_1_1_plugin() -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BUILT.get_or_init(|| build_frozen("old_abi_0_1_1", "v011_echo")) {
        Ok(path) => path.clone(),
        Err(e) => panic!("{e}"),
    }
}

/// The fixture plugin built against the frozen `plugin-api` 0.1.2
/// (`tests/fixtures/old_abi_0_1_2`), built once per test process into `<target>/old_abi_0_1_2`.
pub fn abi_0_1_2_plugin() -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BUILT.get_or_init(|| build_frozen("old_abi_0_1_2", "v012_echo")) {
        Ok(path) => path.clone(),
        Err(e) => panic!("{e}"),
    }
}

/// The fixture plugin built against the frozen `plugin-api` 0.1.3
/// (`tests/fixtures/old_abi_0_1_3`), built once per test process into `<target>/old_abi_0_1_3`.
pub fn abi_0_1_3_plugin() -> PathBuf {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BUILT.get_or_init(|| build_frozen("old_abi_0_1_3", "v013_echo")) {
        Ok(path) => path.clone(),
        Err(e) => panic!("{e}"),
    }
}

/// Builds the frozen-release workspace `tests/fixtures/<dir>` into `<target>/<dir>` and returns
/// its plugin `lib<lib>.so`.
fn build_frozen(dir: &str, lib: &str) -> Result<PathBuf, String> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures").join(dir).join("Cargo.toml");
    let target = target_dir().parent().ok_or("the test binary is not under a target directory")?.join(dir);
    let out = Command::new(&cargo)
        .arg("build")
        .arg("--quiet")
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target)
        .output()
        .map_err(|e| format!("could not run {cargo:?} build for the frozen-ABI fixture {dir}: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "building the frozen-ABI fixture ({}) failed ({}), so the host cannot be tested against it:\n{}",
            manifest.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let path = target.join(format!("debug/lib{lib}.so"));
    if !path.is_file() {
        return Err(format!("the frozen-ABI fixture built, but there is no {}", path.display()));
    }
    Ok(path)
}
