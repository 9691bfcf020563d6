//! Group commit: concurrent appends share fdatasyncs, and nobody is acknowledged before the
//! sync that covers their records.

mod common;

use std::collections::BTreeSet;
use std::fs::File;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex, mpsc};
use std::thread;

use bytes::Bytes;
use common::*;
use strata_wal::{FsyncFailure, SyncHook, WalOptions};

const APPENDERS: usize = 64;
const APPENDS_PER_APPENDER: u64 = 10;

#[test]
fn concurrent_appenders_share_fdatasyncs() {
    // The first group commit waits until every appender has made its first append. Those
    // appends are then all pending together, so they are covered by at most two syncs, which
    // makes "fewer syncs than appends" a certainty rather than a likelihood.
    let all_appended_once = Arc::new(Barrier::new(APPENDERS + 1));
    let first_sync = Arc::new(AtomicBool::new(true));
    let hook: SyncHook = {
        let all_appended_once = Arc::clone(&all_appended_once);
        let first_sync = Arc::clone(&first_sync);
        Arc::new(move |file: &File| {
            if first_sync.swap(false, Ordering::SeqCst) {
                all_appended_once.wait();
            }
            file.sync_data()
        })
    };
    let dir = tempfile::tempdir().unwrap();
    let options = WalOptions { sync_hook: Some(hook), on_fsync_error: FsyncFailure::Poison, ..WalOptions::default() };
    let (wal, _) = open(dir.path(), options);
    // The next free index; appenders take it under this lock so indexes stay consecutive.
    let next_index = Arc::new(Mutex::new(1u64));

    let threads: Vec<_> = (0..APPENDERS)
        .map(|appender| {
            let wal = wal.clone();
            let next_index = Arc::clone(&next_index);
            let all_appended_once = Arc::clone(&all_appended_once);
            thread::spawn(move || {
                let mut acked = 0;
                for round in 0..APPENDS_PER_APPENDER {
                    let (sender, receiver) = mpsc::channel();
                    {
                        let mut next = next_index.lock().unwrap();
                        let body = Bytes::from(format!("appender {appender} round {round}"));
                        wal.append(vec![(*next, body)], Box::new(move |result| sender.send(result).unwrap())).unwrap();
                        *next += 1;
                    }
                    if round == 0 {
                        all_appended_once.wait();
                    }
                    recv_or_fail(&receiver, "acknowledgement").unwrap();
                    acked += 1;
                }
                acked
            })
        })
        .collect();
    let acked: u64 = threads.into_iter().map(|t| t.join().unwrap()).sum();

    let total = APPENDERS as u64 * APPENDS_PER_APPENDER;
    assert_eq!(acked, total);
    let stats = wal.stats();
    assert_eq!(stats.appends, total);
    assert!(stats.group_commits < stats.appends, "{stats:?}");
    assert!(stats.fsyncs < stats.appends, "{stats:?}");

    // Every append is stored exactly once.
    let stored = wal.read_range(1, total + 1).unwrap();
    assert_eq!(stored.len() as u64, total);
    let bodies: BTreeSet<Bytes> = stored.into_iter().map(|(_, body)| body).collect();
    assert_eq!(bodies.len() as u64, total);
    assert!(bodies.contains(&Bytes::from("appender 63 round 9")));
}

/// A sync hook that announces each sync and blocks it until released.
struct GatedSync {
    entered: mpsc::Receiver<()>,
    release: mpsc::Sender<()>,
}

fn gated_sync_hook() -> (SyncHook, GatedSync) {
    let (entered_sender, entered) = mpsc::channel();
    let (release, release_receiver) = mpsc::channel::<()>();
    let entered_sender = Mutex::new(entered_sender);
    let release_receiver = Mutex::new(release_receiver);
    let hook: SyncHook = Arc::new(move |file: &File| {
        let _ = entered_sender.lock().unwrap().send(());
        // A dropped gate (test over or failed) releases every sync.
        let _ = release_receiver.lock().unwrap().recv();
        file.sync_data()
    });
    (hook, GatedSync { entered, release })
}

#[test]
fn nobody_is_acknowledged_before_the_sync_covering_them() {
    let (hook, gate) = gated_sync_hook();
    let dir = tempfile::tempdir().unwrap();
    let options = WalOptions { sync_hook: Some(hook), on_fsync_error: FsyncFailure::Poison, ..WalOptions::default() };
    let (wal, _) = open(dir.path(), options);
    // Re-bound after `wal` so that it is dropped first, releasing a blocked sync, if the test
    // fails (dropping `wal` waits for the sync thread).
    let gate = gate;
    let (acked_sender, acked) = mpsc::channel::<&'static str>();
    let ack = |name: &'static str| -> strata_wal::DurableCallback {
        let acked_sender = acked_sender.clone();
        Box::new(move |result| {
            result.unwrap();
            acked_sender.send(name).unwrap();
        })
    };

    wal.append(records(1..3), ack("a")).unwrap();
    recv_or_fail(&gate.entered, "sync start"); // sync 1 started; it covers "a"
    // Written and readable, but not durable: not acknowledged.
    assert_eq!(wal.read(2).unwrap(), Some(payload(2)));
    wal.append(records(3..4), ack("b")).unwrap();
    wal.append(records(4..6), ack("c")).unwrap();
    assert!(acked.try_recv().is_err(), "acknowledged before any sync completed");

    gate.release.send(()).unwrap(); // sync 1 completes
    assert_eq!(recv_or_fail(&acked, "acknowledgement"), "a");
    // "b" and "c" were written after sync 1 started: they wait for sync 2.
    recv_or_fail(&gate.entered, "sync start");
    assert!(acked.try_recv().is_err(), "acknowledged by a sync that started before the write");

    gate.release.send(()).unwrap(); // sync 2 completes: one sync for both
    let mut second: Vec<_> = vec![recv_or_fail(&acked, "acknowledgement"), recv_or_fail(&acked, "acknowledgement")];
    second.sort_unstable();
    assert_eq!(second, ["b", "c"]);
    assert_eq!(wal.stats().group_commits, 2);
    assert_eq!(wal.stats().appends, 3);
    drop(gate);
}

#[test]
fn close_flushes_pending_callbacks() {
    let (hook, gate) = gated_sync_hook();
    let dir = tempfile::tempdir().unwrap();
    let options = WalOptions { sync_hook: Some(hook), on_fsync_error: FsyncFailure::Poison, ..WalOptions::default() };
    let (wal, _) = open(dir.path(), options);
    let gate = gate; // dropped before `wal`: see above
    let (acked_sender, acked) = mpsc::channel();
    for index in 1..=3u64 {
        let acked_sender = acked_sender.clone();
        wal.append(records(index..index + 1), Box::new(move |result| acked_sender.send((index, result)).unwrap()))
            .unwrap();
        if index == 1 {
            recv_or_fail(&gate.entered, "sync start");
        }
    }
    // Close from another thread (it waits for the sync thread), then let the syncs run.
    let closer = {
        let wal = wal.clone();
        thread::spawn(move || wal.close())
    };
    gate.release.send(()).unwrap();
    recv_or_fail(&gate.entered, "sync start");
    gate.release.send(()).unwrap();
    closer.join().unwrap();
    let mut results: Vec<_> = acked.try_iter().collect();
    results.sort_by_key(|(index, _)| *index);
    assert_eq!(results.len(), 3);
    assert!(results.iter().all(|(_, result)| result.is_ok()), "{results:?}");
}
