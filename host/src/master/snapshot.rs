//! Plugin snapshots. Workers never map a file in `plugins/`: the master checks the file, copies
//! it once into a sealed memfd (`sys::sealed_memfd`), probes that in a throwaway process, and
//! hands the same memfd to every worker of the service as an inherited descriptor; the worker
//! loads it through `/proc/self/fd/N`. Overwriting the original (even with `cp`, which truncates
//! it in place) then cannot touch pages a worker has mapped (docs/architecture.md: the reload pipeline, pitfalls 1 and 2).
//!
//! The kernel counts the references: the master's `OwnedFd` (shared as `Rc<Snapshot>`) and each
//! worker's mapping. Nothing is written to disk, nothing needs deleting, a worker that switched
//! user needs no permission on any path, and each snapshot is an inode of its own (dlopen
//! matches libraries by inode: pitfall 2).

use std::fs;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use std::time::Duration;

use super::spawn::{probe_plugin, ProbeAs, Running};
use super::trust;
use crate::sys;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("could not read plugin {path}: {cause}")]
    Read { path: PathBuf, cause: io::Error },
    #[error("plugin {path} is not a complete ELF file: {reason}")]
    NotElf { path: PathBuf, reason: String },
    #[error("could not copy plugin {path} to memory: {cause}")]
    Copy { path: PathBuf, cause: io::Error },
    /// The probe refused the file; the reason names the file the user gave, not our copy.
    #[error("{reason}")]
    Probe { reason: String },
    #[error(transparent)]
    Untrusted(#[from] trust::TrustError),
    #[error("plugin {path} calls itself `{found}`, but the service expects `{expected}`")]
    WrongName { path: PathBuf, found: String, expected: String },
}

/// A checked private copy of a plugin file: a sealed memfd (`/memfd:NAME-HASH.so`).
#[derive(Debug)]
pub struct Snapshot {
    /// The copy workers load; closed when the last `Rc` of the master drops it.
    memfd: OwnedFd,
    /// The file it was copied from.
    pub source: PathBuf,
    /// FNV-1a of the contents, shown in logs and status.
    pub hash: u64,
    pub name: String,
    pub version: String,
}

impl Snapshot {
    pub fn short_hash(&self) -> String {
        format!("{:016x}", self.hash)[..12].to_string()
    }

    /// A snapshot of no real file (its memfd is empty), for unit tests of the master's logic.
    #[cfg(test)]
    pub fn fake(name: &str, hash: u64) -> Self {
        let memfd = OwnedFd::from(fs::File::open("/dev/null").expect("/dev/null"));
        Snapshot {
            memfd,
            source: PathBuf::from(format!("/plugins/lib{name}.so")),
            hash,
            name: name.to_string(),
            version: "0.1.0".to_string(),
        }
    }

    /// A snapshot the master's previous image handed over (a binary upgrade): its memfd and what
    /// that image knew of it.
    pub fn adopt(memfd: OwnedFd, source: PathBuf, hash: u64, name: String, version: String) -> Self {
        Snapshot { memfd, source, hash, name, version }
    }

    /// The memfd to hand to a worker.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.memfd.as_fd()
    }
}

/// How candidate files are checked.
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// The probe runs as the service's user and group.
    pub probe_as: ProbeAs,
    /// A probe that has not answered by then is killed and the file refused.
    pub probe_timeout: Duration,
    /// Load files that anyone but their owner may write, or that a stranger owns.
    pub insecure: bool,
}

/// Checks `source`, copies it into a sealed memfd and probes that. `expected_name`: the name the
/// plugin must report (None when the service named it by path). `running` holds the probe's pid
/// while it runs (see [`Running`]).
pub fn take(
    source: &Path,
    expected_name: Option<&str>,
    options: &CheckOptions,
    running: &Running,
) -> Result<Snapshot, SnapshotError> {
    let (memfd, hash) = copy_checked(source, options.insecure)?;
    let report = probe_plugin(memfd.as_fd(), source, &options.probe_as, options.probe_timeout, running)
        .map_err(|e| SnapshotError::Probe { reason: e.to_string() })?;
    let mut words = report.summary.split_whitespace();
    let name = words.next().unwrap_or_default().to_string();
    let version = words.next().unwrap_or_default().to_string();
    if let Some(expected) = expected_name {
        if name != expected {
            return Err(SnapshotError::WrongName {
                path: source.to_path_buf(),
                found: name,
                expected: expected.to_string(),
            });
        }
    }
    Ok(Snapshot { memfd, source: source.to_path_buf(), hash, name, version })
}

/// Opens `source` once through the trust check ([`trust::open`]), checks it is a complete ELF
/// file and copies it into a sealed memfd, all from that one descriptor: the bytes copied are
/// those of the inode judged, whatever happens to the path meanwhile. Returns the memfd and the
/// contents' hash.
fn copy_checked(source: &Path, insecure: bool) -> Result<(OwnedFd, u64), SnapshotError> {
    let file = trust::open(source, insecure)?;
    // Streamed, never read whole: a 12 MB debug plugin must not leave 12 MB of heap in the
    // master after every check.
    let read_err = |e| SnapshotError::Read { path: source.to_path_buf(), cause: e };
    let mut file = Hashing { inner: file, hash: Fnv1a::default() };
    let (hash, size, header) = hash_all(&mut file).map_err(read_err)?;
    elf_complete(&header, size).map_err(|reason| SnapshotError::NotElf { path: source.to_path_buf(), reason })?;
    io::Seek::rewind(&mut file.inner).map_err(read_err)?;
    file.hash = Fnv1a::default();
    let copy_err = |e| SnapshotError::Copy { path: source.to_path_buf(), cause: e };
    let memfd = sys::sealed_memfd(&memfd_name(source, hash), &mut file).map_err(copy_err)?;
    if file.hash.0 != hash {
        // Written to (by its owner) between the two reads: the watcher reports it again once
        // it is quiet.
        let reason = "it changed while it was copied".to_string();
        return Err(SnapshotError::NotElf { path: source.to_path_buf(), reason });
    }
    Ok((memfd, hash))
}

/// `http-<hash>.so` for `libhttp.so` or `http.so`: what `/proc/PID/maps` of a worker shows.
fn memfd_name(source: &Path, hash: u64) -> String {
    let stem = source.file_stem().and_then(|s| s.to_str()).unwrap_or("plugin");
    let stem = stem.strip_prefix("lib").filter(|s| !s.is_empty()).unwrap_or(stem);
    // A memfd name has at most 249 bytes.
    let stem: String = stem.chars().take(200).collect();
    format!("{stem}-{hash:016x}.so")
}

/// 64-bit FNV-1a: enough to tell plugin builds apart and to name snapshots.
#[cfg(test)]
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h = Fnv1a::default();
    h.update(bytes);
    h.0
}

/// The FNV-1a hash, the size and the first 64 bytes of what `file` reads, read in pieces.
fn hash_all(file: &mut Hashing<fs::File>) -> io::Result<(u64, u64, Vec<u8>)> {
    let mut header = [0u8; 64];
    let mut got = 0;
    while got < header.len() {
        match io::Read::read(file, &mut header[got..])? {
            0 => break,
            n => got += n,
        }
    }
    let size = got as u64 + io::copy(file, &mut io::sink())?;
    Ok((file.hash.0, size, header[..got].to_vec()))
}

/// A reader that hashes what it reads.
struct Hashing<R> {
    inner: R,
    hash: Fnv1a,
}

impl<R: io::Read> io::Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
}

/// 64-bit FNV-1a, fed in pieces.
#[derive(Debug, Clone, Copy)]
pub struct Fnv1a(pub u64);

impl Default for Fnv1a {
    fn default() -> Self {
        Fnv1a(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv1a {
    pub fn update(&mut self, bytes: &[u8]) {
        self.0 = bytes.iter().fold(self.0, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3));
    }
}

/// Checks that a file of `size` bytes whose first bytes are `header` is an ELF file whose
/// section header table ends inside the file: a file still being written (or truncated) fails
/// this; loading one can kill the loader with SIGBUS.
pub fn elf_complete(header: &[u8], size: u64) -> Result<(), String> {
    let bytes = header;
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" {
        return Err("no ELF header".into());
    }
    let le = match bytes[5] {
        1 => true,
        2 => false,
        _ => return Err("unknown byte order".into()),
    };
    let u16_at = |o: usize| {
        let b = [bytes[o], bytes[o + 1]];
        u64::from(if le { u16::from_le_bytes(b) } else { u16::from_be_bytes(b) })
    };
    let (shoff, shentsize, shnum) = match bytes[4] {
        1 => {
            let b = [bytes[0x20], bytes[0x21], bytes[0x22], bytes[0x23]];
            (u64::from(if le { u32::from_le_bytes(b) } else { u32::from_be_bytes(b) }), u16_at(0x2e), u16_at(0x30))
        }
        2 => {
            let b: [u8; 8] = bytes[0x28..0x30].try_into().expect("8 bytes");
            (if le { u64::from_le_bytes(b) } else { u64::from_be_bytes(b) }, u16_at(0x3a), u16_at(0x3c))
        }
        _ => return Err("unknown ELF class".into()),
    };
    if shoff == 0 || shnum == 0 {
        return Err("no section header table (still being written?)".into());
    }
    let end = shoff.saturating_add(shnum.saturating_mul(shentsize));
    if end > size {
        return Err(format!("truncated: section headers end at byte {end}, the file has {size}"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The smallest 64-bit little-endian ELF header with a section table at `shoff`.
    fn elf(shoff: u64, shnum: u16, size: usize) -> Vec<u8> {
        let mut b = vec![0u8; size];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[0x28..0x30].copy_from_slice(&shoff.to_le_bytes());
        b[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        b[0x3c..0x3e].copy_from_slice(&shnum.to_le_bytes());
        b
    }

    #[test]
    fn complete_elf_passes_truncated_fails() {
        let check = |b: &[u8]| elf_complete(&b[..b.len().min(64)], b.len() as u64);
        assert!(check(&elf(1000, 4, 1256)).is_ok());
        let err = check(&elf(1000, 4, 1200)).unwrap_err();
        assert!(err.contains("truncated"), "{err}");
        assert!(check(&elf(0, 0, 100)).is_err());
        assert!(check(b"not an elf file at all, just some text that is long enough......").is_err());
        assert!(check(b"\x7fELF").is_err());
    }

    #[test]
    fn the_real_host_binary_is_complete() {
        let exe = fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(elf_complete(&exe[..64], exe.len() as u64).is_ok());
        assert!(elf_complete(&exe[..64], exe.len() as u64 - 1).is_err());
    }

    #[test]
    fn hash_tells_contents_apart() {
        assert_ne!(fnv1a(b"a"), fnv1a(b"b"));
        assert_eq!(fnv1a(b"plugin"), fnv1a(b"plugin"));
    }

    #[test]
    fn the_snapshot_holds_the_bytes_of_the_file_checked() {
        use std::io::Read;
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("host-snapshot-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
        let plugin = dir.join("libx.so");
        let bytes = elf(1000, 4, 1256);
        fs::write(&plugin, &bytes).unwrap();
        let (memfd, hash) = copy_checked(&plugin, false).unwrap();
        assert_eq!(hash, fnv1a(&bytes));
        let mut copied = Vec::new();
        fs::File::open(sys::proc_fd_path(memfd.as_fd())).unwrap().read_to_end(&mut copied).unwrap();
        assert_eq!(copied, bytes);
        // Not an ELF file, or one its directory makes untrusted: nothing is copied.
        fs::write(&plugin, b"text").unwrap();
        assert!(matches!(copy_checked(&plugin, false), Err(SnapshotError::NotElf { .. })));
        fs::write(&plugin, &bytes).unwrap();
        fs::set_permissions(&dir, fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(copy_checked(&plugin, false), Err(SnapshotError::Untrusted(_))));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn memfd_names_drop_the_lib_prefix() {
        assert_eq!(memfd_name(Path::new("/x/libhttp.so"), 0xab), "http-00000000000000ab.so");
        assert_eq!(memfd_name(Path::new("/x/text.so"), 1), "text-0000000000000001.so");
        assert_eq!(memfd_name(Path::new("/x/lib.so"), 1), "lib-0000000000000001.so");
    }
}
