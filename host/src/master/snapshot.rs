//! Plugin snapshots. Workers never map a file in `plugins/`: the master checks the file, copies
//! it to a private content-named path in its runtime directory, probes the copy in a throwaway
//! process, and workers load the copy. Overwriting the original (even with `cp`, which truncates
//! it in place) then cannot touch pages a worker has mapped. DESIGN.md sections 3 and 6.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use super::spawn::probe_plugin;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("could not read plugin {path}: {cause}")]
    Read { path: PathBuf, cause: io::Error },
    #[error("plugin {path} is not a complete ELF file: {reason}")]
    NotElf { path: PathBuf, reason: String },
    #[error("could not copy plugin {path} to the runtime directory: {cause}")]
    Copy { path: PathBuf, cause: io::Error },
    /// The probe refused the file; the reason names the file the user gave, not our copy.
    #[error("{reason}")]
    Probe { reason: String },
    #[error("plugin {path} calls itself `{found}`, but the service expects `{expected}`")]
    WrongName { path: PathBuf, found: String, expected: String },
}

/// How long a snapshot nobody uses is kept: a check under way may be about to hand it out.
const SNAPSHOT_GRACE: std::time::Duration = std::time::Duration::from_secs(30);

/// A checked private copy of a plugin file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// The file in the runtime directory workers load.
    pub path: PathBuf,
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

    /// A snapshot that names no file, for unit tests of the master's logic.
    #[cfg(test)]
    pub fn fake(name: &str, hash: u64) -> Self {
        Snapshot {
            path: PathBuf::from(format!("/nonexistent/{name}-{hash:016x}.so")),
            source: PathBuf::from(format!("/plugins/lib{name}.so")),
            hash,
            name: name.to_string(),
            version: "0.1.0".to_string(),
        }
    }
}

/// A directory only the master's user can enter, removed when the master exits.
#[derive(Debug)]
pub struct RuntimeDir {
    pub path: PathBuf,
}

impl RuntimeDir {
    pub fn create() -> io::Result<Self> {
        let base = std::env::var_os("XDG_RUNTIME_DIR")
            .map(PathBuf::from)
            .filter(|p| p.is_dir())
            .unwrap_or_else(std::env::temp_dir);
        let path = base.join(format!("host-{}", std::process::id()));
        if path.exists() {
            // A previous master with our pid (pids are reused) left it behind.
            fs::remove_dir_all(&path)?;
        }
        // Others may enter (workers that switched user load snapshots from here) but not list;
        // only the master can write.
        fs::DirBuilder::new().mode(0o711).create(&path)?;
        Ok(RuntimeDir { path })
    }

    /// Removes snapshots that none of `in_use` names, but for the youngest: a check under way
    /// (see `prepare`) may have just written one.
    pub fn remove_unused(&self, in_use: &[&Path]) {
        let Ok(entries) = fs::read_dir(&self.path) else {
            return;
        };
        let fresh = |e: &fs::DirEntry| {
            e.metadata().and_then(|m| m.modified()).is_ok_and(|t| t.elapsed().is_ok_and(|age| age < SNAPSHOT_GRACE))
        };
        for entry in entries.flatten() {
            let p = entry.path();
            if p.extension().is_some_and(|e| e == "so") && !in_use.contains(&p.as_path()) && !fresh(&entry) {
                match fs::remove_file(&p) {
                    Ok(()) => tracing::debug!(path = %p.display(), "snapshot removed"),
                    Err(e) => {
                        tracing::warn!(path = %p.display(), "could not remove a snapshot: {e}")
                    }
                }
            }
        }
    }
}

impl Drop for RuntimeDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Checks `source`, copies it into `dir` and probes the copy. `expected_name`: the name the
/// plugin must report (None when the service named it by path).
pub fn take(source: &Path, dir: &Path, expected_name: Option<&str>) -> Result<Snapshot, SnapshotError> {
    let bytes = fs::read(source).map_err(|e| SnapshotError::Read { path: source.to_path_buf(), cause: e })?;
    elf_complete(&bytes).map_err(|reason| SnapshotError::NotElf { path: source.to_path_buf(), reason })?;
    let hash = fnv1a(&bytes);
    let stem = source.file_stem().and_then(|s| s.to_str()).unwrap_or("plugin");
    let path = dir.join(format!("{stem}-{hash:016x}.so"));
    if !path.exists() {
        write_new(&path, &bytes).map_err(|e| SnapshotError::Copy { path: source.to_path_buf(), cause: e })?;
    }
    let report = match probe_plugin(&path) {
        Ok(r) => r,
        Err(e) => {
            let _ = fs::remove_file(&path);
            let reason = e.to_string().replace(&path.display().to_string(), &source.display().to_string());
            return Err(SnapshotError::Probe { reason });
        }
    };
    let mut words = report.summary.split_whitespace();
    let name = words.next().unwrap_or_default().to_string();
    let version = words.next().unwrap_or_default().to_string();
    if let Some(expected) = expected_name {
        if name != expected {
            let _ = fs::remove_file(&path);
            return Err(SnapshotError::WrongName {
                path: source.to_path_buf(),
                found: name,
                expected: expected.to_string(),
            });
        }
    }
    Ok(Snapshot { path, source: source.to_path_buf(), hash, name, version })
}

/// Writes a new file under a temporary name and renames it into place, so a reader never sees
/// it half-written. A copy, never a hard link: dlopen matches libraries by inode (pitfall 2).
fn write_new(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("so.tmp");
    let mut f = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o444).open(&tmp)?;
    // No fsync: the copy only has to outlive this master, and the rename makes it whole for
    // every reader; the page cache serves it to the workers either way.
    f.write_all(bytes)?;
    fs::rename(&tmp, path)
}

/// 64-bit FNV-1a: enough to tell plugin builds apart and to name snapshots.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

/// Checks that `bytes` is an ELF file whose section header table ends inside the file: a file
/// still being written (or truncated) fails this; loading one can kill the loader with SIGBUS.
pub fn elf_complete(bytes: &[u8]) -> Result<(), String> {
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
    let size = bytes.len() as u64;
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
        assert!(elf_complete(&elf(1000, 4, 1256)).is_ok());
        let err = elf_complete(&elf(1000, 4, 1200)).unwrap_err();
        assert!(err.contains("truncated"), "{err}");
        assert!(elf_complete(&elf(0, 0, 100)).is_err());
        assert!(elf_complete(b"not an elf file at all, just some text that is long enough......").is_err());
        assert!(elf_complete(b"\x7fELF").is_err());
    }

    #[test]
    fn the_real_host_binary_is_complete() {
        let exe = fs::read(std::env::current_exe().unwrap()).unwrap();
        assert!(elf_complete(&exe).is_ok());
        assert!(elf_complete(&exe[..exe.len() - 1]).is_err());
    }

    #[test]
    fn hash_tells_contents_apart() {
        assert_ne!(fnv1a(b"a"), fnv1a(b"b"));
        assert_eq!(fnv1a(b"plugin"), fnv1a(b"plugin"));
    }

    #[test]
    fn runtime_dir_is_owner_writable_and_removed() {
        use std::os::unix::fs::PermissionsExt;
        let dir = RuntimeDir::create().unwrap();
        let path = dir.path.clone();
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o711);
        fs::write(path.join("a.so"), b"x").unwrap();
        fs::write(path.join("b.so"), b"x").unwrap();
        fs::write(path.join("new.so"), b"x").unwrap();
        let old = std::time::SystemTime::now() - SNAPSHOT_GRACE * 2;
        for name in ["a.so", "b.so"] {
            fs::File::options().write(true).open(path.join(name)).unwrap().set_modified(old).unwrap();
        }
        dir.remove_unused(&[path.join("a.so").as_path()]);
        assert!(path.join("a.so").exists(), "in use");
        assert!(!path.join("b.so").exists(), "unused and old");
        assert!(path.join("new.so").exists(), "unused but maybe just made by a check under way");
        drop(dir);
        assert!(!path.exists());
    }
}
