//! The native HTTP/JSON API as a library: its request and response shapes ([`model`], from
//! which the proxy generates `openapi.json`) and a [`Client`] of it. The CLI, `strata bench` and
//! the tests all call the service through this one client. It depends on no server crate.

mod client;
pub mod model;
pub mod sqs;

pub use client::{Client, ClientError, KeyOwner, path_segment};
pub use reqwest::Method;
