//! Recovery: torn tails are cut, everything else that is damaged is corruption.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::*;
use strata_wal::format::{SEGMENT_HEADER_BYTES, encode_record, segment_file_name};
use strata_wal::{CorruptionReason, FrameError, Wal, WalError, WalOptions};
use tempfile::TempDir;

/// Writes records 1..=`last` into a fresh WAL (one segment) in a few batches and returns the
/// directory and the segment file.
fn single_segment_wal(last: u64) -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path(), WalOptions::default());
    let mut next = 1;
    while next <= last {
        let end = (next + 7).min(last + 1);
        append_wait(&wal, records(next..end)).unwrap();
        next = end;
    }
    drop(wal);
    let files = segment_files(dir.path());
    assert_eq!(files.len(), 1);
    (dir, files[0].clone())
}

/// A fresh directory holding one segment file named like `like` with `bytes`.
fn dir_with_segment(like: &Path, bytes: &[u8]) -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join(like.file_name().unwrap()), bytes).unwrap();
    dir
}

fn expect_corruption(dir: &Path, durable_index_min: Option<u64>) -> (PathBuf, u64, CorruptionReason) {
    match Wal::open(dir, WalOptions::default(), durable_index_min) {
        Err(WalError::Corruption { segment, offset, reason }) => (segment, offset, reason),
        Err(other) => panic!("expected corruption, got {other:?}"),
        Ok((_, report)) => panic!("expected corruption, opened: {report:?}"),
    }
}

#[test]
fn torn_tail_at_every_offset_of_the_last_records_recovers_the_prefix() {
    const LAST: u64 = 20;
    let (_pristine, segment) = single_segment_wal(LAST);
    let bytes = fs::read(&segment).unwrap();
    let frames = frame_offsets(&bytes);
    assert_eq!(frames.len() as u64, LAST);
    // Cut anywhere within the last three records (the first cut is a clean boundary).
    let cut_from = frames[frames.len() - 3].1;
    for cut in cut_from..bytes.len() as u64 {
        let complete: Vec<_> = frames.iter().filter(|(_, offset, len)| offset + len <= cut).collect();
        let last = complete.last().unwrap().0;
        let good_end = complete.last().map(|(_, offset, len)| offset + len).unwrap();
        let dir = dir_with_segment(&segment, &bytes[..cut as usize]);

        let (wal, report) = open(dir.path(), WalOptions::default());
        assert_eq!(report.last_index, Some(last), "cut {cut}");
        assert_eq!(report.records, last);
        assert_eq!(report.torn_tail_bytes_dropped, cut - good_end, "cut {cut}");
        assert_holds(&wal, 1..=last);
        assert_eq!(wal.read(last + 1).unwrap(), None);
        assert_eq!(fs::metadata(dir.path().join(segment.file_name().unwrap())).unwrap().len(), good_end);

        // The log continues right after the recovered prefix, and survives a reopen.
        append_wait(&wal, records(last + 1..last + 3)).unwrap();
        drop(wal);
        let (wal, report) = open(dir.path(), WalOptions::default());
        assert_eq!(report.torn_tail_bytes_dropped, 0);
        assert_holds(&wal, 1..=last + 2);
    }
}

#[test]
fn garbage_after_the_last_record_is_dropped_as_torn_tail() {
    const LAST: u64 = 20;
    let (_pristine, segment) = single_segment_wal(LAST);
    let bytes = fs::read(&segment).unwrap();
    let mut garbages: Vec<Vec<u8>> = [1usize, 19, 20, 21, 4096].iter().map(|len| vec![0u8; *len]).collect();
    garbages.extend([1usize, 7, 20, 100, 5000].iter().zip(1u64..).map(|(len, seed)| pseudo_random_bytes(seed, *len)));
    // A plausible header (right version, flags, reserved; next index) whose payload is cut.
    let mut plausible = encode_record(LAST + 1, &[7u8; 200]);
    plausible.truncate(150);
    garbages.push(plausible);
    // A plausible header with a crc mismatch and nothing after it.
    let mut bad_crc = encode_record(LAST + 1, b"payload");
    bad_crc[16] ^= 1;
    garbages.push(bad_crc);

    for garbage in garbages {
        let mut damaged = bytes.clone();
        damaged.extend_from_slice(&garbage);
        let dir = dir_with_segment(&segment, &damaged);
        let (wal, report) = open(dir.path(), WalOptions::default());
        assert_eq!(report.torn_tail_bytes_dropped, garbage.len() as u64);
        assert_holds(&wal, 1..=LAST);
        append_wait(&wal, records(LAST + 1..LAST + 2)).unwrap();
        assert_holds(&wal, 1..=LAST + 1);
    }
}

#[test]
fn any_damage_to_a_record_followed_by_valid_records_is_corruption() {
    const LAST: u64 = 20;
    const DAMAGED: u64 = 10;
    let (_pristine, segment) = single_segment_wal(LAST);
    let bytes = fs::read(&segment).unwrap();
    let frames = frame_offsets(&bytes);
    let (_, offset, len) = frames[(DAMAGED - 1) as usize];
    for at in offset..offset + len {
        let mut damaged = bytes.clone();
        damaged[at as usize] ^= 0xFF;
        let dir = dir_with_segment(&segment, &damaged);
        let (path, reported_offset, reason) = expect_corruption(dir.path(), None);
        assert_eq!(path.file_name(), segment.file_name());
        assert_eq!(reported_offset, offset, "byte {at}");
        assert!(
            matches!(reason, CorruptionReason::ValidRecordAfterInvalid { later_index: 11, .. }),
            "byte {at}: {reason:?}"
        );
        // Nothing was "repaired".
        let on_disk = fs::read(dir.path().join(segment.file_name().unwrap())).unwrap();
        assert_eq!(on_disk, damaged);
    }
}

#[test]
fn valid_record_with_a_wrong_index_in_the_last_segment_is_corruption() {
    let (_pristine, segment) = single_segment_wal(5);
    let mut bytes = fs::read(&segment).unwrap();
    bytes.extend_from_slice(&encode_record(7, b"skips index 6"));
    let dir = dir_with_segment(&segment, &bytes);
    let (_, _, reason) = expect_corruption(dir.path(), None);
    assert_eq!(reason, CorruptionReason::UnexpectedIndex { expected: 6, found: 7 });
}

#[test]
fn durable_index_min_above_the_recovered_log_is_corruption_and_modifies_nothing() {
    const LAST: u64 = 20;
    let (_pristine, segment) = single_segment_wal(LAST);
    let bytes = fs::read(&segment).unwrap();
    let frames = frame_offsets(&bytes);

    // Intact log, but the caller knows index 21 was durable.
    let dir = dir_with_segment(&segment, &bytes);
    let (_, _, reason) = expect_corruption(dir.path(), Some(LAST + 1));
    assert_eq!(
        reason,
        CorruptionReason::BelowDurableIndex { recovered_last_index: Some(LAST), durable_index_min: LAST + 1 }
    );
    let (wal, _) = Wal::open(dir.path(), WalOptions::default(), Some(LAST)).unwrap();
    assert_holds(&wal, 1..=LAST);
    drop(wal);

    // The last record is torn but the caller knows it was durable: refuse, keep the bytes.
    let (_, offset, _) = frames[(LAST - 1) as usize];
    let torn = &bytes[..offset as usize + 5];
    let dir = dir_with_segment(&segment, torn);
    let (_, _, reason) = expect_corruption(dir.path(), Some(LAST));
    assert!(matches!(reason, CorruptionReason::BelowDurableIndex { recovered_last_index: Some(19), .. }));
    assert_eq!(fs::read(dir.path().join(segment.file_name().unwrap())).unwrap(), torn);
    let (wal, report) = Wal::open(dir.path(), WalOptions::default(), Some(LAST - 1)).unwrap();
    assert_eq!(report.last_index, Some(LAST - 1));
    drop(wal);

    // Empty WAL.
    let empty = tempfile::tempdir().unwrap();
    let (_, _, reason) = expect_corruption(empty.path(), Some(1));
    assert!(matches!(reason, CorruptionReason::BelowDurableIndex { recovered_last_index: None, .. }));
    let (wal, report) = Wal::open(empty.path(), WalOptions::default(), None).unwrap();
    assert_eq!((report.records, wal.first_index(), wal.last_index()), (0, None, None));
}

#[test]
fn last_segment_with_torn_or_bare_header_is_removed() {
    let options = WalOptions { segment_size_bytes_max: 200, ..WalOptions::default() };
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path(), options.clone());
    for index in 1..=12 {
        append_wait(&wal, records(index..index + 1)).unwrap();
    }
    drop(wal);
    let files = segment_files(dir.path());
    assert!(files.len() >= 2, "{files:?}");

    // Crash while creating the next segment: header cut short.
    let next = dir.path().join(segment_file_name(13));
    let header = strata_wal::format::encode_segment_header(13);
    for len in [0, 7, SEGMENT_HEADER_BYTES - 1] {
        fs::write(&next, &header[..len]).unwrap();
        let (wal, report) = open(dir.path(), options.clone());
        assert_eq!(report.removed_segment_files, vec![next.clone()]);
        assert_eq!(report.torn_tail_bytes_dropped, len as u64);
        assert!(!next.exists());
        assert_holds(&wal, 1..=12);
        drop(wal);
    }

    // Header fully written, but no record made it.
    fs::write(&next, header).unwrap();
    let (wal, report) = open(dir.path(), options.clone());
    assert_eq!(report.removed_segment_files, vec![next.clone()]);
    assert_holds(&wal, 1..=12);
    // The log continues (in a new segment: recovered segments are sealed).
    append_wait(&wal, records(13..14)).unwrap();
    drop(wal);
    let (wal, _) = open(dir.path(), options);
    assert_holds(&wal, 1..=13);
}

#[test]
fn a_lone_torn_segment_leaves_an_empty_wal_that_accepts_any_first_index() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join(segment_file_name(500));
    let mut bytes = strata_wal::format::encode_segment_header(500).to_vec();
    bytes.extend_from_slice(&encode_record(500, b"torn record")[..25]);
    fs::write(&path, &bytes).unwrap();
    let (wal, report) = open(dir.path(), WalOptions::default());
    assert_eq!(report.torn_tail_bytes_dropped, bytes.len() as u64);
    assert_eq!(report.removed_segment_files, vec![path]);
    assert_eq!((wal.first_index(), wal.last_index()), (None, None));
    append_wait(&wal, records(42..45)).unwrap();
    assert_holds(&wal, 42..=44);
}

/// Builds a WAL of several sealed segments holding 1..=30 and returns its directory.
fn multi_segment_wal() -> (TempDir, Vec<PathBuf>) {
    let dir = tempfile::tempdir().unwrap();
    let options = WalOptions { segment_size_bytes_max: 250, ..WalOptions::default() };
    let (wal, _) = open(dir.path(), options);
    for first in (1..=30).step_by(2) {
        append_wait(&wal, records(first..first + 2)).unwrap();
    }
    drop(wal);
    let files = segment_files(dir.path());
    assert!(files.len() >= 3, "{files:?}");
    (dir, files)
}

fn damaged_copy(from: &Path, file: &Path, damage: impl FnOnce(&mut Vec<u8>)) -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(from, dir.path());
    let target = dir.path().join(file.file_name().unwrap());
    let mut bytes = fs::read(&target).unwrap();
    damage(&mut bytes);
    fs::write(&target, bytes).unwrap();
    dir
}

#[test]
fn damage_in_a_sealed_segment_is_corruption() {
    let (pristine, files) = multi_segment_wal();
    let sealed = &files[0];
    let sealed_bytes = fs::read(sealed).unwrap();
    let frames = frame_offsets(&sealed_bytes);
    let (_, last_offset, last_len) = *frames.last().unwrap();

    // A flipped byte in the last record of a sealed segment (no later record in that file).
    let dir = damaged_copy(pristine.path(), sealed, |bytes| {
        bytes[(last_offset + last_len - 1) as usize] ^= 1;
    });
    let (segment, offset, reason) = expect_corruption(dir.path(), None);
    assert_eq!(segment.file_name(), sealed.file_name());
    assert_eq!(offset, last_offset);
    assert!(matches!(reason, CorruptionReason::Record(FrameError::CrcMismatch { .. })));

    // Its tail cut mid-record.
    let dir = damaged_copy(pristine.path(), sealed, |bytes| {
        bytes.truncate((last_offset + 3) as usize);
    });
    let (_, _, reason) = expect_corruption(dir.path(), None);
    assert!(matches!(reason, CorruptionReason::Record(FrameError::TruncatedHeader { .. })));

    // Its tail cut at a record boundary: the next segment no longer continues it.
    let dir = damaged_copy(pristine.path(), sealed, |bytes| {
        bytes.truncate(last_offset as usize);
    });
    let (segment, _, reason) = expect_corruption(dir.path(), None);
    assert_eq!(segment.file_name(), files[1].file_name());
    assert!(matches!(reason, CorruptionReason::GapBetweenSegments { .. }));

    // Its header damaged.
    let dir = damaged_copy(pristine.path(), sealed, |bytes| bytes[3] ^= 1);
    let (_, offset, reason) = expect_corruption(dir.path(), None);
    assert_eq!(offset, 0);
    assert!(matches!(reason, CorruptionReason::SegmentHeader(FrameError::BadMagic)));

    // Garbage after its last record.
    let dir = damaged_copy(pristine.path(), sealed, |bytes| bytes.extend_from_slice(&[0; 10]));
    let (_, offset, _) = expect_corruption(dir.path(), None);
    assert_eq!(offset, last_offset + last_len);

    // A whole middle segment missing.
    let dir = tempfile::tempdir().unwrap();
    copy_dir(pristine.path(), dir.path());
    fs::remove_file(dir.path().join(files[1].file_name().unwrap())).unwrap();
    let (_, _, reason) = expect_corruption(dir.path(), None);
    assert!(matches!(reason, CorruptionReason::GapBetweenSegments { .. }));

    // A segment whose name disagrees with its header.
    let dir = tempfile::tempdir().unwrap();
    copy_dir(pristine.path(), dir.path());
    let renamed = dir.path().join(segment_file_name(0));
    fs::rename(dir.path().join(sealed.file_name().unwrap()), renamed).unwrap();
    let (_, _, reason) = expect_corruption(dir.path(), None);
    assert!(matches!(reason, CorruptionReason::SegmentNameMismatch { name_first_index: 0, header_first_index: 1 }));

    // The pristine copy still opens (the tests above did not pass by accident).
    let (wal, report) = open(pristine.path(), WalOptions::default());
    assert_eq!(report.segments, files.len());
    assert_holds(&wal, 1..=30);
}
