//! Mutual TLS of the internal gRPC plane (metadata, storage, Raft transport).
//!
//! # What it owns
//!
//! * [`identity`]: what a certificate names — a [`Role`] and a process name, as the URI SAN
//!   `spiffe://strata/<role>/<name>`.
//! * [`Credentials`]: a process's CA, certificate and key from the files its config names
//!   ([`TlsFiles`]), read again when they change (rotation without a restart).
//! * [`server::incoming`]: the only way an internal listener accepts connections — TLS 1.3, a
//!   client certificate of the CA required, handshakes bounded in time and number.
//! * [`client`]: channels that present this process's certificate and accept only a server of
//!   the expected role.
//! * [`authz`]: the role table, one row per RPC, enforced on every request.
//! * [`pki`]: a local CA (rcgen) for `strata dev`, `strata certs` and tests.
//!
//! # What it guarantees
//!
//! No internal listener serves a byte of gRPC to a caller that has not completed a handshake
//! with a certificate of the CA naming a Strata identity, and no RPC runs for a role outside its
//! row of [`authz::RPC_ROLES`].

pub mod authz;
pub mod client;
mod credentials;
pub mod identity;
pub mod pki;
pub mod server;

pub use authz::{AuthorizeLayer, Listener};
pub use client::lazy_channel;
pub use credentials::{Credentials, TlsError, TlsFiles};
pub use identity::{Identity, Role};
pub use server::{Peer, incoming};

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use strata_common::proto::raft_transport_client::RaftTransportClient;
    use strata_common::proto::raft_transport_server::{RaftTransport, RaftTransportServer};
    use strata_common::proto::{self as pb};
    use strata_common::{Clock, SystemClock};
    use tonic::{Request, Response, Status};

    use super::*;
    use crate::pki::LocalCa;

    /// A Raft transport that answers `Status` with the caller's role in `node_id`'s place.
    struct Echo;

    #[tonic::async_trait]
    impl RaftTransport for Echo {
        async fn append_entries(&self, _: Request<pb::RaftMessage>) -> Result<Response<pb::RaftMessage>, Status> {
            Ok(Response::new(pb::RaftMessage::default()))
        }
        async fn vote(&self, _: Request<pb::RaftMessage>) -> Result<Response<pb::RaftMessage>, Status> {
            Ok(Response::new(pb::RaftMessage::default()))
        }
        async fn install_snapshot(&self, _: Request<pb::RaftMessage>) -> Result<Response<pb::RaftMessage>, Status> {
            Ok(Response::new(pb::RaftMessage::default()))
        }
        async fn transfer_leader(&self, _: Request<pb::RaftMessage>) -> Result<Response<pb::RaftMessage>, Status> {
            Ok(Response::new(pb::RaftMessage::default()))
        }
        async fn status(&self, r: Request<pb::RaftStatusRequest>) -> Result<Response<pb::RaftStatusResponse>, Status> {
            let peer = r.extensions().get::<Peer>().expect("every served request has its peer");
            let group = pb::RaftGroupStatus { role: peer.identity.to_string(), ..Default::default() };
            Ok(Response::new(pb::RaftStatusResponse { groups: vec![group], format_generation_max: 0 }))
        }
    }

    fn now_ms() -> u64 {
        SystemClock.now_ms()
    }

    async fn serve(credentials: Credentials) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = format!("https://{}", listener.local_addr().unwrap());
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        tokio::spawn(
            tonic::transport::Server::builder()
                .layer(AuthorizeLayer::new(Listener::Storage))
                .add_service(RaftTransportServer::new(Echo))
                .serve_with_incoming(incoming(listener, credentials, clock)),
        );
        address
    }

    async fn status(address: &str, credentials: &Credentials, server_role: Role) -> Result<String, Status> {
        let channel = lazy_channel(address, Duration::from_secs(5), credentials, server_role).unwrap();
        let answer = RaftTransportClient::new(channel).status(pb::RaftStatusRequest {}).await?;
        Ok(answer.into_inner().groups[0].role.clone())
    }

    fn identity(role: Role, name: &str) -> Identity {
        Identity::new(role, name).unwrap()
    }

    #[tokio::test]
    async fn callers_are_authenticated_authorized_by_role_and_servers_checked_for_theirs() {
        let dir = tempfile::tempdir().unwrap();
        let ca = LocalCa::open_or_create(&dir.path().join("ca"), now_ms()).unwrap();
        let issue = |role, name: &str| {
            Credentials::load(ca.issue(&identity(role, name), &[], dir.path(), name, now_ms()).unwrap()).unwrap()
        };
        let server = issue(Role::Storage, "storage-1");
        assert_eq!(server.identity(), identity(Role::Storage, "storage-1"));
        let address = serve(server).await;

        // An operator may read a storage node's Raft status; a peer may send it Raft messages
        // but not read its status; a proxy may do neither.
        let storage = issue(Role::Storage, "storage-2");
        let channel = lazy_channel(&address, Duration::from_secs(5), &storage, Role::Storage).unwrap();
        RaftTransportClient::new(channel).vote(pb::RaftMessage::default()).await.unwrap();
        let denied = status(&address, &storage, Role::Storage).await.unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");
        let operator = issue(Role::Operator, "ops");
        assert_eq!(status(&address, &operator, Role::Storage).await.unwrap(), "operator/ops");
        let proxy = issue(Role::Proxy, "proxy-1");
        let denied = status(&address, &proxy, Role::Storage).await.unwrap_err();
        assert_eq!(denied.code(), tonic::Code::PermissionDenied, "{denied:?}");

        // A client expecting a metadata member refuses a storage node's certificate.
        let wrong_server = status(&address, &operator, Role::Metadata).await.unwrap_err();
        assert_eq!(wrong_server.code(), tonic::Code::Unavailable, "{wrong_server:?}");

        // A certificate of another CA is refused in the handshake.
        let other = LocalCa::open_or_create(&dir.path().join("other-ca"), now_ms()).unwrap();
        let stranger = other.issue(&identity(Role::Operator, "ops"), &[], &dir.path().join("o"), "ops", now_ms());
        let stranger = Credentials::load(TlsFiles { ca: ca.cert_file(), ..stranger.unwrap() }).unwrap();
        assert!(status(&address, &stranger, Role::Storage).await.is_err());

        // Plaintext gRPC gets no answer.
        let plain = tonic::transport::Endpoint::from_shared(address.replace("https", "http")).unwrap();
        let plain = plain.timeout(Duration::from_secs(5)).connect_lazy();
        assert!(RaftTransportClient::new(plain).status(pb::RaftStatusRequest {}).await.is_err());
    }

    #[tokio::test]
    async fn rotated_files_serve_new_connections_and_a_broken_rotation_keeps_the_last_credentials() {
        let dir = tempfile::tempdir().unwrap();
        let ca = LocalCa::open_or_create(&dir.path().join("ca"), now_ms()).unwrap();
        let files = ca.issue(&identity(Role::Storage, "a"), &[], dir.path(), "node", now_ms()).unwrap();
        let credentials = Credentials::load(files.clone()).unwrap();
        assert_eq!(credentials.identity().name, "a");
        ca.issue(&identity(Role::Storage, "b"), &[], dir.path(), "node", now_ms()).unwrap();
        credentials.current();
        assert_eq!(credentials.identity().name, "b");
        std::fs::write(&files.key, "not a key").unwrap();
        credentials.current();
        assert_eq!(credentials.identity().name, "b");
        assert!(Credentials::load(files).is_err());
    }
}
