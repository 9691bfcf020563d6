//! The connecting side: gRPC channels whose connections are TLS 1.3 with this process's
//! certificate, to a server whose certificate the CA signed for the host dialled and which names
//! the role the caller expects (a metadata client talks only to a metadata member, so a stolen
//! storage certificate cannot pose as one).
//!
//! An address may be written `https://host:port` or `http://host:port`: either way the
//! connection is TLS (the scheme only names the endpoint).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use http::Uri;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use strata_common::limits;
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tonic::transport::{Channel, Endpoint};

use crate::credentials::Credentials;
use crate::identity::{Identity, Role};

/// How long establishing a connection (TCP and TLS) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens TLS connections for tonic, to servers of one role.
#[derive(Debug, Clone)]
pub struct Connector {
    credentials: Credentials,
    peer_role: Role,
}

impl Connector {
    pub fn new(credentials: Credentials, peer_role: Role) -> Self {
        Self { credentials, peer_role }
    }
}

fn refused(kind: std::io::ErrorKind, message: String) -> std::io::Error {
    std::io::Error::new(kind, message)
}

impl tower::Service<Uri> for Connector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let (credentials, expected) = (self.credentials.clone(), self.peer_role);
        Box::pin(async move {
            let invalid = |m: String| refused(std::io::ErrorKind::InvalidInput, m);
            let host = uri.host().ok_or_else(|| invalid(format!("{uri} names no host")))?;
            let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
            let port = uri.port_u16().ok_or_else(|| invalid(format!("{uri} names no port")))?;
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            let name = ServerName::try_from(host).map_err(|e| invalid(format!("{uri}: {e}")))?;
            let stream = TlsConnector::from(credentials.current().client.clone()).connect(name, tcp).await?;
            let leaf = stream.get_ref().1.peer_certificates().and_then(|c| c.first()).ok_or_else(|| {
                refused(std::io::ErrorKind::PermissionDenied, format!("{uri} presented no certificate"))
            })?;
            let identity = Identity::of_certificate(leaf)
                .map_err(|e| refused(std::io::ErrorKind::PermissionDenied, format!("{uri}: {e}")))?;
            if identity.role != expected {
                return Err(refused(
                    std::io::ErrorKind::PermissionDenied,
                    format!("{uri} is {identity}, not a {expected}"),
                ));
            }
            Ok(TokioIo::new(stream))
        })
    }
}

/// An endpoint for `address` with the settings every internal channel shares: TCP_NODELAY
/// (a request split over two writes would otherwise wait ~40 ms for the peer's delayed ACK),
/// the connect timeout and the flow-control windows from [`limits`].
pub fn endpoint(address: &str) -> Result<Endpoint, tonic::transport::Error> {
    Ok(Endpoint::from_shared(address.to_string())?
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .initial_stream_window_size(limits::GRPC_STREAM_WINDOW_BYTES)
        .initial_connection_window_size(limits::GRPC_CONNECTION_WINDOW_BYTES))
}

/// A channel to `address`, a process of `peer_role`, that connects on first use; each call
/// has `call_timeout`.
pub fn lazy_channel(
    address: &str,
    call_timeout: Duration,
    credentials: &Credentials,
    peer_role: Role,
) -> Result<Channel, tonic::transport::Error> {
    Ok(endpoint(address)?
        .timeout(call_timeout)
        .connect_with_connector_lazy(Connector::new(credentials.clone(), peer_role)))
}
