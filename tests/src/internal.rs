//! Probes of the internal gRPC plane as a stranger, or as a process of some role, would call it:
//! any RPC by its path, with an empty request (every request message decodes from no bytes).

use std::time::Duration;

use strata_common::proto as pb;
use strata_tls::{Credentials, Role};
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

/// Checks that `address` answers neither plaintext gRPC nor a client presenting a certificate
/// another CA signed (`foreign`: it trusts the server's CA, so only the server can refuse it),
/// calling `path`. Answers what went wrong, if anything did.
pub async fn refuses_strangers(address: &str, path: &'static str, foreign: &Credentials, role: Role) -> Vec<String> {
    let mut wrong = Vec::new();
    let plain = Endpoint::from_shared(address.replace("https://", "http://"))
        .expect("an address")
        .timeout(PROBE_TIMEOUT)
        .connect_lazy();
    match call(plain, path).await {
        Err(status) if unanswered(&status) => {}
        other => wrong.push(format!("{address}{path} answered plaintext: {other:?}")),
    }
    match call(channel(address, foreign, role), path).await {
        Err(status) if unanswered(&status) => {}
        other => wrong.push(format!("{address}{path} answered another CA's certificate: {other:?}")),
    }
    wrong
}
