//! Segment lifecycle and the public API: rolls, sealing, tail truncation across segments,
//! removal of sealed segments, reopen, argument errors.

mod common;

use std::fs;

use bytes::Bytes;
use common::*;
use strata_wal::format::{SEGMENT_HEADER_BYTES, segment_file_name};
use strata_wal::{RECORD_PAYLOAD_BYTES_MAX, Wal, WalError, WalOptions, decode_record_at, scan_segment_bytes};

fn small_segments() -> WalOptions {
    WalOptions { segment_size_bytes_max: 300, ..WalOptions::default() }
}

/// Checks what `sealed_segments` says against the files and the records.
fn assert_segments_consistent(wal: &Wal) {
    let sealed = wal.sealed_segments();
    for pair in sealed.windows(2) {
        assert_eq!(pair[0].last_index + 1, pair[1].first_index, "{sealed:?}");
    }
    for info in &sealed {
        assert_eq!(info.path.file_name().unwrap().to_str().unwrap(), segment_file_name(info.first_index));
        let bytes = fs::read(&info.path).unwrap();
        assert_eq!(bytes.len() as u64, info.size_bytes);
        // The tiering view of the file agrees with the WAL's own reads.
        let locations = scan_segment_bytes(&bytes).unwrap();
        assert_eq!(locations.first().unwrap().index, info.first_index);
        assert_eq!(locations.last().unwrap().index, info.last_index);
        for location in locations {
            let start = location.offset as usize;
            let (index, payload_bytes) = decode_record_at(&bytes[start..start + location.len as usize]).unwrap();
            assert_eq!(index, location.index);
            assert_eq!(Some(payload_bytes), wal.read(index).unwrap());
        }
    }
}

#[test]
fn rolls_truncation_across_segments_removal_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, report) = open(dir.path(), small_segments());
    assert_eq!(report.segments, 0);
    for first in (1..=60).step_by(3) {
        append_wait(&wal, records(first..first + 3)).unwrap();
    }
    assert_holds(&wal, 1..=60);
    let sealed = wal.sealed_segments();
    assert!(sealed.len() >= 4, "{sealed:?}");
    assert_eq!(sealed[0].first_index, 1);
    for info in &sealed {
        // A batch never splits: every segment boundary is a batch boundary.
        assert_eq!((info.first_index - 1) % 3, 0, "{info:?}");
        assert!(info.size_bytes <= 300, "{info:?}");
    }
    assert_eq!(segment_files(dir.path()).len(), sealed.len() + 1);
    assert_segments_consistent(&wal);

    // Truncate into the middle of the second sealed segment: later files disappear.
    let cut = sealed[1].first_index + 1;
    wal.truncate_from(cut).unwrap();
    assert_holds(&wal, 1..=cut - 1);
    assert_eq!(wal.read(cut).unwrap(), None);
    assert_eq!(wal.read_range(cut - 1, 1000).unwrap().len(), 1);
    assert_eq!(segment_files(dir.path()).len(), 2);
    // The cut segment is active again: one sealed segment remains.
    assert_eq!(wal.sealed_segments(), sealed[..1].to_vec());

    // The log continues at the cut.
    assert!(matches!(
        wal.append(records(cut + 1..cut + 2), Box::new(|_| {})),
        Err(WalError::NonConsecutiveIndex { expected, got }) if expected == cut && got == cut + 1
    ));
    for first in (cut..cut + 30).step_by(3) {
        append_wait(&wal, records(first..first + 3)).unwrap();
    }
    let last = cut + 29;
    assert_holds(&wal, 1..=last);
    assert_segments_consistent(&wal);

    // Remove sealed segments through an index in the middle of the third one.
    let sealed = wal.sealed_segments();
    let through = sealed[2].first_index + 1;
    let removed = wal.remove_sealed_through(through).unwrap();
    assert_eq!(removed, sealed[..2].to_vec());
    for info in &removed {
        assert!(!info.path.exists());
    }
    assert_eq!(wal.first_index(), Some(sealed[2].first_index));
    assert_eq!(wal.read(sealed[1].last_index).unwrap(), None);
    assert_holds(&wal, sealed[2].first_index..=last);
    // Nothing more to remove through the same index.
    assert_eq!(wal.remove_sealed_through(through).unwrap(), vec![]);

    // Reopen: same contents, same segments; the formerly active one is now sealed too.
    let sealed_before = wal.sealed_segments();
    let files_before = segment_files(dir.path());
    drop(wal);
    let (wal, report) = open(dir.path(), small_segments());
    assert_eq!(report.first_index, Some(sealed[2].first_index));
    assert_eq!(report.last_index, Some(last));
    assert_eq!(report.segments, files_before.len());
    assert_eq!(report.torn_tail_bytes_dropped, 0);
    assert_holds(&wal, sealed[2].first_index..=last);
    let sealed_after = wal.sealed_segments();
    assert_eq!(sealed_after.len(), sealed_before.len() + 1);
    assert_eq!(sealed_after[..sealed_before.len()], sealed_before[..]);
    assert_eq!(sealed_after.last().unwrap().last_index, last);
    assert_segments_consistent(&wal);

    // A segment sealed before the restart never grows after it: the next append starts a
    // new file.
    append_wait(&wal, records(last + 1..last + 2)).unwrap();
    assert_eq!(wal.sealed_segments(), sealed_after);
    assert_eq!(segment_files(dir.path()).len(), files_before.len() + 1);
    assert!(dir.path().join(segment_file_name(last + 1)).exists());
    assert_holds(&wal, sealed[2].first_index..=last + 1);
}

#[test]
fn remove_sealed_never_removes_the_active_segment() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path(), small_segments());
    append_wait(&wal, records(1..6)).unwrap();
    // Covered, but active: kept.
    assert_eq!(wal.remove_sealed_through(u64::MAX - 1).unwrap(), vec![]);
    assert_holds(&wal, 1..=5);
    wal.seal_active().unwrap();
    assert_eq!(wal.sealed_segments().len(), 1);
    // Sealing an already sealed segment is a no-op.
    wal.seal_active().unwrap();
    assert_eq!(wal.sealed_segments().len(), 1);
    // Sealed but not covered: kept.
    assert_eq!(wal.remove_sealed_through(4).unwrap(), vec![]);
    assert_holds(&wal, 1..=5);

    // The next append starts a new segment file; the sealed one can go.
    append_wait(&wal, records(6..7)).unwrap();
    assert_eq!(segment_files(dir.path()).len(), 2);
    assert_eq!(wal.remove_sealed_through(5).unwrap().len(), 1);
    assert_holds(&wal, 6..=6);
    assert_eq!(segment_files(dir.path()).len(), 1);

    // A sealed newest segment that is covered goes too: the WAL is then empty.
    wal.seal_active().unwrap();
    let removed = wal.remove_sealed_through(6).unwrap();
    assert_eq!(removed.iter().map(|s| (s.first_index, s.last_index)).collect::<Vec<_>>(), vec![(6, 6)]);
    assert_eq!((wal.first_index(), wal.last_index()), (None, None));
    assert!(segment_files(dir.path()).is_empty());
    append_wait(&wal, records(20..22)).unwrap();
    drop(wal);
    let (wal, _) = open(dir.path(), small_segments());
    assert_holds(&wal, 20..=21);
}

#[test]
fn a_batch_larger_than_a_segment_goes_to_one_segment() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path(), small_segments());
    append_wait(&wal, records(1..3)).unwrap();
    let big: Vec<(u64, Bytes)> = (3..13).map(|index| (index, Bytes::from(vec![index as u8; 100]))).collect();
    append_wait(&wal, big.clone()).unwrap();
    append_wait(&wal, records(13..14)).unwrap();
    let sealed = wal.sealed_segments();
    assert_eq!(sealed.iter().map(|s| (s.first_index, s.last_index)).collect::<Vec<_>>(), vec![(1, 2), (3, 12)]);
    assert!(sealed[1].size_bytes > 300);
    assert_eq!(wal.read_range(3, 13).unwrap(), big);
}

#[test]
fn truncating_everything_empties_the_wal_and_the_next_append_may_start_anywhere() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path(), small_segments());
    for first in (100..130).step_by(5) {
        append_wait(&wal, records(first..first + 5)).unwrap();
    }
    // Beyond the end: no-op.
    wal.truncate_from(130).unwrap();
    assert_holds(&wal, 100..=129);
    wal.truncate_from(0).unwrap();
    assert_eq!((wal.first_index(), wal.last_index()), (None, None));
    assert!(segment_files(dir.path()).is_empty());
    assert_eq!(wal.read_range(0, u64::MAX).unwrap(), vec![]);
    append_wait(&wal, records(7..9)).unwrap();
    assert_holds(&wal, 7..=8);
    drop(wal);
    let (wal, _) = open(dir.path(), small_segments());
    assert_holds(&wal, 7..=8);
}

#[test]
fn truncate_within_the_active_segment_is_durable_and_exact() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path(), WalOptions::default());
    append_wait(&wal, records(1..11)).unwrap();
    wal.truncate_from(6).unwrap();
    assert_holds(&wal, 1..=5);
    let file = &segment_files(dir.path())[0];
    let bytes = fs::read(file).unwrap();
    assert_eq!(scan_segment_bytes(&bytes).unwrap().len(), 5, "the file itself was cut");
    append_wait(&wal, vec![(6, Bytes::from_static(b"replacement"))]).unwrap();
    assert_eq!(wal.read(6).unwrap().unwrap(), Bytes::from_static(b"replacement"));
    drop(wal);
    let (wal, _) = open(dir.path(), WalOptions::default());
    assert_eq!(wal.read(6).unwrap().unwrap(), Bytes::from_static(b"replacement"));
    assert_eq!(wal.read(5).unwrap().unwrap(), payload(5));
}

#[test]
fn read_range_clamps_to_what_is_stored() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path(), small_segments());
    assert_eq!(wal.read(1).unwrap(), None);
    assert_eq!(wal.read_range(0, 10).unwrap(), vec![]);
    for first in (10..40).step_by(2) {
        append_wait(&wal, records(first..first + 2)).unwrap();
    }
    assert_eq!(wal.read_range(0, 12).unwrap(), records(10..12));
    assert_eq!(wal.read_range(38, 1000).unwrap(), records(38..40));
    assert_eq!(wal.read_range(15, 33).unwrap(), records(15..33));
    assert_eq!(wal.read_range(20, 20).unwrap(), vec![]);
    assert_eq!(wal.read_range(25, 20).unwrap(), vec![]);
    assert_eq!(wal.read_range(40, 50).unwrap(), vec![]);
    assert_eq!(wal.read_range(0, 10).unwrap(), vec![]);
    assert_eq!(wal.read(9).unwrap(), None);
    assert_eq!(wal.read(40).unwrap(), None);
    assert_eq!(wal.read(u64::MAX).unwrap(), None);
}

#[test]
fn invalid_appends_are_rejected_without_effect() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path(), WalOptions::default());
    append_wait(&wal, records(1..4)).unwrap();
    let stats_before = wal.stats();
    let never = || -> strata_wal::DurableCallback { Box::new(|_| panic!("callback of a rejected append")) };

    assert!(matches!(wal.append(records(5..6), never()), Err(WalError::NonConsecutiveIndex { expected: 4, got: 5 })));
    assert!(matches!(wal.append(records(3..4), never()), Err(WalError::NonConsecutiveIndex { expected: 4, got: 3 })));
    let gap = vec![(4, payload(4)), (6, payload(6))];
    assert!(matches!(wal.append(gap, never()), Err(WalError::NonConsecutiveIndex { expected: 5, got: 6 })));
    let too_big = vec![(4, Bytes::from(vec![0u8; RECORD_PAYLOAD_BYTES_MAX + 1]))];
    assert!(matches!(wal.append(too_big, never()), Err(WalError::PayloadTooLarge { index: 4, .. })));
    assert_eq!(wal.stats(), stats_before);
    assert_holds(&wal, 1..=3);

    // A payload of exactly the maximum is fine.
    let max = vec![(4, Bytes::from(vec![9u8; RECORD_PAYLOAD_BYTES_MAX]))];
    append_wait(&wal, max).unwrap();
    assert_eq!(wal.read(4).unwrap().unwrap().len(), RECORD_PAYLOAD_BYTES_MAX);

    // u64::MAX is never stored (no next index would exist).
    let empty_dir = tempfile::tempdir().unwrap();
    let (empty, _) = open(empty_dir.path(), WalOptions::default());
    assert!(matches!(
        empty.append(vec![(u64::MAX, Bytes::new())], never()),
        Err(WalError::IndexOverflow { first_index: u64::MAX, records: 1 })
    ));
    append_wait(&empty, vec![(u64::MAX - 1, Bytes::new())]).unwrap();
    assert_eq!(empty.last_index(), Some(u64::MAX - 1));
}

#[test]
fn empty_append_gets_its_callback() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path(), WalOptions::default());
    append_wait(&wal, vec![]).unwrap();
    assert_eq!((wal.first_index(), wal.last_index()), (None, None));
    append_wait(&wal, records(3..4)).unwrap();
    append_wait(&wal, vec![]).unwrap();
    assert_holds(&wal, 3..=3);
}

#[test]
fn one_open_wal_per_directory_and_close_releases_it() {
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path(), WalOptions::default());
    append_wait(&wal, records(1..3)).unwrap();
    assert!(matches!(Wal::open(dir.path(), WalOptions::default(), None), Err(WalError::Locked { .. })));

    let clone = wal.clone();
    wal.close();
    assert!(matches!(clone.append(records(3..4), Box::new(|_| {})), Err(WalError::Closed)));
    assert!(matches!(clone.read(1), Err(WalError::Closed)));
    assert!(matches!(clone.truncate_from(1), Err(WalError::Closed)));
    wal.close(); // idempotent

    let (reopened, _) = open(dir.path(), WalOptions::default());
    assert_holds(&reopened, 1..=2);
}

#[test]
fn options_are_validated_and_the_directory_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let options = WalOptions { segment_size_bytes_max: SEGMENT_HEADER_BYTES as u64, ..WalOptions::default() };
    assert!(matches!(Wal::open(dir.path(), options, None), Err(WalError::InvalidOptions { .. })));
    let nested = dir.path().join("a").join("b");
    let (wal, _) = open(&nested, WalOptions::default());
    append_wait(&wal, records(1..2)).unwrap();
    assert!(nested.join(segment_file_name(1)).exists());
}

#[test]
fn append_durable_and_stats() {
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (wal, _) = open(dir.path(), WalOptions::default());
    runtime.block_on(async {
        wal.append_durable(records(1..4)).await.unwrap();
        wal.append_durable(records(4..5)).await.unwrap();
        assert!(matches!(wal.append_durable(records(9..10)).await, Err(WalError::NonConsecutiveIndex { .. })));
    });
    let stats = wal.stats();
    assert_eq!(stats.appends, 2);
    assert_eq!(stats.records, 4);
    let frames: u64 = (1..5).map(|index| 20 + payload(index).len() as u64).sum();
    assert_eq!(stats.bytes_written, frames);
    assert_eq!(stats.group_commits, 2);
    // + segment creation: file fsync and directory fsync.
    assert_eq!(stats.fsyncs, 4);
    assert_holds(&wal, 1..=4);
}
