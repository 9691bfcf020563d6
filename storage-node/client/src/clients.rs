//! Client of the storage node's gRPC API, with one cached client per node address.
//!
//! A storage node in another process is reached over a gRPC channel. A node in the same process
//! (`strata dev`) can be registered with [`StorageClients::with_co_located`]: calls to its address
//! then go straight to its gRPC service, still as encoded gRPC requests and responses, without
//! the loopback TCP connection and HTTP/2 framing. The same approach as a local RPC fast path:
//! the service code and the messages are the same, only the transport is skipped.

use std::collections::HashMap;
use std::convert::Infallible;
use std::time::Duration;

use parking_lot::Mutex;
use strata_common::error::StrataError;
use strata_common::limits;
use strata_common::proto::storage_client;
use strata_tls::{Credentials, Role};
use tonic::body::Body;
use tonic::codegen::{Service, http};
use tower::ServiceExt;
use tower::util::BoxCloneSyncService;

/// Deadline of one storage call: the longest long poll plus slack for the write itself.
const STORAGE_CALL_TIMEOUT: Duration = Duration::from_millis(limits::LONG_POLL_MS_MAX + 10_000);

/// How gRPC requests reach a storage node: a network channel or the node's service itself.
pub type StorageTransport = BoxCloneSyncService<http::Request<Body>, http::Response<Body>, TransportError>;

/// A failure to reach a storage node (a concrete type: boxed trait objects as the error trip
/// the compiler's lifetime inference inside axum handlers).
#[derive(Debug, thiserror::Error)]
#[error(transparent)]
pub struct TransportError(#[from] tonic::transport::Error);

pub type StorageGrpcClient = storage_client::StorageClient<StorageTransport>;

/// A storage node running in this process: its advertised address and its gRPC service.
pub struct CoLocatedStorage {
    pub address: String,
    pub transport: StorageTransport,
}

impl CoLocatedStorage {
    /// Wraps a generated gRPC server (such as `StorageServer<..>`) as a transport, serving each
    /// traced call in its span as a server reached over the network would
    /// ([`strata_telemetry::trace::GrpcServerSpans`]).
    pub fn new<S>(address: impl Into<String>, service: S) -> Self
    where
        S: Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        let service = tower::Layer::layer(&strata_telemetry::trace::GrpcServerSpans, service);
        let transport =
            BoxCloneSyncService::new(service.map_err(|never: Infallible| -> TransportError { match never {} }));
        Self { address: address.into(), transport }
    }
}

/// Hands out clients by node address; clones of one client share its connection.
pub struct StorageClients {
    /// What this process presents to storage nodes over mutual TLS, and trusts them by.
    credentials: Credentials,
    by_address: Mutex<HashMap<String, StorageGrpcClient>>,
}

impl StorageClients {
    /// Clients that reach every node over the network with `credentials`.
    pub fn new(credentials: Credentials) -> Self {
        Self { credentials, by_address: Mutex::default() }
    }

    /// Clients that reach `co_located` in process and every other node over the network.
    pub fn with_co_located(credentials: Credentials, co_located: CoLocatedStorage) -> Self {
        let clients = Self::new(credentials);
        clients.by_address.lock().insert(co_located.address, client(co_located.transport));
        clients
    }

    pub fn get(&self, address: &str) -> Result<StorageGrpcClient, StrataError> {
        if let Some(client) = self.by_address.lock().get(address) {
            return Ok(client.clone());
        }
        let channel = strata_tls::lazy_channel(address, STORAGE_CALL_TIMEOUT, &self.credentials, Role::Storage)
            .map_err(|e| {
                tracing::error!(address, error = %e, "a storage node's registered address is not usable");
                StrataError::internal("a storage node's address is not usable")
            })?;
        let client = client(BoxCloneSyncService::new(channel.map_err(TransportError::from)));
        self.by_address.lock().insert(address.to_string(), client.clone());
        Ok(client)
    }
}

/// A client over `transport` whose requests carry the caller's trace context.
fn client(transport: StorageTransport) -> StorageGrpcClient {
    let traced = BoxCloneSyncService::new(transport.map_request(strata_telemetry::trace::injected::<Body>));
    storage_client::StorageClient::new(traced)
        .max_decoding_message_size(limits::GRPC_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(limits::GRPC_MESSAGE_BYTES_MAX)
}
