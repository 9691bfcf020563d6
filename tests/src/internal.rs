//! Probes of the internal gRPC plane as a stranger, or as a process of some role, would call it:
//! any RPC by its path, with an empty request (every request message decodes from no bytes).

use std::path::{Path, PathBuf};
use std::time::Duration;

use strata_common::proto as pb;
use strata_tls::pki::LocalCa;
use strata_tls::{Credentials, Identity, Role, TlsFiles};
use tonic::transport::{Channel, Endpoint};

/// How long one probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Calls `path` on `channel` with an empty request; the answer's status.
pub async fn call(channel: Channel, path: &'static str) -> Result<(), tonic::Status> {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.map_err(|e| tonic::Status::unavailable(format!("not ready: {e}")))?;
    let codec = tonic_prost::ProstCodec::<pb::Empty, pb::Empty>::default();
    let path = http::uri::PathAndQuery::from_static(path);
    grpc.unary(tonic::Request::new(pb::Empty {}), path, codec).await.map(|_| ())
}

/// A channel to `address` presenting `credentials`, to a server of `server_role`.
pub fn channel(address: &str, credentials: &Credentials, server_role: Role) -> Channel {
    strata_tls::lazy_channel(address, PROBE_TIMEOUT, credentials, server_role).expect("an internal channel")
}

/// Whether a failed call got no gRPC answer at all (the connection was refused, cut, or never
/// spoke HTTP/2): the client made the status from a transport error, the server chose none.
pub fn unanswered(status: &tonic::Status) -> bool {
    let transport = std::error::Error::source(status).is_some_and(|e| e.is::<tonic::transport::Error>());
    transport || status.code() == tonic::Code::Unavailable
}

/// Credentials presenting a certificate (naming a proxy) that another CA, made in
/// `other_ca_dir`, signed, and trusting `trusted_ca`: the client side goes on, so only the server
/// can refuse them.
pub fn forged_credentials(other_ca_dir: &Path, trusted_ca: PathBuf) -> anyhow::Result<Credentials> {
    let now_ms = strata_common::Clock::now_ms(&strata_common::SystemClock);
    let other_ca = LocalCa::open_or_create(other_ca_dir, now_ms)?;
    let forged = other_ca.issue(&Identity::new(Role::Proxy, "proxy-1")?, &[], other_ca_dir, "forged", now_ms)?;
    Ok(Credentials::load(TlsFiles { ca: trusted_ca, ..forged })?)
}

/// Checks that `address`, a server of `role`, answers neither plaintext gRPC nor a client
/// presenting `forged` credentials (see [`forged_credentials`]), calling an RPC that reads
/// secrets or messages. Answers what went wrong, if anything did.
pub async fn refuses_strangers(address: &str, forged: &Credentials, role: Role) -> Vec<String> {
    let path =
        if role == Role::Metadata { "/strata.v1.Metadata/LookupAccessKey" } else { "/strata.v1.Storage/Receive" };
    let mut wrong = Vec::new();
    let plain = Endpoint::from_shared(address.replace("https://", "http://"))
        .expect("an address")
        .timeout(PROBE_TIMEOUT)
        .connect_lazy();
    match call(plain, path).await {
        Err(status) if unanswered(&status) => {}
        other => wrong.push(format!("{address}{path} answered plaintext: {other:?}")),
    }
    match call(channel(address, forged, role), path).await {
        Err(status) if unanswered(&status) => {}
        other => wrong.push(format!("{address}{path} answered another CA's certificate: {other:?}")),
    }
    wrong
}
