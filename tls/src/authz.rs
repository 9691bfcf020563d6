//! Which roles may call which RPC: the role table of the internal plane, and the tower layer
//! that enforces it on every internal listener.
//!
//! The table ([`RPC_ROLES`]) has one row per RPC of each listener; an RPC without a row, or a
//! caller whose role is not in its row, answers `PERMISSION_DENIED` before the service sees the
//! request. The caller's role is the one its certificate names ([`crate::Peer`]), established by
//! the TLS handshake of its connection. `docs/security.md` shows the same table.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::Status;
use tower::{Layer, Service};

use crate::identity::Role::{self, Autoscaler, Billing, Metadata, Operator, Proxy, Storage};
use crate::server::Peer;

/// The kind of process a listener belongs to (the Raft transport is served by both).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Listener {
    Metadata,
    Storage,
}

/// One row per RPC: the listener, the gRPC path, the roles that may call it.
pub const RPC_ROLES: &[(Listener, &str, &[Role])] = &[
    // The metadata quorum: the catalog of tenants and queues, for the API front doors (and
    // billing, which creates and reads the system tenant's metering queue).
    (Listener::Metadata, "/strata.v1.Metadata/EnsureTenant", &[Proxy, Billing, Operator]),
    (Listener::Metadata, "/strata.v1.Metadata/CreateQueue", &[Proxy, Billing, Operator]),
    (Listener::Metadata, "/strata.v1.Metadata/GetQueue", &[Proxy, Billing, Operator]),
    (Listener::Metadata, "/strata.v1.Metadata/ListQueues", &[Proxy, Operator]),
    (Listener::Metadata, "/strata.v1.Metadata/ListTenants", &[Proxy, Operator]),
    (Listener::Metadata, "/strata.v1.Metadata/DeleteQueue", &[Proxy, Operator]),
    // A deletion's second step: the deleting proxy, or the shard's leader resuming it.
    (Listener::Metadata, "/strata.v1.Metadata/QueueDropped", &[Proxy, Storage, Operator]),
    (Listener::Metadata, "/strata.v1.Metadata/SetQueueConfig", &[Proxy, Operator]),
    (Listener::Metadata, "/strata.v1.Metadata/TagQueue", &[Proxy, Operator]),
    (Listener::Metadata, "/strata.v1.Metadata/UntagQueue", &[Proxy, Operator]),
    // Storage nodes' own records: only storage nodes write them (operators may read segments).
    (Listener::Metadata, "/strata.v1.Metadata/RegisterStorageNode", &[Storage]),
    (Listener::Metadata, "/strata.v1.Metadata/Heartbeat", &[Storage]),
    (Listener::Metadata, "/strata.v1.Metadata/ClaimShardWriter", &[Storage]),
    (Listener::Metadata, "/strata.v1.Metadata/ConfirmReplicas", &[Storage]),
    (Listener::Metadata, "/strata.v1.Metadata/CommitSegment", &[Storage]),
    (Listener::Metadata, "/strata.v1.Metadata/ListSegments", &[Storage, Operator]),
    (Listener::Metadata, "/strata.v1.Metadata/RemoveSegments", &[Storage]),
    // Placement: read by whoever routes, changed by operators and the autoscaler.
    (Listener::Metadata, "/strata.v1.Metadata/GetShard", &[Proxy, Storage, Billing, Autoscaler, Operator]),
    (Listener::Metadata, "/strata.v1.Metadata/ListStorageNodes", &[Proxy, Billing, Autoscaler, Operator]),
    (Listener::Metadata, "/strata.v1.Metadata/MoveReplica", &[Proxy, Autoscaler, Operator]),
    (Listener::Metadata, "/strata.v1.Metadata/AddShard", &[Proxy, Autoscaler, Operator]),
    (Listener::Metadata, "/strata.v1.Metadata/StartQueueMove", &[Proxy, Autoscaler, Operator]),
    // Storage nodes sweep adoptions left over by ended moves.
    (Listener::Metadata, "/strata.v1.Metadata/ListQueueMoves", &[Proxy, Storage, Autoscaler, Operator]),
    (Listener::Metadata, "/strata.v1.Metadata/LocateQueue", &[Storage]),
    (Listener::Metadata, "/strata.v1.Metadata/DrainNode", &[Proxy, Autoscaler, Operator]),
    (Listener::Metadata, "/strata.v1.Metadata/ListShardQueues", &[Proxy, Autoscaler, Operator]),
    // A move's driver is its source shard's leader.
    (Listener::Metadata, "/strata.v1.Metadata/DecideQueueMove", &[Storage]),
    (Listener::Metadata, "/strata.v1.Metadata/FinishQueueMove", &[Storage]),
    // Every role reads it for its readiness (the metadata quorum reachable).
    (Listener::Metadata, "/strata.v1.Metadata/ListMetadataMembers", &[Proxy, Storage, Billing, Autoscaler, Operator]),
    (Listener::Metadata, "/strata.v1.Metadata/ChangeMetadataMembers", &[Proxy, Operator]),
    // Access keys: secrets are only ever looked up by those who verify signatures.
    (Listener::Metadata, "/strata.v1.Metadata/CreateAccessKey", &[Proxy, Operator]),
    (Listener::Metadata, "/strata.v1.Metadata/RotateAccessKey", &[Proxy, Operator]),
    (Listener::Metadata, "/strata.v1.Metadata/RevokeAccessKey", &[Proxy, Operator]),
    (Listener::Metadata, "/strata.v1.Metadata/ListAccessKeys", &[Proxy, Operator]),
    (Listener::Metadata, "/strata.v1.Metadata/LookupAccessKey", &[Proxy, Billing]),
    // Limits: set by operators (through the proxy's admin API), capped by billing.
    (Listener::Metadata, "/strata.v1.Metadata/SetLimitPlan", &[Proxy, Operator]),
    (Listener::Metadata, "/strata.v1.Metadata/ListLimitPlans", &[Proxy, Operator]),
    (Listener::Metadata, "/strata.v1.Metadata/SetTenantLimits", &[Proxy, Operator]),
    (Listener::Metadata, "/strata.v1.Metadata/SetTenantCapped", &[Billing, Operator]),
    (Listener::Metadata, "/strata.v1.Metadata/GetTenantLimits", &[Proxy, Billing, Operator]),
    // The metadata quorum's own Raft messages; the leader asks members which formats they read.
    (Listener::Metadata, "/strata.v1.RaftTransport/AppendEntries", &[Metadata]),
    (Listener::Metadata, "/strata.v1.RaftTransport/Vote", &[Metadata]),
    (Listener::Metadata, "/strata.v1.RaftTransport/InstallSnapshot", &[Metadata]),
    (Listener::Metadata, "/strata.v1.RaftTransport/TransferLeader", &[Metadata]),
    (Listener::Metadata, "/strata.v1.RaftTransport/Status", &[Metadata, Operator]),
    // Storage nodes: tenants' messages, only through the proxies (billing consumes the system
    // tenant's metering queue).
    (Listener::Storage, "/strata.v1.Storage/EnsureQueue", &[Proxy, Billing]),
    (Listener::Storage, "/strata.v1.Storage/DropQueue", &[Proxy]),
    // Placement: operators and the autoscaler move leadership.
    (Listener::Storage, "/strata.v1.Storage/TransferShardLeader", &[Proxy, Autoscaler, Operator]),
    // A queue moving between shards: the source's leader hands it to the target's.
    (Listener::Storage, "/strata.v1.Storage/AdoptQueueStep", &[Storage]),
    (Listener::Storage, "/strata.v1.Storage/Send", &[Proxy]),
    (Listener::Storage, "/strata.v1.Storage/Receive", &[Proxy, Billing]),
    (Listener::Storage, "/strata.v1.Storage/Delete", &[Proxy, Billing]),
    (Listener::Storage, "/strata.v1.Storage/ChangeVisibility", &[Proxy]),
    (Listener::Storage, "/strata.v1.Storage/Purge", &[Proxy]),
    (Listener::Storage, "/strata.v1.Storage/GetQueueStats", &[Proxy]),
    (Listener::Storage, "/strata.v1.Storage/GetQueueMetrics", &[Proxy]),
    (Listener::Storage, "/strata.v1.Storage/GetMessageTrace", &[Proxy]),
    (Listener::Storage, "/strata.v1.Storage/StartMoveTask", &[Proxy]),
    (Listener::Storage, "/strata.v1.Storage/CancelMoveTask", &[Proxy]),
    (Listener::Storage, "/strata.v1.Storage/ListMoveTasks", &[Proxy]),
    (Listener::Storage, "/strata.v1.Storage/CancelScheduled", &[Proxy]),
    // A replica catching up reads its peers' logs.
    (Listener::Storage, "/strata.v1.Storage/ReadLogEntries", &[Storage]),
    (Listener::Storage, "/strata.v1.Storage/ReadMetering", &[Billing]),
    (Listener::Storage, "/strata.v1.Storage/TrimMetering", &[Billing]),
    // The shards' Raft messages.
    (Listener::Storage, "/strata.v1.RaftTransport/AppendEntries", &[Storage]),
    (Listener::Storage, "/strata.v1.RaftTransport/Vote", &[Storage]),
    (Listener::Storage, "/strata.v1.RaftTransport/InstallSnapshot", &[Storage]),
    (Listener::Storage, "/strata.v1.RaftTransport/TransferLeader", &[Storage]),
    (Listener::Storage, "/strata.v1.RaftTransport/Status", &[Operator]),
];

/// The roles that may call `path` on `listener` (none: no such RPC).
pub fn roles_for(listener: Listener, path: &str) -> &'static [Role] {
    RPC_ROLES.iter().find(|(l, p, _)| *l == listener && *p == path).map_or(&[], |(_, _, roles)| *roles)
}

/// Whether `peer` may call `path` on `listener`; the refusal to answer otherwise.
pub fn authorize(listener: Listener, path: &str, peer: Option<&Peer>) -> Result<(), Status> {
    let Some(peer) = peer else {
        return Err(Status::unauthenticated("no client certificate"));
    };
    if roles_for(listener, path).contains(&peer.identity.role) {
        return Ok(());
    }
    tracing::warn!(peer = %peer.identity, address = %peer.remote_addr, path, "RPC refused: not in the role's row");
    Err(Status::permission_denied(format!("role {} may not call {path}", peer.identity.role)))
}

/// The tower layer that enforces [`RPC_ROLES`] on one listener.
#[derive(Debug, Clone, Copy)]
pub struct AuthorizeLayer {
    listener: Listener,
}

impl AuthorizeLayer {
    pub fn new(listener: Listener) -> Self {
        Self { listener }
    }
}

impl<S> Layer<S> for AuthorizeLayer {
    type Service = Authorize<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Authorize { inner, listener: self.listener }
    }
}

/// See [`AuthorizeLayer`].
#[derive(Debug, Clone)]
pub struct Authorize<S> {
    inner: S,
    listener: Listener,
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, B> Service<http::Request<B>> for Authorize<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        match authorize(self.listener, request.uri().path(), request.extensions().get::<Peer>()) {
            Ok(()) => Box::pin(self.inner.call(request)),
            Err(status) => Box::pin(std::future::ready(Ok(status.into_http()))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every RPC the proto declares has a row on the listener(s) that serve its service, and
    /// every row names a declared RPC: a new RPC cannot be added without deciding who calls it.
    #[test]
    fn the_table_has_exactly_one_row_per_rpc_of_each_listener() {
        let proto = include_str!("../../common/proto/strata.proto");
        let mut declared = Vec::new();
        let mut service = None;
        for line in proto.lines().map(str::trim) {
            if let Some(rest) = line.strip_prefix("service ") {
                service = rest.split_whitespace().next().map(str::to_owned);
            } else if let (Some(rest), Some(service)) = (line.strip_prefix("rpc "), &service) {
                let method = rest.split('(').next().unwrap_or_default().trim();
                declared.push(format!("/strata.v1.{service}/{method}"));
            }
        }
        let mut expected: Vec<(Listener, String)> = Vec::new();
        for path in &declared {
            if path.starts_with("/strata.v1.Metadata/") || path.starts_with("/strata.v1.RaftTransport/") {
                expected.push((Listener::Metadata, path.clone()));
            }
            if path.starts_with("/strata.v1.Storage/") || path.starts_with("/strata.v1.RaftTransport/") {
                expected.push((Listener::Storage, path.clone()));
            }
        }
        let mut rows: Vec<(Listener, String)> = RPC_ROLES.iter().map(|(l, p, _)| (*l, (*p).to_owned())).collect();
        let key = |(l, p): &(Listener, String)| (*l == Listener::Storage, p.clone());
        rows.sort_by_key(key);
        expected.sort_by_key(key);
        assert_eq!(rows, expected);
        assert!(RPC_ROLES.iter().all(|(_, _, roles)| !roles.is_empty()));
    }

    #[test]
    fn only_proxies_and_billing_look_up_access_keys_and_only_storage_registers() {
        let path = "/strata.v1.Metadata/LookupAccessKey";
        assert_eq!(roles_for(Listener::Metadata, path), &[Proxy, Billing]);
        assert_eq!(roles_for(Listener::Metadata, "/strata.v1.Metadata/RegisterStorageNode"), &[Storage]);
        assert!(roles_for(Listener::Storage, "/strata.v1.Metadata/GetShard").is_empty());
        assert!(roles_for(Listener::Metadata, "/strata.v1.Metadata/Nope").is_empty());
    }
}
