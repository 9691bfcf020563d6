//! How every component opens a gRPC channel to another: lazily connected, with a per-call
//! deadline, TCP_NODELAY (a request split over two writes would otherwise wait ~40 ms for the
//! peer's delayed ACK) and the flow-control windows from [`crate::limits`].

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use crate::limits;

/// The gRPC metadata key of a mutation's idempotency key: a retry with the same value is applied
/// once and answered like the first attempt.
pub const REQUEST_ID_KEY: &str = "x-strata-request-id";

/// How long establishing a connection may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A channel to `address` (e.g. `http://127.0.0.1:9400`) that connects on first use.
pub fn lazy_channel(address: &str, call_timeout: Duration) -> Result<Channel, tonic::transport::Error> {
    Ok(Endpoint::from_shared(address.to_string())?
        .timeout(call_timeout)
        .connect_timeout(CONNECT_TIMEOUT)
        .tcp_nodelay(true)
        .initial_stream_window_size(limits::GRPC_STREAM_WINDOW_BYTES)
        .initial_connection_window_size(limits::GRPC_CONNECTION_WINDOW_BYTES)
        .connect_lazy())
}
