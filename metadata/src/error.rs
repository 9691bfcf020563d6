//! What goes wrong inside a metadata member, with the detail an operator needs: the Raft error,
//! the peer and its address, the object key, the KEK.
//!
//! [`MemberError`] is mapped to the public [`StrataError`] in one place (its `From`): the detail
//! is logged there and the caller is told only the variant's `what`, fixed words of this crate
//! (`&'static str`, so no runtime value reaches it). Refusals of an operator's own input (an
//! unknown node, a bad endpoint) are not internal: they stay `StrataError::invalid` and name what
//! was given.

use strata_common::{ErrorKind, StrataError};

/// An internal failure of a metadata member. `what` says, in fixed words, what failed; `detail`
/// carries everything else and is only logged.
#[derive(Debug, thiserror::Error)]
pub enum MemberError {
    /// Object storage (metadata backups) did not answer or refused; a retry may succeed.
    #[error("object storage: {what}: {detail}")]
    Bucket { what: &'static str, detail: String },
    /// The Raft group, another member or a storage node could not do its part now.
    #[error("quorum unavailable: {what}: {detail}")]
    Quorum { what: &'static str, detail: String },
    /// Stored bytes (a backup, a sealed secret) are damaged, or a KEK they need is missing.
    #[error("damaged data: {what}: {detail}")]
    Damaged { what: &'static str, detail: String },
    /// An answer the command cannot give, or an encoder that failed: a bug.
    #[error("bug: {what}: {detail}")]
    Bug { what: &'static str, detail: String },
}

impl MemberError {
    pub fn bucket(what: &'static str, detail: impl std::fmt::Display) -> Self {
        Self::Bucket { what, detail: detail.to_string() }
    }

    pub fn quorum(what: &'static str, detail: impl std::fmt::Display) -> Self {
        Self::Quorum { what, detail: detail.to_string() }
    }

    pub fn damaged(what: &'static str, detail: impl std::fmt::Display) -> Self {
        Self::Damaged { what, detail: detail.to_string() }
    }

    pub fn bug(what: &'static str, detail: impl std::fmt::Display) -> Self {
        Self::Bug { what, detail: detail.to_string() }
    }

    /// The public kind: what the caller can do about it (retry, or report).
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::Bucket { .. } | Self::Quorum { .. } => ErrorKind::Unavailable,
            Self::Damaged { .. } | Self::Bug { .. } => ErrorKind::Internal,
        }
    }

    fn what(&self) -> &'static str {
        match self {
            Self::Bucket { what, .. }
            | Self::Quorum { what, .. }
            | Self::Damaged { what, .. }
            | Self::Bug { what, .. } => what,
        }
    }
}

impl From<MemberError> for StrataError {
    fn from(e: MemberError) -> Self {
        let kind = e.kind();
        if kind == ErrorKind::Unavailable {
            tracing::warn!(error = %e, "metadata member error");
        } else {
            tracing::error!(error = %e, "metadata member error");
        }
        StrataError::concealed(kind, e.what())
    }
}

impl From<MemberError> for tonic::Status {
    fn from(e: MemberError) -> Self {
        StrataError::from(e).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn public_messages_hold_none_of_the_detail() {
        let detail = "member 3 at https://10.1.2.3:7001 said: KEK 'kek-2026' missing; key backups/meta/x.snap";
        let errors = [
            MemberError::bucket("uploading a metadata backup failed", detail),
            MemberError::quorum("adding a metadata learner failed", detail),
            MemberError::damaged("a metadata backup is damaged", detail),
            MemberError::bug("unexpected metadata response", detail),
        ];
        for e in errors {
            let kind = e.kind();
            let what = e.what();
            let public = StrataError::from(e);
            assert_eq!(public.kind, kind);
            assert!(public.message.starts_with(what), "{}", public.message);
            for secret in ["10.1.2.3", "7001", "kek-2026", "backups/meta", "member 3"] {
                assert!(!public.message.contains(secret), "'{secret}' reached the caller: {}", public.message);
            }
        }
    }
}
