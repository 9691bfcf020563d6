//! Copies of the metadata quorum's snapshots in object storage: the catalog survives losing
//! every member's disk.
//!
//! The leader uploads its latest snapshot whenever it is newer than the last one it uploaded,
//! as `metadata/snapshots/{last index:020}-{term:020}.snap` (layout in [`encode_backup`]), and
//! keeps the newest [`BACKUPS_KEPT`]. Keys sort by log index, so the
//! newest is the last one listed. Followers upload nothing. [`restore_newest`] seeds a new
//! member from the newest copy when every member's disk is gone.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::error::MemberError;
use futures::TryStreamExt;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt};
use openraft::alias::{SnapshotMetaOf, VoteOf};
use openraft::{BasicNode, SnapshotMeta};
use serde::{Deserialize, Serialize};
use strata_common::error::StrataError;
use strata_common::format::{
    FormatGeneration, LEGACY_GENERATION, invalid_data, postcard_exact, postcard_into, unknown_version,
};
use strata_raft::persisted::{LogIdV1, StoredMembershipV1};
use tokio_util::sync::CancellationToken;

use crate::MetaRaftConfig;
use crate::catalog::Catalog;
use crate::server::{MemberSettings, MetadataNode};
use strata_raft::group::seed_group;

/// Where the copies go in the bucket.
pub const BACKUP_PREFIX: &str = "metadata/snapshots";
/// How many copies are kept.
pub const BACKUPS_KEPT: usize = 3;

/// A stored copy: the snapshot's metadata and its bytes (the encoded catalog).
pub type Backup = (SnapshotMetaOf<MetaRaftConfig>, Vec<u8>);

/// Format version of the copies this release writes (see `docs/formats.md`). Copies written
/// before versions start with a postcard option tag (0 or 1), so versions start at 2.
const BACKUP_FORMAT_VERSION: u8 = 2;

/// The snapshot's metadata in a copy, in the persisted forms of openraft's types.
#[derive(Serialize, Deserialize)]
struct BackupHeaderV2 {
    last_log_id: Option<LogIdV1>,
    last_membership: StoredMembershipV1,
    /// Always empty: openraft 0.9's snapshot id, whose slot its serde layout (what legacy copies
    /// hold) kept.
    reserved_snapshot_id: String,
}

/// Version 2: the version byte, postcard of a [`BackupHeaderV2`], then the snapshot's bytes (a
/// stored snapshot, versioned itself) to the end. The legacy layout is postcard of the same header
/// followed by the snapshot's bytes as a length-prefixed postcard byte string.
///
/// A cluster still at format generation 0 writes the legacy layout, which releases from before
/// versions restore from.
fn encode_backup(backup: &Backup, generation: FormatGeneration) -> std::io::Result<Vec<u8>> {
    let (meta, snapshot) = backup;
    let header = BackupHeaderV2 {
        last_log_id: meta.last_log_id.as_ref().map(LogIdV1::from),
        last_membership: (&meta.last_membership).into(),
        reserved_snapshot_id: String::new(),
    };
    let legacy = generation == LEGACY_GENERATION;
    let mut out = if legacy { Vec::new() } else { vec![BACKUP_FORMAT_VERSION] };
    postcard_into(&header, &mut out)?;
    if legacy {
        postcard_into(snapshot, &mut out)?;
    } else {
        out.extend_from_slice(snapshot);
    }
    Ok(out)
}

fn decode_backup(bytes: &[u8]) -> std::io::Result<Backup> {
    let (header, snapshot) = match bytes.first() {
        Some(&BACKUP_FORMAT_VERSION) => {
            let (header, rest): (BackupHeaderV2, &[u8]) =
                postcard::take_from_bytes(&bytes[1..]).map_err(|e| invalid_data(e.to_string()))?;
            (header, rest.to_vec())
        }
        Some(0 | 1) => {
            let (header, rest): (BackupHeaderV2, &[u8]) =
                postcard::take_from_bytes(bytes).map_err(|e| invalid_data(e.to_string()))?;
            (header, postcard_exact::<Vec<u8>>(rest)?)
        }
        Some(&version) => return Err(unknown_version("metadata backup", version)),
        None => return Err(invalid_data("empty metadata backup")),
    };
    let meta = SnapshotMeta {
        last_log_id: header.last_log_id.map(Into::into),
        last_membership: header.last_membership.try_into()?,
    };
    Ok((meta, snapshot))
}

/// Uploads the latest snapshot if this member leads and it is not in the bucket yet; answers
/// its key, or `None` when there was nothing to do.
pub async fn backup_once(node: &MetadataNode, store: &dyn ObjectStore) -> Result<Option<String>, StrataError> {
    if !node.is_leader() {
        return Ok(None);
    }
    let Some(snapshot) = node.latest_snapshot().await? else { return Ok(None) };
    let Some(last) = snapshot.meta.last_log_id else { return Ok(None) };
    let key = format!("{BACKUP_PREFIX}/{:020}-{:020}.snap", last.index, last.leader_id.term);
    let keys = list(store).await?;
    if keys.contains(&key) {
        return Ok(None);
    }
    let bytes = encode_backup(&(snapshot.meta, snapshot.snapshot), node.format.writing())
        .map_err(|e| MemberError::bug("encoding a metadata backup failed", e))?;
    store
        .put(&ObjectPath::from(key.as_str()), bytes.into())
        .await
        .map_err(|e| MemberError::bucket("uploading a metadata backup failed", format_args!("{key}: {e}")))?;
    let mut keys = keys;
    keys.push(key.clone());
    keys.sort();
    for old in keys.iter().take(keys.len().saturating_sub(BACKUPS_KEPT)) {
        if let Err(e) = store.delete(&ObjectPath::from(old.as_str())).await {
            tracing::warn!(key = old, error = %e, "deleting an old metadata backup failed");
        }
    }
    tracing::info!(key, "metadata snapshot copied to object storage");
    Ok(Some(key))
}

/// The keys of the stored copies, oldest first.
pub async fn list(store: &dyn ObjectStore) -> Result<Vec<String>, StrataError> {
    let prefix = ObjectPath::from(BACKUP_PREFIX);
    let objects: Vec<_> = store
        .list(Some(&prefix))
        .try_collect()
        .await
        .map_err(|e| MemberError::bucket("listing metadata backups failed", e))?;
    let mut keys: Vec<String> = objects.into_iter().map(|o| o.location.to_string()).collect();
    keys.sort();
    Ok(keys)
}

/// Reads a stored copy.
pub async fn read(store: &dyn ObjectStore, key: &str) -> Result<Backup, StrataError> {
    let failed =
        |e: object_store::Error| MemberError::bucket("reading a metadata backup failed", format_args!("{key}: {e}"));
    let bytes = store.get(&ObjectPath::from(key)).await.map_err(failed)?.bytes().await.map_err(failed)?;
    Ok(decode_backup(&bytes)
        .map_err(|e| MemberError::damaged("a metadata backup is damaged", format_args!("{key}: {e}")))?)
}

/// Copies snapshots every `interval` until `cancel`.
pub async fn run(node: Arc<MetadataNode>, store: Arc<dyn ObjectStore>, interval: Duration, cancel: CancellationToken) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            () = node.clock.sleep(interval) => {}
        }
        if let Err(e) = backup_once(&node, store.as_ref()).await {
            tracing::warn!(error = %e, "metadata backup failed; will retry");
        }
    }
}

/// Seeds a new member's directory from the newest copy in the bucket, for a quorum that lost
/// every member's disk: the member starts from that snapshot with `member`'s list as voters; the
/// other members start with empty directories and catch up from it once it leads. What the
/// quorum committed after that copy is lost (at most one `backup_interval_s` of catalog
/// changes). Refuses a directory that holds a replica. Answers the copy's key and last log index.
pub async fn restore_newest(
    store: &dyn ObjectStore,
    dir: &Path,
    member: &MemberSettings,
) -> Result<(String, u64), StrataError> {
    let keys = list(store).await?;
    let key = keys.last().ok_or_else(|| StrataError::invalid("the bucket holds no metadata snapshot copy"))?;
    let (_, snapshot) = read(store, key).await?;
    let members = member.members.iter().map(|(&id, addr)| (id, BasicNode { addr: addr.clone() })).collect();
    let node_id = member.node_id;
    let last = seed_group::<MetaRaftConfig, Catalog>(dir, &snapshot, members, |last| {
        VoteOf::<MetaRaftConfig>::new(last.leader_id.term, node_id)
    })
    .map_err(|e| StrataError::invalid(format!("cannot restore into {}: {e}", dir.display())))?;
    tracing::info!(key, index = last.index, "metadata restored from a snapshot copy");
    Ok((key.clone(), last.index))
}

#[cfg(test)]
mod tests {
    use strata_common::format::NEWEST_GENERATION;

    use super::*;

    /// A copy written before versions (postcard of the meta and the bytes) still reads.
    #[test]
    fn legacy_and_current_copies_decode() {
        let membership = openraft::Membership::new(
            vec![[1u64].into()],
            std::collections::BTreeMap::from([(1u64, BasicNode { addr: "a:1".into() })]),
        )
        .expect("membership");
        let log_id = openraft::LogId::new(openraft::impls::leader_id_adv::LeaderId { term: 2, node_id: 1 }, 7);
        let meta: SnapshotMetaOf<MetaRaftConfig> = SnapshotMeta {
            last_log_id: Some(log_id),
            last_membership: openraft::StoredMembership::new(Some(log_id), membership),
        };
        let backup = (meta, vec![3u8, 1, 2, 3]);
        let legacy = postcard::to_allocvec(&backup).expect("legacy encoding");
        assert!(matches!(legacy.first(), Some(0 | 1)));
        assert_eq!(decode_backup(&legacy).expect("legacy"), backup);
        assert_eq!(encode_backup(&backup, LEGACY_GENERATION).expect("encode legacy"), legacy);
        let current = encode_backup(&backup, NEWEST_GENERATION).expect("encode");
        assert_eq!(current[0], BACKUP_FORMAT_VERSION);
        assert_eq!(decode_backup(&current).expect("current"), backup);
        assert!(decode_backup(&[9, 0]).is_err());
    }
}
