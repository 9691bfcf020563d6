//! Serving a router to strangers: every HTTP listener of Strata runs through [`serve`], which
//! bounds what one client (or many) can hold.
//!
//! - Connections: at most [`ServerLimits::connections_max`] open at once and
//!   [`ServerLimits::connections_per_ip_max`] from one IP address; a connection over either cap
//!   is closed as soon as it is accepted, before anything is read from it.
//! - Headers: a request's head must arrive within [`ServerLimits::header_read_timeout`]. The same
//!   timer runs while a kept-alive connection waits for its next request, so an idle connection
//!   is closed after it too.
//! - Bodies: each read of a request body must make progress within
//!   [`ServerLimits::body_read_timeout`] (a client that stops sending is cut off); the size
//!   limits are the routers' own (`DefaultBodyLimit`).
//!
//! Connections are HTTP/1.1 (what the SDKs and CLIs speak over plain TCP), with `TCP_NODELAY`
//! (without it a response split over two writes waits for the peer's delayed ACK, ~40 ms per
//! request).

use std::collections::HashMap;
use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use strata_common::{Clock, SystemClock};
use tokio::net::TcpListener;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::ServiceExt;
use tower_http::timeout::TimeoutBody;

/// How long the accept loop waits after a failed accept (out of file descriptors, say).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// What a listener allows one client, and all of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServerLimits {
    /// Open connections at most (each costs a file descriptor and some memory).
    pub connections_max: usize,
    /// Open connections from one IP address at most.
    pub connections_per_ip_max: usize,
    /// Longest wait for a request's head, and for the next request on a kept-alive connection.
    pub header_read_timeout: Duration,
    /// Longest wait for the next bytes of a request body.
    pub body_read_timeout: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            connections_max: 10_000,
            connections_per_ip_max: 512,
            header_read_timeout: Duration::from_secs(30),
            body_read_timeout: Duration::from_secs(30),
        }
    }
}

/// Open connections per IP address.
#[derive(Default)]
struct PerIp {
    open: parking_lot::Mutex<HashMap<IpAddr, usize>>,
}

/// One admitted connection: frees its slots when dropped.
struct Admitted {
    _global: OwnedSemaphorePermit,
    per_ip: Arc<PerIp>,
    ip: IpAddr,
}

impl PerIp {
    fn admit(self: &Arc<Self>, ip: IpAddr, max: usize, global: OwnedSemaphorePermit) -> Option<Admitted> {
        let mut open = self.open.lock();
        let count = open.entry(ip).or_default();
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(Admitted { _global: global, per_ip: self.clone(), ip })
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        let mut open = self.per_ip.open.lock();
        if let Some(count) = open.get_mut(&self.ip) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

/// Serves `router` on `listener` within `limits` until `shutdown` resolves, then lets the
/// requests in flight finish. Handlers can read the peer's address as `ConnectInfo<SocketAddr>`.
pub async fn serve(
    router: Router,
    listener: TcpListener,
    limits: ServerLimits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let connections = Arc::new(Semaphore::new(limits.connections_max));
    let per_ip = Arc::new(PerIp::default());
    let graceful = GracefulShutdown::new();
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(limits.header_read_timeout).keep_alive(true);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, say: the connections already open go on, and
                    // this loop waits a little rather than spin on the same error.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    SystemClock.sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
        };
        let Ok(global) = connections.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "connection refused: the listener is at its connection limit");
            continue;
        };
        let Some(admitted) = per_ip.admit(peer.ip(), limits.connections_per_ip_max, global) else {
            tracing::debug!(%peer, "connection refused: the address is at its connection limit");
            continue;
        };
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!(error = %e, "cannot set TCP_NODELAY");
        }
        let router = router.clone();
        let body_read_timeout = limits.body_read_timeout;
        let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            let mut request = request.map(|body| Body::new(TimeoutBody::new(body_read_timeout, body)));
            request.extensions_mut().insert(ConnectInfo::<SocketAddr>(peer));
            router.clone().oneshot(request)
        });
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(tcp), service));
        let open = &strata_telemetry::api().connections_open;
        open.inc();
        tokio::spawn(async move {
            // A client that goes away, or a timeout, ends its connection; nothing to report.
            let _ = connection.await;
            open.dec();
            drop(admitted);
        });
    }
    drop(listener);
    graceful.shutdown().await;
    Ok(())
}
