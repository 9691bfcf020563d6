//! What goes wrong inside a storage node, with the detail an operator needs to act on it: the
//! shard and log index, the file, the object key, the peer's or the bucket's own error.
//!
//! [`NodeError`] is mapped to the public [`StrataError`] in one place (its `From`): the detail is
//! logged there, and the caller is told only the variant's `what`, a text written in this crate
//! (`&'static str`, so no runtime value can reach it). Addresses, paths, object keys and peers'
//! errors therefore stay in the node's log.

use strata_common::{ErrorKind, StrataError};

/// An internal failure of a storage node. `what` says, in fixed words, what failed; `detail`
/// carries everything else and is only logged.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// Object storage did not answer or refused; a retry may succeed.
    #[error("object storage: {what}: {detail}")]
    Bucket { what: &'static str, detail: String },
    /// A local file (WAL, backfill, slice or segment file) could not be read, written or removed.
    #[error("local file: {what}: {detail}")]
    LocalFile { what: &'static str, detail: String },
    /// Stored bytes (local, tiered, or sent by a peer) are damaged or say something else than
    /// what points at them.
    #[error("damaged data: {what}: {detail}")]
    Damaged { what: &'static str, detail: String },
    /// What was asked for is neither in this node's log nor in the bucket; another replica may
    /// hold it (callers fall back to peers, so this is logged quietly).
    #[error("not held here: {what}: {detail}")]
    NotHeld { what: &'static str, detail: String },
    /// The shard's Raft group could not take a proposal or a membership change now.
    #[error("shard unavailable: {what}: {detail}")]
    ShardUnavailable { what: &'static str, detail: String },
    /// A state machine answered something the command cannot answer, or a task died: a bug.
    #[error("bug: {what}: {detail}")]
    Bug { what: &'static str, detail: String },
}

impl NodeError {
    pub fn bucket(what: &'static str, detail: impl std::fmt::Display) -> Self {
        Self::Bucket { what, detail: detail.to_string() }
    }

    pub fn local_file(what: &'static str, detail: impl std::fmt::Display) -> Self {
        Self::LocalFile { what, detail: detail.to_string() }
    }

    pub fn damaged(what: &'static str, detail: impl std::fmt::Display) -> Self {
        Self::Damaged { what, detail: detail.to_string() }
    }

    pub fn not_held(what: &'static str, detail: impl std::fmt::Display) -> Self {
        Self::NotHeld { what, detail: detail.to_string() }
    }

    pub fn shard_unavailable(what: &'static str, detail: impl std::fmt::Display) -> Self {
        Self::ShardUnavailable { what, detail: detail.to_string() }
    }

    pub fn bug(what: &'static str, detail: impl std::fmt::Display) -> Self {
        Self::Bug { what, detail: detail.to_string() }
    }

    /// The public kind: what the caller can do about it (retry, or report).
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Bucket { .. } | Self::ShardUnavailable { .. } => ErrorKind::Unavailable,
            Self::LocalFile { .. } | Self::Damaged { .. } | Self::NotHeld { .. } | Self::Bug { .. } => {
                ErrorKind::Internal
            }
        }
    }

    fn what(&self) -> &'static str {
        match self {
            Self::Bucket { what, .. }
            | Self::LocalFile { what, .. }
            | Self::Damaged { what, .. }
            | Self::NotHeld { what, .. }
            | Self::ShardUnavailable { what, .. }
            | Self::Bug { what, .. } => what,
        }
    }
}

impl From<NodeError> for StrataError {
    fn from(e: NodeError) -> Self {
        let kind = e.kind();
        match &e {
            NodeError::NotHeld { .. } => tracing::debug!(error = %e, "storage node error"),
            NodeError::Bucket { .. } | NodeError::ShardUnavailable { .. } => {
                tracing::warn!(error = %e, "storage node error")
            }
            NodeError::LocalFile { .. } | NodeError::Damaged { .. } | NodeError::Bug { .. } => {
                tracing::error!(error = %e, "storage node error")
            }
        }
        StrataError::concealed(kind, e.what())
    }
}

impl From<NodeError> for tonic::Status {
    fn from(e: NodeError) -> Self {
        StrataError::from(e).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_messages_hold_none_of_the_detail() {
        let detail = "peer 10.1.2.3:7443 said: open /var/lib/strata/wal/00000042.seg: key segments/7/x.seg";
        let errors = [
            NodeError::bucket("reading a tiered segment", detail),
            NodeError::local_file("writing a backfill file", detail),
            NodeError::damaged("a stored record is damaged", detail),
            NodeError::not_held("a message could not be found in the log", detail),
            NodeError::shard_unavailable("the shard did not take the proposal", detail),
            NodeError::bug("unexpected answer to a send", detail),
        ];
        for e in errors {
            let kind = e.kind();
            let what = e.what();
            let public = StrataError::from(e);
            assert_eq!(public.kind, kind);
            assert!(public.message.starts_with(what), "{}", public.message);
            for secret in ["10.1.2.3", "7443", "/var/lib", "segments/7", "peer"] {
                assert!(!public.message.contains(secret), "'{secret}' reached the caller: {}", public.message);
            }
        }
    }
}
