//! Helpers shared by the integration tests.
#![allow(dead_code)] // Each test binary uses a different subset.

use std::path::{Path, PathBuf};
use std::sync::mpsc;

use bytes::Bytes;
use strata_wal::{RecoveryReport, Wal, WalError, WalOptions};

/// Deterministic payload of record `index`; lengths vary from 0 to 40 bytes.
pub(crate) fn payload(index: u64) -> Bytes {
    let len = (index * 7 % 41) as usize;
    let pattern = format!("<{index}>");
    Bytes::from(pattern.bytes().cycle().take(len).collect::<Vec<u8>>())
}

/// Records `range` with their deterministic payloads.
pub(crate) fn records(range: std::ops::Range<u64>) -> Vec<(u64, Bytes)> {
    range.map(|index| (index, payload(index))).collect()
}

pub(crate) fn open(dir: &Path, options: WalOptions) -> (Wal, RecoveryReport) {
    Wal::open(dir, options, None).expect("open WAL")
}

/// Appends and blocks until the durability callback ran; returns its result.
pub(crate) fn append_wait(wal: &Wal, records: Vec<(u64, Bytes)>) -> Result<(), WalError> {
    let (sender, receiver) = mpsc::channel();
    wal.append(
        records,
        Box::new(move |result| {
            sender.send(result).unwrap();
        }),
    )?;
    recv_or_fail(&receiver, "the durability callback")
}

/// Asserts that the WAL holds exactly `expected` with the deterministic payloads.
pub(crate) fn assert_holds(wal: &Wal, expected: std::ops::RangeInclusive<u64>) {
    assert_eq!(wal.first_index(), Some(*expected.start()));
    assert_eq!(wal.last_index(), Some(*expected.end()));
    let all = wal.read_range(*expected.start(), expected.end() + 1).unwrap();
    assert_eq!(all.len() as u64, expected.end() - expected.start() + 1);
    for (index, payload_bytes) in all {
        assert_eq!(payload_bytes, payload(index), "payload of {index}");
    }
}

/// Segment files of `dir`, sorted.
pub(crate) fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "wal"))
        .collect();
    files.sort();
    files
}

/// Copies every file of `from` into `to` (no fsync: tests only).
pub(crate) fn copy_dir(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// Small deterministic pseudo-random bytes (xorshift), for garbage.
pub(crate) fn pseudo_random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut state = seed | 1;
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect()
}

/// Frame offsets of every record in a segment file (via the public scanner).
pub(crate) fn frame_offsets(bytes: &[u8]) -> Vec<(u64, u64, u64)> {
    strata_wal::scan_segment_bytes(bytes)
        .unwrap()
        .into_iter()
        .map(|location| (location.index, location.offset, location.len))
        .collect()
}

/// Watchdog for waits that a correct WAL satisfies at once: a broken one fails the test
/// instead of hanging it. Not a timing assertion; the bound is far above any real wait.
pub(crate) const WATCHDOG: std::time::Duration = std::time::Duration::from_secs(60);

/// Receives from `receiver`, failing the test (instead of hanging) if nothing ever comes.
pub(crate) fn recv_or_fail<T>(receiver: &mpsc::Receiver<T>, what: &str) -> T {
    receiver.recv_timeout(WATCHDOG).unwrap_or_else(|err| panic!("never received {what}: {err}"))
}
