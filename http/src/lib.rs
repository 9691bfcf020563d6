//! `strata-http`: what every HTTP listener of Strata shares (the proxy's APIs, billing's):
//!
//! - [`auth`]: JWT verification (and minting, for `strata dev` and tests);
//! - [`credentials`]: the extractors that turn a verified bearer token into a tenant or an
//!   operator;
//! - [`error`]: the mapping of errors to HTTP answers a tenant can act on, revealing nothing
//!   internal;
//! - [`observe`]: `/metrics` for the scraper holding the scrape token, and `/healthz`;
//! - [`server`]: serving a router to strangers with caps on connections and timeouts on heads
//!   and bodies.

pub mod auth;
pub mod credentials;
pub mod error;
pub mod observe;
pub mod server;
