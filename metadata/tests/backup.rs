//! Copies of the metadata snapshots in object storage (a local-directory store here): the
//! leader uploads a snapshot once, a newer one again, keeps the newest three, and each copy
//! holds the snapshot it was made from.

#![allow(clippy::disallowed_methods)] // a test waits and measures in real time

use std::sync::Arc;

use object_store::local::LocalFileSystem;
use strata_common::format::{FormatGate, NEWEST_GENERATION};
use strata_common::{Clock, SystemClock};
use strata_metadata::{MetadataNode, backup};
use strata_tls::Role;
use strata_tls::pki::test_credentials;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_copies_each_new_snapshot_and_keeps_the_newest_three() {
    let root = tempfile::tempdir().expect("tempdir");
    let bucket = root.path().join("bucket");
    std::fs::create_dir_all(&bucket).expect("bucket dir");
    let store = LocalFileSystem::new_with_prefix(&bucket).expect("local store");
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let node = MetadataNode::open(
        &root.path().join("metadata"),
        "http://127.0.0.1:9",
        clock,
        FormatGate::new(NEWEST_GENERATION),
        test_credentials(Role::Metadata, "1"),
    )
    .await
    .expect("open");

    // No snapshot yet: nothing to copy.
    assert_eq!(backup::backup_once(&node, &store).await.expect("backup"), None);

    let mut keys = Vec::new();
    let mut previous_index = None;
    for round in 0..5 {
        let tenant = strata_metadata::catalog::MetaCommand::EnsureTenant { tenant: format!("t{round}"), now_ms: 1 };
        node.propose(None, tenant).await.expect("tenant");
        node.snapshot_now().await.expect("snapshot");
        // The snapshot is built in the background: wait until it holds this round's queue.
        let snapshot = loop {
            let snapshot = node.latest_snapshot().await.expect("snapshot");
            let index = snapshot.as_ref().and_then(|s| s.meta.last_log_id).map(|l| l.index);
            if let Some(snapshot) = snapshot.filter(|_| index > previous_index) {
                previous_index = index;
                break snapshot;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        };
        let key = backup::backup_once(&node, &store).await.expect("backup").expect("a new snapshot is copied");
        // The same snapshot again: nothing new.
        assert_eq!(backup::backup_once(&node, &store).await.expect("backup"), None);
        let (meta, bytes) = backup::read(&store, &key).await.expect("read the copy");
        assert_eq!(meta, snapshot.meta);
        assert_eq!(bytes, snapshot.snapshot, "the copy holds the snapshot's bytes");
        keys.push(key);
    }
    let stored = backup::list(&store).await.expect("list");
    assert_eq!(stored, keys[keys.len() - backup::BACKUPS_KEPT..], "the newest three remain");
    node.shutdown().await;
}
