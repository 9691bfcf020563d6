//! The stateless front door: the native HTTP/JSON API (described by `/openapi.json`), JWT
//! authentication, and routing of each request to the storage node that holds its queue.
//!
//! The proxy keeps no state that matters: placement is cached from metadata and re-read when a
//! storage node answers that a queue is not there. The tenant of every request comes only from
//! the verified token; another tenant's queue answers exactly like a missing one.

pub mod api;
mod call_metrics;
pub use call_metrics::ACCESS_LOG_TARGET;
pub mod metering;
pub mod queue_rules;
pub mod queues;
pub mod quotas;
pub mod sigv4;
pub mod sqs;

pub use api::{ProxySettings, Routers, router};
pub use strata_http::server::ServerLimits;
pub use strata_http::{auth, credentials, error};
pub use strata_storage_client::clients as storage_client;
pub use strata_storage_client::routing;
