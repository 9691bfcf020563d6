//! Conventions of the internal gRPC calls shared by their clients and servers. The channels
//! themselves (mutual TLS, timeouts, windows) are opened by `strata_tls::client`.

/// The gRPC metadata key of a mutation's idempotency key: a retry with the same value is applied
/// once and answered like the first attempt.
pub const REQUEST_ID_KEY: &str = "x-strata-request-id";
