//! The accepting side: a TCP listener whose connections are served only after a TLS 1.3
//! handshake in which the caller presented a certificate of the CA naming a Strata identity.
//!
//! Handshakes run concurrently, each under [`HANDSHAKE_TIMEOUT`], at most [`HANDSHAKES_MAX`]
//! at once (a connection beyond that is closed at once), so strangers that connect and say
//! nothing hold neither the accept loop nor more than a bounded set of sockets. A connection
//! that fails its handshake (plaintext, another CA, no identity) is closed and logged at debug
//! level. Each served connection carries its [`Peer`], which tonic puts in every request's
//! extensions for [`crate::authz`].

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use strata_common::{Clock, ClockExt};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tonic::transport::server::Connected;

use crate::credentials::Credentials;
use crate::identity::Identity;

/// How long a connection may take to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Most handshakes under way at once on one listener.
pub const HANDSHAKES_MAX: usize = 256;
/// Pause after a failed accept (out of file descriptors) before the next.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// The authenticated caller of a connection.
#[derive(Debug, Clone)]
pub struct Peer {
    pub identity: Identity,
    pub remote_addr: SocketAddr,
}

/// One authenticated connection.
pub struct ServerConn {
    stream: TlsStream<TcpStream>,
    peer: Peer,
}

impl Connected for ServerConn {
    type ConnectInfo = Peer;

    fn connect_info(&self) -> Peer {
        self.peer.clone()
    }
}

impl AsyncRead for ServerConn {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ServerConn {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}

/// Completes one handshake; the authenticated connection, or why not.
async fn handshake(
    tcp: TcpStream,
    remote_addr: SocketAddr,
    credentials: &Credentials,
    clock: &Arc<dyn Clock>,
) -> Result<ServerConn, String> {
    let acceptor = TlsAcceptor::from(credentials.current().server.clone());
    let stream = match clock.timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => return Err(format!("TLS handshake failed: {e}")),
        Err(_) => return Err(format!("no TLS handshake in {HANDSHAKE_TIMEOUT:?}")),
    };
    let leaf = stream.get_ref().1.peer_certificates().and_then(|c| c.first()).ok_or("no client certificate")?;
    let identity = Identity::of_certificate(leaf).map_err(|e| e.to_string())?;
    Ok(ServerConn { stream, peer: Peer { identity, remote_addr } })
}

/// The authenticated connections of `listener`, for tonic's `serve_with_incoming*`. Accepting
/// stops when the stream is dropped (the server stopped).
pub fn incoming(
    listener: TcpListener,
    credentials: Credentials,
    clock: Arc<dyn Clock>,
) -> impl futures::Stream<Item = Result<ServerConn, std::io::Error>> + Send + 'static {
    let (sender, mut receiver) = mpsc::channel::<ServerConn>(64);
    let handshakes = Arc::new(Semaphore::new(HANDSHAKES_MAX));
    tokio::spawn(async move {
        loop {
            let accepted = tokio::select! {
                () = sender.closed() => break,
                accepted = listener.accept() => accepted,
            };
            let (tcp, remote_addr) = match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    tracing::warn!(error = %e, "internal listener: accept failed");
                    clock.sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            };
            let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                tracing::warn!(%remote_addr, "internal listener: too many handshakes under way; connection closed");
                continue;
            };
            if let Err(e) = tcp.set_nodelay(true) {
                tracing::debug!(%remote_addr, error = %e, "TCP_NODELAY");
            }
            let (credentials, clock, sender) = (credentials.clone(), clock.clone(), sender.clone());
            tokio::spawn(async move {
                let result = handshake(tcp, remote_addr, &credentials, &clock).await;
                drop(permit);
                match result {
                    Ok(conn) => {
                        let _ = sender.send(conn).await;
                    }
                    Err(reason) => tracing::debug!(%remote_addr, reason, "internal connection refused"),
                }
            });
        }
    });
    futures::stream::poll_fn(move |cx| receiver.poll_recv(cx).map(|conn| conn.map(Ok)))
}
