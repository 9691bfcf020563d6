//! fsync failures: poison mode fails the waiting appends and every later call; abort mode
//! aborts the process. A failed sync is never retried.

mod common;

use std::fs::File;
use std::io;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use common::*;
use strata_wal::{FsyncFailure, SyncHook, Wal, WalError, WalOptions};

#[test]
fn poison_mode_fails_the_covered_appends_and_every_later_call() {
    let dir = tempfile::tempdir().unwrap();
    let calls = Arc::new(AtomicU64::new(0));
    let (entered_sender, entered) = mpsc::channel();
    let (release, release_receiver) = mpsc::channel::<()>();
    let (entered_sender, release_receiver) = (Mutex::new(entered_sender), Mutex::new(release_receiver));
    let hook: SyncHook = {
        let calls = Arc::clone(&calls);
        Arc::new(move |_file: &File| {
            calls.fetch_add(1, Ordering::SeqCst);
            let _ = entered_sender.lock().unwrap().send(());
            let _ = release_receiver.lock().unwrap().recv();
            Err(io::Error::other("injected EIO"))
        })
    };
    let options = WalOptions { sync_hook: Some(hook), on_fsync_error: FsyncFailure::Poison, ..WalOptions::default() };
    let (wal, _) = open(dir.path(), options);
    // Re-bound after `wal` so that it is dropped first, releasing a blocked sync, if the test
    // fails (dropping `wal` waits for the sync thread).
    let release = release;

    let (results_sender, results) = mpsc::channel();
    let first = results_sender.clone();
    wal.append(records(1..3), Box::new(move |result| first.send(("first", result)).unwrap())).unwrap();
    recv_or_fail(&entered, "sync start");
    // Queued while the failing sync runs: covered by no successful sync.
    let second = results_sender.clone();
    wal.append(records(3..4), Box::new(move |result| second.send(("second", result)).unwrap())).unwrap();
    release.send(()).unwrap();

    let (name, result) = recv_or_fail(&results, "callback");
    assert_eq!(name, "first");
    assert!(matches!(result, Err(WalError::Io { op: "fdatasync", .. })), "{result:?}");
    let (name, result) = recv_or_fail(&results, "callback");
    assert_eq!(name, "second");
    assert!(matches!(result, Err(WalError::Poisoned)), "{result:?}");
    // Never retried: the second round did not call sync again.
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    assert!(matches!(wal.append(records(4..5), Box::new(|_| {})), Err(WalError::Poisoned)));
    assert!(matches!(wal.read(1), Err(WalError::Poisoned)));
    assert!(matches!(wal.read_range(1, 3), Err(WalError::Poisoned)));
    assert!(matches!(wal.truncate_from(2), Err(WalError::Poisoned)));
    assert!(matches!(wal.seal_active(), Err(WalError::Poisoned)));
    assert!(matches!(wal.remove_sealed_through(1), Err(WalError::Poisoned)));
    drop(release);
    drop(wal);

    // Reopening recovers whatever reached the disk.
    let (wal, _) = open(dir.path(), WalOptions::default());
    assert_holds(&wal, 1..=3);
}

/// Environment variable telling the re-executed test binary to act as the child.
const ABORT_CHILD_DIR: &str = "STRATA_WAL_ABORT_CHILD_DIR";

/// In the child process: open a WAL whose syncs fail in abort mode and append. The process
/// must abort before the append is acknowledged. In a normal test run: does nothing.
#[test]
fn abort_mode_child() {
    let Ok(dir) = std::env::var(ABORT_CHILD_DIR) else {
        return;
    };
    let hook: SyncHook = Arc::new(|_file: &File| Err(io::Error::other("injected EIO")));
    let options = WalOptions { sync_hook: Some(hook), on_fsync_error: FsyncFailure::Abort, ..WalOptions::default() };
    let (wal, _) = Wal::open(dir.as_ref(), options, None).unwrap();
    let result = append_wait(&wal, records(1..2));
    // Unreachable if the WAL aborted.
    println!("CHILD SURVIVED: {result:?}");
    std::process::exit(0);
}

#[test]
fn abort_mode_aborts_the_process() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    let output = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "abort_mode_child", "--nocapture", "--test-threads=1"])
        .env(ABORT_CHILD_DIR, dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(!stdout.contains("CHILD SURVIVED"), "{stdout}");
    assert_eq!(output.status.signal(), Some(6 /* SIGABRT */), "{:?}\n{stdout}", output.status);
}
