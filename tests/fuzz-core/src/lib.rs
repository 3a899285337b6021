//! `host-fuzz`: a small seeded mutation fuzzer for the parsers, runnable on the stable toolchain
//! (no libFuzzer, no nightly). Used as a dev-dependency by `host-tests` (`tests/tests/fuzz*.rs`:
//! the protocol plugins, the plugin glue) and by `host` itself (unit tests: the config file, the
//! master↔worker channel). Run the long version with `bash bench/fuzz.sh`.
//!
//! Each target has seeds: a corpus directory (`tests/fuzz/corpus/<target>/`, one input per
//! file, [`corpus`]) and/or seeds built in code ([`run_seeds`]). Every
//! round picks a corpus entry, applies a few random mutations (byte flips, bytes protocols care
//! about, inserts, deletes, repeats, splices of another entry, truncation) and hands the result
//! to the target, which checks its invariants and panics when one breaks. A panic is caught,
//! the input is written to `target/<profile>/fuzz-crashes/<target>-<hash>` and the run fails naming it:
//! that file becomes a regression seed in the corpus once fixed.
//!
//! Bounded by rounds (`FUZZ_ROUNDS`) or by time (`FUZZ_SECS`); `FUZZ_SEED` replays a run.

use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::panic::{self, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Bytes the parsers branch on: worth more than random ones.
const INTERESTING: &[u8] = b"\r\n:;$*-+0123456789aAfF \t/\x00\x7f\x80\xff";

/// How long a run goes on.
#[derive(Debug, Clone, Copy)]
pub enum Budget {
    Rounds(u64),
    Time(Duration),
}

impl Budget {
    /// `FUZZ_SECS` (a time budget) or `FUZZ_ROUNDS`, else `default_rounds`.
    pub fn from_env(default_rounds: u64) -> Budget {
        let var = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
        match (var("FUZZ_SECS"), var("FUZZ_ROUNDS")) {
            (Some(secs), _) => Budget::Time(Duration::from_secs(secs)),
            (None, Some(rounds)) => Budget::Rounds(rounds),
            (None, None) => Budget::Rounds(default_rounds),
        }
    }
}

/// xorshift64*: fast, seedable, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A number in `0..n` (`n` > 0).
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// The directory of the seed corpora, `tests/fuzz/corpus/` (each target has a directory there).
pub fn corpus_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus")
}

/// The seed corpus of `target`: every file of `tests/fuzz/corpus/<target>/`.
pub fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = corpus_root().join(target);
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading the corpus {}: {e}", dir.display()))
        .map(|e| e.expect("a corpus entry").path())
        .collect();
    entries.sort();
    let seeds: Vec<Vec<u8>> = entries.iter().map(|p| std::fs::read(p).expect("a corpus file")).collect();
    assert!(!seeds.is_empty(), "the corpus {} is empty", dir.display());
    seeds
}

fn mutate(rng: &mut Rng, input: &mut Vec<u8>, seeds: &[Vec<u8>], max_len: usize) {
    for _ in 0..1 + rng.below(4) {
        let len = input.len();
        match rng.below(8) {
            0 if len > 0 => {
                let i = rng.below(len);
                input[i] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                let i = rng.below(len);
                input[i] = INTERESTING[rng.below(INTERESTING.len())];
            }
            2 => {
                let i = rng.below(len + 1);
                let n = 1 + rng.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| INTERESTING[rng.below(INTERESTING.len())]).collect();
                input.splice(i..i, bytes);
            }
            3 if len > 0 => {
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(16));
                input.drain(i..i + n);
            }
            4 if len > 0 => {
                // Repeat a slice: long headers, many chunks, many arguments.
                let i = rng.below(len);
                let n = 1 + rng.below((len - i).min(64));
                let piece = input[i..i + n].to_vec();
                for _ in 0..1 + rng.below(32) {
                    input.splice(i..i, piece.iter().copied());
                }
            }
            5 => {
                let other = &seeds[rng.below(seeds.len())];
                if !other.is_empty() {
                    let from = rng.below(other.len());
                    let to = from + rng.below(other.len() - from) + 1;
                    let at = rng.below(len + 1);
                    input.splice(at..at, other[from..to].iter().copied());
                }
            }
            6 if len > 0 => input.truncate(rng.below(len)),
            _ => {
                // A decimal or hex number where lengths live.
                let i = rng.below(len + 1);
                let n = match rng.below(4) {
                    0 => format!("{}", rng.next()),
                    1 => format!("{:x}", rng.next()),
                    2 => format!("-{}", rng.below(10)),
                    _ => format!("{}", rng.below(300)),
                };
                input.splice(i..i, n.into_bytes());
            }
        }
    }
    input.truncate(max_len);
}

/// What a run did.
#[derive(Debug)]
pub struct Report {
    pub rounds: u64,
    pub elapsed: Duration,
}

/// Runs `check` on every seed, then on mutated inputs up to `max_len` bytes until the budget is
/// spent. `check` gets the input and a number to derive split points from. Panics (naming the
/// saved input) when `check` does.
pub fn run(target: &str, budget: Budget, max_len: usize, check: impl Fn(&[u8], u64)) -> Report {
    run_seeds(target, corpus(target), budget, max_len, check)
}

/// [`run`] with the seeds given (at least one).
pub fn run_seeds(
    target: &str,
    seeds: Vec<Vec<u8>>,
    budget: Budget,
    max_len: usize,
    check: impl Fn(&[u8], u64),
) -> Report {
    assert!(!seeds.is_empty(), "fuzz target {target} has no seed");
    let seed = std::env::var("FUZZ_SEED").ok().and_then(|v| v.parse().ok()).unwrap_or(0x5eed_f00d_u64);
    let mut rng = Rng(seed | 1);
    let started = Instant::now();
    let attempt = |input: &[u8], salt: u64| {
        if panic::catch_unwind(AssertUnwindSafe(|| check(input, salt))).is_err() {
            let path = save_crash(target, input);
            panic!("fuzz target {target} failed on {} (seed {seed}, salt {salt})", path.display());
        }
    };
    for s in &seeds {
        attempt(s, 0);
    }
    let mut rounds = 0u64;
    loop {
        let done = match budget {
            Budget::Rounds(n) => rounds >= n,
            Budget::Time(t) => rounds.is_multiple_of(256) && started.elapsed() >= t,
        };
        if done {
            break;
        }
        let mut input = seeds[rng.below(seeds.len())].clone();
        mutate(&mut rng, &mut input, &seeds, max_len);
        attempt(&input, rng.next());
        rounds += 1;
    }
    Report { rounds, elapsed: started.elapsed() }
}

fn save_crash(target: &str, input: &[u8]) -> PathBuf {
    let mut h = DefaultHasher::new();
    input.hash(&mut h);
    let dir = profile_dir().join("fuzz-crashes");
    let _ = std::fs::create_dir_all(&dir);
    let path = dir.join(format!("{target}-{:016x}", h.finish()));
    let _ = std::fs::write(&path, input);
    path
}

/// `target/<profile>`, from the running test binary's path (`target/<profile>/deps/NAME-HASH`).
fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let dir = exe.parent().unwrap_or(Path::new("."));
    let dir = if dir.file_name().is_some_and(|n| n == "deps") { dir.parent().unwrap_or(dir) } else { dir };
    dir.to_path_buf()
}

/// Split points for feeding `len` bytes in pieces, derived from `salt`: sorted, in `1..len`.
pub fn splits(len: usize, salt: u64) -> Vec<usize> {
    if len < 2 {
        return Vec::new();
    }
    let mut rng = Rng(salt | 1);
    let mut cuts: Vec<usize> = (0..rng.below(6)).map(|_| 1 + rng.below(len - 1)).collect();
    if salt.is_multiple_of(7) {
        // Byte by byte now and then: the slowest client.
        cuts = (1..len).collect();
    }
    cuts.sort_unstable();
    cuts.dedup();
    cuts
}
