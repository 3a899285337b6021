//! Helpers of the http tests that use real clients (curl, python `requests`, headless Chromium):
//! running a program with a deadline, and small media files made on the spot.

use std::io::Read;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use host_tests::TempDir;

/// What a program printed and how it ended.
#[derive(Debug)]
pub struct Ran {
    pub success: bool,
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl Ran {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
}

/// Runs `cmd` (stdin closed, in its own process group) and kills its group if it is still
/// running after `timeout`. Panics when the program cannot be started.
pub fn run(cmd: &mut Command, timeout: Duration) -> Ran {
    use std::os::unix::process::CommandExt;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .unwrap_or_else(|e| panic!("could not run {cmd:?}: {e}"));
    let mut out = child.stdout.take().expect("piped");
    let mut err = child.stderr.take().expect("piped");
    let reader = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        s
    });
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait") {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
            let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stdout = reader.join().unwrap_or_default();
    let stderr = err_reader.join().unwrap_or_default();
    assert!(status.is_some(), "{cmd:?} did not finish within {timeout:?}\nstderr:\n{stderr}");
    Ran { success: status.is_some_and(|s| s.success()), stdout, stderr }
}

/// `curl ARGS…` (silent, errors shown), bounded.
pub fn curl(args: &[&str]) -> Ran {
    let ran = run(Command::new("curl").args(["-sS", "--max-time", "20"]).args(args), Duration::from_secs(30));
    assert!(ran.success, "curl {args:?} failed: {}", ran.stderr);
    ran
}

/// `python3 -c SCRIPT ARGS…`, bounded; panics with its output when it fails.
pub fn python(script: &str, args: &[&str]) -> String {
    let ran = run(Command::new("python3").arg("-c").arg(script).args(args), Duration::from_secs(30));
    assert!(ran.success, "python failed:\n{}\n{}", ran.text(), ran.stderr);
    ran.text()
}

/// The DOM of `url` after headless Chromium ran its scripts (a fresh profile, no sandbox: tests
/// run as root; at most 10 s of the page's virtual time, 60 s of real time).
pub fn chromium_dom(url: &str) -> String {
    chromium_dom_with(url, &[])
}

/// [`chromium_dom`] with more command-line switches.
pub fn chromium_dom_with(url: &str, switches: &[&str]) -> String {
    let profile = TempDir::new();
    let ran = run(
        Command::new("chromium")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--disable-dev-shm-usage",
                "--mute-audio",
                &format!("--user-data-dir={}", profile.path().display()),
                "--virtual-time-budget=10000",
                "--dump-dom",
            ])
            .args(switches)
            .arg(url),
        Duration::from_secs(60),
    );
    assert!(ran.success, "chromium failed: {}", ran.stderr);
    ran.text()
}

/// A mono 16-bit PCM WAV file of `seconds` at 8 kHz (a 440 Hz tone).
pub fn wav(seconds: u32) -> Vec<u8> {
    let rate = 8000u32;
    let samples = rate * seconds;
    let data_len = samples * 2;
    let mut v = Vec::with_capacity(44 + data_len as usize);
    v.extend_from_slice(b"RIFF");
    v.extend_from_slice(&(36 + data_len).to_le_bytes());
    v.extend_from_slice(b"WAVEfmt ");
    v.extend_from_slice(&16u32.to_le_bytes());
    v.extend_from_slice(&1u16.to_le_bytes()); // PCM
    v.extend_from_slice(&1u16.to_le_bytes()); // mono
    v.extend_from_slice(&rate.to_le_bytes());
    v.extend_from_slice(&(rate * 2).to_le_bytes()); // bytes per second
    v.extend_from_slice(&2u16.to_le_bytes()); // block align
    v.extend_from_slice(&16u16.to_le_bytes()); // bits per sample
    v.extend_from_slice(b"data");
    v.extend_from_slice(&data_len.to_le_bytes());
    for i in 0..samples {
        let s = (f64::from(i) * 2.0 * std::f64::consts::PI * 440.0 / f64::from(rate)).sin() * 8000.0;
        v.extend_from_slice(&(s as i16).to_le_bytes());
    }
    v
}

/// A `width`×`height` 24-bit BMP image, all blue.
pub fn bmp(width: u32, height: u32) -> Vec<u8> {
    let row = (width * 3).div_ceil(4) * 4;
    let size = row * height;
    let mut v = Vec::new();
    v.extend_from_slice(b"BM");
    v.extend_from_slice(&(54 + size).to_le_bytes());
    v.extend_from_slice(&0u32.to_le_bytes());
    v.extend_from_slice(&54u32.to_le_bytes());
    v.extend_from_slice(&40u32.to_le_bytes());
    v.extend_from_slice(&width.to_le_bytes());
    v.extend_from_slice(&height.to_le_bytes());
    v.extend_from_slice(&1u16.to_le_bytes());
    v.extend_from_slice(&24u16.to_le_bytes());
    v.extend_from_slice(&[0; 24]);
    for _ in 0..height {
        for _ in 0..width {
            v.extend_from_slice(&[255, 0, 0]);
        }
        v.extend(std::iter::repeat_n(0u8, (row - width * 3) as usize));
    }
    v
}

/// `len` bytes that differ at every offset for a long while (a range error shows).
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8 ^ (i / 251 % 256) as u8).collect()
}

/// The `root = "…"` config for `dir`, with `extra` lines.
pub fn root_config(dir: &Path, extra: &str) -> String {
    format!("root = {:?}\n{extra}", dir.display().to_string())
}
