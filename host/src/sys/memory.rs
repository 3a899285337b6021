//! What an idle worker gives back once it has started: the pages of code and read-only data its
//! start-up touched (loading the plugin, parsing its configuration, the TLS set-up) and the part
//! of the main thread's stack below where the event loop runs.
//!
//! A private file mapping that was never written holds nothing but the file's pages: unmapping
//! them (`MADV_DONTNEED`) leaves them in the page cache (or the plugin's sealed memfd), and the
//! next access maps them again with a minor fault, as after the kernel reclaimed them under
//! memory pressure, which it may do at any time. A mapping with any private copy of a page
//! (relocated data, `Anonymous` in `/proc/self/smaps`) is left alone: that copy would be lost.
//! Below the stack pointer nothing is live; the pages there come back zero-filled when the stack
//! grows into them again.

use std::io;

use nix::libc;

/// What is left mapped below the stack pointer: the frames of this module and of the C library's
/// `madvise`, and a signal handler's frame should one run meanwhile.
const STACK_MARGIN: usize = 16 * 1024;

/// What [`release_idle_pages`] unmapped.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Released {
    /// File mappings (code, read-only data) whose pages were unmapped.
    pub mappings: usize,
    /// Their resident size before, in KiB.
    pub mapped_kib: u64,
    /// The main thread's stack released below the stack pointer, in KiB (0 when not called on
    /// the main thread).
    pub stack_kib: u64,
}

/// Unmaps the resident pages of the process's clean private file mappings and of its main
/// thread's stack below the caller's frame (module documentation). Call it once the start-up is
/// done, on the main thread, from a shallow frame: the stack below it is given back.
pub fn release_idle_pages() -> io::Result<Released> {
    let smaps = std::fs::read_to_string("/proc/self/smaps")?;
    let marker = 0u8;
    let sp = std::hint::black_box(std::ptr::addr_of!(marker)) as usize;
    let mut released = Released::default();
    for range in clean_file_mappings(&smaps) {
        if dont_need(range.start, range.end).is_ok() {
            released.mappings += 1;
            released.mapped_kib += range.resident_kib;
        }
    }
    if let Some(stack) = stack_mapping(&smaps).filter(|s| (s.start..s.end).contains(&sp)) {
        let end = (sp & !(page_size() - 1)).saturating_sub(STACK_MARGIN);
        if end > stack.start {
            dont_need(stack.start, end)?;
            released.stack_kib = (end - stack.start) as u64 / 1024;
        }
    }
    Ok(released)
}

fn dont_need(start: usize, end: usize) -> io::Result<()> {
    // SAFETY: [start, end) is a whole-page range of this process's own mappings, read from
    // /proc/self/smaps just before: either a private file mapping that holds no private copy of a
    // page and is not writable (its pages are the file's, mapped again on the next access), or
    // the main thread's stack strictly below the caller's frame and STACK_MARGIN (nothing live
    // there). MADV_DONTNEED on such a range changes no value the program can read.
    unsafe { syscall!(madvise(start as *mut libc::c_void, end - start, libc::MADV_DONTNEED)) }.map(drop)
}

fn page_size() -> usize {
    // SAFETY: sysconf reads a constant of the system; it touches no memory of ours.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size).ok().filter(|s| s.is_power_of_two()).unwrap_or(4096)
}

/// One mapping of `/proc/self/smaps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mapping {
    pub start: usize,
    pub end: usize,
    pub resident_kib: u64,
}

/// The mappings of `smaps` whose pages are all the file's own: private, not writable, backed by
/// a file (an inode), resident, with no anonymous (copied-on-write) page and not locked.
pub(crate) fn clean_file_mappings(smaps: &str) -> Vec<Mapping> {
    parse(smaps)
        .filter(|v| v.private && !v.writable && v.inode != 0 && v.anonymous_kib == 0 && !v.locked)
        .filter(|v| v.resident_kib > 0)
        .map(|v| v.mapping)
        .collect()
}

/// The main thread's stack (`[stack]`).
pub(crate) fn stack_mapping(smaps: &str) -> Option<Mapping> {
    parse(smaps).find(|v| v.name == "[stack]").map(|v| v.mapping)
}

struct Vma<'a> {
    mapping: Mapping,
    name: &'a str,
    private: bool,
    writable: bool,
    inode: u64,
    resident_kib: u64,
    anonymous_kib: u64,
    locked: bool,
}

/// The mappings of `smaps`, each with the fields read here; a mapping whose header does not parse
/// is skipped with its fields, and one whose `Anonymous` or `Rss` line is missing counts as
/// holding private pages (never released).
fn parse(smaps: &str) -> impl Iterator<Item = Vma<'_>> {
    let mut lines = smaps.lines().peekable();
    std::iter::from_fn(move || loop {
        let header = lines.next()?;
        let Some(mut vma) = parse_header(header) else { continue };
        let (mut rss, mut anonymous) = (None, None);
        while let Some(line) = lines.next_if(|l| parse_header(l).is_none()) {
            let (key, value) = line.split_once(':').unwrap_or((line, ""));
            let kib = || value.trim().trim_end_matches("kB").trim().parse::<u64>().ok();
            match key {
                "Rss" => rss = kib(),
                "Anonymous" => anonymous = kib(),
                "Locked" => vma.locked |= kib() != Some(0),
                "VmFlags" => vma.locked |= value.split_whitespace().any(|f| f == "lo"),
                _ => {}
            }
        }
        vma.resident_kib = rss.unwrap_or(0);
        vma.mapping.resident_kib = vma.resident_kib;
        vma.anonymous_kib = anonymous.unwrap_or(u64::MAX);
        return Some(vma);
    })
}

/// `start-end perms offset dev inode [name]`, else `None` (a field line).
fn parse_header(line: &str) -> Option<Vma<'_>> {
    let mut fields = line.splitn(6, ' ');
    let (range, perms, _offset, dev, inode) =
        (fields.next()?, fields.next()?, fields.next()?, fields.next()?, fields.next()?);
    let name = fields.next().unwrap_or("").trim();
    let (start, end) = range.split_once('-')?;
    let start = usize::from_str_radix(start, 16).ok()?;
    let end = usize::from_str_radix(end, 16).ok()?;
    let perms = perms.as_bytes();
    if perms.len() != 4 || !dev.contains(':') || end <= start {
        return None;
    }
    Some(Vma {
        mapping: Mapping { start, end, resident_kib: 0 },
        name,
        private: perms[3] == b'p',
        writable: perms[1] == b'w',
        inode: inode.parse().ok()?,
        resident_kib: 0,
        anonymous_kib: u64::MAX,
        locked: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMAPS: &str = "\
55d0c0000000-55d0c0180000 r--p 00000000 fd:01 1234                       /usr/bin/host-worker
Size:               1536 kB
Rss:                 940 kB
Anonymous:             0 kB
Locked:                0 kB
VmFlags: rd mr mw me sd
55d0c0181000-55d0c04b8000 r-xp 00180000 fd:01 1234                       /usr/bin/host-worker
Size:               3292 kB
Rss:                1760 kB
Anonymous:             0 kB
Locked:                0 kB
VmFlags: rd ex mr mw me sd
55d0c04b9000-55d0c04f5000 r--p 004b7000 fd:01 1234                       /usr/bin/host-worker
Size:                240 kB
Rss:                 236 kB
Anonymous:           216 kB
Locked:                0 kB
VmFlags: rd mr mw me ac sd
55d0c04f5000-55d0c04f7000 rw-p 004f2000 fd:01 1234                       /usr/bin/host-worker
Size:                  8 kB
Rss:                   8 kB
Anonymous:             8 kB
VmFlags: rd wr mr mw me ac sd
55d0c1000000-55d0c1048000 rw-p 00000000 00:00 0                          [heap]
Size:                288 kB
Rss:                 288 kB
Anonymous:           288 kB
VmFlags: rd wr mr mw me ac sd
7f0000000000-7f0000100000 r-xp 00010000 00:01 77                         /memfd:http.so (deleted)
Size:               1024 kB
Rss:                 976 kB
Anonymous:             0 kB
VmFlags: rd ex mr mw me sd
7f0000200000-7f0000201000 rw-s 00000000 00:01 78                         /memfd:host-watch-0-http (deleted)
Size:                  4 kB
Rss:                   4 kB
Anonymous:             0 kB
VmFlags: rd wr sh mr mw me ms sd
7f0000300000-7f0000310000 r-xp 00000000 fd:01 99                         /usr/lib/locked.so
Size:                 64 kB
Rss:                  64 kB
Anonymous:             0 kB
Locked:               64 kB
VmFlags: rd ex mr mw me lo sd
7f0000400000-7f0000410000 r--p 00000000 fd:01 98                         /usr/lib/not-resident.so
Size:                 64 kB
Rss:                   0 kB
Anonymous:             0 kB
7f0000500000-7f0000510000 r--p 00000000 fd:01 97                         /usr/lib/no-anonymous-line.so
Size:                 64 kB
Rss:                  64 kB
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0                          [stack]
Size:                132 kB
Rss:                 100 kB
Anonymous:           100 kB
VmFlags: rd wr mr mw me gd ac
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
Size:                  4 kB
Rss:                   0 kB
Anonymous:             0 kB
";

    #[test]
    fn only_clean_private_file_mappings_are_released() {
        let got = clean_file_mappings(SMAPS);
        assert_eq!(
            got,
            vec![
                Mapping { start: 0x55d0c0000000, end: 0x55d0c0180000, resident_kib: 940 },
                Mapping { start: 0x55d0c0181000, end: 0x55d0c04b8000, resident_kib: 1760 },
                Mapping { start: 0x7f0000000000, end: 0x7f0000100000, resident_kib: 976 },
            ],
            "relocated data, writable, shared, locked, absent and unreadable mappings are kept"
        );
    }

    #[test]
    fn the_stack_is_found() {
        assert_eq!(
            stack_mapping(SMAPS),
            Some(Mapping { start: 0x7ffd00000000, end: 0x7ffd00021000, resident_kib: 100 })
        );
        assert_eq!(stack_mapping("garbage\nRss: 1 kB\n"), None);
    }

    /// The real thing, in this test process (its other tests running meanwhile): code stays
    /// callable and data readable after their pages were unmapped (they fault back in).
    #[test]
    fn released_pages_come_back_on_access() {
        let released = release_idle_pages().expect("release_idle_pages");
        assert!(released.mappings > 0 && released.mapped_kib > 0, "{released:?}");
        // Code and read-only data of this binary and of the C library, all just unmapped.
        let text = format!("{:>8.3}|{}", std::f64::consts::PI, "read-only data".to_uppercase());
        assert_eq!(text, "   3.142|READ-ONLY DATA");
    }
}
